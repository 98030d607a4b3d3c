//! Taking and giving back locks: [`LockClient`], [`LockGuard`].
//!
//! # Protocol
//! * **Acquire** is one `POST` of an `IssueLock` named after the issue
//!   ([`IssueKey::lock_name`]). `201 Created`: we hold it, and the response's
//!   `resourceVersion` is our [`FencingToken`]. `409 AlreadyExists`: someone holds it;
//!   we read it and report who. A create that timed out or lost its connection may have
//!   succeeded, so we read the object back and adopt it only if it carries our own
//!   heartbeat Lease name (unique to this process run).
//! * **Release** is one `DELETE` with precondition `{uid}`. `404`/`409` mean the lock was
//!   taken from us: [`Error::LockLost`], never a silent success.
//!
//! Ownership is only ever decided from the API server's answer to a write, never from a
//! cache.
//!
//! # Nothing left behind while the client lives
//! A lock this client may have left behind goes to one background clean-up: a guard
//! dropped without release, a release that failed, a create whose outcome stayed unknown
//! or whose read-back failed, a `try_acquire` future dropped after its create was sent.
//! The clean-up deletes only an object carrying the uid we held or the nonce of our own
//! acquire call (and our Lease), always under a `uid` precondition, and retries with
//! capped exponential backoff for as long as the client lives; [`LockClient::shutdown`]
//! makes a final attempt, and the controller reclaims whatever is still left once the
//! Lease is gone. A lock of ours found on a create (`409`) that no guard holds and no
//! acquire call of this client is taking is deleted and the create retried: the client
//! never reports itself as another holder. [`LockClient::cleanup_stats`] counts it all.

use crate::crd::{HOLDER_LEASE_LABEL, Holder, IssueLock, IssueLockSpec, lease_owner};
use crate::error::{
    Deleted, Error, Result, classify, delete_exact, is_already_exists, is_transient, within,
};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::holder::HolderIdentity;
use crate::key::IssueKey;
use crate::signature::Keyring;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod claim;
mod cleanup;
mod held_locks;
mod own_watch;
mod view;
mod wait;
mod worker;

pub use claim::{ClaimOrder, Claimed, rendezvous_order, rendezvous_weight};
pub use wait::RETRY_JITTER;
pub use worker::{WorkReport, Worker};

use cleanup::*;
use held_locks::*;
use own_watch::*;

/// Annotation carrying the nonce of the acquire call that created a lock.
pub const ACQUIRE_NONCE_ANNOTATION: &str = "issuelock.dev/acquire-nonce";

/// How many times one `try_acquire` retries a create whose outcome was unknown.
const CREATE_ATTEMPTS: usize = 3;

/// First pause before the clean-up retries a lock left behind; doubled each time.
const CLEANUP_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Largest pause between two clean-up attempts of one lock left behind.
const CLEANUP_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long after it was sent a create of unknown outcome may still be committed:
/// kube-apiserver abandons a request after its `--request-timeout` (60 s by default).
const CREATE_MAY_LAND_WITHIN: Duration = Duration::from_secs(90);
/// How many clean-up deletes (and read-backs) one pass keeps in flight at once.
const CLEANUP_CALLS_IN_FLIGHT: usize = 32;

/// A fencing token: the `resourceVersion` returned by the create that took the lock.
///
/// Every later holder of the same issue gets a strictly greater token (resource versions
/// are etcd revisions, comparable since Kubernetes 1.35), so a storage system that
/// remembers the largest token it has seen can reject writes from a holder that has
/// since lost the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// Parses a resourceVersion; fails if the server's versions are not integers.
    pub fn from_resource_version(rv: &str) -> Result<Self> {
        rv.parse()
            .map(FencingToken)
            .map_err(|_| Error::UncomparableResourceVersion(rv.to_owned()))
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The outcome of [`LockClient::try_acquire`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Acquisition {
    /// We hold the lock until the guard is released, dropped or lost.
    Acquired(LockGuard),
    /// Someone else holds it, or another task of this same client: one of its guards, or
    /// an acquire call of it in flight.
    Held(HeldBy),
}

/// Who holds a lock we could not take.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HeldBy {
    /// The issue key.
    pub issue: String,
    /// The holder recorded in the lock.
    pub holder: Holder,
    /// When the lock was taken (its creationTimestamp).
    pub since: Option<Timestamp>,
}

/// Settings of a [`LockClient`].
///
/// Built with [`LockConfig::new`] and the `with_*` methods (the fields stay public to
/// read and to change; more may be added):
///
/// ```
/// use issuelock::{HeartbeatConfig, HolderIdentity, LockConfig};
/// use std::time::Duration;
///
/// let config = LockConfig::new("workers", HolderIdentity::new("worker-1"))
///     .with_max_hold(Duration::from_secs(3600))
///     .with_call_timeout(Duration::from_secs(5))
///     .with_heartbeat(HeartbeatConfig::default().with_renew_interval(Duration::from_secs(1)));
/// assert_eq!(config.namespace, "workers");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockConfig {
    /// Namespace the locks (and the heartbeat Lease) live in.
    pub namespace: String,
    /// Who this process is.
    pub identity: HolderIdentity,
    /// The Kubernetes username recorded in each lock; `None` asks the API server
    /// (SelfSubjectReview) at start, which also tells the pod a pod-bound token belongs
    /// to (recorded as the holder's pod).
    pub user: Option<String>,
    /// Optional hard cap on how long each lock may be held.
    pub max_hold: Option<Duration>,
    /// Deadline of every single API call.
    pub call_timeout: Duration,
    /// Heartbeat timing.
    pub heartbeat: HeartbeatConfig,
    /// Keys to sign each lock with (HMAC-SHA256), if any.
    pub keys: Option<Arc<Keyring>>,
}

