//! The controller's Prometheus metrics (the `prometheus-client` crate).
//!
//! Every metric is one field of [`Metrics`], named and described once where it is
//! registered in [`Metrics::default`]; the controller records through the field (gauges,
//! the acquisitions counter) or through the methods below (labelled families, the
//! histogram). Counters are registered without their `_total` suffix: the encoders add
//! it. `/metrics` serves OpenMetrics to scrapers that ask for it and the Prometheus text
//! format (0.0.4) to everyone else ([`Metrics::render`]).

use super::staleness::Reason;
use prometheus_client::encoding::text as openmetrics_text;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The categories a failed API call is classified into (`crate::error::classify`):
/// exported from the start at 0, so that `issuelock_reconcile_errors_total` exists before
/// the first failure. Other categories are counted from their first failure on.
const API_ERROR_CATEGORIES: [&str; 6] = [
    "api",
    "crd_not_installed",
    "forbidden",
    "namespace_not_found",
    "unauthorized",
    "unreachable",
];

/// The label of `issuelock_reclaims_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The label of `issuelock_reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

/// The metrics of one controller process, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reclaims: Family<ReasonLabel, Counter>,
    reconcile_errors: Family<CategoryLabel, Counter>,
    reconcile_duration: Histogram,
    /// Locks currently held (in the controller's cache).
    pub locks_held: Gauge,
    /// Locks whose name is not the one derived from their `spec.issue`.
    pub misnamed_locks: Gauge,
    /// Locks whose holder is heartbeating: held locks whose holder Lease this replica saw
    /// change less than that Lease's duration ago.
    pub holders_alive: Gauge,
    /// 1 while this replica is the leader (reclaims), else 0.
    pub leader: Gauge,
    /// Seconds since the stalest held lock's holder Lease was last seen changing.
    pub heartbeat_age: Gauge<f64, AtomicU64>,
    /// Locks the controller has seen created (successful acquires, cluster-wide).
    pub acquisitions: Counter,
}

/// Registers `metric` under `name` with `help`, and returns it (metrics are shared handles).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let r = &mut Registry::default();
        let metrics = Self {
            reclaims: registered(
                r,
                "issuelock_reclaims",
                "Locks reclaimed by the controller, by reason",
                Family::default(),
            ),
            reconcile_errors: registered(
                r,
                "issuelock_reconcile_errors",
                "Failed reconciles, by error category",
                Family::default(),
            ),
            reconcile_duration: registered(
                r,
                "issuelock_reconcile_duration_seconds",
                "Time spent in one reconcile",
                Histogram::new(BUCKETS),
            ),
            acquisitions: registered(
                r,
                "issuelock_acquisitions",
                "Locks seen created since this controller started (successful acquires)",
                Counter::default(),
            ),
            locks_held: registered(
                r,
                "issuelock_locks_held",
                "Locks currently held, as the controller sees them",
                Gauge::default(),
            ),
            misnamed_locks: registered(
                r,
                "issuelock_misnamed_locks",
                "Locks whose name is not the one derived from their spec.issue (PROTOCOL.md)",
                Gauge::default(),
            ),
            holders_alive: registered(
                r,
                "issuelock_holders_alive_locks",
                "Held locks whose holder Lease was seen changing within its lease duration",
                Gauge::default(),
            ),
            leader: registered(
                r,
                "issuelock_leader",
                "1 while this replica is the leader and reclaims locks",
                Gauge::default(),
            ),
            heartbeat_age: registered(
                r,
                "issuelock_heartbeat_age_seconds",
                "Largest time since a held lock's holder Lease was last seen changing",
                Gauge::default(),
            ),
            registry: std::mem::take(r),
        };
        // Every reason and API error category is exported from the start, at 0.
        for reason in Reason::ALL {
            let _ = metrics.reclaims.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        for category in API_ERROR_CATEGORIES {
            let _ = metrics
                .reconcile_errors
                .get_or_create(&CategoryLabel { category });
        }
        metrics
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const PROMETHEUS_TEXT: &str = prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of [`Metrics::render_openmetrics`]'s output.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// Counts one reclaim.
    pub fn reclaimed(&self, reason: Reason) {
        self.reclaims
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Counts one failed reconcile, by error category.
    pub fn reconcile_failed(&self, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&CategoryLabel { category })
            .inc();
    }

    /// Records one reconcile's duration.
    pub fn reconciled(&self, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Sets the age of the stalest heartbeat.
    pub fn set_heartbeat_age(&self, age: Duration) {
        self.heartbeat_age.set(age.as_secs_f64());
    }

    /// Every metric in the Prometheus text format, version 0.0.4 ([`PROMETHEUS_TEXT`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Every metric in the OpenMetrics text format, 1.0.0 ([`OPENMETRICS_TEXT`]).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        openmetrics_text::encode(&mut out, &self.registry).expect("writing to a String");
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
        m.reconcile_failed("transient");
        m.holders_alive.set(2);
        m.set_heartbeat_age(Duration::from_millis(1500));
        let text = m.render();
        assert!(
            text.contains("# TYPE issuelock_reclaims_total counter\n"),
            "{text}"
        );
        assert!(text.contains("issuelock_reclaims_total{reason=\"pod_deleted\"} 1\n"));
        assert!(text.contains("issuelock_reclaims_total{reason=\"lease_expired\"} 0\n"));
        assert!(text.contains("issuelock_reconcile_errors_total{category=\"transient\"} 1\n"));
        assert!(text.contains("issuelock_reconcile_errors_total{category=\"forbidden\"} 0\n"));
        assert!(text.contains("issuelock_reconcile_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("issuelock_reconcile_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("issuelock_reconcile_duration_seconds_count 1\n"));
        assert!(text.contains("issuelock_misnamed_locks 0\n"));
        assert!(text.contains("issuelock_holders_alive_locks 2\n"));
        assert!(text.contains("issuelock_heartbeat_age_seconds 1.5\n"));
        assert!(text.contains("issuelock_acquisitions_total 0\n"));
        let om = m.render_openmetrics();
        assert!(om.contains("# TYPE issuelock_reclaims counter\n"), "{om}");
        assert!(om.contains("issuelock_reclaims_total{reason=\"pod_deleted\"} 1\n"));
        assert!(om.ends_with("# EOF\n"));
    }
}
