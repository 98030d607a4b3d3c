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
        "workers[0].namespace={work},workers[0].serviceAccount=worker,workers[1].namespace={work},workers[1].serviceAccount=thief,\
         workers[2].namespace={work},workers[2].serviceAccount=ci-runner,workers[2].serviceAccountNamespace={sys}"
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
    let remote = format!("system:serviceaccount:{sys}:ci-runner");
    assert!(
        can_i(
            &remote,
            &["create", "issuelocks.issuelock.dev", "-n", &work]
        ) && can_i(
            &remote,
            &["update", "leases.coordination.k8s.io", "-n", &work]
        ) && !can_i(&remote, &["create", "issuelocks.issuelock.dev", "-n", &sys]),
        "a ServiceAccount of another namespace takes locks where it is bound"
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
        "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: {}\n  namespace: {work}\n\
         spec:\n  issue: forged\n  holder:\n    identity: chart-worker-0\n    lease: x\n    user: system:serviceaccount:{work}:worker\n",
        issuelock::IssueKey::parse("forged").unwrap().lock_name()
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

    // Beyond RBAC: give the thief every verb on locks and Leases in the namespace; the
    // admission policies alone must keep it off the worker's lock and heartbeat Lease,
    // while the controller keeps both powers.
    kubectl_ok(&[
        "create",
        "role",
        "broad",
        "-n",
        &work,
        "--verb=*",
        "--resource=issuelocks.issuelock.dev,issuelocks.issuelock.dev/status,leases.coordination.k8s.io",
    ]);
    kubectl_ok(&[
        "create",
        "rolebinding",
        "thief-broad",
        "-n",
        &work,
        "--role=broad",
        &format!("--serviceaccount={work}:thief"),
    ]);
    let lease = lock.spec.holder.lease.clone();
    let leases = kubectl_ok(&["get", "lease", &lease, "-n", &work, "-o", "json"]);
    let leases: serde_json::Value = serde_json::from_str(&leases).unwrap();
    assert_eq!(
        leases["metadata"]["annotations"]["issuelock.dev/holder-user"],
        format!("system:serviceaccount:{work}:worker"),
        "the heartbeat Lease records its creator"
    );
    let as_who = |who: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", &work, "--as", who, "--dry-run=server"]);
        let out = kubectl(&all);
        (out.status.success(), text(&out).1)
    };
    let tamper: [&[&str]; 5] = [
        &["delete", "lease", &lease],
        &[
            "patch",
            "lease",
            &lease,
            "--type=merge",
            "-p",
            r#"{"spec":{"leaseDurationSeconds":1}}"#,
        ],
        &["label", "lease", &lease, "issuelock.dev/heartbeat-"],
        &["label", "issuelock", &name, "tampered=yes"],
        &[
            "patch",
            "issuelock",
            &name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["x/y"]}}"#,
        ],
    ];
    eventually(
        Duration::from_secs(15),
        "heartbeat policy active",
        || async {
            let (ok, _) = as_who(&thief, tamper[0]);
            (!ok).then_some(())
        },
    )
    .await;
    for args in tamper {
        let (ok, err) = as_who(&thief, args);
        assert!(
            !ok && err.contains("only the") && err.contains("creator"),
            "{args:?} as another worker: {err}"
        );
    }
    let (ok, err) = as_who(&controller, tamper[0]);
    assert!(ok, "the controller may delete a heartbeat Lease: {err}");
    let (ok, err) = as_who(&controller, &["delete", "issuelock", &name]);
    assert!(ok, "the controller may delete a lock: {err}");
    let worker_user = format!("system:serviceaccount:{work}:worker");
    assert_renewing(&work, &lease).await;
    // The status is the controller's: nobody else may fake a live holder there.
    let (ok, err) = as_who(
        &thief,
        &[
            "patch",
            "issuelock",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[]}}"#,
        ],
    );
    assert!(
        !ok && err.contains("only the issuelock controller or an admin may write a lock's status"),
        "{err}"
    );
    let (ok, err) = as_who(
        &thief,
        &[
            "annotate",
            "lease",
            &lease,
            "--overwrite",
            &format!("issuelock.dev/holder-user=system:serviceaccount:{work}:thief"),
        ],
    );
    assert!(!ok, "another worker cannot re-annotate the Lease: {err}");
    let forged_lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: forged-lease\n  namespace: {work}\n\
         \x20 labels: {{issuelock.dev/heartbeat: \"true\"}}\n  annotations: {{issuelock.dev/holder-user: {worker_user}}}\nspec:\n  holderIdentity: x\n"
    );
    let out = kubectl_stdin(
        &["create", "--as", &thief, "--dry-run=server", "-f", "-"],
        &forged_lease,
    );
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("must record its creator"),
        "a Lease in another worker's name: {err}"
    );

    // Replicas sharing a ServiceAccount: with pod-bound tokens (what a pod's projected
    // token is), each lock and Lease is bound to its pod.
    pod_bound_replicas_cannot_touch_each_other(&client, &work).await;

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
        Some(0.0),
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
    assert_eq!(
        header,
        ["ISSUE", "HOLDER", "POD", "ALIVE", "HEARTBEAT", "AGE"]
    );
    // HEARTBEAT comes from the holder's Lease (renewed every 2 s by default).
    assert!(
        out.contains("org/repo#plugin") && out.contains("plugin-holder") && out.contains("s ago"),
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
}

