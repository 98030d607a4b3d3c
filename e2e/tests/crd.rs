//! The CRD as users meet it through kubectl.

use crate::support::*;
use issuelock::Acquisition;

#[tokio::test]
async fn crd_is_established_and_kubectl_shows_columns_and_docs() {
    let client = client().await;
    let ns = namespace(&client, "crd-columns").await;
    let conditions = kubectl_ok(&[
        "get",
        "crd",
        "issuelocks.issuelock.dev",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(conditions, "True");

    let locks = lock_client(&client, &ns, "worker-a").await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#123").await.unwrap() else {
        panic!("fresh issue must be free");
    };
    let table = kubectl_ok(&["get", "issuelocks", "-n", &ns]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ISSUE", "HOLDER", "POD", "ALIVE", "AGE"]);
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with(guard.name()) && row.contains("org/repo#123") && row.contains("worker-a"),
        "{table}"
    );
    // Short name and category work too.
    assert!(kubectl_ok(&["get", "il", "-n", &ns]).contains("org/repo#123"));
    assert!(kubectl_ok(&["get", "issuelock", "-n", &ns, "-o", "name"]).contains(guard.name()));

    let explain = kubectl_ok(&["explain", "issuelock.spec"]);
    for needle in [
        "The exact issue key",
        "Who holds the lock",
        "hard cap",
        "HMAC-SHA256",
    ] {
        assert!(
            explain.contains(needle),
            "kubectl explain lacks {needle:?}:\n{explain}"
        );
    }
    let explain_holder = kubectl_ok(&["explain", "issuelock.spec.holder.lease"]);
    assert!(
        explain_holder.contains("heartbeat Lease"),
        "{explain_holder}"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn the_api_server_rejects_objects_that_violate_the_schema() {
    let client = client().await;
    let ns = namespace(&client, "crd-schema").await;
    let lock = |name: &str, issue: &str| {
        format!(
            "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  issue: {issue}\n  holder:\n    identity: someone\n    lease: someone-lease\n"
        )
    };
    let cases = [
        (lock("empty", "\"\""), "spec.issue"),
        (lock("newline", "\"a\\nb\""), "spec.issue"),
        (lock("nul", "\"a\\u0000b\""), "spec.issue"),
        (
            lock("long", &format!("\"{}\"", "x".repeat(1025))),
            "spec.issue",
        ),
        (
            format!(
                "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: noholder\n  namespace: {ns}\nspec:\n  issue: x\n"
            ),
            "spec.holder",
        ),
        (
            format!(
                "apiVersion: issuelock.dev/v1alpha1\nkind: IssueLock\nmetadata:\n  name: badhold\n  namespace: {ns}\n\
                 spec:\n  issue: x\n  maxHoldSeconds: 0\n  holder:\n    identity: a\n    lease: b\n"
            ),
            "spec.maxHoldSeconds",
        ),
    ];
    for (yaml, field) in cases {
        let out = kubectl_stdin(&["apply", "-f", "-"], &yaml);
        let (_, err) = text(&out);
        assert!(!out.status.success(), "accepted invalid object:\n{yaml}");
        assert!(
            err.contains(field),
            "error for {field} does not name it: {err}"
        );
    }

    // A valid object is accepted, and its spec can never change afterwards (CEL rule).
    let ok = lock("valid", "\"fix the 🦀\"");
    assert!(kubectl_stdin(&["apply", "-f", "-"], &ok).status.success());
    let out = kubectl(&[
        "patch",
        "issuelock",
        "valid",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"holder":{"identity":"thief","lease":"someone-lease"}}}"#,
    ]);
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("spec is immutable"),
        "{err}"
    );
    let holder = kubectl_ok(&[
        "get",
        "issuelock",
        "valid",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.holder.identity}",
    ]);
    assert_eq!(holder, "someone");
}
