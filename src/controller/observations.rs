//! When the controller last saw each heartbeat Lease change, on its own monotonic clock.
//!
//! A Lease "changes" when its resourceVersion changes (every renewal is a write). Remote
//! timestamps (`renewTime`) are never compared with the local clock: clocks skew.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

/// The last change seen of one Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// resourceVersion at that change.
    pub resource_version: String,
    /// When we first saw that resourceVersion.
    pub at: Instant,
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
    /// write. Returns the observation in force.
    pub fn observe(&self, key: LeaseKey, resource_version: &str, now: Instant) -> Seen {
        let mut seen = self.seen.lock().expect("observations mutex");
        let entry = seen.entry(key).or_insert_with(|| Seen {
            resource_version: resource_version.to_owned(),
            at: now,
        });
        if entry.resource_version != resource_version
            && !is_older(resource_version, &entry.resource_version)
        {
            *entry = Seen {
                resource_version: resource_version.to_owned(),
                at: now,
            };
        }
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
    use std::time::Duration;

    #[test]
    fn only_a_new_resource_version_resets_the_clock() {
        let o = Observations::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        assert_eq!(o.observe(key.clone(), "1", t0).at, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(o.observe(key.clone(), "1", t1).at, t0);
        assert_eq!(o.observe(key.clone(), "2", t1).at, t1);
        o.forget(&key);
        assert!(o.get(&key).is_none());
    }

    #[test]
    fn a_lagging_cache_never_restarts_the_clock() {
        let o = Observations::default();
        let t0 = Instant::now();
        let key = ("ns".to_owned(), "l".to_owned());
        o.observe(key.clone(), "10", t0);
        // A direct read sees a newer write; then the lagging cache still shows the old one.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.observe(key.clone(), "12", t1).at, t1);
        let t2 = t1 + Duration::from_secs(5);
        let seen = o.observe(key.clone(), "10", t2);
        assert_eq!((seen.resource_version.as_str(), seen.at), ("12", t1));
    }
}
