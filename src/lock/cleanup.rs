//! The one background clean-up of locks this client may have left behind.

use super::*;

/// A lock this client may have left behind.
pub(super) struct Orphan {
    pub(super) name: String,
    pub(super) issue: IssueKey,
    pub(super) target: Target,
    pub(super) reason: LeftBehind,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
}

pub(super) enum Target {
    /// A lock object we held: deleted by its uid.
    Lock { uid: String },
    /// Whatever a create of unknown outcome may have committed: the object carrying its
    /// nonce, looked for until `settles_at` (after which that create can no longer land).
    Create { nonce: String, settles_at: Instant },
}

/// Why a lock went to the clean-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeftBehind {
    /// Still held at shutdown: an ordinary release, neither logged nor counted.
    Shutdown,
    /// A guard dropped without `release`: the documented background release.
    GuardDropped,
    /// `release` failed (not with `LockLost`).
    ReleaseFailed,
    /// A create (or its read-back) got no conclusive answer.
    CreateOutcomeUnknown,
    /// A `try_acquire` future was dropped after its create was sent.
    AcquireDropped,
    /// A lock of ours that nothing of this client held, found by a create, could not
    /// be deleted on the spot.
    FoundOnCreate,
    /// The create's resourceVersion was no fencing token, so no guard was handed out.
    NoFencingToken,
}

impl LeftBehind {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Shutdown => "held at shutdown",
            Self::GuardDropped => "guard dropped without release",
            Self::ReleaseFailed => "release failed",
            Self::CreateOutcomeUnknown => "create outcome unknown",
            Self::AcquireDropped => "acquire call dropped after its create was sent",
            Self::FoundOnCreate => "orphan found on create",
            Self::NoFencingToken => "no fencing token",
        }
    }
}

/// Which orphans a clean-up pass attempts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Those whose backoff has elapsed.
    Due,
    /// All of them, once, at shutdown.
    Final,
}

impl Orphan {
    /// A lock object we held (uid known), to delete at once.
    pub(super) fn lock(name: String, issue: IssueKey, uid: String, reason: LeftBehind) -> Self {
        Self {
            name,
            issue,
            target: Target::Lock { uid },
            reason,
            next_attempt: Instant::now(),
            backoff: CLEANUP_BACKOFF_MIN,
        }
    }
}

/// The one background clean-up of a client: what it may have left behind, retried with
/// capped exponential backoff ([`CLEANUP_BACKOFF_MIN`] to [`CLEANUP_BACKOFF_MAX`]) until
/// deleted or proven absent, for as long as the client lives.
#[derive(Default)]
pub(super) struct Cleanup {
    pub(super) pending: Mutex<Vec<Orphan>>,
    /// Orphans queued and not yet done (including those being attempted right now).
    pub(super) outstanding: AtomicU64,
    pub(super) queued: AtomicU64,
    pub(super) released: AtomicU64,
    pub(super) wake: Arc<Notify>,
    /// One pass at a time, so the final pass at shutdown sees every orphan.
    pub(super) passes: tokio::sync::Mutex<()>,
}

impl Cleanup {
    pub(super) fn queue(&self, orphan: Orphan) {
        let (issue, lock, reason) = (&orphan.issue, &orphan.name, orphan.reason.label());
        match orphan.reason {
            LeftBehind::Shutdown => {}
            LeftBehind::GuardDropped => {
                tracing::info!(%issue, %lock, reason, "releasing the lock in the background");
                self.found();
            }
            _ => {
                tracing::warn!(%issue, %lock, reason, "a lock may be left behind; cleaning it up in the background");
                self.found();
            }
        }
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().expect("clean-up mutex").push(orphan);
        self.wake.notify_one();
    }

    /// Counts an orphan (queued, or found and dealt with on the spot).
    pub(super) fn found(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn released(&self) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn done(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn retry(&self, mut orphan: Orphan) {
        orphan.next_attempt = Instant::now() + orphan.backoff;
        orphan.backoff = (orphan.backoff * 2).min(CLEANUP_BACKOFF_MAX);
        self.pending.lock().expect("clean-up mutex").push(orphan);
    }

    pub(super) fn take_due(&self, now: Instant, pass: Pass) -> Vec<Orphan> {
        let mut pending = self.pending.lock().expect("clean-up mutex");
        let (due, later) = pending
            .drain(..)
            .partition(|o| pass == Pass::Final || o.next_attempt <= now);
        *pending = later;
        due
    }

    /// `lock` was seen on the watch: if it is what a pending create clean-up looks for,
    /// attempt that now rather than after its backoff.
    pub(super) fn landed(&self, lock: &ObjectMeta) {
        let Some(nonce) = acquire_nonce(lock) else {
            return;
        };
        let mut landed = false;
        for orphan in self.pending.lock().expect("clean-up mutex").iter_mut() {
            if matches!(&orphan.target, Target::Create { nonce: n, .. } if n == nonce) {
                orphan.next_attempt = Instant::now();
                landed = true;
            }
        }
        if landed {
            self.wake.notify_one();
        }
    }

    pub(super) fn next_attempt(&self) -> Option<Instant> {
        let pending = self.pending.lock().expect("clean-up mutex");
        pending.iter().map(|o| o.next_attempt).min()
    }

    pub(super) fn stats(&self) -> CleanupStats {
        CleanupStats {
            queued: self.queued.load(Ordering::Relaxed),
            pending: self.outstanding.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
        }
    }
}

/// Runs clean-up passes whenever an orphan is queued or a backoff elapses, until the
/// client is dropped or shut down.
pub(super) async fn clean_up_loop(inner: Weak<Inner>, stop: CancellationToken) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let next = strong.cleanup.next_attempt();
        let wake = strong.cleanup.wake.clone();
        drop(strong);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = sleep => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        strong.clean_up(Pass::Due).await;
    }
}
