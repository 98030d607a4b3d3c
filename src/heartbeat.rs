//! The holder's heartbeat: one `coordination.k8s.io/v1` Lease per holder process,
//! renewed with optimistic concurrency, however many locks the process holds.
//!
//! # Timing
//! `lease_duration > renew_deadline > renew_interval > 0` (checked by
//! [`HeartbeatConfig::validate`], as client-go's leader election does). The Lease is
//! renewed every `renew_interval`. When no renewal has succeeded for `renew_deadline`,
//! measured on this process's monotonic clock from the moment the last successful
//! renewal was *sent*, the heartbeat is lost for good: every lock of the client is
//! marked lost. Observers may declare the holder dead only after seeing the Lease
//! unchanged for `lease_duration` on their own clock, which starts no earlier than that
//! send; so the holder always gives up first, by at least `lease_duration -
//! renew_deadline` (the *slack*), provided the two clocks advance at similar rates.

use crate::crd::{
    HEARTBEAT_LABEL, Holder, HolderPod, LEASE_POD_UID_ANNOTATION, LEASE_USER_ANNOTATION,
};
use crate::error::{
    Deleted, Error, Result, classify, delete_exact, is_conflict, is_not_found, within,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timing of a heartbeat; see the module docs.
///
/// Built from [`HeartbeatConfig::default`] with the `with_*` methods; more fields may be
/// added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// How long observers wait, after last seeing the Lease change, before declaring the
    /// holder dead. Written to the Lease (whole seconds). Default 15 s.
    pub lease_duration: Duration,
    /// How long the holder keeps trusting its locks without a successful renewal.
    /// Default 10 s.
    pub renew_deadline: Duration,
    /// Time between renewals. Default 2 s.
    pub renew_interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
        }
    }
}

impl HeartbeatConfig {
    /// Sets [`HeartbeatConfig::lease_duration`].
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self
    }

    /// Sets [`HeartbeatConfig::renew_deadline`].
    pub fn with_renew_deadline(mut self, renew_deadline: Duration) -> Self {
        self.renew_deadline = renew_deadline;
        self
    }

    /// Sets [`HeartbeatConfig::renew_interval`].
    pub fn with_renew_interval(mut self, renew_interval: Duration) -> Self {
        self.renew_interval = renew_interval;
        self
    }

    /// Checks `lease_duration > renew_deadline > renew_interval > 0` and that the lease
    /// duration is a whole number of seconds.
    pub fn validate(&self) -> Result<()> {
        let Self {
            lease_duration,
            renew_deadline,
            renew_interval,
        } = *self;
        if renew_interval.is_zero() {
            return Err(Error::Config("renew interval must be positive".into()));
        }
        if renew_deadline <= renew_interval {
            return Err(Error::Config(format!(
                "renew deadline ({renew_deadline:?}) must be greater than the renew interval ({renew_interval:?})"
            )));
        }
        if lease_duration <= renew_deadline {
            return Err(Error::Config(format!(
                "lease duration ({lease_duration:?}) must be greater than the renew deadline ({renew_deadline:?})"
            )));
        }
        if lease_duration.subsec_nanos() != 0 || lease_duration.as_secs() > i32::MAX as u64 {
            return Err(Error::Config(
                "lease duration must be a whole number of seconds".into(),
            ));
        }
        Ok(())
    }
}

/// A Lease's `leaseDurationSeconds` (15 s when unset, at least 1 s).
pub fn lease_duration(lease: &Lease) -> Duration {
    let secs = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(15);
    Duration::from_secs(secs.max(1) as u64)
}

/// Marks `spec` as freshly acquired by `identity` now, with `config`'s duration: the one
/// place a Lease gets a holder, for heartbeats and for leader election alike.
pub(crate) fn acquire(spec: &mut LeaseSpec, identity: &str, config: &HeartbeatConfig) {
    let now = micro_now();
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(config.lease_duration.as_secs() as i32);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
}

/// The ownerReference making a heartbeat Lease in `namespace` a dependent of the holder's
/// `pod`, or `None` when there is no pod or it lives in another namespace.
///
/// ownerReferences cannot cross namespaces: the garbage collector looks the owner up in
/// the dependent's namespace, finds none, and deletes the dependent (and through it every
/// lock owned by the Lease). A holder whose pod is elsewhere therefore loses this defence
/// in depth (its Lease and locks are not collected with the pod by the cluster); it keeps
/// the controller's pod evidence, which reads the pod in `spec.holder.pod.namespace`.
pub fn pod_owner(pod: Option<&HolderPod>, namespace: &str) -> Option<OwnerReference> {
    let pod = pod.filter(|p| p.namespace_or(namespace) == namespace)?;
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        ..OwnerReference::default()
    })
}

