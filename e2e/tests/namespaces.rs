//! Holders whose pod lives in another namespace than their locks, and signatures that
//! must name a known key bound to the holder. Real `issuelock run` and `issuelock
//! controller` processes; heartbeats use FAST_HEARTBEAT (lease 6 s, deadline 4 s,
//! interval 1 s).

use crate::support::*;
use issuelock::signature::Keyring;
use issuelock::{Acquisition, LockClient, LockGuard};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: f64 = 6.0;

/// Applies this tree's CRD again: the cluster may be shared with test binaries of older
/// trees, whose CRD (without `spec.holder.pod.namespace`) makes the API server prune the
/// field.
fn ensure_current_crd() {
    apply_crd();
}

/// Waits (`limit` at most) until the lock on `issue` is reclaimed, prints how long after
/// `since` it went (`what` says what happened then), and waits for the Event `reason`.
async fn wait_reclaimed(
    client: &kube::Client,
    ns: &str,
    issue: &str,
    limit: Duration,
    since: Instant,
    what: &str,
    reason: &str,
) {
    wait_gone(client, ns, issue, limit).await;
    println!(
        "{what} -> lock gone after {:.3}s",
        since.elapsed().as_secs_f64()
    );
    wait_event(client, ns, reason).await;
}

/// The `SignatureValid` condition of a lock, as (status, reason), once written.
async fn signature_condition(
    client: &kube::Client,
    ns: &str,
    issue: &str,
) -> Option<(String, String)> {
    let lock = lock_of(client, ns, issue).await?;
    lock.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SignatureValid")
        .map(|c| (c.status, c.reason))
}

/// A directory of signing keys, one file per key id.
fn key_dir(ids: &[&str]) -> Scratch {
    let dir = Scratch::new("keys");
    for id in ids {
        std::fs::write(dir.0.join(id), format!("secret-of-{id}-0123456789abcdef\n")).unwrap();
    }
    dir
}

/// A lock client in `ns` that records `user` as its creator and signs with `key` of `dir`.
async fn signing_client(
    client: &kube::Client,
    ns: &str,
    identity: &str,
    user: &str,
    dir: &Scratch,
    key: &str,
) -> LockClient {
    let mut config = lock_config(ns, identity);
    config.user = Some(user.to_owned());
    config.keys = Some(Arc::new(Keyring::from_dir(&dir.0, Some(key)).unwrap()));
    LockClient::start(client.clone(), config).await.unwrap()
}

async fn acquire(locks: &LockClient, issue: &str) -> LockGuard {
    match locks.try_acquire(issue).await.unwrap() {
        Acquisition::Acquired(guard) => guard,
        other => panic!("{issue}: {other:?}"),
    }
}

#[tokio::test]
async fn a_holder_whose_pod_is_in_another_namespace_is_judged_there() {
    let client = client().await;
    ensure_current_crd();
    let pods_ns = namespace(&client, "pods-a").await;
    let locks_ns = namespace(&client, "locks-b").await;
    // Watches the locks' namespace only: the holder pods are outside its cache.
    let _ctl = ControllerProcess::start(&locks_ns);
    let finisher_uid = create_pod(&client, &pods_ns, "finisher").await;
    let doomed_uid = create_pod(&client, &pods_ns, "doomed").await;
    let started = Instant::now();
    let finisher = WorkerProcess::start_from_pod(
        &locks_ns,
        &pods_ns,
        "finisher",
        &finisher_uid,
        "org/repo#finisher",
        20,
    );
    let doomed = WorkerProcess::start_from_pod(
        &locks_ns,
        &pods_ns,
        "doomed",
        &doomed_uid,
        "org/repo#doomed",
        300,
    );
    let lock = wait_taken(&client, &locks_ns, "org/repo#finisher").await;
    let pod = lock.spec.holder.pod.as_ref().unwrap();
    assert_eq!(
        (
            pod.name.as_str(),
            pod.uid.as_str(),
            pod.namespace.as_deref()
        ),
        ("finisher", finisher_uid.as_str(), Some(pods_ns.as_str()))
    );
    wait_taken(&client, &locks_ns, "org/repo#doomed").await;

    // No cross-namespace ownerReference: the garbage collector would delete the Lease
    // (and through it the locks) for want of a pod "finisher" in the locks' namespace.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &locks_ns);
    let lease = leases.get(&lock.spec.holder.lease).await.unwrap();
    assert!(
        lease
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "a Lease is never owned by a pod of another namespace"
    );

    // Alive for well over a lease duration: judged in the pod's namespace, nothing is
    // reclaimed (neither by the controller nor by the garbage collector).
    tokio::time::sleep(Duration::from_secs_f64(2.5 * LEASE)).await;
    for issue in ["org/repo#finisher", "org/repo#doomed"] {
        assert!(
            lock_of(&client, &locks_ns, issue).await.is_some(),
            "{issue} kept while its holder lives"
        );
    }
    let still = lock_of(&client, &locks_ns, "org/repo#finisher")
        .await
        .unwrap();
    assert_eq!(still.metadata.uid, lock.metadata.uid);
    let alive = still
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "HolderAlive")
        .map(|c| c.status);
    assert_eq!(alive.as_deref(), Some("True"));

    // Deleting the other holder's pod reclaims its lock promptly: the controller reads
    // pods outside its namespace directly, at the lock's next recheck.
    let t = Instant::now();
    delete_pod(&client, &pods_ns, "doomed").await;
    wait_reclaimed(
        &client,
        &locks_ns,
        "org/repo#doomed",
        Duration::from_secs_f64(LEASE + 4.0),
        t,
        "pod in another namespace deleted",
        "HolderPodDeleted",
    )
    .await;
    let (code, stderr) = doomed.wait();
    assert_eq!(code, Some(76), "{stderr}");

    // The first holder runs to completion and releases its own lock: never reclaimed.
    let (code, stderr) = finisher.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(
        lock_of(&client, &locks_ns, "org/repo#finisher")
            .await
            .is_none()
    );
    let reasons = event_reasons(&client, &locks_ns).await;
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("Holder") || r.starts_with("Signature"))
            .count(),
        1,
        "exactly one reclaim (the deleted pod's): {reasons:?}"
    );
}

