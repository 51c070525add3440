//! The tonic `RuntimeService`: each RPC calls one `do_*` method and maps its error in one
//! place ([`CriError`](super::status::CriError) → `tonic::Status`). The `do_*` methods
//! live by CRI object: `sandbox*.rs` (pod sandboxes) and `container*.rs` (containers);
//! each opens its span with the pod and container ids.
//!
//! RPCs whose issue has not landed yet answer `UNIMPLEMENTED` with a message naming what
//! is missing, so kubelet and critest see a clear, typed refusal rather than a hang or a
//! panic.

use std::pin::Pin;

use futures::Stream;
use hull_cri_api as cri;
use hull_cri_api::server::RuntimeService;
use tonic::{Request, Response, Status};

use super::CriService;
use super::status::CriError;

type CallResult<T> = Result<Response<T>, Status>;

/// The stream `GetContainerEvents` answers with.
pub(crate) type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

fn not_yet<T>(rpc: &'static str, why: &'static str) -> CallResult<T> {
    tracing::debug!(rpc, "unimplemented CRI call");
    Err(CriError::Unimplemented { rpc, why }.into())
}

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

    async fn exec(&self, _req: Request<cri::ExecRequest>) -> CallResult<cri::ExecResponse> {
        not_yet("Exec", "the streaming server is not built yet")
    }

    async fn attach(&self, _req: Request<cri::AttachRequest>) -> CallResult<cri::AttachResponse> {
        not_yet("Attach", "the streaming server is not built yet")
    }

    async fn port_forward(
        &self,
        _req: Request<cri::PortForwardRequest>,
    ) -> CallResult<cri::PortForwardResponse> {
        not_yet("PortForward", "the streaming server is not built yet")
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> CallResult<cri::CheckpointContainerResponse> {
        not_yet("CheckpointContainer", "checkpointing is not supported")
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> CallResult<cri::ListMetricDescriptorsResponse> {
        not_yet("ListMetricDescriptors", "pod metrics are not exported yet")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> CallResult<cri::ListPodSandboxMetricsResponse> {
        not_yet("ListPodSandboxMetrics", "pod metrics are not exported yet")
    }
}
