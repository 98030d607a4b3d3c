//! The Helm chart, installed with the real `helm` into the test control plane; the
//! controller then runs as the chart's ServiceAccount (a TokenRequest token) and workers
//! as a ServiceAccount bound to the chart's worker role (`<release>-issuelock-worker`).
//! Also: `helm lint --strict` and `helm template` assertions for every value, the chart
//! installed as a subchart of a generated parent chart watching one namespace (Roles
//! only), and the chart README listing every value.

use crate::support::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/issuelock");

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
            "leases.coordination.k8s.io/il-issuelock-controller",
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
    let (ctl, w, _identities) = controller_and_worker_as_chart_identities(
        &client,
        (
            &sys,
            &format!("{release}-issuelock"),
            "il-issuelock-controller",
        ),
        &work,
        "chart-worker-0",
        "org/repo#chart",
    )
    .await;
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

/// The API server's version, for `helm template --kube-version`.
fn server_version() -> String {
    let v: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["version", "-o", "json"])).unwrap();
    v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `helm` with its configuration, cache and data under `home` (a dependency build must
/// not touch the user's repositories).
fn helm_at(home: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("helm")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs");
    let (o, e) = text(&out);
    (out.status.success(), o, e)
}

/// `--set` arguments for `values`.
fn set_args(values: &[String]) -> Vec<&str> {
    values.iter().flat_map(|v| ["--set", v.as_str()]).collect()
}

/// `helm template` of the chart as `release` in `ns` with `values`: the documents.
fn render(release: &str, ns: &str, values: &[String]) -> Result<Vec<serde_json::Value>, String> {
    let version = server_version();
    let mut args = vec![
        "template",
        release,
        CHART,
        "-n",
        ns,
        "--kube-version",
        &version,
    ];
    args.extend(set_args(values));
    let (ok, out, err) = helm(&args);
    if !ok {
        return Err(err);
    }
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {have:?}")
        })
}

