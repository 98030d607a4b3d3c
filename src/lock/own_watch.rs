//! The one watch of a client on its own locks, which tells a guard its lock was deleted
//! or replaced. It watches metadata only (name, uid, resourceVersion, the acquire nonce):
//! the API server encodes, and the client decodes, no spec or status for the two events
//! of every acquire and release.

use super::*;
use kube::core::PartialObjectMeta;

/// The one watch of a client: its own locks, selected by its Lease label. A lock deleted
/// under one of our guards (its uid), or a newer object under its name, marks that guard
/// lost. After a relist, guards whose lock is missing from the list are checked with a
/// direct read. A lock that a pending create clean-up looks for is cleaned up at once.
pub(super) async fn watch_own_locks(inner: Weak<Inner>, stop: CancellationToken) {
    let (api, selector) = match inner.upgrade() {
        Some(i) => (
            Api::<PartialObjectMeta<IssueLock>>::namespaced(
                i.api.clone().into_client(),
                &i.config.namespace,
            ),
            format!("{HOLDER_LEASE_LABEL}={}", i.holder.lease),
        ),
        None => return,
    };
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .backoff(crate::watch_backoff::CappedBackoff::new(
            crate::watch_backoff::CLIENT_CAP,
        ))
        .boxed();
    let mut listed: HashSet<(String, String)> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let Some(inner) = inner.upgrade() else { return };
        let identity = |lock: &ObjectMeta| {
            (
                lock.name.clone().unwrap_or_default(),
                lock.uid.clone().unwrap_or_default(),
            )
        };
        match event {
            None => return,
            Some(Err(e)) => tracing::debug!(error = %e, "watch on own locks failed; retrying"),
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(lock))) => {
                inner.held.lost_if_replaced(&lock.metadata);
                inner.cleanup.landed(&lock.metadata);
                listed.insert(identity(&lock.metadata));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                for (name, uid) in inner.held.unconfirmed(&listed) {
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
                        .held
                        .lost_unless_current(&name, &uid, current.as_deref());
                }
            }
            Some(Ok(watcher::Event::Apply(lock))) => {
                inner.held.lost_if_replaced(&lock.metadata);
                inner.cleanup.landed(&lock.metadata);
            }
            Some(Ok(watcher::Event::Delete(lock))) => inner.held.lost_if_deleted(&lock.metadata),
        }
    }
}
