//! The span every CRI call runs in: `cri{rpc=StartContainer req_id=42 pod_id=… container_id=…}`.
//!
//! `req_id` numbers hulld's calls (from 1 at each start); the ids come from the request
//! itself, read here before the handler runs, so that every line the call logs (hulld's
//! own, the sandbox manager's, the image service's) carries them without each handler
//! opening its own span. Every CRI request that names a pod or a container has it as
//! field 1 (a string); a container call also gets its pod's id, looked up by the
//! [`PodOf`] given to the layer. Requests are read whole before being passed on: unary
//! CRI requests are small, and one over [`MAX_REQUEST_BYTES`] is passed on empty (tonic
//! then refuses it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http;

/// kubelet's CRI message limit.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Finds the pod of a container id (or unique prefix), for container calls' spans.
pub type PodOf = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Any CRI request whose field 1 is the pod or container id it is about.
#[derive(Clone, PartialEq, prost::Message)]
struct FirstId {
    #[prost(string, tag = "1")]
    id: String,
}

/// Which id a request carries in field 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Pod,
    Container,
}

pub fn id_kind(rpc: &str) -> Option<IdKind> {
    match rpc {
        "StopPodSandbox" | "RemovePodSandbox" | "PodSandboxStatus" | "PodSandboxStats"
        | "CreateContainer" | "PortForward" => Some(IdKind::Pod),
        "StartContainer"
        | "StopContainer"
        | "RemoveContainer"
        | "ContainerStatus"
        | "UpdateContainerResources"
        | "ReopenContainerLog"
        | "ExecSync"
        | "Exec"
        | "Attach"
        | "ContainerStats"
        | "CheckpointContainer" => Some(IdKind::Container),
        _ => None,
    }
}

static NEXT_REQ_ID: AtomicU64 = AtomicU64::new(1);

/// A new call's span, its ids still empty.
pub fn new_span(rpc: &str) -> tracing::Span {
    let req_id = NEXT_REQ_ID.fetch_add(1, Ordering::Relaxed);
    tracing::info_span!(
        "cri",
        rpc = %rpc,
        req_id,
        pod_id = tracing::field::Empty,
        container_id = tracing::field::Empty
    )
}

/// The field-1 id of one gRPC message frame (uncompressed), if any.
pub fn first_id(frame: &[u8]) -> Option<String> {
    let (&flag, rest) = frame.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let (len, msg) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let id = FirstId::decode(msg.get(..len)?).ok()?.id;
    (!id.is_empty()).then_some(id)
}

/// Reads the request whole, records its ids in `span`, and returns it rebuilt.
pub async fn with_ids(
    req: http::Request<Body>,
    kind: IdKind,
    span: &tracing::Span,
    pod_of: Option<&PodOf>,
) -> http::Request<Body> {
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "CRI request body unreadable or too large");
            Bytes::new()
        }
    };
    // Recorded as Display (`pod_id=abc`, no quotes, so `grep pod_id=<id>` finds them),
    // the pod's first: the log shows fields in the order they were recorded.
    if let Some(id) = first_id(&bytes) {
        match kind {
            IdKind::Pod => {
                span.record("pod_id", tracing::field::display(&id));
            }
            IdKind::Container => {
                if let Some(pod) = pod_of.and_then(|f| f(&id)) {
                    span.record("pod_id", tracing::field::display(&pod));
                }
                span.record("container_id", tracing::field::display(&id));
            }
        }
    }
    http::Request::from_parts(parts, Body::new(Full::new(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_cri_api as cri;

    fn frame(msg: &impl Message) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut f = vec![0u8];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn reads_the_id_of_pod_and_container_requests() {
        let stop = cri::StopContainerRequest {
            container_id: "c0ffee".into(),
            timeout: 30,
        };
        assert_eq!(first_id(&frame(&stop)).as_deref(), Some("c0ffee"));
        let create = cri::CreateContainerRequest {
            pod_sandbox_id: "p0d".into(),
            config: Some(cri::ContainerConfig::default()),
            sandbox_config: None,
        };
        assert_eq!(first_id(&frame(&create)).as_deref(), Some("p0d"));
        let exec = cri::ExecSyncRequest {
            container_id: "abc".into(),
            cmd: vec!["ls".into()],
            timeout: 1,
        };
        assert_eq!(first_id(&frame(&exec)).as_deref(), Some("abc"));
        assert_eq!(id_kind("StartContainer"), Some(IdKind::Container));
        assert_eq!(id_kind("PodSandboxStatus"), Some(IdKind::Pod));
        assert_eq!(id_kind("ListContainers"), None);
    }

    #[test]
    fn bad_frames_have_no_id() {
        assert_eq!(first_id(&[]), None);
        assert_eq!(first_id(&[1, 0, 0, 0, 1, 0]), None, "compressed");
        assert_eq!(first_id(&[0, 0, 0, 0, 9, 10]), None, "short");
        assert_eq!(first_id(&[0, 0, 0, 0, 2, 0xff, 0xff]), None, "not protobuf");
        let empty = cri::StartContainerRequest::default();
        assert_eq!(first_id(&frame(&empty)), None);
    }
}
