//! Pod sandbox RPCs (issue 4): thin wrappers over [`crate::sandbox::SandboxManager`].
//! Run/Stop/Remove here; Status/List/Stats in `sandbox_status.rs`.

#[path = "sandbox_status.rs"]
mod status_rpcs;

use hull_cri_api as cri;
use tracing::info;

use super::CriService;
use super::status::CriError;
use crate::sandbox::capacity::CapacityError;
use crate::sandbox::{SandboxError, error_chain};

/// The one mapping from sandbox errors to CRI codes.
impl From<SandboxError> for CriError {
    fn from(err: SandboxError) -> Self {
        let message = error_chain(&err);
        match err.root() {
            SandboxError::InvalidRequest(_)
            | SandboxError::UnknownHandler { .. }
            | SandboxError::NodeNamespacesRefused { .. } => CriError::InvalidArgument(message),
            SandboxError::HostIsolationDenied { .. } => CriError::PermissionDenied(message),
            SandboxError::NameReserved { .. } => CriError::AlreadyExists(message),
            SandboxError::NotFound(_) => CriError::NotFound(message),
            SandboxError::BackendUnavailable(_) | SandboxError::NotReady { .. } => {
                CriError::FailedPrecondition(message)
            }
            SandboxError::AgentTimeout { .. } | SandboxError::AgentNotReady { .. } => {
                CriError::DeadlineExceeded(message)
            }
            SandboxError::Admission(CapacityError::NodeFull { .. }) => {
                CriError::ResourceExhausted(message)
            }
            _ => CriError::internal(message, err),
        }
    }
}

impl CriService {
    pub(crate) async fn do_run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, CriError> {
        // Before anything is reserved: no name, no netns, no VM for a bad request.
        super::validate::run_pod_sandbox(&req)?;
        let pod_sandbox_id = self.daemon.sandboxes.run(req).await?;
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
    }

    pub(crate) async fn do_stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, CriError> {
        info!(pod_id = %req.pod_sandbox_id, "StopPodSandbox");
        self.daemon.sandboxes.stop(&req.pod_sandbox_id).await?;
        Ok(cri::StopPodSandboxResponse {})
    }

    pub(crate) async fn do_remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, CriError> {
        info!(pod_id = %req.pod_sandbox_id, "RemovePodSandbox");
        // The pod's containers go the RemoveContainer way first, so that their rootfs
        // state in the image service goes with them. The request may name the pod by a
        // unique prefix of its id.
        let pod_id = match self.daemon.sandboxes.get(&req.pod_sandbox_id) {
            Some(sb) => sb.id().to_owned(),
            None => req.pod_sandbox_id.clone(),
        };
        let records = self
            .daemon
            .containers
            .list_records()
            .map_err(super::container::manager_error)?;
        for r in records.iter().filter(|r| r.sandbox_id == pod_id) {
            self.do_remove_container(cri::RemoveContainerRequest {
                container_id: r.id.clone(),
            })
            .await?;
        }
        self.daemon.sandboxes.remove(&req.pod_sandbox_id).await?;
        Ok(cri::RemovePodSandboxResponse {})
    }
}
