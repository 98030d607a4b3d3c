//! The holder side: lost signals, process_safely, heartbeat cost.

use crate::support::*;
use futures::StreamExt;
use issuelock::{Acquisition, Error, IssueLock, Outcome};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_deleted_lock_fires_its_guards_lost_signal() {
    let client = client().await;
    let ns = namespace(&client, "lost-signal").await;
    let api: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
    let locks = lock_client(&client, &ns, "w").await;
    let Acquisition::Acquired(g) = locks.try_acquire("x").await.unwrap() else {
        panic!()
    };
    let Acquisition::Acquired(other) = locks.try_acquire("y").await.unwrap() else {
        panic!()
    };
    assert!(!g.is_lost());
    let t = Instant::now();
    api.delete(g.name(), &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("lost signal fires");
    println!(
        "lock deleted -> guard's lost signal in {:.3}s",
        t.elapsed().as_secs_f64()
    );
    assert!(g.is_lost());
    assert!(!other.is_lost(), "only the deleted lock's guard is lost");
    assert!(matches!(g.release().await, Err(Error::LockLost { .. })));
    other.release().await.unwrap();
    locks.shutdown().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    assert!(
        leases
            .get_opt(&locks.holder().lease)
            .await
            .unwrap()
            .is_none(),
        "shutdown deletes the Lease"
    );
}

#[tokio::test]
async fn process_safely_reports_completed_held_and_lost() {
    let client = client().await;
    let ns = namespace(&client, "process-safely").await;
    let a = lock_client(&client, &ns, "a").await;
    let b = lock_client(&client, &ns, "b").await;

    let out = a
        .process_safely("job-1", |fence| async move { fence.fencing_token.0 > 0 })
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Completed(true)), "{out:?}");
    assert!(
        lock_of(&client, &ns, "job-1").await.is_none(),
        "released after the work"
    );

    let Acquisition::Acquired(held) = b.try_acquire("job-2").await.unwrap() else {
        panic!()
    };
    let out = a
        .process_safely("job-2", |_| async { unreachable!("must not run") })
        .await
        .unwrap();
    assert!(
        matches!(&out, Outcome::Held(by) if by.holder.identity == "b"),
        "{out:?}"
    );
    held.release().await.unwrap();

    // The lock is taken away mid-work: the work is cancelled and Lost is reported.
    let api: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    let out = a
        .process_safely("job-3", |fence| async move {
            let name = fence.issue.lock_name();
            api.delete(&name, &DeleteParams::default()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            "finished"
        })
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Lost { output: None }), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeat_writes_do_not_grow_with_the_number_of_locks() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "heartbeat-cost").await;
    let one = lock_client(&client, &ns, "holds-one").await;
    let many = lock_client(&client, &ns, "holds-thousand").await;
    let Acquisition::Acquired(g) = one.try_acquire("single").await.unwrap() else {
        panic!()
    };
    let t = Instant::now();
    let guards: Vec<_> = futures::stream::iter(0..1000)
        .map(|i| {
            let many = many.clone();
            async move { many.try_acquire(&format!("bulk/{i}")).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(guards.iter().all(|a| matches!(a, Acquisition::Acquired(_))));
    println!("1,000 acquires in {:.3}s", t.elapsed().as_secs_f64());

    // Count every write to the Leases and to the locks for 30 s.
    let writes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lock_api: Api<IssueLock> = Api::namespaced(client.clone(), &ns);
    let (w1, w2) = (writes.clone(), writes.clone());
    let lease_watch = tokio::spawn(async move {
        let mut ev = watcher(lease_api, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = ev.next().await {
            if let watcher::Event::Apply(l) = e {
                *w1.lock()
                    .unwrap()
                    .entry(l.metadata.name.unwrap())
                    .or_default() += 1;
            }
        }
    });
    let lock_watch = tokio::spawn(async move {
        let mut ev = watcher(lock_api, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = ev.next().await {
            if let watcher::Event::Apply(_) | watcher::Event::Delete(_) = e {
                *w2.lock().unwrap().entry("locks".into()).or_default() += 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    lease_watch.abort();
    lock_watch.abort();
    let w = writes.lock().unwrap().clone();
    let (n1, n1000) = (
        w.get(&one.holder().lease).copied().unwrap_or(0),
        w.get(&many.holder().lease).copied().unwrap_or(0),
    );
    let lock_writes = w.get("locks").copied().unwrap_or(0);
    println!(
        "Lease writes per minute: holder of 1 lock {}, holder of 1,000 locks {}; lock-object writes in the window: {lock_writes}",
        n1 * 2,
        n1000 * 2
    );
    assert!(n1 >= 10, "heartbeat renews every 2 s: {n1}");
    assert!(n1.abs_diff(n1000) <= 2, "{n1} vs {n1000}");
    assert_eq!(lock_writes, 0, "heartbeats never write lock objects");
    assert!(g.fencing_token().0 > 0);
    drop(guards);
    many.shutdown().await.unwrap();
    one.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_benchmark_prints_figures_against_the_floor() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "bench").await;
    let out = issuelock()
        .args([
            "bench",
            "-n",
            &ns,
            "--identity",
            "bench",
            "--iterations",
            "32",
            "--concurrency",
            "4",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "raw create (floor)",
        "try_acquire (free issue)",
        "release",
        "ratio to the floor",
        "VmRSS",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    assert!(
        kubectl_ok(&["get", "issuelocks", "-n", &ns, "-o", "name"])
            .trim()
            .is_empty(),
        "bench cleans up"
    );
}

#[tokio::test]
async fn a_lost_heartbeat_marks_every_guard_lost_and_refuses_new_acquires() {
    let client = client().await;
    let ns = namespace(&client, "heartbeat-lost").await;
    let locks = lock_client(&client, &ns, "w").await;
    let guards: Vec<_> = futures::stream::iter(["a", "b", "c"])
        .then(|k| {
            let locks = locks.clone();
            async move {
                match locks.try_acquire(k).await.unwrap() {
                    Acquisition::Acquired(g) => g,
                    other => panic!("free: {other:?}"),
                }
            }
        })
        .collect()
        .await;
    assert!(locks.is_healthy());
    // Someone deletes our heartbeat Lease: at the next renewal we are no longer trusted.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    leases
        .delete(&locks.holder().lease, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), locks.heartbeat_lost())
        .await
        .expect("heartbeat lost");
    for g in &guards {
        tokio::time::timeout(Duration::from_secs(1), g.lost())
            .await
            .expect("every guard is lost");
        assert!(g.is_lost());
    }
    assert!(!locks.is_healthy());
    let err = locks.try_acquire("d").await.unwrap_err();
    assert!(matches!(err, Error::HeartbeatUnhealthy), "{err:?}");
    assert!(
        lock_of(&client, &ns, "d").await.is_none(),
        "nothing created"
    );
}
