//! `try_acquire` when the create's outcome is unknown, against a scripted API server: the
//! transport fails after (or before) the server committed the create.

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
}

#[derive(Default)]
struct Server {
    script: Vec<OnCreate>,
    creates: usize,
    lock: Option<Value>,
    /// An object another holder already has (returned by GET if set).
    foreign: Option<Value>,
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
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let method = parts.method.as_str().to_owned();
    let mut s = server.lock().unwrap();
    let object = || -> Value { serde_json::from_slice(&bytes).unwrap() };
    match (method.as_str(), path.as_str()) {
        ("POST", p) if p.ends_with("/leases") => {
            let mut lease = object();
            lease["metadata"]["uid"] = json!("lease-uid");
            lease["metadata"]["resourceVersion"] = json!("1");
            respond(StatusCode::CREATED, lease)
        }
        ("PUT", p) if p.contains("/leases/") => respond(StatusCode::OK, object()),
        ("POST", p) if p.ends_with("/selfsubjectreviews") => respond(StatusCode::CREATED, object()),
        ("GET", p) if p.ends_with("/issuelocks") && query.contains("watch=true") => {
            drop(s);
            std::future::pending().await
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
            match step {
                OnCreate::CommitThenDrop => {
                    s.lock = Some(lock);
                    Err("connection reset by peer".into())
                }
                OnCreate::Drop => Err("connection reset by peer".into()),
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
        ("GET", p) if p.contains("/issuelocks/") => {
            match s.foreign.clone().or_else(|| s.lock.clone()) {
                Some(l) => respond(StatusCode::OK, l),
                None => respond(StatusCode::NOT_FOUND, not_found()),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, not_found()),
    }
}

async fn client_for(server: Server) -> (LockClient, Arc<StdMutex<Server>>) {
    let server = Arc::new(StdMutex::new(server));
    let shared = server.clone();
    let service = tower::service_fn(move |req| handle(shared.clone(), req));
    let client = kube::Client::new(service, "ns");
    let me = HolderIdentity {
        identity: "me".into(),
        pod: None,
        pod_namespace: None,
    };
    let locks = LockClient::start(client, LockConfig::new("ns", me))
        .await
        .expect("client starts");
    (locks, server)
}

#[tokio::test]
async fn a_create_committed_before_the_connection_dropped_is_adopted() {
    let (locks, server) = client_for(Server {
        script: vec![OnCreate::CommitThenDrop],
        ..Server::default()
    })
    .await;
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
    let (locks, server) = client_for(Server {
        script: vec![OnCreate::Drop, OnCreate::Created],
        ..Server::default()
    })
    .await;
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
    let (locks, server) = client_for(Server {
        script: vec![OnCreate::Drop; 3],
        ..Server::default()
    })
    .await;
    let err = locks.try_acquire("org/repo#4").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert_eq!(
        server.lock().unwrap().creates,
        3,
        "three attempts, then give up"
    );
}

#[tokio::test]
async fn a_lock_of_another_task_of_this_client_is_never_adopted() {
    let (locks, server) = client_for(Server {
        script: vec![OnCreate::Drop],
        ..Server::default()
    })
    .await;
    // Same Lease and identity (another task of this client holds it), other nonce.
    server.lock().unwrap().foreign = Some(json!({
        "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
        "metadata": {"name": IssueKey::parse("org/repo#5").unwrap().lock_name(), "namespace": "ns",
                     "uid": "sibling", "resourceVersion": "9",
                     "annotations": {ACQUIRE_NONCE_ANNOTATION: "someone-elses-call"}},
        "spec": {"issue": "org/repo#5", "holder": {"identity": "me", "lease": locks.holder().lease}}
    }));
    let got = locks.try_acquire("org/repo#5").await.unwrap();
    assert!(matches!(got, Acquisition::Held(_)), "{got:?}");
}

#[tokio::test]
async fn a_server_error_on_create_is_treated_as_an_unknown_outcome() {
    let (locks, server) = client_for(Server {
        script: vec![OnCreate::CommitThen504],
        ..Server::default()
    })
    .await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#6").await.unwrap() else {
        panic!("a create committed behind a 504 is ours");
    };
    assert_eq!(server.lock().unwrap().creates, 1);
    drop(guard);
}
