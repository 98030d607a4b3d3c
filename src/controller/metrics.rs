//! The controller's Prometheus metrics, rendered in the text exposition format.

use super::staleness::Reason;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Counters and gauges of one controller process.
#[derive(Debug, Default)]
pub struct Metrics {
    reclaims: Mutex<HashMap<&'static str, u64>>,
    reconcile_errors: Mutex<HashMap<&'static str, u64>>,
    reconciles: AtomicU64,
    reconcile_buckets: [AtomicU64; BUCKETS.len()],
    reconcile_sum_micros: AtomicU64,
    /// Locks currently held (in the controller's view).
    pub locks_held: AtomicI64,
    /// Locks whose name is not the one derived from their `spec.issue`.
    pub misnamed_locks: AtomicI64,
    /// Locks whose holder was last judged alive.
    pub holders_alive: AtomicI64,
    /// 1 while this replica is the leader (reclaims), else 0.
    pub leader: AtomicI64,
    /// Milliseconds since the stalest held lock's holder Lease was last seen changing.
    pub max_heartbeat_age_millis: AtomicI64,
    /// Locks the controller has seen created (successful acquires, cluster-wide).
    pub acquisitions: AtomicU64,
}

impl Metrics {
    /// Counts one reclaim.
    pub fn reclaimed(&self, reason: Reason) {
        *self
            .reclaims
            .lock()
            .expect("metrics mutex")
            .entry(reason.label())
            .or_default() += 1;
    }

    /// Counts one failed reconcile, by error category.
    pub fn reconcile_failed(&self, category: &'static str) {
        *self
            .reconcile_errors
            .lock()
            .expect("metrics mutex")
            .entry(category)
            .or_default() += 1;
    }

    /// Records one reconcile's duration.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.reconcile_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reclaims so far for `reason`.
    pub fn reclaims(&self, reason: Reason) -> u64 {
        self.reclaims
            .lock()
            .expect("metrics mutex")
            .get(reason.label())
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reclaims = self.reclaims.lock().expect("metrics mutex").clone();
        out.push_str(
            "# HELP issuelock_reclaims_total Locks reclaimed by the controller, by reason.\n",
        );
        out.push_str("# TYPE issuelock_reclaims_total counter\n");
        for reason in Reason::ALL {
            let n = reclaims.get(reason.label()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "issuelock_reclaims_total{{reason=\"{}\"}} {n}",
                reason.label()
            );
        }
        out.push_str(
            "# HELP issuelock_reconcile_errors_total Failed reconciles, by error category.\n",
        );
        out.push_str("# TYPE issuelock_reconcile_errors_total counter\n");
        let mut errors: Vec<_> = self
            .reconcile_errors
            .lock()
            .expect("metrics mutex")
            .clone()
            .into_iter()
            .collect();
        errors.sort();
        for (category, n) in errors {
            let _ = writeln!(
                out,
                "issuelock_reconcile_errors_total{{category=\"{category}\"}} {n}"
            );
        }
        out.push_str("# HELP issuelock_reconcile_duration_seconds Time spent in one reconcile.\n");
        out.push_str("# TYPE issuelock_reconcile_duration_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.reconcile_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "issuelock_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let count = self.reconciles.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "issuelock_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.reconcile_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "issuelock_reconcile_duration_seconds_sum {sum}");
        let _ = writeln!(out, "issuelock_reconcile_duration_seconds_count {count}");
        out.push_str("# HELP issuelock_acquisitions_total Locks seen created since this controller started (successful acquires).\n");
        out.push_str("# TYPE issuelock_acquisitions_total counter\n");
        let _ = writeln!(
            out,
            "issuelock_acquisitions_total {}",
            self.acquisitions.load(Ordering::Relaxed)
        );
        let gauges = [
            (
                "issuelock_locks_held",
                "Locks currently held, as the controller sees them.",
                self.locks_held.load(Ordering::Relaxed) as f64,
            ),
            (
                "issuelock_misnamed_locks",
                "Locks whose name is not the one derived from their spec.issue (PROTOCOL.md).",
                self.misnamed_locks.load(Ordering::Relaxed) as f64,
            ),
            (
                "issuelock_holders_alive_locks",
                "Locks whose holder was last judged alive.",
                self.holders_alive.load(Ordering::Relaxed) as f64,
            ),
            (
                "issuelock_leader",
                "1 while this replica is the leader and reclaims locks.",
                self.leader.load(Ordering::Relaxed) as f64,
            ),
            (
                "issuelock_heartbeat_age_seconds",
                "Largest time since a held lock's holder Lease was last seen changing.",
                self.max_heartbeat_age_millis.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason_and_the_histogram() {
        let m = Metrics::default();
        m.reclaimed(Reason::PodDeleted);
        m.reconciled(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("issuelock_reclaims_total{reason=\"pod_deleted\"} 1"));
        assert!(text.contains("issuelock_reclaims_total{reason=\"lease_expired\"} 0"));
        assert!(text.contains("issuelock_reconcile_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("issuelock_reconcile_duration_seconds_count 1"));
        assert!(text.contains("issuelock_misnamed_locks 0"));
    }
}