#[tokio::test]
async fn an_unknown_key_id_is_reclaimed_after_the_grace_and_not_before() {
    const GRACE: f64 = 8.0;
    let client = client().await;
    let ns = namespace(&client, "unknown-key").await;
    let verify = key_dir(&["k1"]);
    let ctl = ControllerProcess::start_with(
        &ns,
        &[
            "--verify-keys",
            verify.0.to_str().unwrap(),
            "--require-signatures",
            "--unknown-key-grace-seconds",
            "8",
        ],
    );
    // A worker that already signs with a rotated-in key the controller does not have.
    let signer = key_dir(&["k2"]);
    let locks = signing_client(&client, &ns, "rotated", "someone", &signer, "k2").await;
    let t0 = Instant::now();
    let guard = acquire(&locks, "org/repo#rotated").await;
    let reported = eventually(
        Duration::from_secs(5),
        "SignatureValid=False UnknownKey",
        || async { signature_condition(&client, &ns, "org/repo#rotated").await },
    )
    .await;
    assert_eq!(reported, ("False".into(), "UnknownKey".into()));
    let gone = wait_gone(
        &client,
        &ns,
        "org/repo#rotated",
        Duration::from_secs_f64(GRACE + 10.0),
    )
    .await;
    let after = (gone - t0).as_secs_f64();
    println!(
        "lock with an unknown key id reclaimed {after:.3}s after its acquire (grace {GRACE} s)"
    );
    assert!(after >= GRACE, "reclaimed before the grace: {after:.3}s");
    assert!(after <= GRACE + 3.0, "reclaimed late: {after:.3}s");
    wait_event(&client, &ns, "SignatureKeyUnknown").await;
    let metrics = ctl.get("/metrics").unwrap();
    assert!(
        metrics.contains("issuelock_reclaims_total{reason=\"signature_key_unknown\"} 1"),
        "{metrics}"
    );
    assert!(guard.is_lost());
    let _ = locks.shutdown().await;
}

