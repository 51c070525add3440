//! The HTTP side of the metrics endpoint: `GET /metrics` answers the Prometheus text
//! format (0.0.4); anything else is 404. Plain HTTP/1.1 on the configured address, as
//! containerd's and CRI-O's endpoints; bind it to loopback or a node-internal address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::daemon::Daemon;
use crate::state::{ContainerRecord, ContainerState, SandboxState};

/// A client gets this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("Metrics address {0:?} is not host:port")]
    Address(String),
    #[error("Cannot listen on metrics address {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Recorder(#[from] super::InstallError),
}

/// The bound endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsServer {
    /// Installs the recorder and binds `address` (`host:port`; port 0 picks one).
    pub async fn bind(address: &str) -> Result<Self, MetricsServerError> {
        let addr: std::net::SocketAddr = address
            .parse()
            .map_err(|_| MetricsServerError::Address(address.to_owned()))?;
        let listener =
            TcpListener::bind(addr)
                .await
                .map_err(|source| MetricsServerError::Bind {
                    address: address.to_owned(),
                    source,
                })?;
        let handle = super::install()?;
        Ok(Self { listener, handle })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves scrapes until the task is dropped.
    pub async fn serve(self, daemon: Arc<Daemon>) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (handle, daemon) = (self.handle.clone(), Arc::clone(&daemon));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (handle, daemon) = (handle.clone(), Arc::clone(&daemon));
                    async move { Ok::<_, Infallible>(answer(&req, &handle, &daemon)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    }
}

fn answer<B>(
    req: &Request<B>,
    handle: &PrometheusHandle,
    daemon: &Daemon,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    refresh_state(daemon);
    handle.run_upkeep();
    let mut res = reply(StatusCode::OK, handle.render());
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    res
}

/// Sets the gauges of current state: pods and containers by state (each state, 0 too).
fn refresh_state(daemon: &Daemon) {
    let mut pods = [
        (SandboxState::Ready, "ready", 0u32),
        (SandboxState::NotReady, "notready", 0),
        (SandboxState::Creating, "creating", 0),
    ];
    for sb in daemon.sandboxes.list() {
        let state = sb.state();
        if let Some(p) = pods.iter_mut().find(|p| p.0 == state) {
            p.2 += 1;
        }
    }
    for (_, name, n) in pods {
        metrics::gauge!(super::PODS, "state" => name).set(f64::from(n));
    }
    let records: Vec<ContainerRecord> = match daemon.store.list() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list containers");
            return;
        }
    };
    let mut containers = [
        (ContainerState::Created, "created", 0u32),
        (ContainerState::Running, "running", 0),
        (ContainerState::Exited, "exited", 0),
        (ContainerState::Unknown, "unknown", 0),
    ];
    for r in &records {
        if let Some(c) = containers.iter_mut().find(|c| c.0 == r.state) {
            c.2 += 1;
        }
    }
    for (_, name, n) in containers {
        metrics::gauge!(super::CONTAINERS, "state" => name).set(f64::from(n));
    }
}
