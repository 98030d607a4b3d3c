//! When the controller last saw each heartbeat Lease change, on its own monotonic clock.
//!
//! A Lease "changes" when its resourceVersion changes (every renewal is a write). Remote
//! timestamps (`renewTime`) are never compared with the local clock: clocks skew.
//!
//! The duration a Lease is judged by never shrinks: it is the longest
//! `leaseDurationSeconds` seen on that Lease. A holder never shortens its own Lease, so a
//! shorter value was written by someone else, and must not get the holder's locks
//! reclaimed before the holder itself can notice the change and stop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The last change seen of one Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// resourceVersion at that change.
    pub resource_version: String,
    /// When we first saw that resourceVersion.
    pub at: Instant,
    /// The longest `leaseDurationSeconds` seen on this Lease: the one to judge it by.
    pub longest_duration: Duration,
}

/// Lease key: namespace and name.
pub type LeaseKey = (String, String);

/// Observations of all heartbeat Leases.
#[derive(Debug, Default)]
pub struct Observations {
    seen: Mutex<HashMap<LeaseKey, Seen>>,
}

impl Observations {
    /// Records that the Lease has `resource_version` at `now`; keeps the earlier time if
    /// the version is the one already seen, and ignores a version older than the one seen
    /// (a lagging cache after a direct read), so the clock never restarts for an old
    /// write. `duration` is the Lease's `leaseDurationSeconds` in that version; the
    /// longest one seen is kept. Returns the observation in force.
    pub fn observe(
        &self,
        key: LeaseKey,
        resource_version: &str,
        duration: Duration,
        now: Instant,
    ) -> Seen {
        let mut seen = self.seen.lock().expect("observations mutex");
        let entry = seen.entry(key).or_insert_with(|| Seen {
            resource_version: resource_version.to_owned(),
            at: now,
            longest_duration: duration,
        });
        if entry.resource_version != resource_version
            && !is_older(resource_version, &entry.resource_version)
        {
            entry.resource_version = resource_version.to_owned();
            entry.at = now;
        }
        entry.longest_duration = entry.longest_duration.max(duration);
        entry.clone()
    }

    /// The observation in force, if any.
    pub fn get(&self, key: &LeaseKey) -> Option<Seen> {
        self.seen
            .lock()
            .expect("observations mutex")
            .get(key)
            .cloned()
    }

    /// Forgets a deleted Lease.
    pub fn forget(&self, key: &LeaseKey) {
        self.seen.lock().expect("observations mutex").remove(key);
    }
}

/// True when `a` is a strictly older resourceVersion than `b`. Resource versions are
/// etcd revisions (decimal integers, comparable since Kubernetes 1.35); anything else is
/// treated as not older, i.e. as a change.
fn is_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn only_a_new_resource_version_resets_the_clock() {
        let o = Observations::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        assert_eq!(o.observe(key.clone(), "1", D, t0).at, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(o.observe(key.clone(), "1", D, t1).at, t0);
        assert_eq!(o.observe(key.clone(), "2", D, t1).at, t1);
        o.forget(&key);
        assert!(o.get(&key).is_none());
    }

    #[test]
    fn a_lagging_cache_never_restarts_the_clock() {
        let o = Observations::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        o.observe(key.clone(), "10", D, t0);
        // A direct read sees a newer write; then the lagging cache still shows the old one.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.observe(key.clone(), "12", D, t1).at, t1);
        let t2 = t1 + Duration::from_secs(5);
        let seen = o.observe(key.clone(), "10", D, t2);
        assert_eq!((seen.resource_version.as_str(), seen.at), ("12", t1));
    }

    #[test]
    fn a_shortened_lease_duration_is_never_believed() {
        let o = Observations::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        o.observe(key.clone(), "1", D, t0);
        // Someone rewrites the Lease with a 1 s duration: a change (the clock restarts),
        // but the Lease is still judged by the longest duration seen.
        let t1 = t0 + Duration::from_secs(2);
        let seen = o.observe(key.clone(), "2", Duration::from_secs(1), t1);
        assert_eq!((seen.at, seen.longest_duration), (t1, D));
        // A longer one is taken at once.
        let seen = o.observe(key.clone(), "3", Duration::from_secs(30), t1);
        assert_eq!(seen.longest_duration, Duration::from_secs(30));
    }
}
