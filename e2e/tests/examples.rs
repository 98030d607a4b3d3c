//! The examples under `examples/`, run as a user would run them: the Rust worker (a cargo
//! example), the shell worker, the Python worker calling the CLI, and the worker
//! Deployment manifest (checked by the API server with a server-side dry run).

use crate::support::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

fn issue_list(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("issues.txt");
    std::fs::write(
        &path,
        (0..n)
            .map(|i| format!("org/repo#{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    path
}

/// Runs `workers` (already configured commands) at once; returns their stdout, after
/// checking that each exited 0.
fn run_all(workers: Vec<Command>) -> Vec<String> {
    let children: Vec<_> = workers
        .into_iter()
        .map(|mut c| {
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{:?}: {stderr}", out.status);
            stdout
        })
        .collect()
}

/// Lines of `outputs` starting with `prefix`: each issue of `0..n` exactly once.
fn assert_each_once(outputs: &[String], prefix: &str, n: usize) {
    let lines: Vec<&str> = outputs
        .iter()
        .flat_map(|o| o.lines())
        .filter(|l| l.starts_with(prefix))
        .collect();
    let issues: HashSet<&str> = lines
        .iter()
        .map(|l| l[prefix.len()..].split(' ').next().unwrap())
        .collect();
    assert_eq!(lines.len(), n, "{lines:#?}");
    assert_eq!(issues.len(), n, "{lines:#?}");
}

/// The directory holding the `issuelock` binary under test, for PATH.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_issuelock"))
        .parent()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_rust_worker_example_processes_each_issue_once() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "example-rust").await;
    let dir = Scratch::new("example-rust");
    // Built as a user would (the build directory lock is free while tests run), without
    // the variables cargo sets for this test: build scripts that read them would
    // otherwise rebuild their crates (and the next `cargo test` rebuild them back).
    let mut build = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
            || name == "OUT_DIR"
        {
            build.env_remove(name);
        }
    }
    let out = build
        .args(["build", "--example", "rust_worker", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| {
            (m["target"]["name"] == "rust_worker")
                .then(|| m["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .expect("the example's executable");
    let done = dir.0.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let n = 30;
    let list = issue_list(&dir.0, n);
    let worker = |id: &str, args: &[&str]| {
        let mut c = Command::new(&exe);
        c.env("KUBECONFIG", kubeconfig())
            .env("WORKER_ID", id)
            .env("RUST_LOG", "warn")
            .args(args);
        c
    };
    let (list_s, done_s) = (list.display().to_string(), done.display().to_string());
    let outputs = run_all(
        (0..3)
            .map(|w| worker(&format!("rust-{w}"), &["work", &ns, &list_s, &done_s]))
            .collect(),
    );
    let completed: u64 = outputs
        .iter()
        .map(|o| {
            o.lines()
                .find_map(|l| {
                    l.strip_prefix("completed ")?
                        .split(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no report in {o}"))
        })
        .sum();
    assert_eq!(completed, n as u64, "{outputs:#?}");
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), n);
    // `one`: process_safely on a single issue.
    let outputs = run_all(vec![worker(
        "rust-one",
        &["one", &ns, "org/repo#one", &done_s],
    )]);
    assert!(outputs[0].contains("completed org/repo#one"), "{outputs:?}");
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn the_shell_worker_example_processes_each_issue_once() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "example-shell").await;
    let dir = Scratch::new("example-shell");
    let done = dir.0.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let n = 30;
    let list = issue_list(&dir.0, n);
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap());
    let outputs = run_all(
        (0..3)
            .map(|w| {
                let mut c = Command::new(format!("{EXAMPLES}/shell/worker.sh"));
                c.args([
                    ns.as_str(),
                    &list.display().to_string(),
                    &done.display().to_string(),
                ])
                .env("KUBECONFIG", kubeconfig())
                .env("PATH", &path)
                .env("ISSUELOCK_IDENTITY", format!("shell-{w}"))
                .env("RUST_LOG", "warn");
                c
            })
            .collect(),
    );
    assert_each_once(&outputs, "processing ", n);
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), n);
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn the_python_cli_worker_example_processes_each_issue_once() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "example-python").await;
    let dir = Scratch::new("example-python");
    let done = dir.0.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let n = 20;
    let list = issue_list(&dir.0, n);
    let python = std::env::var("ISSUELOCK_E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let outputs = run_all(
        (0..2)
            .map(|w| {
                let mut c = Command::new(&python);
                c.arg(format!("{EXAMPLES}/python/cli_worker.py"))
                    .args([
                        ns.as_str(),
                        &list.display().to_string(),
                        &done.display().to_string(),
                    ])
                    .env("KUBECONFIG", kubeconfig())
                    .env("ISSUELOCK_BIN", env!("CARGO_BIN_EXE_issuelock"))
                    .env("ISSUELOCK_IDENTITY", format!("python-{w}"))
                    .env("RUST_LOG", "warn");
                c
            })
            .collect(),
    );
    assert_each_once(&outputs, "processed ", n);
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn the_worker_deployment_manifest_is_accepted_and_bound_by_the_chart() {
    let client = client().await;
    let ns = namespace(&client, "example-deploy").await;
    let manifest = std::fs::read_to_string(format!("{EXAMPLES}/deploy/worker.yaml"))
        .unwrap()
        .replace("namespace: workers", &format!("namespace: {ns}"));
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifest);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for object in [
        "serviceaccount/issue-worker",
        "configmap/issue-worker",
        "deployment.apps/issue-worker",
    ] {
        assert!(stdout.contains(object), "{stdout}");
    }
    // The chart's `workers` value binds the worker role to this ServiceAccount.
    let values = format!("workers[0].namespace={ns},workers[0].serviceAccount=issue-worker");
    let version: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["version", "-o", "json"])).unwrap();
    let server_version = version["serverVersion"]["gitVersion"].as_str().unwrap();
    let out = Command::new("helm")
        .args([
            "template",
            "issuelock",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/issuelock"),
            "-n",
            "issuelock-system",
            "--kube-version",
            server_version,
            "--set",
            &values,
        ])
        .output()
        .unwrap();
    let (rendered, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let bound = docs.iter().any(|doc| {
        doc["kind"] == "RoleBinding"
            && doc["metadata"]["namespace"].as_str() == Some(ns.as_str())
            && doc["roleRef"]["name"].as_str() == Some("issuelock-worker")
            && doc["subjects"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["name"].as_str() == Some("issue-worker")
                        && s["namespace"].as_str() == Some(ns.as_str())
                })
            })
    });
    assert!(bound, "no RoleBinding of issue-worker in {ns}:\n{rendered}");
}
