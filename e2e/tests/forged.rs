//! A lock that names another worker's heartbeat Lease, to ride on its live heartbeat: the
//! controller reclaims it at once (`lease_foreign`), and the victim's own client reports
//! it as held by its creator, never as its own orphan. (Found by the independent review of
//! the edges; without an admission policy anyone can write such a lock, with one it is
//! the forger's own lock, in its own name.)

use crate::support::*;
use issuelock::{Acquisition, HeartbeatConfig, LockClient};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// ServiceAccounts `names` in `ns`, each allowed what a worker may do, and a kubeconfig
/// for each (unbound tokens).
fn workers(ns: &str, names: &[&str], scratch: &Scratch) -> Vec<PathBuf> {
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-forged-worker}\n\
                rules:\n- {apiGroups: [issuelock.dev], resources: [issuelocks], verbs: [create, get, list, watch, delete]}\n\
                - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [create, get, update, delete]}\n\
                - {apiGroups: [authentication.k8s.io], resources: [selfsubjectreviews], verbs: [create]}\n";
    let out = kubectl_stdin(&["apply", "-f", "-"], role);
    assert!(out.status.success(), "{}", text(&out).1);
    names
        .iter()
        .map(|sa| {
            kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
            kubectl_ok(&[
                "create",
                "rolebinding",
                sa,
                "-n",
                ns,
                "--clusterrole=e2e-forged-worker",
                &format!("--serviceaccount={ns}:{sa}"),
            ]);
            let token = kubectl_ok(&["create", "token", sa, "-n", ns]);
            let dir = scratch.0.join(sa);
            std::fs::create_dir_all(&dir).unwrap();
            token_kubeconfig(&dir, token.trim())
        })
        .collect()
}

/// A lock on `issue` recording the victim's identity and Lease, created by the
/// forger (`kubeconfig`) in its own name, as an admission policy would demand.
fn forge(ns: &str, issue: &str, victim: &LockClient, forger: &str, kubeconfig: &std::path::Path) {
    let name = issuelock::IssueKey::parse(issue).unwrap().lock_name();
    let (identity, lease) = (&victim.holder().identity, &victim.holder().lease);
    let forged = format!(
        "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         \x20 labels: {{issuelock.dev/holder-lease: {lease}}}\nspec:\n  issue: {issue}\n  holder:\n\
         \x20   identity: {identity}\n    lease: {lease}\n    user: system:serviceaccount:{ns}:{forger}\n"
    );
    let out = kubectl_stdin_as(kubeconfig, &["create", "-f", "-"], &forged);
    assert!(out.status.success(), "{}", text(&out).1);
}

/// Waits until the lock on `issue` (`what`, made at `made`) is gone within `limit`, and
/// for the controller's `HolderLeaseForeign` Event.
async fn reclaimed_as_foreign(
    client: &kube::Client,
    ns: &str,
    issue: &str,
    made: Instant,
    limit: Duration,
    what: &str,
) {
    let gone = wait_gone(client, ns, issue, limit).await;
    let after = gone.duration_since(made).as_secs_f64();
    println!("{what} reclaimed after {after:.3}s");
    wait_event(client, ns, "HolderLeaseForeign").await;
}

#[tokio::test]
async fn a_lock_riding_on_another_workers_heartbeat_is_reclaimed() {
    let client = client().await;
    let ns = namespace(&client, "forged-ride").await;
    let scratch = Scratch::new("forged-ride");
    let kcs = workers(&ns, &["victim", "forger"], &scratch);
    let _controller = ControllerProcess::start(&ns);
    let mut config = lock_config(&ns, "victim");
    config.heartbeat = HeartbeatConfig::default()
        .with_lease_duration(Duration::from_secs(6))
        .with_renew_deadline(Duration::from_secs(4))
        .with_renew_interval(Duration::from_secs(1));
    let victim = LockClient::start(client_for(&kcs[0]).await, config)
        .await
        .unwrap();
    let issue = "org/repo#forged-ride";
    let forged_at = Instant::now();
    forge(&ns, issue, &victim, "forger", &kcs[1]);
    let what = "a lock borrowing another worker's live heartbeat";
    reclaimed_as_foreign(&client, &ns, issue, forged_at, Duration::from_secs(5), what).await;
    assert!(
        victim.is_healthy(),
        "the victim's own heartbeat is untouched"
    );
    victim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lock_in_anothers_name_naming_our_lease_is_held_not_ours() {
    let client = client().await;
    let ns = namespace(&client, "forged-victim").await;
    let scratch = Scratch::new("forged-victim");
    let kcs = workers(&ns, &["victim", "forger"], &scratch);
    let victim = lock_client(&client_for(&kcs[0]).await, &ns, "victim").await;
    let issue = "org/repo#forged-victim";
    forge(&ns, issue, &victim, "forger", &kcs[1]);
    match victim.try_acquire(issue).await.unwrap() {
        Acquisition::Held(by) => assert_eq!(
            by.holder.user.as_deref(),
            Some(format!("system:serviceaccount:{ns}:forger").as_str()),
            "reported as held by its creator"
        ),
        other => panic!("the victim deleted the forger's lock as its own: {other:?}"),
    }
    assert_eq!(
        victim.cleanup_stats().queued,
        0,
        "nothing queued for clean-up"
    );
    assert!(
        lock_of(&client, &ns, issue).await.is_some(),
        "the forger's lock is left to its creator and the controller"
    );
    victim.shutdown().await.unwrap();
}

/// A lock naming a Lease that is not a heartbeat (no `issuelock.dev/heartbeat` label),
/// which another program keeps renewing (its leader election, say): were it believed,
/// the lock would outlive its dead creator for as long as that program runs.
#[tokio::test]
async fn a_lock_riding_on_a_lease_that_is_no_heartbeat_is_reclaimed() {
    let client = client().await;
    let ns = namespace(&client, "forged-election").await;
    let _controller = ControllerProcess::start(&ns);
    let create = |json: &str| {
        let out = kubectl_stdin(&["create", "-n", &ns, "-f", "-"], json);
        assert!(out.status.success(), "{}", text(&out).1);
    };
    create(
        r#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "some-app-leader"},
            "spec": {"holderIdentity": "some-app-0", "leaseDurationSeconds": 3600}}"#,
    );
    let issue = "org/repo#forged-election";
    let name = issuelock::IssueKey::parse(issue).unwrap().lock_name();
    let lock = format!(
        r#"{{"apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
            "metadata": {{"name": "{name}", "labels": {{"issuelock.dev/holder-lease": "some-app-leader"}}}},
            "spec": {{"issue": "{issue}", "holder": {{"identity": "gone", "lease": "some-app-leader"}}}}}}"#
    );
    let created = Instant::now();
    create(&lock);
    let what = "a lock naming another program's Lease";
    reclaimed_as_foreign(&client, &ns, issue, created, Duration::from_secs(10), what).await;
    assert!(
        kubectl_ok(&["get", "lease", "some-app-leader", "-n", &ns, "-o", "name"])
            .contains("some-app-leader"),
        "the other program's Lease is left alone"
    );
}
