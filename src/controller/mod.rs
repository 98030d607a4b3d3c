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

use crate::crd::{HEARTBEAT_LABEL, IssueLock};
use crate::error::{Error, classify, is_status, within};
use crate::heartbeat::lease_duration;
use crate::leader::Leadership;
use crate::signature::{KeyBinding, Keyring, Verification};
use backoff::Backoff;
use expiry::ExpiryClock;
use futures::StreamExt;
use holders::HolderIndex;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self as kube_controller, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use metrics::Metrics;
use naming::NameCheck;
use observations::{FirstSeen, Observations, lease_key};
use pod_reads::RecentPodReads;
use serde_json::json;
use staleness::{Facts, LeaseFacts, PodFacts, Reason, SignatureFacts, Verdict, judge};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "issuelock-controller";
/// Extra wait after the earliest time a lock could become stale, before rechecking it.
const RECHECK_MARGIN: Duration = Duration::from_millis(200);
/// How often orphaned heartbeat Leases are looked for.
const LEASE_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long past its expiry an unreferenced Lease is kept before it is deleted.
const LEASE_SWEEP_GRACE: Duration = Duration::from_secs(5);
/// Deadline of every API call the controller makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most reconciles in flight at once: bounds the controller's load on the API server at
/// start-up, after a relist and after an outage.
pub const CONCURRENCY: u16 = 8;
/// How often heartbeat Leases are checked for possible expiry (per Lease, not per lock).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a reconcile that finds the caches not yet synced waits (plus a jitter of up
/// to as much again), so start-up never reads what the first list is about to deliver.
const UNSYNCED_RETRY: Duration = Duration::from_secs(1);

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

/// State shared by every reconcile.
pub struct Context {
    client: kube::Client,
    leases: Store<Lease>,
    pods: Store<Pod>,
    observations: Observations,
    recorder: Recorder,
    /// True once every cache has completed its first list.
    ready: Arc<std::sync::atomic::AtomicBool>,
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
    /// When this controller first saw each lock (by uid), on its monotonic clock.
    first_seen: FirstSeen,
    /// Locks by holder Lease and holder pod.
    holders: HolderIndex,
    /// Consecutive reconcile failures per lock.
    backoff: Backoff,
    /// Metrics of this process.
    pub metrics: Arc<Metrics>,
}

