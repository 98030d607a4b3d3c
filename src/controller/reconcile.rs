//! One reconcile of one lock: gather the facts (from the caches, confirmed by direct
//! reads before acting), [`judge`] them, then reclaim a stale lock or write a live one's
//! status; and the backoff of a failed reconcile.

use super::naming::{self, NameCheck};
use super::observations::lease_key;
use super::staleness::{Facts, LeaseFacts, PodFacts, Reason, SignatureFacts, Verdict, judge};
use super::status::{AliveStatus, alive_status};
use super::{CALL_TIMEOUT, Context, FIELD_MANAGER, backoff};
use crate::crd::IssueLock;
use crate::error::{Deleted, Error, classify, delete_exact, is_conflict, is_not_found, within};
use crate::heartbeat::lease_duration;
use crate::signature::Verification;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Extra wait after the earliest time a lock could become stale, before rechecking it.
const RECHECK_MARGIN: Duration = Duration::from_millis(200);
/// How long a reconcile that finds the caches not yet synced waits (plus a jitter of up
/// to as much again), so start-up never reads what the first list is about to deliver.
const UNSYNCED_RETRY: Duration = Duration::from_secs(1);

/// Reconcile errors: the failed step, for logs and the error metric.
#[derive(Debug, thiserror::Error)]
#[error("failed to {step}")]
pub struct ReconcileError {
    step: &'static str,
    #[source]
    source: Error,
}

impl ReconcileError {
    pub(super) fn new(step: &'static str, source: Error) -> Self {
        Self { step, source }
    }
}

/// Retries a failed lock after its own exponential backoff: an overloaded API server
/// gets fewer calls from the controller, never more, and nothing is reclaimed on evidence
/// a failed call could not confirm.
pub(super) fn error_policy(
    lock: Arc<IssueLock>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.reconcile_failed(err.source.category());
    let retry_in = ctx.backoff.failed(lock_key(&lock), backoff::seed());
    tracing::warn!(lock = %lock.name_any(), namespace = ?lock.namespace(), error = %crate::error::Error::chain(&err.source), step = err.step, retry_in = ?retry_in, "reconcile failed; retrying");
    Action::requeue(retry_in)
}

/// A lock's namespace and name.
fn lock_key(lock: &IssueLock) -> (String, String) {
    (lock.namespace().unwrap_or_default(), lock.name_any())
}

pub(super) async fn reconcile(
    lock: Arc<IssueLock>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_ready() {
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
    // The reads behind the verdict may have outlasted our leadership: a standby may
    // lead by now.
    if !ctx.leadership.is_leading() {
        return Ok(());
    }
    let api: Api<IssueLock> = Api::namespaced(ctx.client.clone(), ns);
    let step = "delete stale lock";
    let (name, uid, version) = (lock.name_any(), lock.uid(), lock.resource_version());
    let uid = uid.unwrap_or_default();
    let delete = delete_exact(&api, &name, &uid, version.as_deref());
    match within(step, CALL_TIMEOUT, delete)
        .await
        .map_err(|e| ReconcileError::new(step, e))?
    {
        Ok(Deleted::Deleted) => {}
        Ok(Deleted::GoneOrChanged) => {
            tracing::debug!(lock = %name, "lock changed or gone before reclaim; leaving it");
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

/// Writes the status [`alive_status`] wants, when a condition changed, and reports a
/// lock that just became misnamed.
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
    let now = Timestamp::now();
    let observed = now - SignedDuration::try_from(age).unwrap_or_default();
    let AliveStatus {
        patch,
        newly_misnamed,
    } = alive_status(lock, signature, observed, now);
    if newly_misnamed {
        report_misnamed(lock, ns, ctx).await;
    }
    let Some(mut patch) = patch else {
        return Ok(());
    };
    if !ctx.leadership.is_leading() {
        return Ok(());
    }
    // Onto the object judged only: a lock changed or replaced under its name since (a
    // release and a new acquire) is judged anew on its own event.
    patch["metadata"] = serde_json::json!({ "resourceVersion": lock.resource_version() });
    let api: Api<IssueLock> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let step = "write lock status";
    let (name, patch) = (lock.name_any(), Patch::Apply(&patch));
    match within(step, CALL_TIMEOUT, api.patch_status(&name, &params, &patch))
        .await
        .map_err(|e| ReconcileError::new(step, e))?
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        Err(e) => Err(ReconcileError::new(step, classify(step, ns, e))),
    }
}

/// Logs and emits a Warning Event for a lock whose name is not its issue's. The lock is
/// kept: see PROTOCOL.md ("A misnamed lock is reported") for why it is not reclaimed.
async fn report_misnamed(lock: &IssueLock, ns: &str, ctx: &Context) {
    let name = lock.name_any();
    let (_, _, message) = NameCheck::of(&name, &lock.spec.issue).condition(&name);
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
