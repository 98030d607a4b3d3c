//! A heartbeat Lease changed by someone else: the holder notices and stops trusting its
//! locks, and the controller never believes a shortened Lease duration (here without the
//! chart's admission policy, which forbids such changes outright; see chart.rs).

use crate::support::*;
use issuelock::{Acquisition, HeartbeatConfig, LockClient};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::time::{Duration, Instant};

/// Lease 6 s, deadline 4 s, renew every 1 s.
async fn fast_client(client: &kube::Client, ns: &str, identity: &str) -> LockClient {
    let mut config = lock_config(ns, identity);
    config.heartbeat = HeartbeatConfig::default()
        .with_lease_duration(Duration::from_secs(6))
        .with_renew_deadline(Duration::from_secs(4))
        .with_renew_interval(Duration::from_secs(1));
    LockClient::start(client.clone(), config).await.unwrap()
}

/// Merge-patches the heartbeat Lease of `locks` with `patch`, as someone else would.
async fn patch_lease(leases: &Api<Lease>, locks: &LockClient, patch: serde_json::Value) {
    leases
        .patch(
            &locks.holder().lease,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Expects `locks` to lose its heartbeat within 3 s (its next renewals); panics with `what`.
async fn expect_heartbeat_lost(locks: &LockClient, what: &str) {
    tokio::time::timeout(Duration::from_secs(3), locks.heartbeat_lost())
        .await
        .expect(what);
}

#[tokio::test]
async fn a_shortened_lease_is_noticed_by_its_holder_and_not_believed_by_the_controller() {
    let client = client().await;
    let ns = namespace(&client, "tamper-duration").await;
    let _controller = ControllerProcess::start(&ns);
    let locks = fast_client(&client, &ns, "victim").await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#tamper").await.unwrap() else {
        panic!("free issue")
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"leaseDurationSeconds": 1}});
    let tampered = Instant::now();
    patch_lease(&leases, &locks, patch).await;
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the holder notices the change at its next renewal");
    let noticed = tampered.elapsed();
    assert!(!locks.is_healthy(), "the whole heartbeat is lost");
    let reclaimed = eventually(Duration::from_secs(15), "lock reclaimed", || async {
        lock_of(&client, &ns, "org/repo#tamper")
            .await
            .is_none()
            .then(|| tampered.elapsed())
    })
    .await;
    println!(
        "Lease shortened to 1 s: holder lost its locks after {:.3}s, controller reclaimed after {:.3}s",
        noticed.as_secs_f64(),
        reclaimed.as_secs_f64()
    );
    assert!(
        reclaimed >= Duration::from_secs(5),
        "judged by the 6 s duration it was created with, not the 1 s written over it: {reclaimed:?}"
    );
    drop(guard);
    let _ = locks.shutdown().await;
}

#[tokio::test]
async fn a_deleted_or_taken_over_lease_loses_the_heartbeat() {
    let client = client().await;
    let ns = namespace(&client, "tamper-lease").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    // Taken over: another holder identity written into the Lease.
    let locks = fast_client(&client, &ns, "victim").await;
    let patch = serde_json::json!({"spec": {"holderIdentity": "thief"}});
    patch_lease(&leases, &locks, patch).await;
    expect_heartbeat_lost(&locks, "a taken-over Lease loses the heartbeat").await;
    // Relabelled: metadata counts too.
    let locks = fast_client(&client, &ns, "victim-2").await;
    let patch = serde_json::json!({"metadata": {"labels": {"tampered": "yes"}}});
    patch_lease(&leases, &locks, patch).await;
    expect_heartbeat_lost(&locks, "a relabelled Lease loses the heartbeat").await;
    // Deleted.
    let locks = fast_client(&client, &ns, "victim-3").await;
    leases
        .delete(&locks.holder().lease, &DeleteParams::default())
        .await
        .unwrap();
    expect_heartbeat_lost(&locks, "a deleted Lease loses the heartbeat").await;
}
