//! Foreign holders at the edges of PROTOCOL.md: a lock whose Lease records more about its
//! creator than the lock itself is not mistaken for a forgery, and the Python reference
//! worker's command does not outlive the worker. (Both found by an independent review.)

use crate::support::*;
use std::process::Command;
use std::time::Duration;

/// PROTOCOL.md §4 says the Lease's `issuelock.dev/holder-pod-uid` annotation is written
/// "when your token is pod-bound; else when in a pod", §3 and §5 say the lock records a pod
/// only when the client knows both its name and uid; §7 lists what gets a lock reclaimed and
/// says "a foreign holder gets this by writing the fields above". A foreign holder in a pod
/// that knows its uid but not its name follows every rule, yet the controller reclaims its
/// lock within seconds as `lease_foreign` (a reason §7 never mentions), while its Lease is
/// fresh.
#[tokio::test]
async fn a_foreign_lock_recording_less_than_its_lease_is_not_reclaimed() {
    let client = client().await;
    let ns = namespace(&client, "foreign-pod-uid").await;
    let _ctl = ControllerProcess::start(&ns);
    let t = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%S.%6NZ")
        .output()
        .unwrap();
    let t = String::from_utf8(t.stdout).unwrap().trim().to_owned();
    // The admin's username, recorded as PROTOCOL.md §3 says (so the chart's policies, if
    // installed cluster-wide, admit the objects).
    let user = kubectl_ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    let user = user.trim();
    let lease = format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"foreign-1","namespace":"{ns}",
"labels":{{"issuelock.dev/heartbeat":"true"}},
"annotations":{{"issuelock.dev/holder-user":"{user}","issuelock.dev/holder-pod-uid":"11111111-2222-3333-4444-555555555555"}}}},
"spec":{{"holderIdentity":"foreign","leaseDurationSeconds":120,"acquireTime":"{t}","renewTime":"{t}","leaseTransitions":0}}}}"#
    );
    let out = kubectl_stdin(
        &["create", "-o", "jsonpath={.metadata.uid}", "-f", "-"],
        &lease,
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let lease_uid = text(&out).0;
    let key = "foreign/pod-uid#1";
    let name = issuelock::IssueKey::parse(key).unwrap().lock_name();
    let lock = format!(
        r#"{{"apiVersion":"issuelock.dev/v1alpha1","kind":"IssueLock","metadata":{{"name":"{name}","namespace":"{ns}",
"labels":{{"issuelock.dev/holder-lease":"foreign-1"}},"annotations":{{"issuelock.dev/acquire-nonce":"n1"}},
"ownerReferences":[{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","name":"foreign-1","uid":"{lease_uid}"}}]}},
"spec":{{"issue":"{key}","holder":{{"identity":"foreign","lease":"foreign-1","user":"{user}"}}}}}}"#
    );
    let out = kubectl_stdin(&["create", "-f", "-"], &lock);
    assert!(out.status.success(), "{}", text(&out).1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let reasons = event_reasons(&client, &ns).await;
    let still = lock_of(&client, &ns, key).await;
    assert!(
        still.is_some(),
        "a lock written as PROTOCOL.md says, on a Lease renewed 6 s ago with a 120 s duration, \
         was reclaimed: events {reasons:?}"
    );
}

/// The reference worker's docstring: exit status "as `issuelock run`", the command in its
/// own process group; PROTOCOL.md's self-fencing exists so that nobody works on an issue
/// after its lock can be taken. SIGKILL the worker: its command (its own session) keeps
/// running after the lock is reclaimed, so a second worker processes the issue alongside.
#[tokio::test]
async fn a_sigkilled_python_worker_leaves_no_command_behind() {
    let client = client().await;
    let ns = namespace(&client, "py-sigkill").await;
    let python = std::env::var("ISSUELOCK_E2E_PYTHON").expect("ISSUELOCK_E2E_PYTHON");
    let worker = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/issuelock_worker.py"
    );
    let marker = format!("py-sigkill-{}-{}", std::process::id(), ns);
    let mut child = Command::new(python)
        .args([
            worker,
            "-n",
            &ns,
            "--issue",
            "org/repo#py-sigkill",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("sleep 300; echo {marker}"))
        .env("KUBECONFIG", kubeconfig())
        .spawn()
        .expect("python worker starts");
    wait_taken(&client, &ns, "org/repo#py-sigkill").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&left.stdout).trim().to_owned();
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status(); // its own session
    }
    assert!(
        pids.is_empty(),
        "the SIGKILLed Python worker's command is still running (pids {pids}); its lock is \
         reclaimed after the lease duration while it works on"
    );
}