impl LockConfig {
    /// Defaults for `identity` in `namespace`: no max hold, 10 s call timeout, default heartbeat.
    pub fn new(namespace: impl Into<String>, identity: HolderIdentity) -> Self {
        Self {
            namespace: namespace.into(),
            identity,
            user: None,
            max_hold: None,
            call_timeout: Duration::from_secs(10),
            heartbeat: HeartbeatConfig::default(),
            keys: None,
        }
    }

    /// Records `user` as the Kubernetes username in each lock instead of asking the API
    /// server at start (see [`LockConfig::user`]).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Caps how long each lock may be held (at most [`MAX_HOLD_LIMIT`]).
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// Sets the deadline of every single API call (default 10 s).
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// Sets the heartbeat timing (default [`HeartbeatConfig::default`]).
    pub fn with_heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Signs each lock with the signing key of `keys`.
    pub fn with_keys(mut self, keys: Arc<Keyring>) -> Self {
        self.keys = Some(keys);
        self
    }
}

/// The outcome of [`LockClient::process_safely`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<T> {
    /// The work ran to completion while we held the lock, and the lock was released.
    Completed(T),
    /// Someone else holds the lock; the work did not run.
    Held(HeldBy),
    /// The lock was lost while the work ran. `output` is `Some` when the work finished
    /// but the lock turned out lost at release time: it may have overlapped with another
    /// holder's work. When `None`, the work was cancelled (its future dropped).
    Lost {
        /// The work's output, if it finished before the loss was known.
        output: Option<T>,
    },
}

/// What the work protected by [`LockClient::process_safely`] may know about its lock.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fence {
    /// The locked issue.
    pub issue: IssueKey,
    /// The fencing token of this acquisition; pass it to storage that can check it.
    pub fencing_token: FencingToken,
    /// Cancelled when the lock may be lost.
    pub lost: CancellationToken,
}

/// Takes locks for one holder process. Cheap to clone.
///
/// One client per process: it owns the process's heartbeat Lease and its watch of its
/// own locks. [`LockClient::shutdown`] gives back what is left.
///
/// ```no_run
/// use issuelock::{HolderIdentity, LockClient, LockConfig};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kube::Client::try_default().await?;
/// let config = LockConfig::new("workers", HolderIdentity::from_env(None));
/// let locks = LockClient::start(client, config).await?;
/// println!("holding locks as {} in {}", locks.holder().identity, locks.namespace());
/// // ... try_acquire, process_safely, claim_next, or a Worker ...
/// locks.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LockClient {
    inner: Arc<Inner>,
}

/// Counts of [`LockClient::try_acquire`] outcomes since the client started, for workers
/// to export as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireStats {
    /// Calls that took the lock.
    pub acquired: u64,
    /// Calls that found it held.
    pub held: u64,
    /// Calls that failed with an error.
    pub failed: u64,
}

/// Counts of the client's background clean-up since it started, for workers to export as
/// metrics: locks this client may have left behind (a guard dropped without release, a
/// release that failed, a create whose outcome stayed unknown, an acquire call dropped
/// after its create was sent, a lock of ours found on a create) and what became of them.
/// The ordinary releases of [`LockClient::shutdown`] are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupStats {
    /// Locks (possibly) left behind so far; each is also logged.
    pub queued: u64,
    /// Clean-ups still being retried now.
    pub pending: u64,
    /// Lock objects left behind that this client then deleted.
    pub released: u64,
}

struct Inner {
    stats: Mutex<AcquireStats>,
    api: Api<IssueLock>,
    config: LockConfig,
    holder: Holder,
    heartbeat: Heartbeat,
    held: HeldLocks,
    cleanup: Cleanup,
    /// Stops the watch on our own locks and the clean-up loop.
    stop_tasks: CancellationToken,
    /// The namespace's locks, for claiming (started on first use).
    view: tokio::sync::OnceCell<Arc<view::LockView>>,
}

// === impl LockClient ===

