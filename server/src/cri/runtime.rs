//! The tonic `RuntimeService`: each RPC calls one `do_*` method and maps its error in one
//! place ([`super::status::CriError`] → `tonic::Status`). The `do_*` methods
//! live by CRI object: `sandbox*.rs` (pod sandboxes) and `container*.rs` (containers);
//! each opens its span with the pod and container ids.
//!
//! CheckpointContainer refuses with the reason per backend (`checkpoint.rs`); pod and
//! container metrics for kubelet's `/metrics/cadvisor` are in `metrics/`.

use std::pin::Pin;

use futures::Stream;
use hull_cri_api as cri;
use hull_cri_api::server::RuntimeService;
use tonic::{Request, Response, Status};

use hull_agent_api::AgentClient;
use tonic::transport::Channel;

use super::CriService;
use super::status::CriError;
use crate::streaming::{AttachTarget, ExecTarget, PortForwardTarget, Target, Wanted};

type CallResult<T> = Result<Response<T>, Status>;

/// The stream `GetContainerEvents` answers with.
pub(crate) type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for CriService {
    type GetContainerEventsStream = ContainerEventStream;

    async fn version(
        &self,
        _req: Request<cri::VersionRequest>,
    ) -> CallResult<cri::VersionResponse> {
        tracing::trace!("Version");
        Ok(Response::new(self.do_version()))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> CallResult<cri::StatusResponse> {
        tracing::trace!("Status");
        Ok(Response::new(self.do_status(req.get_ref().verbose)?))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> CallResult<cri::RuntimeConfigResponse> {
        tracing::debug!("RuntimeConfig");
        Ok(Response::new(self.do_runtime_config()))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> CallResult<cri::UpdateRuntimeConfigResponse> {
        let cidr = req
            .get_ref()
            .runtime_config
            .as_ref()
            .and_then(|c| c.network_config.as_ref())
            .map(|n| n.pod_cidr.clone())
            .unwrap_or_default();
        // Pod IPs come from the CNI config (host-local ranges), as with containerd's
        // default setup; the CIDR kubelet hands out is only recorded in the log.
        tracing::info!(pod_cidr = %cidr, "UpdateRuntimeConfig");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> CallResult<Self::GetContainerEventsStream> {
        Ok(Response::new(self.do_get_container_events().await?))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> CallResult<cri::RunPodSandboxResponse> {
        Ok(Response::new(
            self.do_run_pod_sandbox(req.into_inner()).await?,
        ))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> CallResult<cri::StopPodSandboxResponse> {
        Ok(Response::new(
            self.do_stop_pod_sandbox(req.into_inner()).await?,
        ))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> CallResult<cri::RemovePodSandboxResponse> {
        Ok(Response::new(
            self.do_remove_pod_sandbox(req.into_inner()).await?,
        ))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> CallResult<cri::PodSandboxStatusResponse> {
        Ok(Response::new(
            self.do_pod_sandbox_status(req.into_inner()).await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> CallResult<cri::ListPodSandboxResponse> {
        Ok(Response::new(
            self.do_list_pod_sandbox(req.into_inner()).await?,
        ))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> CallResult<cri::PodSandboxStatsResponse> {
        Ok(Response::new(
            self.do_pod_sandbox_stats(req.into_inner()).await?,
        ))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> CallResult<cri::ListPodSandboxStatsResponse> {
        Ok(Response::new(
            self.do_list_pod_sandbox_stats(req.into_inner()).await?,
        ))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> CallResult<cri::CreateContainerResponse> {
        Ok(Response::new(
            self.do_create_container(req.into_inner()).await?,
        ))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> CallResult<cri::StartContainerResponse> {
        Ok(Response::new(
            self.do_start_container(req.into_inner()).await?,
        ))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> CallResult<cri::StopContainerResponse> {
        Ok(Response::new(
            self.do_stop_container(req.into_inner()).await?,
        ))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> CallResult<cri::RemoveContainerResponse> {
        Ok(Response::new(
            self.do_remove_container(req.into_inner()).await?,
        ))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> CallResult<cri::ListContainersResponse> {
        Ok(Response::new(
            self.do_list_containers(req.into_inner()).await?,
        ))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> CallResult<cri::ContainerStatusResponse> {
        Ok(Response::new(
            self.do_container_status(req.into_inner()).await?,
        ))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> CallResult<cri::UpdateContainerResourcesResponse> {
        Ok(Response::new(
            self.do_update_container_resources(req.into_inner()).await?,
        ))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> CallResult<cri::ReopenContainerLogResponse> {
        Ok(Response::new(
            self.do_reopen_container_log(req.into_inner()).await?,
        ))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> CallResult<cri::ExecSyncResponse> {
        Ok(Response::new(self.do_exec_sync(req.into_inner()).await?))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> CallResult<cri::ContainerStatsResponse> {
        Ok(Response::new(
            self.do_container_stats(req.into_inner()).await?,
        ))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> CallResult<cri::ListContainerStatsResponse> {
        Ok(Response::new(
            self.do_list_container_stats(req.into_inner()).await?,
        ))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> CallResult<cri::ExecResponse> {
        Ok(Response::new(self.do_exec(req.into_inner()).await?))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> CallResult<cri::AttachResponse> {
        Ok(Response::new(self.do_attach(req.into_inner()).await?))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> CallResult<cri::PortForwardResponse> {
        Ok(Response::new(self.do_port_forward(req.into_inner()).await?))
    }

    async fn checkpoint_container(
        &self,
        req: Request<cri::CheckpointContainerRequest>,
    ) -> CallResult<cri::CheckpointContainerResponse> {
        Ok(Response::new(
            self.do_checkpoint_container(req.into_inner()).await?,
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> CallResult<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(self.do_list_metric_descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> CallResult<cri::ListPodSandboxMetricsResponse> {
        Ok(Response::new(self.do_list_pod_sandbox_metrics().await?))
    }
}

/// Exec, Attach and PortForward: resolve the target now (so a wrong id fails the CRI
/// call, not the later HTTP request) and answer with a single-use streaming URL.
impl CriService {
    /// A running container and its pod's agent.
    async fn streaming_target(
        &self,
        container_id: &str,
    ) -> Result<(crate::state::ContainerRecord, AgentClient<Channel>), CriError> {
        let r = self
            .daemon
            .containers
            .get(container_id)
            .map_err(super::container::manager_error)?;
        if r.state != crate::state::ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                r.id
            )));
        }
        let sb = self.daemon.sandboxes.get(&r.sandbox_id).ok_or_else(|| {
            CriError::NotFound(format!(
                "pod sandbox {} of container {} is gone",
                r.sandbox_id, r.id
            ))
        })?;
        let agent = sb
            .agent()
            .await
            .map_err(|e| CriError::FailedPrecondition(crate::sandbox::error_chain(&e)))?;
        Ok((r, agent))
    }

    fn streaming_url(&self, target: Target) -> Result<String, CriError> {
        self.daemon
            .streaming
            .url_for(target)
            .map_err(|e| CriError::internal("Streaming server", e))
    }

    pub(crate) async fn do_exec(
        &self,
        req: cri::ExecRequest,
    ) -> Result<cri::ExecResponse, CriError> {
        super::validate::exec_cmd(&req.cmd)?;
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(CriError::InvalidArgument(
                "one of stdin, stdout, or stderr must be set".into(),
            ));
        }
        let (r, agent) = self.streaming_target(&req.container_id).await?;
        // A terminal gets a TERM unless the container sets one (as Docker does).
        let mut env = Vec::new();
        if req.tty && !r.config.envs.iter().any(|kv| kv.key == "TERM") {
            env.push("TERM=xterm".to_owned());
        }
        let target = Target::Exec(ExecTarget {
            agent,
            container_id: r.id.clone(),
            cmd: req.cmd,
            env,
            wanted: Wanted::new(req.stdin, req.stdout, req.stderr, req.tty),
        });
        let url = self.streaming_url(target)?;
        tracing::info!(container = %r.id, tty = req.tty, stdin = req.stdin, "Exec");
        Ok(cri::ExecResponse { url })
    }

    pub(crate) async fn do_attach(
        &self,
        req: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, CriError> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(CriError::InvalidArgument(
                "one of stdin, stdout, or stderr must be set".into(),
            ));
        }
        let (r, agent) = self.streaming_target(&req.container_id).await?;
        // The terminal is the container's: a client cannot attach with another mode.
        let tty = r.config.tty;
        let target = Target::Attach(AttachTarget {
            agent,
            container_id: r.id.clone(),
            wanted: Wanted::new(req.stdin, req.stdout, req.stderr, tty),
            stdin_once: r.config.stdin_once,
        });
        let url = self.streaming_url(target)?;
        tracing::info!(container = %r.id, tty, stdin = req.stdin, "Attach");
        Ok(cri::AttachResponse { url })
    }

    pub(crate) async fn do_port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, CriError> {
        let sb = self
            .daemon
            .sandboxes
            .get(&req.pod_sandbox_id)
            .ok_or_else(|| {
                CriError::NotFound(format!(
                    "pod sandbox {} not found",
                    super::status::quote(&req.pod_sandbox_id)
                ))
            })?;
        if sb.state() != crate::state::SandboxState::Ready {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                req.pod_sandbox_id
            )));
        }
        let agent = sb
            .agent()
            .await
            .map_err(|e| CriError::FailedPrecondition(crate::sandbox::error_chain(&e)))?;
        let sandbox_id = sb.record().id.clone();
        let target = Target::PortForward(PortForwardTarget {
            agent,
            sandbox_id: sandbox_id.clone(),
        });
        let url = self.streaming_url(target)?;
        tracing::info!(sandbox = %sandbox_id, ports = ?req.port, "PortForward");
        Ok(cri::PortForwardResponse { url })
    }
}
