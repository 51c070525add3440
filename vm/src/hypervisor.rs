//! The backend-neutral view of a pod VM (Kata's `hypervisor` crate shape, much smaller).
//!
//! hulld builds a [`VmConfig`] from the pod and its own config, asks a [`Hypervisor`] to
//! start it, and gets a [`VmHandle`] back. Whatever the backend, the guest agent is reached
//! the same way: a host unix socket speaking the hybrid-vsock handshake
//! (`CONNECT <port>\n` → `OK <port>\n`), at [`VmHandle::agent_socket`]. A host-isolation
//! pod goes through the same trait: the host backend ([`crate::host`]) starts hull-agent in
//! host mode instead of a VMM, behind the same socket and handshake.

use std::path::PathBuf;

/// The vsock port hull-agent serves its gRPC API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The line hull-agent prints on the console once it listens on [`AGENT_VSOCK_PORT`]
/// (the same string as `hull_agent_api::READY_MARKER`).
pub const AGENT_READY_MARKER: &str = "hull-agent: ready";

/// Which VMM runs a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// hull-vmm, hull's own monitor (KVM only).
    Hull,
    /// QEMU's `microvm` machine (KVM or TCG).
    Qemu,
    /// No VM: hull-agent in host mode runs a host-isolation pod's containers on the node
    /// (see [`crate::host`]).
    Host,
}

/// The pod NIC: a tap device inside the pod's netns, and the MAC/MTU the guest's eth0 gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub tap: String,
    pub mac: String,
    pub mtu: u32,
}

/// Everything a backend needs to boot one pod VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// The sandbox id (names processes, sockets and logs).
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Extra kernel command-line arguments, appended to the backend's own.
    pub cmdline: String,
    /// Per-VM runtime dir (`/run/hull/sandboxes/<id>`): sockets, console log, pid files.
    pub run_dir: PathBuf,
    /// Path of the netns the VMM process runs in (`/run/netns/hull-<id>`), if any.
    pub netns: Option<PathBuf>,
    pub net: Option<NetConfig>,
    /// Host directory shared into the guest over virtio-fs (tag `hullshare`).
    pub shared_dir: Option<PathBuf>,
    /// Set for a host-isolation pod (only the host backend takes one; the VM backends
    /// refuse it): which of the node's namespaces it shares, and its cgroup parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostPod>,
}

/// A host-isolation pod: the node namespaces it shares (its network namespace is
/// [`VmConfig::netns`], `None` for the node's), and where its containers' cgroups go.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostPod {
    /// hostNetwork: `netns` is the node's (or none: hulld's own).
    pub node_network: bool,
    /// hostPID: the node's PID namespace (else the pod gets its own, hull-agent its init).
    pub node_pid: bool,
    /// hostIPC: the node's IPC namespace (else the pod's own, pinned).
    pub node_ipc: bool,
    /// The node's UTS namespace (hostNetwork pods; else the pod's own, pinned).
    pub node_uts: bool,
    /// Cgroup path (cgroupfs form, relative to each hierarchy root) the pod's containers
    /// go under; empty: `/hull/<id>`.
    pub cgroup_parent: String,
}

/// Errors from starting, stopping or finding a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("VM config is invalid: {0}")]
    InvalidConfig(String),
    #[error("Missing {what} at {path}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("Failed to spawn {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("VM did not come up: {0}")]
    Boot(String),
    #[error("Failed to stop VM: {0}")]
    Stop(String),
    #[error("I/O error on {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmExit {
    /// The guest powered off or rebooted (a clean shutdown).
    Shutdown,
    /// The VMM exited with this code or signal for another reason.
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// A running VM. It must survive the drop of the handle (hulld restarts and re-attaches).
#[async_trait::async_trait]
pub trait VmHandle: Send + Sync {
    /// Pid of the VMM process.
    fn pid(&self) -> u32;
    /// Host unix socket of the guest's vsock (hybrid vsock handshake).
    fn agent_socket(&self) -> PathBuf;
    /// File the guest console (kernel log, agent log) is written to.
    fn console_log(&self) -> PathBuf;
    /// Stop the VM: ask nicely, kill after `grace`, and clean up every helper process,
    /// socket and file the backend made. Idempotent.
    async fn stop(&self, grace: std::time::Duration) -> Result<VmExit, HypervisorError>;
    /// Whether the VMM process is still alive.
    fn is_running(&self) -> bool;
    /// Whether the VM was restored from a snapshot (a VM template) rather than booted.
    fn restored(&self) -> bool {
        false
    }
    /// Why the VM can no longer serve its pod, once it cannot: the VMM exited, or a
    /// helper process it needs (virtiofsd, the vsock backend) died, each named with how
    /// it ended where that is known. `None` while everything runs. The default knows only
    /// the VMM.
    fn failure(&self) -> Option<String> {
        (!self.is_running()).then(|| "the VMM exited".to_owned())
    }
    /// Waits until the guest agent listens (its ready line is on the console), so the first
    /// vsock `CONNECT` is answered at once. Connecting earlier works too but makes the
    /// vsock backend queue requests for a guest that cannot answer yet; rust-vmm's
    /// vhost-device-vsock was seen to stop answering after such requests were abandoned.
    /// Fails if the VMM exits or `deadline` passes. The default returns at once.
    async fn wait_agent_ready(&self, deadline: std::time::Instant) -> Result<(), HypervisorError> {
        let _ = deadline;
        Ok(())
    }
    /// Waits until the VMM exits by itself (guest shutdown, crash, kill), then cleans up
    /// like [`VmHandle::stop`] and returns how it ended. The default polls
    /// [`VmHandle::is_running`]; a backend with an exit notification can do better.
    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        while self.is_running() {
            tokio::time::sleep(WAIT_POLL).await;
        }
        self.stop(std::time::Duration::ZERO).await
    }
}

/// How often the default [`VmHandle::wait`] checks the VMM.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// A VM backend.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    fn backend(&self) -> Backend;
    /// Boot a VM. On error nothing the call started is left running.
    async fn start(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError>;
    /// Re-attach to a VM started by an earlier hulld from what is in its `run_dir`.
    async fn reattach(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError>;
    /// Gets ready to start VMs like `config` fast (hull: makes their VM template now rather
    /// than at the first such pod); `config.run_dir` only locates the backend's state.
    /// Returns whether anything is ready; backends with nothing to prepare return false.
    async fn warm(&self, config: &VmConfig) -> Result<bool, HypervisorError> {
        let _ = config;
        Ok(false)
    }
}