impl LockClient {
    /// Starts a client: creates its heartbeat Lease, starts renewing it, watching this
    /// client's own locks (one watch, by label) and cleaning up what it leaves behind.
    /// Fails with a clear error when the namespace is missing, RBAC forbids Leases, or
    /// the configuration is inconsistent.
    pub async fn start(client: kube::Client, config: LockConfig) -> Result<Self> {
        if config.call_timeout.is_zero() {
            return Err(Error::Config("call timeout must be positive".into()));
        }
        if config.max_hold.is_some_and(|d| d.as_secs() == 0) {
            return Err(Error::Config(
                "max hold time must be at least one second".into(),
            ));
        }
        if let Some(max_hold) = config.max_hold
            && max_hold > MAX_HOLD_LIMIT
        {
            return Err(Error::Config(format!(
                "max hold time must be at most {} seconds (10 years), not {max_hold:?}",
                MAX_HOLD_LIMIT.as_secs()
            )));
        }
        config.heartbeat.validate()?;
        let lease = config.identity.new_lease_name();
        let who = match config.user.clone() {
            Some(user) => crate::holder::Credentials {
                user: Some(user),
                pod: None,
            },
            None => crate::holder::whoami(&client, config.call_timeout).await,
        };
        let holder = Holder {
            identity: config.identity.identity.clone(),
            pod: crate::holder::holder_pod(who.pod, config.identity.pod.clone()),
            lease,
            user: who.user,
        };
        let heartbeat = Heartbeat::start(
            client.clone(),
            &config.namespace,
            &holder,
            config.heartbeat,
            config.call_timeout,
        )
        .await?;
        let inner = Arc::new(Inner {
            stats: Mutex::new(AcquireStats::default()),
            api: Api::namespaced(client, &config.namespace),
            config,
            holder,
            heartbeat,
            held: HeldLocks::default(),
            cleanup: Cleanup::default(),
            stop_tasks: CancellationToken::new(),
            view: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(watch_own_locks(
            Arc::downgrade(&inner),
            inner.stop_tasks.clone(),
        ));
        tokio::spawn(clean_up_loop(
            Arc::downgrade(&inner),
            inner.stop_tasks.clone(),
        ));
        Ok(Self { inner })
    }

    /// True while this client's heartbeat is healthy enough to take new locks.
    pub fn is_healthy(&self) -> bool {
        self.inner.heartbeat.pulse().is_healthy()
    }

    /// True once this client's heartbeat is lost for good (it then takes no new locks).
    pub fn is_heartbeat_lost(&self) -> bool {
        self.inner.heartbeat.pulse().lost.is_cancelled()
    }

    /// Completes when this client's heartbeat is lost; all its locks are then lost too.
    pub async fn heartbeat_lost(&self) {
        self.inner.heartbeat.lost().await
    }

    /// True when trying again later may succeed: the API server was unreachable or
    /// overloaded, or the last Lease renewal failed while the heartbeat is not lost yet
    /// (the next renewal may get through before the renew deadline).
    pub(crate) fn may_succeed_later(&self, e: &Error) -> bool {
        e.is_transient()
            || (matches!(e, Error::HeartbeatUnhealthy)
                && !self.inner.heartbeat.pulse().lost.is_cancelled())
    }

    /// Releases every lock this client still holds, makes a final attempt at every
    /// pending clean-up, stops the heartbeat and deletes its Lease. Returns the first error
    /// met; it still attempts every step. Whatever could not be deleted is reclaimed by the
    /// controller (and the garbage collector) once the Lease is gone.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stop_tasks.cancel();
        for (name, lock) in self.inner.held.give_up_all() {
            self.inner.cleanup.queue(Orphan::lock(
                name,
                lock.issue,
                lock.uid,
                LeftBehind::Shutdown,
            ));
        }
        let mut first_error = self.inner.clean_up(Pass::Final).await;
        if let Err(e) = self.inner.heartbeat.stop().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes the lock on `issue`, runs `work` while holding it, cancels `work` (drops its
    /// future) as soon as the lock may be lost, and releases the lock. A release that
    /// fails is retried in the background while the client lives (see [`CleanupStats`]).
    ///
    /// This is the whole protocol for the common case: there is nothing else for the
    /// caller to get wrong.
    ///
    /// ```no_run
    /// use issuelock::{LockClient, Outcome};
    ///
    /// # async fn example(locks: LockClient) -> issuelock::Result<()> {
    /// let outcome = locks
    ///     .process_safely("org/repo#123", |fence| async move {
    ///         // Hand fence.fencing_token to storage that can check it; fence.lost is
    ///         // cancelled when the lock may be lost (this future is dropped then).
    ///         format!("{} done under token {}", fence.issue, fence.fencing_token)
    ///     })
    ///     .await?;
    /// match outcome {
    ///     Outcome::Completed(message) => println!("{message}"),
    ///     Outcome::Held(by) => println!("held by {} since {:?}", by.holder.identity, by.since),
    ///     Outcome::Lost { output } => println!("lost the lock (work finished: {})", output.is_some()),
    ///     _ => {}
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn process_safely<T, F, Fut>(&self, issue: &str, work: F) -> Result<Outcome<T>>
    where
        F: FnOnce(Fence) -> Fut,
        Fut: Future<Output = T>,
    {
        match self.try_acquire(issue).await? {
            Acquisition::Acquired(guard) => Ok(process_under(guard, work).await),
            Acquisition::Held(by) => Ok(Outcome::Held(by)),
        }
    }

    /// The holder this client writes into its locks.
    pub fn holder(&self) -> &Holder {
        &self.inner.holder
    }

    /// The namespace this client takes locks in.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// Tries once to take the lock on `issue`; never waits for a holder to let go.
    ///
    /// `Held` names another holder, or this very client when another of its tasks holds
    /// the lock or is taking it right now (same Lease, other acquire call). A lock of this
    /// client that nothing of it holds any more (an orphan) is deleted and the create
    /// retried: it is never reported as held.
    ///
    /// If the call ends without the lock while a create of it may have been committed
    /// (its outcome stayed unknown, the read-back failed, or this future was dropped after
    /// the create was sent), the lock it may have left is cleaned up in the background.
    ///
    /// Errors: [`Error::InvalidKey`] before any call; [`Error::NameCollision`] if another
    /// key's lock has this key's name; API errors classified by [`classify`].
    ///
    /// ```no_run
    /// use issuelock::{Acquisition, LockClient};
    ///
    /// # async fn example(locks: LockClient) -> issuelock::Result<()> {
    /// match locks.try_acquire("org/repo#123").await? {
    ///     Acquisition::Acquired(guard) => {
    ///         println!("fencing token {}", guard.fencing_token());
    ///         // ... work, stopping when guard.lost() completes ...
    ///         guard.release().await?; // Error::LockLost if it was taken from us
    ///     }
    ///     Acquisition::Held(by) => println!("held by {}", by.holder.identity),
    ///     _ => {}
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_acquire(&self, issue: &str) -> Result<Acquisition> {
        let outcome = self.acquire_once(issue).await;
        let mut stats = self.inner.stats.lock().expect("stats mutex");
        match &outcome {
            Ok(Acquisition::Acquired(_)) => stats.acquired += 1,
            Ok(Acquisition::Held(_)) => stats.held += 1,
            Err(_) => stats.failed += 1,
        }
        outcome
    }

    /// Outcomes of `try_acquire` so far.
    pub fn stats(&self) -> AcquireStats {
        *self.inner.stats.lock().expect("stats mutex")
    }

    /// What the background clean-up has done so far.
    pub fn cleanup_stats(&self) -> CleanupStats {
        self.inner.cleanup.stats()
    }

    async fn acquire_once(&self, issue: &str) -> Result<Acquisition> {
        let key = IssueKey::parse(issue)?;
        if !self.is_healthy() {
            return Err(Error::HeartbeatUnhealthy);
        }
        let name = key.lock_name();
        let mut call = AcquireCall::begin(&self.inner, &key, &name);
        let desired = self.inner.desired_lock(&key, &name, &call.nonce);
        let started = Instant::now();
        for _ in 0..CREATE_ATTEMPTS {
            call.sending();
            let mut create_error = None;
            match self
                .inner
                .call(
                    "create lock",
                    self.inner.api.create(&PostParams::default(), &desired),
                )
                .await
            {
                Ok(Ok(created)) => {
                    call.answered();
                    return self.taken(key, &desired.spec, created, started, call).await;
                }
                Ok(Err(e)) if is_already_exists(&e) => call.answered(),
                // A transient failure (transport, 429, 5xx such as a proxy's 504) may hide
                // a committed create.
                Ok(Err(e)) if !is_transient(&e) => {
                    call.answered();
                    return Err(classify("create lock", self.namespace(), e));
                }
                // Timed out or the connection broke: the create may have happened.
                Ok(Err(e)) => {
                    call.unknown();
                    create_error = Some(classify("create lock", self.namespace(), e));
                }
                Err(e) => {
                    call.unknown();
                    create_error = Some(e);
                }
            }
            let existing = match self.inner.read(&name).await {
                Ok(existing) => existing,
                // Neither call got through: report the create's failure.
                Err(e) => return Err(create_error.unwrap_or(e)),
            };
            let Some(existing) = existing else {
                // Released between our create and our read, or never created: try again.
                continue;
            };
            if existing.spec.issue != key.as_str() {
                return Err(Error::NameCollision {
                    issue: key.to_string(),
                    name,
                    other: existing.spec.issue,
                });
            }
            if self.inner.created_by(&existing, &call.nonce) {
                return self
                    .taken(key, &desired.spec, existing, started, call)
                    .await;
            }
            if self.inner.records_us(&existing) && !self.inner.held.in_use(&existing) {
                // Ours, but nothing of this client holds or is taking it: an orphan.
                self.inner.release_orphan_found(&existing, &key).await?;
                continue;
            }
            return Ok(Acquisition::Held(HeldBy {
                issue: existing.spec.issue,
                holder: existing.spec.holder,
                since: existing.metadata.creation_timestamp.map(|t| t.0),
            }));
        }
        Err(Error::Unreachable {
            step: "create lock",
            source: format!("outcome still unknown after {CREATE_ATTEMPTS} attempts").into(),
        })
    }

    /// Hands out the guard of the lock this call created (`stored`, as the API server
    /// keeps it), unless the server pruned the spec we sent: a lock held under a record
    /// that misdescribes us (e.g. without the pod namespace the controller needs) is given
    /// back at once.
    async fn taken(
        &self,
        key: IssueKey,
        sent: &IssueLockSpec,
        stored: IssueLock,
        started: Instant,
        mut call: AcquireCall<'_>,
    ) -> Result<Acquisition> {
        let dropped = dropped_fields(sent, &stored.spec);
        let guard = self.inner.guard(key, stored, started)?;
        call.acquired();
        match dropped {
            None => Ok(Acquisition::Acquired(guard)),
            Some(error) => {
                let _ = guard.release().await;
                Err(error)
            }
        }
    }
}

/// Runs `work` under `guard` (see [`LockClient::process_safely`]): cancels it as soon as
/// the lock may be lost, and releases the lock after it.
pub async fn process_under<T, F, Fut>(guard: LockGuard, work: F) -> Outcome<T>
where
    F: FnOnce(Fence) -> Fut,
    Fut: Future<Output = T>,
{
    let issue = guard.issue().to_string();
    let fence = Fence {
        issue: guard.issue().clone(),
        fencing_token: guard.fencing_token(),
        lost: guard.lost_token(),
    };
    let output = tokio::select! {
        output = work(fence) => output,
        _ = guard.lost() => {
            let _ = guard.release().await;
            return Outcome::Lost { output: None };
        }
    };
    if guard.is_lost() {
        let _ = guard.release().await;
        return Outcome::Lost {
            output: Some(output),
        };
    }
    match guard.release().await {
        Ok(()) => Outcome::Completed(output),
        Err(Error::LockLost { .. }) => Outcome::Lost {
            output: Some(output),
        },
        Err(e) => {
            tracing::warn!(issue = %issue, error = %e.chain(), "work completed but the release failed; the lock is released in the background");
            Outcome::Completed(output)
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Runs one API call under the configured deadline.
    async fn call<T>(
        &self,
        step: &'static str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        within(step, self.config.call_timeout, fut).await
    }

    /// Reads the current lock object for `name`, if any.
    async fn read(&self, name: &str) -> Result<Option<IssueLock>> {
        self.call("read lock", self.api.get_opt(name))
            .await?
            .map_err(|e| classify("read lock", &self.config.namespace, e))
    }

    fn desired_lock(&self, key: &IssueKey, name: &str, nonce: &str) -> IssueLock {
        let holder = self.holder.clone();
        let mut lock = IssueLock::new(
            name,
            IssueLockSpec {
                issue: key.to_string(),
                max_hold_seconds: self.config.max_hold.map(max_hold_seconds),
                signature: None,
                holder,
            },
        );
        if let Some(keys) = &self.config.keys {
            lock.spec.signature = Some(keys.sign(&self.config.namespace, name, &lock.spec));
        }
        lock.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                HOLDER_LEASE_LABEL.to_owned(),
                self.holder.lease.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                ACQUIRE_NONCE_ANNOTATION.to_owned(),
                nonce.to_owned(),
            )])),
            // The cluster's garbage collector deletes the lock with its holder's Lease.
            owner_references: Some(vec![lease_owner(
                &self.holder.lease,
                self.heartbeat.lease_uid(),
            )]),
            ..ObjectMeta::default()
        };
        lock
    }

