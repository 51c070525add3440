//! What the sandbox manager drives: the pod network, the hypervisor and the guest agent,
//! each behind a trait so the RunPodSandbox unwinding is unit-tested with fakes.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hull_agent_api::v1 as pb;
use hull_agent_api::{AGENT_VSOCK_PORT, AgentClient, ConnectError};
use hull_network::{PodNetwork, PodNetworkConfig, PodNetworking};
use hull_vm::hull::detect::{KvmUnusable, kvm_boots_stock_guests};
use hull_vm::hull::{HullConfig, HullHypervisor};
use hull_vm::hypervisor::{Backend, Hypervisor};
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
            hypervisor: choose_hypervisor(config.vm.vmm, config.vm.templates, qemu_config(config)),
            agent: Arc::new(VsockAgent),
        }
    }

    /// Why hulld runs the pod VMM it runs for `vm.vmm = choice` (the decision
    /// [`Backends::from_config`] made, for Status).
    pub fn vmm_reason(choice: VmmChoice) -> String {
        let qemu = QemuConfig::default();
        select_vmm(choice, host_kvm(), HullConfig::default(), qemu, true).1
    }

    /// The backend that started a sandbox's VM, to re-attach to it and stop it: the
    /// configured one when it is the same, else a fresh one of the recorded kind (no host
    /// check: adopting pid files and stopping needs none), so changing `vm.vmm` does not
    /// lose the pods already running.
    pub fn hypervisor_for(&self, recorded: Option<Backend>) -> Option<Arc<dyn Hypervisor>> {
        match (&self.hypervisor, recorded) {
            (Ok(h), Some(b)) if h.backend() != b => Some(backend_of(b)),
            (Ok(h), _) => Some(Arc::clone(h)),
            (Err(_), Some(b)) => Some(backend_of(b)),
            (Err(_), None) => None,
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

/// The host's KVM check, made once per hulld (it reads /dev/kvm, /sys and /proc).
fn host_kvm() -> &'static Result<(), KvmUnusable> {
    static HOST_KVM: OnceLock<Result<(), KvmUnusable>> = OnceLock::new();
    HOST_KVM.get_or_init(kvm_boots_stock_guests)
}

/// The pod VMM for `vm.vmm`, and why: `auto` takes hull-vmm where the host's KVM boots
/// stock guests (VT-x/AMD-V, not PVM; see `hull_vm::hull::detect`) and the hull-vmm binary
/// is installed, QEMU otherwise (TCG on a host without usable KVM). `hull` on a host that
/// cannot run it is an error naming the reason, reported by Status and returned by
/// RunPodSandbox as FailedPrecondition.
pub fn select_vmm(
    choice: VmmChoice,
    host: &Result<(), KvmUnusable>,
    hull: HullConfig,
    qemu: QemuConfig,
    templates: bool,
) -> (Result<Arc<dyn Hypervisor>, String>, String) {
    let qemu = move || Ok(Arc::new(QemuHypervisor::new(qemu.clone())) as Arc<dyn Hypervisor>);
    let hull_ready = match host {
        Err(why) => Err(format!(
            "this host's KVM cannot boot stock Linux guests: {why}"
        )),
        Ok(()) if !hull.vmm.is_file() => Err(format!(
            "the hull-vmm binary is not installed (looked for {})",
            hull.vmm.display()
        )),
        Ok(()) => Ok(()),
    };
    match (choice, hull_ready) {
        (VmmChoice::Qemu, _) => (qemu(), "vm.vmm = \"qemu\"".into()),
        (VmmChoice::Hull | VmmChoice::Auto, Ok(())) => (
            Ok(
                Arc::new(HullHypervisor::new(hull).with_templates(templates))
                    as Arc<dyn Hypervisor>,
            ),
            format!("vm.vmm = {choice:?}: KVM boots stock guests here").to_lowercase(),
        ),
        (VmmChoice::Auto, Err(why)) => (qemu(), format!("vm.vmm = auto: {why}; using QEMU")),
        (VmmChoice::Hull, Err(why)) => {
            let msg = format!(
                "vm.vmm = \"hull\" but {why}; set vm.vmm = \"auto\" or \"qemu\" to run pods with QEMU"
            );
            (Err(msg.clone()), msg)
        }
    }
}

/// A backend of kind `b` with its default programs.
fn backend_of(b: Backend) -> Arc<dyn Hypervisor> {
    match b {
        Backend::Qemu => Arc::new(QemuHypervisor::new(QemuConfig::default())),
        Backend::Hull => Arc::new(HullHypervisor::new(HullConfig::default())),
        Backend::Host => Arc::new(hull_vm::host::HostBackend::new(Default::default())),
    }
}

/// The QEMU backend's settings from hulld's config.
fn qemu_config(config: &Config) -> QemuConfig {
    QemuConfig {
        console_max_bytes: config.vm.console_log_max_bytes,
        ..QemuConfig::default()
    }
}

/// The VMM of a handler whose `vmm` is `choice` (not `vm.vmm`'s), or why it cannot run.
pub(super) fn vmm_for(choice: VmmChoice, config: &Config) -> Result<Arc<dyn Hypervisor>, String> {
    let (hypervisor, reason) = select_vmm(
        choice,
        host_kvm(),
        HullConfig::default(),
        qemu_config(config),
        config.vm.templates,
    );
    tracing::info!(?choice, %reason, ok = hypervisor.is_ok(), "VMM of a runtime handler");
    hypervisor
}

fn choose_hypervisor(
    choice: VmmChoice,
    templates: bool,
    qemu: QemuConfig,
) -> Result<Arc<dyn Hypervisor>, String> {
    let hull = HullConfig::default();
    let (hypervisor, reason) = select_vmm(choice, host_kvm(), hull, qemu, templates);
    match &hypervisor {
        Ok(h) => tracing::info!(backend = ?h.backend(), %reason, "pod VMM selected"),
        Err(_) => tracing::error!(%reason, "no pod VMM: RunPodSandbox will fail"),
    }
    hypervisor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hull_at(path: &std::path::Path) -> HullConfig {
        HullConfig {
            vmm: path.to_owned(),
            virtiofsd: "/x".into(),
            jail: true,
        }
    }

    fn backend(r: &Result<Arc<dyn Hypervisor>, String>) -> Option<Backend> {
        r.as_ref().ok().map(|h| h.backend())
    }

    #[test]
    fn auto_picks_hull_only_where_kvm_boots_stock_guests() {
        let exe = std::env::current_exe().expect("exe");
        let (h, why) = select_vmm(
            VmmChoice::Auto,
            &Ok(()),
            hull_at(&exe),
            QemuConfig::default(),
            true,
        );
        assert_eq!(backend(&h), Some(Backend::Hull), "{why}");
        let (h, why) = select_vmm(
            VmmChoice::Auto,
            &Err(KvmUnusable::Pvm),
            hull_at(&exe),
            QemuConfig::default(),
            true,
        );
        assert_eq!(backend(&h), Some(Backend::Qemu));
        assert!(why.contains("PVM") && why.contains("QEMU"), "{why}");
        let missing = std::path::Path::new("/nonexistent/hull-vmm");
        let (h, why) = select_vmm(
            VmmChoice::Auto,
            &Ok(()),
            hull_at(missing),
            QemuConfig::default(),
            true,
        );
        assert_eq!(backend(&h), Some(Backend::Qemu));
        assert!(why.contains("/nonexistent/hull-vmm"), "{why}");
    }

    #[test]
    fn reattach_uses_the_backend_recorded_with_the_sandbox() {
        let qemu = Ok(Arc::new(QemuHypervisor::new(QemuConfig::default())) as Arc<dyn Hypervisor>);
        let b = |hypervisor: Result<Arc<dyn Hypervisor>, String>, recorded| {
            let backends = Backends {
                network: Arc::new(hull_network::fake::FakePodNetwork::new()),
                hypervisor,
                agent: Arc::new(VsockAgent),
            };
            backends.hypervisor_for(recorded).map(|h| h.backend())
        };
        assert_eq!(b(qemu.clone(), Some(Backend::Hull)), Some(Backend::Hull));
        assert_eq!(b(qemu.clone(), Some(Backend::Qemu)), Some(Backend::Qemu));
        assert_eq!(b(qemu, None), Some(Backend::Qemu));
        assert_eq!(
            b(Err("no".into()), Some(Backend::Qemu)),
            Some(Backend::Qemu)
        );
        assert_eq!(b(Err("no".into()), None), None);
    }

    #[test]
    fn hull_where_it_cannot_run_is_an_error_naming_the_reason() {
        let exe = std::env::current_exe().expect("exe");
        let (h, why) = select_vmm(
            VmmChoice::Hull,
            &Err(KvmUnusable::Pvm),
            hull_at(&exe),
            QemuConfig::default(),
            true,
        );
        let err = h.err().expect("must be unavailable");
        assert_eq!(err, why);
        assert!(
            err.contains("vm.vmm = \"hull\"") && err.contains("PVM"),
            "{err}"
        );
        let (h, _) = select_vmm(
            VmmChoice::Hull,
            &Ok(()),
            hull_at(&exe),
            QemuConfig::default(),
            true,
        );
        assert_eq!(backend(&h), Some(Backend::Hull));
        let (h, _) = select_vmm(
            VmmChoice::Qemu,
            &Ok(()),
            hull_at(&exe),
            QemuConfig::default(),
            true,
        );
        assert_eq!(backend(&h), Some(Backend::Qemu));
    }
}