/// True when `lease` may be the heartbeat of `holder`: it is a heartbeat Lease (labelled
/// `issuelock.dev/heartbeat=true`, as the protocol requires; a lock must not ride on a
/// Lease that something else renews, such as another program's leader election), and
/// wherever both record a creator —
/// the Lease in its annotations `issuelock.dev/holder-user` / `issuelock.dev/holder-pod-uid`,
/// the lock in `spec.holder.user` / `spec.holder.pod.uid` — they agree. A lock naming
/// another holder's Lease, to ride on a live heartbeat that is not its own, fails this:
/// the admission policy makes it record its own creator, which differs. A side that
/// records nothing is taken at its word (a client outside the policy, a pod it cannot name).
pub fn is_heartbeat_of(lease: &Lease, holder: &Holder) -> bool {
    let labelled = lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HEARTBEAT_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return false;
    }
    let recorded = |key: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let agree = |on_lease: Option<&str>, on_lock: Option<&str>| match (on_lease, on_lock) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    agree(recorded(LEASE_USER_ANNOTATION), holder.user.as_deref())
        && agree(
            recorded(LEASE_POD_UID_ANNOTATION),
            holder.pod.as_ref().map(|p| p.uid.as_str()),
        )
}

/// The current time at the API server's precision (microseconds), so that a time we
/// write compares equal to the one we read back.
fn micro_now() -> MicroTime {
    let now = Timestamp::now();
    MicroTime(Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now))
}

/// Shared health of one heartbeat, read by guards without waiting for the renew task.
#[derive(Debug)]
pub struct Pulse {
    last_renewed: Mutex<Instant>,
    last_attempt_failed: Mutex<bool>,
    renew_deadline: Duration,
    /// Cancelled for good when the heartbeat is lost or stopped.
    pub(crate) lost: CancellationToken,
}

impl Pulse {
    fn new(renewed_at: Instant, renew_deadline: Duration) -> Self {
        Self {
            last_renewed: Mutex::new(renewed_at),
            last_attempt_failed: Mutex::new(false),
            renew_deadline,
            lost: CancellationToken::new(),
        }
    }

    /// True while the locks of this holder may be trusted: not lost, and the last
    /// successful renewal was sent less than `renew_deadline` ago. Checked against the
    /// clock, so it is false right after the process resumes from a long pause, even
    /// before the renew task has run.
    pub fn is_trusted(&self) -> bool {
        !self.lost.is_cancelled() && self.deadline() > Instant::now()
    }

    /// True when new locks may be taken: trusted, and the latest renewal succeeded.
    pub(crate) fn is_healthy(&self) -> bool {
        self.is_trusted() && !*self.last_attempt_failed.lock().expect("pulse mutex")
    }

    /// When trust ends unless a renewal succeeds first.
    pub(crate) fn deadline(&self) -> Instant {
        *self.last_renewed.lock().expect("pulse mutex") + self.renew_deadline
    }

    fn renewed(&self, sent_at: Instant) {
        *self.last_renewed.lock().expect("pulse mutex") = sent_at;
        *self.last_attempt_failed.lock().expect("pulse mutex") = false;
    }

    fn attempt_failed(&self) {
        *self.last_attempt_failed.lock().expect("pulse mutex") = true;
    }
}

/// A running heartbeat. Stop it with [`Heartbeat::stop`] to delete the Lease.
pub struct Heartbeat {
    api: Api<Lease>,
    name: String,
    uid: String,
    pulse: Arc<Pulse>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    call_timeout: Duration,
}

