//! Shared fixtures of the end-to-end suite: the cluster under test, a namespace per test,
//! real `kubectl` and `issuelock` processes.
#![allow(dead_code)]

use issuelock::{LockClient, LockConfig};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Path of the kubeconfig of the cluster under test.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("ISSUELOCK_E2E_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "ISSUELOCK_E2E_KUBECONFIG is not set: run `make test-e2e` (starts a local control \
             plane), or set it to the kubeconfig of an existing cluster"
        ),
    }
}

/// The `kubectl` to use: the one on PATH (the harness puts its own, of the API server's
/// version, first).
pub fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("kubectl runs")
}

/// Runs kubectl with `stdin` as input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    kubectl_stdin_as(&kubeconfig(), args, stdin)
}

/// Like [`kubectl_stdin`], authenticating with `kubeconfig`.
pub fn kubectl_stdin_as(kubeconfig: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Like [`kubectl`], panicking with its stderr unless it succeeds; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `issuelock` binary under test, pointed at the cluster under test.
pub fn issuelock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_issuelock"));
    c.env("KUBECONFIG", kubeconfig())
        .env_remove("POD_NAME")
        .env_remove("POD_UID")
        .env_remove("POD_NAMESPACE");
    c
}

static CRD: Once = Once::new();

/// Installs the committed CRD (once per test binary) and waits until it is Established.
pub fn install_crd() {
    CRD.call_once(apply_crd);
}

/// Applies the committed CRD (every time) and waits until it is Established.
pub fn apply_crd() {
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/issuelock.dev_issuelocks.yaml"
    );
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crd]);
    wait_crd_established();
}

/// Waits (up to 60 s) until the IssueLock CRD is served.
pub fn wait_crd_established() {
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/issuelocks.issuelock.dev",
    ]);
}

/// `helm` against the cluster under test: whether it succeeded, its stdout and stderr.
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("helm")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("helm runs");
    let (o, e) = text(&out);
    (out.status.success(), o, e)
}

/// `helm` that must succeed; its stdout.
pub fn helm_ok(args: &[&str]) -> String {
    let (ok, o, e) = helm(args);
    assert!(ok, "helm {args:?} failed: {o}{e}");
    o
}

/// An admin client of the cluster under test.
pub async fn client() -> kube::Client {
    client_for(&kubeconfig()).await
}