    /// True when `lock` was created by this client: it records our whole holder — our
    /// heartbeat Lease (unique to this process run), identity, pod and user. Anyone can
    /// copy our Lease name into a lock; where an admission policy binds `user` to the
    /// creator, a copy in someone else's name is not ours and is reported as theirs.
    fn records_us(&self, lock: &IssueLock) -> bool {
        lock.spec.holder == self.holder
    }

    /// True when `lock` is the object created by the acquire call that used `nonce`: it
    /// names our heartbeat Lease and carries that nonce.
    fn created_by(&self, lock: &IssueLock, nonce: &str) -> bool {
        self.records_us(lock) && acquire_nonce(&lock.metadata) == Some(nonce)
    }

    /// Registers a lock we hold and hands out its guard. `acquired_at` is when the create
    /// (or the first of the creates) that took it was sent. A lock we cannot hand out (its
    /// resourceVersion is no fencing token) is cleaned up.
    fn guard(
        self: &Arc<Self>,
        issue: IssueKey,
        lock: IssueLock,
        acquired_at: Instant,
    ) -> Result<LockGuard> {
        let name = lock.metadata.name.clone().unwrap_or_default();
        let uid = lock.metadata.uid.clone().unwrap_or_default();
        let rv = lock
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default();
        let fencing_token = match FencingToken::from_resource_version(rv) {
            Ok(token) => token,
            Err(e) => {
                self.cleanup
                    .queue(Orphan::lock(name, issue, uid, LeftBehind::NoFencingToken));
                return Err(e);
            }
        };
        let lost = self.heartbeat.pulse().lost.child_token();
        // `start` bounds the max hold time; no end is as good as one past the clock's.
        let max_hold_deadline = self
            .config
            .max_hold
            .and_then(|max_hold| acquired_at.checked_add(max_hold));
        if let Some(end) = max_hold_deadline {
            // Give up the lock on our own clock, measured from before the create was sent,
            // so we stop no later than the controller may reclaim it.
            let lost = lost.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => lost.cancel(),
                    _ = lost.cancelled() => {}
                }
            });
        }
        self.held.hold(
            name.clone(),
            HeldLock {
                uid: uid.clone(),
                fencing_token,
                issue: issue.clone(),
                lost: lost.clone(),
            },
            acquire_nonce(&lock.metadata),
        );
        Ok(LockGuard {
            inner: self.clone(),
            issue,
            name,
            uid,
            fencing_token,
            lost,
            max_hold_deadline,
            releasing: false,
            released: false,
        })
    }

    /// Deletes `name` if it still has `uid`. [`Error::LockLost`] when it is gone or was
    /// replaced.
    async fn delete(&self, name: &str, uid: &str, issue: &IssueKey) -> Result<()> {
        let delete = delete_exact(&self.api, name, uid, None);
        match self.call("release lock", delete).await? {
            Ok(Deleted::Deleted) => Ok(()),
            Ok(Deleted::GoneOrChanged) => Err(Error::LockLost {
                issue: issue.to_string(),
            }),
            Err(e) => Err(classify("release lock", &self.config.namespace, e)),
        }
    }

    /// Deletes an orphan of ours found while acquiring; a transient failure hands it to
    /// the background clean-up and fails the acquire.
    async fn release_orphan_found(&self, lock: &IssueLock, issue: &IssueKey) -> Result<()> {
        let name = lock.metadata.name.clone().unwrap_or_default();
        let uid = lock.metadata.uid.clone().unwrap_or_default();
        tracing::warn!(%issue, lock = %name, %uid, "found a lock of this client that nothing of it holds; releasing it");
        match self.delete(&name, &uid, issue).await {
            Ok(()) => {
                self.cleanup.found();
                self.cleanup.released();
                Ok(())
            }
            Err(Error::LockLost { .. }) => {
                self.cleanup.found();
                Ok(())
            }
            Err(e) => {
                self.cleanup.queue(Orphan::lock(
                    name,
                    issue.clone(),
                    uid,
                    LeftBehind::FoundOnCreate,
                ));
                Err(e)
            }
        }
    }

    /// One pass of the clean-up: every due orphan (every pending one on the final pass)
    /// gets one attempt; those not done are queued again with a longer backoff. Returns
    /// the first error met.
    async fn clean_up(&self, pass: Pass) -> Option<Error> {
        let _one_pass_at_a_time = self.cleanup.passes.lock().await;
        let due = self.cleanup.take_due(Instant::now(), pass);
        let attempts = due.into_iter().map(|orphan| async move {
            let result = self.clean_up_one(&orphan).await;
            (orphan, result)
        });
        // A bounded number of calls in flight: a shutdown that gives back thousands of
        // locks must not send them all at once, where each would wait out its call
        // timeout behind the others on a busy API server.
        let results: Vec<_> = futures::stream::iter(attempts)
            .buffer_unordered(CLEANUP_CALLS_IN_FLIGHT)
            .collect()
            .await;
        let mut first_error = None;
        for (orphan, result) in results {
            match result {
                Ok(true) => self.cleanup.done(),
                // Nothing there yet; at shutdown, a create landing later is the
                // controller's to reclaim once our Lease is gone.
                Ok(false) if pass == Pass::Final => self.cleanup.done(),
                Ok(false) => self.cleanup.retry(orphan),
                Err(e) => {
                    tracing::debug!(issue = %orphan.issue, lock = %orphan.name, error = %e.chain(), "clean-up attempt failed; retrying with backoff");
                    self.cleanup.retry(orphan);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error
    }

    /// One attempt at one orphan: true once it is deleted or proven absent. Only an
    /// object carrying the orphan's uid or its acquire nonce (and our Lease) is deleted,
    /// always under a `uid` precondition.
    async fn clean_up_one(&self, orphan: &Orphan) -> Result<bool> {
        let uid = match &orphan.target {
            Target::Lock { uid } => uid.clone(),
            Target::Create { nonce, settles_at } => {
                let asked_at = Instant::now();
                match self.read(&orphan.name).await? {
                    Some(lock)
                        if self.created_by(&lock, nonce)
                            && !self
                                .held
                                .holds(lock.metadata.uid.as_deref().unwrap_or_default()) =>
                    {
                        lock.metadata.uid.unwrap_or_default()
                    }
                    // Not (or not yet) there: a create still in flight may land until then.
                    _ => return Ok(asked_at >= *settles_at),
                }
            }
        };
        match self.delete(&orphan.name, &uid, &orphan.issue).await {
            Ok(()) if orphan.reason == LeftBehind::Shutdown => Ok(true),
            Ok(()) => {
                tracing::info!(issue = %orphan.issue, lock = %orphan.name, %uid, reason = orphan.reason.label(), "released a lock left behind");
                self.cleanup.released();
                Ok(true)
            }
            // Already gone, or replaced by someone else's lock: nothing of ours is left.
            Err(Error::LockLost { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// The longest max hold time a client accepts: 10 years. Far less than what an
/// [`Instant`] or `maxHoldSeconds` (an i64) can hold, far more than any real work.
pub const MAX_HOLD_LIMIT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Rounds a library max hold time up to whole seconds for `maxHoldSeconds`, so the
/// controller never acts before the holder's own timer.
fn max_hold_seconds(max_hold: Duration) -> i64 {
    let secs = max_hold.as_secs() + u64::from(max_hold.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn acquire_nonce(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ACQUIRE_NONCE_ANNOTATION))
        .map(String::as_str)
}

/// The error to report when the API server stored a lock spec other than the one sent:
/// its CRD is older than this client and pruned fields it does not know (for instance
/// `spec.holder.pod.namespace`, without which the controller would look for the holder's
/// pod in the wrong namespace and reclaim a live holder's locks).
fn dropped_fields(sent: &IssueLockSpec, stored: &IssueLockSpec) -> Option<Error> {
    if sent == stored {
        return None;
    }
    let pod_namespace = |s: &IssueLockSpec| s.holder.pod.as_ref().and_then(|p| p.namespace.clone());
    let what = if pod_namespace(sent) != pod_namespace(stored) {
        "spec.holder.pod.namespace"
    } else {
        "some fields of spec"
    };
    Some(Error::Config(format!(
        "the API server dropped {what} from the lock this client created: the IssueLock CRD \
         in the cluster is older than this client; apply this version's CRD \
         (`issuelock crd | kubectl apply -f -`, or upgrade the chart) and try again"
    )))
}

// === impl AcquireCall ===

/// One acquire call, from before its first create is sent until it returns or is
/// dropped. While it lives, a lock carrying its nonce is never taken for an orphan; if it
/// ends without the lock while one of its creates may have been committed, that possible
/// lock is handed to the clean-up (this also covers a `try_acquire` future dropped after
/// its create was sent).
struct AcquireCall<'a> {
    inner: &'a Arc<Inner>,
    issue: IssueKey,
    name: String,
    /// Unique to this call: a read-back adopts only the object this very call created,
    /// never one another task of this client took (same Lease, same identity).
    nonce: String,
    /// When the create now in flight was sent.
    in_flight: Option<Instant>,
    /// When the latest create whose outcome stayed unknown was sent.
    unknown: Option<Instant>,
    acquired: bool,
}

impl<'a> AcquireCall<'a> {
    fn begin(inner: &'a Arc<Inner>, issue: &IssueKey, name: &str) -> Self {
        let nonce = crate::holder::random_suffix();
        inner.held.acquire_started(&nonce);
        Self {
            inner,
            issue: issue.clone(),
            name: name.to_owned(),
            nonce,
            in_flight: None,
            unknown: None,
            acquired: false,
        }
    }

    fn sending(&mut self) {
        self.in_flight = Some(Instant::now());
    }

    /// The create in flight was answered: committed or refused, we know which.
    fn answered(&mut self) {
        self.in_flight = None;
    }

    /// The create in flight may or may not have been committed.
    fn unknown(&mut self) {
        self.unknown = self.in_flight.take().or(self.unknown);
    }

    fn acquired(&mut self) {
        self.acquired = true;
    }
}

impl Drop for AcquireCall<'_> {
    fn drop(&mut self) {
        self.inner.held.acquire_ended(&self.nonce);
        if self.acquired {
            // A create of this call still in flight can only land once our lock is gone.
            return;
        }
        let (reason, sent) = match (self.in_flight, self.unknown) {
            (Some(sent), _) => (LeftBehind::AcquireDropped, sent),
            (None, Some(sent)) => (LeftBehind::CreateOutcomeUnknown, sent),
            (None, None) => return,
        };
        self.inner.cleanup.queue(Orphan {
            name: self.name.clone(),
            issue: self.issue.clone(),
            target: Target::Create {
                nonce: self.nonce.clone(),
                settles_at: sent + CREATE_MAY_LAND_WITHIN,
            },
            reason,
            next_attempt: Instant::now(),
            backoff: CLEANUP_BACKOFF_MIN,
        });
    }
}

// === impl LockGuard ===

/// Proof that this process held the lock on one issue when the API server answered.
///
/// Dropping a guard without [`release`](Self::release) releases the lock in the
/// background (retried while the client lives); call `release` to learn whether it was
/// still held.
pub struct LockGuard {
    inner: Arc<Inner>,
    issue: IssueKey,
    name: String,
    uid: String,
    fencing_token: FencingToken,
    lost: CancellationToken,
    max_hold_deadline: Option<Instant>,
    /// `release` unregistered it and sent (or is about to send) its delete.
    releasing: bool,
    /// `release` got its answer: nothing left for Drop to do.
    released: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("issue", &self.issue)
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("fencing_token", &self.fencing_token)
            .finish()
    }
}

impl LockGuard {
    /// The issue this guard locks.
    pub fn issue(&self) -> &IssueKey {
        &self.issue
    }

    /// The lock object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lock object's uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.fencing_token
    }

    /// True once the lock may be lost: the heartbeat missed its renew deadline, the lock
    /// object was deleted or replaced, or the max hold time passed. Checked against the
    /// clock, so it is accurate even right after the process resumes from a pause.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled() || !self.inner.heartbeat.pulse().is_trusted()
    }

    /// Until when this lock is trusted unless the heartbeat renews first: the heartbeat's
    /// renew deadline or the end of the max hold time, whichever is earlier; now once the
    /// lock may be lost. Renewals move it forward.
    pub fn trusted_until(&self) -> Instant {
        if self.is_lost() {
            return Instant::now();
        }
        let renew = self.inner.heartbeat.pulse().deadline();
        self.max_hold_deadline.map_or(renew, |end| end.min(renew))
    }

    /// When the max hold time of this lock ends on this process's clock, if it has one.
    pub fn max_hold_deadline(&self) -> Option<Instant> {
        self.max_hold_deadline
    }

    /// Completes when this client learns the lock may be lost. Stop the work it protects.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// A token cancelled when the lock may be lost, to hand to the work.
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives the lock back: one `DELETE` with a `uid` precondition.
    ///
    /// [`Error::LockLost`] when the lock was already deleted or replaced: the work done
    /// under it may have overlapped with another holder's. Any other error (or this
    /// future dropped before the answer) leaves the release to the client's background
    /// clean-up, which retries it while the client lives.
    pub async fn release(mut self) -> Result<()> {
        // Unregister first, so our own delete is not reported as a loss by the watch.
        // (Not registered any more: shutdown has released it already.)
        let registered = self.inner.held.release_started(&self.name, &self.uid);
        self.releasing = registered;
        self.lost.cancel();
        let result = self.inner.delete(&self.name, &self.uid, &self.issue).await;
        // From here on, Drop leaves the lock alone.
        self.released = true;
        self.inner.held.release_ended(&self.uid);
        if let Err(e) = &result
            && registered
            && !matches!(e, Error::LockLost { .. })
        {
            self.inner.cleanup.queue(Orphan::lock(
                self.name.clone(),
                self.issue.clone(),
                self.uid.clone(),
                LeftBehind::ReleaseFailed,
            ));
        }
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.lost.cancel();
        if self.released {
            return;
        }
        // Still registered (a plain drop), or unregistered by a `release` whose future was
        // dropped before its answer; otherwise shutdown has released it already.
        if !self
            .inner
            .held
            .guard_dropped(&self.name, &self.uid, self.releasing)
        {
            return;
        }
        self.inner.cleanup.queue(Orphan::lock(
            self.name.clone(),
            self.issue.clone(),
            self.uid.clone(),
            LeftBehind::GuardDropped,
        ));
    }
}

#[cfg(test)]
mod mock_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_pruned_by_an_old_crd_is_reported() {
        let spec = |ns: Option<&str>| IssueLockSpec {
            issue: "org/repo#1".into(),
            holder: Holder {
                identity: "w".into(),
                pod: Some(crate::crd::HolderPod {
                    name: "w".into(),
                    uid: "u".into(),
                    namespace: ns.map(Into::into),
                }),
                lease: "w-1".into(),
                user: None,
            },
            max_hold_seconds: None,
            signature: None,
        };
        assert!(dropped_fields(&spec(Some("ci")), &spec(Some("ci"))).is_none());
        let e = dropped_fields(&spec(Some("ci")), &spec(None)).expect("pruned");
        assert!(e.to_string().contains("spec.holder.pod.namespace"), "{e}");
    }

    #[test]
    fn fencing_tokens_compare_numerically() {
        let a = FencingToken::from_resource_version("999").unwrap();
        let b = FencingToken::from_resource_version("1000").unwrap();
        assert!(a < b);
        assert!(FencingToken::from_resource_version("abc").is_err());
    }

    #[test]
    fn max_hold_seconds_round_up() {
        assert_eq!(max_hold_seconds(Duration::from_secs(2)), 2);
        assert_eq!(max_hold_seconds(Duration::from_millis(2001)), 3);
    }
}
