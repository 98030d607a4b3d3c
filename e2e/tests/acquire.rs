//! Acquire and release against the real API server.

use crate::support::*;
use issuelock::{Acquisition, Error, IssueLock};
use kube::api::{Api, DeleteParams};

#[tokio::test]
async fn sixty_four_racers_one_winner_and_tokens_increase() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "race").await;
    let mut racers = vec![];
    for i in 0..64 {
        racers.push(lock_client(&client, &ns, &format!("racer-{i}")).await);
    }
    // All 64 wait at a barrier, then create at once.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = racers
        .into_iter()
        .enumerate()
        .map(|(i, locks)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                (i, locks.try_acquire("org/repo#64").await.unwrap())
            })
        })
        .collect();
    let mut winners = vec![];
    let mut held = vec![];
    for t in tasks {
        match t.await.unwrap() {
            (i, Acquisition::Acquired(g)) => winners.push((i, g)),
            (_, Acquisition::Held(by)) => held.push(by),
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer must win");
    assert_eq!(held.len(), 63);
    let (winner, guard) = winners.pop().unwrap();
    for by in &held {
        assert_eq!(by.holder.identity, format!("racer-{winner}"));
        assert_eq!(by.issue, "org/repo#64");
        assert!(by.since.is_some());
    }
    let first = guard.fencing_token();
    guard.release().await.unwrap();

    let again = lock_client(&client, &ns, "latecomer").await;
    let Acquisition::Acquired(g2) = again.try_acquire("org/repo#64").await.unwrap() else {
        panic!("released lock must be free");
    };
    assert!(
        g2.fencing_token() > first,
        "{} must exceed {first}",
        g2.fencing_token()
    );
    g2.release().await.unwrap();
}

#[tokio::test]
async fn release_of_a_deleted_lock_reports_lost_and_never_deletes_the_successor() {
    let client = client().await;
    let ns = namespace(&client, "lost").await;
    let api: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
    let a = lock_client(&client, &ns, "holder-a").await;
    let b = lock_client(&client, &ns, "holder-b").await;

    // Deleted behind our back: release says LockLost.
    let Acquisition::Acquired(g) = a.try_acquire("issue-1").await.unwrap() else {
        panic!()
    };
    api.delete(g.name(), &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(g.release().await, Err(Error::LockLost { .. })));

    // Deleted and re-acquired by B: A's stale release fails and B's lock survives.
    let Acquisition::Acquired(ga) = a.try_acquire("issue-2").await.unwrap() else {
        panic!()
    };
    api.delete(ga.name(), &DeleteParams::default())
        .await
        .unwrap();
    let Acquisition::Acquired(gb) = b.try_acquire("issue-2").await.unwrap() else {
        panic!()
    };
    assert_eq!(ga.name(), gb.name());
    assert_ne!(ga.uid(), gb.uid());
    assert!(gb.fencing_token() > ga.fencing_token());
    let err = ga.release().await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    let still = api.get(gb.name()).await.unwrap();
    assert_eq!(still.metadata.uid.as_deref(), Some(gb.uid()));
    assert_eq!(still.spec.holder.identity, "holder-b");
    let name = gb.name().to_owned();
    gb.release().await.unwrap();
    assert!(api.get_opt(&name).await.unwrap().is_none());
}

#[tokio::test]
async fn a_client_does_not_take_its_own_lock_twice() {
    let client = client().await;
    let ns = namespace(&client, "twice").await;
    let a = lock_client(&client, &ns, "holder-a").await;
    let Acquisition::Acquired(g) = a.try_acquire("same").await.unwrap() else {
        panic!()
    };
    let Acquisition::Held(by) = a.try_acquire("same").await.unwrap() else {
        panic!("a second acquire by the same client must not hand out a second guard");
    };
    assert_eq!(by.holder.lease, a.holder().lease);
    g.release().await.unwrap();
}

#[tokio::test]
async fn cli_run_holds_the_lock_while_the_command_runs() {
    let client = client().await;
    let ns = namespace(&client, "cli-run").await;
    let out = issuelock_run(&ns, "org/repo#7")
        .args(["--identity", "cli-worker", "--"])
        .args(["sh", "-c", "kubectl get issuelocks -n \"$NS\" -o jsonpath='{.items[*].spec.issue}'; echo \" token=$ISSUELOCK_FENCING_TOKEN\"; exit 3"])
        .env("NS", &ns)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's exit status is passed on: {stderr}"
    );
    assert!(stdout.starts_with("org/repo#7 token="), "{stdout}");
    let token: u64 = stdout.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert!(token > 0);
    // Released afterwards.
    let left = kubectl_ok(&["get", "issuelocks", "-n", &ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");

    // Held by someone else: exit 75, the command never runs.
    let a = lock_client(&client, &ns, "other-worker").await;
    let Acquisition::Acquired(g) = a.try_acquire("org/repo#7").await.unwrap() else {
        panic!()
    };
    let out = issuelock_run(&ns, "org/repo#7")
        .args(["--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(75));
    assert!(stdout.is_empty());
    assert!(stderr.contains("held by other-worker"), "{stderr}");
    g.release().await.unwrap();

    // `issuelock list` shows what is held.
    let Acquisition::Acquired(g) = a.try_acquire("org/repo#8").await.unwrap() else {
        panic!()
    };
    let out = issuelock().args(["list", "-n", &ns]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.starts_with("ISSUE")
            && stdout.contains("org/repo#8")
            && stdout.contains("other-worker"),
        "{stdout}"
    );
    let out = issuelock()
        .args(["list", "-n", &ns, "-o", "json"])
        .output()
        .unwrap();
    // A `List`, as `kubectl get -o json` prints several objects.
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    let items: Vec<IssueLock> = serde_json::from_value(list["items"].clone()).unwrap();
    assert_eq!(items.len(), 1);
    g.release().await.unwrap();
}