impl Context {
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
    /// create is sent) gives the lock up; after a controller restart, later than that.
    fn held_for(&self, lock: &IssueLock) -> Duration {
        let now = Instant::now();
        now.saturating_duration_since(self.first_seen.record(lock, now).0)
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
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    leadership: Leadership,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let (lock_api, lease_api, pod_api): (Api<IssueLock>, Api<Lease>, Api<Pod>) =
        match &config.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    // Fail fast, with a clear message, when the CRD is missing or RBAC denies listing.
    let probe = kube::api::ListParams::default().limit(1);
    let ns = config.namespace.clone().unwrap_or_default();
    lock_api
        .list(&probe)
        .await
        .map_err(|e| classify("list issuelocks", &ns, e))?;
    lease_api
        .list(&probe)
        .await
        .map_err(|e| classify("list leases", &ns, e))?;
    pod_api
        .list_metadata(&probe)
        .await
        .map_err(|e| classify("list pods", &ns, e))?;

    let (lock_reader, lock_writer) = reflector::store();
    let (lease_reader, lease_writer) = reflector::store();
    let (pod_reader, pod_writer) = reflector::store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        leases: lease_reader.clone(),
        pods: pod_reader.clone(),
        observations: Observations::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(config.instance.clone()),
            },
        ),
        metrics,
        ready: ready.clone(),
        leadership: leadership.clone(),
        keys: config.keys.clone(),
        require_signatures: config.require_signatures,
        unknown_key_grace: config.unknown_key_grace,
        key_binding: config.key_binding,
        watched_namespace: config.namespace.clone(),
        pod_reads: RecentPodReads::default(),
        first_seen: Default::default(),
        holders: HolderIndex::default(),
        backoff: Backoff::default(),
    });
    let gauge = ctx.clone();
    tokio::spawn(async move {
        loop {
            gauge.update_gauges();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // Locks due for a look by time or by a relist, beside the watch triggers.
    let (due_tx, due_rx) = futures::channel::mpsc::unbounded::<ObjectRef<IssueLock>>();
    tokio::spawn(watch_lease_expiry(ctx.clone(), due_tx.clone()));

    // Readiness: every cache has completed its first list.
    let synced = Synced::new(3, ready);
    let counted = ctx.clone();
    let lock_stream = watcher(lock_api, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(lock_writer)
        .inspect(synced.tracker(0))
        .inspect(move |event| {
            if let Ok(event) = event {
                counted.holders.on_event(event);
                if counted.first_seen.on_event(event, Instant::now()) {
                    counted.metrics.acquisitions.inc();
                }
            }
        })
        .touched_objects()
        .filter_map(retried_by_watcher);

    let obs_ctx = ctx.clone();
    let lease_stream = watcher(
        lease_api,
        watcher::Config::default().labels(&format!("{HEARTBEAT_LABEL}=true")),
    )
    .default_backoff()
    .modify(drop_managed_fields)
    .reflect(lease_writer)
    .inspect(synced.tracker(1))
    .filter_map(move |event| {
        // Renewals only move the observation clock; deletions trigger the locks.
        let out = match event {
            Ok(event) => {
                obs_ctx.observations.on_event(&event, Instant::now());
                match event {
                    watcher::Event::Delete(lease) => Some(Ok(lease)),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease watch failed; retrying with backoff");
                None
            }
        };
        std::future::ready(out)
    });

    let relisted = ctx.clone();
    let pod_stream = watcher(pod_api, watcher::Config::default())
        .default_backoff()
        .modify(trim_pod)
        .reflect(pod_writer)
        .inspect(synced.tracker(2))
        .inspect(move |event| {
            // A pod deleted during a watch gap sends no Delete event: after each relist,
            // the locks of cached-namespace pods no longer there are looked at.
            if let Ok(watcher::Event::InitDone) = event {
                let ctx = &relisted;
                let gone = ctx.holders.locks_of_pods_not_in(|(ns, name)| {
                    !ctx.caches_pods_in(ns)
                        || ctx.pods.get(&ObjectRef::new(name).within(ns)).is_some()
                });
                for lock in gone {
                    let _ = due_tx.unbounded_send(lock);
                }
            }
        })
        .touched_objects()
        .filter_map(retried_by_watcher);

    tokio::spawn(sweep_orphaned_leases(ctx.clone()));

    let (by_pod, by_lease) = (ctx.clone(), ctx.clone());
    Controller::for_stream(lock_stream, lock_reader)
        .with_config(kube_controller::Config::default().concurrency(CONCURRENCY))
        .watches_stream(pod_stream, move |pod: Pod| {
            by_pod
                .holders
                .locks_of_pod(&(pod.namespace().unwrap_or_default(), pod.name_any()))
        })
        .watches_stream(lease_stream, move |lease: Lease| {
            by_lease.holders.locks_of_lease(&lease_key(&lease))
        })
        .reconcile_on(due_rx)
        .reconcile_all_on(leadership.elected())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile trigger failed");
            }
        })
        .await;
    Ok(())
}

/// Sets the shared ready flag once each of `n` watch streams has completed its first list.
struct Synced {
    done: Arc<Vec<std::sync::atomic::AtomicBool>>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Synced {
    fn new(n: usize, ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            done: Arc::new(
                (0..n)
                    .map(|_| std::sync::atomic::AtomicBool::new(false))
                    .collect(),
            ),
            ready,
        }
    }

    fn tracker<K>(
        &self,
        i: usize,
    ) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K> {
        let (done, ready) = (self.done.clone(), self.ready.clone());
        move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                done[i].store(true, Ordering::Relaxed);
                if done.iter().all(|d| d.load(Ordering::Relaxed))
                    && !ready.swap(true, Ordering::Relaxed)
                {
                    tracing::info!("caches synced");
                }
            }
        }
    }
}

