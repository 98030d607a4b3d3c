//! A mixed fleet: the Python reference worker (examples/python, written from PROTOCOL.md
//! alone) and `issuelock run` race over the same issues against the real API server and
//! the controller; and a lock named by another rule than PROTOCOL.md's is reported.
//!
//! The Python interpreter is the one `e2e/run.sh` prepares (`e2e/python-env.sh`), given
//! in `ISSUELOCK_E2E_PYTHON`.

use crate::support::*;
use issuelock::IssueLock;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

/// Issues whose names a Unicode `lower()` would get wrong are among them: a worker that
/// derived another name would overlap with the others and the interval check would fail.
const ISSUES: [&str; 10] = [
    "org/mixed#1",
    "\u{212A}elvin/mixed#2",
    "\u{0130}stanbul/mixed#3",
    "\u{FF26}\u{FF35}\u{FF2C}\u{FF2C}/mixed#4",
    "Org/Mixed#5",
    "org/mixed#5",
    "caf\u{e9}/mixed#7",
    "a/b#8",
    "a-b-8",
    "\u{1F980} mixed 10",
];

fn python() -> String {
    std::env::var("ISSUELOCK_E2E_PYTHON").unwrap_or_else(|_| {
        panic!(
            "ISSUELOCK_E2E_PYTHON is not set: run the suite with `make test-e2e` (e2e/run.sh \
             prepares the Python venv), or set it to `$(bash e2e/python-env.sh)`"
        )
    })
}

const WORKER_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/issuelock_worker.py"
);

/// The work: skip an issue already done, else log `start`, work, log `end`, mark it done.
/// Lines are `<start|end> <worker> <fencing token> <unix time>`, one log per issue.
const WORK_SH: &str = r#"#!/bin/sh
d=$(dirname "$0")
k=$(printf %s "$ISSUELOCK_ISSUE" | sha256sum | cut -c1-16)
[ -e "$d/done.$k" ] && exit 0
echo "start $WORKER_ID $ISSUELOCK_FENCING_TOKEN $(date +%s.%N)" >> "$d/log.$k"
if [ "$1" = hang ]; then echo $$ > "$d/hung.pid"; exec sleep 600; fi
sleep 1
echo "end $WORKER_ID $ISSUELOCK_FENCING_TOKEN $(date +%s.%N)" >> "$d/log.$k"
touch "$d/done.$k"
"#;

/// A worker's loop: try every issue not done yet (starting at its own offset), until all
/// are done. `$KIND` picks `issuelock run` or the Python worker; 75 (held) is expected.
const DRIVER_SH: &str = r#"#!/usr/bin/env bash
d=$(dirname "$0")
mapfile -t keys < "$d/keys.txt"
n=${#keys[@]}
for round in $(seq 1 300); do
  left=0
  for j in $(seq 0 $((n - 1))); do
    key=${keys[$(((j + OFFSET) % n))]}
    k=$(printf %s "$key" | sha256sum | cut -c1-16)
    [ -e "$d/done.$k" ] && continue
    left=1
    if [ "$KIND" = rust ]; then
      "$ISSUELOCK" run -n "$NS" --identity "$WORKER_ID" --issue "$key" $TIMING -- sh "$d/work.sh" "$MODE"
    else
      "$PYTHON" "$WORKER_PY" -n "$NS" --identity "$WORKER_ID" --issue "$key" $TIMING -- sh "$d/work.sh" "$MODE"
    fi
    rc=$?
    [ $rc = 0 ] || [ $rc = 75 ] || echo "$WORKER_ID: exit $rc on $key" >> "$d/errors"
  done
  [ $left = 0 ] && exit 0
  sleep 0.2
done
echo "$WORKER_ID: gave up" >> "$d/errors"
exit 1
"#;

struct Driver {
    id: &'static str,
    child: Child,
}

impl Driver {
    fn start(
        dir: &Path,
        ns: &str,
        id: &'static str,
        kind: &str,
        mode: &str,
        offset: usize,
    ) -> Self {
        let child = Command::new("bash")
            .arg(dir.join("driver.sh"))
            .env("KUBECONFIG", kubeconfig())
            .env("NS", ns)
            .env("WORKER_ID", id)
            .env("KIND", kind)
            .env("MODE", mode)
            .env("OFFSET", offset.to_string())
            .env("ISSUELOCK", env!("CARGO_BIN_EXE_issuelock"))
            .env("PYTHON", python())
            .env("WORKER_PY", WORKER_PY)
            .env("TIMING", FAST_HEARTBEAT.join(" "))
            .env_remove("POD_NAME")
            .env_remove("POD_UID")
            .env_remove("POD_NAMESPACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{id}.stderr"))).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Self { id, child }
    }

    fn kill(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group_and_reap(&mut self.child);
    }
}

