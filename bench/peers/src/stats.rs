//! Latency samples and their percentiles.

use std::time::Duration;

/// The latencies of one phase and its wall time.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self { samples }
    }

    /// The p-th percentile (nearest rank); zero when there are no samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil().max(1.0) as usize;
        self.samples[rank.min(self.samples.len()) - 1]
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `a / b` as "1.23x" (three decimals below 0.1, so a tiny ratio never reads 0), or
/// "-" when either is missing.
pub fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
        let r = a / b;
        if r < 0.1 {
            format!("{r:.3}x")
        } else {
            format!("{r:.2}x")
        }
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.percentile(50.0), Duration::from_millis(50));
        assert_eq!(l.percentile(99.0), Duration::from_millis(99));
        assert_eq!(Latencies::default().percentile(50.0), Duration::ZERO);
    }
}
