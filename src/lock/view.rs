//! The locks of a client's namespace as one watch sees them: which issues are held right
//! now, for [`LockClient::claim_next`] to skip without a request per key. A cache, so only
//! ever a hint: ownership is still decided by the create.

use super::*;
use tokio::sync::watch as signal;

/// Names of the lock objects in the namespace, kept by one watch (a list, then events).
pub(super) struct LockView {
    state: Mutex<ViewState>,
    /// Bumped on every change (and when the first list completes).
    changed: signal::Sender<u64>,
}

#[derive(Default)]
struct ViewState {
    names: HashSet<String>,
    /// Names seen by the (re)list in progress.
    relisting: HashSet<String>,
    synced: bool,
    /// The API server's last refusal (401, 403, 404) of the list or the watch: retrying
    /// does not help, so callers waiting for the first list get it as their error.
    refusal: Option<(u16, String)>,
}

/// What the list and watch of the namespace's locks are called in errors.
const STEP: &str = "list and watch the locks of the namespace";

impl LockView {
    /// Starts the watch; it ends with `stop`.
    pub(super) fn start(api: Api<IssueLock>, stop: CancellationToken) -> Arc<Self> {
        let view = Arc::new(Self {
            state: Mutex::new(ViewState::default()),
            changed: signal::channel(0).0,
        });
        tokio::spawn(watch_namespace(Arc::downgrade(&view), api, stop));
        view
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().expect("lock view mutex")
    }

    /// True when a lock of this name is in the namespace, as last seen.
    pub(super) fn is_held(&self, name: &str) -> bool {
        self.state().names.contains(name)
    }

    /// A receiver that sees every later change.
    pub(super) fn subscribe(&self) -> signal::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Completes once the first list is in; fails at once when the API server refused
    /// the list or the watch (no permission, no CRD), or after `limit`.
    pub(super) async fn synced(&self, limit: Duration) -> Result<()> {
        let mut changes = self.subscribe();
        let wait = async {
            loop {
                {
                    let state = self.state();
                    if state.synced {
                        return Ok(());
                    }
                    if let Some((code, message)) = state.refusal.clone() {
                        return Err(refused(code, message));
                    }
                }
                if changes.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(Error::Unreachable {
                step: "list the locks of the namespace",
                source: format!(
                    "no complete list within {limit:?} (is the API server reachable, and may \
                     this identity list and watch issuelocks?)"
                )
                .into(),
            })
        })
    }

    /// Notes an error of the list or the watch; a refusal is kept for `synced`.
    fn failed(&self, error: &watcher::Error) {
        let status = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some((s.code, s.message.clone())),
            watcher::Error::WatchError(s) => Some((s.code, s.message.clone())),
            _ => None,
        };
        if let Some((code @ (401 | 403 | 404), message)) = status {
            self.state().refusal = Some((code, message));
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn apply(&self, event: watcher::Event<IssueLock>) {
        let name = |lock: &IssueLock| lock.metadata.name.clone().unwrap_or_default();
        let mut state = self.state();
        match event {
            watcher::Event::Init => state.relisting.clear(),
            watcher::Event::InitApply(lock) => {
                state.relisting.insert(name(&lock));
                return;
            }
            watcher::Event::InitDone => {
                state.names = std::mem::take(&mut state.relisting);
                state.synced = true;
                state.refusal = None;
            }
            watcher::Event::Apply(lock) => {
                state.names.insert(name(&lock));
            }
            watcher::Event::Delete(lock) => {
                state.names.remove(&name(&lock));
            }
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }
}

async fn watch_namespace(view: Weak<LockView>, api: Api<IssueLock>, stop: CancellationToken) {
    let mut events = watcher(api, watcher::Config::default())
        .backoff(crate::watch_backoff::CappedBackoff::new(
            crate::watch_backoff::CLIENT_CAP,
        ))
        .boxed();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let Some(view) = view.upgrade() else { return };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watch on the namespace's locks failed; retrying");
                view.failed(&e);
            }
            Some(Ok(event)) => view.apply(event),
        }
    }
}

/// The error for a refused list or watch, as the rest of the client reports such answers.
fn refused(code: u16, message: String) -> Error {
    match code {
        401 => Error::Unauthorized {
            step: STEP,
            message,
        },
        403 => Error::Forbidden {
            step: STEP,
            message,
        },
        _ => Error::CrdNotInstalled,
    }
}
