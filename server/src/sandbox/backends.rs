//! What the sandbox manager drives: the pod network, the hypervisor and the guest agent,
//! each behind a trait so the RunPodSandbox unwinding is unit-tested with fakes.

use std::path::Path;
use std::sync::Arc;

use hull_agent_api::v1 as pb;
use hull_agent_api::{AGENT_VSOCK_PORT, AgentClient, ConnectError};
use hull_network::{PodNetwork, PodNetworkConfig, PodNetworking};
use hull_vm::hypervisor::Hypervisor;
use hull_vm::qemu::{QemuConfig, QemuHypervisor};
use tonic::transport::Channel;

use crate::config::{Config, VmmChoice};

/// The guest agent as the sandbox manager uses it.
#[async_trait::async_trait]
pub trait AgentConnector: Send + Sync {
    /// Connects through the VM's hybrid-vsock socket, retrying until `deadline`.
    async fn connect(
        &self,
        socket: &Path,
        deadline: tokio::time::Instant,
    ) -> Result<AgentClient<Channel>, ConnectError>;
    /// Hostname, DNS, interfaces, routes and sysctls of the guest.
    async fn setup_sandbox(
        &self,
        client: AgentClient<Channel>,
        req: pb::SetupSandboxRequest,
    ) -> Result<(), tonic::Status>;
    /// Asks the guest to stop its containers and power off (the VMM then exits).
    async fn shutdown(&self, mut client: AgentClient<Channel>) -> Result<(), tonic::Status> {
        client.shutdown(pb::ShutdownRequest {}).await.map(|_| ())
    }
}

/// The real agent: gRPC over the VMM's hybrid vsock.
#[derive(Debug, Default)]
pub struct VsockAgent;

#[async_trait::async_trait]
impl AgentConnector for VsockAgent {
    async fn connect(
        &self,
        socket: &Path,
        deadline: tokio::time::Instant,
    ) -> Result<AgentClient<Channel>, ConnectError> {
        hull_agent_api::connect(socket, AGENT_VSOCK_PORT, deadline).await
    }

    async fn setup_sandbox(
        &self,
        mut client: AgentClient<Channel>,
        req: pb::SetupSandboxRequest,
    ) -> Result<(), tonic::Status> {
        client.setup_sandbox(req).await.map(|_| ())
    }
}

/// The three backends, shared by every sandbox.
#[derive(Clone)]
pub struct Backends {
    pub network: Arc<dyn PodNetworking>,
    /// The VMM backend, or why the configured one cannot run here.
    pub hypervisor: Result<Arc<dyn Hypervisor>, String>,
    pub agent: Arc<dyn AgentConnector>,
}

impl Backends {
    /// The real backends for `config`: hull-network's [`PodNetwork`], the VMM chosen by
    /// `vm.vmm`, and the vsock agent client.
    pub fn from_config(config: &Config) -> Self {
        let network = PodNetwork::new(network_config(config));
        Self {
            network: Arc::new(network),
            hypervisor: choose_hypervisor(config.vm.vmm),
            agent: Arc::new(VsockAgent),
        }
    }

    /// Name of the chosen backend (`qemu`, `hull`) or `unavailable`, for Status.
    pub fn backend_name(&self) -> String {
        match &self.hypervisor {
            Ok(h) => format!("{:?}", h.backend()).to_lowercase(),
            Err(_) => "unavailable".into(),
        }
    }
}

/// hull-network's settings from hulld's config: conf/bin dirs from `[cni]`, the result
/// cache under `<root_dir>/cni`.
pub fn network_config(config: &Config) -> PodNetworkConfig {
    let mut net = PodNetworkConfig::default();
    net.cni.conf_dir = config.cni.conf_dir.clone();
    net.cni.bin_dirs = config.cni.bin_dirs.clone();
    net.cni.cache_dir = config.root_dir.join("cni");
    net.cni.runtime_netns = config.cni.runtime_netns.clone();
    net
}

/// `auto`: hull-vmm where KVM boots stock guests and hull-vmm is wired as a backend,
/// QEMU otherwise (this host's PVM KVM cannot boot stock guests, so QEMU with TCG).
fn choose_hypervisor(choice: VmmChoice) -> Result<Arc<dyn Hypervisor>, String> {
    let qemu = || Arc::new(QemuHypervisor::new(QemuConfig::default())) as Arc<dyn Hypervisor>;
    match choice {
        VmmChoice::Qemu | VmmChoice::Auto => Ok(qemu()),
        VmmChoice::Hull => Err(
            "vm.vmm = \"hull\" but the hull-vmm backend is not available as a pod VMM yet \
             (it does not implement the Hypervisor trait); use vm.vmm = \"qemu\" or \"auto\""
                .into(),
        ),
    }
}