/// Drops watch errors from a trigger stream after logging them: each watch retries with
/// its own backoff, and an error reaching the controller would pause *every* trigger
/// (including the reconcile-all on election) behind the controller's trigger backoff.
fn retried_by_watcher<K>(
    item: Result<K, watcher::Error>,
) -> std::future::Ready<Option<Result<K, watcher::Error>>> {
    std::future::ready(match item {
        Ok(object) => Some(Ok(object)),
        Err(e) => {
            tracing::debug!(error = %e, "watch failed; retrying with backoff");
            None
        }
    })
}

/// Drops what the controller never reads and would otherwise keep for every cached
/// object: its managedFields.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Keeps only what [`judge`] needs of a Pod: metadata identity and phase.
fn trim_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        ..PodStatus::default()
    });
}

/// Reconcile errors: the failed step, for logs and the error metric.
#[derive(Debug, thiserror::Error)]
#[error("failed to {step}")]
pub struct ReconcileError {
    step: &'static str,
    #[source]
    source: Error,
}

impl ReconcileError {
    fn new(step: &'static str, source: Error) -> Self {
        Self { step, source }
    }
}

/// Retries a failed lock after its own exponential backoff: an overloaded API server
/// gets fewer calls from the controller, never more, and nothing is reclaimed on evidence
/// a failed call could not confirm.
fn error_policy(lock: Arc<IssueLock>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(err.source.category());
    let retry_in = ctx.backoff.failed(lock_key(&lock), backoff::seed());
    tracing::warn!(lock = %lock.name_any(), namespace = ?lock.namespace(), error = %crate::error::Error::chain(&err.source), step = err.step, retry_in = ?retry_in, "reconcile failed; retrying");
    Action::requeue(retry_in)
}

/// A lock's namespace and name.
fn lock_key(lock: &IssueLock) -> (String, String) {
    (lock.namespace().unwrap_or_default(), lock.name_any())
}

async fn reconcile(lock: Arc<IssueLock>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !ctx.ready.load(Ordering::Relaxed) {
        // Judging before every cache has its first list would read directly what the
        // list is about to deliver, for every lock at once. Not counted as a reconcile.
        let jitter = UNSYNCED_RETRY.mul_f64((backoff::seed() % 1000) as f64 / 1000.0);
        return Ok(Action::requeue(UNSYNCED_RETRY + jitter));
    }
    let started = Instant::now();
    let result = reconcile_lock(&lock, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.backoff.succeeded(&lock_key(&lock));
    }
    result
}

async fn reconcile_lock(lock: &IssueLock, ctx: &Context) -> Result<Action, ReconcileError> {
    if lock.metadata.deletion_timestamp.is_some() || !ctx.leadership.is_leading() {
        // Standbys keep their caches and Lease observations warm, and act once elected.
        // Waiting for a change drops the lock from the schedule, which is safe only
        // because leading again always takes a new term (`Leadership::is_leading` ends a
        // term at its first lapse of trust) and every new term reconciles every lock
        // (`reconcile_all_on(leadership.elected())`). That costs nothing per lock while
        // standing by, where a periodic requeue would wake every lock on every standby.
        return Ok(Action::await_change());
    }
    let ns = lock.namespace().unwrap_or_default();
    let signature = ctx
        .keys
        .as_ref()
        .map(|k| k.verify(&ns, &lock.name_any(), &lock.spec, ctx.key_binding));
    let mut facts = Facts {
        signature: SignatureFacts::of(
            signature.as_ref(),
            ctx.require_signatures,
            ctx.unknown_key_grace,
        ),
        recorded_pod_uid: lock.spec.holder.pod.as_ref().map(|p| p.uid.clone()),
        pod: holder_pod_facts(lock, ctx, false).await?,
        lease: lease_facts(lock, ctx, false).await?,
        age: Some(ctx.held_for(lock)),
        max_hold: lock
            .spec
            .max_hold_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
    };
    let mut verdict = judge(&facts);
    // Confirm cached evidence with direct reads before acting on it.
    // Both the pod and the Lease are re-read, so whatever reason the second judgement
    // gives rests on fresh evidence only.
    if let Verdict::Stale(_) = verdict {
        facts.pod = holder_pod_facts(lock, ctx, true).await?;
        facts.lease = lease_facts(lock, ctx, true).await?;
        verdict = judge(&facts);
    }
    tracing::debug!(lock = %lock.name_any(), ?verdict, ?facts, "judged");
    match verdict {
        Verdict::Stale(reason) => {
            reclaim(lock, &ns, reason, ctx).await?;
            Ok(Action::await_change())
        }
        Verdict::Live {
            lease_left,
            recheck_in,
        } => {
            write_alive_status(lock, &ns, signature.as_ref(), ctx).await?;
            // The Lease is watched per Lease (`watch_lease_expiry`). A pod the cache does
            // not hold is read again about once per lease duration.
            let pod_uncached = lock
                .spec
                .holder
                .pod
                .as_ref()
                .is_some_and(|p| !ctx.caches_pods_in(p.namespace_or(&ns)));
            let recheck_in = match pod_uncached {
                true => Some(recheck_in.map_or(lease_left, |r| r.min(lease_left))),
                false => recheck_in,
            };
            Ok(match recheck_in {
                Some(t) => Action::requeue(t + RECHECK_MARGIN),
                None => Action::await_change(),
            })
        }
    }
}

