//! The controller's `/metrics`, parsed by the reference parsers (the Python
//! `prometheus_client` package's Prometheus text and OpenMetrics parsers, installed by
//! e2e/python-env.sh into `ISSUELOCK_E2E_PYTHON`): every documented metric is present,
//! with a plausible value, and `issuelock_holders_alive_locks` counts live holders.

use crate::support::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// Parses stdin with the parser named by argv[1] and prints, as JSON, each family's type
/// and samples.
const PARSE: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(out))
"#;

/// One metric family: its type and its samples (name, labels, value).
#[derive(serde::Deserialize, Debug)]
struct Family {
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// `GET /metrics` with `accept`; returns the Content-Type and the body.
fn scrape(port: u16, accept: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

/// The families of `text` by the reference parser `parser` ("text" or "openmetrics").
fn parse(parser: &str, text: &str) -> BTreeMap<String, Family> {
    use std::process::{Command, Stdio};
    let python = std::env::var("ISSUELOCK_E2E_PYTHON").expect("ISSUELOCK_E2E_PYTHON");
    let mut child = Command::new(python)
        .args(["-c", PARSE, parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {parser} parser rejects the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both expositions, parsed; the families must agree.
fn families(port: u16) -> BTreeMap<String, Family> {
    let (content_type, text) = scrape(port, "text/plain");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let prometheus = parse("text", &text);
    let (content_type, om) = scrape(
        port,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let openmetrics = parse("openmetrics", &om);
    let names = |f: &BTreeMap<String, Family>| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&prometheus), names(&openmetrics), "{text}\n{om}");
    prometheus
}

/// The value of the sample `name` with `labels` (all of them).
fn value(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|(n, l, _)| n == name && *l == want)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {families:#?}"))
        .2
}

#[tokio::test]
async fn metrics_parse_and_count_live_holders() {
    let client = client().await;
    let ns = namespace(&client, "metrics").await;
    let ctl = ControllerProcess::start(&ns);
    let uid = create_pod(&client, &ns, "holder").await;
    let worker = WorkerProcess::start(&ns, "holder", "org/repo#m", Some(("holder", &uid)), 300);
    wait_taken(&client, &ns, "org/repo#m").await;

    // Every documented metric, of its documented type.
    let f = eventually(
        Duration::from_secs(15),
        "one live holder counted",
        || async {
            let f = families(ctl.port);
            (value(&f, "issuelock_holders_alive_locks", &[]) == 1.0
                && value(&f, "issuelock_reconcile_duration_seconds_count", &[]) >= 1.0)
                .then_some(f)
        },
    )
    .await;
    for (family, kind) in [
        ("issuelock_reclaims", "counter"),
        ("issuelock_reconcile_errors", "counter"),
        ("issuelock_reconcile_duration_seconds", "histogram"),
        ("issuelock_locks_held", "gauge"),
        ("issuelock_heartbeat_age_seconds", "gauge"),
        ("issuelock_leader", "gauge"),
        ("issuelock_misnamed_locks", "gauge"),
        ("issuelock_acquisitions", "counter"),
        ("issuelock_holders_alive_locks", "gauge"),
    ] {
        let got = f
            .get(family)
            .unwrap_or_else(|| panic!("{family} missing: {f:#?}"));
        assert_eq!(got.kind, kind, "{family}");
    }
    assert_eq!(value(&f, "issuelock_locks_held", &[]), 1.0);
    assert_eq!(value(&f, "issuelock_leader", &[]), 1.0);
    assert_eq!(value(&f, "issuelock_misnamed_locks", &[]), 0.0);
    assert_eq!(value(&f, "issuelock_acquisitions_total", &[]), 1.0);
    // The worker renews every second; its Lease lasts 6 s.
    let age = value(&f, "issuelock_heartbeat_age_seconds", &[]);
    assert!((0.0..6.0).contains(&age), "heartbeat age {age}");
    for reason in [
        "pod_deleted",
        "pod_replaced",
        "pod_terminated",
        "lease_missing",
        "lease_expired",
        "max_hold_exceeded",
    ] {
        assert_eq!(
            value(&f, "issuelock_reclaims_total", &[("reason", reason)]),
            0.0
        );
    }
    for category in ["unreachable", "forbidden", "api"] {
        let n = value(
            &f,
            "issuelock_reconcile_errors_total",
            &[("category", category)],
        );
        assert!(n >= 0.0, "{category}: {n}");
    }
    let count = value(&f, "issuelock_reconcile_duration_seconds_count", &[]);
    let inf = value(
        &f,
        "issuelock_reconcile_duration_seconds_bucket",
        &[("le", "+Inf")],
    );
    assert_eq!(count, inf);
    assert!(value(&f, "issuelock_reconcile_duration_seconds_sum", &[]) >= 0.0);

    // A holder killed stops heartbeating: its lock is reclaimed once its Lease expires,
    // and no live holder is left.
    worker.signal("KILL");
    let f = eventually(
        Duration::from_secs(20),
        "the dead holder reclaimed",
        || async {
            let f = families(ctl.port);
            (value(
                &f,
                "issuelock_reclaims_total",
                &[("reason", "lease_expired")],
            ) == 1.0
                && value(&f, "issuelock_locks_held", &[]) == 0.0)
                .then_some(f)
        },
    )
    .await;
    assert_eq!(value(&f, "issuelock_holders_alive_locks", &[]), 0.0);
    drop(worker);
    drop(ctl);
}
