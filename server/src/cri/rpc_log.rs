//! One debug line and the RPC metrics per CRI call: a tower layer around both services.
//!
//! `hulld::rpc=debug` in the log filter turns the line on (off by default: kubelet makes
//! several calls a second). Each line names the RPC (`ListPodSandbox`), its gRPC status
//! when the call failed before a body (tonic's trailers-only errors), and `micros`, the
//! time to the response head. `test/k8s/rpc_stats.sh` turns a log into per-RPC counts
//! and p50/p99 latencies. The same outcome goes to the metrics recorder
//! ([`crate::metrics::rpc_finished`]: counts, errors by code, latency histogram), a no-op
//! unless hulld's metrics endpoint is on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http;
use tracing::Instrument;

/// The log target of the per-call lines.
pub const TARGET: &str = "hulld::rpc";

/// Wraps a service in [`RpcLog`].
#[derive(Clone, Default)]
pub struct RpcLogLayer {
    pod_of: Option<super::rpc_span::PodOf>,
}

impl RpcLogLayer {
    /// `pod_of` finds a container's pod, for the spans of container calls.
    pub fn with_pod_of(pod_of: super::rpc_span::PodOf) -> Self {
        Self {
            pod_of: Some(pod_of),
        }
    }
}

impl std::fmt::Debug for RpcLogLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLogLayer").finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog {
            inner,
            pod_of: self.pod_of.clone(),
        }
    }
}

/// Runs each call in its span (`rpc_span.rs`), then logs and records it (module doc).
#[derive(Clone)]
pub struct RpcLog<S> {
    inner: S,
    pod_of: Option<super::rpc_span::PodOf>,
}

/// `/runtime.v1.RuntimeService/ListPodSandbox` → `ListPodSandbox`.
pub fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl<S, R> tower::Service<http::Request<Body>> for RpcLog<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
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

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let rpc = rpc_name(req.uri().path()).to_owned();
        let span = super::rpc_span::new_span(&rpc);
        let Some(kind) = super::rpc_span::id_kind(&rpc) else {
            let call = self.inner.call(req);
            return Box::pin(logged(rpc, call).instrument(span));
        };
        // The ready service answers this call; a clone takes its place (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pod_of = self.pod_of.clone();
        let span2 = span.clone();
        Box::pin(
            async move {
                let req = super::rpc_span::with_ids(req, kind, &span2, pod_of.as_ref()).await;
                logged(rpc, inner.call(req)).await
            }
            .instrument(span),
        )
    }
}

/// Awaits `call`, records its outcome and logs its name, status and duration.
async fn logged<F, R, E>(rpc: String, call: F) -> Result<http::Response<R>, E>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    let start = Instant::now();
    let res = call.await;
    let elapsed = start.elapsed();
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
    let code_name = if code == "transport" {
        "Unavailable"
    } else {
        crate::metrics::code_name(&code)
    };
    crate::metrics::rpc_finished(&rpc, code_name, elapsed);
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
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
        let inner = tower::service_fn(|req: http::Request<Body>| async move {
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
        let mut svc = RpcLogLayer::default().layer(inner);
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/Bad")
            .body(Body::empty())
            .expect("request");
        let res = svc.call(req).await.expect("call");
        assert_eq!(res.body(), "/runtime.v1.RuntimeService/Bad");
        assert_eq!(res.headers()["grpc-status"], "3");
        let line = buf.text();
        assert!(line.contains("CRI call rpc=Bad"), "{line}");
        assert!(line.contains("code=3"), "{line}");
        assert!(line.contains("micros="), "{line}");
    }

    /// A container call runs in a span with its request id, container id and pod id, and
    /// the handler gets the request body unchanged.
    #[tokio::test]
    async fn container_calls_run_in_a_span_with_their_ids() {
        use http_body_util::BodyExt;
        use prost::Message;
        let inner = tower::service_fn(|req: http::Request<Body>| async move {
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let msg = hull_cri_api::StopContainerRequest::decode(&body[5..]).expect("decode");
            tracing::info!(timeout = msg.timeout, "handler");
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("grpc-status", "0")
                    .body(msg.container_id)
                    .expect("response"),
            )
        });
        let buf = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(buf.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let pod_of: crate::cri::rpc_span::PodOf =
            std::sync::Arc::new(|c: &str| (c == "c0ffee").then(|| "p0d".to_owned()));
        let mut svc = RpcLogLayer::with_pod_of(pod_of).layer(inner);
        let msg = hull_cri_api::StopContainerRequest {
            container_id: "c0ffee".into(),
            timeout: 7,
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/StopContainer")
            .body(Body::new(http_body_util::Full::new(bytes::Bytes::from(
                frame,
            ))))
            .expect("request");
        let res = svc.call(req).await.expect("call");
        assert_eq!(res.body(), "c0ffee");
        let text = buf.text();
        assert!(text.contains("cri{rpc=StopContainer req_id="), "{text}");
        assert!(text.contains("pod_id=p0d container_id=c0ffee}"), "{text}");
        assert!(text.contains("handler timeout=7"), "{text}");
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
