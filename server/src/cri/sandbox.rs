//! Pod sandbox RPCs (issue 4). Split into `sandbox_<verb>.rs` files as they grow.

use hull_cri_api as cri;

use super::CriService;
use super::status::CriError;

impl CriService {
    pub(crate) async fn do_run_pod_sandbox(
        &self,
        _req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "RunPodSandbox",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_stop_pod_sandbox(
        &self,
        _req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "StopPodSandbox",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_remove_pod_sandbox(
        &self,
        _req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "RemovePodSandbox",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_pod_sandbox_status(
        &self,
        _req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "PodSandboxStatus",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_list_pod_sandbox(
        &self,
        _req: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "ListPodSandbox",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_pod_sandbox_stats(
        &self,
        _req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "PodSandboxStats",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }

    pub(crate) async fn do_list_pod_sandbox_stats(
        &self,
        _req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
        Err(CriError::Unimplemented {
            rpc: "ListPodSandboxStats",
            why: "issue 4: pod sandboxes are microVMs",
        })
    }
}
