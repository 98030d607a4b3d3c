//! Shared fixtures of the end-to-end suite: the cluster under test, a namespace per test,
//! real `kubectl` and `issuelock` processes.
#![allow(dead_code)]

use issuelock::{LockClient, LockConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
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
    CRD.call_once(|| {
        let crd = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/issuelock.dev_issuelocks.yaml"
        );
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crd]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/issuelocks.issuelock.dev",
        ]);
    });
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

/// A fresh namespace for one test, with the CRD installed.
pub async fn namespace(client: &kube::Client, test: &str) -> String {
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
    name
}

/// Deletes a test namespace (best effort).
pub async fn delete_namespace(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(ns, &DeleteParams::default()).await;
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
    let me = issuelock::HolderIdentity {
        identity: identity.to_owned(),
        pod: None,
        pod_namespace: None,
    };
    LockClient::start(client.clone(), LockConfig::new(ns, me)).await
}

/// A kubeconfig file for the cluster under test that authenticates with `token`.
pub fn token_kubeconfig(dir: &std::path::Path, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    doc["users"] =
        serde_yaml::from_str(&format!("- name: admin\n  user:\n    token: {token}\n")).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
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
