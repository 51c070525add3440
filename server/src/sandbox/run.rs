//! RunPodSandbox: a recipe of named steps, each followed at once by its undo
//! (STYLE.md §5). Steps: validate (request, runtime handler, isolation policy) → reserve
//! name → record `creating` → run dir + shared dir → pod network (netns, CNI ADD, tap + tc;
//! no tap for a host-isolation pod, nothing for hostNetwork) → VM start in the netns (or
//! the host agent, see [`super::host`]) → agent connect (racing the VM's exit, under
//! `vm.agent_timeout_secs`) → agent SetupSandbox → record `ready`. Each phase's time is
//! logged and kept in the record.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_agent_api::AgentClient;
use hull_cri_api::{PodSandboxConfig, RunPodSandboxRequest};
use hull_image::faults::pause_at;
use hull_vm::hypervisor::{Hypervisor, NetConfig, VmConfig, VmHandle};
use tonic::transport::Channel;
use tracing::{Instrument, info, info_span};

use super::handlers::PodIsolation;
use super::{CLEANUP_DEADLINE, Sandbox, SandboxError, SandboxManager, guest, lock, name_key};
use crate::config::Isolation;
use crate::state::sandbox::SandboxResources;
use crate::state::{SandboxRecord, SandboxState, now_nanos};
use crate::unwind::Unwind;

/// How long a VM gets to stop when RunPodSandbox unwinds.
const UNDO_VM_GRACE: Duration = Duration::from_secs(1);
/// How often the agent wait checks that the VM is still alive.
const VM_ALIVE_POLL: Duration = Duration::from_millis(100);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Checks what kubelet sent before anything is taken.
pub(super) fn validate(req: &RunPodSandboxRequest) -> Result<&PodSandboxConfig, SandboxError> {
    let invalid = |m: &str| SandboxError::InvalidRequest(m.to_owned());
    let config = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("config is missing"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata is missing"))?;
    for (what, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(&format!("config.metadata.{what} is empty")));
        }
    }
    Ok(config)
}

