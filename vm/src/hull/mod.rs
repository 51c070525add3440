//! The hull backend: hull-vmm (hull's own monitor, crate `hull-vmm` in vm/vmm) plus `virtiofsd`
//! for the pod's shared dir. Same process model as the qemu backend: both run detached
//! from hulld (own session, pid files in the VM's run dir), hull-vmm inside the pod's netns
//! for its tap, so a restarted hulld can [`Hypervisor::reattach`]. hull-vmm serves the
//! guest's vsock itself on the hybrid-vsock socket (`CONNECT <port>\n` → `OK <port>\n`),
//! so no vsock helper is needed.
//!
//! Start: validate → virtiofsd (wait for its socket) → write `hull-vmm.json` → hull-vmm
//! → wait for its control API socket (it binds it once the VM is built and the vCPUs
//! run). Any failure terminates what was started and removes sockets, pid files and the
//! config. Stop: SIGTERM (hull-vmm shuts the VM down, exit code 5), SIGKILL after the grace
//! period, then virtiofsd, then the files; console and logs are kept.
//!
//! VM templates (on unless [`HullHypervisor::with_templates`] turns them off): instead of
//! booting the kernel, hull-vmm restores a snapshot of a guest already at agent-ready
//! (`template`, `template_build`). The first pod of a kind creates the template; a pod that
//! cannot have one boots cold. A restored VM's agent does not print its ready line again:
//! readiness is the hybrid-vsock handshake answered (`probe`).

pub mod detect;
pub mod files;
pub mod jail;
pub mod probe;
pub mod template;
pub mod template_build;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_vmm_api::exit::ExitReason;

use crate::procvm::{Spawn, VmProcs, check_id, check_pod_paths, must_exist, remove_files, started};
use crate::qemu::procs::{Proc, wait_agent_marker, wait_for_socket};
use files::RunFiles;
pub use template_build::Boot;
use template_build::Templates;
use tracing::Instrument;

use crate::error_chain;
use crate::hypervisor::{Backend, Hypervisor, HypervisorError, VmConfig, VmExit, VmHandle};
use crate::qemu::{argv, find_program};

/// hull-vmm's exit code for a shutdown asked for (SIGTERM or the API).
const EXIT_API_SHUTDOWN: i32 = ExitReason::ApiShutdown.code();
/// hull-vmm's exit code after it wrote a snapshot.
pub const EXIT_SNAPSHOTTED: i32 = ExitReason::Snapshotted.code();

/// Where the backend finds its programs.
#[derive(Debug, Clone)]
pub struct HullConfig {
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
    /// Run hull-vmm jailed (its own uid, a mount namespace holding only its files, see
    /// [`jail`]); on by default.
    pub jail: bool,
}

impl Default for HullConfig {
    /// hull-vmm next to the running program (hulld and hull-vmm are installed together),
    /// else from PATH; virtiofsd from PATH or the cargo-install dirs.
    fn default() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("hull-vmm")))
            .filter(|p| p.is_file());
        Self {
            vmm: beside.unwrap_or_else(|| find_program("hull-vmm")),
            virtiofsd: find_program("virtiofsd"),
            jail: true,
        }
    }
}

pub struct HullHypervisor {
    config: HullConfig,
    /// `None`: templates are off, every VM boots its kernel.
    templates: Option<Templates>,
}

impl HullHypervisor {
    /// A backend running `config`'s programs, with VM templates on.
    pub fn new(config: HullConfig) -> Self {
        Self {
            config,
            templates: Some(Templates::default()),
        }
    }

    /// Turns VM templates on or off (on by default).
    pub fn with_templates(mut self, enabled: bool) -> Self {
        self.templates = enabled.then(Templates::default);
        self
    }

    /// [`Hypervisor::start`] with the concrete handle, which tells how the VM started.
    pub async fn start_vm(&self, config: &VmConfig) -> Result<HullVm, HypervisorError> {
        validate(config, &self.config)?;
        let span = tracing::info_span!("vm_start", sandbox_id = %config.id);
        self.start_validated(config).instrument(span).await
    }

