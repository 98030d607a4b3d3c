//! The lock implementations compared, each behind [`LockPeer`]: one attempt to take an
//! issue's lock without waiting, and its release.

pub mod issuelock;
pub mod lease_manager;
pub mod raw;
pub mod redis;

use std::time::Duration;

/// How long a waiter that polls sleeps between two attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What every peer needs to connect.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Namespace of the API objects.
    pub namespace: String,
    /// `redis://127.0.0.1:PORT/`.
    pub redis_url: String,
}

/// One client of one lock implementation (its own connection, its own identity).
pub trait LockPeer: Sized {
    /// Proof of a held lock, given back to [`release`](Self::release).
    type Held;

    /// A new client, `who` naming it.
    async fn connect(ctx: &Ctx, who: &str) -> anyhow::Result<Self>;

    /// One attempt at the lock on `issue`: `None` when someone else holds it.
    async fn try_acquire(&self, issue: &str) -> anyhow::Result<Option<Self::Held>>;

    /// Gives the lock back.
    async fn release(&self, held: Self::Held) -> anyhow::Result<()>;

    /// Waits until the lock on `issue` is ours, the way a user of this peer would.
    /// By default: an attempt every [`POLL_INTERVAL`].
    async fn wait_acquire(&self, issue: &str) -> anyhow::Result<Self::Held> {
        loop {
            if let Some(held) = self.try_acquire(issue).await? {
                return Ok(held);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Gives back whatever the client still holds or keeps alive (heartbeats).
    async fn shutdown(self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A kube client with a connection pool of its own.
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_default().await?)
}
