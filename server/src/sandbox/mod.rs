//! Pod sandboxes: each one is a microVM with its own pod network (issue 4).
//!
//! [`SandboxManager`] owns every sandbox hulld knows: it runs the RunPodSandbox recipe
//! (`run.rs`), stops and removes (`stop.rs`), sizes the VM (`sizing.rs`), builds the
//! guest's network setup (`guest.rs`) and rebuilds its state at start-up
//! (`crate::recover`). The backends it drives (pod network, hypervisor, agent) sit behind
//! traits in `backends.rs`, so the unwinding is unit-tested with fakes.
//!
//! # API for the other CRI objects (containers, streaming, stats)
//! ```ignore
//! let sb: Arc<Sandbox> = daemon.sandboxes.get(&pod_id).ok_or(..)?;   // id or unique prefix
//! let _guard = sb.lock().await;        // per-pod lock: serializes with Stop/Remove of the pod
//! if sb.state() != SandboxState::Ready { /* FailedPrecondition */ }
//! let mut agent = sb.agent().await?;   // AgentClient<Channel>, connected (cached, reconnects)
//! let host_dir = sb.staging_dir();     // hulld's side of the virtio-fs share (see share.rs) ...
//! let guest_dir = Sandbox::GUEST_SHARED_DIR; // ... which the guest sees here, read-only
//! let netns = sb.netns();              // Option<PathBuf>: /run/netns/hull-<id>
//! let rec = sb.record();               // SandboxRecord snapshot (config, labels, ips, ...)
//! ```
//! Take `lock()` for anything that must not interleave with Stop/Remove of the same pod
//! (e.g. CreateContainer); reads need no lock. RunPodSandbox, Stop and Remove hold it
//! for their whole run. Calls on different pods never wait for each other.
//!
//! # States
//! `creating` is persisted before any resource is taken; `ready` once the agent has set up
//! the guest; `notready` after Stop, when the VM died, or when an undo failed (the record
//! then keeps the name reserved, and RemovePodSandbox finishes the cleanup).
//!
//! # Isolation
//! The runtime handler and the pod's namespace options choose the isolation
//! ([`handlers`]): a VM, or host isolation (hostNetwork/hostPID/hostIPC pods and
//! `isolation = "host"` handlers), where hull-agent in host mode runs the containers on the
//! node ([`host`], `hull_vm::host`). Both go through the same steps below; the host
//! pod's "VM" is its agent process, its network has no tap (or is the node's), and its
//! share is a plain host dir its agent reads directly. hulld logs every host-isolation pod
//! at warn level.

mod backends;
pub mod capacity;
mod guest;
pub mod handlers;
pub mod host;
mod janitor;
mod run;
pub mod share;
pub mod share_ns;
pub mod sizing;
mod stop;
mod warm;
pub mod watch;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_vm::hypervisor::VmHandle;
use tonic::transport::Channel;

pub use backends::{AgentConnector, Backends, VsockAgent};

use crate::config::{Config, Isolation};
use crate::state::{SandboxRecord, SandboxState, Store, StoreError};
use crate::unwind::Cleanup;

/// How long the undo list of a failed RunPodSandbox may run.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

