//! Watch wiring: the three watches (IssueLocks, heartbeat Leases, Pods), what each feeds
//! into the shared tables on the way, which locks each event triggers, and when the
//! caches count as synced. Plus the one trigger by time: Leases that could have expired.

use super::Context;
use super::expiry::ExpiryClock;
use crate::crd::{HEARTBEAT_LABEL, IssueLock};
use crate::error::{Error, classify};
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often heartbeat Leases are checked for possible expiry (per Lease, not per lock).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Locks due for a look by time or by a relist, beside the watch triggers.
pub(super) type Due = futures::channel::mpsc::UnboundedSender<ObjectRef<IssueLock>>;

/// The APIs watched: everywhere, or in one namespace.
pub(super) struct Watched {
    locks: Api<IssueLock>,
    leases: Api<Lease>,
    pods: Api<Pod>,
    namespace: Option<String>,
}

impl Watched {
    pub(super) fn new(client: &kube::Client, namespace: Option<&str>) -> Self {
        fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        Self {
            locks: api(client, namespace),
            leases: api(client, namespace),
            pods: api(client, namespace),
            namespace: namespace.map(str::to_owned),
        }
    }

    /// Lists one object of each kind: fails fast, with a clear message, when the CRD is
    /// missing or RBAC denies listing.
    pub(super) async fn probe(&self) -> Result<(), Error> {
        let probe = ListParams::default().limit(1);
        let ns = self.namespace.clone().unwrap_or_default();
        self.locks
            .list(&probe)
            .await
            .map_err(|e| classify("list issuelocks", &ns, e))?;
        self.leases
            .list(&probe)
            .await
            .map_err(|e| classify("list leases", &ns, e))?;
        self.pods
            .list_metadata(&probe)
            .await
            .map_err(|e| classify("list pods", &ns, e))?;
        Ok(())
    }

    /// Every lock applied or deleted, into the lock cache and the holder index (a lock
    /// first seen counts as an acquisition).
    pub(super) fn lock_triggers(
        &self,
        cache: Writer<IssueLock>,
        synced: &Synced,
        ctx: Arc<Context>,
    ) -> impl Stream<Item = Result<IssueLock, watcher::Error>> + use<> {
        cached(
            self.locks.clone(),
            Default::default(),
            trim_lock,
            cache,
            synced,
        )
        .inspect(move |event| {
            if let Ok(event) = event
                && ctx.holders.on_event(event, Instant::now())
            {
                ctx.metrics.acquisitions.inc();
            }
        })
        .touched_objects()
        .filter_map(retried_by_watcher)
    }

    /// Heartbeat Leases: renewals only move the observation clock; deletions trigger the
    /// locks.
    pub(super) fn lease_triggers(
        &self,
        cache: Writer<Lease>,
        synced: &Synced,
        ctx: Arc<Context>,
    ) -> impl Stream<Item = Result<Lease, watcher::Error>> + use<> {
        let heartbeats = watcher::Config::default().labels(&format!("{HEARTBEAT_LABEL}=true"));
        cached(
            self.leases.clone(),
            heartbeats,
            drop_managed_fields,
            cache,
            synced,
        )
        .filter_map(move |event| {
            let out = match event {
                Ok(event) => {
                    ctx.observations.on_event(&event, Instant::now());
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
        })
    }

    /// Pods (trimmed to identity and phase) applied or deleted. A pod deleted during a
    /// watch gap sends no Delete event: after each relist, the locks of cached-namespace
    /// pods no longer there are sent to `due`.
    pub(super) fn pod_triggers(
        &self,
        cache: Writer<Pod>,
        synced: &Synced,
        ctx: Arc<Context>,
        due: Due,
    ) -> impl Stream<Item = Result<Pod, watcher::Error>> + use<> {
        cached(
            self.pods.clone(),
            Default::default(),
            trim_pod,
            cache,
            synced,
        )
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                let gone = ctx.holders.locks_of_pods_not_in(|(ns, name)| {
                    !ctx.caches_pods_in(ns)
                        || ctx.pods.get(&ObjectRef::new(name).within(ns)).is_some()
                });
                for lock in gone {
                    let _ = due.unbounded_send(lock);
                }
            }
        })
        .touched_objects()
        .filter_map(retried_by_watcher)
    }
}

/// The watch of `api` under `config`, retried with backoff, each object cut down by `trim`
/// and kept in `cache`, its first list tracked by `synced`.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    cache: Writer<K>,
    synced: &Synced,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + use<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Clone + Default + Eq + std::hash::Hash,
{
    watcher(api, config)
        .backoff(crate::watch_backoff::CappedBackoff::new(
            crate::watch_backoff::CONTROLLER_CAP,
        ))
        .modify(trim)
        .reflect(cache)
        .inspect(synced.tracker())
}

