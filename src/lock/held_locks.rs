//! The table of the locks this client holds: the guards alive, the acquire calls and
//! releases in flight, and the rules that decide from them whether a lock object is still
//! in use and whether a guard has lost its lock.

use super::*;

/// The locks this client holds, the acquire calls and releases in flight, behind one
/// mutex: every rule about them is a method here.
#[derive(Default)]
pub(super) struct HeldLocks(Mutex<Table>);

#[derive(Default)]
struct Table {
    /// Lock name → the guard holding it.
    guards: HashMap<String, HeldLock>,
    /// Nonces of the acquire calls in flight.
    acquiring: HashSet<String>,
    /// uids of the locks whose `release` is in flight.
    releasing: HashSet<String>,
    /// (nonce, uid) of locks an acquire call in flight created, deleted before its guard
    /// was registered (the watch's Delete can overtake the create's answer).
    deleted_while_acquiring: HashSet<(String, String)>,
}

#[derive(Clone)]
pub(super) struct HeldLock {
    pub(super) uid: String,
    pub(super) fencing_token: FencingToken,
    pub(super) issue: IssueKey,
    pub(super) lost: CancellationToken,
}

impl Table {
    /// Removes the guard of `name` if it holds `uid`; true when it did.
    fn remove_guard(&mut self, name: &str, uid: &str) -> bool {
        let held = self.guards.get(name).is_some_and(|h| h.uid == uid);
        if held {
            self.guards.remove(name);
        }
        held
    }
}

