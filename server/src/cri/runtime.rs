//! The tonic `RuntimeService`: each RPC opens a span, calls one `do_*` method (one file
//! per CRI object and verb as they land), and maps the error in one place
//! ([`CriError`](super::status::CriError) → `tonic::Status`).
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

fn not_yet<T>(rpc: &'static str, why: &'static str) -> CallResult<T> {
    tracing::debug!(rpc, "unimplemented CRI call");
    Err(CriError::Unimplemented { rpc, why }.into())
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

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
        not_yet("GetContainerEvents", "issue 7: containers in the pod VM")
    }

    async fn run_pod_sandbox(
        &self,
        _req: Request<cri::RunPodSandboxRequest>,
    ) -> CallResult<cri::RunPodSandboxResponse> {
        not_yet("RunPodSandbox", "issue 4: pod sandboxes are microVMs")
    }

    async fn stop_pod_sandbox(
        &self,
        _req: Request<cri::StopPodSandboxRequest>,
    ) -> CallResult<cri::StopPodSandboxResponse> {
        not_yet("StopPodSandbox", "issue 4: pod sandboxes are microVMs")
    }

    async fn remove_pod_sandbox(
        &self,
        _req: Request<cri::RemovePodSandboxRequest>,
    ) -> CallResult<cri::RemovePodSandboxResponse> {
        not_yet("RemovePodSandbox", "issue 4: pod sandboxes are microVMs")
    }

    async fn pod_sandbox_status(
        &self,
        _req: Request<cri::PodSandboxStatusRequest>,
    ) -> CallResult<cri::PodSandboxStatusResponse> {
        not_yet("PodSandboxStatus", "issue 4: pod sandboxes are microVMs")
    }

    async fn list_pod_sandbox(
        &self,
        _req: Request<cri::ListPodSandboxRequest>,
    ) -> CallResult<cri::ListPodSandboxResponse> {
        not_yet("ListPodSandbox", "issue 4: pod sandboxes are microVMs")
    }

    async fn create_container(
        &self,
        _req: Request<cri::CreateContainerRequest>,
    ) -> CallResult<cri::CreateContainerResponse> {
        not_yet("CreateContainer", "issue 7: containers in the pod VM")
    }

    async fn start_container(
        &self,
        _req: Request<cri::StartContainerRequest>,
    ) -> CallResult<cri::StartContainerResponse> {
        not_yet("StartContainer", "issue 7: containers in the pod VM")
    }

    async fn stop_container(
        &self,
        _req: Request<cri::StopContainerRequest>,
    ) -> CallResult<cri::StopContainerResponse> {
        not_yet("StopContainer", "issue 7: containers in the pod VM")
    }

    async fn remove_container(
        &self,
        _req: Request<cri::RemoveContainerRequest>,
    ) -> CallResult<cri::RemoveContainerResponse> {
        not_yet("RemoveContainer", "issue 7: containers in the pod VM")
    }

    async fn list_containers(
        &self,
        _req: Request<cri::ListContainersRequest>,
    ) -> CallResult<cri::ListContainersResponse> {
        not_yet("ListContainers", "issue 7: containers in the pod VM")
    }

    async fn container_status(
        &self,
        _req: Request<cri::ContainerStatusRequest>,
    ) -> CallResult<cri::ContainerStatusResponse> {
        not_yet("ContainerStatus", "issue 7: containers in the pod VM")
    }

    async fn update_container_resources(
        &self,
        _req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> CallResult<cri::UpdateContainerResourcesResponse> {
        not_yet(
            "UpdateContainerResources",
            "issue 7: containers in the pod VM",
        )
    }

    async fn reopen_container_log(
        &self,
        _req: Request<cri::ReopenContainerLogRequest>,
    ) -> CallResult<cri::ReopenContainerLogResponse> {
        not_yet("ReopenContainerLog", "issue 7: containers in the pod VM")
    }

    async fn exec_sync(
        &self,
        _req: Request<cri::ExecSyncRequest>,
    ) -> CallResult<cri::ExecSyncResponse> {
        not_yet("ExecSync", "issue 7: containers in the pod VM")
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

    async fn container_stats(
        &self,
        _req: Request<cri::ContainerStatsRequest>,
    ) -> CallResult<cri::ContainerStatsResponse> {
        not_yet("ContainerStats", "issue 7: containers in the pod VM")
    }

    async fn list_container_stats(
        &self,
        _req: Request<cri::ListContainerStatsRequest>,
    ) -> CallResult<cri::ListContainerStatsResponse> {
        not_yet("ListContainerStats", "issue 7: containers in the pod VM")
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<cri::PodSandboxStatsRequest>,
    ) -> CallResult<cri::PodSandboxStatsResponse> {
        not_yet("PodSandboxStats", "issue 7: containers in the pod VM")
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> CallResult<cri::ListPodSandboxStatsResponse> {
        not_yet("ListPodSandboxStats", "issue 7: containers in the pod VM")
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
