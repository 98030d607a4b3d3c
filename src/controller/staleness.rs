//! The one place that decides whether a lock is stale, and why. Pure: every clock
//! reading is an input, so the decision is unit-tested with a fake clock.

use std::time::Duration;

/// Why a lock was (or will be) reclaimed. The label values are a small fixed set, used in
/// metrics and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The holder's pod no longer exists.
    PodDeleted,
    /// A pod with the holder's name exists, but with another uid.
    PodReplaced,
    /// The holder's pod has terminated (phase Succeeded or Failed).
    PodTerminated,
    /// The holder's heartbeat Lease does not exist.
    LeaseMissing,
    /// The holder's Lease has not changed for its `leaseDurationSeconds`, measured on the
    /// controller's monotonic clock since it last saw it change.
    LeaseExpired,
    /// The lock is older than its `maxHoldSeconds`.
    MaxHoldExceeded,
    /// Signatures are required and this lock's is missing, unknown or does not match.
    SignatureInvalid,
}

impl Reason {
    /// Every reason, for exporting metrics with zero values.
    pub const ALL: [Reason; 7] = [
        Reason::PodDeleted,
        Reason::PodReplaced,
        Reason::PodTerminated,
        Reason::LeaseMissing,
        Reason::LeaseExpired,
        Reason::MaxHoldExceeded,
        Reason::SignatureInvalid,
    ];

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::PodDeleted => "pod_deleted",
            Reason::PodReplaced => "pod_replaced",
            Reason::PodTerminated => "pod_terminated",
            Reason::LeaseMissing => "lease_missing",
            Reason::LeaseExpired => "lease_expired",
            Reason::MaxHoldExceeded => "max_hold_exceeded",
            Reason::SignatureInvalid => "signature_invalid",
        }
    }

    /// Event reason (CamelCase, as Kubernetes events use).
    pub fn event_reason(self) -> &'static str {
        match self {
            Reason::PodDeleted => "HolderPodDeleted",
            Reason::PodReplaced => "HolderPodReplaced",
            Reason::PodTerminated => "HolderPodTerminated",
            Reason::LeaseMissing => "HolderLeaseMissing",
            Reason::LeaseExpired => "HolderLeaseExpired",
            Reason::MaxHoldExceeded => "MaxHoldExceeded",
            Reason::SignatureInvalid => "SignatureInvalid",
        }
    }

    /// True when the evidence is about the pod, so it is confirmed with a direct read of
    /// the pod before acting.
    pub fn is_about_pod(self) -> bool {
        matches!(
            self,
            Reason::PodDeleted | Reason::PodReplaced | Reason::PodTerminated
        )
    }
}

/// What the controller knows about the holder's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodFacts {
    /// The lock names no pod (its holder runs outside the cluster).
    NotRecorded,
    /// No pod of that name exists.
    Missing,
    /// A pod of that name exists.
    Present {
        /// Its uid.
        uid: String,
        /// Its `status.phase`, if any.
        phase: Option<String>,
    },
}

/// What the controller knows about the holder's Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFacts {
    /// No Lease of that name exists.
    Missing,
    /// The Lease exists.
    Present {
        /// The longest `leaseDurationSeconds` seen on it (a shortened one is not believed).
        duration: Duration,
        /// Time on the controller's monotonic clock since it last saw the Lease change.
        unchanged_for: Duration,
    },
}

/// Everything [`judge`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Signatures are required and this lock's does not verify (a forged record).
    pub signature_rejected: bool,
    /// The pod uid recorded in the lock, if any.
    pub recorded_pod_uid: Option<String>,
    /// The holder's pod.
    pub pod: PodFacts,
    /// The holder's Lease.
    pub lease: LeaseFacts,
    /// How long the lock has been held, on the controller's monotonic clock since it first
    /// saw the lock (never more than the truth), if known.
    pub age: Option<Duration>,
    /// The lock's max hold time, if any.
    pub max_hold: Option<Duration>,
}

/// The decision about one lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Reclaim it.
    Stale(Reason),
    /// Keep it; it cannot become stale by time alone sooner than `recheck_in`.
    Live {
        /// When to look again.
        recheck_in: Duration,
    },
}

/// Slack added to max-hold decisions. The age is measured from when the controller first
/// saw the lock, which is after the holder's own max-hold timer started, so no slack is
/// needed for safety; this only orders the two by a clear margin.
pub const MAX_HOLD_GRACE: Duration = Duration::from_millis(500);

