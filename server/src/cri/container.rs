//! Container RPCs (issue 7): list, status, log reopen and events here; create in
//! `container_create.rs`; start, stop, remove, exec and stats in `container_lifecycle.rs`.

use hull_cri_api as cri;

use super::CriService;
use super::runtime::ContainerEventStream;
use super::status::CriError;
use crate::container::manager::{ManagerError, ReopenError};
use crate::state::ContainerState;
use hull_agent_api::v1 as pb;

#[path = "container_create.rs"]
mod create;
#[path = "container_lifecycle.rs"]
mod lifecycle;
#[path = "container_update.rs"]
mod update;

/// The gRPC code of a container manager error.
pub(super) fn manager_error(e: ManagerError) -> CriError {
    match e {
        ManagerError::NotFound(id) => {
            CriError::NotFound(format!("container {} not found", super::status::quote(&id)))
        }
        ManagerError::Ambiguous { .. } => CriError::InvalidArgument(e.to_string()),
        other => CriError::internal("Container manager", other),
    }
}

impl CriService {
    pub(crate) async fn do_list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, CriError> {
        let filter = req.filter.as_ref();
        let containers = self.daemon.containers.list(filter).map_err(manager_error)?;
        Ok(cri::ListContainersResponse { containers })
    }

    pub(crate) async fn do_container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        self.daemon
            .containers
            .status(&req.container_id, req.verbose)
            .map_err(manager_error)
    }

    /// New cgroup limits for a created or running container: applied by the agent in the
    /// guest, then merged into the record (so ContainerStatus shows them), field by field
    /// the way containerd updates the spec (zero/empty fields keep their value).
    pub(crate) async fn do_update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, CriError> {
        super::validate::update_resources(&req)?;
        let containers = &self.daemon.containers;
        let r = containers.get(&req.container_id).map_err(manager_error)?;
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}: only a created or running container can be updated",
                r.id, r.state
            )));
        }
        let Some(linux) = req.linux else {
            return Ok(cri::UpdateContainerResourcesResponse {});
        };
        let mut agent = self.agent_of(&r).await?;
        let call = pb::UpdateContainerResourcesRequest {
            container_id: r.id.clone(),
            resources: Some(update::to_agent(&linux)),
        };
        agent
            .update_container_resources(call)
            .await
            .map_err(|e| match e.code() {
                tonic::Code::NotFound => CriError::NotFound(e.message().to_owned()),
                tonic::Code::InvalidArgument => CriError::InvalidArgument(e.message().to_owned()),
                tonic::Code::FailedPrecondition => {
                    CriError::FailedPrecondition(e.message().to_owned())
                }
                tonic::Code::Unimplemented => CriError::Unimplemented {
                    rpc: "UpdateContainerResources",
                    why: "the pod's guest agent predates UpdateContainerResources (rebuild the guest)",
                },
                _ => CriError::internal("Agent UpdateContainerResources", e),
            })?;
        containers
            .update_resources(&r.id, |old| update::merge(old, &linux))
            .map_err(manager_error)?;
        tracing::info!(container_id = %r.id, "container resources updated");
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    pub(crate) async fn do_reopen_container_log(
        &self,
        req: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, CriError> {
        match self.daemon.containers.reopen_log(&req.container_id).await {
            Ok(()) => Ok(cri::ReopenContainerLogResponse {}),
            Err(ReopenError::NotRunning(id)) => Err(CriError::FailedPrecondition(format!(
                "container {id} is not running"
            ))),
            Err(ReopenError::Manager(e)) => Err(manager_error(e)),
        }
    }

    pub(crate) async fn do_get_container_events(&self) -> Result<ContainerEventStream, CriError> {
        Ok(self.daemon.containers.events().subscribe())
    }
}