impl HeldLocks {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().expect("held-locks mutex")
    }

    /// An acquire call with `nonce` started: a lock carrying it is in use.
    pub(super) fn acquire_started(&self, nonce: &str) {
        self.table().acquiring.insert(nonce.to_owned());
    }

    pub(super) fn acquire_ended(&self, nonce: &str) {
        let mut table = self.table();
        table.acquiring.remove(nonce);
        table.deleted_while_acquiring.retain(|(n, _)| n != nonce);
    }

    /// A guard now holds lock `name`, made by the acquire call with `nonce`. It has lost
    /// it already when our watch saw that object deleted before this. A guard of this
    /// client that held an earlier object of the name has lost it: that object is gone,
    /// or this one could not have been made (its Delete may not have reached our watch
    /// yet).
    pub(super) fn hold(&self, name: String, lock: HeldLock, nonce: Option<&str>) {
        let uid = lock.uid.clone();
        let mut table = self.table();
        if nonce.is_some_and(|n| {
            table
                .deleted_while_acquiring
                .contains(&(n.to_owned(), uid.clone()))
        }) {
            tracing::warn!(issue = %lock.issue, lock = %name, %uid, "lock deleted by someone else before it was handed out");
            lock.lost.cancel();
        }
        let previous = table.guards.insert(name.clone(), lock);
        if let Some(h) = previous.filter(|h| h.uid != uid) {
            tracing::warn!(issue = %h.issue, lock = %name, uid = %h.uid, "lock deleted by someone else: this client holds a newer one of the name");
            h.lost.cancel();
        }
    }

    /// The guard of `name` with `uid` starts its release: from now on its own delete is
    /// no loss, yet the lock is still in use until [`release_ended`](Self::release_ended).
    /// False when it was not held any more (shutdown gave it up).
    pub(super) fn release_started(&self, name: &str, uid: &str) -> bool {
        let mut table = self.table();
        let held = table.remove_guard(name, uid);
        if held {
            table.releasing.insert(uid.to_owned());
        }
        held
    }

    pub(super) fn release_ended(&self, uid: &str) {
        self.table().releasing.remove(uid);
    }

    /// The guard of `name` with `uid` is dropped without a release answered (`releasing`:
    /// a release of it was started). True when the lock is still this client's to clean
    /// up; false when shutdown gave it up already.
    pub(super) fn guard_dropped(&self, name: &str, uid: &str, releasing: bool) -> bool {
        let mut table = self.table();
        let ours = table.remove_guard(name, uid) || releasing;
        if ours {
            table.releasing.remove(uid);
        }
        ours
    }

    /// Shutdown: every guard loses its lock; returns them as (name, lock) to release.
    pub(super) fn give_up_all(&self) -> Vec<(String, HeldLock)> {
        let given_up: Vec<_> = self.table().guards.drain().collect();
        for (_, lock) in &given_up {
            lock.lost.cancel();
        }
        given_up
    }

    /// True when a live guard holds the lock object `uid`.
    pub(super) fn holds(&self, uid: &str) -> bool {
        self.table().guards.values().any(|h| h.uid == uid)
    }

    /// True when a live guard of this client holds `lock` or is releasing it, or an
    /// acquire call of this client in flight created it.
    pub(super) fn in_use(&self, lock: &IssueLock) -> bool {
        let table = self.table();
        let name = lock.metadata.name.as_deref().unwrap_or_default();
        let uid = lock.metadata.uid.as_deref().unwrap_or_default();
        table.guards.get(name).is_some_and(|h| h.uid == uid)
            || table.releasing.contains(uid)
            || acquire_nonce(&lock.metadata).is_some_and(|n| table.acquiring.contains(n))
    }

    /// The lock object `lock` was deleted: its guard, if alive, has lost it; if an
    /// acquire call in flight made it, the guard it is about to hand out. A late Delete of
    /// a previous lock of the same name leaves a newer guard alone.
    pub(super) fn lost_if_deleted(&self, lock: &ObjectMeta) {
        let name = lock.name.as_deref().unwrap_or_default();
        let uid = lock.uid.as_deref().unwrap_or_default();
        self.lost_if(name, |h| h.uid == uid, "lock deleted by someone else");
        let mut table = self.table();
        if let Some(nonce) = acquire_nonce(lock).filter(|n| table.acquiring.contains(*n)) {
            let entry = (nonce.to_owned(), uid.to_owned());
            table.deleted_while_acquiring.insert(entry);
        }
    }

    /// `lock` is what the API server holds under its name at its resourceVersion: a
    /// different object *newer* than our guard's means ours was deleted meanwhile. An
    /// older one (a lagging cache, the late event of a previous lock) means nothing.
    pub(super) fn lost_if_replaced(&self, lock: &ObjectMeta) {
        let name = lock.name.as_deref().unwrap_or_default();
        let uid = lock.uid.as_deref().unwrap_or_default();
        let version = lock
            .resource_version
            .as_deref()
            .and_then(|rv| FencingToken::from_resource_version(rv).ok());
        self.lost_if(
            name,
            |h| h.uid != uid && version.is_none_or(|v| v > h.fencing_token),
            "lock replaced by someone else's",
        );
    }

    /// A fresh read (after our guard was registered) found `current` under `name`: the
    /// guard with `uid`, if alive, lost its lock unless that is still its object.
    pub(super) fn lost_unless_current(&self, name: &str, uid: &str, current: Option<&str>) {
        if current != Some(uid) {
            self.lost_if(name, |h| h.uid == uid, "lock deleted or replaced");
        }
    }

    fn lost_if(&self, name: &str, lost: impl Fn(&HeldLock) -> bool, why: &str) {
        let table = self.table();
        if let Some(h) = table.guards.get(name)
            && lost(h)
        {
            tracing::warn!(issue = %h.issue, lock = name, uid = %h.uid, "{why}");
            h.lost.cancel();
        }
    }

    /// Guards whose object was not in a relist, as (name, uid).
    pub(super) fn unconfirmed(&self, listed: &HashSet<(String, String)>) -> Vec<(String, String)> {
        self.table()
            .guards
            .iter()
            .map(|(name, h)| (name.clone(), h.uid.clone()))
            .filter(|entry| !listed.contains(entry))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(held: &HeldLocks, uid: &str, token: u64) -> CancellationToken {
        guarded_by(held, uid, token, None)
    }

    fn guarded_by(
        held: &HeldLocks,
        uid: &str,
        token: u64,
        nonce: Option<&str>,
    ) -> CancellationToken {
        let lost = CancellationToken::new();
        held.hold(
            "l".into(),
            HeldLock {
                uid: uid.into(),
                fencing_token: FencingToken(token),
                issue: IssueKey::parse("i").unwrap(),
                lost: lost.clone(),
            },
            nonce,
        );
        lost
    }

    /// The metadata of object `uid` named "l", made by the acquire call `nonce`.
    fn made_by(uid: &str, nonce: &str) -> ObjectMeta {
        let mut meta = object(uid).metadata;
        meta.annotations = Some(std::collections::BTreeMap::from([(
            ACQUIRE_NONCE_ANNOTATION.to_owned(),
            nonce.to_owned(),
        )]));
        meta
    }

    fn deleted(uid: &str) -> ObjectMeta {
        object(uid).metadata
    }

    fn object(uid: &str) -> IssueLock {
        crate::crd::test_lock(uid)
    }

    fn object_meta(uid: &str, rv: &str) -> ObjectMeta {
        let mut meta = object(uid).metadata;
        meta.resource_version = Some(rv.into());
        meta
    }

    #[test]
    fn a_late_delete_of_the_previous_lock_leaves_a_reacquired_guard_alone() {
        let held = HeldLocks::default();
        let lost = guarded(&held, "new", 50);
        held.lost_if_deleted(&deleted("old"));
        held.lost_if_replaced(&object_meta("old", "40"));
        assert!(!lost.is_cancelled());
        held.lost_if_deleted(&deleted("new"));
        assert!(lost.is_cancelled());
    }

    #[test]
    fn a_new_guard_of_the_name_means_the_earlier_one_lost_its_lock() {
        let held = HeldLocks::default();
        let first = guarded(&held, "first", 50);
        let second = guarded(&held, "second", 60);
        assert!(
            first.is_cancelled(),
            "its object is gone: the name has a newer one"
        );
        assert!(!second.is_cancelled());
        assert!(!held.release_started("l", "first"), "no longer held");
        held.lost_if_deleted(&deleted("first"));
        assert!(
            !second.is_cancelled(),
            "the late Delete of the first is not the second's"
        );
        assert!(held.holds("second"));
    }

    #[test]
    fn a_delete_seen_before_the_guard_is_handed_out_loses_it() {
        let held = HeldLocks::default();
        held.acquire_started("n1");
        held.lost_if_deleted(&made_by("u1", "n1"));
        held.lost_if_deleted(&made_by("u0", "other call"));
        assert!(guarded_by(&held, "u1", 50, Some("n1")).is_cancelled());
        held.acquire_ended("n1");
        held.acquire_started("n2");
        assert!(
            !guarded_by(&held, "u2", 60, Some("n2")).is_cancelled(),
            "another object"
        );
        held.acquire_ended("n2");
        held.lost_if_deleted(&made_by("u3", "n3"));
        assert!(
            !guarded_by(&held, "u3", 70, Some("n3")).is_cancelled(),
            "no call in flight made it: not remembered"
        );
    }

    #[test]
    fn a_newer_object_under_the_name_means_the_lock_was_lost() {
        let held = HeldLocks::default();
        let lost = guarded(&held, "ours", 50);
        held.lost_if_replaced(&object_meta("ours", "55"));
        assert!(!lost.is_cancelled(), "our own object, updated");
        held.lost_if_replaced(&object_meta("theirs", "60"));
        assert!(lost.is_cancelled());
    }

    #[test]
    fn a_fresh_read_confirms_or_loses_exactly_the_guard_it_was_made_for() {
        let held = HeldLocks::default();
        let lost = guarded(&held, "ours", 50);
        held.lost_unless_current("l", "ours", Some("ours"));
        held.lost_unless_current("l", "previous", None);
        assert!(!lost.is_cancelled());
        held.lost_unless_current("l", "ours", None);
        assert!(lost.is_cancelled());
    }

    #[test]
    fn a_release_keeps_the_lock_in_use_until_it_ends_and_a_drop_after_shutdown_is_not_ours() {
        let held = HeldLocks::default();
        let lost = guarded(&held, "ours", 50);
        assert!(held.holds("ours"));
        assert!(held.release_started("l", "ours"));
        assert!(!held.holds("ours"));
        assert!(held.in_use(&object("ours")), "its release is in flight");
        held.release_ended("ours");
        assert!(!held.in_use(&object("ours")));
        assert!(!held.release_started("l", "ours"), "released once");
        assert!(!lost.is_cancelled());

        let lost = guarded(&held, "next", 60);
        assert_eq!(held.give_up_all().len(), 1);
        assert!(lost.is_cancelled(), "shutdown loses every guard");
        assert!(
            !held.guard_dropped("l", "next", false),
            "shutdown released it"
        );
        assert!(
            held.guard_dropped("l", "next", true),
            "its own release was dropped"
        );
    }
}
