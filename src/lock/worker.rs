//! A long-running worker: [`Worker`] claims issues from a stream of candidate keys one
//! after another, on one [`LockClient`] (one Lease, one watch of the namespace's locks),
//! until no candidate is left.

use super::claim::{ClaimOrder, Claimed};
use super::*;
use crate::error::RESTART_PATIENCE;
use futures::{FutureExt, Stream};

/// First pause before a worker retries a claim that failed for a transient reason.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest pause between two such retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Claims issues one at a time from a stream of candidate keys.
///
/// A candidate stays a candidate until this worker has taken its lock once (whatever its
/// work then did: a worker never starts the same issue twice), or the done check calls it
/// finished. When every candidate left is held by others, the worker waits for a change
/// to the namespace's locks (its watch; no polling) or for new input. It is finished when
/// the input has ended and no candidate is left. Keys that come again are ignored. A claim
/// that fails for a transient reason ([`Error::is_transient`]: API server unreachable,
/// 429, 5xx) is retried with backoff (0.5 s doubling to 30 s).
///
/// ```no_run
/// use issuelock::{IssueKey, LockClient, Worker};
///
/// # async fn example(locks: LockClient) -> issuelock::Result<()> {
/// let keys: Vec<IssueKey> = ["org/repo#1", "org/repo#2"]
///     .into_iter()
///     .map(IssueKey::parse)
///     .collect::<Result<_, _>>()?;
/// let report = Worker::new(locks, futures::stream::iter(keys))
///     .run(
///         // Whether an issue is already done (e.g. a row in your database).
///         async |_key: &IssueKey| Ok(false),
///         |fence| async move { println!("working on {}", fence.issue) },
///     )
///     .await?;
/// println!("{} completed, {} lost", report.completed, report.lost);
/// # Ok(())
/// # }
/// ```
pub struct Worker<S> {
    locks: LockClient,
    order: ClaimOrder,
    input: Option<S>,
    pending: Vec<IssueKey>,
    known: HashSet<IssueKey>,
    /// A claim has succeeded (taken a lock or found every candidate held or done).
    claimed_before: bool,
    /// Since when claims have failed as on an API server just started, after one succeeded.
    failing_since: Option<tokio::time::Instant>,
}

/// What [`Worker::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkReport {
    /// Issues whose work completed while the lock was held.
    pub completed: u64,
    /// Issues whose lock was lost while (or right after) their work ran.
    pub lost: u64,
}

impl<S: Stream<Item = IssueKey> + Unpin> Worker<S> {
    /// A worker taking locks with `locks` on the keys `input` yields.
    pub fn new(locks: LockClient, input: S) -> Self {
        Self {
            locks,
            order: ClaimOrder::Rendezvous,
            input: Some(input),
            pending: Vec::new(),
            known: HashSet::new(),
            claimed_before: false,
            failing_since: None,
        }
    }

    /// The order to try candidates in (default: rendezvous).
    pub fn order(mut self, order: ClaimOrder) -> Self {
        self.order = order;
        self
    }

    /// Takes locks with `locks` from now on (after the previous client's heartbeat was
    /// lost); candidates and issues already taken are kept.
    pub fn set_client(&mut self, locks: LockClient) {
        self.locks = locks;
    }

    /// True for what an API server just started says (401, 403, 404 of the namespace or
    /// the CRD) after claims succeeded, for [`RESTART_PATIENCE`] from the first in a row.
    fn may_pass(&mut self, e: &Error) -> bool {
        if !(e.may_pass_after_restart() && self.claimed_before) {
            return false;
        }
        let since = *self
            .failing_since
            .get_or_insert_with(tokio::time::Instant::now);
        since.elapsed() < RESTART_PATIENCE
    }

    /// Candidates not yet taken by this worker nor known done.
    pub fn pending(&self) -> &[IssueKey] {
        &self.pending
    }

    fn add(&mut self, key: IssueKey) {
        if self.known.insert(key.clone()) {
            self.pending.push(key);
        }
    }

