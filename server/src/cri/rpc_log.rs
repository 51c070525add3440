//! One debug line per CRI call, with its duration: a tower layer around both services.
//!
//! `hulld::rpc=debug` in the log filter turns it on (off by default: kubelet makes
//! several calls a second). Each line names the RPC (`ListPodSandbox`), its gRPC status
//! when the call failed before a body (tonic's trailers-only errors), and `micros`, the
//! time to the response head. `test/k8s/rpc_stats.sh` turns a log into per-RPC counts
//! and p50/p99 latencies; a metrics endpoint is another issue's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

/// The log target of the per-call lines.
pub const TARGET: &str = "hulld::rpc";

/// Wraps a service in [`RpcLog`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLogLayer;

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

/// Logs each call it passes to the inner service (see the module doc).
#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
}

/// `/runtime.v1.RuntimeService/ListPodSandbox` → `ListPodSandbox`.
pub fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            return Box::pin(self.inner.call(req));
        }
        let rpc = rpc_name(req.uri().path()).to_owned();
        Box::pin(logged(rpc, self.inner.call(req)))
    }
}

/// Awaits `call` and logs its name, status and duration.
async fn logged<F, R, E>(rpc: String, call: F) -> Result<http::Response<R>, E>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    let start = Instant::now();
    let res = call.await;
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let code = match &res {
        // tonic answers an error before any message as trailers-only: the status is in
        // the head. A call that fails later (a stream) is logged as its head: 0.
        Ok(r) => r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned(),
        Err(_) => "transport".to_owned(),
    };
    tracing::debug!(target: TARGET, rpc = %rpc, micros, code = %code, "CRI call");
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    #[test]
    fn names_the_rpc_by_the_last_path_segment() {
        assert_eq!(
            rpc_name("/runtime.v1.RuntimeService/ListPodSandbox"),
            "ListPodSandbox"
        );
        assert_eq!(rpc_name("Version"), "Version");
    }

    #[tokio::test]
    async fn passes_requests_and_responses_through() {
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let status = if req.uri().path().ends_with("/Bad") {
                "3"
            } else {
                "0"
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("grpc-status", status)
                    .body(req.uri().path().to_owned())
                    .expect("response"),
            )
        });
        let buf = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("hulld::rpc=debug")
            .with_writer(buf.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut svc = RpcLogLayer.layer(inner);
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/Bad")
            .body(())
            .expect("request");
        let res = svc.call(req).await.expect("call");
        assert_eq!(res.body(), "/runtime.v1.RuntimeService/Bad");
        assert_eq!(res.headers()["grpc-status"], "3");
        let line = buf.text();
        assert!(line.contains("CRI call rpc=Bad"), "{line}");
        assert!(line.contains("code=3"), "{line}");
        assert!(line.contains("micros="), "{line}");
    }

    /// A `MakeWriter` that keeps what is logged.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().expect("lock").clone();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }
}