    async fn start_validated(&self, config: &VmConfig) -> Result<HullVm, HypervisorError> {
        std::fs::create_dir_all(&config.run_dir).map_err(|source| HypervisorError::Io {
            what: format!("run dir {}", config.run_dir.display()),
            source,
        })?;
        let t0 = Instant::now();
        let boot = match &self.templates {
            Some(t) => t.prepare(config, &self.config).await,
            None => Boot::Cold,
        };
        tracing::info!(
            vcpus = config.vcpus,
            memory_mib = config.memory_mib,
            ?boot,
            prepare_ms = t0.elapsed().as_millis() as u64,
            "starting hull-vmm"
        );
        if let Boot::Restored { key, .. } = &boot {
            match self.launch(config, boot.clone()).await {
                Ok(vm) => return Ok(vm),
                Err(e) => {
                    tracing::warn!(key, error = %e, "restore from the VM template failed; cold boot");
                    if let Some(t) = &self.templates {
                        t.remember_failure(key);
                    }
                }
            }
        }
        self.launch(config, Boot::Cold).await
    }

    /// One attempt to start the VM; on failure whatever it started is stopped.
    async fn launch(&self, config: &VmConfig, boot: Boot) -> Result<HullVm, HypervisorError> {
        let files = RunFiles::new(&config.run_dir);
        remove_files(&files.transient());
        let _ = std::fs::remove_file(&files.console_log);
        let mut vm = HullVm {
            files,
            procs: VmProcs::new(exit_of),
            boot,
        };
        let launched = vm.launch(config, &self.config).await;
        started(vm, launched).await
    }
}

fn invalid(msg: String) -> HypervisorError {
    HypervisorError::InvalidConfig(msg)
}

/// Checks everything that can be checked before a process starts; hull-vmm's own
/// validation of the generated config runs here too, so its errors come back typed.
fn validate(config: &VmConfig, programs: &HullConfig) -> Result<(), HypervisorError> {
    check_id(config)?;
    if config.cmdline.contains(['\n', '\0']) {
        return Err(invalid("kernel cmdline contains a newline or NUL".into()));
    }
    must_exist("hull-vmm", &programs.vmm)?;
    check_pod_paths(config, &programs.virtiofsd)?;
    files::vmm_config(config, &RunFiles::new(&config.run_dir))
        .validate()
        .map_err(|e| invalid(error_chain(&e)))
}

#[async_trait::async_trait]
impl Hypervisor for HullHypervisor {
    fn backend(&self) -> Backend {
        Backend::Hull
    }

    async fn start(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        Ok(Box::new(self.start_vm(config).await?))
    }

    async fn warm(&self, config: &VmConfig) -> Result<bool, HypervisorError> {
        let Some(templates) = &self.templates else {
            return Ok(false);
        };
        // Only what making the template needs: no tap, netns or share of this config is used.
        must_exist("hull-vmm", &self.config.vmm)?;
        if config.shared_dir.is_some() {
            must_exist(
                "virtiofsd (cargo install virtiofsd)",
                &self.config.virtiofsd,
            )?;
        }
        let span = tracing::info_span!("vm_warm", sandbox_id = %config.id);
        let boot = templates
            .prepare(config, &self.config)
            .instrument(span)
            .await;
        Ok(matches!(boot, Boot::Restored { .. }))
    }

    async fn reattach(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        let files = RunFiles::new(&config.run_dir);
        // virtiofsd alone (hulld killed before hull-vmm started) is adopted too.
        if !files.vmm_pid.exists() && !files.virtiofsd_pid.exists() {
            return Err(HypervisorError::Missing {
                what: "hull-vmm pid file",
                path: files.vmm_pid.clone(),
            });
        }
        let boot = match std::fs::read_to_string(&files.restored_from) {
            Ok(text) => Boot::Restored {
                key: String::new(),
                dir: PathBuf::from(text.trim_end()),
                created: None,
            },
            Err(_) => Boot::Cold,
        };
        let vm = HullVm {
            procs: VmProcs::adopt(
                &config.run_dir,
                ("hull-vmm", &files.vmm_pid),
                &[("virtiofsd", &files.virtiofsd_pid)],
                exit_of,
            ),
            files,
            boot,
        };
        tracing::info!(sandbox_id = %config.id, running = vm.is_running(), boot = ?vm.boot, "re-attached to hull-vmm");
        Ok(Box::new(vm))
    }
}

