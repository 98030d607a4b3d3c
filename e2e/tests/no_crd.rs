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

    exits_with(
        issuelock_run("default", "x").args(["--", "true"]),
        1,
        "the IssueLock CRD (issuelocks.issuelock.dev/v1alpha1) is not installed",
    );
    let out = issuelock()
        .args(["list", "-n", "default"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("is not installed"));

    a_crd_older_than_the_client_is_named();
}

/// A CRD from before `spec.holder.pod.namespace` prunes that field; a holder whose pod is
/// in another namespace would then be judged by a pod the controller cannot find. The
/// client notices the pruned create, gives the lock back and says what to do.
fn a_crd_older_than_the_client_is_named() {
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/issuelock.dev_issuelocks.yaml"
    );
    let mut old: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(crd).unwrap()).unwrap();
    let pod = &mut old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["holder"]["properties"]["pod"]["properties"];
    assert!(
        pod.as_object_mut().unwrap().remove("namespace").is_some(),
        "the committed CRD has spec.holder.pod.namespace"
    );
    let out = kubectl_stdin(
        &["apply", "-f", "-"],
        &serde_saphyr::to_string(&old).unwrap(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    wait_crd_established();
    let stderr = exits_with(
        issuelock_run("default", "old-crd")
            .args(["--", "true"])
            .env("POD_NAME", "worker-0")
            .env("POD_UID", "00000000-0000-0000-0000-000000000001")
            .env("POD_NAMESPACE", "elsewhere"),
        2,
        "dropped spec.holder.pod.namespace",
    );
    assert!(stderr.contains("older than this client"), "{stderr}");
    let left = kubectl_ok(&["get", "issuelocks", "-n", "default", "-o", "name"]);
    assert!(left.trim().is_empty(), "no lock left behind: {left}");
    // Leave the cluster as found: without the CRD.
    kubectl_ok(&["delete", "crd", "issuelocks.issuelock.dev", "--wait=true"]);
}
