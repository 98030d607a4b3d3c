//! This client's own locks: the guards alive, the acquire calls and releases in flight,
//! and the one watch that tells a guard its lock was deleted or replaced.

use super::*;

/// This client's own locks: the guards alive and the acquire calls in flight, behind one
/// mutex.
#[derive(Default)]
pub(super) struct OwnLocks(pub(super) Mutex<OwnLocksState>);

#[derive(Default)]
pub(super) struct OwnLocksState {
    /// Lock name → the guard holding it.
    pub(super) guards: HashMap<String, HeldLock>,
    /// Nonces of the acquire calls in flight.
    pub(super) acquiring: HashSet<String>,
    /// uids of the locks whose `release` is in flight.
    pub(super) releasing: HashSet<String>,
}

#[derive(Clone)]
pub(super) struct HeldLock {
    pub(super) uid: String,
    pub(super) fencing_token: FencingToken,
    pub(super) issue: IssueKey,
    pub(super) lost: CancellationToken,
}

impl OwnLocks {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, OwnLocksState> {
        self.0.lock().expect("own-locks mutex")
    }

    pub(super) fn begin_acquire(&self, nonce: &str) {
        self.state().acquiring.insert(nonce.to_owned());
    }

    pub(super) fn end_acquire(&self, nonce: &str) {
        self.state().acquiring.remove(nonce);
    }

    pub(super) fn register(&self, name: String, lock: HeldLock) {
        self.state().guards.insert(name, lock);
    }

    /// Unregisters the guard of `name` if it has `uid`, returning its entry.
    pub(super) fn take(&self, name: &str, uid: &str) -> Option<HeldLock> {
        let mut state = self.state();
        if state.guards.get(name).is_some_and(|h| h.uid == uid) {
            state.guards.remove(name)
        } else {
            None
        }
    }

    /// Unregisters the guard of `name` with `uid` for its release: from now on its own
    /// delete is no loss, yet the lock is still in use until [`released`](Self::released).
    /// False when it was not registered any more (shutdown released it).
    pub(super) fn releasing(&self, name: &str, uid: &str) -> bool {
        let mut state = self.state();
        if state.guards.get(name).is_some_and(|h| h.uid == uid) {
            state.guards.remove(name);
            state.releasing.insert(uid.to_owned());
            true
        } else {
            false
        }
    }

    pub(super) fn released(&self, uid: &str) {
        self.state().releasing.remove(uid);
    }

    pub(super) fn drain(&self) -> Vec<(String, HeldLock)> {
        self.state().guards.drain().collect()
    }

    pub(super) fn holds_uid(&self, uid: &str) -> bool {
        self.state().guards.values().any(|h| h.uid == uid)
    }

    /// True when a live guard of this client holds `lock` or is releasing it, or an
    /// acquire call of this client in flight created it.
    pub(super) fn in_use(&self, lock: &IssueLock) -> bool {
        let state = self.state();
        let name = lock.metadata.name.as_deref().unwrap_or_default();
        let uid = lock.metadata.uid.as_deref().unwrap_or_default();
        state.guards.get(name).is_some_and(|h| h.uid == uid)
            || state.releasing.contains(uid)
            || acquire_nonce(lock).is_some_and(|n| state.acquiring.contains(n))
    }

    /// The lock object `uid` of `name` was deleted: its guard, if alive, has lost it. A
    /// late Delete of a previous lock of the same name leaves a newer guard alone.
    pub(super) fn lost_if_deleted(&self, name: &str, uid: &str) {
        self.lost_if(name, |h| h.uid == uid, "lock deleted by someone else");
    }

    /// `lock` is what the API server holds under its name at its resourceVersion: a
    /// different object *newer* than our guard's means ours was deleted meanwhile. An
    /// older one (a lagging cache, the late event of a previous lock) means nothing.
    pub(super) fn lost_if_replaced(&self, lock: &IssueLock) {
        let name = lock.metadata.name.as_deref().unwrap_or_default();
        let uid = lock.metadata.uid.as_deref().unwrap_or_default();
        let version = lock
            .metadata
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

    pub(super) fn lost_if(&self, name: &str, lost: impl Fn(&HeldLock) -> bool, why: &str) {
        let state = self.state();
        if let Some(h) = state.guards.get(name)
            && lost(h)
        {
            tracing::warn!(issue = %h.issue, lock = name, uid = %h.uid, "{why}");
            h.lost.cancel();
        }
    }

    /// Guards whose object was not in a relist, as (name, uid).
    pub(super) fn unconfirmed(&self, listed: &HashSet<(String, String)>) -> Vec<(String, String)> {
        self.state()
            .guards
            .iter()
            .map(|(name, h)| (name.clone(), h.uid.clone()))
            .filter(|entry| !listed.contains(entry))
            .collect()
    }
}

/// The one watch of a client: its own locks, selected by its Lease label. A lock deleted
/// under one of our guards (its uid), or a newer object under its name, marks that guard
/// lost. After a relist, guards whose lock is missing from the list are checked with a
/// direct read. A lock that a pending create clean-up looks for is cleaned up at once.
pub(super) async fn watch_own_locks(inner: Weak<Inner>, stop: CancellationToken) {
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
    let mut listed: HashSet<(String, String)> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let Some(inner) = inner.upgrade() else { return };
        let identity = |lock: &IssueLock| {
            (
                lock.metadata.name.clone().unwrap_or_default(),
                lock.metadata.uid.clone().unwrap_or_default(),
            )
        };
        match event {
            None => return,
            Some(Err(e)) => tracing::debug!(error = %e, "watch on own locks failed; retrying"),
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(lock))) => {
                inner.own.lost_if_replaced(&lock);
                inner.cleanup.landed(&lock);
                listed.insert(identity(&lock));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                for (name, uid) in inner.own.unconfirmed(&listed) {
                    // Confirm with a direct read; if it cannot be confirmed, assume the worst.
                    let mut confirmed = None;
                    for _ in 0..3 {
                        if let Ok(current) = inner.read(&name).await {
                            confirmed = Some(current);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let current = confirmed.flatten().and_then(|l| l.metadata.uid);
                    inner
                        .own
                        .lost_unless_current(&name, &uid, current.as_deref());
                }
            }
            Some(Ok(watcher::Event::Apply(lock))) => {
                inner.own.lost_if_replaced(&lock);
                inner.cleanup.landed(&lock);
            }
            Some(Ok(watcher::Event::Delete(lock))) => {
                let (name, uid) = identity(&lock);
                inner.own.lost_if_deleted(&name, &uid);
            }
        }
    }
}
