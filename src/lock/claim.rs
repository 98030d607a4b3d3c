//! Claiming the next free issue: [`LockClient::claim_next`].
//!
//! Each worker tries the candidates in an order of its own (rendezvous hashing of its
//! identity over the keys), so that workers given the same list spread over it instead of
//! all racing for its first free key; it skips keys whose lock it sees held in its one
//! watch of the namespace's locks, and keys a caller-supplied check says are done. The
//! done check runs again once the lock is taken, so an issue finished (and released) by
//! someone else between the first check and the create is never started again.

use super::view::LockView;
use super::*;
use sha2::{Digest, Sha256};

/// The order in which a worker tries its candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Rendezvous order: by a hash of the worker identity and the key, so every worker
    /// has an order of its own and a key's place does not depend on the other keys.
    #[default]
    Rendezvous,
    /// The order given (a priority order): every worker tries the same key first, so
    /// workers sharing a list conflict (409) more.
    Listed,
}

/// What [`LockClient::claim_next`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Claimed {
    /// We hold the lock on this candidate, and the done check said it is not finished
    /// both before and after the lock was taken.
    Lock(LockGuard),
    /// No candidate could be taken. `done` are the candidates the check said are finished;
    /// `held` the others (held by someone else, as far as this client knows).
    Nothing {
        /// Candidates the done check called finished.
        done: Vec<IssueKey>,
        /// Candidates held by someone else.
        held: Vec<IssueKey>,
    },
}

/// The weight of `key` for the worker `identity`: SHA-256 over both, first 8 bytes.
pub fn rendezvous_weight(identity: &str, key: &IssueKey) -> u64 {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    h.update(key.as_str().as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// `keys` in `identity`'s rendezvous order (greatest weight first; ties by key).
pub fn rendezvous_order<'a>(identity: &str, keys: &'a [IssueKey]) -> Vec<&'a IssueKey> {
    let mut ordered: Vec<(u64, &IssueKey)> = keys
        .iter()
        .map(|k| (rendezvous_weight(identity, k), k))
        .collect();
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
    ordered.into_iter().map(|(_, k)| k).collect()
}

impl LockClient {
    /// The namespace's locks as this client's one watch sees them (started on first use,
    /// stopped by [`shutdown`](Self::shutdown)); waits for its first list.
    async fn view(&self) -> Result<Arc<LockView>> {
        let view = self
            .inner
            .view
            .get_or_init(|| async {
                LockView::start(self.inner.api.clone(), self.inner.stop_tasks.clone())
            })
            .await
            .clone();
        view.synced(self.inner.config.call_timeout).await?;
        Ok(view)
    }

    /// Takes the lock on the first candidate, in this worker's rendezvous order, that is
    /// not held (as this client's watch of the namespace's locks sees it; a stale view
    /// costs one `409`) and that `done` does not call finished, checked before the create
    /// and again once the lock is taken (a lock taken on a finished issue is released at
    /// once). Errors of `done` and of the creates end the call.
    pub async fn claim_next<D>(&self, candidates: &[IssueKey], done: D) -> Result<Claimed>
    where
        D: AsyncFnMut(&IssueKey) -> Result<bool>,
    {
        self.claim_next_in(ClaimOrder::Rendezvous, candidates, done)
            .await
    }

    /// [`claim_next`](Self::claim_next) with the order to try the candidates in.
    pub async fn claim_next_in<D>(
        &self,
        order: ClaimOrder,
        candidates: &[IssueKey],
        mut done: D,
    ) -> Result<Claimed>
    where
        D: AsyncFnMut(&IssueKey) -> Result<bool>,
    {
        let view = self.view().await?;
        let ordered = match order {
            ClaimOrder::Rendezvous => rendezvous_order(&self.inner.holder.identity, candidates),
            ClaimOrder::Listed => candidates.iter().collect(),
        };
        let (mut finished, mut held) = (Vec::new(), Vec::new());
        for key in ordered {
            if view.is_held(&key.lock_name()) {
                held.push(key.clone());
                continue;
            }
            if done(key).await? {
                finished.push(key.clone());
                continue;
            }
            let guard = match self.try_acquire(key.as_str()).await? {
                Acquisition::Acquired(guard) => guard,
                Acquisition::Held(_) => {
                    held.push(key.clone());
                    continue;
                }
            };
            match done(key).await {
                // Lost while the done check ran (deleted, reclaimed): someone else may
                // hold it now; never hand out a lock that is no longer ours.
                Ok(false) if guard.is_lost() => {
                    let _ = guard.release().await;
                    held.push(key.clone());
                }
                Ok(false) => return Ok(Claimed::Lock(guard)),
                Ok(true) => {
                    let _ = guard.release().await;
                    finished.push(key.clone());
                }
                Err(e) => {
                    let _ = guard.release().await;
                    return Err(e);
                }
            }
        }
        Ok(Claimed::Nothing {
            done: finished,
            held,
        })
    }

    /// A receiver that sees every change to the namespace's locks (for a worker waiting
    /// until a held candidate is released).
    pub(crate) async fn lock_changes(&self) -> Result<tokio::sync::watch::Receiver<u64>> {
        Ok(self.view().await?.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<IssueKey> {
        (0..n)
            .map(|i| IssueKey::parse(&format!("org/repo#{i}")).unwrap())
            .collect()
    }

    #[test]
    fn each_worker_has_an_order_of_its_own() {
        let ks = keys(100);
        let a = rendezvous_order("worker-a", &ks);
        let b = rendezvous_order("worker-b", &ks);
        assert_eq!(a.len(), 100);
        assert_ne!(a[..5], b[..5]);
        // Deterministic, and a permutation.
        assert_eq!(a, rendezvous_order("worker-a", &ks));
        let mut sorted: Vec<_> = a.iter().map(|k| k.as_str()).collect();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
    }

    #[test]
    fn first_choices_spread_over_the_keys() {
        // 16 workers over 1,000 keys: their first choices are (nearly) all different.
        let ks = keys(1000);
        let firsts: HashSet<&str> = (0..16)
            .map(|w| rendezvous_order(&format!("worker-{w}"), &ks)[0].as_str())
            .collect();
        assert!(firsts.len() >= 14, "{firsts:?}");
    }

    #[test]
    fn a_keys_place_does_not_depend_on_the_other_keys() {
        let ks = keys(50);
        let full = rendezvous_order("w", &ks);
        let some: Vec<IssueKey> = ks.iter().step_by(2).cloned().collect();
        let part = rendezvous_order("w", &some);
        let expected: Vec<&IssueKey> = full.into_iter().filter(|k| some.contains(k)).collect();
        assert_eq!(part, expected);
    }
}
