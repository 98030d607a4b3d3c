//! The locks of each holder: which locks name a given heartbeat Lease, which are held from
//! a given pod, how many are misnamed, and when each was first seen. Fed by the lock
//! watch, so that a Pod or Lease event touches only its own locks (never a scan of every
//! lock) and the gauges follow changes instead of recomputing every lock's name.
//!
//! Entries are keyed by lock uid (a name re-acquired is another lock). A lock's spec is
//! immutable, so an entry is computed once, when its uid is first seen; later events of
//! the same uid cost a lookup. A relist (watcher `Init` … `InitDone`) drops every entry it
//! did not contain, so a Delete missed in a watch gap never leaks one.

use super::naming::NameCheck;
use super::observations::LeaseKey;
use super::pod_reads::PodKey;
use crate::crd::IssueLock;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// What the index keeps of one lock: its name (its namespace is its Lease's), its Lease
/// and pod keys, shared with every other lock of the same holder, and when this
/// controller first saw it, on its monotonic clock.
#[derive(Debug)]
struct Entry {
    name: Box<str>,
    first_seen: Instant,
    lease: Arc<LeaseKey>,
    pod: Option<Arc<PodKey>>,
    misnamed: bool,
}

impl Entry {
    fn lock(&self) -> ObjectRef<IssueLock> {
        ObjectRef::new(&self.name).within(&self.lease.0)
    }
}

/// A lock's uid, shared by its entry and the sets that name it (one allocation per lock).
type Uid = Arc<str>;

#[derive(Debug, Default)]
struct Index {
    by_uid: HashMap<Uid, Entry>,
    by_lease: HashMap<Arc<LeaseKey>, HashSet<Uid>>,
    by_pod: HashMap<Arc<PodKey>, HashSet<Uid>>,
    misnamed: usize,
    /// Uids delivered by the relist in progress, if one is.
    relisted: Option<HashSet<Uid>>,
}

impl Index {
    /// Indexes `lock`, first seen at `now`, unless its uid is already: its uid, and
    /// whether it was new.
    fn insert(&mut self, lock: &IssueLock, now: Instant) -> (Uid, bool) {
        let uid = lock.metadata.uid.as_deref().unwrap_or_default();
        if let Some((uid, _)) = self.by_uid.get_key_value(uid) {
            return (uid.clone(), false);
        }
        let uid: Uid = uid.into();
        let ns = lock.namespace().unwrap_or_default();
        let name = lock.name_any();
        let pod = lock.spec.holder.pod.as_ref();
        let entry = Entry {
            first_seen: now,
            misnamed: NameCheck::of(&name, &lock.spec.issue).is_misnamed(),
            name: name.into(),
            lease: shared(&self.by_lease, (ns.clone(), lock.spec.holder.lease.clone())),
            pod: pod.map(|p| {
                shared(
                    &self.by_pod,
                    (p.namespace_or(&ns).to_owned(), p.name.clone()),
                )
            }),
        };
        self.by_lease
            .entry(entry.lease.clone())
            .or_default()
            .insert(uid.clone());
        if let Some(pod) = &entry.pod {
            self.by_pod
                .entry(pod.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.misnamed += entry.misnamed as usize;
        self.by_uid.insert(uid.clone(), entry);
        (uid, true)
    }

    fn remove(&mut self, uid: &str) {
        let Some(entry) = self.by_uid.remove(uid) else {
            return;
        };
        detach(&mut self.by_lease, &entry.lease, uid);
        if let Some(pod) = &entry.pod {
            detach(&mut self.by_pod, pod, uid);
        }
        self.misnamed -= entry.misnamed as usize;
    }

    fn refs<K: std::hash::Hash + Eq>(
        &self,
        map: &HashMap<Arc<K>, HashSet<Uid>>,
        key: &K,
    ) -> Vec<ObjectRef<IssueLock>> {
        map.get(key)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.by_uid.get(uid).map(Entry::lock))
            .collect()
    }
}

/// `key` as the map already holds it, if it does: one allocation per holder, not per lock.
fn shared<K: std::hash::Hash + Eq>(map: &HashMap<Arc<K>, HashSet<Uid>>, key: K) -> Arc<K> {
    match map.get_key_value(&key) {
        Some((shared, _)) => shared.clone(),
        None => Arc::new(key),
    }
}

fn detach<K: std::hash::Hash + Eq>(
    map: &mut HashMap<Arc<K>, HashSet<Uid>>,
    key: &Arc<K>,
    uid: &str,
) {
    if let Some(uids) = map.get_mut(key) {
        uids.remove(uid);
        if uids.is_empty() {
            map.remove(key);
        }
    }
}

/// Locks by holder Lease and by holder pod, and when each was first seen.
#[derive(Debug, Default)]
pub struct HolderIndex {
    index: Mutex<Index>,
}

impl HolderIndex {
    /// Feeds one event of the lock watch, seen at `now`. True when it shows a new
    /// acquisition: a lock uid first seen after the initial list.
    pub fn on_event(&self, event: &watcher::Event<IssueLock>, now: Instant) -> bool {
        let mut index = self.index.lock().expect("holder index mutex");
        match event {
            watcher::Event::Init => index.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(lock) => {
                let (uid, _) = index.insert(lock, now);
                if let Some(listed) = index.relisted.as_mut() {
                    listed.insert(uid);
                }
            }
            watcher::Event::InitDone => {
                let listed = index.relisted.take().unwrap_or_default();
                let gone: Vec<Uid> = index
                    .by_uid
                    .keys()
                    .filter(|uid| !listed.contains(&uid[..]))
                    .cloned()
                    .collect();
                for uid in gone {
                    index.remove(&uid);
                }
            }
            watcher::Event::Apply(lock) => return index.insert(lock, now).1,
            watcher::Event::Delete(lock) => index.remove(&lock.uid().unwrap_or_default()),
        }
        false
    }

