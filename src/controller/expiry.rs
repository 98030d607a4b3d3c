//! When a holder's locks must be looked at because of time alone: its heartbeat Lease has
//! gone unchanged for its duration, or is not observed at all (deleted during a watch gap,
//! or not seen yet). One check per heartbeat Lease, not per lock: a holder renewing its
//! Lease costs the controller nothing per lock, and its locks are judged only when the
//! Lease could be expired.
//!
//! Each Lease fires once per state (expired at a given resourceVersion, or unobserved);
//! what happens next (reclaim, a confirmation read that finds the Lease renewed, a retry
//! with backoff after an error) is the reconcile's business.

use super::observations::{LeaseKey, Seen};
use std::collections::HashMap;
use tokio::time::Instant;

/// Why a Lease's locks are due.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Due {
    /// Unchanged for its duration since this resourceVersion was seen.
    Expired(String),
    /// Not observed.
    Unobserved,
}

/// The Leases whose locks were last fired, and why.
#[derive(Debug, Default)]
pub struct ExpiryClock {
    fired: HashMap<LeaseKey, Due>,
}

impl ExpiryClock {
    /// Given every Lease some lock names, and what is observed of each (`seen`), returns
    /// the Leases whose locks are newly due at `now`.
    pub fn due(
        &mut self,
        referenced: Vec<LeaseKey>,
        seen: impl Fn(&LeaseKey) -> Option<Seen>,
        now: Instant,
    ) -> Vec<LeaseKey> {
        let mut out = vec![];
        let mut fired = HashMap::with_capacity(self.fired.len());
        for key in referenced {
            let due = match seen(&key) {
                None => Due::Unobserved,
                Some(s) if now.saturating_duration_since(s.at) >= s.longest_duration => {
                    Due::Expired(s.resource_version)
                }
                Some(_) => continue,
            };
            if self.fired.get(&key) != Some(&due) {
                out.push(key.clone());
            }
            fired.insert(key, due);
        }
        self.fired = fired;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_fires_once_when_it_could_be_expired_and_again_after_a_renewal() {
        let mut clock = ExpiryClock::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        let seen = |rv: &str, at: Instant| Seen {
            resource_version: rv.into(),
            at,
            longest_duration: Duration::from_secs(15),
        };
        let renewed = seen("1", t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(
            clock
                .due(vec![key.clone()], |_| Some(renewed.clone()), at(14))
                .is_empty()
        );
        assert_eq!(
            clock.due(vec![key.clone()], |_| Some(renewed.clone()), at(15)),
            vec![key.clone()]
        );
        assert!(
            clock
                .due(vec![key.clone()], |_| Some(renewed.clone()), at(16))
                .is_empty(),
            "fired once"
        );
        // Renewed (a confirmation read saw it), then expired again: fires again.
        let again = seen("2", at(16));
        assert!(
            clock
                .due(vec![key.clone()], |_| Some(again.clone()), at(20))
                .is_empty()
        );
        assert_eq!(
            clock.due(vec![key.clone()], |_| Some(again.clone()), at(31)),
            vec![key.clone()]
        );
    }

    #[test]
    fn an_unobserved_lease_fires_once() {
        let mut clock = ExpiryClock::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "gone".to_owned());
        assert_eq!(
            clock.due(vec![key.clone()], |_| None, t0),
            vec![key.clone()]
        );
        assert!(clock.due(vec![key.clone()], |_| None, t0).is_empty());
        // No lock names it any more: forgotten, so a new lock naming it fires again.
        assert!(clock.due(vec![], |_| None, t0).is_empty());
        assert_eq!(clock.due(vec![key.clone()], |_| None, t0), [key]);
    }
}
