//! Container RPCs (issue 7): list, status, log reopen and events here; create in
//! `container_create.rs`; start, stop, remove, exec and stats in `container_lifecycle.rs`.

use hull_cri_api as cri;

use super::CriService;
use super::runtime::ContainerEventStream;
use super::status::CriError;
use crate::container::manager::{ManagerError, ReopenError};

#[path = "container_create.rs"]
mod create;
#[path = "container_lifecycle.rs"]
mod lifecycle;

/// The gRPC code of a container manager error.
pub(super) fn manager_error(e: ManagerError) -> CriError {
    match e {
        ManagerError::NotFound(id) => CriError::NotFound(format!("container {id:?} not found")),
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

    pub(crate) async fn do_update_container_resources(
        &self,
        _req: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "UpdateContainerResources",
            why: "the guest agent has no call to change a running container's cgroup limits yet",
        })
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
