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

use crate::crd::{HOLDER_LEASE_LABEL, Holder, IssueLock, IssueLockSpec};
use crate::error::{Error, Result, classify, is_status, within};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::holder::HolderIdentity;
use crate::key::IssueKey;
use crate::signature::Keyring;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Annotation carrying the nonce of the acquire call that created a lock.
pub const ACQUIRE_NONCE_ANNOTATION: &str = "issuelock.dev/acquire-nonce";

/// How many times one `try_acquire` retries a create whose outcome was unknown.
const CREATE_ATTEMPTS: usize = 3;

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
pub enum Acquisition {
    /// We hold the lock until the guard is released, dropped or lost.
    Acquired(LockGuard),
    /// Someone else (or another guard of this same client) holds it.
    Held(HeldBy),
}

/// Who holds a lock we could not take.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldBy {
    /// The issue key.
    pub issue: String,
    /// The holder recorded in the lock.
    pub holder: Holder,
    /// When the lock was taken (its creationTimestamp).
    pub since: Option<Timestamp>,
}

/// Settings of a [`LockClient`].
#[derive(Clone, Debug)]
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
}

/// The outcome of [`LockClient::process_safely`].
#[derive(Debug)]
pub enum Outcome<T> {
    /// The work ran to completion while we held the lock, and the lock was released.
    Completed(T),
    /// Someone else holds the lock; the work did not run.
    Held(HeldBy),
    /// The lock was lost while the work ran. `output` is `Some` when the work finished
    /// but the lock turned out lost at release time: it may have overlapped with another
    /// holder's work. When `None`, the work was cancelled (its future dropped).
    Lost { output: Option<T> },
}

/// What the work protected by [`LockClient::process_safely`] may know about its lock.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The locked issue.
    pub issue: IssueKey,
    /// The fencing token of this acquisition; pass it to storage that can check it.
    pub fencing_token: FencingToken,
    /// Cancelled when the lock may be lost.
    pub lost: CancellationToken,
}

/// Takes locks for one holder process. Cheap to clone.
#[derive(Clone)]
pub struct LockClient {
    inner: Arc<Inner>,
}

/// Counts of [`LockClient::try_acquire`] outcomes since the client started, for workers
/// to export as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcquireStats {
    /// Calls that took the lock.
    pub acquired: u64,
    /// Calls that found it held.
    pub held: u64,
    /// Calls that failed with an error.
    pub failed: u64,
}

struct Inner {
    stats: Mutex<AcquireStats>,
    api: Api<IssueLock>,
    config: LockConfig,
    holder: Holder,
    heartbeat: Heartbeat,
    /// Locks this client holds: lock name → the uid and lost signal of its guard.
    held: Mutex<HashMap<String, HeldLock>>,
    /// Stops the watch on our own locks.
    stop_watch: CancellationToken,
}

#[derive(Clone)]
struct HeldLock {
    uid: String,
    issue: IssueKey,
    lost: CancellationToken,
}

// === impl LockClient ===

