//! issuelock through its library: `LockClient::try_acquire` and `LockGuard::release`,
//! one client (one heartbeat Lease) per [`LockPeer`].

use super::{Ctx, LockPeer, kube_client};
use issuelock::{Acquisition, HolderIdentity, LockClient, LockConfig, LockGuard};

pub struct Issuelock {
    locks: LockClient,
}

impl Issuelock {
    /// The library's client, for a raw peer that sends what it sends.
    pub fn client(&self) -> &LockClient {
        &self.locks
    }
}

impl LockPeer for Issuelock {
    type Held = LockGuard;

    async fn connect(ctx: &Ctx, who: &str) -> anyhow::Result<Self> {
        let identity = HolderIdentity::from_env(Some(who.to_owned()));
        let locks = LockClient::start(
            kube_client().await?,
            LockConfig::new(&ctx.namespace, identity),
        )
        .await?;
        Ok(Self { locks })
    }

    async fn try_acquire(&self, issue: &str) -> anyhow::Result<Option<LockGuard>> {
        match self.locks.try_acquire(issue).await? {
            Acquisition::Acquired(guard) => Ok(Some(guard)),
            Acquisition::Held(_) => Ok(None),
            _ => anyhow::bail!("an acquisition outcome this bench does not know"),
        }
    }

    async fn release(&self, held: LockGuard) -> anyhow::Result<()> {
        Ok(held.release().await?)
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        Ok(self.locks.shutdown().await?)
    }
}
