//! Recent direct reads of holder pods the controller does not cache (pods outside the one
//! namespace it watches), shared by the locks of one holder.
//!
//! Every lock of a holder is rechecked at the same instant (their recheck times derive
//! from the one heartbeat Lease they share), so remembering a read for a moment turns one
//! read per lock into one read per holder pod per recheck. Reads that confirm evidence
//! before a reclaim never use this memory.

use super::staleness::PodFacts;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a read answers for every lock of the same pod.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(1);

/// Pod namespace and name.
pub type PodKey = (String, String);

/// Pod reads of the last [`REMEMBERED_FOR`].
#[derive(Debug, Default)]
pub struct RecentPodReads {
    reads: Mutex<HashMap<PodKey, (Instant, PodFacts)>>,
}

impl RecentPodReads {
    /// What a read of `key` less than [`REMEMBERED_FOR`] before `now` found, if any.
    pub fn get(&self, key: &PodKey, now: Instant) -> Option<PodFacts> {
        let reads = self.reads.lock().expect("pod reads mutex");
        let (at, facts) = reads.get(key)?;
        (now.saturating_duration_since(*at) < REMEMBERED_FOR).then(|| facts.clone())
    }

    /// Records what a read of `key` made at `at` found, and forgets reads too old to be
    /// used (so the memory holds at most the pods read in the last moment).
    pub fn record(&self, key: PodKey, at: Instant, facts: PodFacts) {
        let mut reads = self.reads.lock().expect("pod reads mutex");
        reads.retain(|_, (read_at, _)| at.saturating_duration_since(*read_at) < REMEMBERED_FOR);
        reads.insert(key, (at, facts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_answers_for_a_moment_then_is_forgotten() {
        let reads = RecentPodReads::default();
        let t0 = Instant::now();
        let key = ("ci".to_owned(), "w".to_owned());
        assert_eq!(reads.get(&key, t0), None);
        reads.record(key.clone(), t0, PodFacts::Missing);
        assert_eq!(
            reads.get(&key, t0 + Duration::from_millis(999)),
            Some(PodFacts::Missing)
        );
        assert_eq!(reads.get(&key, t0 + REMEMBERED_FOR), None);
        let other = ("ci".to_owned(), "v".to_owned());
        reads.record(other.clone(), t0 + REMEMBERED_FOR, PodFacts::Unreadable);
        assert_eq!(
            reads.reads.lock().unwrap().len(),
            1,
            "old reads are dropped"
        );
    }
}
