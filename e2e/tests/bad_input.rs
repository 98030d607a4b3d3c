//! Every failure a user can cause gets a clear error, a non-zero exit and loses nothing.

use crate::support::*;
use issuelock::{Acquisition, Error, InvalidKey};

#[tokio::test]
async fn bad_keys_are_rejected_before_any_call() {
    let client = client().await;
    let ns = namespace(&client, "bad-keys").await;
    let locks = lock_client(&client, &ns, "w").await;
    let long = "k".repeat(10_000);
    let cases: [(&str, &str); 4] = [
        ("", "issue key is empty"),
        (&long, "10000 characters long; the limit is 1024"),
        ("line\nbreak", "control character U+000A at character 4"),
        ("nul\0", "control character U+0000 at character 3"),
    ];
    for (key, message) in cases {
        let err = locks.try_acquire(key).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey(_)), "{err:?}");
        assert!(err.chain().contains(message), "{}", err.chain());
    }
    assert_eq!(
        issuelock::IssueKey::parse("tab\there"),
        Err(InvalidKey::ControlCharacter {
            code: 9,
            position: 3
        })
    );
    // Emoji and other non-ASCII keys are valid keys with valid names.
    let Acquisition::Acquired(g) = locks.try_acquire("🦀 crab #1 — ünïcode").await.unwrap()
    else {
        panic!()
    };
    assert!(g.name().starts_with("crab-1-c-code-") || issuelock::key::is_dns1123_label(g.name()));
    g.release().await.unwrap();

    // Through the CLI: exit 2 and the cause.
    for (key, message) in [
        ("", "issue key is empty"),
        (long.as_str(), "limit is 1024"),
        ("a\nb", "U+000A"),
    ] {
        let stderr = exits_with(
            issuelock_run(&ns, key).args(["--", "true"]),
            2,
            "invalid issue key",
        );
        assert!(stderr.contains(message), "{stderr}");
    }
    let left = kubectl_ok(&["get", "issuelocks", "-n", &ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "nothing may be left behind: {left}");
}

#[tokio::test]
async fn missing_namespace_is_named() {
    let client = client().await;
    install_crd();
    let err = try_lock_client(&client, "no-such-namespace-e2e", "w")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::NamespaceNotFound { namespace } if namespace == "no-such-namespace-e2e"),
        "{err:?}"
    );
    exits_with(
        issuelock_run("no-such-namespace-e2e", "x").args(["--", "true"]),
        1,
        "namespace \"no-such-namespace-e2e\" does not exist",
    );
}

#[tokio::test]
async fn a_user_without_rbac_is_told_so() {
    let client = client().await;
    let ns = namespace(&client, "no-rbac").await;
    kubectl_ok(&["create", "serviceaccount", "nobody", "-n", &ns]);
    let token = kubectl_ok(&["create", "token", "nobody", "-n", &ns, "--duration=10m"]);
    let scratch = Scratch::new("no-rbac");
    let kc = token_kubeconfig(&scratch.0, token.trim());

    let err = try_lock_client(&client_for(&kc).await, &ns, "w")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    assert!(
        err.chain().contains("system:serviceaccount:") && err.chain().contains("leases"),
        "{}",
        err.chain()
    );

    // Allowed to heartbeat but not to lock: the lock step names itself.
    kubectl_ok(&[
        "create",
        "role",
        "lease-only",
        "-n",
        &ns,
        "--verb=get,create,update,delete",
        "--resource=leases.coordination.k8s.io",
    ]);
    kubectl_ok(&[
        "create",
        "rolebinding",
        "lease-only",
        "-n",
        &ns,
        "--role=lease-only",
        &format!("--serviceaccount={ns}:nobody"),
    ]);
    let locks = eventually(
        std::time::Duration::from_secs(10),
        "RBAC to apply",
        || async { try_lock_client(&client_for(&kc).await, &ns, "w").await.ok() },
    )
    .await;
    let err = locks.try_acquire("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Forbidden {
                step: "create lock",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.chain().contains("issuelocks"), "{}", err.chain());

    exits_with(
        issuelock_run(&ns, "x")
            .env("KUBECONFIG", &kc)
            .args(["--", "true"]),
        1,
        "permission denied while trying to create lock",
    );

    // `work` may not list and watch the namespace's locks: it says so and exits 1 instead
    // of retrying for ever.
    let list = scratch.0.join("issues.txt");
    std::fs::write(&list, "x\n").unwrap();
    let mut work = issuelock()
        .env("KUBECONFIG", &kc)
        .args(["work", "-n", &ns, "--issues"])
        .arg(&list)
        .args(["--", "true"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = work.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = work.kill();
            panic!("work kept retrying without permission to list locks");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut work.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied while trying to list and watch the locks"),
        "{stderr}"
    );
    locks.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_api_server_is_named_and_fails_fast() {
    let scratch = Scratch::new("down");
    // A kubeconfig for a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut doc: serde_json::Value = serde_saphyr::from_str(&admin).unwrap();
    doc["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{port}").into();
    let kc = scratch.0.join("kubeconfig");
    std::fs::write(&kc, serde_saphyr::to_string(&doc).unwrap()).unwrap();
    let started = std::time::Instant::now();
    exits_with(
        issuelock_run("default", "x").env("KUBECONFIG", &kc).args([
            "--call-timeout-seconds",
            "3",
            "--",
            "true",
        ]),
        1,
        "cannot reach the API server while trying to create heartbeat lease",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    exits_with(
        issuelock()
            .env("KUBECONFIG", scratch.0.join("missing"))
            .args(["list"]),
        2,
        "kubeconfig",
    );
}

#[test]
fn inconsistent_heartbeat_timing_is_rejected_before_any_call() {
    for (flags, message) in [
        (
            ["--renew-deadline-seconds", "20"],
            "lease duration (15s) must be greater than the renew deadline (20s)",
        ),
        (
            ["--renew-interval-seconds", "10"],
            "renew deadline (10s) must be greater than the renew interval (10s)",
        ),
    ] {
        exits_with(
            issuelock()
                .args(["run", "--issue", "x"])
                .args(flags)
                .args(["--", "true"]),
            2,
            message,
        );
    }
    exits_with(
        issuelock().args([
            "controller",
            "--leader-lease-duration-seconds",
            "5",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        2,
        "lease duration (5s) must be greater than the renew deadline (10s)",
    );
}

/// A max hold time too large for the clock is refused before any API call (exit 2),
/// not a panic once the lock is taken.
#[tokio::test]
async fn an_absurd_max_hold_time_is_refused_before_any_call() {
    let client = client().await;
    let ns = namespace(&client, "bad-max-hold").await;
    for max_hold in ["18446744073709551615", "9223372036854775808", "400000000"] {
        exits_with(
            issuelock_run(&ns, "org/repo#max").args(["--max-hold-seconds", max_hold, "--", "true"]),
            2,
            "max hold time",
        );
    }
    let locks = kubectl_ok(&["get", "issuelocks", "-n", &ns, "-o", "name"]);
    let leases = kubectl_ok(&["get", "leases", "-n", &ns, "-o", "name"]);
    assert!(
        locks.trim().is_empty() && leases.trim().is_empty(),
        "nothing left behind: {locks} {leases}"
    );
}
