//! The controller's HTTP endpoint (hyper): `/metrics`, `/healthz` (also `/livez`) and
//! `/readyz`, with graceful shutdown.

use super::metrics::{Metrics, OPENMETRICS_TEXT, PROMETHEUS_TEXT};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after an accept error that is not one connection's failure (e.g. out of
/// file descriptors), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// What the endpoint serves.
#[derive(Clone)]
struct State {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// A bound endpoint, not yet serving.
pub struct Server {
    listener: TcpListener,
    state: State,
}

impl Server {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            state: State { metrics, ready },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish (at most 5 s) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept HTTP connections; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let state = self.state.clone();
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&state, &req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection failed");
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("HTTP requests still in flight at shutdown; dropped");
        }
    }
}

/// Errors of one connection (the peer went away before it was accepted).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| reply(status, "text/plain", body.into());
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok());
            if wants_openmetrics(accept) {
                let body = state.metrics.render_openmetrics();
                reply(StatusCode::OK, OPENMETRICS_TEXT, body.into())
            } else {
                reply(
                    StatusCode::OK,
                    PROMETHEUS_TEXT,
                    state.metrics.render().into(),
                )
            }
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// True when an Accept header lists OpenMetrics text (without refusing it by `q=0`).
fn wants_openmetrics<'a>(accept: impl Iterator<Item = &'a str>) -> bool {
    accept.flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        parts.next() == Some("application/openmetrics-text")
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q == 0.0)
            })
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, head: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_paths_with_query_strings_and_negotiates_openmetrics() {
        let metrics = Arc::new(Metrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), metrics, ready.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        let req = |path: &str, extra: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
        };
        let r = get(addr, &req("/metrics?x=1", "")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("issuelock_leader 0"), "{r}");
        let r = get(
            addr,
            &req(
                "/metrics",
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
            ),
        )
        .await;
        assert!(r.contains("application/openmetrics-text"), "{r}");
        assert!(r.ends_with("# EOF\n"), "{r}");
        let r = get(addr, &req("/readyz?verbose", "")).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        ready.store(true, Ordering::Relaxed);
        let r = get(addr, &req("/readyz", "")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, &req("/healthz", "")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, &req("/nope", "")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn accept_negotiation() {
        assert!(!wants_openmetrics(["text/plain"].into_iter()));
        assert!(wants_openmetrics(
            ["application/openmetrics-text; version=1.0.0"].into_iter()
        ));
        assert!(!wants_openmetrics(
            ["application/openmetrics-text;q=0, text/plain"].into_iter()
        ));
    }
}
