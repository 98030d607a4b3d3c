//! The reclaiming controller: garbage-collects locks whose holder died.
//!
//! It watches IssueLocks, heartbeat Leases (label `issuelock.dev/heartbeat=true`) and
//! Pods (trimmed to uid and phase), without managedFields. Its cost follows changes, not
//! locks × time: Lease renewals only update [`Observations`]; a Lease deletion or a Pod
//! change triggers the reconcile of that holder's locks only ([`holders`]); a Lease that
//! could have expired triggers its locks once ([`expiry`], one check per Lease); a lock
//! with a max hold time or an unknown signing key is requeued for that time. Status is
//! written on transitions only. Evidence from the caches is confirmed with a direct read
//! before a lock is deleted, and the delete carries `{uid, resourceVersion}`
//! preconditions of the object judged. Reconciles run at most [`CONCURRENCY`] at a time,
//! and a failing lock backs off exponentially ([`backoff`]).
//!
//! A holder's pod is judged in its own namespace (`spec.holder.pod.namespace`, else the
//! lock's). When the controller watches one namespace only, a pod elsewhere is not in its
//! cache: it is read directly when its locks are rechecked (once per holder pod and
//! recheck, see [`pod_reads`]; about once per lease duration), never called missing from
//! a cache miss, and its deletion is noticed at that read rather than from a Pod event.

pub mod backoff;
pub mod expiry;
pub mod holders;
pub mod http;
pub mod metrics;
pub mod naming;
pub mod observations;
pub mod pod_reads;
pub mod staleness;

mod lease_sweep;
mod reconcile;
pub mod status;
mod watches;

pub use reconcile::ReconcileError;

use crate::crd::IssueLock;
use crate::error::Error;
use crate::leader::Leadership;
use crate::signature::{KeyBinding, Keyring};
use backoff::Backoff;
use futures::StreamExt;
use holders::HolderIndex;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::{self as kube_controller, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use metrics::Metrics;
use observations::{Observations, lease_key};
use pod_reads::RecentPodReads;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use watches::{Synced, Watched};

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "issuelock-controller";
/// Deadline of every API call the controller makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most reconciles in flight at once: bounds the controller's load on the API server at
/// start-up, after a relist and after an outage.
pub const CONCURRENCY: u16 = 8;

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Name reported on Events.
    pub instance: String,
    /// Keys to verify lock signatures with; the `SignatureValid` condition reports them.
    pub keys: Option<Arc<Keyring>>,
    /// Reclaim locks whose signature does not verify: at once when it is missing, does
    /// not match or is not bound to the holder; after `unknown_key_grace` when its key id
    /// is unknown.
    pub require_signatures: bool,
    /// How long a lock signed with an unknown key id is kept when signatures are required,
    /// on this controller's monotonic clock from when it first saw the lock (so at least
    /// this long; longer after a controller restart). Lets a key rotation reach every
    /// verifier before locks signed with the new key are judged.
    pub unknown_key_grace: Duration,
    /// Which worker each key may sign for.
    pub key_binding: KeyBinding,
}

/// What this replica shares with the process around it: its metrics, the readiness flag
/// its `/readyz` serves (set once every cache has completed its first list), and its
/// leadership (only the leader reclaims and writes status).
pub struct Replica {
    /// Metrics of this process.
    pub metrics: Arc<Metrics>,
    /// Set once every cache has completed its first list.
    pub ready: Arc<AtomicBool>,
    /// Whether this replica leads.
    pub leadership: Leadership,
}

/// State shared by every reconcile.
pub struct Context {
    client: kube::Client,
    leases: Store<Lease>,
    pods: Store<Pod>,
    observations: Observations,
    recorder: Recorder,
    /// True once every cache has completed its first list.
    ready: Arc<AtomicBool>,
    /// Only the leader reclaims and writes status.
    leadership: Leadership,
    keys: Option<Arc<Keyring>>,
    require_signatures: bool,
    unknown_key_grace: Duration,
    key_binding: KeyBinding,
    /// The only namespace watched, if any (pods elsewhere are not cached).
    watched_namespace: Option<String>,
    /// Recent reads of pods outside the watched namespace.
    pod_reads: RecentPodReads,
    /// Locks by holder Lease and holder pod, and when each was first seen.
    holders: HolderIndex,
    /// Consecutive reconcile failures per lock.
    backoff: Backoff,
    /// Metrics of this process.
    pub metrics: Arc<Metrics>,
}

