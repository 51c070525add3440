//! StartContainer, StopContainer, RemoveContainer, ExecSync, ContainerStats and
//! ListContainerStats: hulld's record plus the pod's agent.

use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_cri_api as cri;
use tonic::transport::Channel;

use super::super::CriService;
use super::super::status::CriError;
use super::manager_error;
use crate::container::runtime::{self, RuntimeError};
use crate::container::{spec, view, volumes};
use crate::sandbox::Sandbox;
use crate::state::{ContainerRecord, ContainerState};

fn runtime_error(e: RuntimeError) -> CriError {
    match e {
        RuntimeError::Timeout { .. } => CriError::DeadlineExceeded(e.to_string()),
        RuntimeError::EmptyCommand => CriError::InvalidArgument(e.to_string()),
        RuntimeError::Agent { .. } => CriError::internal("Container", e),
    }
}

impl CriService {
    fn sandbox_of(&self, r: &ContainerRecord) -> Result<Arc<Sandbox>, CriError> {
        self.daemon.sandboxes.get(&r.sandbox_id).ok_or_else(|| {
            CriError::NotFound(format!(
                "pod sandbox {} of container {} is gone",
                r.sandbox_id, r.id
            ))
        })
    }

    pub(super) async fn agent_of(
        &self,
        r: &ContainerRecord,
    ) -> Result<AgentClient<Channel>, CriError> {
        self.sandbox_of(r)?
            .agent()
            .await
            .map_err(|e| CriError::FailedPrecondition(crate::sandbox::error_chain(&e)))
    }

    pub(crate) async fn do_start_container(
        &self,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, CriError> {
        let r = self
            .daemon
            .containers
            .get(&req.container_id)
            .map_err(manager_error)?;
        if r.state != ContainerState::Created {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                r.id, r.state
            )));
        }
        let agent = self.agent_of(&r).await?;
        runtime::start(Arc::clone(&self.daemon.containers), agent, &r)
            .await
            .map_err(runtime_error)?;
        Ok(cri::StartContainerResponse {})
    }

    pub(crate) async fn do_stop_container(
        &self,
        req: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse, CriError> {
        // Stopping an unknown container succeeds, as CRI idempotence asks (critest).
        let r = match self.daemon.containers.get(&req.container_id) {
            Ok(r) => r,
            Err(crate::container::manager::ManagerError::NotFound(_)) => {
                return Ok(cri::StopContainerResponse {});
            }
            Err(e) => return Err(manager_error(e)),
        };
        if r.state != ContainerState::Running {
            return Ok(cri::StopContainerResponse {});
        }
        let signal = match self.daemon.containers.images() {
            Some(images) => match images.resolve(&r.image_id).await {
                Ok(img) => spec::stop_signal(&img.defaults.stop_signal),
                Err(_) => nix::libc::SIGTERM,
            },
            None => nix::libc::SIGTERM,
        };
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        let agent = self.agent_of(&r).await?;
        runtime::stop(agent, &r.id, signal, timeout)
            .await
            .map_err(runtime_error)?;
        // The watcher records the exit; wait briefly so the status reads EXITED on return.
        for _ in 0..50 {
            let now = self.daemon.containers.get(&r.id).map_err(manager_error)?;
            if now.state == ContainerState::Exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cri::StopContainerResponse {})
    }

    pub(crate) async fn do_remove_container(
        &self,
        req: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse, CriError> {
        let r = match self.daemon.containers.get(&req.container_id) {
            Ok(r) => r,
            Err(crate::container::manager::ManagerError::NotFound(_)) => {
                return Ok(cri::RemoveContainerResponse {});
            }
            Err(e) => return Err(manager_error(e)),
        };
        if let Some(sandbox) = self.daemon.sandboxes.get(&r.sandbox_id) {
            // Not while the pod stops (kubelet removes a pod's dead containers as it kills
            // the pod): after the stop, the guest and what the container had in it are
            // gone, and agent() says NotReady instead of a call failing half-way.
            let _pod = sandbox.lock().await;
            if let Ok(mut agent) = sandbox.agent().await {
                let rm = hull_agent_api::v1::RemoveContainerRequest {
                    container_id: r.id.clone(),
                    force: true,
                };
                if let Err(e) = agent.remove_container(rm).await
                    && e.code() != tonic::Code::NotFound
                {
                    return Err(CriError::internal("Agent RemoveContainer", e));
                }
            }
            if let Some(images) = self.daemon.containers.images() {
                let rootfs = sandbox.staging_dir().join(&r.id).join("rootfs");
                super::create::remove_container_dir(
                    images.as_ref(),
                    sandbox.run_dir(),
                    &r.id,
                    Some(rootfs),
                )
                .await
                .map_err(|e| CriError::internal("Removing the rootfs", e))?;
            } else {
                volumes::release(sandbox.run_dir(), &r.id);
            }
        }
        self.daemon
            .containers
            .forget(&r.id)
            .await
            .map_err(manager_error)?;
        Ok(cri::RemoveContainerResponse {})
    }

    pub(crate) async fn do_exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        super::super::validate::exec_cmd(&req.cmd)?;
        if req.timeout < 0 {
            return Err(CriError::InvalidArgument(format!(
                "timeout: {} is negative",
                req.timeout
            )));
        }
        let r = self
            .daemon
            .containers
            .get(&req.container_id)
            .map_err(manager_error)?;
        if r.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                r.id
            )));
        }
        let agent = self.agent_of(&r).await?;
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        runtime::exec_sync(agent, &r.id, &req.cmd, timeout)
            .await
            .map_err(runtime_error)
    }

    async fn stats_of(&self, r: &ContainerRecord) -> Result<cri::ContainerStats, CriError> {
        Ok(self.container_stats_with_pids(r).await?.0)
    }

    /// A container's CRI stats and its process count (pids.current).
    pub(crate) async fn container_stats_with_pids(
        &self,
        r: &ContainerRecord,
    ) -> Result<(cri::ContainerStats, u64), CriError> {
        let mut agent = self.agent_of(r).await?;
        let s = agent
            .container_stats(hull_agent_api::v1::ContainerStatsRequest {
                container_id: r.id.clone(),
            })
            .await
            .map_err(|e| CriError::internal("Agent ContainerStats", e))?
            .into_inner();
        let writable = self
            .daemon
            .containers
            .images()
            .and_then(|i| i.writable_dir(&r.id))
            .map(|d| runtime::dir_usage(&d));
        Ok((runtime::to_cri_stats(r, &s, writable), s.pids_current))
    }

    pub(crate) async fn do_container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        let r = self
            .daemon
            .containers
            .get(&req.container_id)
            .map_err(manager_error)?;
        let stats = self.stats_of(&r).await?;
        Ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    pub(crate) async fn do_list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, CriError> {
        let all: Vec<ContainerRecord> = self.daemon.store.list()?;
        let mut stats = Vec::new();
        for r in all.iter().filter(|r| r.state == ContainerState::Running) {
            if req
                .filter
                .as_ref()
                .is_some_and(|f| !view::matches_stats(r, f))
            {
                continue;
            }
            match self.stats_of(r).await {
                Ok(s) => stats.push(s),
                Err(e) => tracing::debug!(container = %r.id, error = %e, "no stats"),
            }
        }
        Ok(cri::ListContainerStatsResponse { stats })
    }
}
