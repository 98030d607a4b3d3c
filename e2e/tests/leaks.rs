//! Nothing is left behind while a lock client lives: a lock whose release failed, whose
//! create had an unknown outcome, or whose acquire call was dropped is deleted by the
//! client's background clean-up once the API server answers again, long before the
//! process exits. No controller runs in these namespaces, so only the client can delete
//! what it left.

use crate::support::*;
use issuelock::{Acquisition, LockClient};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A lock client going through `kubeconfig`, with a short call timeout.
async fn proxied_client(kubeconfig: &Path, ns: &str, identity: &str) -> LockClient {
    let mut config = lock_config(ns, identity);
    config.call_timeout = Duration::from_secs(2);
    LockClient::start(client_for(kubeconfig).await, config)
        .await
        .expect("lock client starts")
}

/// Leaves an idle connection in the client's pool, so that the next request is sent over
/// it even while the proxy eats answers (a new connection's TLS handshake would not get
/// through).
async fn warm_up(locks: &LockClient) {
    let Acquisition::Acquired(guard) = locks.try_acquire("warm-up").await.unwrap() else {
        panic!("free lock");
    };
    guard.release().await.unwrap();
}

async fn wait_no_lock(client: &kube::Client, ns: &str, issue: &str) {
    eventually(Duration::from_secs(30), "no lock left behind", || async {
        lock_of(client, ns, issue).await.is_none().then_some(())
    })
    .await
}

/// Waits until the client has counted `released` clean-ups and has none outstanding. The
/// API server shows a deletion before the client has read the answer to its delete, so
/// the counts trail the object's disappearance by a moment.
async fn wait_cleaned_up(locks: &LockClient, released: u64) {
    eventually(Duration::from_secs(10), "clean-up accounted", || async {
        let stats = locks.cleanup_stats();
        (stats.released == released && stats.pending == 0).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_release_that_fails_during_an_outage_is_retried_until_the_lock_is_gone() {
    let admin = client().await;
    let ns = namespace(&admin, "leak-release").await;
    let proxy = OutageProxy::start().await;
    let scratch = Scratch::new("leak-release");
    let locks = proxied_client(&proxy.kubeconfig(&scratch.0), &ns, "releaser").await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#1").await.unwrap() else {
        panic!("free lock");
    };

    proxy.cut();
    let err = guard.release().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lock_of(&admin, &ns, "org/repo#1").await.is_some());
    assert_eq!(locks.cleanup_stats().pending, 1);

    proxy.restore();
    wait_no_lock(&admin, &ns, "org/repo#1").await;
    wait_cleaned_up(&locks, 1).await;
    locks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_leaves_no_lock_once_the_api_answers_again() {
    let admin = client().await;
    let ns = namespace(&admin, "leak-create").await;
    let proxy = AnswerEatingProxy::start().await;
    let scratch = Scratch::new("leak-create");
    let locks = proxied_client(&proxy.kubeconfig(&scratch.0), &ns, "creator").await;

    // The create reaches the API server and is committed; its answer, and that of the
    // read-back, never come back.
    warm_up(&locks).await;
    proxy.eat_answers();
    let err = locks.try_acquire("org/repo#2").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let left = lock_of(&admin, &ns, "org/repo#2").await;
    assert!(left.is_some(), "the create was committed");
    assert_eq!(left.unwrap().spec.holder.lease, locks.holder().lease);

    proxy.restore();
    wait_no_lock(&admin, &ns, "org/repo#2").await;
    wait_cleaned_up(&locks, 1).await;
    // The issue is free for anyone, this client included (once its heartbeat, which
    // failed during the outage, has renewed again).
    eventually(Duration::from_secs(10), "a healthy heartbeat", || async {
        locks.is_healthy().then_some(())
    })
    .await;
    let Acquisition::Acquired(guard) = locks.try_acquire("org/repo#2").await.unwrap() else {
        panic!("the issue is free again");
    };
    guard.release().await.unwrap();
    locks.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_acquire_future_dropped_after_its_create_was_sent_leaves_no_lock() {
    let admin = client().await;
    let ns = namespace(&admin, "leak-dropped").await;
    let proxy = AnswerEatingProxy::start().await;
    let scratch = Scratch::new("leak-dropped");
    let locks = proxied_client(&proxy.kubeconfig(&scratch.0), &ns, "impatient").await;

    warm_up(&locks).await;
    proxy.eat_answers();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(1500), locks.try_acquire("org/repo#3")).await;
    assert!(gave_up.is_err(), "the caller gave up before any answer");
    eventually(Duration::from_secs(5), "the create committed", || async {
        lock_of(&admin, &ns, "org/repo#3").await
    })
    .await;

    proxy.restore();
    wait_no_lock(&admin, &ns, "org/repo#3").await;
    wait_cleaned_up(&locks, 1).await;
    locks.shutdown().await.unwrap();
}

/// A TCP proxy in front of the API server that can let requests through while throwing
/// away every answer: a create is committed but its caller never learns it. (A request
/// needing a new connection does not get through then: its TLS handshake is eaten too.)
struct AnswerEatingProxy {
    port: u16,
    eating: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl AnswerEatingProxy {
    async fn start() -> Self {
        let target = api_server_addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let eating = Arc::new(AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (eating2, conns2) = (eating.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, eating) = (target.clone(), eating2.clone());
                let task = tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let requests = tokio::io::copy(&mut in_read, &mut out_write);
                    let answers = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match out_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !eating.load(Ordering::SeqCst)
                                && in_write.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = answers => {}
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            eating,
            conns,
            accept,
        }
    }

    /// A kubeconfig (admin credentials) that goes through this proxy.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        proxied_kubeconfig(dir, "answer-eating-kubeconfig", self.port)
    }

    /// From now on, answers are thrown away (requests still go through).
    fn eat_answers(&self) {
        self.eating.store(true, Ordering::SeqCst);
    }

    /// Answers flow again; connections that lost answers are closed (their TLS streams
    /// are broken), so clients reconnect.
    fn restore(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.eating.store(false, Ordering::SeqCst);
    }
}

impl Drop for AnswerEatingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