/// A client built from the kubeconfig at `path`.
pub async fn client_for(path: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    kube::Client::try_from(config).expect("client")
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh namespace for one test, with the CRD installed; deleted when the returned
/// guard is dropped, after printing its state when the test is failing.
pub async fn namespace(client: &kube::Client, test: &str) -> TestNamespace {
    install_crd();
    let name = format!(
        "e2e-{}-{}-{}",
        issuelock::key::slug(test, 30, "t"),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("issuelock.dev/e2e".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    TestNamespace(name)
}

/// A test namespace, removed on drop (without waiting for it to go). When the test is
/// panicking, its IssueLocks, Leases, pods and Events are printed to stderr first, so a
/// failed assertion shows the state it failed in.
pub struct TestNamespace(String);

impl TestNamespace {
    /// The namespace's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn dump(&self) {
        let ns = self.as_str();
        eprintln!("==== state of namespace {ns} at the failure ====");
        for args in [
            &["get", "issuelocks", "-n", ns, "-o", "yaml"][..],
            &["get", "leases,pods", "-n", ns, "-o", "wide"][..],
            &[
                "get",
                "events",
                "-n",
                ns,
                "--sort-by=.metadata.creationTimestamp",
            ][..],
        ] {
            eprintln!("---- kubectl {}", args.join(" "));
            if let Some(out) = kubectl_quietly(args) {
                let (stdout, stderr) = text(&out);
                eprintln!("{stdout}{stderr}");
            }
        }
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TestNamespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TestNamespace {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        kubectl_quietly(&[
            "delete",
            "namespace",
            &self.0,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// `kubectl` that never panics (for use in `Drop`, also while panicking).
fn kubectl_quietly(args: &[&str]) -> Option<Output> {
    let kubeconfig = std::env::var_os("ISSUELOCK_E2E_KUBECONFIG")?;
    Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .ok()
}

/// Runs `cmd` to its end and asserts that it exited with `code` and said `says` on
/// stderr; returns its stderr.
pub fn exits_with(cmd: &mut Command, code: i32, says: &str) -> String {
    let out = cmd.output().expect("the command runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    stderr
}

/// `issuelock run -n ns --issue issue`, for the caller to add flags and `-- COMMAND`.
pub fn issuelock_run(ns: &str, issue: &str) -> Command {
    let mut cmd = issuelock();
    cmd.args(["run", "-n", ns, "--issue", issue]);
    cmd
}

/// A lock client for `identity` in `ns`, as a worker would build one.
pub async fn lock_client(client: &kube::Client, ns: &str, identity: &str) -> LockClient {
    try_lock_client(client, ns, identity)
        .await
        .expect("lock client starts")
}

/// Like [`lock_client`], returning the start error.
pub async fn try_lock_client(
    client: &kube::Client,
    ns: &str,
    identity: &str,
) -> issuelock::Result<LockClient> {
    LockClient::start(client.clone(), lock_config(ns, identity)).await
}

/// The default lock configuration for `identity` (no pod) in `ns`, to adjust before
/// starting a client with it.
pub fn lock_config(ns: &str, identity: &str) -> LockConfig {
    LockConfig::new(ns, issuelock::HolderIdentity::new(identity))
}

/// A kubeconfig file for the cluster under test that authenticates with `token`.
pub fn token_kubeconfig(dir: &std::path::Path, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut doc: serde_json::Value = serde_saphyr::from_str(&admin).unwrap();
    doc["users"] = serde_json::json!([{"name": "admin", "user": {"token": token}}]);
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_saphyr::to_string(&doc).unwrap()).unwrap();
    path
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "issuelock-e2e-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// stdout and stderr of a finished process, for assertions.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `GET path` from `host:port` (one request per connection), if it answered
/// 200 within 5 s.
pub fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `signal` (e.g. "KILL", "STOP", "CONT") to a whole process group.
pub fn signal_group(pgid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} -{pgid}");
}

/// SIGKILLs the process group led by `child` (quietly: it may be gone already) and reaps
/// `child`: what every test process does when dropped.
pub fn kill_group_and_reap(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = child.wait();
}

/// A real `issuelock controller` process scoped to one namespace, killed on drop.
pub struct ControllerProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl ControllerProcess {
    pub fn start(ns: &str) -> Self {
        Self::start_with(ns, &[])
    }

    pub fn start_with(ns: &str, extra: &[&str]) -> Self {
        Self::start_as(ns, None, extra)
    }

    /// Starts a controller authenticating with `kubeconfig` (default: the admin's).
    pub fn start_as(ns: &str, kubeconfig: Option<&std::path::Path>, extra: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("issuelock-controller-{ns}-{port}.log")),
        )
        .unwrap();
        let mut cmd = issuelock();
        if let Some(kc) = kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["controller", "-n", ns, "--http-addr", &addr];
        if !extra.contains(&"--leader-election-namespace") {
            args.extend(["--leader-election-namespace", ns]);
        }
        let child = cmd
            .args(args)
            .args(FAST_LEADER)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("ISSUELOCK_E2E_CONTROLLER_LOG")
                    .unwrap_or_else(|_| "info,kube_runtime=warn".into()),
            )
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let c = Self { child, port };
        c.wait_ready();
        c
    }

    fn wait_ready(&self) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.get("/readyz").is_some_and(|b| b.starts_with("ok")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("controller not ready within 30 s");
    }

    /// GET `path` from the controller's HTTP endpoint (three tries).
    pub fn get(&self, path: &str) -> Option<String> {
        (0..3).find_map(|_| self.get_once(path))
    }

    fn get_once(&self, path: &str) -> Option<String> {
        http_get("127.0.0.1", self.port, path)
    }

    pub fn kill(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        kill_group_and_reap(&mut self.child);
    }
}

/// A real worker: `issuelock run` holding one issue while `sleep` runs. `run` is in a
/// process group of its own, so a signal to the group reaches `run` alone; `run` contains
/// the command (SIGKILL of `run` kills it, SIGSTOP of `run` stops it once the trust
/// deadline passes). Killed on drop.
pub struct WorkerProcess {
    child: Option<std::process::Child>,
    pgid: u32,
}

/// Fast leader-election settings for tests: lease 6 s, deadline 4 s, retry 1 s.
pub const FAST_LEADER: [&str; 6] = [
    "--leader-lease-duration-seconds",
    "6",
    "--leader-renew-deadline-seconds",
    "4",
    "--leader-retry-period-seconds",
    "1",
];

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Fast heartbeat settings for tests: lease 6 s, deadline 4 s, renew every 1 s.
pub const FAST_HEARTBEAT: [&str; 6] = [
    "--lease-duration-seconds",
    "6",
    "--renew-deadline-seconds",
    "4",
    "--renew-interval-seconds",
    "1",
];

impl WorkerProcess {
    pub fn start(
        ns: &str,
        identity: &str,
        issue: &str,
        pod: Option<(&str, &str)>,
        secs: u32,
    ) -> Self {
        Self::start_as(ns, None, identity, issue, pod, secs)
    }

    /// Starts a worker authenticating with `kubeconfig` (default: the admin's).
    pub fn start_as(
        ns: &str,
        kubeconfig: Option<&std::path::Path>,
        identity: &str,
        issue: &str,
        pod: Option<(&str, &str)>,
        secs: u32,
    ) -> Self {
        let mut cmd = issuelock();
        if let Some(kc) = kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        cmd.args(["run", "-n", ns, "--identity", identity, "--issue", issue]);
        Self::spawn(cmd, pod.map(|(name, uid)| (ns, name, uid)), secs)
    }

    /// `issuelock run -n <locks_ns>` without `--identity`, from the pod `pod` (uid `uid`)
    /// of namespace `pod_ns`, as the downward API would describe it.
    pub fn start_from_pod(
        locks_ns: &str,
        pod_ns: &str,
        pod: &str,
        uid: &str,
        issue: &str,
        secs: u32,
    ) -> Self {
        let mut cmd = issuelock();
        cmd.args(["run", "-n", locks_ns, "--issue", issue]);
        Self::spawn(cmd, Some((pod_ns, pod, uid)), secs)
    }

    /// Spawns `cmd` as it is (stdout and stderr piped) in a process group of its own.
    pub fn spawn_command(mut cmd: Command) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        let child = cmd.spawn().unwrap();
        Self {
            pgid: child.id(),
            child: Some(child),
        }
    }

    /// Spawns `cmd` (an `issuelock run` with its target) with FAST_HEARTBEAT, running
    /// `sleep secs`, in a process group of its own; `pod` is (namespace, name, uid).
    fn spawn(mut cmd: Command, pod: Option<(&str, &str, &str)>, secs: u32) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.args(FAST_HEARTBEAT)
            .args(["--", "sleep", &secs.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        if let Some((ns, name, uid)) = pod {
            cmd.env("POD_NAME", name)
                .env("POD_UID", uid)
                .env("POD_NAMESPACE", ns);
        }
        let child = cmd.spawn().unwrap();
        Self {
            pgid: child.id(),
            child: Some(child),
        }
    }

    pub fn signal(&self, sig: &str) {
        signal_group(self.pgid, sig);
    }

    /// True while the worker has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the worker to exit; returns its exit code and stderr.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group_and_reap(&mut child);
        }
    }
}

/// Creates a Pod object (no kubelet runs it) and returns its uid.
pub async fn create_pod(client: &kube::Client, ns: &str, name: &str) -> String {
    create_pod_as(client, ns, name, "default").await
}

/// Creates a Pod object running as ServiceAccount `sa` (no kubelet runs it; tokens can be
/// bound to it) and returns its uid.
pub async fn create_pod_as(client: &kube::Client, ns: &str, name: &str, sa: &str) -> String {
    use k8s_openapi::api::core::v1::Pod;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "worker", "image": "worker:test"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// Deletes a Pod at once (grace period 0).
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) {
    use k8s_openapi::api::core::v1::Pod;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// The lock on `issue` in `ns`, if held.
pub async fn lock_of(client: &kube::Client, ns: &str, issue: &str) -> Option<issuelock::IssueLock> {
    let api: Api<issuelock::IssueLock> = Api::namespaced(client.clone(), ns);
    let name = issuelock::IssueKey::parse(issue).unwrap().lock_name();
    api.get_opt(&name).await.unwrap()
}

/// Waits (15 s at most) until `issue` is locked in `ns`; returns the lock.
pub async fn wait_taken(client: &kube::Client, ns: &str, issue: &str) -> issuelock::IssueLock {
    eventually(Duration::from_secs(15), "lock taken", || async {
        lock_of(client, ns, issue).await
    })
    .await
}

/// Waits (`limit` at most) until the lock on `issue` is gone; returns when that was seen.
pub async fn wait_gone(client: &kube::Client, ns: &str, issue: &str, limit: Duration) -> Instant {
    eventually(limit, "lock reclaimed", || async {
        lock_of(client, ns, issue)
            .await
            .is_none()
            .then(Instant::now)
    })
    .await
}

/// Waits until an Event with `reason` exists in `ns` (Events are published just after
/// the reclaim they report).
pub async fn wait_event(client: &kube::Client, ns: &str, reason: &str) {
    eventually(Duration::from_secs(5), reason, || async {
        event_reasons(client, ns)
            .await
            .iter()
            .any(|r| r == reason)
            .then_some(())
    })
    .await
}

/// All Events in `ns`.
pub async fn events(client: &kube::Client, ns: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default()).await.unwrap().items
}

/// The reasons of all Events in `ns`.
pub async fn event_reasons(client: &kube::Client, ns: &str) -> Vec<String> {
    events(client, ns)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// Percentile `p` (0..=100) of `xs`, nearest rank.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// `host:port` of the API server of the admin kubeconfig, for a proxy to connect to.
pub fn api_server_addr() -> String {
    let doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_owned()
}

/// Writes `dir/file`: the admin kubeconfig, pointed at a proxy on 127.0.0.1:`port`.
pub fn proxied_kubeconfig(dir: &std::path::Path, file: &str, port: u16) -> PathBuf {
    let mut doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    doc["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{port}").into();
    let path = dir.join(file);
    std::fs::write(&path, serde_saphyr::to_string(&doc).unwrap()).unwrap();
    path
}

/// A TCP proxy on 127.0.0.1 in front of the API server, whose connections can be cut to
/// simulate an outage of the API server for the processes behind it.
pub struct OutageProxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl OutageProxy {
    /// Proxies to the server of the admin kubeconfig.
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let target = api_server_addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            conns,
            accept,
        }
    }

    /// A kubeconfig (admin credentials) that goes through this proxy.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        proxied_kubeconfig(dir, "proxied-kubeconfig", self.port)
    }

    /// Cuts every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Held by the tests that load the machine hardest and by the tests that assert latency
/// bounds, so that on a 2-core machine they never run at the same time.
pub static QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Counts the API requests of the processes behind it: `kubectl proxy` (the admin's
/// credentials, plain HTTP on loopback) with a TCP forwarder in front that reads every
/// request line. Killed on drop. It runs on the test's runtime: never block that runtime
/// (wait for processes with `spawn_blocking`) while it counts.
pub struct CountingProxy {
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    kubectl: std::process::Child,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start() -> Self {
        use std::os::unix::process::CommandExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = free_port();
        let kubectl = Command::new("kubectl")
            .args(["proxy", "--address", "127.0.0.1", "--port"])
            .arg(upstream.to_string())
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let target = format!("127.0.0.1:{upstream}");
        eventually(Duration::from_secs(30), "kubectl proxy listening", || {
            let target = target.clone();
            async move {
                tokio::net::TcpStream::connect(&target)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                    });
                    let mut line = Vec::new();
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = in_read.read(&mut buf).await {
                        if n == 0 || out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                let text = String::from_utf8_lossy(&line);
                                let text = text.trim_end();
                                // A request line may follow a body that ended
                                // without a newline: take it from its method on.
                                if let Some(request) = text.strip_suffix(" HTTP/1.1")
                                    && let Some(at) =
                                        ["GET /", "POST /", "PUT /", "PATCH /", "DELETE /"]
                                            .iter()
                                            .filter_map(|m| request.rfind(m))
                                            .max()
                                {
                                    seen.lock().unwrap().push(request[at..].to_owned());
                                }
                                line.clear();
                            } else if line.len() < 4096 {
                                line.push(b);
                            }
                        }
                    }
                    down.abort();
                });
            }
        });
        Self {
            port,
            requests,
            kubectl,
            accept,
        }
    }

    /// A kubeconfig for the processes to count (plain HTTP to this proxy).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("counted-kubeconfig");
        let doc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            self.port
        );
        std::fs::write(&path, doc).unwrap();
        path
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        kill_group_and_reap(&mut self.kubectl);
    }
}

