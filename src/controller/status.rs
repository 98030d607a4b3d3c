//! The status of a live lock as a pure function of what the controller knows: its
//! conditions as recorded, its name and issue, its signature's verification and when its
//! heartbeat was observed. Written on transitions only, never because time passed.

use super::naming::{self, NameCheck};
use crate::crd::IssueLock;
use crate::signature::Verification;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// What the status of a live lock should become.
#[derive(Debug, Clone, PartialEq)]
pub struct AliveStatus {
    /// The server-side apply patch of the status, when a condition changed; `None` when
    /// the recorded conditions are current.
    pub patch: Option<serde_json::Value>,
    /// The lock's name does not match its issue and its recorded condition did not say
    /// so yet: report it (once per transition).
    pub newly_misnamed: bool,
}

/// The status of `lock`, whose holder is alive: `HolderAlive=True` (with
/// `lastHeartbeatObserved`, the time the heartbeat was `observed`), `NameMatchesIssue`
/// and, with a `signature`, `SignatureValid`. A condition whose status stays the same
/// keeps its transition time; a new one takes `now`.
pub fn alive_status(
    lock: &IssueLock,
    signature: Option<&Verification>,
    observed: Timestamp,
    now: Timestamp,
) -> AliveStatus {
    let status = lock.status.clone().unwrap_or_default();
    let recorded = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let mut wanted = vec![(
        "HolderAlive",
        "True",
        "HeartbeatObserved",
        format!(
            "heartbeat Lease {} is being renewed",
            lock.spec.holder.lease
        ),
    )];
    let name = lock.name_any();
    let naming = NameCheck::of(&name, &lock.spec.issue);
    let (name_status, name_reason, name_message) = naming.condition(&name);
    wanted.push((naming::CONDITION, name_status, name_reason, name_message));
    if let Some(v) = signature {
        let status = if v.is_valid() { "True" } else { "False" };
        wanted.push(("SignatureValid", status, v.reason(), v.message()));
    }
    let conditions_current = wanted.iter().all(|(t, st, reason, _)| {
        recorded(t).is_some_and(|c| c.status == *st && c.reason == *reason)
    });
    let newly_misnamed =
        naming.is_misnamed() && recorded(naming::CONDITION).is_none_or(|c| c.status != name_status);
    if conditions_current {
        return AliveStatus {
            patch: None,
            newly_misnamed,
        };
    }
    let conditions: Vec<Condition> = wanted
        .into_iter()
        .map(|(type_, st, reason, message)| Condition {
            type_: type_.into(),
            status: st.into(),
            reason: reason.into(),
            message,
            // Keep the transition time while the status stays the same.
            last_transition_time: recorded(type_)
                .filter(|c| c.status == st)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now)),
            observed_generation: lock.metadata.generation,
        })
        .collect();
    let patch = json!({
        "apiVersion": IssueLock::api_version(&()),
        "kind": IssueLock::kind(&()),
        "status": {
            "conditions": conditions,
            "lastHeartbeatObserved": Time(observed),
        }
    });
    AliveStatus {
        patch: Some(patch),
        newly_misnamed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IssueLockStatus;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// A lock named after its issue, with the status `patch` would leave.
    fn applied(mut lock: IssueLock, patch: &serde_json::Value) -> IssueLock {
        let status: IssueLockStatus = serde_json::from_value(patch["status"].clone()).unwrap();
        lock.status = Some(status);
        lock
    }

    fn well_named() -> IssueLock {
        let mut lock = crate::crd::test_lock("uid-1");
        lock.metadata.name = Some(
            crate::key::IssueKey::parse(&lock.spec.issue)
                .unwrap()
                .lock_name(),
        );
        lock
    }

    fn condition<'a>(patch: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
        patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {patch}"))
    }

    #[test]
    fn a_new_lock_gets_its_conditions_then_nothing_until_one_changes() {
        let lock = well_named();
        let first = alive_status(&lock, None, at(0), at(1));
        let patch = first.patch.expect("first status");
        assert!(!first.newly_misnamed);
        assert_eq!(condition(&patch, "HolderAlive")["status"], "True");
        assert_eq!(condition(&patch, naming::CONDITION)["status"], "True");
        assert_eq!(patch["status"]["lastHeartbeatObserved"], json!(Time(at(0))));
        let mut lock = applied(lock, &patch);
        let later = alive_status(&lock, None, at(30), at(31));
        assert_eq!(later.patch, None, "time passing alone writes nothing");
        // The controller's cache keeps no condition messages: they are not compared.
        for c in &mut lock.status.as_mut().unwrap().conditions {
            c.message.clear();
        }
        let cached = alive_status(&lock, None, at(30), at(31));
        assert_eq!(
            cached.patch, None,
            "a cached lock without messages is current"
        );

        let unsigned = Verification::Missing;
        let signed = alive_status(&lock, Some(&unsigned), at(40), at(41));
        let patch = signed.patch.expect("a new condition");
        assert_eq!(condition(&patch, "SignatureValid")["status"], "False");
        assert_eq!(condition(&patch, "SignatureValid")["reason"], "Missing");
        assert_eq!(
            condition(&patch, "HolderAlive")["lastTransitionTime"],
            json!(Time(at(1))),
            "an unchanged condition keeps its transition time"
        );
        assert_eq!(
            condition(&patch, "SignatureValid")["lastTransitionTime"],
            json!(Time(at(41)))
        );
    }

    #[test]
    fn a_misnamed_lock_is_reported_once() {
        let mut lock = well_named();
        lock.metadata.name = Some("not-its-name".into());
        let first = alive_status(&lock, None, at(0), at(0));
        assert!(first.newly_misnamed);
        let patch = first.patch.expect("status");
        assert_eq!(condition(&patch, naming::CONDITION)["status"], "False");
        let lock = applied(lock, &patch);
        let again = alive_status(&lock, None, at(5), at(5));
        assert!(!again.newly_misnamed);
        assert_eq!(again.patch, None);
    }
}
