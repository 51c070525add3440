//! The persisted record of a pod sandbox.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::store::Record;
use hull_cri_api::PodSandboxConfig;
use hull_vm::hypervisor::{Backend, VmConfig};
use std::path::PathBuf;

/// Where a sandbox is in its life. `Creating` is persisted before any resource is taken,
/// so a crash mid-way leaves a record for recovery to clean up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Ready,
    NotReady,
}

/// A pod sandbox as hulld remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub state: SandboxState,
    /// The pod's config as kubelet sent it (metadata, labels, annotations, resources...).
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    /// Where the sandbox's resources are (filled in as RunPodSandbox takes them), so Stop,
    /// Remove and recovery after a restart can find every one of them.
    #[serde(default)]
    pub resources: SandboxResources,
}

/// The host resources of a sandbox, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxResources {
    /// `<state_dir>/sandboxes/<id>`: VMM sockets, pid files, console log.
    pub run_dir: PathBuf,
    /// The virtio-fs share (`<run_dir>/shared`), `/run/hull/shared` in the guest.
    pub shared_dir: PathBuf,
    /// The pod netns (`/run/netns/hull-<id>`), once created.
    pub netns: Option<PathBuf>,
    /// The pod's IPs from the CNI result (first is the primary).
    pub ips: Vec<String>,
    /// A VM, or host isolation (the pod's containers on the node).
    pub isolation: crate::config::Isolation,
    /// The VM (or host agent) as started (for reattach after a restart).
    pub vm: Option<VmConfig>,
    pub backend: Option<Backend>,
    pub vmm_pid: u32,
    pub console_log: Option<PathBuf>,
    pub agent_socket: Option<PathBuf>,
    /// Why the sandbox is NOTREADY, when something failed.
    pub error: String,
    /// How long each RunPodSandbox phase took, in milliseconds (netns, cni, tap_tc,
    /// vm_start, agent_ready, agent_setup, total).
    pub timings_ms: std::collections::BTreeMap<String, f64>,
}

impl Record for SandboxRecord {
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("sandboxes");
    fn key(&self) -> &str {
        &self.id
    }
}