/// Locks left in `ns`.
pub async fn locks_in(client: &kube::Client, ns: &str) -> Vec<issuelock::IssueLock> {
    let api: Api<issuelock::IssueLock> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default()).await.unwrap().items
}

/// An HTTP proxy on 127.0.0.1 that forwards to the API server (through a `kubectl proxy`
/// holding the admin credentials) or, once told to, answers every new request with an
/// error status, as an overloaded API server does. Counts the requests it refused.
pub struct FaultProxy {
    pub port: u16,
    failing: std::sync::Arc<std::sync::atomic::AtomicU16>,
    refused: std::sync::Arc<AtomicUsize>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
    kubectl_proxy: std::process::Child,
}

impl FaultProxy {
    pub async fn start() -> Self {
        use std::os::unix::process::CommandExt;
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = free_port();
        let kubectl_proxy = Command::new("kubectl")
            .args(["--kubeconfig", kubeconfig().to_str().unwrap()])
            .args([
                "proxy",
                "--address=127.0.0.1",
                &format!("--port={upstream}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "kubectl proxy listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .ok()
            },
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
        let refused = std::sync::Arc::new(AtomicUsize::new(0));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (failing2, refused2, conns2) = (failing.clone(), refused.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let code = failing2.load(SeqCst);
                let refused = refused2.clone();
                let task = tokio::spawn(async move {
                    if code == 0 {
                        if let Ok(mut out) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                        return;
                    }
                    // Read the request head, answer with a Status, close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match inbound.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    refused.fetch_add(1, SeqCst);
                    let body = format!(
                        r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected by the test proxy","code":{code}}}"#
                    );
                    let reply = format!(
                        "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = inbound.write_all(reply.as_bytes()).await;
                    let _ = inbound.shutdown().await;
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            failing,
            refused,
            conns,
            accept,
            kubectl_proxy,
        }
    }

    /// A kubeconfig (no credentials: the proxy adds the admin's) that goes through it.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": format!("http://127.0.0.1:{}", self.port)}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy"
        });
        let path = dir.join("fault-proxy-kubeconfig");
        std::fs::write(&path, serde_saphyr::to_string(&doc).unwrap()).unwrap();
        path
    }

    /// Cuts every open connection; from now on each request gets `code` (0: forward).
    pub fn answer(&self, code: u16) {
        self.failing
            .store(code, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Requests answered with an error so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.answer(0);
        self.accept.abort();
        kill_group_and_reap(&mut self.kubectl_proxy);
    }
}
