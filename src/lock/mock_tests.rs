//! The lock client against a scripted API server: creates whose outcome is unknown (the
//! transport fails after or before the server committed), and every path that could leave
//! a lock behind while the client lives, ending with the clean-up deleting it.

use super::*;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
type BoxError = Box<dyn std::error::Error + Send + Sync>;
use std::sync::Mutex as StdMutex;

/// What the scripted server does with the n-th create of an IssueLock.
#[derive(Clone, Copy, Debug)]
enum OnCreate {
    /// Commit the object, then drop the connection.
    CommitThenDrop,
    /// Drop the connection without committing.
    Drop,
    /// Answer 201.
    Created,
    /// Commit the object, then answer 504 Gateway Timeout.
    CommitThen504,
    /// Commit the object, then the API server becomes unreachable (see `Server::down`).
    CommitThenOutage,
    /// Commit the object and never answer.
    CommitThenHang,
}

#[derive(Default)]
struct Server {
    script: Vec<OnCreate>,
    creates: usize,
    lock: Option<Value>,
    /// An object another holder already has (returned by GET if set).
    foreign: Option<Value>,
    /// While true, every request on IssueLocks fails at the transport (an outage).
    down: bool,
    /// How many of the next deletes fail at the transport.
    failing_deletes: usize,
    /// While true, deletes are never answered (nor executed).
    hanging_deletes: bool,
    /// uids of the lock objects deleted.
    deleted: Vec<String>,
}

impl Server {
    /// A server answering the creates as `script` says, one entry per create.
    fn scripted(script: Vec<OnCreate>) -> Self {
        Self {
            script,
            ..Self::default()
        }
    }
}

fn respond(status: StatusCode, body: Value) -> Result<Response<Body>, BoxError> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap())
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": "not found", "details": {"kind": "issuelocks"}})
}

async fn handle(
    server: Arc<StdMutex<Server>>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    match answer(&server, parts.method.as_str(), path, query, &bytes) {
        Some(reply) => reply,
        None => std::future::pending().await,
    }
}

/// The server's reply to one request; `None`: it never answers.
fn answer(
    server: &StdMutex<Server>,
    method: &str,
    path: &str,
    query: &str,
    bytes: &[u8],
) -> Option<Result<Response<Body>, BoxError>> {
    let mut s = server.lock().unwrap();
    let object = || -> Value { serde_json::from_slice(bytes).unwrap() };
    if s.down && path.contains("/issuelocks") && !query.contains("watch=true") {
        return Some(Err("connection refused".into()));
    }
    Some(match (method, path) {
        ("POST", p) if p.ends_with("/leases") => {
            let mut lease = object();
            lease["metadata"]["uid"] = json!("lease-uid");
            lease["metadata"]["resourceVersion"] = json!("1");
            respond(StatusCode::CREATED, lease)
        }
        ("PUT", p) if p.contains("/leases/") => respond(StatusCode::OK, object()),
        ("POST", p) if p.ends_with("/selfsubjectreviews") => respond(StatusCode::CREATED, object()),
        ("GET", p) if p.ends_with("/issuelocks") && query.contains("watch=true") => {
            return None;
        }
        ("GET", p) if p.ends_with("/issuelocks") => respond(
            StatusCode::OK,
            json!({"apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLockList", "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        ("POST", p) if p.ends_with("/issuelocks") => {
            let step = s
                .script
                .get(s.creates)
                .copied()
                .unwrap_or(OnCreate::Created);
            s.creates += 1;
            let mut lock = object();
            lock["metadata"]["uid"] = json!(format!("lock-uid-{}", s.creates));
            lock["metadata"]["resourceVersion"] = json!(format!("{}", 40 + s.creates));
            if matches!(step, OnCreate::Drop) {
                return Some(Err("connection reset by peer".into()));
            }
            if s.foreign.is_some() || s.lock.is_some() {
                return Some(respond(
                    StatusCode::CONFLICT,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                           "code": 409, "message": "already exists", "details": {"kind": "issuelocks"}}),
                ));
            }
            match step {
                OnCreate::CommitThenDrop => {
                    s.lock = Some(lock);
                    Err("connection reset by peer".into())
                }
                OnCreate::CommitThenOutage => {
                    s.lock = Some(lock);
                    s.down = true;
                    Err("connection reset by peer".into())
                }
                OnCreate::CommitThenHang => {
                    s.lock = Some(lock);
                    return None;
                }
                OnCreate::Drop => unreachable!("handled above"),
                OnCreate::CommitThen504 => {
                    s.lock = Some(lock);
                    respond(
                        StatusCode::GATEWAY_TIMEOUT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Timeout",
                               "code": 504, "message": "the server was unable to return a response in the time allotted"}),
                    )
                }
                OnCreate::Created => {
                    s.lock = Some(lock.clone());
                    respond(StatusCode::CREATED, lock)
                }
            }
        }
        ("DELETE", p) if p.contains("/issuelocks/") => {
            if s.failing_deletes > 0 {
                s.failing_deletes -= 1;
                return Some(Err("connection reset by peer".into()));
            }
            if s.hanging_deletes {
                return None;
            }
            let wanted = object()["preconditions"]["uid"].clone();
            let current = s.foreign.clone().or_else(|| s.lock.clone());
            match current {
                None => respond(StatusCode::NOT_FOUND, not_found()),
                Some(l) if l["metadata"]["uid"] != wanted => respond(
                    StatusCode::CONFLICT,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                           "code": 409, "message": "precondition failed: uid", "details": {"kind": "issuelocks"}}),
                ),
                Some(l) => {
                    s.deleted
                        .push(l["metadata"]["uid"].as_str().unwrap().to_owned());
                    if s.foreign.is_some() {
                        s.foreign = None;
                    } else {
                        s.lock = None;
                    }
                    respond(StatusCode::OK, l)
                }
            }
        }
        ("GET", p) if p.contains("/issuelocks/") => {
            match s.foreign.clone().or_else(|| s.lock.clone()) {
                Some(l) => respond(StatusCode::OK, l),
                None => respond(StatusCode::NOT_FOUND, not_found()),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, not_found()),
    })
}

