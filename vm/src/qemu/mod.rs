//! The QEMU microvm backend: QEMU (`-M microvm`, KVM or TCG) plus two vhost-user helper
//! processes, rust-vmm's `vhost-device-vsock` (the guest's vsock, exposed to the host as a
//! hybrid-vsock unix socket) and `virtiofsd` (the pod's shared dir). All three run
//! detached from hulld, with pid files in the VM's run dir, so a restarted hulld can
//! [`Hypervisor::reattach`]. [`argv`] builds the command lines; `procs` runs them.
//!
//! Start order: helpers → wait for their vhost-user sockets → QEMU (inside the pod's netns
//! when configured, for its tap). Any failure terminates what was started and removes the
//! sockets and pid files. Stop is the reverse: QEMU (SIGTERM, SIGKILL after the grace
//! period), then the helpers, then the files; console and helper logs are kept.

pub mod argv;
pub mod console;
/// Spawned and adopted helper processes, shared with the hull backend.
pub(crate) mod procs;
pub mod tsc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use argv::{Accel, RunFiles};
use console::{ConsolePump, MAX_CONSOLE_BYTES};
use procs::{wait_agent_marker, wait_for_socket};

use crate::hypervisor::{Backend, Hypervisor, HypervisorError, VmConfig, VmExit, VmHandle};
use crate::procvm::{
    Helper, Spawn, VmProcs, check_id, check_pod_paths, must_exist, remove_files, started,
};

/// Where the backend finds its programs, and how it accelerates.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub virtiofsd: PathBuf,
    pub accel: Accel,
    /// TCG's translation buffer, MiB ([`argv::TCG_TB_SIZE_MIB`] by default; unused under KVM).
    pub tcg_tb_size_mib: u32,
    /// Chroot QEMU into an empty dir and run it as the pod's own uid (see
    /// [`argv::qemu_args`]); on by default.
    pub jail: bool,
    /// Bytes of guest console kept in `console.log` ([`MAX_CONSOLE_BYTES`] by default).
    pub console_max_bytes: u64,
}

impl Default for QemuConfig {
    /// Programs from PATH, then /usr/local/cargo-tools/bin and ~/.cargo/bin.
    fn default() -> Self {
        Self {
            qemu: find_program("qemu-system-x86_64"),
            vhost_vsock: find_program("vhost-device-vsock"),
            virtiofsd: find_program("virtiofsd"),
            accel: Accel::Auto,
            tcg_tb_size_mib: argv::TCG_TB_SIZE_MIB,
            jail: true,
            console_max_bytes: MAX_CONSOLE_BYTES,
        }
    }
}

/// First `name` found in PATH or the cargo-install dirs; the bare name if none.
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/cargo-tools/bin",
        "/usr/libexec",
        "/root/.cargo/bin",
    ]
    .map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether KVM can boot a stock Linux guest here: /dev/kvm opens and the CPU advertises