impl LockClient {
    /// Starts a client: creates its heartbeat Lease, starts renewing it and watching this
    /// client's own locks (one watch, by label). Fails with a clear error when the
    /// namespace is missing, RBAC forbids Leases, or the configuration is inconsistent.
    pub async fn start(client: kube::Client, config: LockConfig) -> Result<Self> {
        if config.call_timeout.is_zero() {
            return Err(Error::Config("call timeout must be positive".into()));
        }
        if config.max_hold.is_some_and(|d| d.as_secs() == 0) {
            return Err(Error::Config(
                "max hold time must be at least one second".into(),
            ));
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
            held: Mutex::new(HashMap::new()),
            stop_watch: CancellationToken::new(),
        });
        tokio::spawn(watch_own_locks(
            Arc::downgrade(&inner),
            inner.stop_watch.clone(),
        ));
        Ok(Self { inner })
    }

    /// True while this client's heartbeat is healthy enough to take new locks.
    pub fn is_healthy(&self) -> bool {
        self.inner.heartbeat.pulse().is_healthy()
    }

    /// Completes when this client's heartbeat is lost; all its locks are then lost too.
    pub async fn heartbeat_lost(&self) {
        self.inner.heartbeat.lost().await
    }

    /// Releases every lock this client still holds, stops the heartbeat and deletes its
    /// Lease. Returns the first error met; it still attempts every step.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stop_watch.cancel();
        let held: Vec<(String, HeldLock)> = self
            .inner
            .held
            .lock()
            .expect("held-locks mutex")
            .drain()
            .collect();
        let mut first_error = None;
        for (name, lock) in held {
            lock.lost.cancel();
            match self.inner.delete(&name, &lock.uid, &lock.issue).await {
                Ok(()) | Err(Error::LockLost { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.inner.heartbeat.stop().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes the lock on `issue`, runs `work` while holding it, cancels `work` (drops its
    /// future) as soon as the lock may be lost, and releases the lock.
    ///
    /// This is the whole protocol for the common case: there is nothing else for the
    /// caller to get wrong.
    pub async fn process_safely<T, F, Fut>(&self, issue: &str, work: F) -> Result<Outcome<T>>
    where
        F: FnOnce(Fence) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = match self.try_acquire(issue).await? {
            Acquisition::Acquired(guard) => guard,
            Acquisition::Held(by) => return Ok(Outcome::Held(by)),
        };
        let fence = Fence {
            issue: guard.issue().clone(),
            fencing_token: guard.fencing_token(),
            lost: guard.lost_token(),
        };
        let output = tokio::select! {
            output = work(fence) => output,
            _ = guard.lost() => {
                let _ = guard.release().await;
                return Ok(Outcome::Lost { output: None });
            }
        };
        if guard.is_lost() {
            let _ = guard.release().await;
            return Ok(Outcome::Lost {
                output: Some(output),
            });
        }
        match guard.release().await {
            Ok(()) => Ok(Outcome::Completed(output)),
            Err(Error::LockLost { .. }) => Ok(Outcome::Lost {
                output: Some(output),
            }),
            Err(e) => {
                tracing::warn!(issue, error = %e.chain(), "work completed but the release failed; the lock is released at shutdown");
                Ok(Outcome::Completed(output))
            }
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
    /// Errors: [`Error::InvalidKey`] before any call; [`Error::NameCollision`] if another
    /// key's lock has this key's name; API errors classified by [`classify`].
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

    async fn acquire_once(&self, issue: &str) -> Result<Acquisition> {
        let key = IssueKey::parse(issue)?;
        if !self.is_healthy() {
            return Err(Error::HeartbeatUnhealthy);
        }
        let name = key.lock_name();
        // A nonce unique to this call: a read-back adopts only the object this very call
        // created, never one another task of this client took (same Lease, same identity).
        let nonce = crate::holder::random_suffix();
        let desired = self.inner.desired_lock(&key, &name, &nonce);
        let started = Instant::now();
        let mut outcome_unknown = false;
        for _ in 0..CREATE_ATTEMPTS {
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
                    return self
                        .inner
                        .guard(key, created, started)
                        .map(Acquisition::Acquired);
                }
                Ok(Err(e)) if is_status(&e, 409, "AlreadyExists") => {}
                // 429 and 5xx (e.g. 504 from a proxy) may hide a committed create too.
                Ok(Err(e))
                    if !is_transport(&e)
                        && !crate::error::status(&e)
                            .is_some_and(|s| s.code == 429 || s.code >= 500) =>
                {
                    return Err(classify("create lock", self.namespace(), e));
                }
                // Timed out or the connection broke: the create may have happened.
                Ok(Err(e)) => {
                    outcome_unknown = true;
                    create_error = Some(classify("create lock", self.namespace(), e));
                }
                Err(e) => {
                    outcome_unknown = true;
                    create_error = Some(e);
                }
            }
            let existing = match self.read(&name).await {
                Ok(existing) => existing,
                // Neither call got through: report the create's failure.
                Err(e) => return Err(create_error.unwrap_or(e)),
            };
            match existing {
                Some(existing) if existing.spec.issue != key.as_str() => {
                    return Err(Error::NameCollision {
                        issue: key.to_string(),
                        name,
                        other: existing.spec.issue,
                    });
                }
                Some(existing) if outcome_unknown && self.inner.created_by(&existing, &nonce) => {
                    return self
                        .inner
                        .guard(key, existing, started)
                        .map(Acquisition::Acquired);
                }
                Some(existing) => {
                    return Ok(Acquisition::Held(HeldBy {
                        issue: existing.spec.issue,
                        holder: existing.spec.holder,
                        since: existing.metadata.creation_timestamp.map(|t| t.0),
                    }));
                }
                // Released between our create and our read, or never created: try again.
                None => continue,
            }
        }
        Err(Error::Unreachable {
            step: "create lock",
            source: format!("outcome still unknown after {CREATE_ATTEMPTS} attempts").into(),
        })
    }

    /// Reads the current lock object for `name`, if any.
    async fn read(&self, name: &str) -> Result<Option<IssueLock>> {
        self.inner
            .call("read lock", self.inner.api.get_opt(name))
            .await?
            .map_err(|e| classify("read lock", self.namespace(), e))
    }
}

impl Inner {
    /// Runs one API call under the configured deadline.
    async fn call<T>(
        &self,
        step: &'static str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        within(step, self.config.call_timeout, fut).await
    }

    fn desired_lock(&self, key: &IssueKey, name: &str, nonce: &str) -> IssueLock {
        let holder = self.holder.clone();
        let mut lock = IssueLock::new(
            name,
            IssueLockSpec {
                issue: key.to_string(),
                max_hold_seconds: self.config.max_hold.map(|d| d.as_secs() as i64),
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
            owner_references: Some(vec![OwnerReference {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                name: self.holder.lease.clone(),
                uid: self.heartbeat.lease_uid().to_owned(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        lock
    }

    /// True when `lock` is the object created by the acquire call that used `nonce`: it
    /// names our heartbeat Lease (unique to this process run) and carries that nonce.
    fn created_by(&self, lock: &IssueLock, nonce: &str) -> bool {
        lock.spec.holder.lease == self.holder.lease
            && lock.spec.holder.identity == self.holder.identity
            && lock
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ACQUIRE_NONCE_ANNOTATION))
                .map(String::as_str)
                == Some(nonce)
    }

    /// Registers a lock we hold and hands out its guard. `acquired_at` is when the create
    /// (or the first of the creates) that took it was sent.
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
        let fencing_token = FencingToken::from_resource_version(rv)?;
        let lost = self.heartbeat.pulse().lost.child_token();
        let max_hold_deadline = self.config.max_hold.map(|max_hold| acquired_at + max_hold);
        if let Some(max_hold) = self.config.max_hold {
            // Give up the lock on our own clock, measured from before the create was sent,
            // so we stop no later than the controller may reclaim it.
            let lost = lost.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(acquired_at + max_hold) => lost.cancel(),
                    _ = lost.cancelled() => {}
                }
            });
        }
        self.held.lock().expect("held-locks mutex").insert(
            name.clone(),
            HeldLock {
                uid: uid.clone(),
                issue: issue.clone(),
                lost: lost.clone(),
            },
        );
        Ok(LockGuard {
            inner: self.clone(),
            issue,
            name,
            uid,
            fencing_token,
            lost,
            max_hold_deadline,
            released: false,
        })
    }

    fn forget(&self, name: &str, uid: &str) {
        self.take(name, uid);
    }

    /// Unregisters the guard of `name` if it has `uid`, returning its entry.
    fn take(&self, name: &str, uid: &str) -> Option<HeldLock> {
        let mut held = self.held.lock().expect("held-locks mutex");
        if held.get(name).is_some_and(|h| h.uid == uid) {
            held.remove(name)
        } else {
            None
        }
    }

    /// Marks the guard of `name` lost unless its uid is `still_uid`.
    fn lost_unless(&self, name: &str, still_uid: Option<&str>) {
        let held = self.held.lock().expect("held-locks mutex");
        if let Some(h) = held.get(name)
            && Some(h.uid.as_str()) != still_uid
        {
            tracing::warn!(issue = %h.issue, lock = name, "lock deleted or replaced by someone else");
            h.lost.cancel();
        }
    }

    async fn delete(&self, name: &str, uid: &str, issue: &IssueKey) -> Result<()> {
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        });
        match self
            .call("release lock", self.api.delete(name, &params))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404, "NotFound") || is_status(&e, 409, "Conflict") => {
                Err(Error::LockLost {
                    issue: issue.to_string(),
                })
            }
            Err(e) => Err(classify("release lock", &self.config.namespace, e)),
        }
    }
}