async fn client_for(server: Server) -> (LockClient, Arc<StdMutex<Server>>) {
    client_with(server, |_| {}).await
}

async fn client_with(
    server: Server,
    configure: impl FnOnce(&mut LockConfig),
) -> (LockClient, Arc<StdMutex<Server>>) {
    let server = Arc::new(StdMutex::new(server));
    let shared = server.clone();
    let service = tower::service_fn(move |req| handle(shared.clone(), req));
    let client = kube::Client::new(service, "ns");
    let me = HolderIdentity {
        identity: "me".into(),
        pod: None,
        pod_namespace: None,
    };
    let mut config = LockConfig::new("ns", me);
    configure(&mut config);
    let locks = LockClient::start(client, config)
        .await
        .expect("client starts");
    (locks, server)
}

/// Waits (on the paused test clock) until no lock object is left on the server.
async fn until_no_lock_is_left(server: &Arc<StdMutex<Server>>) {
    for _ in 0..600 {
        if server.lock().unwrap().lock.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a lock is still left behind after 60 s");
}

#[tokio::test]
async fn a_create_committed_before_the_connection_dropped_is_adopted() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::CommitThenDrop])).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#1").await.unwrap() else {
        panic!("our own committed lock must be adopted");
    };
    assert_eq!(guard.uid(), "lock-uid-1");
    assert_eq!(guard.fencing_token(), FencingToken(41));
    assert_eq!(server.lock().unwrap().creates, 1, "no second create");
    drop(guard);
}

#[tokio::test]
async fn a_create_lost_before_commit_is_retried() {
    let (locks, server) =
        client_for(Server::scripted(vec![OnCreate::Drop, OnCreate::Created])).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#2").await.unwrap() else {
        panic!("the retried create succeeds");
    };
    assert_eq!(guard.uid(), "lock-uid-2");
    assert_eq!(server.lock().unwrap().creates, 2);
    drop(guard);
}

#[tokio::test]
async fn an_unknown_outcome_with_another_holder_reports_held() {
    let other = json!({
        "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
        "metadata": {"name": IssueKey::parse("org/repo#3").unwrap().lock_name(), "namespace": "ns",
                     "uid": "theirs", "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"issue": "org/repo#3", "holder": {"identity": "someone-else", "lease": "their-lease"}}
    });
    let (locks, _) = client_for(Server {
        script: vec![OnCreate::Drop],
        foreign: Some(other),
        ..Server::default()
    })
    .await;
    let Acquisition::Held(by) = locks.try_acquire("org/repo#3").await.unwrap() else {
        panic!("someone else's lock is never adopted");
    };
    assert_eq!(by.holder.identity, "someone-else");
    assert!(by.since.is_some());
}

#[tokio::test]
async fn creates_that_never_get_through_fail_with_the_cause() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::Drop; 3])).await;
    let err = locks.try_acquire("org/repo#4").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert_eq!(
        server.lock().unwrap().creates,
        3,
        "three attempts, then give up"
    );
}