/// Two pods of one ServiceAccount, each with a token bound to it: a worker in pod A takes
/// a lock (the client learns its pod from the token, no downward API needed); the replica
/// in pod B can neither delete nor change A's lock or Lease, nor create a lock in A's
/// name; A itself can.
async fn pod_bound_replicas_cannot_touch_each_other(client: &kube::Client, work: &str) {
    let scratch = Scratch::new("chart-replicas");
    let mut kubeconfigs = Vec::new();
    let mut uids = Vec::new();
    for pod in ["replica-a", "replica-b"] {
        let uid = create_pod_as(client, work, pod, "worker").await;
        let token = kubectl_ok(&[
            "create",
            "token",
            "worker",
            "-n",
            work,
            "--duration=1h",
            "--bound-object-kind=Pod",
            &format!("--bound-object-name={pod}"),
            &format!("--bound-object-uid={uid}"),
        ]);
        let dir = scratch.0.join(pod);
        std::fs::create_dir_all(&dir).unwrap();
        kubeconfigs.push(token_kubeconfig(&dir, token.trim()));
        uids.push(uid);
    }
    let issue = "org/repo#replicas";
    let w = WorkerProcess::start_as(work, Some(&kubeconfigs[0]), "replica-a", issue, None, 300);
    let lock = eventually(
        Duration::from_secs(15),
        "replica A holds the lock",
        || async { lock_of(client, work, issue).await },
    )
    .await;
    let pod = lock
        .spec
        .holder
        .pod
        .clone()
        .expect("the token's pod is recorded");
    assert_eq!(
        (pod.name.as_str(), pod.uid.as_str()),
        ("replica-a", uids[0].as_str())
    );
    let (name, lease) = (
        lock.metadata.name.clone().unwrap(),
        lock.spec.holder.lease.clone(),
    );
    let lease_json = kubectl_ok(&["get", "lease", &lease, "-n", work, "-o", "json"]);
    let lease_json: serde_json::Value = serde_json::from_str(&lease_json).unwrap();
    assert_eq!(
        lease_json["metadata"]["annotations"]["issuelock.dev/holder-pod-uid"],
        uids[0].as_str()
    );
    let as_replica = |i: usize, args: &[&str]| {
        let out = Command::new("kubectl")
            .args(args)
            .args(["-n", work, "--dry-run=server"])
            .env("KUBECONFIG", &kubeconfigs[i])
            .output()
            .unwrap();
        (out.status.success(), text(&out).1)
    };
    let attacks: [&[&str]; 2] = [
        &["delete", "issuelock", &name],
        &["delete", "lease", &lease],
    ];
    for args in attacks {
        let (ok, err) = as_replica(1, args);
        assert!(
            !ok && err.contains("creator"),
            "{args:?} from replica B: {err}"
        );
    }
    // An update (the verb workers hold on Leases) from replica B: a shortened duration.
    // Without a resourceVersion (an unconditional update), so that a renewal in between
    // cannot turn the answer into a 409 before admission is asked.
    let mut shortened = lease_json.clone();
    shortened["spec"]["leaseDurationSeconds"] = 1.into();
    shortened["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let out = kubectl_stdin_as(
        &kubeconfigs[1],
        &["replace", "--dry-run=server", "-f", "-"],
        &shortened.to_string(),
    );
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("creator"),
        "replica B rewrites A's Lease: {err}"
    );
    let (ok, err) = as_replica(0, attacks[0]);
    assert!(ok, "replica A may delete its own lock: {err}");
    assert_renewing(work, &lease).await;
    // Replica B cannot take a lock recording pod A either.
    let forged = format!(
        "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: {}\n  namespace: {work}\n\
         spec:\n  issue: forged-replica\n  holder:\n    identity: replica-a\n    lease: x\n    user: system:serviceaccount:{work}:worker\n\
         \x20   pod: {{name: replica-a, uid: {}}}\n",
        issuelock::IssueKey::parse("forged-replica")
            .unwrap()
            .lock_name(),
        uids[0]
    );
    let out = kubectl_stdin_as(
        &kubeconfigs[1],
        &["create", "--dry-run=server", "-f", "-"],
        &forged,
    );
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("spec.holder.pod.uid must be the uid"),
        "{err}"
    );
    w.signal("TERM");
    let (_, err) = w.wait();
    assert!(
        lock_of(client, work, issue).await.is_none(),
        "released on SIGTERM: {err}"
    );
}

/// Asserts that the holder of `lease` keeps renewing it (its resourceVersion moves on):
/// the admission policy lets the creator write its own Lease.
async fn assert_renewing(ns: &str, lease: &str) {
    let rv = || {
        kubectl_ok(&[
            "get",
            "lease",
            lease,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = rv();
    eventually(
        Duration::from_secs(10),
        "the holder renews its Lease",
        || async { (rv() != before).then_some(()) },
    )
    .await;
}
