//! Lease sweeping: heartbeat Leases that expired by our observation and that no lock
//! references are deleted (exactly the version observed), so a holder that died without
//! a lock leaves nothing behind.

use super::observations::lease_key;
use super::{CALL_TIMEOUT, Context};
use crate::error::{Deleted, delete_exact, within};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often orphaned heartbeat Leases are looked for.
const LEASE_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long past its expiry an unreferenced Lease is kept before it is deleted.
const LEASE_SWEEP_GRACE: Duration = Duration::from_secs(5);

/// Deletes heartbeat Leases that expired (by our observation) and that no lock references.
pub(super) async fn sweep_orphaned_leases(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(LEASE_SWEEP_EVERY).await;
        if !ctx.is_ready() || !ctx.leadership.is_leading() {
            continue;
        }
        let now = Instant::now();
        for lease in ctx.leases.state() {
            // Leadership may lapse during the sweep (each delete may take CALL_TIMEOUT).
            if !ctx.leadership.is_leading() {
                break;
            }
            let key = lease_key(&lease);
            let Some(seen) = ctx.observations.get(&key) else {
                continue;
            };
            if now.saturating_duration_since(seen.at) < seen.longest_duration + LEASE_SWEEP_GRACE {
                continue;
            }
            if ctx.holders.is_referenced(&key) {
                continue;
            }
            let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &key.0);
            let uid = lease.uid().unwrap_or_default();
            let delete = delete_exact(&api, &key.1, &uid, Some(&seen.resource_version));
            match within("delete expired lease", CALL_TIMEOUT, delete).await {
                Ok(Ok(Deleted::Deleted)) => {
                    tracing::info!(lease = %key.1, namespace = %key.0, "deleted expired heartbeat Lease that no lock references")
                }
                Ok(Ok(Deleted::GoneOrChanged)) => {
                    tracing::debug!(lease = %key.1, "expired Lease not deleted: it changed or is gone")
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = %key.1, error = %e, "expired Lease not deleted")
                }
                Err(e) => {
                    tracing::debug!(lease = %key.1, error = %e.chain(), "expired Lease not deleted")
                }
            }
        }
    }
}
