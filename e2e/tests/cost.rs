//! The controller's cost follows changes, not locks × time: a live lock's status is not
//! rewritten as its holder heartbeats, and a pod's deletion reaches only that pod's
//! locks. Real `issuelock run` workers (FAST_HEARTBEAT: lease 6 s) and Pod objects.

use crate::support::*;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(6);

fn reconciles(ctl: &ControllerProcess) -> f64 {
    metric(
        &ctl.get("/metrics").unwrap(),
        "issuelock_reconcile_duration_seconds_count",
    )
    .unwrap()
}

fn resource_version(lock: &issuelock::IssueLock) -> String {
    lock.metadata.resource_version.clone().unwrap()
}

#[tokio::test]
async fn live_locks_are_not_rewritten_and_a_pod_deletion_reclaims_only_its_own_locks() {
    let client = client().await;
    let ns = namespace(&client, "cost").await;
    let ctl = ControllerProcess::start(&ns);
    let (uid_a, uid_b) = (
        create_pod(&client, &ns, "pod-a").await,
        create_pod(&client, &ns, "pod-b").await,
    );
    let held = [
        ("a1", "org/repo#1", "pod-a", &uid_a),
        ("a2", "org/repo#2", "pod-a", &uid_a),
        ("b1", "org/repo#3", "pod-b", &uid_b),
    ];
    let mut workers: Vec<_> = held
        .iter()
        .map(|(id, issue, pod, uid)| WorkerProcess::start(&ns, id, issue, Some((pod, uid)), 300))
        .collect();
    // Each lock is marked alive once (a transition)...
    let mut versions = vec![];
    for (_, issue, _, _) in &held {
        let lock = eventually(Duration::from_secs(20), "holder marked alive", || async {
            lock_of(&client, &ns, issue).await.filter(|l| {
                l.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "HolderAlive" && c.status == "True")
                })
            })
        })
        .await;
        versions.push(resource_version(&lock));
    }
    // ... and then left alone for several lease periods while its holder heartbeats.
    let before = reconciles(&ctl);
    tokio::time::sleep(LEASE * 5 / 2).await;
    for ((_, issue, _, _), rv) in held.iter().zip(&versions) {
        let lock = lock_of(&client, &ns, issue).await.expect("live lock kept");
        assert_eq!(
            &resource_version(&lock),
            rv,
            "the status of a live lock was rewritten without a transition"
        );
    }
    let steady = reconciles(&ctl) - before;
    println!("reconciles over 2.5 lease periods with 3 live locks: {steady}");
    // Nothing changed, so nothing is judged; a relist of the lock watch (rare, but
    // possible within the window) would reconcile each of the 3 locks once.
    assert!(steady <= 3.0, "{steady} reconciles of unchanged live locks");

    // pod-a's deletion reclaims pod-a's two locks, and leaves pod-b's untouched.
    delete_pod(&client, &ns, "pod-a").await;
    for (_, issue, _, _) in &held[..2] {
        wait_gone(&client, &ns, issue, Duration::from_secs(10)).await;
    }
    // The controller reclaims on the pod's deletion; the garbage collector, following the
    // ownerReferences lock → Lease → pod, may remove either of them first on a loaded
    // machine (and the counter moves once the controller has its delete's answer): count
    // for a moment. How fast a pod deletion frees its locks is measured in reclaim.rs.
    let pod_deleted = || {
        let metrics = ctl.get("/metrics").unwrap();
        metric(&metrics, "issuelock_reclaims_total{reason=\"pod_deleted\"}").unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pod_deleted() < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_controller = pod_deleted();
    println!(
        "pod-a's 2 locks: {by_controller} reclaimed by the controller, the rest by the garbage collector"
    );
    assert!((0.0..=2.0).contains(&by_controller), "{by_controller}");
    // Let any stray reconcile of pod-b's lock happen before looking at it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = lock_of(&client, &ns, held[2].1)
        .await
        .expect("pod-b's lock kept");
    assert_eq!(resource_version(&kept), versions[2]);
    for worker in workers.drain(..2) {
        let (code, stderr) = worker.wait();
        assert_eq!(
            code,
            Some(76),
            "the holder learns its lock was lost: {stderr}"
        );
    }
    drop(workers);
}

fn holder_alive(lock: &issuelock::IssueLock) -> bool {
    lock.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "HolderAlive" && c.status == "True")
    })
}

// The proxy runs on this test's runtime while the controller's start blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_api_errors_the_controller_backs_off_and_reclaims_only_what_it_confirmed() {
    let client = client().await;
    let ns = namespace(&client, "backoff").await;
    let proxy = FaultProxy::start().await;
    let scratch = Scratch::new("backoff");
    let ctl = ControllerProcess::start_as(
        &ns,
        Some(&proxy.kubeconfig(&scratch.0)),
        &["--leader-election=false"],
    );
    // Both holders talk to the API server directly; only the controller is behind the proxy.
    let _live = WorkerProcess::start(&ns, "live", "org/repo#live", None, 300);
    let doomed = WorkerProcess::start(&ns, "doomed", "org/repo#doomed", None, 300);
    for issue in ["org/repo#live", "org/repo#doomed"] {
        eventually(Duration::from_secs(20), "holder marked alive", || async {
            lock_of(&client, &ns, issue).await.filter(holder_alive)
        })
        .await;
    }
    let errors = |ctl: &ControllerProcess| -> f64 {
        ctl.get("/metrics")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("issuelock_reconcile_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = errors(&ctl);
    // The API server answers the controller 500 for three lease periods (kube's client
    // retries 429/503/504 itself, with backoff; a 500 reaches the controller's own retry
    // policy); one holder dies.
    proxy.answer(500);
    doomed.signal("KILL");
    tokio::time::sleep(LEASE * 3).await;
    let refused = proxy.refused();
    let failed = errors(&ctl) - before;
    for issue in ["org/repo#live", "org/repo#doomed"] {
        assert!(
            lock_of(&client, &ns, issue).await.is_some(),
            "{issue} reclaimed while the controller could not confirm anything"
        );
    }
    proxy.answer(0);
    println!(
        "3 lease periods of 500s: {refused} requests refused, {failed} failed reconciles (2 locks)"
    );
    // Both locks look expired once the Lease watch is cut off, so each is judged from the
    // first lease period on; with backoff (0.5-1 s doubling) that is at most 5 attempts
    // each in the two periods left, where a retry every second would make 12 each.
    assert!(failed <= 12.0, "{failed} failed reconciles: no backoff");
    // Once the API answers again: the dead holder's lock goes, the live one stays.
    wait_gone(&client, &ns, "org/repo#doomed", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lock_of(&client, &ns, "org/repo#live").await.is_some(),
        "the live lock was reclaimed"
    );
    let metrics = ctl.get("/metrics").unwrap();
    assert_eq!(
        metric(
            &metrics,
            "issuelock_reclaims_total{reason=\"lease_expired\"}"
        ),
        Some(1.0)
    );
}