    /// When `lock` was first seen, if the index has it. (A reconcile never indexes a
    /// lock: it may be judging a copy of one deleted meanwhile.)
    pub fn first_seen(&self, lock: &IssueLock) -> Option<Instant> {
        let index = self.index.lock().expect("holder index mutex");
        let uid = lock.metadata.uid.as_deref().unwrap_or_default();
        index.by_uid.get(uid).map(|entry| entry.first_seen)
    }

    /// The locks naming the heartbeat Lease `key`.
    pub fn locks_of_lease(&self, key: &LeaseKey) -> Vec<ObjectRef<IssueLock>> {
        let index = self.index.lock().expect("holder index mutex");
        index.refs(&index.by_lease, key)
    }

    /// How many locks name the heartbeat Lease `key`.
    pub fn lock_count_of_lease(&self, key: &LeaseKey) -> usize {
        let index = self.index.lock().expect("holder index mutex");
        index.by_lease.get(key).map_or(0, HashSet::len)
    }

    /// The locks held from the pod `key` (its namespace and name), in any namespace.
    pub fn locks_of_pod(&self, key: &PodKey) -> Vec<ObjectRef<IssueLock>> {
        let index = self.index.lock().expect("holder index mutex");
        index.refs(&index.by_pod, key)
    }

    /// Every heartbeat Lease some lock names.
    pub fn leases(&self) -> Vec<LeaseKey> {
        let index = self.index.lock().expect("holder index mutex");
        index.by_lease.keys().map(|k| (**k).clone()).collect()
    }

    /// True when some lock names the heartbeat Lease `key`.
    pub fn is_referenced(&self, key: &LeaseKey) -> bool {
        let index = self.index.lock().expect("holder index mutex");
        index.by_lease.contains_key(key)
    }

    /// The locks held from pods not in `present` (pod keys), for a completed pod relist:
    /// a pod deleted during a watch gap sends no Delete event.
    pub fn locks_of_pods_not_in(
        &self,
        present: impl Fn(&PodKey) -> bool,
    ) -> Vec<ObjectRef<IssueLock>> {
        let index = self.index.lock().expect("holder index mutex");
        index
            .by_pod
            .keys()
            .filter(|pod| !present(pod.as_ref()))
            .flat_map(|pod| index.refs(&index.by_pod, pod))
            .collect()
    }