#[tokio::test]
async fn a_lock_signed_with_another_workers_key_is_reported_then_reclaimed() {
    let client = client().await;
    let ns = namespace(&client, "key-binding").await;
    let keys = key_dir(&["worker-a", "worker-b"]);
    let keys_path = keys.0.to_str().unwrap().to_owned();
    let sa = |name: &str| format!("system:serviceaccount:{ns}:{name}");
    // worker-a signs honestly; the "impostor" creates a lock in worker-b's name with
    // worker-a's key (the tag itself is valid: only the binding tells them apart).
    let honest = signing_client(&client, &ns, "a", &sa("worker-a"), &keys, "worker-a").await;
    let impostor = signing_client(&client, &ns, "b", &sa("worker-b"), &keys, "worker-a").await;
    let honest_guard = acquire(&honest, "org/repo#honest").await;
    let impostor_guard = acquire(&impostor, "org/repo#impostor").await;

    // Reported, not reclaimed, while signatures are not required.
    let mut reporter = ControllerProcess::start_with(
        &ns,
        &[
            "--verify-keys",
            &keys_path,
            "--key-binding",
            "service-account",
        ],
    );
    for (issue, expected) in [
        ("org/repo#honest", ("True", "Valid")),
        ("org/repo#impostor", ("False", "KeyNotBound")),
    ] {
        let got = eventually(Duration::from_secs(10), "SignatureValid", || async {
            signature_condition(&client, &ns, issue).await
        })
        .await;
        assert_eq!((got.0.as_str(), got.1.as_str()), expected, "{issue}");
    }
    reporter.kill();
    assert!(lock_of(&client, &ns, "org/repo#impostor").await.is_some());

    // Reclaimed at once when they are.
    let enforcer = ControllerProcess::start_with(
        &ns,
        &[
            "--verify-keys",
            &keys_path,
            "--key-binding",
            "service-account",
            "--require-signatures",
        ],
    );
    wait_gone(&client, &ns, "org/repo#impostor", Duration::from_secs(10)).await;
    wait_event(&client, &ns, "SignatureInvalid").await;
    let metrics = enforcer.get("/metrics").unwrap();
    assert!(
        metrics.contains("issuelock_reclaims_total{reason=\"signature_invalid\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lock_of(&client, &ns, "org/repo#honest").await.is_some(),
        "the honest worker's lock is kept"
    );
    assert!(impostor_guard.is_lost());
    honest_guard.release().await.unwrap();
    let _ = honest.shutdown().await;
    let _ = impostor.shutdown().await;
}

#[tokio::test]
async fn a_controller_that_may_not_read_the_pods_namespace_judges_by_the_lease() {
    let client = client().await;
    ensure_current_crd();
    let pods_ns = namespace(&client, "pods-hidden").await;
    let locks_ns = namespace(&client, "locks-scoped").await;
    // A controller whose RBAC covers the locks' namespace only.
    let role = [
        ("issuelocks.issuelock.dev", "get,list,watch,delete"),
        ("issuelocks.issuelock.dev/status", "patch"),
        ("leases.coordination.k8s.io", "get,list,watch,delete"),
        ("pods", "get,list,watch"),
        ("events.events.k8s.io", "create,patch"),
    ];
    kubectl_ok(&["create", "serviceaccount", "scoped", "-n", &locks_ns]);
    for (i, (resource, verbs)) in role.iter().enumerate() {
        let name = format!("scoped-{i}");
        kubectl_ok(&[
            "create",
            "role",
            &name,
            "-n",
            &locks_ns,
            &format!("--verb={verbs}"),
            &format!("--resource={resource}"),
        ]);
        kubectl_ok(&[
            "create",
            "rolebinding",
            &name,
            "-n",
            &locks_ns,
            &format!("--role={name}"),
            &format!("--serviceaccount={locks_ns}:scoped"),
        ]);
    }
    let token = kubectl_ok(&[
        "create",
        "token",
        "scoped",
        "-n",
        &locks_ns,
        "--duration=10m",
    ]);
    let scratch = Scratch::new("scoped-controller");
    let kc = token_kubeconfig(&scratch.0, token.trim());
    let _ctl = ControllerProcess::start_as(&locks_ns, Some(&kc), &["--leader-election=false"]);

    let uid = create_pod(&client, &pods_ns, "hidden").await;
    let worker =
        WorkerProcess::start_from_pod(&locks_ns, &pods_ns, "hidden", &uid, "org/repo#hidden", 300);
    let lock = wait_taken(&client, &locks_ns, "org/repo#hidden").await;
    assert_eq!(
        lock.spec.holder.pod.as_ref().unwrap().namespace.as_deref(),
        Some(pods_ns.as_str()),
        "the pod namespace is recorded (an older CRD would prune it)"
    );
    // The pod cannot be read: no pod evidence, the live Lease keeps the lock.
    tokio::time::sleep(Duration::from_secs_f64(2.0 * LEASE)).await;
    let still = lock_of(&client, &locks_ns, "org/repo#hidden").await;
    assert_eq!(
        still.and_then(|l| l.metadata.uid),
        lock.metadata.uid,
        "kept while its Lease is renewed"
    );
    // The holder dies: its Lease expires, and that evidence alone reclaims the lock.
    let t = Instant::now();
    worker.signal("KILL");
    wait_reclaimed(
        &client,
        &locks_ns,
        "org/repo#hidden",
        Duration::from_secs_f64(LEASE + 5.0),
        t,
        "holder with an unreadable pod SIGKILLed",
        "HolderLeaseExpired",
    )
    .await;
}