/// Every work log of the test, concatenated.
fn all_logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("log."))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One hold of an issue, as the work logged it.
#[derive(Debug)]
struct Hold {
    worker: String,
    token: u64,
    start: f64,
    end: Option<f64>,
}

fn holds(log: &str) -> Vec<Hold> {
    let mut out: Vec<Hold> = vec![];
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (what, worker, token, at) = (f[0], f[1], f[2].parse().unwrap(), f[3].parse().unwrap());
        match what {
            "start" => out.push(Hold {
                worker: worker.into(),
                token,
                start: at,
                end: None,
            }),
            _ => {
                let open = out
                    .iter_mut()
                    .rfind(|h| h.worker == worker && h.token == token && h.end.is_none())
                    .unwrap_or_else(|| panic!("end without start: {line}\n{log}"));
                open.end = Some(at);
            }
        }
    }
    out
}

async fn events_with(client: &kube::Client, ns: &str, reason: &str) -> Vec<Event> {
    events(client, ns)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn python_and_rust_workers_race_over_the_same_issues() {
    let started = Instant::now();
    let client = client().await;
    let ns = namespace(&client, "interop").await;
    let ctl = ControllerProcess::start(&ns);
    let dir = Scratch::new("interop");
    let d = &dir.0;
    std::fs::write(d.join("keys.txt"), ISSUES.join("\n") + "\n").unwrap();
    std::fs::write(d.join("work.sh"), WORK_SH).unwrap();
    std::fs::write(d.join("driver.sh"), DRIVER_SH).unwrap();

    // The victim takes a lock and hangs in its work; then it is SIGKILLed.
    let mut victim = Driver::start(d, &ns, "py-victim", "python", "hang", 0);
    let hung = eventually(
        Duration::from_secs(20),
        "the victim holding a lock",
        || async {
            let locks: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
            let list = locks.list(&ListParams::default()).await.ok()?;
            let held = list
                .items
                .into_iter()
                .find(|l| l.spec.holder.identity == "py-victim")?;
            d.join("hung.pid").exists().then_some(held)
        },
    )
    .await;
    let mut fleet = vec![
        Driver::start(d, &ns, "py-1", "python", "work", 2),
        Driver::start(d, &ns, "py-2", "python", "work", 6),
    ];
    // The Rust workers join once each Python worker holds an issue (Python starts slower:
    // under load the Rust ones could otherwise do everything), and all race for the rest.
    eventually(
        Duration::from_secs(20),
        "both Python workers working",
        || async {
            let logs = all_logs(d);
            (logs.contains("start py-1 ") && logs.contains("start py-2 ")).then_some(())
        },
    )
    .await;
    fleet.push(Driver::start(d, &ns, "rust-1", "rust", "work", 4));
    fleet.push(Driver::start(d, &ns, "rust-2", "rust", "work", 8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = unix_now();
    victim.kill();
    let pid = std::fs::read_to_string(d.join("hung.pid")).unwrap();
    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();

    // Every driver ends once every issue is done, the victim's included (after the
    // controller reclaimed its lock).
    let deadline = Instant::now() + Duration::from_secs(45);
    for driver in &mut fleet {
        loop {
            if let Some(status) = driver.child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(d.join(format!("{}.stderr", driver.id)));
                assert!(status.success(), "{}: {status}; {stderr:?}", driver.id);
                break;
            }
            assert!(Instant::now() < deadline, "{} did not finish", driver.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let errors = std::fs::read_to_string(d.join("errors")).unwrap_or_default();
    assert!(errors.is_empty(), "unexpected worker exits:\n{errors}");

    // The dead Python holder's lock was reclaimed by the controller.
    let reclaimed = events_with(&client, &ns, "HolderLeaseExpired").await;
    assert!(
        reclaimed.iter().any(|e| e
            .message
            .as_deref()
            .is_some_and(|m| m.contains("py-victim"))),
        "no reclaim Event for the victim's lock {}: {reclaimed:?}",
        hung.metadata.name.as_deref().unwrap_or_default()
    );
    let metrics = ctl.get("/metrics").unwrap();
    assert!(
        metric(
            &metrics,
            "issuelock_reclaims_total{reason=\"lease_expired\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // A Python worker that derived other names than the Rust ones would show here too.
    let misnamed = events_with(&client, &ns, "LockNameMismatch").await;
    assert!(misnamed.is_empty(), "misnamed locks: {misnamed:?}");

    // Every issue done exactly once; no two holds of an issue overlap; tokens grow.
    let mut done_by: BTreeMap<String, usize> = BTreeMap::new();
    for issue in ISSUES {
        let k = &sha256_hex(issue)[..16];
        let log = std::fs::read_to_string(d.join(format!("log.{k}"))).unwrap();
        let mut hs = holds(&log);
        hs.sort_by(|a, b| a.start.total_cmp(&b.start));
        let done: Vec<_> = hs.iter().filter(|h| h.end.is_some()).collect();
        assert_eq!(done.len(), 1, "{issue:?} done {} times:\n{log}", done.len());
        *done_by.entry(done[0].worker.clone()).or_default() += 1;
        for h in hs.iter().filter(|h| h.end.is_none()) {
            assert_eq!(h.worker, "py-victim", "{issue:?}: unfinished hold\n{log}");
        }
        for pair in hs.windows(2) {
            let end = pair[0].end.unwrap_or(killed_at);
            assert!(
                pair[1].start >= end,
                "{issue:?}: holds overlap: {pair:?}\n{log}"
            );
            assert!(
                pair[1].token > pair[0].token,
                "{issue:?}: fencing tokens not increasing: {pair:?}"
            );
        }
    }
    let by = |prefix: &str| -> usize {
        done_by
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    assert!(
        by("py-") >= 1 && by("rust-") >= 1,
        "one kind did everything: {done_by:?}"
    );
    println!(
        "interop: {} issues, done by {done_by:?}; victim's lock {} reclaimed; {:.1} s",
        ISSUES.len(),
        hung.metadata.name.as_deref().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    drop(fleet);
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A lock named by another rule (a Unicode `lower()` of the key) beside the correctly
/// named one: the controller reports it (condition, Event, metric) and keeps both.
#[tokio::test]
async fn a_lock_not_named_after_its_issue_is_reported() {
    let client = client().await;
    let ns = namespace(&client, "misnamed").await;
    let ctl = ControllerProcess::start(&ns);
    let issue = "\u{212A}elvin/x#1";
    let right = "elvin-x-1-ce3c9e6a5af0";
    let wrong = "kelvin-x-1-ce3c9e6a5af0";
    // A foreign holder with a long Lease that is not renewed: alive for this test.
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "foreign", "labels": {"issuelock.dev/heartbeat": "true"}},
        "spec": {"holderIdentity": "foreign", "leaseDurationSeconds": 3600},
    });
    kubectl_ok_stdin(&["create", "-n", &ns, "-f", "-"], &lease.to_string());
    for name in [right, wrong] {
        let lock = serde_json::json!({
            "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
            "metadata": {"name": name, "labels": {"issuelock.dev/holder-lease": "foreign"}},
            "spec": {"issue": issue, "holder": {"identity": "foreign", "lease": "foreign"}},
        });
        kubectl_ok_stdin(&["create", "-n", &ns, "-f", "-"], &lock.to_string());
    }
    let condition = |name: &'static str| {
        let client = client.clone();
        let ns = ns.to_string();
        async move {
            let api: Api<IssueLock> = Api::namespaced(client, &ns);
            let lock = api.get(name).await.ok()?;
            let c = lock
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "NameMatchesIssue")?;
            Some((c.status, c.reason, c.message))
        }
    };
    let (status, reason, message) = eventually(
        Duration::from_secs(15),
        "NameMatchesIssue on the wrong name",
        || condition(wrong),
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NameMismatch")
    );
    assert!(message.contains(right), "{message}");
    let (status, ..) = eventually(Duration::from_secs(15), "NameMatchesIssue", || {
        condition(right)
    })
    .await;
    assert_eq!(status, "True");
    eventually(Duration::from_secs(5), "LockNameMismatch Event", || async {
        let events = events_with(&client, &ns, "LockNameMismatch").await;
        events
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some(wrong))
            .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "issuelock_misnamed_locks 1",
        || async {
            let m = ctl.get("/metrics")?;
            (metric(&m, "issuelock_misnamed_locks") == Some(1.0)).then_some(())
        },
    )
    .await;
    // Reported, not reclaimed: both locks are still there.
    let api: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
    assert!(api.get_opt(wrong).await.unwrap().is_some());
    assert!(api.get_opt(right).await.unwrap().is_some());
}

fn kubectl_ok_stdin(args: &[&str], stdin: &str) {
    let out = kubectl_stdin(args, stdin);
    assert!(out.status.success(), "kubectl {args:?}: {:?}", text(&out));
}

/// The chart's admission policy refuses a lock whose name's readable part is not its
/// issue's (CEL cannot hash; the slug is checked exactly, the hash for form), and admits
/// every lock of the shared vectors under its right name.
#[tokio::test]
async fn the_chart_policy_refuses_a_lock_not_named_after_its_issue() {
    let client = client().await;
    let ns = namespace(&client, "name-policy").await;
    // The policy is cluster-wide: limit it to this test's namespace.
    kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        &format!("issuelock-e2e-name={ns}"),
    ]);
    let server: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["version", "-o", "json"])).unwrap();
    let release = format!("nm{}", std::process::id());
    let out = Command::new("helm")
        .args(["template", &release])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/issuelock"))
        .args(["-n", &ns, "--show-only", "templates/admission-policy.yaml"])
        .args([
            "--kube-version",
            server["serverVersion"]["gitVersion"].as_str().unwrap(),
        ])
        .args([
            "--set",
            &format!("admissionPolicy.namespaceSelector.matchLabels.issuelock-e2e-name={ns}"),
        ])
        .output()
        .unwrap();
    let (policy, err) = text(&out);
    assert!(out.status.success(), "helm template: {err}");
    kubectl_ok_stdin(&["apply", "-f", "-"], &policy);
    let me: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["auth", "whoami", "-o", "json"])).unwrap();
    let user = me["status"]["userInfo"]["username"]
        .as_str()
        .unwrap()
        .to_owned();
    let create = |name: &str, issue: &str| {
        let lock = serde_json::json!({
            "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
            "metadata": {"name": name},
            "spec": {"issue": issue, "holder": {"identity": "w", "lease": "l", "user": user}},
        });
        kubectl_stdin(&["create", "-n", &ns, "-f", "-"], &lock.to_string())
    };
    // A Unicode lower() of the key: refused once the policy is in force.
    let refused = eventually(Duration::from_secs(20), "the policy in force", || async {
        let out = create("kelvin-x-1-ce3c9e6a5af0", "\u{212A}elvin/x#1");
        let _ = kubectl(&["delete", "issuelocks", "--all", "-n", &ns]);
        (!out.status.success()).then(|| text(&out).1)
    })
    .await;
    assert!(
        refused.contains("must be the lock name of spec.issue, elvin-x-1-"),
        "{refused}"
    );
    for (name, issue) in [
        ("org-repo-124-ee86bab53236", "org/repo#123"),
        ("org-repo-123-ee86bab5323", "org/repo#123"),
        ("org-repo-123-ee86bab53236x", "org/repo#123"),
    ] {
        let out = create(name, issue);
        assert!(!out.status.success(), "{name} admitted for {issue:?}");
    }
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocol/lock-names.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for v in vectors["valid"].as_array().unwrap() {
        let (issue, name) = (v["key"].as_str().unwrap(), v["name"].as_str().unwrap());
        let out = create(name, issue);
        assert!(out.status.success(), "{name} refused: {}", text(&out).1);
    }
    kubectl_ok_stdin(&["delete", "-f", "-"], &policy);
}
