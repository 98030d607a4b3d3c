//! How every watch of this crate retries after an error: exponentially, with jitter, from
//! 250 ms up to a cap of a few seconds, starting again from the bottom after any event.
//!
//! kube-runtime's default backoff grows to 30 s. After an API server outage or restart, a
//! watch could then sleep up to 30 s after the server was back, and the controller would
//! reclaim a dead holder's lock that much later (the chaos soak measured 41 s instead of
//! the lease duration). A cap of a few seconds bounds that delay; a watch retrying every
//! few seconds while the API server is down costs it next to nothing.

use kube::runtime::utils::Backoff;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first retry's delay.
const FIRST: Duration = Duration::from_millis(250);

/// The controller's watches: a reclaim waits for them after an outage.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub const CONTROLLER_CAP: Duration = Duration::from_secs(2);

/// A client's watches (its own locks, the namespace view, a waited-for lock): one per
/// worker process, so spread a little wider across a fleet that reconnects together.
pub const CLIENT_CAP: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter between half and all of each step, capped.
#[derive(Debug, Clone)]
pub struct CappedBackoff {
    step: Duration,
    cap: Duration,
}

impl CappedBackoff {
    /// A backoff whose delays never exceed `cap`.
    pub fn new(cap: Duration) -> Self {
        Self {
            step: FIRST.min(cap),
            cap,
        }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        // Between half and all of the step.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(step.subsec_nanos());
        let fraction = 0.5 + (h.finish() % 1000) as f64 / 2000.0;
        Some(step.mul_f64(fraction))
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.step = FIRST.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_cap_and_resets() {
        let mut b = CappedBackoff::new(Duration::from_secs(2));
        let delays: Vec<_> = (&mut b).take(8).collect();
        assert!(delays[0] >= Duration::from_millis(125) && delays[0] <= FIRST);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[7] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next().unwrap() <= FIRST);
    }
}