impl Heartbeat {
    /// Creates the Lease `holder.lease` (it must not exist) and starts renewing it.
    ///
    /// The Lease is labelled `issuelock.dev/heartbeat=true`, names `holder.identity` as
    /// its holder, records its creator (`holder.user`, `holder.pod`'s uid) in annotations
    /// for the admission policy, and is owned by the holder's pod when given and in
    /// `namespace` (so the cluster's garbage collector removes it with the pod); see
    /// [`pod_owner`].
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        holder: &Holder,
        config: HeartbeatConfig,
        call_timeout: Duration,
    ) -> Result<Self> {
        config.validate()?;
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let pod = holder.pod.as_ref();
        let annotations: BTreeMap<String, String> = [
            (LEASE_USER_ANNOTATION, holder.user.clone()),
            (LEASE_POD_UID_ANNOTATION, pod.map(|p| p.uid.clone())),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect();
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(holder.lease.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    HEARTBEAT_LABEL.to_owned(),
                    "true".to_owned(),
                )])),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: pod_owner(pod, namespace).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        acquire(
            lease.spec.as_mut().expect("set above"),
            &holder.identity,
            &config,
        );
        let sent = Instant::now();
        let created = within(
            "create heartbeat lease",
            call_timeout,
            api.create(&PostParams::default(), &lease),
        )
        .await?
        .map_err(|e| classify("create heartbeat lease", namespace, e))?;
        Ok(Self::renewing(api, created, sent, config, call_timeout))
    }

    /// Starts renewing `lease`, which this process has just written at `written_at` (it
    /// names us as holder). Used for a freshly created Lease and for one taken over.
    pub(crate) fn renewing(
        api: Api<Lease>,
        lease: Lease,
        written_at: Instant,
        config: HeartbeatConfig,
        call_timeout: Duration,
    ) -> Self {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let uid = lease.metadata.uid.clone().unwrap_or_default();
        let pulse = Arc::new(Pulse::new(written_at, config.renew_deadline));
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew_loop(
            api.clone(),
            lease,
            pulse.clone(),
            stop.clone(),
            config,
            call_timeout,
        ));
        Self {
            api,
            name,
            uid,
            pulse,
            stop,
            task: Mutex::new(Some(task)),
            call_timeout,
        }
    }

    /// The Lease's name.
    pub fn lease_name(&self) -> &str {
        &self.name
    }

    /// The Lease's uid.
    pub fn lease_uid(&self) -> &str {
        &self.uid
    }

    pub(crate) fn pulse(&self) -> &Arc<Pulse> {
        &self.pulse
    }

    /// True while locks under this heartbeat may be trusted (see the module docs).
    pub fn is_trusted(&self) -> bool {
        self.pulse.is_trusted()
    }

    /// Completes when the heartbeat is lost (or stopped).
    pub async fn lost(&self) {
        self.pulse.lost.cancelled().await
    }

    /// Stops renewing and deletes the Lease (precondition: its uid). Locks still held
    /// become untrusted.
    pub async fn stop(&self) -> Result<()> {
        self.stop.cancel();
        let task = self.task.lock().expect("task mutex").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.pulse.lost.cancel();
        let step = "delete heartbeat lease";
        let delete = delete_exact(&self.api, &self.name, &self.uid, None);
        match within(step, self.call_timeout, delete).await? {
            Ok(Deleted::Deleted | Deleted::GoneOrChanged) => Ok(()),
            Err(e) => Err(classify(step, "", e)),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
        self.pulse.lost.cancel();
    }
}

