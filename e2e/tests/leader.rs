//! Two controller replicas: one leads; the standby takes over when the leader dies.

use crate::support::*;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_standby_takes_over_and_reclaims_when_the_leader_is_killed() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let mut a = ControllerProcess::start(&ns);
    let b = ControllerProcess::start(&ns);
    let leaders =
        |c: &ControllerProcess| metric(&c.get("/metrics").unwrap(), "issuelock_leader").unwrap();
    eventually(Duration::from_secs(10), "a leader", || async {
        (leaders(&a) + leaders(&b) == 1.0).then_some(())
    })
    .await;
    let (mut leader, standby) = if leaders(&a) == 1.0 {
        (&mut a, &b)
    } else {
        panic!("the first replica leads: it created the Lease")
    };
    assert_eq!(leaders(standby), 0.0, "exactly one leader");

    let _alive = WorkerProcess::start(&ns, "alive", "org/repo#alive", None, 300);
    let dead = WorkerProcess::start(&ns, "dead", "org/repo#dead", None, 300);
    for issue in ["org/repo#alive", "org/repo#dead"] {
        eventually(Duration::from_secs(15), "lock taken", || async {
            lock_of(&client, &ns, issue).await
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    leader.kill();
    dead.signal("KILL");
    let _ = &mut leader;
    eventually(Duration::from_secs(20), "standby leads", || async {
        (leaders(standby) == 1.0).then_some(())
    })
    .await;
    let took_over = killed.elapsed().as_secs_f64();
    eventually(Duration::from_secs(20), "dead lock reclaimed", || async {
        lock_of(&client, &ns, "org/repo#dead")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let reclaimed = killed.elapsed().as_secs_f64();
    println!(
        "leader SIGKILLed: standby leads after {took_over:.3}s, reclaimed the dead holder's lock after {reclaimed:.3}s (lease 6 s)"
    );
    assert!(took_over <= 8.0, "{took_over}");
    assert!(reclaimed <= 8.5, "{reclaimed}");
    assert!(
        lock_of(&client, &ns, "org/repo#alive").await.is_some(),
        "the live lock is kept"
    );
    let metrics = standby.get("/metrics").unwrap();
    assert!(
        metrics.contains("issuelock_reclaims_total{reason=\"lease_expired\"} 1"),
        "{metrics}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reclaim_events = || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("HolderLeaseExpired"))
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(5), "reclaim event", || async {
        (!reclaim_events().await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reclaims = reclaim_events().await;
    assert_eq!(
        reclaims.len(),
        1,
        "reclaimed once, by one replica: {reclaims:?}"
    );
    assert_eq!(reclaims[0].count.unwrap_or(1), 1);
}

#[tokio::test]
async fn a_paused_leader_stops_acting_and_the_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "leader-paused").await;
    let a = ControllerProcess::start(&ns);
    let b = ControllerProcess::start(&ns);
    let leading = |c: &ControllerProcess| {
        metric(&c.get("/metrics").unwrap(), "issuelock_leader").unwrap() == 1.0
    };
    eventually(Duration::from_secs(10), "a leads", || async {
        leading(&a).then_some(())
    })
    .await;
    assert!(!leading(&b));

    signal_group(a.child.id(), "STOP");
    let paused = Instant::now();
    eventually(Duration::from_secs(15), "standby leads", || async {
        leading(&b).then_some(())
    })
    .await;
    let took_over = paused.elapsed().as_secs_f64();
    let dead = WorkerProcess::start(&ns, "dead", "org/repo#paused", None, 300);
    eventually(Duration::from_secs(15), "lock taken", || async {
        lock_of(&client, &ns, "org/repo#paused").await
    })
    .await;
    dead.signal("KILL");
    eventually(
        Duration::from_secs(15),
        "reclaimed by the new leader",
        || async {
            lock_of(&client, &ns, "org/repo#paused")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;

    // The old leader resumes past its renew deadline: it knows it no longer leads.
    signal_group(a.child.id(), "CONT");
    let resumed = Instant::now();
    eventually(Duration::from_secs(3), "old leader steps down", || async {
        (!leading(&a)).then_some(())
    })
    .await;
    println!(
        "leader SIGSTOPped: standby led after {took_over:.3}s; resumed leader reported standby after {:.3}s",
        resumed.elapsed().as_secs_f64()
    );
    assert!(took_over <= 8.0, "{took_over}");
    assert!(leading(&b), "one leader at a time");
    let a_metrics = a.get("/metrics").unwrap();
    assert!(
        a_metrics.contains("issuelock_reclaims_total{reason=\"lease_expired\"} 0"),
        "{a_metrics}"
    );
}