/// What is known of the holder's pod, judged in the pod's own namespace. Unless `fresh`:
/// from the cache when that namespace is watched, else from a read made for another lock
/// of the same pod a moment ago. Otherwise from a direct read, so a pod outside the
/// watched namespace is never called missing from a cache miss.
async fn holder_pod_facts(
    lock: &IssueLock,
    ctx: &Context,
    fresh: bool,
) -> Result<PodFacts, ReconcileError> {
    let Some(pod) = &lock.spec.holder.pod else {
        return Ok(PodFacts::NotRecorded);
    };
    let lock_ns = lock.namespace().unwrap_or_default();
    let ns = pod.namespace_or(&lock_ns);
    if !fresh && ctx.caches_pods_in(ns) {
        let cached = ctx.pods.get(&ObjectRef::new(&pod.name).within(ns));
        return Ok(pod_facts(cached.as_deref()));
    }
    let key = (ns.to_owned(), pod.name.clone());
    let now = Instant::now();
    if let Some(recent) = ctx.pod_reads.get(&key, now).filter(|_| !fresh) {
        return Ok(recent);
    }
    let facts = read_pod_facts(lock, ctx, ns, &pod.name).await?;
    ctx.pod_reads.record(key, now, facts.clone());
    Ok(facts)
}

/// A direct read of the pod `name` in `ns`.
async fn read_pod_facts(
    lock: &IssueLock,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<PodFacts, ReconcileError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match timed("read holder pod", ns, api.get_opt(name)).await {
        Ok(found) => Ok(pod_facts(found.as_ref())),
        // Not allowed to read pods there (custom RBAC scoped to the locks' namespace):
        // judge by the Lease and max hold alone rather than never judging at all.
        Err(e) if matches!(e.source, Error::Forbidden { .. }) => {
            tracing::warn!(
                lock = %lock.name_any(), pod = name, pod_namespace = ns,
                error = %e.source.chain(),
                "cannot read the holder's pod; judging by its Lease only"
            );
            Ok(PodFacts::Unreadable)
        }
        Err(e) => Err(e),
    }
}

/// What [`judge`] needs of the holder's pod, or of its absence.
fn pod_facts(pod: Option<&Pod>) -> PodFacts {
    match pod {
        None => PodFacts::Missing,
        Some(p) => PodFacts::Present {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            phase: p.status.as_ref().and_then(|s| s.phase.clone()),
        },
    }
}