#[tokio::test]
async fn a_lock_of_another_task_of_this_client_is_never_adopted_nor_released() {
    let (locks, server) =
        client_for(Server::scripted(vec![OnCreate::Created, OnCreate::Drop])).await;
    let Acquisition::Acquired(sibling) = locks.try_acquire("org/repo#5").await.unwrap() else {
        panic!("the first task takes the lock");
    };
    // Same Lease and identity, other nonce, held by a live guard: the create is lost, the
    // read-back finds the sibling's lock.
    let got = locks.try_acquire("org/repo#5").await.unwrap();
    let Acquisition::Held(by) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        by.holder.lease,
        locks.holder().lease,
        "held by this very client"
    );
    // A definite 409 too.
    let got = locks.try_acquire("org/repo#5").await.unwrap();
    assert!(matches!(got, Acquisition::Held(_)), "{got:?}");
    assert!(server.lock().unwrap().deleted.is_empty(), "never deleted");
    sibling.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_another_call_of_this_client_is_creating_is_reported_held() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::CommitThenHang])).await;
    let first = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.try_acquire("org/repo#7").await })
    };
    while server.lock().unwrap().lock.is_none() {
        tokio::task::yield_now().await;
    }
    // The first call's create is committed but unanswered: its lock is not an orphan.
    let got = locks.try_acquire("org/repo#7").await.unwrap();
    assert!(matches!(got, Acquisition::Held(_)), "{got:?}");
    assert!(server.lock().unwrap().deleted.is_empty());
    first.abort();
    let _ = first.await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_create_outcome_is_cleaned_up_once_the_api_answers_again() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::CommitThenOutage])).await;
    // Committed, then the connection and the read-back fail.
    let err = locks.try_acquire("org/repo#8").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        server.lock().unwrap().lock.is_some(),
        "still there while the API is down"
    );
    assert_eq!(locks.cleanup_stats().pending, 1);
    server.lock().unwrap().down = false;
    until_no_lock_is_left(&server).await;
    assert_eq!(server.lock().unwrap().deleted, ["lock-uid-1"]);
    let stats = locks.cleanup_stats();
    assert_eq!((stats.queued, stats.released, stats.pending), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn creates_of_unknown_outcome_on_every_attempt_are_cleaned_up() {
    let (locks, _server) = client_for(Server::scripted(vec![
        OnCreate::Drop,
        OnCreate::Drop,
        OnCreate::CommitThenDrop,
    ]))
    .await;
    // The last create committed; its read-back found it, so it is adopted.
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#9").await.unwrap() else {
        panic!("the committed create is ours");
    };
    assert_eq!(locks.cleanup_stats().queued, 0, "nothing left behind");
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_future_still_releases_its_lock() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::CommitThenHang])).await;
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), locks.try_acquire("org/repo#10")).await;
    assert!(dropped.is_err(), "the caller gave up first");
    assert!(
        server.lock().unwrap().lock.is_some(),
        "the create was committed"
    );
    until_no_lock_is_left(&server).await;
    assert_eq!(server.lock().unwrap().deleted, ["lock-uid-1"]);
    assert_eq!(locks.cleanup_stats().released, 1);
}