/// Renews until stopped or lost. A renewal is a `PUT` of the last Lease we wrote (its
/// resourceVersion makes it conditional). A `409` means the Lease was written since: we
/// re-read it and continue only if what is there is our own write (a renewal whose answer
/// we never got); any other change (holder, duration, labels, annotations, owners, a
/// write we did not make) loses the heartbeat. A `404` loses it too.
async fn renew_loop(
    api: Api<Lease>,
    mut current: Lease,
    pulse: Arc<Pulse>,
    stop: CancellationToken,
    config: HeartbeatConfig,
    call_timeout: Duration,
) {
    let retry = config.renew_interval.min(Duration::from_millis(500));
    let name = current.metadata.name.clone().unwrap_or_default();
    // renewTimes of renewals whose outcome we do not know (they may have been written).
    let mut unconfirmed: Vec<MicroTime> = Vec::new();
    let mut next = Instant::now() + config.renew_interval;
    loop {
        // Wake at the next renewal or at the deadline, whichever comes first, so the lost
        // signal fires on time even while renewals keep failing.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.min(pulse.deadline())) => {}
        }
        let deadline = pulse.deadline();
        if Instant::now() >= deadline {
            tracing::error!(lease = %name, "heartbeat lost: no successful renewal within the renew deadline");
            pulse.lost.cancel();
            return;
        }
        let sent = Instant::now();
        let mut renewed = current.clone();
        let renew_time = micro_now();
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(renew_time.clone());
        }
        let budget = call_timeout.min(deadline - sent);
        let params = PostParams::default();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = tokio::time::timeout(budget, api.replace(&name, &params, &renewed)) => a,
        };
        match answer {
            Ok(Ok(written)) => {
                current = written;
                unconfirmed.clear();
                pulse.renewed(sent);
                next = sent + config.renew_interval;
            }
            Ok(Err(e)) if is_conflict(&e) => {
                let budget =
                    call_timeout.min(pulse.deadline().saturating_duration_since(Instant::now()));
                match tokio::time::timeout(budget, api.get_opt(&name)).await {
                    Ok(Ok(Some(fresh))) if is_own_write(&current, &unconfirmed, &fresh) => {
                        // Not counted as a renewal: we do not know when it was sent.
                        current = fresh;
                        unconfirmed.clear();
                        next = Instant::now();
                    }
                    Ok(Ok(Some(_))) => {
                        tracing::error!(lease = %name, "heartbeat lost: the Lease was changed by someone else");
                        pulse.lost.cancel();
                        return;
                    }
                    Ok(Ok(None)) => {
                        tracing::error!(lease = %name, "heartbeat lost: the Lease was deleted");
                        pulse.lost.cancel();
                        return;
                    }
                    _ => {
                        pulse.attempt_failed();
                        next = Instant::now() + retry;
                    }
                }
            }
            Ok(Err(e)) if is_not_found(&e) => {
                tracing::error!(lease = %name, "heartbeat lost: the Lease was deleted");
                pulse.lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "heartbeat renewal failed; retrying");
                unconfirmed.push(renew_time);
                pulse.attempt_failed();
                next = Instant::now() + retry;
            }
            Err(_) => {
                tracing::warn!(lease = %name, "heartbeat renewal timed out; retrying");
                unconfirmed.push(renew_time);
                pulse.attempt_failed();
                next = Instant::now() + retry;
            }
        }
    }
}

