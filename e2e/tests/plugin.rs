//! `kubectl issuelock ...`: the binary installed as a kubectl plugin (`kubectl-issuelock`
//! on PATH) and run by the real kubectl, beside `kubectl get issuelocks`.

use crate::support::*;
use issuelock::{Acquisition, LockGuard};
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A directory holding `kubectl-issuelock` (a symlink to the binary under test), to put
/// first on PATH.
fn plugin_dir() -> Scratch {
    let dir = Scratch::new("plugin");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_issuelock"),
        dir.0.join("kubectl-issuelock"),
    )
    .unwrap();
    dir
}

/// `kubectl issuelock ARGS` with the plugin on PATH.
fn plugin_cmd(dir: &Scratch, args: &[&str]) -> Command {
    let path = format!(
        "{}:{}",
        dir.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("kubectl");
    c.arg("issuelock")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig());
    c
}

fn plugin(dir: &Scratch, args: &[&str]) -> Output {
    plugin_cmd(dir, args).output().expect("kubectl runs")
}

/// stdout of a successful `kubectl issuelock ARGS`.
fn plugin_ok(dir: &Scratch, args: &[&str]) -> String {
    let out = plugin(dir, args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubectl issuelock {args:?}: {stderr}");
    stdout
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

async fn acquire(locks: &issuelock::LockClient, issue: &str) -> LockGuard {
    match locks.try_acquire(issue).await.unwrap() {
        Acquisition::Acquired(g) => g,
        _ => panic!("{issue} is held"),
    }
}

#[tokio::test]
async fn the_plugin_lists_as_kubectl_get_does() {
    let client = client().await;
    let ns = namespace(&client, "plugin").await;
    let dir = plugin_dir();
    let a = lock_client(&client, &ns, "holder-a").await;
    let b = lock_client(&client, &ns, "holder-b").await;
    let _held = [
        acquire(&a, "org/repo#1").await,
        acquire(&a, "org/repo#2").await,
        acquire(&b, "org/repo#3").await,
    ];
    let lease_a = lock_of(&client, &ns, "org/repo#1")
        .await
        .unwrap()
        .spec
        .holder
        .lease;

    // Help speaks of the plugin as kubectl runs it.
    let help = plugin_ok(&dir, &["list", "--help"]);
    assert!(help.contains("Usage: kubectl issuelock list"), "{help}");
    let help = plugin_ok(&dir, &["--help"]);
    assert!(help.contains("Usage: kubectl issuelock"), "{help}");

    // -o json and -o yaml print a List that kubectl applies back unchanged.
    for format in ["json", "yaml"] {
        let list = plugin_ok(&dir, &["list", "-n", &ns, "-o", format]);
        let doc: serde_json::Value = serde_saphyr::from_str(&list).unwrap();
        assert_eq!(doc["apiVersion"], "v1", "{list}");
        assert_eq!(doc["kind"], "List", "{list}");
        assert_eq!(doc["items"].as_array().unwrap().len(), 3, "{list}");
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &list);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}\n{list}");
        assert_eq!(
            stdout.matches("(server dry run)").count(),
            3,
            "{stdout}{stderr}"
        );
    }

    // -o name and -l, as kubectl get prints and selects them.
    let names = plugin_ok(&dir, &["list", "-n", &ns, "-o", "name"]);
    let kubectl_names = kubectl_ok(&["get", "issuelocks", "-n", &ns, "-o", "name"]);
    assert_eq!(sorted_lines(&names), sorted_lines(&kubectl_names));
    assert!(
        names
            .lines()
            .all(|l| l.starts_with("issuelock.issuelock.dev/"))
    );
    let selector = format!("issuelock.dev/holder-lease={lease_a}");
    let selected = plugin_ok(&dir, &["list", "-n", &ns, "-l", &selector, "-o", "name"]);
    let kubectl_selected = kubectl_ok(&[
        "get",
        "issuelocks",
        "-n",
        &ns,
        "-l",
        &selector,
        "-o",
        "name",
    ]);
    assert_eq!(sorted_lines(&selected), sorted_lines(&kubectl_selected));
    assert_eq!(selected.lines().count(), 2, "{selected}");

    // The table has kubectl get's columns (its NAME in -o wide) and the HEARTBEAT.
    let table = plugin_ok(&dir, &["list", "-n", &ns]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let kubectl_table = kubectl_ok(&["get", "issuelocks", "-n", &ns]);
    let wide = plugin_ok(&dir, &["list", "-n", &ns, "-o", "wide"]);
    let wide_header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    for column in kubectl_table.lines().next().unwrap().split_whitespace() {
        assert!(wide_header.contains(&column), "{column}: {wide}");
        assert!(
            column == "NAME" || header.contains(&column),
            "{column}: {table}"
        );
    }
    assert!(header.contains(&"HEARTBEAT"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().skip(1).all(|l| l.contains(" ago")),
        "heartbeats: {table}"
    );
    let bare = plugin_ok(&dir, &["list", "-n", &ns, "--no-headers"]);
    assert_eq!(bare.lines().count(), 3, "{bare}");
    assert!(bare.lines().all(|l| l.starts_with("org/repo#")), "{bare}");

    // --watch prints a lock created after the list.
    let mut watch = plugin_cmd(&dir, &["list", "-n", &ns, "--watch", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = vec![];
    while seen.len() < 3 {
        seen.push(rx.recv_timeout(Duration::from_secs(20)).unwrap());
    }
    let _new = acquire(&b, "org/repo#new").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the new lock not printed; saw {seen:?}"));
        if line.starts_with("org/repo#new ") {
            assert!(line.contains("holder-b"), "{line}");
            break;
        }
        seen.push(line);
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test]
async fn every_subcommand_follows_kubeconfig_context_and_request_timeout() {
    let client = client().await;
    let ns = namespace(&client, "plugin-ctx").await;
    let empty = namespace(&client, "plugin-ctx-empty").await;
    let dir = plugin_dir();
    let a = lock_client(&client, &ns, "holder-a").await;
    let held = acquire(&a, "org/repo#ctx").await;

    // A server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();

    // A kubeconfig (not $KUBECONFIG) with contexts for two namespaces and a silent server.
    let admin: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    let cluster = admin["clusters"][0].clone();
    let user = admin["users"][0].clone();
    let mut silent_cluster = cluster.clone();
    silent_cluster["name"] = "silent".into();
    silent_cluster["cluster"]["server"] = format!("https://127.0.0.1:{silent_port}").into();
    let context = |name: &str, cluster: &serde_json::Value, ns: &str| {
        serde_json::json!({"name": name, "context": {
            "cluster": cluster["name"], "user": user["name"], "namespace": ns}})
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster, silent_cluster],
        "users": [user],
        "contexts": [
            context("locks", &cluster, &ns),
            context("empty", &cluster, &empty),
            context("silent", &silent_cluster, &ns),
        ],
        "current-context": "empty",
    });
    let scratch = Scratch::new("plugin-ctx");
    let path = scratch.0.join("two-contexts");
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    let kc = path.to_str().unwrap();

    let names = plugin_ok(
        &dir,
        &[
            "list",
            "--kubeconfig",
            kc,
            "--context",
            "locks",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        names.trim(),
        format!("issuelock.issuelock.dev/{}", held.name())
    );
    // The current context: its namespace holds no lock.
    let out = plugin(&dir, &["list", "--kubeconfig", kc]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("No resources found in {empty} namespace")),
        "{stderr}"
    );
    // Other subcommands build their client the same way.
    let shown = plugin_ok(
        &dir,
        &[
            "show",
            "org/repo#ctx",
            "--context",
            "locks",
            "--kubeconfig",
            kc,
        ],
    );
    assert!(shown.contains("holder-a"), "{shown}");
    let out = plugin(&dir, &["show", "org/repo#ctx", "--kubeconfig", kc]);
    assert!(
        !out.status.success(),
        "not locked in the current context's namespace"
    );

    // --request-timeout bounds each request to the silent server.
    for args in [
        vec![
            "list",
            "--kubeconfig",
            kc,
            "--context",
            "silent",
            "--request-timeout",
            "1s",
        ],
        vec![
            "show",
            "org/repo#ctx",
            "--kubeconfig",
            kc,
            "--context",
            "silent",
            "--request-timeout=1",
        ],
    ] {
        let started = Instant::now();
        let out = plugin(&dir, &args);
        let took = started.elapsed();
        assert!(!out.status.success(), "{args:?}");
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
    drop(silent);
    drop(held);
}