/// The one watch of a client: its own locks, selected by its Lease label. A lock deleted
/// or replaced under one of our guards marks that guard lost. After a relist, guards whose
/// lock is missing from the list are checked with a direct read.
async fn watch_own_locks(inner: Weak<Inner>, stop: CancellationToken) {
    let (api, selector) = match inner.upgrade() {
        Some(i) => (
            i.api.clone(),
            format!("{HOLDER_LEASE_LABEL}={}", i.holder.lease),
        ),
        None => return,
    };
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let Some(inner) = inner.upgrade() else { return };
        match event {
            None => return,
            Some(Err(e)) => tracing::debug!(error = %e, "watch on own locks failed; retrying"),
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(lock))) => {
                let name = lock.metadata.name.clone().unwrap_or_default();
                inner.lost_unless(&name, lock.metadata.uid.as_deref());
                listed.insert(name);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let missing: Vec<(String, String)> = {
                    let held = inner.held.lock().expect("held-locks mutex");
                    held.iter()
                        .filter(|(name, _)| !listed.contains(*name))
                        .map(|(name, h)| (name.clone(), h.uid.clone()))
                        .collect()
                };
                for (name, _uid) in missing {
                    // Confirm with a direct read; if it cannot be confirmed, assume the worst.
                    let mut confirmed = None;
                    for _ in 0..3 {
                        if let Ok(Ok(current)) =
                            inner.call("read lock", inner.api.get_opt(&name)).await
                        {
                            confirmed = Some(current);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    match confirmed {
                        Some(current) => inner.lost_unless(
                            &name,
                            current.as_ref().and_then(|l| l.metadata.uid.as_deref()),
                        ),
                        None => inner.lost_unless(&name, None),
                    }
                }
            }
            Some(Ok(watcher::Event::Apply(lock))) => {
                let name = lock.metadata.name.clone().unwrap_or_default();
                inner.lost_unless(&name, lock.metadata.uid.as_deref());
            }
            Some(Ok(watcher::Event::Delete(lock))) => {
                let name = lock.metadata.name.clone().unwrap_or_default();
                inner.lost_unless(&name, None);
            }
        }
    }
}

