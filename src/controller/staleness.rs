//! The one place that decides whether a lock is stale, and why. Pure: every clock
//! reading is an input, so the decision is unit-tested with a fake clock.

use crate::signature::Verification;
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
    /// The Lease the lock names is another holder's heartbeat: it records another creator
    /// (user or pod) than the lock does. A lock may not borrow someone else's heartbeat.
    LeaseForeign,
    /// The holder's Lease has not changed for its `leaseDurationSeconds`, measured on the
    /// controller's monotonic clock since it last saw it change.
    LeaseExpired,
    /// The lock is older than its `maxHoldSeconds`.
    MaxHoldExceeded,
    /// Signatures are required and this lock's is missing, does not match, or was made
    /// with a key not bound to the holder.
    SignatureInvalid,
    /// Signatures are required and this lock's key id stayed unknown to the controller
    /// for the whole unknown-key grace.
    SignatureKeyUnknown,
}

impl Reason {
    /// Every reason, for exporting metrics with zero values.
    pub const ALL: [Reason; 9] = [
        Reason::PodDeleted,
        Reason::PodReplaced,
        Reason::PodTerminated,
        Reason::LeaseMissing,
        Reason::LeaseForeign,
        Reason::LeaseExpired,
        Reason::MaxHoldExceeded,
        Reason::SignatureInvalid,
        Reason::SignatureKeyUnknown,
    ];

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::PodDeleted => "pod_deleted",
            Reason::PodReplaced => "pod_replaced",
            Reason::PodTerminated => "pod_terminated",
            Reason::LeaseMissing => "lease_missing",
            Reason::LeaseForeign => "lease_foreign",
            Reason::LeaseExpired => "lease_expired",
            Reason::MaxHoldExceeded => "max_hold_exceeded",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::SignatureKeyUnknown => "signature_key_unknown",
        }
    }

    /// Event reason (CamelCase, as Kubernetes events use).
    pub fn event_reason(self) -> &'static str {
        match self {
            Reason::PodDeleted => "HolderPodDeleted",
            Reason::PodReplaced => "HolderPodReplaced",
            Reason::PodTerminated => "HolderPodTerminated",
            Reason::LeaseMissing => "HolderLeaseMissing",
            Reason::LeaseForeign => "HolderLeaseForeign",
            Reason::LeaseExpired => "HolderLeaseExpired",
            Reason::MaxHoldExceeded => "MaxHoldExceeded",
            Reason::SignatureInvalid => "SignatureInvalid",
            Reason::SignatureKeyUnknown => "SignatureKeyUnknown",
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

/// What the signature check means for reclaiming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureFacts {
    /// Signatures are not required, or this one verifies.
    Accepted,
    /// Signatures are required and this one is missing, does not match, or was made with
    /// a key not bound to the holder: the record is not to be trusted.
    Rejected,
    /// Signatures are required and this one names a key id the controller does not have.
    /// Most likely a rotation that reached the signer first, so it is reclaimed only once
    /// the lock has been seen for `grace`.
    UnknownKey {
        /// How long to wait for the key to reach the controller.
        grace: Duration,
    },
}

impl SignatureFacts {
    /// The facts of a verification (`None`: the controller has no keys), when signatures
    /// are `required`, with `unknown_key_grace` for key ids the controller does not have.
    pub fn of(
        verification: Option<&Verification>,
        required: bool,
        unknown_key_grace: Duration,
    ) -> Self {
        match verification {
            _ if !required => SignatureFacts::Accepted,
            None | Some(Verification::Valid { .. }) => SignatureFacts::Accepted,
            Some(Verification::UnknownKey { .. }) => SignatureFacts::UnknownKey {
                grace: unknown_key_grace,
            },
            Some(
                Verification::Missing
                | Verification::Mismatch { .. }
                | Verification::KeyNotBound { .. },
            ) => SignatureFacts::Rejected,
        }
    }
}

/// What the controller knows about the holder's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodFacts {
    /// The lock names no pod (its holder runs outside the cluster).
    NotRecorded,
    /// No pod of that name exists.
    Missing,
    /// The controller may not read the pod's namespace: no pod evidence either way.
    Unreadable,
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
    /// A Lease of that name exists but records another creator (user or pod) than the
    /// lock: it is not this holder's heartbeat.
    Foreign,
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
    /// The lock's signature, as far as reclaiming goes.
    pub signature: SignatureFacts,
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
    /// Keep it. It cannot become stale by time alone sooner than `lease_left` (its Lease
    /// expiring, which the controller watches per Lease) or `recheck_in` (its max hold
    /// time or unknown-key grace running out, which only a recheck of the lock notices).
    Live {
        /// Time until the Lease could expire, unless it changes.
        lease_left: Duration,
        /// When to look at this lock again for its own timers, if it has any.
        recheck_in: Option<Duration>,
    },
}

/// Slack added to max-hold decisions. The age is measured from when the controller first
/// saw the lock, which is after the holder's own max-hold timer started, so no slack is
/// needed for safety; this only orders the two by a clear margin.
pub const MAX_HOLD_GRACE: Duration = Duration::from_millis(500);