fn kinds(docs: &[serde_json::Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

/// Every value the chart gained for subchart use, scheduling, pod settings, one-namespace
/// RBAC, the NetworkPolicy, the PrometheusRule and the `helm test` pod, set to something
/// other than its default; `work` is the watched namespace, `pods` where one worker's pods
/// run, `sys` the release's.
fn every_new_value(sys: &str, work: &str, pods: &str) -> Vec<String> {
    [
        "global.e2e=yes".to_owned(),
        "enabled=true".to_owned(),
        format!("controller.watchNamespace={work}"),
        format!("workers[0].namespace={work}"),
        "workers[0].serviceAccount=worker".to_owned(),
        format!("workers[1].namespace={work}"),
        "workers[1].serviceAccount=ci-runner".to_owned(),
        format!("workers[1].serviceAccountNamespace={pods}"),
        "extraEnv[0].name=ISSUELOCK_E2E_EXTRA".to_owned(),
        "extraEnv[0].value=yes".to_owned(),
        "extraVolumes[0].name=scratch".to_owned(),
        "extraVolumes[0].emptyDir.sizeLimit=1Mi".to_owned(),
        "extraVolumeMounts[0].name=scratch".to_owned(),
        "extraVolumeMounts[0].mountPath=/scratch".to_owned(),
        "podLabels.team=locks".to_owned(),
        "podAnnotations.note=chart-e2e".to_owned(),
        "livenessProbe.initialDelaySeconds=1".to_owned(),
        "livenessProbe.periodSeconds=7".to_owned(),
        "livenessProbe.timeoutSeconds=2".to_owned(),
        "livenessProbe.failureThreshold=4".to_owned(),
        "readinessProbe.initialDelaySeconds=1".to_owned(),
        "readinessProbe.periodSeconds=3".to_owned(),
        "readinessProbe.timeoutSeconds=2".to_owned(),
        "readinessProbe.failureThreshold=5".to_owned(),
        "readinessProbe.successThreshold=2".to_owned(),
        "terminationGracePeriodSeconds=45".to_owned(),
        "priorityClassName=issuelock-e2e".to_owned(),
        "podAntiAffinity.type=hard".to_owned(),
        "podAntiAffinity.topologyKey=topology.kubernetes.io/zone".to_owned(),
        "podAntiAffinity.weight=50".to_owned(),
        "topologySpreadConstraints[0].maxSkew=1".to_owned(),
        "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname".to_owned(),
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway".to_owned(),
        "networkPolicy.enabled=true".to_owned(),
        r"networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=monitoring".to_owned(),
        "networkPolicy.apiServer.ports[0]=6443".to_owned(),
        "networkPolicy.apiServer.cidrs[0]=10.0.0.1/32".to_owned(),
        "networkPolicy.extraEgress[0].ports[0].port=53".to_owned(),
        "networkPolicy.extraEgress[0].ports[0].protocol=UDP".to_owned(),
        "metrics.prometheusRule.enabled=true".to_owned(),
        "metrics.prometheusRule.labels.release=prom".to_owned(),
        format!("metrics.prometheusRule.selector=namespace=\"{sys}\""),
        "metrics.prometheusRule.leaderFor=2m".to_owned(),
        "metrics.prometheusRule.for=5m".to_owned(),
        "metrics.prometheusRule.reclaimsPerSecond=0.5".to_owned(),
        "metrics.prometheusRule.heartbeatAgeSeconds=60".to_owned(),
        "metrics.prometheusRule.extraRules[0].alert=IssuelockE2e".to_owned(),
        "metrics.prometheusRule.extraRules[0].expr=vector(0) > 1".to_owned(),
        "tests.enabled=true".to_owned(),
        "tests.resources.limits.memory=32Mi".to_owned(),
    ]
    .into()
}

/// The alert expressions of a rendered PrometheusRule.
fn alert_exprs(rule: &serde_json::Value) -> BTreeMap<String, String> {
    rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_chart_lints_and_renders_every_value() {
    let client = client().await;
    let sys = namespace(&client, "render-sys").await;
    let work = namespace(&client, "render-work").await;
    let pods = namespace(&client, "render-pods").await;
    let values = every_new_value(&sys, &work, &pods);

    let (ok, out, err) = helm(&["lint", "--strict", CHART]);
    assert!(ok, "defaults: {out}{err}");
    let mut lint = vec!["lint", "--strict", CHART];
    lint.extend(set_args(&values));
    let (ok, out, err) = helm(&lint);
    assert!(ok, "every new value: {out}{err}");
    for bad in [
        "podAntiAffinity.type=sometimes",
        "livenessProbe.periodSeconds=0",
        "extraEnv[0].value=no-name",
        "metrics.prometheusRule.for=ten minutes",
        "podLabels.n=1",
        "networkPolicy.apiServer.ports[0]=70000",
        "tests.typo=1",
    ] {
        let (ok, out, err) = helm(&["lint", "--strict", CHART, "--set", bad]);
        assert!(!ok, "the schema rejects {bad}: {out}{err}");
    }

    // === the defaults ===
    let docs = render("issuelock", &sys, &[]).unwrap();
    let d = &find(&docs, "Deployment", "issuelock")["spec"]["template"]["spec"];
    let soft =
        &d["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(soft["weight"], 100, "{d}");
    assert_eq!(
        soft["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        soft["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "issuelock"
    );
    assert!(d["topologySpreadConstraints"].is_null() && d["priorityClassName"].is_null());
    assert_eq!(d["terminationGracePeriodSeconds"], 30);
    let c = &d["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&"--leader-election-lease=issuelock-controller".into()),
        "a release named issuelock keeps the documented Lease name: {c}"
    );
    // A release named issuelock keeps the documented role name.
    find(&docs, "ClusterRole", "issuelock-worker");
    find(&docs, "ClusterRole", "issuelock-controller");
    let k = kinds(&docs);
    assert!(
        !k.contains(&"NetworkPolicy") && !k.contains(&"PrometheusRule"),
        "{k:?}"
    );
    let test_pod = find(&docs, "Pod", "issuelock-test");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(
        test_pod["spec"]["containers"][0]["args"],
        serde_json::json!(["list", "--namespace", &*sys])
    );
    assert_eq!(
        test_pod["spec"]["securityContext"]["runAsNonRoot"], true,
        "{test_pod}"
    );
    let test_role = find(&docs, "Role", "issuelock-test");
    assert_eq!(test_role["metadata"]["namespace"], sys.as_str());
    assert!(
        test_role["metadata"]["annotations"].is_null(),
        "installed with the release; only the pod is a test hook"
    );
    let docs = render("other", &sys, &[]).unwrap();
    find(&docs, "ClusterRole", "other-issuelock-worker");
    find(&docs, "ClusterRole", "other-issuelock-controller");
    find(&docs, "Role", "other-issuelock-leader-election");

    // The ServiceMonitor scrapes the metrics Service of this release.
    let docs = render(
        "issuelock",
        &sys,
        &["metrics.serviceMonitor.enabled=true".into()],
    )
    .unwrap();
    let monitor = find(&docs, "ServiceMonitor", "issuelock");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "issuelock"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");

    // Overrides of the default spreading.
    let docs = render("issuelock", &sys, &["podAntiAffinity.type=none".into()]).unwrap();
    let d = &find(&docs, "Deployment", "issuelock")["spec"]["template"]["spec"];
    assert!(d["affinity"].is_null(), "{d}");
    let docs = render(
        "issuelock",
        &sys,
        &["affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1".into(),
          "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].key=pool".into(),
          "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].operator=Exists".into()],
    )
    .unwrap();
    let d = &find(&docs, "Deployment", "issuelock")["spec"]["template"]["spec"];
    assert!(
        d["affinity"]["podAntiAffinity"].is_null() && !d["affinity"]["nodeAffinity"].is_null(),
        "affinity replaces the default: {d}"
    );
    // The chart's labels win over podLabels (the selector depends on them).
    let docs = render(
        "issuelock",
        &sys,
        &[r"podLabels.app\.kubernetes\.io/instance=evil".into()],
    )
    .unwrap();
    let d = find(&docs, "Deployment", "issuelock");
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"],
        "issuelock"
    );
    // One namespace watched: workers taking locks elsewhere would never be reclaimed.
    let err = render(
        "issuelock",
        &sys,
        &[
            format!("controller.watchNamespace={work}"),
            format!("workers[0].namespace={pods}"),
            "workers[0].serviceAccount=w".into(),
        ],
    )
    .unwrap_err();
    assert!(err.contains("controller.watchNamespace"), "{err}");

    // === every new value ===
    let docs = render("rendered", &sys, &values).unwrap();
    let k = kinds(&docs);
    assert!(
        !k.contains(&"ClusterRole") && !k.contains(&"ClusterRoleBinding"),
        "one namespace watched: Roles only: {k:?}"
    );
    let deployment = find(&docs, "Deployment", "rendered-issuelock");
    let tpl = &deployment["spec"]["template"];
    assert_eq!(tpl["metadata"]["labels"]["team"], "locks");
    assert_eq!(
        tpl["metadata"]["labels"]["app.kubernetes.io/instance"],
        "rendered"
    );
    assert_eq!(tpl["metadata"]["annotations"]["note"], "chart-e2e");
    let d = &tpl["spec"];
    assert_eq!(d["terminationGracePeriodSeconds"], 45);
    assert_eq!(d["priorityClassName"], "issuelock-e2e");
    let hard = &d["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(hard[0]["topologyKey"], "topology.kubernetes.io/zone", "{d}");
    assert_eq!(
        hard[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "rendered"
    );
    let spread = &d["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"], "controller",
        "a constraint gets the pods' selector"
    );
    assert!(
        d["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "scratch" && v["emptyDir"]["sizeLimit"] == "1Mi"),
        "{d}"
    );
    let c = &d["containers"][0];
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "ISSUELOCK_E2E_EXTRA" && e["value"] == "yes"),
        "{c}"
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/scratch");
    let live = &c["livenessProbe"];
    assert_eq!(
        (
            &live["initialDelaySeconds"],
            &live["periodSeconds"],
            &live["timeoutSeconds"],
            &live["failureThreshold"],
            &live["httpGet"]["path"],
        ),
        (
            &1.into(),
            &7.into(),
            &2.into(),
            &4.into(),
            &"/healthz".into()
        )
    );
    let ready = &c["readinessProbe"];
    assert_eq!(
        (
            &ready["initialDelaySeconds"],
            &ready["periodSeconds"],
            &ready["timeoutSeconds"],
            &ready["failureThreshold"],
            &ready["successThreshold"],
            &ready["httpGet"]["path"],
        ),
        (
            &1.into(),
            &3.into(),
            &2.into(),
            &5.into(),
            &2.into(),
            &"/readyz".into()
        )
    );
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&format!("--namespace={work}").into())
    );
    // RBAC in the watched namespace; pod reads where a worker's pods run.
    let role = find(&docs, "Role", "rendered-issuelock-controller");
    assert_eq!(role["metadata"]["namespace"], work.as_str());
    let binding = find(&docs, "RoleBinding", "rendered-issuelock-controller");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["namespace"], sys.as_str());
    let pod_reads = find(&docs, "Role", "rendered-issuelock-controller-pods");
    assert_eq!(pod_reads["metadata"]["namespace"], pods.as_str());
    assert_eq!(pod_reads["rules"][0]["verbs"], serde_json::json!(["get"]));
    let worker_role = find(&docs, "Role", "rendered-issuelock-worker");
    assert_eq!(worker_role["metadata"]["namespace"], work.as_str());
    let remote = find(
        &docs,
        "RoleBinding",
        &format!("rendered-issuelock-worker-{pods}-ci-runner"),
    );
    assert_eq!(
        (
            &remote["roleRef"]["kind"],
            &remote["roleRef"]["name"],
            &remote["subjects"][0]["namespace"]
        ),
        (
            &"Role".into(),
            &"rendered-issuelock-worker".into(),
            &pods.as_str().into()
        )
    );
    for policy in [
        "rendered-issuelock-holder-binding",
        "rendered-issuelock-heartbeat-binding",
    ] {
        let b = find(&docs, "ValidatingAdmissionPolicyBinding", policy);
        assert_eq!(
            b["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            work.as_str(),
            "the policies apply in the watched namespace: {b}"
        );
    }
    // NetworkPolicy: in, the metrics port from the configured peers; out, the API server.
    let np = &find(&docs, "NetworkPolicy", "rendered-issuelock")["spec"];
    assert_eq!(np["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert_eq!(np["ingress"].as_array().unwrap().len(), 1);
    assert_eq!(
        np["ingress"][0]["ports"],
        serde_json::json!([{"port": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        np["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(
        np["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "rendered"
    );
    assert_eq!(
        np["egress"][0]["ports"],
        serde_json::json!([{"port": 6443, "protocol": "TCP"}])
    );
    assert_eq!(
        np["egress"][0]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.0.0.1/32"}}])
    );
    assert_eq!(
        np["egress"][1]["ports"],
        serde_json::json!([{"port": 53, "protocol": "UDP"}])
    );
    // PrometheusRule.
    let rule = find(&docs, "PrometheusRule", "rendered-issuelock");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let exprs = alert_exprs(rule);
    let sel = format!("{{namespace=\"{sys}\"}}");
    assert_eq!(
        exprs["IssuelockLeaderCount"],
        format!("(sum(issuelock_leader{sel}) != 1) or absent(issuelock_leader{sel})")
    );
    assert_eq!(
        exprs["IssuelockReclaimRateHigh"],
        format!("sum(rate(issuelock_reclaims_total{sel}[10m])) > 0.5")
    );
    assert_eq!(
        exprs["IssuelockHeartbeatStale"],
        format!("max(issuelock_heartbeat_age_seconds{sel}) > 60")
    );
    assert!(exprs["IssuelockReconcileErrors"].contains("issuelock_reconcile_errors_total"));
    assert_eq!(exprs["IssuelockE2e"], "vector(0) > 1");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["for"], "2m");
    assert!(rules[1..4].iter().all(|r| r["for"] == "5m"), "{rule}");
    // The test hook: in the watched namespace, with its resources.
    let test_pod = find(&docs, "Pod", "rendered-issuelock-test");
    assert_eq!(
        test_pod["spec"]["containers"][0]["args"],
        serde_json::json!(["list", "--namespace", &*work])
    );
    assert_eq!(
        test_pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "32Mi"
    );
    assert_eq!(
        find(&docs, "Role", "rendered-issuelock-test")["metadata"]["namespace"],
        work.as_str()
    );
    // The API server accepts every object (but the PrometheusRule: no Prometheus operator
    // CRD here).
    let objects: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] != "PrometheusRule")
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    let list = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        objects.join(",")
    );
    let dry = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &list);
    assert!(
        dry.status.success(),
        "server-side dry-run: {}",
        text(&dry).1
    );
}

/// Every value path of values.schema.json (descending into objects it describes) and
/// every top-level key of values.yaml appears in the chart README.
#[test]
fn the_chart_readme_documents_every_value() {
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap(),
    )
    .unwrap();
    fn walk(schema: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        let Some(props) = schema["properties"].as_object() else {
            return;
        };
        for (key, sub) in props {
            let path = format!("{prefix}{key}");
            if sub["properties"].is_object() {
                walk(sub, &format!("{path}."), out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&schema, "", &mut paths);
    let values: serde_json::Map<String, serde_json::Value> =
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let mut missing: Vec<String> = paths
        .into_iter()
        .filter(|p| !readme.contains(&format!("| `{p}` |")))
        .collect();
    missing.extend(
        values
            .keys()
            .filter(|k| {
                !readme.contains(&format!("| `{k}` |")) && !readme.contains(&format!("| `{k}."))
            })
            .cloned(),
    );
    assert!(
        missing.is_empty(),
        "charts/issuelock/README.md lacks {missing:?}"
    );
}

#[tokio::test]
async fn the_chart_installs_as_a_subchart_watching_one_namespace() {
    let client = client().await;
    let sys = namespace(&client, "sub-sys").await;
    let work = namespace(&client, "sub-work").await;
    let pods = namespace(&client, "sub-pods").await;
    // A parent chart that depends on this one (file://), with a global value and the
    // subchart's `enabled` condition: the schema must accept both.
    let scratch = Scratch::new("subchart");
    let parent = scratch.0.join("parent");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: parent\nversion: 0.0.1\ndependencies:\n  - name: issuelock\n    version: \">=0.0.0-0\"\n    repository: file://{CHART}\n    condition: issuelock.enabled\n"
        ),
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  team: e2e\nissuelock:\n  enabled: true\n  # The CRD is the suite's.\n  crds:\n    enabled: false\n",
    )
    .unwrap();
    let parent_dir = parent.to_str().unwrap();
    let (ok, out, err) = helm_at(&scratch.0, &["dependency", "build", parent_dir]);
    assert!(ok, "helm dependency build: {out}{err}");
    assert!(parent.join("charts/issuelock-0.1.0.tgz").exists(), "{out}");
    // Every new value but the PrometheusRule (no Prometheus operator here, and a CRD
    // installed for it would change kube-controller-manager's garbage collector for the
    // tests after this one: its rendering is checked above, its metrics below).
    let values: Vec<String> = every_new_value(&sys, &work, &pods)
        .into_iter()
        .chain(["metrics.prometheusRule.enabled=false".to_owned()])
        .map(|v| {
            if v.starts_with("global.") {
                v
            } else {
                format!("issuelock.{v}")
            }
        })
        .collect();
    let mut lint = vec!["lint", "--strict", parent_dir];
    lint.extend(set_args(&values));
    let (ok, out, err) = helm_at(&scratch.0, &lint);
    assert!(ok, "{out}{err}");

    // Installed with every new value.
    // Per run: its cluster-scoped objects (the admission policies) outlive a failed run.
    let release = format!("parent{}", std::process::id());
    let release = release.as_str();
    let full = format!("{release}-issuelock");
    let mut install = vec![
        "install",
        release,
        parent_dir,
        "-n",
        &sys,
        "--render-subchart-notes",
    ];
    install.extend(set_args(&values));
    let (ok, out, err) = helm_at(&scratch.0, &install);
    assert!(ok, "helm install of the parent chart: {out}{err}");
    assert!(
        out.contains(&format!("{full}-worker Role")),
        "NOTES name the worker role: {out}"
    );
    let (ok, manifest, err) = helm_at(&scratch.0, &["get", "manifest", release, "-n", &sys]);
    assert!(ok, "{err}");
    for object in ["kind: Deployment", "kind: NetworkPolicy"] {
        assert!(manifest.contains(object), "{object} installed: {manifest}");
    }
    assert!(
        !manifest.contains("kind: ClusterRole"),
        "one namespace watched: no ClusterRole: {manifest}"
    );
    let d = kubectl_ok(&["get", "deployment", &full, "-n", &sys, "-o", "json"]);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["team"], "locks");
    assert_eq!(
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        45
    );
    kubectl_ok(&["get", "networkpolicy", &full, "-n", &sys]);
    assert!(
        manifest.contains(&format!("name: {full}-worker")),
        "{manifest}"
    );

    // RBAC, checked with impersonation: the watched namespace only.
    let controller = format!("system:serviceaccount:{sys}:{full}");
    assert!(can_i(
        &controller,
        &["list", "issuelocks.issuelock.dev", "-n", &work]
    ));
    assert!(can_i(
        &controller,
        &["delete", "leases.coordination.k8s.io", "-n", &work]
    ));
    assert!(!can_i(
        &controller,
        &["list", "issuelocks.issuelock.dev", "-n", &pods]
    ));
    assert!(!can_i(
        &controller,
        &["list", "issuelocks.issuelock.dev", "-A"]
    ));
    assert!(
        can_i(&controller, &["get", "pods", "-n", &pods]),
        "reads the ci-runner's pods"
    );
    assert!(!can_i(&controller, &["list", "pods", "-n", &pods]));
    assert!(can_i(
        &controller,
        &[
            "update",
            &format!("leases.coordination.k8s.io/{full}-controller"),
            "-n",
            &sys
        ]
    ));
    let worker = format!("system:serviceaccount:{work}:worker");
    assert!(can_i(
        &worker,
        &["create", "issuelocks.issuelock.dev", "-n", &work]
    ));
    assert!(!can_i(
        &worker,
        &["create", "issuelocks.issuelock.dev", "-n", &pods]
    ));
    assert!(
        can_i(
            &worker,
            &["create", "selfsubjectreviews.authentication.k8s.io"]
        ),
        "every user may ask who it is (system:basic-user)"
    );
    let ci_runner = format!("system:serviceaccount:{pods}:ci-runner");
    assert!(can_i(
        &ci_runner,
        &["create", "issuelocks.issuelock.dev", "-n", &work]
    ));

    // The controller as the chart's ServiceAccount, watching one namespace, and a worker
    // bound to the worker Role: a lock taken, its holder killed, the lock reclaimed.
    let issue = "org/repo#subchart";
    let (ctl, w, _identities) = controller_and_worker_as_chart_identities(
        &client,
        (&sys, &full, &format!("{full}-controller")),
        &work,
        "sub-worker-0",
        issue,
    )
    .await;
    let lock = eventually(Duration::from_secs(15), "lock taken", || async {
        lock_of(&client, &work, issue).await
    })
    .await;
    assert_eq!(lock.spec.holder.user.as_deref(), Some(worker.as_str()));
    w.signal("KILL");
    eventually(Duration::from_secs(15), "lock reclaimed", || async {
        lock_of(&client, &work, issue).await.is_none().then_some(())
    })
    .await;
    let metrics = ctl.get("/metrics").unwrap();
    assert_eq!(
        metric(
            &metrics,
            "issuelock_reconcile_errors_total{category=\"forbidden\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    // Every metric the alerts use is one the controller exports.
    let docs = render(
        "alerts",
        &sys,
        &["metrics.prometheusRule.enabled=true".into()],
    )
    .unwrap();
    let rule = find(&docs, "PrometheusRule", "alerts-issuelock");
    let exprs = alert_exprs(rule);
    assert!(exprs.len() >= 4, "{rule}");
    for (alert, expr) in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("issuelock_"))
        {
            assert!(
                metrics.lines().any(|l| {
                    l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))
                        // Declared, no sample yet (a labelled counter never incremented);
                        // OpenMetrics declares counters without `_total`.
                        || l.starts_with(&format!("# TYPE {name} "))
                        || l.starts_with(&format!("# TYPE {} ", name.trim_end_matches("_total")))
                }),
                "{alert} uses {name}, which the controller does not export:\n{metrics}"
            );
        }
    }
    drop(ctl);

    let (ok, _, err) = helm_at(&scratch.0, &["uninstall", release, "-n", &sys]);
    assert!(ok, "{err}");
    assert!(
        !kubectl(&["get", "role", &format!("{full}-worker"), "-n", &work])
            .status
            .success(),
        "uninstall removes the worker Role"
    );
}

/// The controller as the chart's ServiceAccount (`controller`: its namespace, name and
/// election Lease there), watching `work`, and a worker as the ServiceAccount
/// `{work}/worker` taking `issue` from the Pod object `pod`: each with a kubeconfig made
/// of a token of its ServiceAccount, kept in the returned scratch directory.
async fn controller_and_worker_as_chart_identities(
    client: &kube::Client,
    (sys, controller_sa, election_lease): (&str, &str, &str),
    work: &str,
    pod: &str,
    issue: &str,
) -> (ControllerProcess, WorkerProcess, Scratch) {
    kubectl_ok(&["create", "serviceaccount", "worker", "-n", work]);
    let scratch = Scratch::new("chart-identities");
    let (ctl_dir, wrk_dir) = (scratch.0.join("controller"), scratch.0.join("worker"));
    std::fs::create_dir_all(&ctl_dir).unwrap();
    std::fs::create_dir_all(&wrk_dir).unwrap();
    let ctl_token = kubectl_ok(&["create", "token", controller_sa, "-n", sys, "--duration=1h"]);
    let wrk_token = kubectl_ok(&["create", "token", "worker", "-n", work, "--duration=1h"]);
    let ctl_kc = token_kubeconfig(&ctl_dir, ctl_token.trim());
    let wrk_kc = token_kubeconfig(&wrk_dir, wrk_token.trim());
    let ctl = ControllerProcess::start_as(
        work,
        Some(&ctl_kc),
        &[
            "--leader-election-namespace",
            sys,
            "--leader-election-lease",
            election_lease,
        ],
    );
    let uid = create_pod(client, work, pod).await;
    let worker = WorkerProcess::start_as(work, Some(&wrk_kc), pod, issue, Some((pod, &uid)), 300);
    (ctl, worker, scratch)
}