/// VT-x/AMD-V (a PVM host has /dev/kvm but no vmx/svm flag, and only TCG works).
pub fn kvm_usable() -> bool {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    dev && flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

pub struct QemuHypervisor {
    config: QemuConfig,
}

impl QemuHypervisor {
    pub fn new(config: QemuConfig) -> Self {
        Self { config }
    }

    fn use_tcg(&self) -> bool {
        match self.config.accel {
            Accel::Tcg => true,
            Accel::Kvm => false,
            Accel::Auto => !kvm_usable(),
        }
    }
}

fn invalid(msg: String) -> HypervisorError {
    HypervisorError::InvalidConfig(msg)
}

fn validate(config: &VmConfig, programs: &QemuConfig) -> Result<(), HypervisorError> {
    check_id(config)?;
    if !(1..=64).contains(&config.vcpus) || !(64..=1 << 20).contains(&config.memory_mib) {
        return Err(invalid(format!(
            "{} vCPUs / {} MiB out of range (1-64 / 64 MiB-1 TiB)",
            config.vcpus, config.memory_mib
        )));
    }
    if config.cmdline.contains(['\n', '\0']) {
        return Err(invalid(
            "kernel cmdline contains a newline or NUL".to_owned(),
        ));
    }
    if let Some(net) = &config.net {
        argv::check_qemu_value("tap", &net.tap).map_err(invalid)?;
        argv::check_qemu_value("mac", &net.mac.replace(':', "")).map_err(invalid)?;
    }
    must_exist("kernel", &config.kernel)?;
    must_exist("initramfs", &config.initramfs)?;
    must_exist("qemu-system-x86_64", &programs.qemu)?;
    must_exist(
        "vhost-device-vsock (cargo install vhost-device-vsock)",
        &programs.vhost_vsock,
    )?;
    check_pod_paths(config, &programs.virtiofsd)?;
    for p in [&config.kernel, &config.initramfs, &config.run_dir] {
        argv::check_qemu_value("path", &p.to_string_lossy()).map_err(invalid)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Hypervisor for QemuHypervisor {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    async fn start(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        validate(config, &self.config)?;
        let span = tracing::info_span!("vm_start", sandbox_id = %config.id);
        let _enter = span.enter();
        std::fs::create_dir_all(&config.run_dir).map_err(|source| HypervisorError::Io {
            what: format!("run dir {}", config.run_dir.display()),
            source,
        })?;
        let files = RunFiles::new(&config.run_dir);
        remove_files(&files.transient());
        let _ = std::fs::remove_file(&files.console_log);
        let tcg = self.use_tcg();
        tracing::info!(
            tcg,
            vcpus = config.vcpus,
            memory_mib = config.memory_mib,
            "starting QEMU microvm"
        );
        let mut vm = QemuVm {
            files,
            procs: VmProcs::new(exit_of),
            console: None,
        };
        let launched = vm.launch(config, &self.config, tcg).await;
        Ok(Box::new(started(vm, launched).await?))
    }

    async fn reattach(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        let files = RunFiles::new(&config.run_dir);
        // A hulld killed between the helpers' start and QEMU's leaves only helpers: they
        // are adopted too, so stopping the VM stops them.
        let pid_files = [&files.qemu_pid, &files.vsock_pid, &files.virtiofsd_pid];
        if !pid_files.iter().any(|p| p.exists()) {
            return Err(HypervisorError::Missing {
                what: "QEMU pid file",
                path: files.qemu_pid.clone(),
            });
        }
        let helpers = [
            ("vhost-device-vsock", files.vsock_pid.as_path()),
            ("virtiofsd", &files.virtiofsd_pid),
        ];
        let procs = VmProcs::adopt(
            &config.run_dir,
            ("qemu", &files.qemu_pid),
            &helpers,
            exit_of,
        );
        let cap = self.config.console_max_bytes;
        let console = ConsolePump::attach(&files.console_socket, &files.console_log, cap);
        let vm = QemuVm {
            files,
            procs,
            console,
        };
        tracing::info!(sandbox_id = %config.id, running = vm.is_running(), "re-attached to QEMU VM");
        Ok(Box::new(vm))
    }
}

/// A QEMU VM and its helpers.
pub struct QemuVm {
    files: RunFiles,
    procs: VmProcs,
    /// Copies the guest console into the console log while this handle lives.
    console: Option<ConsolePump>,
}

impl QemuVm {
    async fn launch(
        &mut self,
        config: &VmConfig,
        programs: &QemuConfig,
        tcg: bool,
    ) -> Result<(), HypervisorError> {
        let f = &self.files;
        let vsock = Helper {
            spawn: Spawn {
                what: "vhost-device-vsock",
                program: &programs.vhost_vsock,
                args: argv::vsock_args(f),
                log: &f.vsock_log,
                pid_file: &f.vsock_pid,
            },
            socket: &f.vsock_backend,
        };
        let mut helpers = vec![vsock];
        if let Some(dir) = &config.shared_dir {
            helpers.push(argv::virtiofsd(f, &programs.virtiofsd, dir));
        }
        self.procs.start_helpers(&helpers).await?;
        if programs.jail {
            std::fs::create_dir_all(&f.jail_root).map_err(|source| HypervisorError::Io {
                what: format!("QEMU's jail root {}", f.jail_root.display()),
                source,
            })?;
        }
        let qemu = Spawn {
            what: "qemu",
            program: &programs.qemu,
            args: argv::qemu_args(
                config,
                f,
                tcg.then(|| argv::Tcg {
                    tb_size_mib: programs.tcg_tb_size_mib,
                    host_tsc_khz: tsc::host_tsc_khz(),
                }),
                programs.jail,
            ),
            log: &f.qemu_log,
            pid_file: &f.qemu_pid,
        };
        let qemu = self.procs.spawn_vmm(&qemu, config.netns.as_deref())?;
        let pid = qemu.pid;
        // QEMU waits for this connection before it runs the guest. Beyond that, no waiting
        // here to see that QEMU stays up: wait_agent_ready notices an exit within one poll
        // and reports qemu.log, so a bad config still fails fast without costing every
        // good start a fixed delay.
        wait_for_socket(&f.console_socket, qemu, &f.qemu_log).await?;
        self.console = Some(ConsolePump::start(
            &f.console_socket,
            &f.console_log,
            programs.console_max_bytes,
        )?);
        tracing::info!(pid, "QEMU spawned");
        Ok(())
    }
}

#[async_trait::async_trait]
impl VmHandle for QemuVm {
    fn pid(&self) -> u32 {
        self.procs.pid()
    }

    fn agent_socket(&self) -> PathBuf {
        self.files.agent_socket.clone()
    }

    fn console_log(&self) -> PathBuf {
        self.files.console_log.clone()
    }

    /// SIGTERM to QEMU, then the helpers (virtiofsd, vhost-device-vsock).
    async fn stop(&self, grace: Duration) -> Result<VmExit, HypervisorError> {
        self.procs.stop(grace, &self.files.transient()).await
    }

    fn is_running(&self) -> bool {
        self.procs.is_running()
    }

    fn failure(&self) -> Option<String> {
        self.procs.failure()
    }

    async fn wait_agent_ready(&self, deadline: Instant) -> Result<(), HypervisorError> {
        let f = &self.files;
        wait_agent_marker(&f.console_log, self.procs.vmm(), &f.qemu_log, deadline).await
    }
}

/// How a QEMU that exited reads: QEMU exits 0 when the guest reboots (`-no-reboot`) or on
/// SIGTERM; a QEMU that had to be SIGKILLed (or died on its own) is not a clean shutdown.
fn exit_of(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        VmExit::Shutdown
    } else {
        VmExit::Failed {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn only_a_successful_qemu_exit_is_a_shutdown() {
        assert_eq!(exit_of(ExitStatus::from_raw(0)), VmExit::Shutdown);
        let failed = |code, signal| VmExit::Failed { code, signal };
        assert_eq!(exit_of(ExitStatus::from_raw(5 << 8)), failed(Some(5), None));
        assert_eq!(exit_of(ExitStatus::from_raw(9)), failed(None, Some(9)));
    }
}
