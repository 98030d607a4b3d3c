//! The user's story in real pods, on the single node of `e2e/node.sh` (`make test` runs it
//! after the process-level suite): the controller installed with Helm from the locally
//! built image, the example worker Deployment (`examples/worker/`) racing over issues with
//! `issuelock run`, and the deaths the controller exists for: a holder pod deleted, a
//! holder container SIGKILLed through the runtime, the leading controller pod deleted.
//!
//! Needs, besides `ISSUELOCK_E2E_KUBECONFIG`: `ISSUELOCK_NODE_DIR` (the node's run
//! directory, for the workers' shared hostPath) and `ISSUELOCK_NODE_CTR` (containerd's
//! socket, to look at and kill containers the way the runtime sees them). The images
//! `ghcr.io/issuelock/issuelock:<version>` and `ghcr.io/issuelock/example-worker:<version>`
//! must be imported (`e2e/image.sh`, `e2e/node.sh import`).

#[path = "support/mod.rs"]
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/issuelock");
const WORKER_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/worker/worker.yaml");
const WORKER_IMAGE: &str = concat!(
    "ghcr.io/issuelock/example-worker:",
    env!("CARGO_PKG_VERSION")
);
/// The example's placeholder for the workers' shared directory.
const EXAMPLE_DONE_DIR: &str = "/var/tmp/issuelock-example-done";
/// The election Lease of the chart's default values.
const ELECTION_LEASE: &str = "issuelock-controller";
const RELEASE: &str = "issuelock";
/// The example worker's uid (and the controller image's).
const NON_ROOT: u32 = 65532;

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{name} is not set: run the node tier with `make test-node` (e2e/run-node.sh)")
        })
}

/// `ctr` on the node's containerd, in the Kubernetes namespace of containers.
fn ctr(args: &[&str]) -> std::process::Output {
    let sock = env_path("ISSUELOCK_NODE_CTR");
    Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .expect("ctr runs")
}