/// True when `fresh` is `current` as we last wrote it, or one of our renewals of it whose
/// answer we never got (its renewTime is in `unconfirmed`): same object, same metadata
/// (labels, annotations, owners, finalizers), same spec but for renewTime.
fn is_own_write(current: &Lease, unconfirmed: &[MicroTime], fresh: &Lease) -> bool {
    let (c, f) = (&current.metadata, &fresh.metadata);
    let same_metadata = c.uid == f.uid
        && c.labels == f.labels
        && c.annotations == f.annotations
        && c.owner_references == f.owner_references
        && c.finalizers == f.finalizers
        && f.deletion_timestamp.is_none();
    let (Some(cs), Some(fs)) = (&current.spec, &fresh.spec) else {
        return false;
    };
    let but_renew_time = |s: &LeaseSpec| LeaseSpec {
        renew_time: None,
        ..s.clone()
    };
    let ours = fs.renew_time == cs.renew_time
        || fs
            .renew_time
            .as_ref()
            .is_some_and(|t| unconfirmed.contains(t));
    same_metadata && but_renew_time(cs) == but_renew_time(fs) && ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_relation_is_validated() {
        assert!(HeartbeatConfig::default().validate().is_ok());
        let s = Duration::from_secs;
        let bad = |l, d, i| HeartbeatConfig {
            lease_duration: l,
            renew_deadline: d,
            renew_interval: i,
        };
        assert!(bad(s(10), s(10), s(2)).validate().is_err());
        assert!(bad(s(15), s(2), s(2)).validate().is_err());
        assert!(bad(s(15), s(10), s(0)).validate().is_err());
        assert!(
            bad(Duration::from_millis(15_500), s(10), s(2))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_lease_is_owned_by_its_pod_only_within_one_namespace() {
        let pod = |namespace: Option<&str>| HolderPod {
            name: "w".into(),
            uid: "u".into(),
            namespace: namespace.map(str::to_owned),
        };
        let owner = pod_owner(Some(&pod(Some("workers"))), "workers").unwrap();
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "u"));
        // Unrecorded namespace: the lock's own, as before the field existed.
        assert!(pod_owner(Some(&pod(None)), "workers").is_some());
        assert_eq!(pod_owner(Some(&pod(Some("ci"))), "workers"), None);
        assert_eq!(pod_owner(None, "workers"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn trust_ends_at_the_renew_deadline_even_without_the_task() {
        let pulse = Pulse::new(Instant::now(), Duration::from_secs(10));
        assert!(pulse.is_trusted() && pulse.is_healthy());
        tokio::time::advance(Duration::from_secs(9)).await;
        pulse.attempt_failed();
        assert!(pulse.is_trusted() && !pulse.is_healthy());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!pulse.is_trusted());
    }

    fn lease(renew_secs: i64) -> Lease {
        let t = |s: i64| MicroTime(Timestamp::from_second(s).unwrap());
        Lease {
            metadata: ObjectMeta {
                name: Some("w-1".into()),
                uid: Some("u".into()),
                resource_version: Some("10".into()),
                labels: Some(BTreeMap::from([(HEARTBEAT_LABEL.into(), "true".into())])),
                annotations: Some(BTreeMap::from([(
                    LEASE_USER_ANNOTATION.into(),
                    "system:serviceaccount:ns:w".into(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("w".into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(t(100)),
                renew_time: Some(t(renew_secs)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn only_our_own_writes_are_adopted_after_a_conflict() {
        let current = lease(100);
        let t = |s: i64| MicroTime(Timestamp::from_second(s).unwrap());
        let mut ours = lease(102);
        ours.metadata.resource_version = Some("11".into());
        // A renewal whose answer we never got.
        assert!(is_own_write(&current, &[t(102)], &ours));
        // The same content at a renewTime we never sent: someone else's write.
        assert!(!is_own_write(&current, &[t(101)], &ours));
        let mut shorter = ours.clone();
        shorter.spec.as_mut().unwrap().lease_duration_seconds = Some(1);
        assert!(!is_own_write(&current, &[t(102)], &shorter));
        let mut taken = ours.clone();
        taken.spec.as_mut().unwrap().holder_identity = Some("thief".into());
        assert!(!is_own_write(&current, &[t(102)], &taken));
        let mut relabelled = ours.clone();
        relabelled.metadata.labels = None;
        assert!(!is_own_write(&current, &[t(102)], &relabelled));
        let mut disowned = ours.clone();
        disowned.metadata.annotations = None;
        assert!(!is_own_write(&current, &[t(102)], &disowned));
        let mut recreated = ours;
        recreated.metadata.uid = Some("other".into());
        assert!(!is_own_write(&current, &[t(102)], &recreated));
    }

    #[test]
    fn written_times_survive_the_round_trip() {
        let t = micro_now();
        let json = serde_json::to_value(&t).unwrap();
        let back: MicroTime = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_lock_cannot_borrow_another_holders_heartbeat() {
        let lease = lease(100);
        let holder = |user: Option<&str>| Holder {
            identity: "w".into(),
            pod: None,
            lease: "w-1".into(),
            user: user.map(Into::into),
        };
        assert!(is_heartbeat_of(
            &lease,
            &holder(Some("system:serviceaccount:ns:w"))
        ));
        assert!(!is_heartbeat_of(
            &lease,
            &holder(Some("system:serviceaccount:ns:evil"))
        ));
        assert!(
            is_heartbeat_of(&lease, &holder(None)),
            "a lock recording no user"
        );
        let mut bound = lease.clone();
        bound
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(LEASE_POD_UID_ANNOTATION.into(), "pod-a".into());
        let mut in_pod = holder(Some("system:serviceaccount:ns:w"));
        assert!(is_heartbeat_of(&bound, &in_pod), "a lock recording no pod");
        in_pod.pod = Some(HolderPod {
            name: "b".into(),
            uid: "pod-b".into(),
            namespace: None,
        });
        assert!(!is_heartbeat_of(&bound, &in_pod), "another pod");
        in_pod.pod.as_mut().unwrap().uid = "pod-a".into();
        assert!(is_heartbeat_of(&bound, &in_pod));
        let mut unannotated = lease;
        unannotated.metadata.annotations = None;
        assert!(is_heartbeat_of(&unannotated, &holder(None)));
        let mut unlabelled = unannotated;
        unlabelled.metadata.labels = None;
        assert!(
            !is_heartbeat_of(&unlabelled, &holder(None)),
            "another program's Lease, renewed by it"
        );
        unlabelled.metadata.labels =
            Some(BTreeMap::from([(HEARTBEAT_LABEL.into(), "false".into())]));
        assert!(!is_heartbeat_of(&unlabelled, &holder(None)));
    }
}
