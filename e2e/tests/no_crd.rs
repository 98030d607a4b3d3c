//! Run against a cluster where the IssueLock CRD is not installed yet (`make test-e2e`
//! runs this target before any other e2e test installs it).

#[path = "support/mod.rs"]
mod support;

use support::*;

#[tokio::test]
async fn a_cluster_without_the_crd_is_named() {
    let crd = kubectl(&["get", "crd", "issuelocks.issuelock.dev"]);
    if crd.status.success() {
        eprintln!("skipped: the CRD is already installed in this cluster");
        return;
    }
    let client = client().await;
    let locks = lock_client(&client, "default", "w").await;
    let err = locks.try_acquire("x").await.unwrap_err();
    assert!(matches!(err, issuelock::Error::CrdNotInstalled), "{err:?}");

    let out = issuelock()
        .args(["run", "-n", "default", "--issue", "x", "--", "true"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("the IssueLock CRD (issuelocks.issuelock.dev/v1alpha1) is not installed"),
        "{stderr}"
    );
    let out = issuelock()
        .args(["list", "-n", "default"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("is not installed"));
}