/// Sets the shared ready flag once every watch stream given a [`tracker`](Self::tracker)
/// has completed its first list.
pub(super) struct Synced {
    /// Streams tracked that have not completed their first list yet.
    pending: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
}

impl Synced {
    pub(super) fn new(ready: Arc<AtomicBool>) -> Self {
        Self {
            pending: Arc::new(AtomicUsize::new(0)),
            ready,
        }
    }

    /// Tracks one more watch stream. Every tracker is made before any stream runs.
    pub(super) fn tracker<K>(
        &self,
    ) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let (pending, ready) = (self.pending.clone(), self.ready.clone());
        let mut listed = false;
        move |event| {
            if let Ok(watcher::Event::InitDone) = event
                && !std::mem::replace(&mut listed, true)
                && pending.fetch_sub(1, Ordering::Relaxed) == 1
                && !ready.swap(true, Ordering::Relaxed)
            {
                tracing::info!("caches synced");
            }
        }
    }
}

/// Triggers the locks of each heartbeat Lease that could have expired (unchanged for its
/// duration on our clock) or is not observed at all, once per such state. One check per
/// Lease some lock names: renewals cost nothing per lock.
pub(super) async fn watch_lease_expiry(ctx: Arc<Context>, due: Due) {
    let mut clock = ExpiryClock::default();
    loop {
        tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
        if !ctx.is_ready() {
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

/// Keeps what the controller reads of a lock: its identity (name, namespace, uid,
/// resourceVersion, creation and deletion times), spec, and its conditions' type, status,
/// reason and transition time ([`status`](super::status) compares those; it writes
/// messages from what it knows, never from what it read). The labels, the acquire nonce
/// annotation and the ownerReference are the holder's business (its own watch, the
/// adoption after an unknown outcome, the cluster's garbage collector). A lock is deleted
/// with its uid and resourceVersion as preconditions: exactly the version judged.
fn trim_lock(lock: &mut IssueLock) {
    trim_metadata(&mut lock.metadata);
    if let Some(status) = &mut lock.status {
        for condition in &mut status.conditions {
            condition.message = String::new();
        }
        status.conditions.shrink_to_fit();
    }
}

/// Drops the metadata the controller reads of neither locks nor pods: managedFields,
/// labels, annotations, ownerReferences.
fn trim_metadata(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// Keeps only what [`judge`] needs of a Pod: metadata identity and phase.
fn trim_pod(pod: &mut Pod) {
    pod.spec = None;
    trim_metadata(&mut pod.metadata);
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_lock_keeps_what_the_controller_reads() {
        let mut lock: IssueLock = serde_json::from_value(serde_json::json!({
            "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
            "metadata": {
                "name": "l", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "creationTimestamp": "2026-11-29T00:00:00Z",
                "labels": {"issuelock.dev/holder-lease": "h-1"},
                "annotations": {"issuelock.dev/acquire-nonce": "n"},
                "ownerReferences": [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                     "name": "h-1", "uid": "lu"}],
                "managedFields": [{"manager": "m", "operation": "Update"}]
            },
            "spec": {"issue": "i", "holder": {"identity": "h", "lease": "h-1"}},
            "status": {"conditions": [{"type": "HolderAlive", "status": "True",
                "reason": "HeartbeatObserved", "message": "heartbeat Lease h-1 is being renewed",
                "lastTransitionTime": "2026-11-29T00:00:01Z"}]}
        }))
        .unwrap();
        let spec = lock.spec.clone();
        trim_lock(&mut lock);
        let meta = &lock.metadata;
        assert_eq!(
            (
                meta.name.as_deref(),
                meta.namespace.as_deref(),
                meta.uid.as_deref()
            ),
            (Some("l"), Some("ns"), Some("u"))
        );
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert!(meta.creation_timestamp.is_some());
        assert!(meta.labels.is_none() && meta.annotations.is_none());
        assert!(meta.owner_references.is_none() && meta.managed_fields.is_none());
        assert_eq!(lock.spec, spec);
        let condition = &lock.status.as_ref().unwrap().conditions[0];
        assert_eq!(
            (
                condition.type_.as_str(),
                condition.status.as_str(),
                condition.reason.as_str()
            ),
            ("HolderAlive", "True", "HeartbeatObserved")
        );
        assert!(condition.message.is_empty());
    }

    #[test]
    fn ready_once_every_tracked_stream_has_listed_once() {
        let ready = Arc::new(AtomicBool::new(false));
        let synced = Synced::new(ready.clone());
        let (mut a, mut b) = (synced.tracker::<Lease>(), synced.tracker::<Lease>());
        let done = Ok(watcher::Event::InitDone);
        a(&done);
        a(&done);
        assert!(
            !ready.load(Ordering::Relaxed),
            "a relist of one stream is not two"
        );
        b(&Ok(watcher::Event::Init));
        assert!(!ready.load(Ordering::Relaxed));
        b(&done);
        assert!(ready.load(Ordering::Relaxed));
    }
}
