//! The Helm chart, installed with the real `helm` into the test control plane; the
//! controller then runs as the chart's ServiceAccount (a TokenRequest token) and workers
//! as a ServiceAccount bound to the chart's issuelock-worker ClusterRole.

use crate::support::*;
use std::process::Command;
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/issuelock");

fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("helm")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("helm runs");
    let (o, e) = text(&out);
    (out.status.success(), o, e)
}

fn can_i(who: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", who];
    all.extend_from_slice(args);
    kubectl(&all).status.success()
}

#[tokio::test]
async fn the_chart_installs_and_its_rbac_is_sufficient_and_minimal() {
    let client = client().await;
    let sys = namespace(&client, "chart-system").await;
    let work = namespace(&client, "chart-workers").await;
    let server = kubectl_ok(&["version", "-o", "json"]);
    let server: serde_json::Value = serde_json::from_str(&server).unwrap();
    let server_version = server["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    let (ok, out, err) = helm(&["lint", CHART]);
    assert!(ok && !out.contains("[ERROR]"), "{out}{err}");
    let (ok, out, err) = helm(&["lint", CHART, "--set", "replicaCount=2", "--set", "typo=1"]);
    assert!(
        !ok && out.contains("typo"),
        "values.schema.json rejects unknown keys: {out}{err}"
    );

    let release = "il";
    let worker_values = format!(
        "workers[0].namespace={work},workers[0].serviceAccount=worker,workers[1].namespace={work},workers[1].serviceAccount=thief"
    );
    // The admission policy is cluster-wide; limit it to this test's namespace so that
    // concurrent tests (whose locks record no user) are not affected.
    kubectl_ok(&[
        "label",
        "namespace",
        &work,
        &format!("issuelock-e2e-vap={work}"),
    ]);
    let vap_selector =
        format!("admissionPolicy.namespaceSelector.matchLabels.issuelock-e2e-vap={work}");
    let (ok, rendered, err) = helm(&[
        "template",
        release,
        CHART,
        "-n",
        &sys,
        "--kube-version",
        &server_version,
        "--set",
        &worker_values,
        "--set",
        "dashboards.enabled=true",
        "--set",
        "signatures.secretName=issuelock-keys",
        "--set",
        "signatures.require=true",
        "--set",
        "metrics.serviceMonitor.enabled=false",
    ]);
    assert!(ok, "{err}");
    assert!(
        rendered.contains("--require-signatures")
            && rendered.contains("secretName: issuelock-keys")
    );
    assert!(
        rendered.contains("kind: ValidatingAdmissionPolicy")
            && rendered.contains("readOnlyRootFilesystem: true")
    );
    let dry = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &rendered);
    assert!(
        dry.status.success(),
        "server-side dry-run: {}",
        text(&dry).1
    );

    let (ok, out, err) = helm(&[
        "install",
        release,
        CHART,
        "-n",
        &sys,
        "--take-ownership",
        "--set",
        &worker_values,
        "--set",
        &vap_selector,
        "--set",
        "crds.keep=true",
    ]);
    assert!(ok, "helm install: {out}{err}");
    assert!(
        out.contains("kubectl get issuelocks"),
        "NOTES tell how to see locks: {out}"
    );

    // Least privilege, checked with impersonation.
    let controller = format!("system:serviceaccount:{sys}:{release}-issuelock");
    assert!(can_i(
        &controller,
        &["delete", "issuelocks.issuelock.dev", "-A"]
    ));
    assert!(can_i(
        &controller,
        &[
            "patch",
            "issuelocks.issuelock.dev",
            "--subresource=status",
            "-A"
        ]
    ));
    assert!(can_i(
        &controller,
        &[
            "update",
            "leases.coordination.k8s.io/issuelock-controller",
            "-n",
            &sys
        ]
    ));
    assert!(
        !can_i(
            &controller,
            &["update", "leases.coordination.k8s.io", "-n", &work]
        ),
        "only its election Lease"
    );
    assert!(!can_i(&controller, &["get", "secrets", "-A"]));
    assert!(!can_i(&controller, &["delete", "pods", "-n", &work]));
    assert!(!can_i(
        &controller,
        &["create", "issuelocks.issuelock.dev", "-n", &work]
    ));
    let worker = format!("system:serviceaccount:{work}:worker");
    assert!(can_i(
        &worker,
        &["create", "issuelocks.issuelock.dev", "-n", &work]
    ));
    assert!(
        !can_i(&worker, &["create", "issuelocks.issuelock.dev", "-n", &sys]),
        "bound only in its namespace"
    );
    assert!(!can_i(
        &worker,
        &[
            "patch",
            "issuelocks.issuelock.dev",
            "--subresource=status",
            "-n",
            &work
        ]
    ));

    // The controller as the chart's ServiceAccount, workers as theirs: reclaim works.
    kubectl_ok(&["create", "serviceaccount", "worker", "-n", &work]);
    let scratch_c = Scratch::new("chart-controller");
    let scratch_w = Scratch::new("chart-worker");
    let ctl_token = kubectl_ok(&[
        "create",
        "token",
        &format!("{release}-issuelock"),
        "-n",
        &sys,
        "--duration=1h",
    ]);
    let wrk_token = kubectl_ok(&["create", "token", "worker", "-n", &work, "--duration=1h"]);
    let ctl_kc = token_kubeconfig(&scratch_c.0, ctl_token.trim());
    let wrk_kc = token_kubeconfig(&scratch_w.0, wrk_token.trim());
    let ctl =
        ControllerProcess::start_as(&work, Some(&ctl_kc), &["--leader-election-namespace", &sys]);
    let uid = create_pod(&client, &work, "chart-worker-0").await;
    let w = WorkerProcess::start_as(
        &work,
        Some(&wrk_kc),
        "chart-worker-0",
        "org/repo#chart",
        Some(("chart-worker-0", &uid)),
        300,
    );
    let lock = eventually(Duration::from_secs(15), "lock taken", || async {
        lock_of(&client, &work, "org/repo#chart").await
    })
    .await;
    assert_eq!(
        lock.spec.holder.user.as_deref(),
        Some(format!("system:serviceaccount:{work}:worker").as_str())
    );
    eventually(Duration::from_secs(10), "HolderAlive written", || async {
        let l = lock_of(&client, &work, "org/repo#chart").await?;
        l.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "HolderAlive")
            .then_some(())
    })
    .await;
    // The admission policy binds the lock to its creator (checked with server-side dry
    // runs, which admission policies see too, so nothing is deleted while it activates).
    let name = lock.metadata.name.clone().unwrap();
    let thief = format!("system:serviceaccount:{work}:thief");
    let delete_as = |who: &str| {
        kubectl(&[
            "delete",
            "issuelock",
            &name,
            "-n",
            &work,
            "--as",
            who,
            "--dry-run=server",
        ])
    };
    let denied = eventually(
        Duration::from_secs(15),
        "admission policy active",
        || async {
            let out = delete_as(&thief);
            (!out.status.success()).then(|| text(&out).1)
        },
    )
    .await;
    assert!(denied.contains("only the lock's creator"), "{denied}");
    let forged = format!(
        "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: forged\n  namespace: {work}\n\
         spec:\n  issue: forged\n  holder:\n    identity: chart-worker-0\n    lease: x\n    user: system:serviceaccount:{work}:worker\n"
    );
    let out = kubectl_stdin(&["create", "--as", &thief, "-f", "-"], &forged);
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("spec.holder.user must be the creating user"),
        "{err}"
    );
    let own = delete_as(&format!("system:serviceaccount:{work}:worker"));
    assert!(
        own.status.success(),
        "the creator may delete its lock: {}",
        text(&own).1
    );

    let killed = Instant::now();
    w.signal("KILL");
    eventually(Duration::from_secs(15), "lock reclaimed", || async {
        lock_of(&client, &work, "org/repo#chart")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    println!(
        "as the chart's ServiceAccount: reclaimed {:.3}s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    let metrics = ctl.get("/metrics").unwrap();
    assert!(
        metrics.contains("issuelock_reclaims_total{reason=\"lease_expired\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "issuelock_reconcile_errors_total{category=\"forbidden\"}"
        ),
        None,
        "{metrics}"
    );
    drop(ctl);

    let (ok, _, err) = helm(&["uninstall", release, "-n", &sys]);
    assert!(ok, "{err}");
    assert!(
        kubectl(&["get", "crd", "issuelocks.issuelock.dev"])
            .status
            .success(),
        "crds.keep keeps the CRD"
    );
    delete_namespace(&client, &sys).await;
    delete_namespace(&client, &work).await;
}

#[tokio::test]
async fn kubectl_plugin_lists_shows_and_force_releases() {
    let client = client().await;
    let ns = namespace(&client, "plugin").await;
    let scratch = Scratch::new("plugin");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_issuelock"),
        scratch.0.join("kubectl-issuelock"),
    )
    .unwrap();
    let path = format!("{}:{}", scratch.0.display(), std::env::var("PATH").unwrap());
    let plugin = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("issuelock")
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", kubeconfig())
            .output()
            .unwrap();
        let (o, e) = text(&out);
        (out.status.code(), o, e)
    };
    let locks = lock_client(&client, &ns, "plugin-holder").await;
    let issuelock::Acquisition::Acquired(g) = locks.try_acquire("org/repo#plugin").await.unwrap()
    else {
        panic!()
    };

    let (code, out, err) = plugin(&["list", "-n", &ns]);
    assert_eq!(code, Some(0), "{err}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ISSUE", "HOLDER", "POD", "ALIVE", "AGE"]);
    assert!(
        out.contains("org/repo#plugin") && out.contains("plugin-holder"),
        "{out}"
    );
    let (_, out, _) = plugin(&["list", "-A", "-o", "yaml"]);
    assert!(out.contains("issue: org/repo#plugin"), "{out}");

    let (code, out, _) = plugin(&["show", "org/repo#plugin", "-n", &ns]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Holder:") && out.contains("plugin-holder") && out.contains("Lease:"),
        "{out}"
    );
    let (_, out, _) = plugin(&["show", "org/repo#plugin", "-n", &ns, "-o", "json"]);
    let shown: issuelock::IssueLock = serde_json::from_str(&out).unwrap();
    assert_eq!(shown.metadata.uid.as_deref(), Some(g.uid()));

    let (code, _, err) = plugin(&["release", "org/repo#plugin", "-n", &ns]);
    assert_eq!(code, Some(2));
    assert!(err.contains("pass --force"), "{err}");
    let (code, out, _) = plugin(&["release", "org/repo#plugin", "-n", &ns, "--force"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("released lock on \"org/repo#plugin\" held by plugin-holder"),
        "{out}"
    );
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("the holder learns it lost the lock");
    let (code, _, err) = plugin(&["show", "org/repo#plugin", "-n", &ns]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not locked"), "{err}");
    delete_namespace(&client, &ns).await;
}
