//! `make bench-scale`: the controller at scale. For each size, in a namespace of its own on
//! the control plane of `$KUBECONFIG`: W holder Pods (plain objects, no node), W heartbeat
//! Leases renewed by this program every `--renew-every` seconds (one write per holder,
//! spread evenly), L held locks spread over the holders. Then a controller process
//! (`--controller`, or `--baseline` for the before/after comparison) is started on it, and
//! this prints: time until every lock was judged once (first start, and after a restart,
//! when status is already written), controller RSS and CPU at steady state, API writes/s
//! by the controller and by the holders (kube-apiserver's `apiserver_request_total`),
//! reclaim latency of one dead holder (its Pod deleted) beside the floor (a raw GET round
//! trip through the same API server, measured in the same run), and live locks reclaimed
//! (must be 0). Prints figures; never fails on a time limit.
//!
//! `cargo bench --bench scale -- --controller BIN [--baseline BIN] [--sizes 1000/100,10000/200]`

use futures::StreamExt;
use issuelock::crd::{HEARTBEAT_LABEL, HOLDER_LEASE_LABEL};
use issuelock::lock::ACQUIRE_NONCE_ANNOTATION;
use issuelock::{Holder, HolderPod, IssueKey, IssueLock, IssueLockSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Heartbeat Lease duration of the simulated holders (the client's default).
const LEASE_SECONDS: i32 = 15;
/// Objects created at once.
const CREATE_CONCURRENCY: usize = 24;

struct Args {
    controller: String,
    baseline: Option<String>,
    baseline_size: (usize, usize),
    sizes: Vec<(usize, usize)>,
    renew_every: Duration,
    window: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        controller: String::new(),
        baseline: None,
        baseline_size: (2000, 100),
        sizes: vec![(1000, 100), (10_000, 200)],
        renew_every: Duration::from_secs(5),
        window: Duration::from_secs(30),
    };
    let size = |s: &str| -> (usize, usize) {
        let (l, w) = s.split_once('/').expect("size is LOCKS/HOLDERS");
        (l.parse().expect("locks"), w.parse().expect("holders"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--controller" => args.controller = val(),
            "--baseline" => args.baseline = Some(val()),
            "--baseline-size" => args.baseline_size = size(&val()),
            "--sizes" => args.sizes = val().split(',').map(size).collect(),
            "--renew-every" => args.renew_every = Duration::from_secs(val().parse().unwrap()),
            "--window" => args.window = Duration::from_secs(val().parse().unwrap()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!args.controller.is_empty(), "--controller BIN is required");
    args
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let client = kube::Client::try_default()
        .await
        .expect("a kubeconfig ($KUBECONFIG)");
    let mut runs = vec![];
    if let Some(baseline) = &args.baseline {
        let (l, w) = args.baseline_size;
        runs.push(("baseline", baseline.clone(), l, w));
    }
    for &(l, w) in &args.sizes {
        runs.push(("this", args.controller.clone(), l, w));
    }
    let mut rows = vec![];
    for (i, (label, bin, locks, holders)) in runs.into_iter().enumerate() {
        let ns = format!("scale-{}-{i}-{locks}", std::process::id());
        eprintln!("== {label}: {locks} locks / {holders} holders in {ns}");
        let row = run_one(&client, &args, &ns, label, &bin, locks, holders).await;
        eprintln!("{}", row.line());
        rows.push(row);
        remove_namespace(&client, &ns).await;
    }
    println!();
    println!("{}", Row::header());
    for row in &rows {
        println!("{}", row.line());
    }
}

/// The figures of one run.
#[derive(Default)]
struct Row {
    label: &'static str,
    locks: usize,
    holders: usize,
    first_start: f64,
    restart: f64,
    restart_writes: f64,
    rss_mib: f64,
    restart_rss_mib: f64,
    cpu_pct: f64,
    ctl_writes: f64,
    holder_writes: f64,
    reclaim_s: f64,
    floor_ms: f64,
    dead_locks: usize,
    wrongly_reclaimed: i64,
}

impl Row {
    fn header() -> String {
        format!(
            "| {} |\n|{}",
            [
                "controller",
                "locks / holders",
                "all judged, first start (s)",
                "all judged after restart (s)",
                "controller writes during restart",
                "RSS (MiB)",
                "RSS after restart (MiB)",
                "CPU (% of a core)",
                "controller writes/s",
                "holder writes/s",
                "dead holder's locks gone (s)",
                "floor: raw GET p50 (ms)",
                "live locks reclaimed",
            ]
            .join(" | "),
            "---|".repeat(13)
        )
    }

    fn line(&self) -> String {
        format!(
            "| {} | {} / {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.1} | {:.2} ({} locks; {:.0}× floor) | {:.1} | {} |",
            self.label,
            self.locks,
            self.holders,
            self.first_start,
            self.restart,
            self.restart_writes,
            self.rss_mib,
            self.restart_rss_mib,
            self.cpu_pct,
            self.ctl_writes,
            self.holder_writes,
            self.reclaim_s,
            self.dead_locks,
            self.reclaim_s * 1e3 / self.floor_ms.max(1e-9),
            self.floor_ms,
            self.wrongly_reclaimed,
        )
    }
}

async fn run_one(
    client: &kube::Client,
    args: &Args,
    ns: &str,
    label: &'static str,
    bin: &str,
    locks: usize,
    holders: usize,
) -> Row {
    let mut row = Row {
        label,
        locks,
        holders,
        ..Row::default()
    };
    create_namespace(client, ns).await;
    let holder_uids = create_holders(client, ns, holders).await;
    let renewing = Arc::new(AtomicBool::new(true));
    let dead = Arc::new(std::sync::Mutex::new(None::<String>));
    let renewer = tokio::spawn(renew_leases(
        client.clone(),
        ns.to_owned(),
        holders,
        args.renew_every,
        renewing.clone(),
        dead.clone(),
    ));
    let t = Instant::now();
    create_locks(client, ns, locks, &holder_uids).await;
    eprintln!(
        "   created {locks} locks in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // First start: every lock is new to the controller (status written once per lock).
    let started = Instant::now();
    let mut ctl = ControllerProc::start(bin, ns);
    row.first_start = ctl.until_all_judged(locks).await;
    eprintln!("   first start: all judged in {:.1}s", row.first_start);
    // Let the first writes (one status per new lock) settle: no reconcile for 3 s, or
    // 15 minutes at most (a controller that rechecks every lock periodically never settles).
    let settled = ctl
        .until_quiet(Duration::from_secs(3), Duration::from_secs(900))
        .await;
    eprintln!(
        "   first start: {} after {:.1}s",
        if settled.is_some() {
            "settled (3 s without a reconcile)"
        } else {
            "NOT settled"
        },
        started.elapsed().as_secs_f64()
    );
    let (writes0, cpu0, t0) = (
        api_writes(client, ns).await,
        ctl.cpu_ticks(),
        Instant::now(),
    );
    tokio::time::sleep(args.window).await;
    let (writes1, cpu1, secs) = (
        api_writes(client, ns).await,
        ctl.cpu_ticks(),
        t0.elapsed().as_secs_f64(),
    );
    row.rss_mib = ctl.rss_kib() as f64 / 1024.0;
    row.cpu_pct = (cpu1 - cpu0) as f64 / ticks_per_second() / secs * 100.0;
    row.ctl_writes = (writes1.controller - writes0.controller) / secs;
    row.holder_writes = (writes1.holders - writes0.holders) / secs;

    // Restart: status already written, every lock judged again.
    ctl.stop();
    let before = api_writes(client, ns).await;
    let mut ctl = ControllerProc::start(bin, ns);
    row.restart = ctl.until_all_judged(locks).await;
    row.restart_writes = api_writes(client, ns).await.controller - before.controller;
    // Memory of a controller that only listed and judged (no first-start writes behind it),
    // read as at the first start: once no reconcile ran for 3 s, after the steady window.
    ctl.until_quiet(Duration::from_secs(3), Duration::from_secs(120))
        .await;
    tokio::time::sleep(args.window).await;
    row.restart_rss_mib = ctl.rss_kib() as f64 / 1024.0;
    eprintln!(
        "   restart: all judged in {:.1}s, {} controller writes",
        row.restart, row.restart_writes
    );

    // One holder dies: its pod is deleted and its Lease no longer renewed.
    row.floor_ms = raw_get_p50(client, ns).await.as_secs_f64() * 1e3;
    let victim = "holder-0".to_owned();
    *dead.lock().unwrap() = Some(victim.clone());
    let lock_api: Api<IssueLock> = Api::namespaced(client.clone(), ns);
    let of_victim = ListParams::default()
        .labels(&format!("{HOLDER_LEASE_LABEL}={victim}"))
        .match_any();
    row.dead_locks = lock_api
        .list_metadata(&of_victim)
        .await
        .unwrap()
        .items
        .len();
    let t = Instant::now();
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    loop {
        let left = lock_api
            .list_metadata(&ListParams::default().labels(&format!("{HOLDER_LEASE_LABEL}={victim}")))
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if left == 0 || t.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row.reclaim_s = t.elapsed().as_secs_f64();
    // Live locks must all be there, a lease duration and more later.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 + 5)).await;
    let left = count_locks(client, ns).await;
    row.wrongly_reclaimed = (locks - row.dead_locks) as i64 - left as i64;
    renewing.store(false, Ordering::Relaxed);
    let _ = renewer.await;
    ctl.stop();
    row
}

/// Deletes a run's namespace and waits until it is gone, so that no clean-up of one run
/// writes during the next one (write counts are cluster-wide). The locks go first, in one
/// delete-collection: deleted with their owner Leases, each would be a DELETE of the
/// cluster's garbage collector, at its client's rate limit.
async fn remove_namespace(client: &kube::Client, ns: &str) {
    let t = Instant::now();
    let _ = Api::<IssueLock>::namespaced(client.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    while t.elapsed() < Duration::from_secs(600) {
        if let Ok(None) = namespaces.get_opt(ns).await {
            eprintln!(
                "   namespace {ns} removed in {:.1}s",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("   namespace {ns} still there after 600 s");
}

async fn create_namespace(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

/// A holder's Pod and heartbeat Lease, by uid.
struct HolderUids {
    pod: String,
    lease: String,
}

/// Creates `n` holder Pods and their heartbeat Leases.
async fn create_holders(client: &kube::Client, ns: &str, n: usize) -> Vec<HolderUids> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let (pods, leases) = (pods.clone(), leases.clone());
            async move {
                let name = format!("holder-{i}");
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"containers": [{"name": "w", "image": "worker:bench"}]}
                }))
                .unwrap();
                let uid = pods
                    .create(&PostParams::default(), &pod)
                    .await
                    .unwrap()
                    .metadata
                    .uid
                    .unwrap();
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {HEARTBEAT_LABEL: "true"}},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                             "renewTime": MicroTime(Timestamp::now())}
                }))
                .unwrap();
                let lease = leases.create(&PostParams::default(), &lease).await.unwrap();
                HolderUids {
                    pod: uid,
                    lease: lease.metadata.uid.unwrap(),
                }
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .collect()
        .await
}

/// Creates `n` locks spread over the holders, each as the library makes it: label, acquire
/// nonce annotation, ownerReference to the holder's Lease, the holder's pod and user.
async fn create_locks(client: &kube::Client, ns: &str, n: usize, holders: &[HolderUids]) {
    let api: Api<IssueLock> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let h = i % holders.len();
            let holder = format!("holder-{h}");
            let uid = holders[h].pod.clone();
            let lease_uid = holders[h].lease.clone();
            async move {
                let issue = format!("bench/scale#{i}");
                let mut lock = IssueLock::new(
                    &IssueKey::parse(&issue).unwrap().lock_name(),
                    IssueLockSpec {
                        issue,
                        holder: Holder {
                            identity: holder.clone(),
                            pod: Some(HolderPod {
                                name: holder.clone(),
                                uid,
                                namespace: None,
                            }),
                            lease: holder.clone(),
                            user: Some(format!("system:serviceaccount:{ns}:worker")),
                        },
                        max_hold_seconds: None,
                        signature: None,
                    },
                );
                lock.metadata.labels =
                    Some([(HOLDER_LEASE_LABEL.to_owned(), holder.clone())].into());
                lock.metadata.annotations = Some(
                    [(
                        ACQUIRE_NONCE_ANNOTATION.to_owned(),
                        format!("{:010x}", i * 2_654_435_761 % (1 << 40)),
                    )]
                    .into(),
                );
                lock.metadata.owner_references =
                    Some(vec![issuelock::crd::lease_owner(&holder, &lease_uid)]);
                // Retried: the API server may shed load while the controller starts.
                for _ in 0..20 {
                    match api.create(&PostParams::default(), &lock).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 409 => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                panic!("could not create lock {i}");
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Renews every holder's Lease once per `every`, spread evenly, except the dead one's.
async fn renew_leases(
    client: kube::Client,
    ns: String,
    holders: usize,
    every: Duration,
    running: Arc<AtomicBool>,
    dead: Arc<std::sync::Mutex<Option<String>>>,
) {
    let api: Api<Lease> = Api::namespaced(client, &ns);
    let gap = every / holders as u32;
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0;
    while running.load(Ordering::Relaxed) {
        tick.tick().await;
        let name = format!("holder-{}", i % holders);
        i += 1;
        if dead.lock().unwrap().as_deref() == Some(name.as_str()) {
            continue;
        }
        let patch = serde_json::json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
        let api = api.clone();
        tokio::spawn(async move {
            let _ = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        });
    }
}

async fn count_locks(client: &kube::Client, ns: &str) -> usize {
    let api: Api<IssueLock> = Api::namespaced(client.clone(), ns);
    let mut n = 0;
    let mut params = ListParams::default().limit(5000);
    loop {
        let page = api.list_metadata(&params).await.unwrap();
        n += page.items.len();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => return n,
        }
    }
}

/// Median of 200 raw GETs of one Lease through the same API server: the floor.
async fn raw_get_p50(client: &kube::Client, ns: &str) -> Duration {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut v = vec![];
    for _ in 0..200 {
        let t = Instant::now();
        let _ = api.get("holder-1").await;
        v.push(t.elapsed());
    }
    v.sort();
    v[v.len() / 2]
}

/// Write requests counted by kube-apiserver, by who makes them: the controller writes
/// IssueLocks (status, deletes) and Events; holders write Leases.
struct Writes {
    controller: f64,
    holders: f64,
}

async fn api_writes(client: &kube::Client, _ns: &str) -> Writes {
    let mut text = String::new();
    for attempt in 0..10 {
        let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
        match client.request_text(req).await {
            Ok(t) => {
                text = t;
                break;
            }
            Err(e) if attempt < 9 => {
                eprintln!("   apiserver /metrics failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("apiserver /metrics: {e}"),
        }
    }
    let mut w = Writes {
        controller: 0.0,
        holders: 0.0,
    };
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let labels = parse_labels(line);
        let verb = labels.get("verb").map(String::as_str).unwrap_or("");
        if !matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match labels.get("resource").map(String::as_str) {
            Some("issuelocks") | Some("events") => w.controller += value,
            Some("leases") if verb != "DELETE" => w.holders += value,
            Some("leases") => w.controller += value,
            _ => {}
        }
    }
    w
}

fn parse_labels(line: &str) -> HashMap<String, String> {
    let inner = line
        .split_once('{')
        .and_then(|(_, r)| r.split_once('}'))
        .map(|(l, _)| l)
        .unwrap_or("");
    inner
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect()
}

fn ticks_per_second() -> f64 {
    // USER_HZ: 100 on every Linux architecture this runs on.
    100.0
}

/// A controller process with its metrics endpoint.
struct ControllerProc {
    child: Child,
    port: u16,
    started: Instant,
}

impl ControllerProc {
    fn start(bin: &str, ns: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("issuelock-bench-scale-{ns}-{port}.log")),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["controller", "-n", ns, "--leader-election=false"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("controller binary");
        Self {
            child,
            port,
            started: Instant::now(),
        }
    }

    async fn metrics(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .ok()?
            .ok()?;
        Some(out)
    }

    /// Seconds from start until the controller has judged `locks` locks.
    async fn until_all_judged(&mut self, locks: usize) -> f64 {
        loop {
            if let Some(text) = self.metrics().await {
                let judged = text
                    .lines()
                    .find_map(|l| l.strip_prefix("issuelock_reconcile_duration_seconds_count "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                if judged >= locks as f64 {
                    return self.started.elapsed().as_secs_f64();
                }
            }
            if self.started.elapsed() > Duration::from_secs(600) {
                return f64::NAN;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reconciles(&self) -> f64 {
        self.metrics()
            .await
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("issuelock_reconcile_duration_seconds_count "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    }

    /// Waits until no reconcile happened for `quiet`, or `limit` passed.
    /// Waits until no reconcile happened for `quiet`, at most `limit`; the time it waited,
    /// or `None` when it never got quiet.
    async fn until_quiet(&self, quiet: Duration, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let (mut last, mut since) = (self.reconciles().await, Instant::now());
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.reconciles().await;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return Some(start.elapsed());
            }
        }
        None
    }

    fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default()
    }

    fn rss_kib(&self) -> u64 {
        self.proc_status()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 14th field
        // of the line, stime the 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    }

    fn stop(&mut self) {
        let _ = nix_kill(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_kill(pid: u32) -> nix::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
}