#[tokio::test(start_paused = true)]
async fn a_release_failing_in_process_safely_is_retried_in_the_background() {
    let (locks, server) = client_for(Server {
        failing_deletes: 1,
        ..Server::default()
    })
    .await;
    let outcome = locks
        .process_safely("org/repo#11", |_fence| async { 42 })
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Completed(42)), "{outcome:?}");
    until_no_lock_is_left(&server).await;
    assert_eq!(server.lock().unwrap().deleted, ["lock-uid-1"]);
    let stats = locks.cleanup_stats();
    assert_eq!((stats.released, stats.pending), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_orphan_of_this_client_found_on_create_is_released_and_the_lock_taken() {
    let (locks, server) = client_for(Server::default()).await;
    let name = IssueKey::parse("org/repo#12").unwrap().lock_name();
    server.lock().unwrap().lock = Some(json!({
        "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
        "metadata": {"name": name, "namespace": "ns", "uid": "orphan", "resourceVersion": "9",
                     "annotations": {ACQUIRE_NONCE_ANNOTATION: "a-call-long-gone"}},
        "spec": {"issue": "org/repo#12", "holder": {"identity": "me", "lease": locks.holder().lease}}
    }));
    let got = locks.try_acquire("org/repo#12").await.unwrap();
    let Acquisition::Acquired(guard) = got else {
        panic!("our own orphan is never reported as held: {got:?}")
    };
    assert_eq!(server.lock().unwrap().deleted, ["orphan"]);
    assert_ne!(guard.uid(), "orphan");
    assert_eq!(locks.cleanup_stats().released, 1);
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_guard_is_released_after_an_outage_and_shutdown_tries_once_more() {
    let (locks, server) = client_for(Server::default()).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#13").await.unwrap() else {
        panic!("free lock");
    };
    server.lock().unwrap().down = true;
    drop(guard);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(locks.cleanup_stats().pending, 1, "retried, not given up");
    server.lock().unwrap().down = false;
    locks.shutdown().await.unwrap();
    assert!(server.lock().unwrap().lock.is_none());
    assert_eq!(locks.cleanup_stats().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn a_release_future_dropped_before_its_answer_still_releases() {
    let (locks, server) = client_for(Server::default()).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#15").await.unwrap() else {
        panic!("free lock");
    };
    server.lock().unwrap().hanging_deletes = true;
    let gave_up = tokio::time::timeout(Duration::from_millis(100), guard.release()).await;
    assert!(gave_up.is_err(), "the caller gave up first");
    server.lock().unwrap().hanging_deletes = false;
    until_no_lock_is_left(&server).await;
    assert_eq!(locks.cleanup_stats().released, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lock_another_task_is_releasing_is_reported_held_not_taken_for_an_orphan() {
    let (locks, server) = client_for(Server::default()).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#17").await.unwrap() else {
        panic!("free lock");
    };
    server.lock().unwrap().hanging_deletes = true;
    let releasing = tokio::spawn(guard.release());
    tokio::task::yield_now().await;
    let got = locks.try_acquire("org/repo#17").await.unwrap();
    assert!(matches!(got, Acquisition::Held(_)), "{got:?}");
    server.lock().unwrap().hanging_deletes = false;
    let released = releasing.await.unwrap();
    assert!(released.is_err(), "the hung delete timed out");
    until_no_lock_is_left(&server).await;
    assert_eq!(server.lock().unwrap().deleted, ["lock-uid-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_guard_released_by_shutdown_and_dropped_later_leaves_nothing_pending() {
    let (locks, server) = client_for(Server::default()).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#16").await.unwrap() else {
        panic!("free lock");
    };
    locks.shutdown().await.unwrap();
    assert!(
        server.lock().unwrap().lock.is_none(),
        "released at shutdown"
    );
    assert!(guard.is_lost());
    drop(guard);
    assert_eq!(locks.cleanup_stats(), CleanupStats::default());
}

#[tokio::test]
async fn a_fractional_max_hold_is_rounded_up() {
    let (locks, server) = client_with(Server::default(), |c| {
        c.max_hold = Some(Duration::from_millis(1500))
    })
    .await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#14").await.unwrap() else {
        panic!("free lock");
    };
    let sent = server.lock().unwrap().lock.clone().unwrap();
    assert_eq!(
        sent["spec"]["maxHoldSeconds"], 2,
        "never before the holder's own timer"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_server_error_on_create_is_treated_as_an_unknown_outcome() {
    let (locks, server) = client_for(Server::scripted(vec![OnCreate::CommitThen504])).await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#6").await.unwrap() else {
        panic!("a create committed behind a 504 is ours");
    };
    assert_eq!(server.lock().unwrap().creates, 1);
    drop(guard);
}

#[tokio::test]
async fn an_absurd_max_hold_is_refused_before_any_call() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for max_hold in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(i64::MAX as u64 + 1),
        crate::lock::MAX_HOLD_LIMIT + Duration::from_millis(1),
    ] {
        let counted = calls.clone();
        let service = tower::service_fn(move |_req: Request<Body>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { respond(StatusCode::NOT_FOUND, not_found()) }
        });
        let me = HolderIdentity {
            identity: "me".into(),
            pod: None,
            pod_namespace: None,
        };
        let mut config = LockConfig::new("ns", me);
        config.max_hold = Some(max_hold);
        let err = LockClient::start(kube::Client::new(service, "ns"), config)
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Config(_)), "{max_hold:?}: {err:?}");
        assert!(
            err.to_string().contains("max hold time must be at most"),
            "{err}"
        );
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no API call"
    );
}

#[tokio::test]
async fn the_longest_max_hold_is_accepted_and_sent() {
    let (locks, server) = client_with(Server::default(), |c| {
        c.max_hold = Some(crate::lock::MAX_HOLD_LIMIT)
    })
    .await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#15").await.unwrap() else {
        panic!("free lock");
    };
    let sent = server.lock().unwrap().lock.clone().unwrap();
    assert_eq!(
        sent["spec"]["maxHoldSeconds"],
        crate::lock::MAX_HOLD_LIMIT.as_secs()
    );
    assert!(guard.max_hold_deadline().is_some());
    guard.release().await.unwrap();
}