/// Decides whether a lock is stale. A rejected signature first (the record is not to be
/// trusted at all), then pod evidence (it is the fastest and surest), then the Lease,
/// then max hold, then an unknown signing key whose grace has run out (measured like max
/// hold: from when the controller first saw the lock, so never shorter than configured).
pub fn judge(facts: &Facts) -> Verdict {
    if facts.signature == SignatureFacts::Rejected {
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
        LeaseFacts::Foreign => return Verdict::Stale(Reason::LeaseForeign),
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
    let key_left = match facts.signature {
        SignatureFacts::UnknownKey { grace } => {
            let age = facts.age.unwrap_or_default();
            if age >= grace {
                return Verdict::Stale(Reason::SignatureKeyUnknown);
            }
            Some(grace - age)
        }
        SignatureFacts::Accepted | SignatureFacts::Rejected => None,
    };
    Verdict::Live {
        lease_left,
        recheck_in: [hold_left, key_left].into_iter().flatten().min(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// `Reason::ALL` lists every reason once, in declaration order: a new variant does
    /// not compile here until it is given the next index, and then fails until it is in
    /// `ALL` (its metric is exported from the start only from there).
    #[test]
    fn all_lists_every_reason_once() {
        fn index(reason: Reason) -> usize {
            match reason {
                Reason::PodDeleted => 0,
                Reason::PodReplaced => 1,
                Reason::PodTerminated => 2,
                Reason::LeaseMissing => 3,
                Reason::LeaseForeign => 4,
                Reason::LeaseExpired => 5,
                Reason::MaxHoldExceeded => 6,
                Reason::SignatureInvalid => 7,
                Reason::SignatureKeyUnknown => 8,
            }
        }
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(index(reason), i, "{reason:?}");
        }
    }

    fn live() -> Facts {
        Facts {
            signature: SignatureFacts::Accepted,
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
    fn a_live_lock_without_timers_waits_for_its_lease() {
        assert_eq!(
            judge(&live()),
            Verdict::Live {
                lease_left: S(12),
                recheck_in: None
            }
        );
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
        // A pod the controller may not read is no evidence: the Lease decides.
        f.pod = PodFacts::Unreadable;
        assert!(matches!(judge(&f), Verdict::Live { .. }));
        f.lease = LeaseFacts::Missing;
        assert_eq!(judge(&f), Verdict::Stale(Reason::LeaseMissing));
        f.lease = LeaseFacts::Foreign;
        assert_eq!(judge(&f), Verdict::Stale(Reason::LeaseForeign));
        f.lease = live().lease;
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
                lease_left: Duration::from_millis(1),
                recheck_in: None
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
                lease_left: S(12),
                recheck_in: Some(Duration::from_millis(500))
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
        f.signature = SignatureFacts::Rejected;
        assert_eq!(judge(&f), Verdict::Stale(Reason::SignatureInvalid));
    }

    #[test]
    fn an_unknown_key_is_reclaimed_after_its_grace_not_before() {
        let mut f = live();
        f.signature = SignatureFacts::UnknownKey { grace: S(120) };
        f.age = Some(S(100));
        // Rechecked at the grace's end (the Lease is watched on its own).
        assert_eq!(
            judge(&f),
            Verdict::Live {
                lease_left: S(12),
                recheck_in: Some(S(20))
            }
        );
        f.age = Some(S(117));
        assert_eq!(
            judge(&f),
            Verdict::Live {
                lease_left: S(12),
                recheck_in: Some(S(3))
            }
        );
        f.age = Some(S(120));
        assert_eq!(judge(&f), Verdict::Stale(Reason::SignatureKeyUnknown));
        // Dead holder evidence still wins during the grace.
        f.age = Some(S(1));
        f.pod = PodFacts::Missing;
        assert_eq!(judge(&f), Verdict::Stale(Reason::PodDeleted));
    }

    #[test]
    fn signature_facts_of_each_verification() {
        let g = S(120);
        let key = || "k1".to_owned();
        let all = [
            Verification::Valid { key_id: key() },
            Verification::Missing,
            Verification::UnknownKey { key_id: key() },
            Verification::Mismatch { key_id: key() },
            Verification::KeyNotBound {
                key_id: key(),
                user: None,
            },
        ];
        for v in &all {
            assert_eq!(
                SignatureFacts::of(Some(v), false, g),
                SignatureFacts::Accepted,
                "not required: {v:?}"
            );
        }
        let required: Vec<_> = all
            .iter()
            .map(|v| SignatureFacts::of(Some(v), true, g))
            .collect();
        assert_eq!(
            required,
            [
                SignatureFacts::Accepted,
                SignatureFacts::Rejected,
                SignatureFacts::UnknownKey { grace: g },
                SignatureFacts::Rejected,
                SignatureFacts::Rejected,
            ]
        );
        assert_eq!(SignatureFacts::of(None, true, g), SignatureFacts::Accepted);
    }

    #[test]
    fn labels_are_a_fixed_set() {
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