fn ctr_ok(args: &[&str]) -> String {
    let out = ctr(args);
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl` with the `issuelock` plugin on PATH, as a user who installed it.
fn kubectl_with_plugin(plugin_dir: &Path, args: &[&str]) -> String {
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("PATH", path)
        .output()
        .expect("kubectl runs");
    let (o, e) = text(&out);
    assert!(out.status.success(), "kubectl {args:?} failed: {e}");
    o
}

async fn create_namespace(test: &str) -> String {
    let name = format!("{test}-{}", std::process::id());
    kubectl_ok(&["create", "namespace", &name]);
    kubectl_ok(&["label", "namespace", &name, "issuelock.dev/e2e=true"]);
    name
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The containerd id of the pod's (first) container, once it runs.
fn container_id(p: &Pod) -> Option<String> {
    let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    st.state.as_ref()?.running.as_ref()?;
    st.container_id
        .as_ref()?
        .strip_prefix("containerd://")
        .map(str::to_owned)
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

/// The host pid of a container's init process, from the runtime.
fn task_pid(container: &str) -> u32 {
    let tasks = ctr_ok(&["tasks", "ls"]);
    tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == container).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no task for container {container}: {tasks}"))
}

async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The pod (of `pods`) whose controller holds the election Lease. A candidate's identity
/// is its pod name plus a random suffix per process.
async fn election_leader(client: &kube::Client, ns: &str, pods: &[String]) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = api
        .get_opt(ELECTION_LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity?;
    pods.iter()
        .find(|p| {
            holder
                .strip_prefix(p.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| suffix.len() == 10)
        })
        .cloned()
}

fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

/// What the kernel says about a running container's init process: uid and gid, whether
/// it may gain privileges, its effective capabilities, its seccomp mode, and whether its
/// root file system refuses writes.
struct ProcessFacts {
    uids: String,
    gids: String,
    no_new_privs: String,
    cap_eff: String,
    seccomp: String,
    root_write: std::io::Result<()>,
}

fn process_facts(pid: u32) -> ProcessFacts {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // /proc/PID/root is the process's own root mount: a write through it is refused
    // exactly when the container's root file system is read-only, whoever writes.
    let probe = format!("/proc/{pid}/root/issuelock-e2e-write-probe");
    let root_write = std::fs::write(&probe, b"x");
    if root_write.is_ok() {
        let _ = std::fs::remove_file(&probe);
    }
    ProcessFacts {
        uids: field("Uid"),
        gids: field("Gid"),
        no_new_privs: field("NoNewPrivs"),
        cap_eff: field("CapEff"),
        seccomp: field("Seccomp"),
        root_write,
    }
}

fn assert_hardened(what: &str, facts: &ProcessFacts) {
    let id = format!("{NON_ROOT} {NON_ROOT} {NON_ROOT} {NON_ROOT}");
    assert_eq!(facts.uids, id, "{what}: real, effective, saved, fs uid");
    assert_eq!(facts.gids, id, "{what}: gids");
    assert_eq!(facts.no_new_privs, "1", "{what}: no privilege escalation");
    assert_eq!(facts.cap_eff, "0000000000000000", "{what}: no capabilities");
    assert_eq!(
        facts.seccomp, "2",
        "{what}: a seccomp filter (RuntimeDefault)"
    );
    let err = facts.root_write.as_ref().expect_err("root is read-only");
    assert_eq!(err.raw_os_error(), Some(30), "{what}: EROFS, got {err}");
}

/// The pod spec's security settings the chart and the example promise.
fn assert_hardened_spec(p: &Pod) {
    let spec = p.spec.as_ref().unwrap();
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(NON_ROOT.into()));
    let sc = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
}

#[tokio::test]
async fn the_user_story_runs_in_pods() {
    let client = client().await;
    let sys = create_namespace("issuelock-system").await;
    let work = create_namespace("workers").await;
    let scratch = Scratch::new("node-plugin");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_issuelock"),
        scratch.0.join("kubectl-issuelock"),
    )
    .unwrap();

    // === the controller, installed with Helm ===
    let started = Instant::now();
    helm_ok(&[
        "install",
        RELEASE,
        CHART,
        "-n",
        &sys,
        "--set",
        &format!("workers[0].namespace={work},workers[0].serviceAccount=issue-worker"),
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "240s",
    ]);
    eprintln!(
        "helm install --wait: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let deployment: Api<Deployment> = Api::namespaced(client.clone(), &sys);
    let d = deployment.get(RELEASE).await.unwrap();
    assert_eq!(
        d.status.unwrap().ready_replicas,
        Some(2),
        "both replicas Ready"
    );
    let selector = "app.kubernetes.io/name=issuelock";
    let controllers = pods(&client, &sys, selector).await;
    assert_eq!(controllers.len(), 2);
    for p in &controllers {
        assert!(
            ready(p),
            "{} Ready through its readiness probe",
            pod_name(p)
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        let probe_path = |pr: &Option<k8s_openapi::api::core::v1::Probe>| {
            pr.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_hardened_spec(p);
        let pid = task_pid(&container_id(p).expect("controller container running"));
        assert_hardened(&pod_name(p), &process_facts(pid));
    }

    // Exactly one leads: the election Lease names it, and only its metrics say so.
    let names: Vec<String> = controllers.iter().map(pod_name).collect();
    let leader = eventually(Duration::from_secs(60), "a leader", || async {
        election_leader(&client, &sys, &names).await
    })
    .await;
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();
    eventually(Duration::from_secs(30), "leader gauges 1 and 0", || async {
        let mut leading = BTreeMap::new();
        for p in &controllers {
            let m = http_get(&pod_ip(p), 8080, "/metrics")?;
            leading.insert(pod_name(p), metric(&m, "issuelock_leader")?);
        }
        (leading.get(&leader) == Some(&1.0) && leading.get(&standby) == Some(&0.0)).then_some(())
    })
    .await;
    // The PodDisruptionBudget lets one of the two go at a time.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &sys);
    eventually(
        Duration::from_secs(60),
        "PDB allows one disruption",
        || async {
            let pdb = pdbs.list(&ListParams::default()).await.ok()?.items;
            let st = pdb.first()?.status.as_ref()?;
            (st.current_healthy == Some(2) && st.disruptions_allowed == Some(1)).then_some(())
        },
    )
    .await;
    eprintln!("controllers: {leader} leads, {standby} stands by");
    // The default anti-affinity is a preference: on this single node both replicas run.
    for p in &controllers {
        let anti = p
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        assert!(
            anti.is_some_and(|t| t.len() == 1),
            "{} spreads softly",
            pod_name(p)
        );
    }

    // `helm test`: the chart's test pod runs `issuelock list` with the controller's image
    // and its own ServiceAccount (CRD served, RBAC enough).
    let started = Instant::now();
    let tested = helm_ok(&["test", RELEASE, "-n", &sys, "--logs", "--timeout", "180s"]);
    eprintln!(
        "helm test: {:.1} s\n{tested}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        tested.matches("TEST SUITE:").count(),
        1,
        "one test hook: {tested}"
    );
    assert!(
        tested.contains("issuelock-test")
            && tested.contains("Phase:          Succeeded")
            // `issuelock list` prints kubectl's "No resources found" for an empty
            // namespace, a table otherwise.
            && (tested.contains("POD LOGS: issuelock-test\nISSUE")
                || tested.contains("POD LOGS: issuelock-test\nNo resources found in")),
        "{tested}"
    );

    // === the example worker Deployment ===
    let done_dir = env_path("ISSUELOCK_NODE_DIR").join(format!("done-{work}"));
    std::fs::create_dir(&done_dir).unwrap();
    std::os::unix::fs::chown(&done_dir, Some(NON_ROOT), Some(NON_ROOT)).unwrap();
    let manifest = std::fs::read_to_string(WORKER_MANIFEST).unwrap();
    assert!(manifest.contains(EXAMPLE_DONE_DIR) && manifest.contains(WORKER_IMAGE));
    let manifest = manifest.replace(EXAMPLE_DONE_DIR, done_dir.to_str().unwrap());
    let out = kubectl_stdin(&["apply", "-n", &work, "-f", "-"], &manifest);
    assert!(out.status.success(), "{:?}", text(&out));
    let issues: Vec<String> = {
        let y: serde_json::Value = serde_saphyr::from_multiple(&manifest)
            .unwrap()
            .into_iter()
            .find(|d: &serde_json::Value| d["kind"] == "ConfigMap")
            .unwrap();
        y["data"]["issues"]
            .as_str()
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    kubectl_ok(&[
        "rollout",
        "status",
        "deployment/issue-worker",
        "-n",
        &work,
        "--timeout=180s",
    ]);
    let workers = pods(&client, &work, "app.kubernetes.io/name=issue-worker").await;
    assert_eq!(workers.len(), 3);
    let worker_names: Vec<String> = workers.iter().map(pod_name).collect();

    // While they race: the holders, as kubectl and the plugin show them (best effort: a
    // lock is held for about two seconds; the reclaim scenarios below assert it).
    let lock_names: Vec<(String, String)> = issues
        .iter()
        .map(|i| {
            let n = issuelock::IssueKey::parse(i).unwrap().lock_name();
            (i.clone(), n)
        })
        .collect();
    let race_started = Instant::now();
    let mut snapshot = None;
    let done = |dir: &Path| {
        lock_names
            .iter()
            .filter(|(_, n)| dir.join(n).exists())
            .count()
    };
    while done(&done_dir) < issues.len() {
        assert!(
            race_started.elapsed() < Duration::from_secs(180),
            "workers processed {} of {} issues in 180 s",
            done(&done_dir),
            issues.len()
        );
        if snapshot.is_none() {
            let out = kubectl_ok(&["get", "issuelocks", "-n", &work]);
            if worker_names.iter().any(|w| out.contains(w.as_str())) {
                snapshot = Some(out);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} issues processed by 3 worker pods in {:.1} s; kubectl get issuelocks meanwhile:\n{}",
        issues.len(),
        race_started.elapsed().as_secs_f64(),
        snapshot.as_deref().unwrap_or("(no lock seen)")
    );
    // Exactly once, from the workers' own output: one line per issue in the shared
    // directory, and the same lines in the pods' logs once every worker is idle.
    let logs = eventually(Duration::from_secs(60), "every worker idle", || async {
        let mut all = String::new();
        for w in &worker_names {
            let out = kubectl(&["logs", "-n", &work, w]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            if !log.contains("all issues done") {
                return None;
            }
            all.push_str(&log);
        }
        Some(all)
    })
    .await;
    let mut processed_in_logs: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("processed "))
        .collect();
    processed_in_logs.sort();
    let mut processed_in_files = Vec::new();
    for (issue, name) in &lock_names {
        let content = std::fs::read_to_string(done_dir.join(name)).unwrap();
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), 1, "{issue} processed exactly once: {content}");
        assert!(
            lines[0].starts_with(&format!("processed {issue} by ")),
            "{content}"
        );
        assert!(
            worker_names.iter().any(|w| lines[0].contains(w.as_str())),
            "a worker pod did it: {content}"
        );
        processed_in_files.push(lines[0].to_owned());
    }
    processed_in_files.sort();
    assert_eq!(processed_in_logs, processed_in_files, "logs: {logs}");
    let held: Api<issuelock::IssueLock> = Api::namespaced(client.clone(), &work);
    assert!(
        held.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A pod scrapes the controllers' metrics Service (through kube-proxy).
    let services: Api<Service> = Api::namespaced(client.clone(), &sys);
    let svc = services
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items;
    assert_eq!(svc.len(), 1, "one metrics Service");
    let spec = svc[0].spec.as_ref().unwrap();
    let url = format!(
        "http://{}:{}/metrics",
        spec.cluster_ip.as_ref().unwrap(),
        spec.ports.as_ref().unwrap()[0].port
    );
    eventually(
        Duration::from_secs(30),
        "metrics through the Service",
        || async {
            let out = kubectl(&[
                "exec",
                "-n",
                &work,
                &worker_names[0],
                "--",
                "wget",
                "-q",
                "-O",
                "-",
                &url,
            ]);
            String::from_utf8_lossy(&out.stdout)
                .contains("issuelock_leader")
                .then_some(())
        },
    )
    .await;

    // The workers run hardened too: checked from inside the pod.
    let w = &worker_names[0];
    assert_eq!(
        kubectl_ok(&["exec", "-n", &work, w, "--", "id", "-u"]).trim(),
        NON_ROOT.to_string()
    );
    let touch = kubectl(&["exec", "-n", &work, w, "--", "touch", "/probe"]);
    let (_, err) = text(&touch);
    assert!(
        !touch.status.success() && err.contains("Read-only file system"),
        "{err}"
    );
    assert_hardened_spec(&workers[0]);
    assert_hardened(
        w,
        &process_facts(task_pid(&container_id(&workers[0]).unwrap())),
    );

    // === a holder pod deleted while it holds: reclaimed within seconds ===
    let issue = "acme/node#1";
    let holder = start_holder(&client, &work, "holder-deleted", issue).await;
    let lock = wait_taken(&client, &work, issue).await;
    assert_eq!(lock.spec.holder.identity, "holder-deleted");
    let shown = kubectl_ok(&["get", "issuelocks", "-n", &work]);
    assert!(shown.contains("holder-deleted"), "{shown}");
    let shown = kubectl_with_plugin(&scratch.0, &["issuelock", "list", "-n", &work]);
    assert!(shown.contains("holder-deleted"), "{shown}");
    eprintln!("kubectl issuelock list -n {work}:\n{shown}");
    // The node goes dark (its kubelet stopped) and the pod is force-deleted, as an
    // administrator or the node lifecycle controller would: the holder process keeps
    // running and heartbeating, only its pod is gone; the controller must notice.
    let kubelet = Kubelet::pause();
    assert!(container_id(&holder).is_some());
    kubectl_ok(&[
        "delete",
        "pod",
        "holder-deleted",
        "-n",
        &work,
        "--grace-period=0",
        "--force",
    ]);
    let deleted = Instant::now();
    let gone = wait_gone(&client, &work, issue, Duration::from_secs(30)).await;
    let took = gone.duration_since(deleted);
    // Two mechanisms race, both by design: the controller reclaims on pod evidence (an
    // Event), the garbage collector follows the ownerReferences lock → Lease → pod.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by = if event_reasons(&client, &work)
        .await
        .iter()
        .any(|r| r == "HolderPodDeleted")
    {
        "the controller (Event HolderPodDeleted)"
    } else {
        "the garbage collector (ownerReferences lock → Lease → pod)"
    };
    drop(kubelet);
    eprintln!("holder pod force-deleted: lock removed by {by} after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // === the leading controller pod deleted: the standby takes over ===
    kubectl_ok(&["delete", "pod", &leader, "-n", &sys, "--wait=false"]);
    let deleted = Instant::now();
    // The deleted leader gives its Lease back on shutdown: the standby usually wins, but
    // the Deployment's replacement pod may be up in time to win instead. Either is right;
    // the deleted pod leading again is not.
    let new_leader = eventually(
        Duration::from_secs(60),
        "another controller leading",
        || async {
            let pods = Api::<Pod>::namespaced(client.clone(), &sys)
                .list(&Default::default())
                .await
                .ok()?;
            let others: Vec<String> = pods
                .items
                .iter()
                .map(pod_name)
                .filter(|n| *n != leader)
                .collect();
            election_leader(&client, &sys, &others).await
        },
    )
    .await;
    let successor = if new_leader == standby {
        "the standby"
    } else {
        "its replacement"
    };
    eprintln!(
        "leader {leader} deleted: {new_leader} ({successor}) leads after {:?}",
        deleted.elapsed()
    );

    // === a holder container SIGKILLed through the runtime: reclaimed after its Lease
    // expires, by the new leader; the pod stays and its container restarts ===
    let issue = "acme/node#2";
    let holder = start_holder(&client, &work, "holder-killed", issue).await;
    let lock = wait_taken(&client, &work, issue).await;
    assert_eq!(lock.spec.holder.identity, "holder-killed");
    ctr_ok(&[
        "tasks",
        "kill",
        "--signal",
        "SIGKILL",
        &container_id(&holder).unwrap(),
    ]);
    let killed = Instant::now();
    let gone = wait_gone(&client, &work, issue, Duration::from_secs(60)).await;
    let took = gone.duration_since(killed);
    eprintln!("holder container SIGKILLed: lock reclaimed after {took:?} (Lease duration 6 s)");
    assert!(
        took > Duration::from_secs(2),
        "reclaimed on Lease expiry, not before: {took:?}"
    );
    wait_reclaim_event(&client, &work, "HolderLeaseExpired").await;
    let reporter = events(&client, &work)
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("HolderLeaseExpired"))
        .and_then(|e| e.reporting_instance);
    assert_eq!(
        reporter.as_deref(),
        Some(new_leader.as_str()),
        "the new leader reclaimed"
    );
    let api: Api<Pod> = Api::namespaced(client.clone(), &work);
    let uid = holder.metadata.uid.clone();
    eventually(
        Duration::from_secs(60),
        "the container restarted",
        || async {
            let p = api.get("holder-killed").await.ok()?;
            (p.metadata.uid == uid && restarts(&p) >= 1).then_some(())
        },
    )
    .await;

    helm_ok(&[
        "uninstall",
        RELEASE,
        "-n",
        &sys,
        "--wait",
        "--timeout",
        "120s",
    ]);
    kubectl_ok(&["delete", "namespace", &work, &sys, "--wait=false"]);
}

/// Waits (30 s at most: the node and the machine are busy) for an Event with `reason` in
/// `ns`, naming the reasons seen if it does not come.
async fn wait_reclaim_event(client: &kube::Client, ns: &str, reason: &str) {
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        let reasons = event_reasons(client, ns).await;
        if reasons.iter().any(|r| r == reason) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "no {reason} Event within {limit:?}; Events seen: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's kubelet, stopped (SIGSTOP) until dropped.
struct Kubelet(String);

impl Kubelet {
    fn pause() -> Self {
        let pid = std::fs::read_to_string(env_path("ISSUELOCK_NODE_DIR").join("kubelet.pid"))
            .unwrap()
            .trim()
            .to_owned();
        signal_pid(&pid, "STOP");
        Kubelet(pid)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        signal_pid(&self.0, "CONT");
    }
}

fn signal_pid(pid: &str, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// A pod that takes `issue` with `issuelock run` and holds it (the command sleeps). If its
/// container is restarted it does not take the lock again: it only sleeps.
async fn start_holder(client: &kube::Client, ns: &str, name: &str, issue: &str) -> Pod {
    let script = "if [ -e /scratch/started ]; then exec sleep 1000000; fi; touch /scratch/started; \
                  exec issuelock run --issue \"$ISSUE\" -- sleep 1000000";
    let env = |name: &str, value: &str| serde_json::json!({"name": name, "value": value});
    let field = |name: &str, path: &str| serde_json::json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "holder"}},
        "spec": {
            "serviceAccountName": "issue-worker",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": true, "runAsUser": NON_ROOT, "runAsGroup": NON_ROOT,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "holder",
                "image": WORKER_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": [
                    field("POD_NAME", "metadata.name"),
                    field("POD_NAMESPACE", "metadata.namespace"),
                    field("POD_UID", "metadata.uid"),
                    env("ISSUE", issue),
                    env("ISSUELOCK_LEASE_DURATION_SECONDS", "6"),
                    env("ISSUELOCK_RENEW_DEADLINE_SECONDS", "4"),
                    env("ISSUELOCK_RENEW_INTERVAL_SECONDS", "1"),
                ],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    });
    let out = kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &pod.to_string());
    assert!(out.status.success(), "{:?}", text(&out));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(120), "holder pod running", || async {
        let p = api.get(name).await.ok()?;
        container_id(&p).map(|_| p)
    })
    .await
}
