//! Per-lock exponential backoff after failed reconciles, so that an overloaded or
//! unreachable API server sees fewer calls from the controller, not a retry of every lock
//! every second. Each lock's delay doubles from [`FIRST`] to [`LONGEST`] with each
//! consecutive failure, and is spread by a jitter so that locks failing together (an
//! outage) do not come back together. A successful reconcile forgets the lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Delay after a first failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// Longest delay.
pub const LONGEST: Duration = Duration::from_secs(120);

/// Consecutive failures per lock (namespace, name).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Backoff {
    /// Counts one failure of `key` and returns how long to wait before retrying it:
    /// `FIRST × 2^(n−1)` capped at `LONGEST`, scaled by a factor in [0.5, 1.0) drawn from
    /// `jitter` (any value; the same value gives the same factor).
    pub fn failed(&self, key: (String, String), jitter: u64) -> Duration {
        let mut failures = self.failures.lock().expect("backoff mutex");
        let n = failures.entry(key).or_default();
        *n = n.saturating_add(1);
        delay(*n, jitter)
    }

    /// Forgets `key` after a successful reconcile.
    pub fn succeeded(&self, key: &(String, String)) {
        let mut failures = self.failures.lock().expect("backoff mutex");
        if !failures.is_empty() {
            failures.remove(key);
        }
    }

    /// Locks currently backing off.
    pub fn len(&self) -> usize {
        self.failures.lock().expect("backoff mutex").len()
    }

    /// True when no lock is backing off.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay after the `n`th consecutive failure (n ≥ 1), with a jitter factor.
fn delay(n: u32, jitter: u64) -> Duration {
    let full = FIRST
        .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
        .min(LONGEST);
    // A cheap mix of the jitter seed into [0.5, 1.0).
    let mixed = jitter.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let factor = 0.5 + 0.5 * (mixed as f64 / (1u64 << 53) as f64);
    full.mul_f64(factor)
}

/// A jitter seed that differs between calls: the low bits of the wall clock.
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_cap_and_stays_within_its_jitter() {
        for seed in [0, 1, 42, u64::MAX] {
            for n in 1..40u32 {
                let d = delay(n, seed);
                let full = FIRST
                    .saturating_mul(2u32.saturating_pow(n - 1))
                    .min(LONGEST);
                assert!(
                    d >= full / 2 && d < full,
                    "n={n} seed={seed}: {d:?} vs {full:?}"
                );
            }
        }
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Backoff::default();
        let key = ("ns".to_owned(), "l".to_owned());
        b.failed(key.clone(), 7);
        b.failed(key.clone(), 7);
        assert!(b.failed(key.clone(), 7) >= FIRST * 2);
        b.succeeded(&key);
        assert!(b.is_empty());
        assert!(b.failed(key, 7) < FIRST);
    }
}