/// A hull-vmm VM and its virtiofsd.
pub struct HullVm {
    files: RunFiles,
    procs: VmProcs,
    boot: Boot,
}

impl HullVm {
    /// hull-vmm's control API socket (status, metrics, shutdown; see `hull_vmm_api::control`).
    pub fn api_socket(&self) -> &Path {
        &self.files.api_socket
    }

    /// How this VM started: kernel boot or template restore.
    pub fn boot(&self) -> &Boot {
        &self.boot
    }

    async fn launch(
        &mut self,
        config: &VmConfig,
        programs: &HullConfig,
    ) -> Result<(), HypervisorError> {
        let f = &self.files;
        if let Some(dir) = &config.shared_dir {
            let qf = argv::RunFiles::new(&config.run_dir);
            let virtiofsd = argv::virtiofsd(&qf, &programs.virtiofsd, dir);
            self.procs.start_helpers(&[virtiofsd]).await?;
        }
        let json = serde_json::to_vec_pretty(&files::vmm_config(config, f))
            .map_err(|e| invalid(format!("encoding the hull-vmm config: {e}")))?;
        std::fs::write(&f.vmm_config, json).map_err(|source| HypervisorError::Io {
            what: format!("hull-vmm config {}", f.vmm_config.display()),
            source,
        })?;
        let mut args = match &self.boot {
            Boot::Cold => vec!["--config".into(), f.vmm_config.clone().into_os_string()],
            Boot::Restored { dir, .. } => {
                let text = format!("{}\n", dir.display());
                std::fs::write(&f.restored_from, text).map_err(|source| HypervisorError::Io {
                    what: format!("{}", f.restored_from.display()),
                    source,
                })?;
                template::restore_args(&f.vmm_config, dir)
            }
        };
        if programs.jail {
            args.extend(jail::args(&config.id, &config.run_dir, &[]));
        }
        let vmm = Spawn {
            what: "hull-vmm",
            program: &programs.vmm,
            args,
            log: &f.vmm_log,
            pid_file: &f.vmm_pid,
        };
        let vmm = self.procs.spawn_vmm(&vmm, config.netns.as_deref())?;
        wait_for_socket(&f.api_socket, vmm, &f.vmm_log).await?;
        tracing::info!(pid = vmm.pid, "hull-vmm running");
        Ok(())
    }
}

#[async_trait::async_trait]
impl VmHandle for HullVm {
    fn pid(&self) -> u32 {
        self.procs.pid()
    }

    fn agent_socket(&self) -> PathBuf {
        self.files.agent_socket.clone()
    }

    fn console_log(&self) -> PathBuf {
        self.files.console_log.clone()
    }

    /// SIGTERM to hull-vmm (exit code 5 after it is a requested shutdown; a hull-vmm that
    /// had to be SIGKILLed or died by itself is not a clean one), then virtiofsd.
    async fn stop(&self, grace: Duration) -> Result<VmExit, HypervisorError> {
        self.procs.stop(grace, &self.files.transient()).await
    }

    fn is_running(&self) -> bool {
        self.procs.is_running()
    }

    fn restored(&self) -> bool {
        matches!(self.boot, Boot::Restored { .. })
    }

    fn failure(&self) -> Option<String> {
        self.procs.failure()
    }

    async fn wait_agent_ready(&self, deadline: Instant) -> Result<(), HypervisorError> {
        let (f, vmm) = (&self.files, self.procs.vmm());
        match self.boot {
            Boot::Cold => wait_agent_marker(&f.console_log, vmm, &f.vmm_log, deadline).await,
            Boot::Restored { .. } => {
                probe::wait_vsock_ready(&f.agent_socket, vmm, &f.vmm_log, deadline).await
            }
        }
    }
}

/// How a hull-vmm that exited by itself ended: 0 is a guest shutdown, 5 a shutdown someone
/// asked for (the API); every other code or a signal is a failure (see `ExitReason`).
fn exit_of(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) | Some(EXIT_API_SHUTDOWN) => VmExit::Shutdown,
        code => VmExit::Failed {
            code,
            signal: status.signal(),
        },
    }
}

#[cfg(test)]
mod tests;