/// Lease facts from the cache and our observations; with `fresh`, from a direct read,
/// which also records a change the watch has not delivered yet.
async fn lease_facts(
    lock: &IssueLock,
    ctx: &Context,
    fresh: bool,
) -> Result<LeaseFacts, ReconcileError> {
    let ns = lock.namespace().unwrap_or_default();
    let name = &lock.spec.holder.lease;
    let cached = match fresh {
        true => None,
        false => ctx.leases.get(&ObjectRef::new(name).within(&ns)),
    };
    let lease = match cached {
        Some(l) => Some(l),
        // Asked to read, or not in the cache (it may be brand new): read it before
        // calling it missing.
        None => {
            let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);
            timed("read holder lease", &ns, api.get_opt(name))
                .await?
                .map(Arc::new)
        }
    };
    let Some(lease) = lease else {
        return Ok(LeaseFacts::Missing);
    };
    if !crate::heartbeat::is_heartbeat_of(&lease, &lock.spec.holder) {
        return Ok(LeaseFacts::Foreign);
    }
    let now = Instant::now();
    let seen = ctx.observations.observe(
        lease_key(&lease),
        &lease.resource_version().unwrap_or_default(),
        lease_duration(&lease),
        now,
    );
    Ok(LeaseFacts::Present {
        duration: seen.longest_duration,
        unchanged_for: now.saturating_duration_since(seen.at),
    })
}

async fn timed<T>(
    step: &'static str,
    ns: &str,
    fut: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, ReconcileError> {
    within(step, CALL_TIMEOUT, fut)
        .await
        .map_err(|e| ReconcileError::new(step, e))?
        .map_err(|e| ReconcileError::new(step, classify(step, ns, e)))
}

/// Deletes a stale lock with `{uid, resourceVersion}` preconditions, then records an
/// Event and a metric. A lock changed or gone meanwhile is left alone.
async fn reclaim(
    lock: &IssueLock,
    ns: &str,
    reason: Reason,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let api: Api<IssueLock> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams::default().preconditions(Preconditions {
        uid: lock.metadata.uid.clone(),
        resource_version: lock.metadata.resource_version.clone(),
    });
    let step = "delete stale lock";
    match within(step, CALL_TIMEOUT, api.delete(&lock.name_any(), &params))
        .await
        .map_err(|e| ReconcileError::new(step, e))?
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 404, "NotFound") || is_status(&e, 409, "Conflict") => {
            tracing::debug!(lock = %lock.name_any(), "lock changed or gone before reclaim; leaving it");
            return Ok(());
        }
        Err(e) => return Err(ReconcileError::new(step, classify(step, ns, e))),
    }
    ctx.metrics.reclaimed(reason);
    tracing::info!(
        lock = %lock.name_any(), namespace = ns, issue = %lock.spec.issue,
        holder = %lock.spec.holder.identity, reason = reason.label(), "reclaimed stale lock"
    );
    let event = Event {
        type_: EventType::Warning,
        reason: reason.event_reason().into(),
        note: Some(format!(
            "reclaimed lock on {:?} held by {}: {}",
            lock.spec.issue,
            lock.spec.holder.identity,
            reason.label()
        )),
        action: "Reclaim".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &lock.object_ref(&())).await {
        tracing::warn!(error = %e, "failed to publish reclaim event");
    }
    Ok(())
}