    /// Takes in the input that is ready; notes its end.
    fn take_ready_input(&mut self) {
        while let Some(input) = self.input.as_mut() {
            match input.next().now_or_never() {
                Some(Some(key)) => self.add(key),
                Some(None) => self.input = None,
                None => break,
            }
        }
    }

    /// The lock on the next candidate, or `None` once the input has ended and no candidate
    /// is left. Waits while every candidate left is held by others.
    ///
    /// May be dropped mid-call to stop (e.g. on a signal): a lock it may have taken goes to
    /// the client's background clean-up. Drop the worker then too: a stream dropped while
    /// it was being read may not be read again.
    pub async fn next<D>(&mut self, done: &mut D) -> Result<Option<LockGuard>>
    where
        D: AsyncFnMut(&IssueKey) -> Result<bool>,
    {
        let mut backoff = RETRY_MIN;
        loop {
            self.take_ready_input();
            if self.pending.is_empty() {
                match self.input.as_mut() {
                    None => return Ok(None),
                    Some(input) => match input.next().await {
                        Some(key) => self.add(key),
                        None => self.input = None,
                    },
                }
                continue;
            }
            // Candidates the done check calls finished leave the pending list whatever
            // the claim's outcome: never checked again (a claim that takes a lock stops at
            // it, and would otherwise re-check every finished key before it next time).
            let mut finished = Vec::new();
            let claimed = async {
                let mut changes = self.locks.lock_changes().await?;
                changes.borrow_and_update();
                let mut noting_done = async |key: &IssueKey| {
                    let is_done = done(key).await?;
                    if is_done {
                        finished.push(key.clone());
                    }
                    Ok(is_done)
                };
                let claimed = self
                    .locks
                    .claim_next_in(self.order, &self.pending, &mut noting_done)
                    .await?;
                Ok::<_, Error>((changes, claimed))
            };
            let claimed = claimed.await;
            if !finished.is_empty() {
                let finished: HashSet<IssueKey> = finished.into_iter().collect();
                self.pending.retain(|k| !finished.contains(k));
            }
            let (mut changes, claimed) = match claimed {
                // The API server is overloaded or unreachable for a moment, or, just
                // started, refuses what it allowed before: try again. A lasting outage
                // ends in a lost heartbeat, which is not transient.
                Err(e) if self.locks.may_succeed_later(&e) || self.may_pass(&e) => {
                    tracing::warn!(error = %e.chain(), retry_in = ?backoff, "claiming failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
                other => other?,
            };
            backoff = RETRY_MIN;
            self.claimed_before = true;
            self.failing_since = None;
            match claimed {
                Claimed::Lock(guard) => {
                    self.pending.retain(|k| k != guard.issue());
                    return Ok(Some(guard));
                }
                Claimed::Nothing { .. } => {
                    if self.pending.is_empty() {
                        continue;
                    }
                    // Every candidate left is held by others: wait for a release or input.
                    let next_input = async {
                        match self.input.as_mut() {
                            Some(input) => input.next().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        // The sender lives as long as the client: this never fails.
                        _ = changes.changed() => {}
                        key = next_input => match key {
                            Some(key) => self.add(key),
                            None => self.input = None,
                        },
                        // A client whose heartbeat is lost takes no lock: stop waiting.
                        _ = self.locks.heartbeat_lost() => return Err(Error::HeartbeatUnhealthy),
                    }
                }
            }
        }
    }

    /// Runs `work` on each claimed issue until no candidate is left, as
    /// [`LockClient::process_safely`] does for one: `work` is cancelled (its future dropped)
    /// as soon as the lock may be lost, and the lock is released after it. Ends with the
    /// first error of a claim or of `done` (e.g. the heartbeat was lost).
    pub async fn run<D, F, Fut>(mut self, mut done: D, mut work: F) -> Result<WorkReport>
    where
        D: AsyncFnMut(&IssueKey) -> Result<bool>,
        F: FnMut(Fence) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut report = WorkReport::default();
        while let Some(guard) = self.next(&mut done).await? {
            match process_under(guard, &mut work).await {
                Outcome::Completed(()) => report.completed += 1,
                _ => report.lost += 1,
            }
        }
        Ok(report)
    }
}
