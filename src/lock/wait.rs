//! Waiting for a lock: [`LockClient::acquire`] watches the one lock object it wants and
//! tries again when it disappears.
//!
//! Fairness: none. Every waiter woken by a deletion tries its create after a random pause
//! of up to [`RETRY_JITTER`]; whichever create the API server commits first wins, and the
//! others go back to watching. A waiter never polls: between two attempts it only reads
//! its watch.

use super::*;
use futures::stream::BoxStream;

/// Longest random pause before a waiter tries again once the lock disappeared, so that the
/// waiters woken by one deletion do not all create at the same instant.
pub const RETRY_JITTER: Duration = Duration::from_millis(100);
/// Longest extra random pause before a waiter tries again after a failure that may pass.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

impl LockClient {
    /// Takes the lock on `issue`, waiting up to `timeout` for its holder to let go.
    ///
    /// Tries once at once; while the lock is held, watches that one lock object (one list
    /// and one watch request, kept open across retries) and tries again, after a random
    /// pause of at most [`RETRY_JITTER`], each time it is deleted (released, reclaimed by
    /// the controller). Returns `Held` (the holder last seen) when `timeout` passes first.
    /// There is no queue and no fairness between waiters (see the module docs).
    ///
    /// Errors: as [`try_acquire`](Self::try_acquire) on the first attempt; once waiting, a
    /// failure that may pass (API server unreachable or overloaded, one failed heartbeat
    /// renewal) is retried until the timeout. [`Error::HeartbeatUnhealthy`] at once when
    /// the heartbeat is lost while waiting.
    pub async fn acquire(&self, issue: &str, timeout: Duration) -> Result<Acquisition> {
        let key = IssueKey::parse(issue)?;
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let mut watch: Option<LockWatch> = None;
        let mut last_held = None;
        loop {
            let held = match (self.try_acquire(issue).await, last_held.take()) {
                (Ok(Acquisition::Acquired(guard)), _) => return Ok(Acquisition::Acquired(guard)),
                (Ok(Acquisition::Held(by)), _) => by,
                // Already waiting: a failure that may pass (an overloaded API server, all
                // woken waiters creating at once, one failed renewal) is retried until the
                // timeout instead of ending the wait.
                (Err(e), Some(held)) if self.may_succeed_later(&e) => {
                    tracing::debug!(issue, error = %e.chain(), "acquire failed while waiting; retrying");
                    let pause = RETRY_JITTER + jitter(RETRY_AFTER_FAILURE);
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                        .await
                        .is_err()
                    {
                        return Ok(Acquisition::Held(held));
                    }
                    last_held = Some(held);
                    continue;
                }
                (Err(e), _) => return Err(e),
            };
            last_held = Some(held.clone());
            let watch = watch.get_or_insert_with(|| LockWatch::start(&self.inner.api, &key));
            let gone = async {
                tokio::select! {
                    _ = watch.gone() => Ok(()),
                    // A client whose heartbeat is lost takes no lock: no use waiting.
                    _ = self.heartbeat_lost() => Err(Error::HeartbeatUnhealthy),
                }
            };
            match tokio::time::timeout_at(deadline, gone).await {
                Err(_) => return Ok(Acquisition::Held(held)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
            }
            let pause = jitter(RETRY_JITTER);
            if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                .await
                .is_err()
            {
                return Ok(Acquisition::Held(held));
            }
        }
    }
}

/// A watch on one lock object (by name), telling when it is absent.
struct LockWatch {
    events: BoxStream<'static, std::result::Result<watcher::Event<IssueLock>, watcher::Error>>,
    name: String,
    /// Whether the object was in the (re)list in progress.
    listed: bool,
}

impl LockWatch {
    fn start(api: &Api<IssueLock>, key: &IssueKey) -> Self {
        let name = key.lock_name();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        Self {
            events: watcher(api.clone(), config)
                .backoff(crate::watch_backoff::CappedBackoff::new(
                    crate::watch_backoff::CLIENT_CAP,
                ))
                .boxed(),
            name,
            listed: false,
        }
    }

    /// Completes once the lock object is seen absent: deleted, or missing from a (re)list.
    async fn gone(&mut self) {
        while let Some(event) = self.events.next().await {
            match event {
                Ok(watcher::Event::Init) => self.listed = false,
                Ok(watcher::Event::InitApply(_)) => self.listed = true,
                Ok(watcher::Event::InitDone) if !self.listed => return,
                Ok(watcher::Event::InitDone) | Ok(watcher::Event::Apply(_)) => {}
                Ok(watcher::Event::Delete(_)) => return,
                Err(e) => {
                    tracing::debug!(lock = %self.name, error = %e, "watch on a lock failed; retrying")
                }
            }
        }
        // The stream never ends; if it did, waiting would be pointless.
        std::future::pending::<()>().await
    }
}

/// A random duration in `[0, max)`.
pub(crate) fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(h.finish() % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(100)) < Duration::from_millis(100));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