/// Writes `HolderAlive=True` (with `lastHeartbeatObserved`, the heartbeat observed at that
/// moment), `NameMatchesIssue` and `SignatureValid` when a condition changed: on
/// transitions only, never because time passed.
async fn write_alive_status(
    lock: &IssueLock,
    ns: &str,
    signature: Option<&Verification>,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let key = (ns.to_owned(), lock.spec.holder.lease.clone());
    let Some(seen) = ctx.observations.get(&key) else {
        return Ok(());
    };
    let age = Instant::now().saturating_duration_since(seen.at);
    let observed = Timestamp::now() - SignedDuration::try_from(age).unwrap_or_default();
    let status = lock.status.clone().unwrap_or_default();
    let recorded = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let mut wanted = vec![(
        "HolderAlive",
        "True",
        "HeartbeatObserved",
        format!(
            "heartbeat Lease {} is being renewed",
            lock.spec.holder.lease
        ),
    )];
    let name = lock.name_any();
    let naming = NameCheck::of(&name, &lock.spec.issue);
    let (name_status, name_reason, name_message) = naming.condition(&name);
    wanted.push((naming::CONDITION, name_status, name_reason, name_message));
    if let Some(v) = signature {
        let status = if v.is_valid() { "True" } else { "False" };
        wanted.push(("SignatureValid", status, v.reason(), v.message()));
    }
    let conditions_current = wanted.iter().all(|(t, st, reason, _)| {
        recorded(t).is_some_and(|c| c.status == *st && c.reason == *reason)
    });
    let newly_misnamed =
        naming.is_misnamed() && recorded(naming::CONDITION).is_none_or(|c| c.status != name_status);
    if newly_misnamed {
        report_misnamed(lock, ns, &naming, ctx).await;
    }
    if conditions_current {
        return Ok(());
    }
    let conditions: Vec<Condition> = wanted
        .into_iter()
        .map(|(type_, st, reason, message)| Condition {
            type_: type_.into(),
            status: st.into(),
            reason: reason.into(),
            message,
            // Keep the transition time while the status stays the same.
            last_transition_time: recorded(type_)
                .filter(|c| c.status == st)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(Timestamp::now())),
            observed_generation: lock.metadata.generation,
        })
        .collect();
    let patch = json!({
        "apiVersion": IssueLock::api_version(&()),
        "kind": IssueLock::kind(&()),
        "status": {
            "conditions": conditions,
            "lastHeartbeatObserved": Time(observed),
        }
    });
    let api: Api<IssueLock> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let step = "write lock status";
    let (name, patch) = (lock.name_any(), Patch::Apply(&patch));
    match within(step, CALL_TIMEOUT, api.patch_status(&name, &params, &patch))
        .await
        .map_err(|e| ReconcileError::new(step, e))?
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404, "NotFound") => Ok(()),
        Err(e) => Err(ReconcileError::new(step, classify(step, ns, e))),
    }
}

/// Logs and emits a Warning Event for a lock whose name is not its issue's. The lock is
/// kept: see PROTOCOL.md ("A misnamed lock is reported") for why it is not reclaimed.
async fn report_misnamed(lock: &IssueLock, ns: &str, naming: &NameCheck, ctx: &Context) {
    let name = lock.name_any();
    let (_, _, message) = naming.condition(&name);
    tracing::warn!(
        lock = %name, namespace = ns, issue = %lock.spec.issue,
        holder = %lock.spec.holder.identity, "lock name does not match its issue: {message}"
    );
    let event = Event {
        type_: EventType::Warning,
        reason: naming::EVENT_REASON.into(),
        note: Some(message),
        action: "CheckName".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &lock.object_ref(&())).await {
        tracing::warn!(error = %e, "failed to publish misnamed-lock event");
    }
}

/// Triggers the locks of each heartbeat Lease that could have expired (unchanged for its
/// duration on our clock) or is not observed at all, once per such state. One check per
/// Lease some lock names: renewals cost nothing per lock.
async fn watch_lease_expiry(
    ctx: Arc<Context>,
    due: futures::channel::mpsc::UnboundedSender<ObjectRef<IssueLock>>,
) {
    let mut clock = ExpiryClock::default();
    loop {
        tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
        if !ctx.ready.load(Ordering::Relaxed) {
            continue;
        }
        let leases = clock.due(
            ctx.holders.leases(),
            |key| ctx.observations.get(key),
            Instant::now(),
        );
        for lease in leases {
            for lock in ctx.holders.locks_of_lease(&lease) {
                if due.unbounded_send(lock).is_err() {
                    return;
                }
            }
        }
    }
}

/// Deletes heartbeat Leases that expired (by our observation) and that no lock references.
async fn sweep_orphaned_leases(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(LEASE_SWEEP_EVERY).await;
        if !ctx.ready.load(Ordering::Relaxed) || !ctx.leadership.is_leading() {
            continue;
        }
        let now = Instant::now();
        for lease in ctx.leases.state() {
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
            let params = DeleteParams::default().preconditions(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: Some(seen.resource_version.clone()),
            });
            match within(
                "delete expired lease",
                CALL_TIMEOUT,
                api.delete(&key.1, &params),
            )
            .await
            {
                Ok(Ok(_)) => {
                    tracing::info!(lease = %key.1, namespace = %key.0, "deleted expired heartbeat Lease that no lock references")
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