/// Errors of sandbox operations, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Invalid pod sandbox request: {0}")]
    InvalidRequest(String),
    #[error(
        "Runtime handler {name:?} is not configured (hull has {known}; see [runtimes] in hulld's config)"
    )]
    UnknownHandler { name: String, known: String },
    #[error(
        "The pod asks for {asked}, which a VM (handler {handler:?}) cannot share, and this node runs no pod on the host (host_isolation.node_namespaces = \"refuse\")"
    )]
    NodeNamespacesRefused { asked: String, handler: String },
    #[error(
        "Pods of namespace {namespace:?} may not run with host isolation ({why}); hulld's host_isolation.allowed_namespaces does not list it"
    )]
    HostIsolationDenied { namespace: String, why: String },
    #[error("Pod sandbox name {name:?} is already reserved for sandbox {id}")]
    NameReserved { name: String, id: String },
    #[error("Pod not admitted")]
    Admission(#[from] capacity::CapacityError),
    #[error("VMM backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("Failed to generate a sandbox id")]
    NewId(#[source] std::io::Error),
    #[error("The sandbox task failed: {0}")]
    Task(String),
    #[error("Pod sandbox {} not found", crate::cri::status::quote(.0))]
    NotFound(String),
    #[error("Pod sandbox {id} is not ready ({state:?})")]
    NotReady { id: String, state: SandboxState },
    #[error("Failed to create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Virtio-fs share")]
    Share(#[from] share::ShareError),
    #[error("Failed to remove {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Metadata store")]
    Store(#[from] StoreError),
    #[error("Failed to set up the pod network")]
    NetworkSetup(#[source] hull_network::PodNetworkError),
    #[error("Failed to tear down the pod network")]
    NetworkTeardown(#[source] hull_network::PodNetworkError),
    #[error("Failed to start the VM")]
    VmStart(#[source] hull_vm::hypervisor::HypervisorError),
    #[error("Failed to stop the VM")]
    VmStop(#[source] hull_vm::hypervisor::HypervisorError),
    #[error("The VM exited before its agent answered: {0}")]
    VmExited(String),
    #[error("The guest agent did not answer within {timeout:?}")]
    AgentTimeout {
        timeout: Duration,
        #[source]
        source: hull_agent_api::ConnectError,
    },
    #[error("The guest agent did not answer within {timeout:?} (no ready line on the console)")]
    AgentNotReady {
        timeout: Duration,
        #[source]
        source: hull_vm::hypervisor::HypervisorError,
    },
    #[error("The guest agent failed to set up the sandbox: {0}")]
    AgentSetup(String),
    #[error("Pod sandbox {id}: {source}; {cleanup}")]
    WithCleanup {
        id: String,
        #[source]
        source: Box<SandboxError>,
        cleanup: Cleanup,
    },
}

impl SandboxError {
    /// The error that made the operation fail (without the cleanup report).
    pub fn root(&self) -> &SandboxError {
        match self {
            Self::WithCleanup { source, .. } => source.root(),
            other => other,
        }
    }
}

/// One pod sandbox: its record, VM handle, agent client and per-pod lock.
pub struct Sandbox {
    id: String,
    run_dir: PathBuf,
    shared_dir: PathBuf,
    record: Mutex<SandboxRecord>,
    op: Arc<tokio::sync::Mutex<()>>,
    pub(crate) vm: Mutex<Option<Arc<dyn VmHandle>>>,
    agent: tokio::sync::Mutex<Option<AgentClient<Channel>>>,
    connector: Arc<dyn AgentConnector>,
    agent_timeout: Duration,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("state", &self.state())
            .finish()
    }
}

impl Sandbox {
    /// Where the guest mounts [`Sandbox::shared_dir`].
    pub const GUEST_SHARED_DIR: &'static str = hull_agent_api::GUEST_SHARED_DIR;

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A snapshot of the persisted record.
    pub fn record(&self) -> SandboxRecord {
        lock(&self.record).clone()
    }

    pub fn state(&self) -> SandboxState {
        lock(&self.record).state
    }

    /// What virtiofsd serves (`<run_dir>/shared`): a read-only view of
    /// [`Sandbox::staging_dir`]. hulld never writes through it.
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// hulld's working tree for the share (`<run_dir>/staging`), which the guest sees
    /// read-only at [`Sandbox::GUEST_SHARED_DIR`]: container dirs, rootfs overlays, volume
    /// and `/etc` file binds are made here (see [`share`]).
    pub fn staging_dir(&self) -> PathBuf {
        share::staging_dir(&self.run_dir)
    }

    /// Where volume binds get their flags before they move into the staging dir.
    pub fn scratch_dir(&self) -> PathBuf {
        share::scratch_dir(&self.run_dir)
    }

    /// `<state_dir>/sandboxes/<id>`: VMM sockets, pid files, console log.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The pod netns, once created.
    pub fn netns(&self) -> Option<PathBuf> {
        lock(&self.record).resources.netns.clone()
    }

    /// A VM, or host isolation.
    pub fn isolation(&self) -> Isolation {
        lock(&self.record).resources.isolation
    }

    /// Where this pod's agent sees [`Sandbox::staging_dir`]: the VM's virtio-fs mount of
    /// its read-only view, or for a host pod (whose agent is on the node, with no share)
    /// the staging dir itself.
    pub fn agent_shared_dir(&self) -> String {
        match self.isolation() {
            Isolation::Vm => Self::GUEST_SHARED_DIR.to_owned(),
            Isolation::Host => self.staging_dir().display().to_string(),
        }
    }

    /// The per-pod operation lock.
    pub async fn lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.op).lock_owned().await
    }

    /// The VM, while it is running (or until Stop cleaned it up).
    pub fn vm(&self) -> Option<Arc<dyn VmHandle>> {
        lock(&self.vm).clone()
    }

    /// A connected client to the guest agent; connects (within the agent timeout) on
    /// first use, e.g. after a hulld restart. The channel reconnects by itself.
    pub async fn agent(&self) -> Result<AgentClient<Channel>, SandboxError> {
        let state = self.state();
        if state != SandboxState::Ready && state != SandboxState::Creating {
            return Err(SandboxError::NotReady {
                id: self.id.clone(),
                state,
            });
        }
        let mut cached = self.agent.lock().await;
        if let Some(client) = cached.as_ref() {
            return Ok(client.clone());
        }
        let socket =
            self.vm()
                .map(|vm| vm.agent_socket())
                .ok_or_else(|| SandboxError::NotReady {
                    id: self.id.clone(),
                    state,
                })?;
        let deadline = tokio::time::Instant::now() + self.agent_timeout;
        let client = self
            .connector
            .connect(&socket, deadline)
            .await
            .map_err(|source| SandboxError::AgentTimeout {
                timeout: self.agent_timeout,
                source,
            })?;
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Changes and persists the record.
    pub(crate) fn update(
        &self,
        store: &Store,
        change: impl FnOnce(&mut SandboxRecord),
    ) -> Result<(), StoreError> {
        let mut rec = lock(&self.record);
        let mut next = rec.clone();
        change(&mut next);
        store.put(&next)?;
        *rec = next;
        Ok(())
    }
}

/// Poison-tolerant lock (a panicking holder leaves plain data behind).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A VMM backend, or why it cannot run here.
type VmmBackend = Result<Arc<dyn hull_vm::hypervisor::Hypervisor>, String>;

/// Every sandbox hulld knows, by id, and the reserved pod names.
pub struct SandboxManager {
    config: Arc<Config>,
    pub(crate) store: Store,
    backends: Backends,
    /// The host backend (hull-agent in host mode) of host-isolation pods.
    host: Arc<dyn hull_vm::hypervisor::Hypervisor>,
    /// VMMs of handlers whose `vmm` differs from `vm.vmm`, made at their first pod (each
    /// keeps its own VM templates).
    vmms: Mutex<HashMap<crate::config::VmmChoice, VmmBackend>>,
    /// Memory admission of new pods (`[node]`).
    pub(crate) capacity: capacity::NodeCapacity,
    sandboxes: RwLock<HashMap<String, Arc<Sandbox>>>,
    /// containerd's name reservation: `name_namespace_uid_attempt` → sandbox id.
    names: Mutex<HashMap<String, String>>,
    /// What to do with a pod's containers when its VM dies (see [`watch`]).
    vm_death: watch::HookCell,
}

impl std::fmt::Debug for SandboxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxManager")
            .field("sandboxes", &self.list().len())
            .finish()
    }
}

impl SandboxManager {
    pub fn new(config: Arc<Config>, store: Store, backends: Backends) -> Self {
        let host = Arc::new(hull_vm::host::HostBackend::new(hull_vm::host::HostConfig {
            agent: config.host_isolation.agent.clone(),
        }));
        Self {
            capacity: capacity::NodeCapacity::new(&config.node),
            config,
            store,
            backends,
            host,
            vmms: Mutex::new(HashMap::new()),
            sandboxes: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            vm_death: watch::HookCell::new(),
        }
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Uses `host` for host-isolation pods instead of hull-agent (tests).
    pub fn with_host_backend(mut self, host: Arc<dyn hull_vm::hypervisor::Hypervisor>) -> Self {
        self.host = host;
        self
    }

    /// The backend that started a sandbox's VM or host agent (`recorded`), to re-attach to
    /// it and stop it (see [`Backends::hypervisor_for`]).
    pub fn hypervisor_for(
        &self,
        recorded: Option<hull_vm::hypervisor::Backend>,
    ) -> Option<Arc<dyn hull_vm::hypervisor::Hypervisor>> {
        match recorded {
            Some(hull_vm::hypervisor::Backend::Host) => Some(Arc::clone(&self.host)),
            other => self.backends.hypervisor_for(other),
        }
    }

    /// The VMM of a VM handler: `vm.vmm`'s, or the handler's own `vmm`.
    fn vm_backend(
        &self,
        choice: Option<crate::config::VmmChoice>,
    ) -> Result<Arc<dyn hull_vm::hypervisor::Hypervisor>, SandboxError> {
        let choice = match choice {
            Some(c) if c != self.config.vm.vmm => c,
            _ => {
                return self
                    .backends
                    .hypervisor
                    .clone()
                    .map_err(SandboxError::BackendUnavailable);
            }
        };
        lock(&self.vmms)
            .entry(choice)
            .or_insert_with(|| backends::vmm_for(choice, &self.config))
            .clone()
            .map_err(SandboxError::BackendUnavailable)
    }

    /// The sandbox with this id, or the only one whose id starts with it.
    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        if id.is_empty() {
            return None;
        }
        let map = self.sandboxes.read().unwrap_or_else(|p| p.into_inner());
        if let Some(sb) = map.get(id) {
            return Some(Arc::clone(sb));
        }
        let mut found = map.iter().filter(|(k, _)| k.starts_with(id));
        match (found.next(), found.next()) {
            (Some((_, sb)), None) => Some(Arc::clone(sb)),
            _ => None,
        }
    }

    /// Every sandbox, in no particular order.
    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        let map = self.sandboxes.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    pub(crate) fn insert(&self, sb: Arc<Sandbox>) {
        let mut map = self.sandboxes.write().unwrap_or_else(|p| p.into_inner());
        map.insert(sb.id.clone(), sb);
    }

    fn forget(&self, id: &str) {
        let mut map = self.sandboxes.write().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// Reserves a pod name for `id`; fails if another sandbox holds it.
    pub(crate) fn reserve_name(&self, name: &str, id: &str) -> Result<(), SandboxError> {
        let mut names = lock(&self.names);
        match names.get(name) {
            Some(holder) if holder != id => Err(SandboxError::NameReserved {
                name: name.to_owned(),
                id: holder.clone(),
            }),
            _ => {
                names.insert(name.to_owned(), id.to_owned());
                Ok(())
            }
        }
    }

    fn release_name(&self, name: &str, id: &str) {
        let mut names = lock(&self.names);
        if names.get(name).is_some_and(|holder| holder == id) {
            names.remove(name);
        }
    }

    pub(crate) fn new_sandbox(&self, record: SandboxRecord) -> Arc<Sandbox> {
        Arc::new(Sandbox {
            id: record.id.clone(),
            run_dir: record.resources.run_dir.clone(),
            shared_dir: record.resources.shared_dir.clone(),
            record: Mutex::new(record),
            op: Arc::new(tokio::sync::Mutex::new(())),
            vm: Mutex::new(None),
            agent: tokio::sync::Mutex::new(None),
            connector: Arc::clone(&self.backends.agent),
            agent_timeout: Duration::from_secs(self.config.vm.agent_timeout_secs),
        })
    }

    /// `<state_dir>/sandboxes`.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.config.state_dir.join("sandboxes")
    }
}

/// containerd's reservation key for a pod.
pub fn name_key(meta: &hull_cri_api::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

/// An error with its whole source chain, for messages and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}