    /// Locks indexed, and how many of them are misnamed.
    pub fn counts(&self) -> (usize, usize) {
        let index = self.index.lock().expect("holder index mutex");
        (index.by_uid.len(), index.misnamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Holder, HolderPod, IssueLockSpec};

    fn lock(uid: &str, ns: &str, name: &str, lease: &str, pod: Option<(&str, &str)>) -> IssueLock {
        let mut lock = IssueLock::new(
            name,
            IssueLockSpec {
                issue: name.into(),
                holder: Holder {
                    identity: "h".into(),
                    pod: pod.map(|(pod_ns, pod)| HolderPod {
                        name: pod.into(),
                        uid: "pu".into(),
                        namespace: Some(pod_ns.into()),
                    }),
                    lease: lease.into(),
                    user: None,
                },
                max_hold_seconds: None,
                signature: None,
            },
        );
        lock.metadata.namespace = Some(ns.into());
        lock.metadata.uid = Some(uid.into());
        lock
    }

    fn names(refs: Vec<ObjectRef<IssueLock>>) -> Vec<String> {
        let mut v: Vec<_> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    /// The index sees `lock(...)` applied (created or changed).
    fn hold(
        index: &HolderIndex,
        uid: &str,
        ns: &str,
        name: &str,
        lease: &str,
        pod: Option<(&str, &str)>,
    ) {
        index.on_event(
            &watcher::Event::Apply(lock(uid, ns, name, lease, pod)),
            Instant::now(),
        );
    }

    fn key(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn an_event_reaches_only_its_own_locks() {
        let index = HolderIndex::default();
        hold(&index, "1", "w", "a", "l1", Some(("ci", "p1")));
        hold(&index, "2", "w", "b", "l1", Some(("ci", "p1")));
        hold(&index, "3", "w", "c", "l2", Some(("w", "p1")));
        hold(&index, "4", "x", "d", "l1", None);
        assert_eq!(names(index.locks_of_lease(&key("w", "l1"))), ["a", "b"]);
        assert_eq!(names(index.locks_of_lease(&key("x", "l1"))), ["d"]);
        assert_eq!(index.lock_count_of_lease(&key("w", "l1")), 2);
        assert_eq!(index.lock_count_of_lease(&key("w", "nope")), 0);
        assert_eq!(names(index.locks_of_pod(&key("ci", "p1"))), ["a", "b"]);
        assert_eq!(names(index.locks_of_pod(&key("w", "p1"))), ["c"]);
        index.on_event(
            &watcher::Event::Delete(lock("1", "w", "a", "l1", Some(("ci", "p1")))),
            Instant::now(),
        );
        assert_eq!(names(index.locks_of_pod(&key("ci", "p1"))), ["b"]);
        index.on_event(
            &watcher::Event::Delete(lock("2", "w", "b", "l1", Some(("ci", "p1")))),
            Instant::now(),
        );
        assert!(index.locks_of_pod(&key("ci", "p1")).is_empty());
        assert!(!index.is_referenced(&key("w", "l1")));
        assert_eq!(index.counts().0, 2);
    }

    #[test]
    fn a_relist_drops_locks_deleted_during_a_watch_gap() {
        let index = HolderIndex::default();
        hold(&index, "1", "w", "a", "l1", None);
        hold(&index, "2", "w", "b", "l1", None);
        index.on_event(&watcher::Event::Init, Instant::now());
        index.on_event(
            &watcher::Event::InitApply(lock("2", "w", "b", "l1", None)),
            Instant::now(),
        );
        // Until the relist completes, the old entries still answer.
        assert_eq!(index.counts().0, 2);
        index.on_event(&watcher::Event::InitDone, Instant::now());
        assert_eq!(names(index.locks_of_lease(&key("w", "l1"))), ["b"]);
        assert_eq!(index.counts().0, 1);
    }

    #[test]
    fn misnamed_locks_are_counted_once_per_lock() {
        let index = HolderIndex::default();
        // Named after its issue "a"? No: the derived name has a hash suffix.
        let misnamed = lock("1", "w", "a", "l", None);
        index.on_event(&watcher::Event::Apply(misnamed.clone()), Instant::now());
        index.on_event(&watcher::Event::Apply(misnamed.clone()), Instant::now());
        assert_eq!(index.counts(), (1, 1));
        let issue = "org/repo#1";
        let mut good = lock("2", "w", "x", "l", None);
        good.spec.issue = issue.into();
        good.metadata.name = Some(crate::key::IssueKey::parse(issue).unwrap().lock_name());
        index.on_event(&watcher::Event::Apply(good), Instant::now());
        assert_eq!(index.counts(), (2, 1));
        index.on_event(&watcher::Event::Delete(misnamed), Instant::now());
        assert_eq!(index.counts(), (1, 0));
    }

    #[test]
    fn pods_missing_after_a_relist_name_their_locks() {
        let index = HolderIndex::default();
        hold(&index, "1", "w", "a", "l1", Some(("w", "p1")));
        hold(&index, "2", "w", "b", "l2", Some(("w", "p2")));
        let missing = index.locks_of_pods_not_in(|pod| pod.1 == "p2");
        assert_eq!(names(missing), ["a"]);
    }

    #[test]
    fn a_lock_keeps_its_first_sighting_and_only_new_ones_count_as_acquisitions() {
        let index = HolderIndex::default();
        let t0 = Instant::now();
        let a = || lock("1", "w", "a", "l", None);
        let b = || lock("2", "w", "b", "l", None);
        index.on_event(&watcher::Event::Init, t0);
        assert!(
            !index.on_event(&watcher::Event::InitApply(a()), t0),
            "listed, not new"
        );
        index.on_event(&watcher::Event::InitDone, t0);
        assert!(
            index.on_event(&watcher::Event::Apply(b()), t0),
            "new acquisition"
        );
        let later = t0 + std::time::Duration::from_secs(3);
        assert!(
            !index.on_event(&watcher::Event::Apply(b()), later),
            "seen before"
        );
        // A relist that no longer contains "b" (deleted during a watch gap) forgets it.
        index.on_event(&watcher::Event::Init, later);
        index.on_event(&watcher::Event::InitApply(a()), later);
        index.on_event(&watcher::Event::InitDone, later);
        assert_eq!(index.counts().0, 1);
        assert_eq!(index.first_seen(&a()), Some(t0), "kept its first sighting");
        assert_eq!(index.first_seen(&b()), None, "forgotten");
    }
}