/// Decides whether a lock is stale. A rejected signature first (the record is not to be
/// trusted at all), then pod evidence (it is the fastest and surest),
/// then the Lease, then max hold.
pub fn judge(facts: &Facts) -> Verdict {
    if facts.signature_rejected {
        return Verdict::Stale(Reason::SignatureInvalid);
    }
    match (&facts.pod, &facts.recorded_pod_uid) {
        (PodFacts::Missing, _) => return Verdict::Stale(Reason::PodDeleted),
        (PodFacts::Present { uid, .. }, Some(recorded)) if uid != recorded => {
            return Verdict::Stale(Reason::PodReplaced);
        }
        (PodFacts::Present { phase: Some(p), .. }, _) if p == "Succeeded" || p == "Failed" => {
            return Verdict::Stale(Reason::PodTerminated);
        }
        _ => {}
    }
    let lease_left = match facts.lease {
        LeaseFacts::Missing => return Verdict::Stale(Reason::LeaseMissing),
        LeaseFacts::Present {
            duration,
            unchanged_for,
        } => {
            if unchanged_for >= duration {
                return Verdict::Stale(Reason::LeaseExpired);
            }
            duration - unchanged_for
        }
    };
    let hold_left = match (facts.max_hold, facts.age) {
        (Some(max), Some(age)) => {
            let limit = max + MAX_HOLD_GRACE;
            if age >= limit {
                return Verdict::Stale(Reason::MaxHoldExceeded);
            }
            Some(limit - age)
        }
        _ => None,
    };
    Verdict::Live {
        recheck_in: hold_left.map_or(lease_left, |h| h.min(lease_left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn live() -> Facts {
        Facts {
            signature_rejected: false,
            recorded_pod_uid: Some("u1".into()),
            pod: PodFacts::Present {
                uid: "u1".into(),
                phase: Some("Running".into()),
            },
            lease: LeaseFacts::Present {
                duration: S(15),
                unchanged_for: S(3),
            },
            age: Some(S(100)),
            max_hold: None,
        }
    }

    #[test]
    fn a_live_lock_is_rechecked_when_its_lease_could_expire() {
        assert_eq!(judge(&live()), Verdict::Live { recheck_in: S(12) });
    }

    #[test]
    fn pod_evidence() {
        let mut f = live();
        f.pod = PodFacts::Missing;
        assert_eq!(judge(&f), Verdict::Stale(Reason::PodDeleted));
        f.pod = PodFacts::Present {
            uid: "u2".into(),
            phase: Some("Running".into()),
        };
        assert_eq!(judge(&f), Verdict::Stale(Reason::PodReplaced));
        for phase in ["Succeeded", "Failed"] {
            f.pod = PodFacts::Present {
                uid: "u1".into(),
                phase: Some(phase.into()),
            };
            assert_eq!(judge(&f), Verdict::Stale(Reason::PodTerminated));
        }
        f.pod = PodFacts::Present {
            uid: "u1".into(),
            phase: Some("Pending".into()),
        };
        assert!(matches!(judge(&f), Verdict::Live { .. }));
        // Outside a pod, only the Lease and max hold count.
        f.recorded_pod_uid = None;
        f.pod = PodFacts::NotRecorded;
        assert!(matches!(judge(&f), Verdict::Live { .. }));
    }

    #[test]
    fn lease_expiry_is_judged_by_local_observation_only() {
        let mut f = live();
        f.lease = LeaseFacts::Present {
            duration: S(15),
            unchanged_for: Duration::from_millis(14_999),
        };
        assert_eq!(
            judge(&f),
            Verdict::Live {
                recheck_in: Duration::from_millis(1)
            }
        );
        f.lease = LeaseFacts::Present {
            duration: S(15),
            unchanged_for: S(15),
        };
        assert_eq!(judge(&f), Verdict::Stale(Reason::LeaseExpired));
        f.lease = LeaseFacts::Missing;
        assert_eq!(judge(&f), Verdict::Stale(Reason::LeaseMissing));
    }

    #[test]
    fn max_hold_with_grace() {
        let mut f = live();
        f.max_hold = Some(S(60));
        f.age = Some(S(60));
        assert_eq!(
            judge(&f),
            Verdict::Live {
                recheck_in: Duration::from_millis(500)
            }
        );
        f.age = Some(Duration::from_millis(60_500));
        assert_eq!(judge(&f), Verdict::Stale(Reason::MaxHoldExceeded));
        f.age = None;
        assert!(matches!(judge(&f), Verdict::Live { .. }));
    }

    #[test]
    fn a_rejected_signature_is_stale_even_with_a_live_holder() {
        let mut f = live();
        f.signature_rejected = true;
        assert_eq!(judge(&f), Verdict::Stale(Reason::SignatureInvalid));
    }

    #[test]
    fn labels_are_a_fixed_set() {
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