fn is_transport(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

// === impl LockGuard ===

/// Proof that this process held the lock on one issue when the API server answered.
///
/// Dropping a guard without [`release`](Self::release) releases the lock in the
/// background; call `release` to learn whether it was still held.
pub struct LockGuard {
    inner: Arc<Inner>,
    issue: IssueKey,
    name: String,
    uid: String,
    fencing_token: FencingToken,
    lost: CancellationToken,
    max_hold_deadline: Option<Instant>,
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
    /// under it may have overlapped with another holder's.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        // Unregister first, so our own delete is not reported as a loss by the watch.
        let entry = self.inner.take(&self.name, &self.uid);
        let result = self.inner.delete(&self.name, &self.uid, &self.issue).await;
        if let (Err(e), Some(entry)) = (&result, entry)
            && !matches!(e, Error::LockLost { .. })
        {
            // A transient failure keeps the lock registered, so shutdown retries it.
            self.inner
                .held
                .lock()
                .expect("held-locks mutex")
                .insert(self.name.clone(), entry);
        }
        self.lost.cancel();
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.inner.forget(&self.name, &self.uid);
        self.lost.cancel();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (inner, name, uid, issue) = (
                self.inner.clone(),
                self.name.clone(),
                self.uid.clone(),
                self.issue.clone(),
            );
            rt.spawn(async move {
                // Transient failures are retried with backoff (1, 2, 4, 8 s); a lock left
                // behind is reclaimed once this process's Lease expires.
                for attempt in 0..5u32 {
                    match inner.delete(&name, &uid, &issue).await {
                        Ok(()) | Err(Error::LockLost { .. }) => return,
                        Err(e) if e.is_transient() && attempt < 4 => {
                            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                        }
                        Err(e) => {
                            tracing::warn!(issue = %issue, error = %e.chain(), "background release of a dropped guard failed");
                            return;
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
#[path = "lock_mock_tests.rs"]
mod mock_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_tokens_compare_numerically() {
        let a = FencingToken::from_resource_version("999").unwrap();
        let b = FencingToken::from_resource_version("1000").unwrap();
        assert!(a < b);
        assert!(FencingToken::from_resource_version("abc").is_err());
    }
}
