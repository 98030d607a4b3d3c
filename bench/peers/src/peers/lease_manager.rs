//! A Lease per issue with the `kube-lease-manager` crate, used as its documentation's
//! "partially manual" approach says: build a `LeaseManager` for the issue's Lease,
//! `changed()` until it reports the lock ours, keep `changed()` running while holding
//! (it renews the Lease), `release()` when done.

use super::{Ctx, LockPeer, kube_client};
use issuelock::IssueKey;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Lease duration and grace (it renews `grace` seconds before expiry), in seconds: the
/// same 15 s lease as issuelock's and client-go's defaults.
pub const DURATION: u64 = 15;
pub const GRACE: u64 = 5;
/// How long one attempt waits for a lease held by someone else before giving up.
pub const TRY_WINDOW: Duration = Duration::from_secs(1);

pub struct LeaseManagerPeer {
    client: kube::Client,
    namespace: String,
    identity: String,
}

/// A held Lease: its manager and the task keeping `changed()` running.
pub struct Held {
    manager: Arc<LeaseManager>,
    renewing: JoinHandle<()>,
}

impl LeaseManagerPeer {
    async fn manager(&self, issue: &str) -> anyhow::Result<Arc<LeaseManager>> {
        let name = format!("klm-{}", IssueKey::parse(issue)?.lock_name());
        let manager = LeaseManagerBuilder::new(self.client.clone(), name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(DURATION)
            .with_grace(GRACE)
            .build()
            .await?;
        Ok(Arc::new(manager))
    }

    fn held(manager: Arc<LeaseManager>) -> Held {
        let renewer = manager.clone();
        let renewing = tokio::spawn(async move {
            // Returns only when the state changes (lost) or on an API error.
            while let Ok(true) | Err(_) = renewer.changed().await {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Held { manager, renewing }
    }
}

impl LockPeer for LeaseManagerPeer {
    type Held = Held;

    async fn connect(ctx: &Ctx, who: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: kube_client().await?,
            namespace: ctx.namespace.clone(),
            identity: who.to_owned(),
        })
    }

    async fn try_acquire(&self, issue: &str) -> anyhow::Result<Option<Held>> {
        let manager = self.manager(issue).await?;
        match tokio::time::timeout(TRY_WINDOW, manager.changed()).await {
            Ok(Ok(true)) => Ok(Some(Self::held(manager))),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_elapsed) => {
                // Held by someone else; give back what may have landed meanwhile.
                manager.release().await?;
                Ok(None)
            }
        }
    }

    async fn release(&self, held: Held) -> anyhow::Result<()> {
        held.renewing.abort();
        held.manager.release().await?;
        Ok(())
    }

    async fn wait_acquire(&self, issue: &str) -> anyhow::Result<Held> {
        let manager = self.manager(issue).await?;
        while !manager.changed().await? {}
        Ok(Self::held(manager))
    }
}