/// 128 random bits as 32 hex digits (short enough for unix socket paths under the run dir).
fn new_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(SandboxError::NewId)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl SandboxManager {
    /// RunPodSandbox. The work runs on its own task, so a client that gives up does not
    /// cancel it half-way: either it finishes, or it unwinds.
    pub async fn run(self: &Arc<Self>, req: RunPodSandboxRequest) -> Result<String, SandboxError> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_task(req).await })
            .await
            .map_err(|e| SandboxError::Task(e.to_string()))?
    }

    async fn run_task(self: Arc<Self>, req: RunPodSandboxRequest) -> Result<String, SandboxError> {
        let config = validate(&req)?.clone();
        let iso = super::handlers::resolve(&self.config, &req.runtime_handler, &config)?;
        let hypervisor = match iso.isolation {
            Isolation::Vm => self.vm_backend(iso.runtime.vmm)?,
            Isolation::Host => Arc::clone(&self.host),
        };
        let id = new_id()?;
        // Port mappings are checked before anything is taken.
        guest::pod_spec(&id, &config)?;
        // So is the node's room for the VM; the promise is held until the pod is up or unwound.
        let size = super::sizing::vm_size(&config, &self.config.vm);
        let meta = config.metadata.clone().unwrap_or_default();
        let _admission = self.capacity.admit(size.memory_mib).inspect_err(|e| {
            tracing::warn!(
                pod = %format!("{}/{}", meta.namespace, meta.name),
                error = %e,
                memory_mib = size.memory_mib,
                "RunPodSandbox refused"
            );
        })?;
        let span = info_span!("run_pod_sandbox", pod_id = %id, pod = %format!("{}/{}", meta.namespace, meta.name));
        async move {
            info!(attempt = meta.attempt, handler = %iso.handler, isolation = iso.isolation.as_str(), "RunPodSandbox");
            if iso.isolation == Isolation::Host {
                tracing::warn!(handler = %iso.handler, host_network = iso.node.network,
                    host_pid = iso.node.pid, host_ipc = iso.node.ipc,
                    "host-isolation pod: its containers run on the node, not in a VM");
            }
            let t0 = Instant::now();
            let mut undo = Unwind::new(&id);
            let sb = self.reserve_and_record(&id, config, &req.runtime_handler, &mut undo)?;
            sb.update(&self.store, |r| r.resources.isolation = iso.isolation)?;
            let _guard = sb.lock().await;
            pause_at("run_sandbox.recorded").await;
            match self
                .run_steps(&sb, hypervisor.as_ref(), &iso, &mut undo, t0)
                .await
            {
                Ok(()) => {
                    undo.disarm();
                    info!(ms = ms(t0.elapsed()), "pod sandbox ready");
                    self.watch_vm(&sb);
                    Ok(id)
                }
                Err(err) => Err(self.unwind(&sb, err, undo).await),
            }
        }
        .instrument(span)
        .await
    }

    /// Reserves the pod name and persists the `creating` record, with their undos.
    fn reserve_and_record(
        self: &Arc<Self>,
        id: &str,
        config: PodSandboxConfig,
        handler: &str,
        undo: &mut Unwind,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let name = name_key(config.metadata.as_ref().unwrap_or(&Default::default()));
        self.reserve_name(&name, id)?;
        let (this, n, i) = (Arc::clone(self), name.clone(), id.to_owned());
        undo.push("name", async move {
            this.release_name(&n, &i);
            Ok(())
        });
        let run_dir = self.sandboxes_dir().join(id);
        let record = SandboxRecord {
            id: id.to_owned(),
            state: SandboxState::Creating,
            config,
            runtime_handler: handler.to_owned(),
            created_at: now_nanos(),
            resources: SandboxResources {
                shared_dir: run_dir.join("shared"),
                run_dir,
                ..Default::default()
            },
        };
        if let Err(e) = self.store.put(&record) {
            self.release_name(&name, id);
            return Err(e.into());
        }
        let sb = self.new_sandbox(record);
        self.insert(Arc::clone(&sb));
        let (this, i) = (Arc::clone(self), id.to_owned());
        undo.push("record", async move {
            this.forget(&i);
            this.store
                .delete::<SandboxRecord>(&i)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        Ok(sb)
    }

    /// The resource steps, from the dirs to `ready`.
    async fn run_steps(
        self: &Arc<Self>,
        sb: &Arc<Sandbox>,
        hypervisor: &dyn Hypervisor,
        iso: &PodIsolation,
        undo: &mut Unwind,
        t0: Instant,
    ) -> Result<(), SandboxError> {
        let rec = sb.record();
        let mut timings = std::collections::BTreeMap::new();
        create_dirs(sb, undo)?;

        let net = self.network_step(sb, iso, undo, &mut timings).await?;
        pause_at("run_sandbox.network").await;
        let t = Instant::now();
        let vm_config = match (iso.isolation, &net) {
            (Isolation::Vm, Some(net)) => self.vm_config(sb, &rec.config, iso, net),
            (Isolation::Vm, None) => {
                return Err(SandboxError::InvalidRequest(
                    "a VM pod needs a pod network".into(),
                ));
            }
            (Isolation::Host, net) => {
                let netns = match net {
                    Some(n) => Some(n.netns.clone()),
                    None => super::host::node_netns(&self.config),
                };
                super::host::vm_config(
                    &self.config,
                    &sb.id,
                    &rec.config,
                    iso,
                    sb.run_dir.clone(),
                    netns,
                )?
            }
        };
        // Recorded before the start: a hulld killed during it finds the VMM (or host agent)
        // and helpers again from the run dir's pid files at recovery.
        sb.update(&self.store, |r| {
            r.resources.vm = Some(vm_config.clone());
            r.resources.backend = Some(hypervisor.backend());
        })?;
        let vm: Arc<dyn VmHandle> = Arc::from(
            hypervisor
                .start(&vm_config)
                .await
                .map_err(SandboxError::VmStart)?,
        );
        pause_at("run_sandbox.vm_spawned").await;
        let stopper = Arc::clone(&vm);
        undo.push("vm", async move {
            stopper
                .stop(UNDO_VM_GRACE)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        *lock(&sb.vm) = Some(Arc::clone(&vm));
        timings.insert("vm_start".to_owned(), ms(t.elapsed()));
        info!(
            pid = vm.pid(),
            vcpus = vm_config.vcpus,
            memory_mib = vm_config.memory_mib,
            ms = ms(t.elapsed()),
            "VM started"
        );
        sb.update(&self.store, |r| {
            r.resources.vmm_pid = vm.pid();
            r.resources.console_log = Some(vm.console_log());
            r.resources.agent_socket = Some(vm.agent_socket());
        })?;
        pause_at("run_sandbox.vm_started").await;

        let t = Instant::now();
        let client = self.wait_agent(vm.as_ref()).await?;
        timings.insert("agent_ready".to_owned(), ms(t.elapsed()));
        let vm_up_ms: f64 = ["vm_start", "agent_ready"]
            .iter()
            .filter_map(|k| timings.get(*k))
            .sum();
        let vm_up = Duration::from_secs_f64(vm_up_ms / 1000.0);
        crate::metrics::vm_started(hypervisor.backend(), vm.restored(), vm_up);
        info!(ms = ms(t.elapsed()), "agent connected");
        *sb.agent.lock().await = Some(client.clone());

        let t = Instant::now();
        let setup = match &net {
            Some(net) if iso.isolation == Isolation::Vm => {
                guest::setup_request(&sb.id, &rec.config, net)
            }
            _ => super::host::setup_request(&sb.id, &rec.config, iso),
        };
        self.backends
            .agent
            .setup_sandbox(client, setup)
            .await
            .map_err(|s| match s.code() {
                // The second wall (the agent's own checks, or what only the guest knows,
                // such as which sysctls its kernel has): still the client's mistake.
                tonic::Code::InvalidArgument => SandboxError::InvalidRequest(format!(
                    "the guest agent refused it: {}",
                    s.message()
                )),
                code => SandboxError::AgentSetup(format!("{code:?}: {}", s.message())),
            })?;
        timings.insert("agent_setup".to_owned(), ms(t.elapsed()));
        timings.insert("total".to_owned(), ms(t0.elapsed()));
        sb.update(&self.store, |r| {
            r.state = SandboxState::Ready;
            r.resources.timings_ms = timings;
        })?;
        Ok(())
    }

    /// The pod network (netns, CNI ADD; tap + tc for a VM), with its undo; none for a
    /// hostNetwork pod.
    async fn network_step(
        &self,
        sb: &Arc<Sandbox>,
        iso: &PodIsolation,
        undo: &mut Unwind,
        timings: &mut std::collections::BTreeMap<String, f64>,
    ) -> Result<Option<hull_network::PodNetworkStatus>, SandboxError> {
        if iso.node.network {
            info!("hostNetwork: the pod uses the node's network");
            return Ok(None);
        }
        let rec = sb.record();
        let mut spec = guest::pod_spec(&sb.id, &rec.config)?;
        if iso.isolation == Isolation::Host {
            spec.nic = hull_network::PodNic::Direct;
        }
        let net = self
            .backends
            .network
            .setup(&spec)
            .await
            .map_err(SandboxError::NetworkSetup)?;
        let (network, id) = (Arc::clone(&self.backends.network), sb.id.clone());
        undo.push("network", async move {
            network
                .teardown(&id)
                .await
                .map_err(|e| hull_network::cni::error_chain(&e))
        });
        timings.insert("netns".to_owned(), ms(net.timings.netns));
        timings.insert("cni".to_owned(), ms(net.timings.cni));
        timings.insert("tap_tc".to_owned(), ms(net.timings.tap_tc));
        info!(ips = ?net.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>(), netns_ms = ms(net.timings.netns), cni_ms = ms(net.timings.cni), tap_tc_ms = ms(net.timings.tap_tc), "pod network ready");
        sb.update(&self.store, |r| {
            r.resources.netns = Some(net.netns.clone());
            r.resources.ips = net.ips.iter().map(|i| i.address.addr.to_string()).collect();
        })?;
        Ok(Some(net))
    }

    fn vm_config(
        &self,
        sb: &Sandbox,
        config: &PodSandboxConfig,
        iso: &PodIsolation,
        net: &hull_network::PodNetworkStatus,
    ) -> VmConfig {
        let nic = NetConfig {
            tap: net.tap.clone(),
            mac: net.mac.clone(),
            mtu: net.mtu,
        };
        let mut vm = self.pod_vm_config(&sb.id, config, sb.run_dir.clone(), nic);
        // A handler's own default size.
        let r = &iso.runtime;
        if r.default_vcpus.is_some() || r.default_memory_mib.is_some() {
            let mut section = self.config.vm.clone();
            section.default_vcpus = r.default_vcpus.unwrap_or(section.default_vcpus);
            section.default_memory_mib = r.default_memory_mib.unwrap_or(section.default_memory_mib);
            let size = super::sizing::vm_size(config, &section);
            (vm.vcpus, vm.memory_mib) = (size.vcpus, size.memory_mib);
        }
        vm.netns = Some(net.netns.clone());
        vm.shared_dir = Some(sb.shared_dir.clone());
        vm
    }

    /// The VM of pod `id` sized for `config`, with a NIC and a share in `run_dir` (the
    /// caller sets the netns and share of a real pod).
    pub(super) fn pod_vm_config(
        &self,
        id: &str,
        config: &PodSandboxConfig,
        run_dir: PathBuf,
        nic: NetConfig,
    ) -> VmConfig {
        let size = super::sizing::vm_size(config, &self.config.vm);
        VmConfig {
            id: id.to_owned(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            kernel: self.config.vm.kernel.clone(),
            initramfs: self.config.vm.initramfs.clone(),
            cmdline: self.config.vm.kernel_params.clone(),
            netns: None,
            net: Some(nic),
            shared_dir: Some(run_dir.join("shared")),
            host: None,
            run_dir,
        }
    }

    /// Connects to the agent, failing early (with the console's last lines) if the VM dies.
    async fn wait_agent(&self, vm: &dyn VmHandle) -> Result<AgentClient<Channel>, SandboxError> {
        let timeout = Duration::from_secs(self.config.vm.agent_timeout_secs);
        // The agent's ready line first: a CONNECT before it listens can wedge the backend.
        let ready_by = Instant::now() + timeout;
        if let Err(source) = vm.wait_agent_ready(ready_by).await {
            if !vm.is_running() {
                let console = console_tail(&vm.console_log());
                return Err(SandboxError::VmExited(format!("{source}; {console}")));
            }
            return Err(SandboxError::AgentNotReady { timeout, source });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let socket = vm.agent_socket();
        let connect = self.backends.agent.connect(&socket, deadline);
        let exited = async {
            while vm.is_running() {
                tokio::time::sleep(VM_ALIVE_POLL).await;
            }
        };
        tokio::select! {
            r = connect => r.map_err(|source| SandboxError::AgentTimeout { timeout, source }),
            () = exited => Err(SandboxError::VmExited(console_tail(&vm.console_log()))),
        }
    }

    /// Runs the undo list; if it could not finish, the record stays NOTREADY with the
    /// name reserved, for RemovePodSandbox.
    async fn unwind(&self, sb: &Sandbox, err: SandboxError, undo: Unwind) -> SandboxError {
        tracing::warn!(error = %crate::sandbox::error_chain(&err), steps = undo.len(), "RunPodSandbox failed; unwinding");
        let cleanup = undo.run(CLEANUP_DEADLINE).await;
        if !cleanup.complete() {
            let message = format!("{}; {cleanup}", crate::sandbox::error_chain(&err));
            // The undos of the record and the name were skipped: both stay for Remove.
            let _ = sb.update(&self.store, |r| {
                r.state = SandboxState::NotReady;
                r.resources.error = message;
            });
        }
        SandboxError::WithCleanup {
            id: sb.id.clone(),
            source: Box::new(err),
            cleanup,
        }
    }
}

fn create_dirs(sb: &Sandbox, undo: &mut Unwind) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = sb.run_dir.clone();
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| SandboxError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    let prepared = super::share::prepare(&dir);
    undo.push("dirs", async move {
        super::share::release(&dir)
            .and_then(|()| Ok(crate::mounts::remove_unmounted_tree(&dir)?))
            .map_err(|e| format!("removing {}: {}", dir.display(), super::error_chain(&e)))
    });
    prepared.map_err(SandboxError::from)
}

/// The last lines of the guest console, for errors.
pub(crate) fn console_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("console {}: {}", path.display(), tail.join(" | "))
}