impl Context {
    fn new(
        client: kube::Client,
        config: ControllerConfig,
        replica: Replica,
        leases: Store<Lease>,
        pods: Store<Pod>,
    ) -> Self {
        let ControllerConfig {
            namespace,
            instance,
            keys,
            require_signatures,
            unknown_key_grace,
            key_binding,
        } = config;
        let Replica {
            metrics,
            ready,
            leadership,
        } = replica;
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            leases,
            pods,
            observations: Observations::default(),
            metrics,
            ready,
            leadership,
            keys,
            require_signatures,
            unknown_key_grace,
            key_binding,
            watched_namespace: namespace,
            pod_reads: RecentPodReads::default(),
            holders: HolderIndex::default(),
            backoff: Backoff::default(),
        }
    }

    /// True once every cache has completed its first list.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    /// True when pods in `namespace` are in the cache (every namespace is watched, or
    /// this one is).
    fn caches_pods_in(&self, namespace: &str) -> bool {
        self.watched_namespace
            .as_deref()
            .is_none_or(|watched| watched == namespace)
    }

    /// How long this lock has been held, as far as this controller can tell on its own
    /// monotonic clock: since it first saw the lock. Never more than the truth, so a max
    /// hold time is never enforced before the holder's own timer (which starts before its
    /// create is sent) gives the lock up; after a controller restart, later than that. A
    /// lock the lock watch has not delivered (or has deleted) is held for no time yet.
    fn held_for(&self, lock: &IssueLock) -> Duration {
        self.holders
            .first_seen(lock)
            .map_or(Duration::ZERO, |seen| {
                Instant::now().saturating_duration_since(seen)
            })
    }

    /// Refreshes the gauges: leadership, locks held and misnamed (counted by the index as
    /// locks come and go), the locks whose holder Lease was seen changing within its
    /// duration, and the largest time since a held lock's holder Lease was last seen
    /// changing (one look per Lease, not per lock).
    fn update_gauges(&self) {
        let m = &self.metrics;
        m.leader.set(self.leadership.is_leading() as i64);
        let (held, misnamed) = self.holders.counts();
        m.locks_held.set(held as i64);
        m.misnamed_locks.set(misnamed as i64);
        let now = Instant::now();
        let (mut oldest, mut alive) = (Duration::ZERO, 0);
        for key in self.holders.leases() {
            if let Some(seen) = self.observations.get(&key) {
                let unchanged_for = now.saturating_duration_since(seen.at);
                oldest = oldest.max(unchanged_for);
                if unchanged_for < seen.longest_duration {
                    alive += self.holders.lock_count_of_lease(&key);
                }
            }
        }
        m.holders_alive.set(alive as i64);
        m.set_heartbeat_age(oldest);
    }
}

/// Runs the controller until `shutdown` completes. Watch errors and API outages are
/// retried with backoff; they never end the controller.
pub async fn run(
    client: kube::Client,
    config: ControllerConfig,
    replica: Replica,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let watched = Watched::new(&client, config.namespace.as_deref());
    watched.probe().await?;
    let (lock_reader, lock_writer) = reflector::store();
    let (lease_reader, lease_writer) = reflector::store();
    let (pod_reader, pod_writer) = reflector::store();
    let synced = Synced::new(replica.ready.clone());
    let elected = replica.leadership.elected();
    let ctx = Arc::new(Context::new(
        client,
        config,
        replica,
        lease_reader,
        pod_reader,
    ));
    let (due, due_rx) = futures::channel::mpsc::unbounded::<ObjectRef<IssueLock>>();
    let locks = watched.lock_triggers(lock_writer, &synced, ctx.clone());
    let leases = watched.lease_triggers(lease_writer, &synced, ctx.clone());
    let pods = watched.pod_triggers(pod_writer, &synced, ctx.clone(), due.clone());
    tokio::spawn(update_gauges(ctx.clone()));
    tokio::spawn(watches::watch_lease_expiry(ctx.clone(), due));
    tokio::spawn(lease_sweep::sweep_orphaned_leases(ctx.clone()));
    let (by_pod, by_lease) = (ctx.clone(), ctx.clone());
    Controller::for_stream(locks, lock_reader)
        .with_config(kube_controller::Config::default().concurrency(CONCURRENCY))
        .watches_stream(pods, move |pod: Pod| {
            let key = (pod.namespace().unwrap_or_default(), pod.name_any());
            by_pod.holders.locks_of_pod(&key)
        })
        .watches_stream(leases, move |lease: Lease| {
            by_lease.holders.locks_of_lease(&lease_key(&lease))
        })
        .reconcile_on(due_rx)
        .reconcile_all_on(elected)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile trigger failed");
            }
        })
        .await;
    Ok(())
}

/// Refreshes the gauges every half second.
async fn update_gauges(ctx: Arc<Context>) {
    loop {
        ctx.update_gauges();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
