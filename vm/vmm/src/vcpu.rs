//! One vCPU: its KVM fd, boot-time configuration, and the run loop that routes exits to the
//! port-I/O and MMIO buses (Firecracker `vstate/vcpu.rs`). A vCPU thread ends when the VM
//! stops and hands its vCPU back, so a snapshot can read its state: [`kick`] interrupts a
//! KVM_RUN that would otherwise go on (a halted guest) with a signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::devices::bus::Bus;
use super::exit::{ExitReason, ExitSignal};
use super::kvm::KvmVm;
use super::memory::GuestMemoryMmap;
use super::regs::{self, BootEntry, RegsError};

/// Errors from configuring or running a vCPU, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Failed to set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("Failed to set MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    PartialMsrs { set: usize, wanted: usize },
    #[error("Failed to set the FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("Failed to get the segment registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("Failed to set the segment registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("Failed to set the general registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("Failed to get the local APIC")]
    GetLapic(#[source] kvm_ioctls::Error),
    #[error("Failed to set the local APIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    #[error("Failed to write boot structures")]
    BootStructures(#[from] RegsError),
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    #[error("Failed to spawn the vCPU thread")]
    SpawnThread(#[source] std::io::Error),
}

/// Exit counters, shared with the control API.
#[derive(Debug, Default)]
pub struct VcpuMetrics {
    pub exits: AtomicU64,
    pub io_exits: AtomicU64,
    pub mmio_exits: AtomicU64,
    pub unhandled: AtomicU64,
}

/// What one KVM_RUN ended with, once handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Keep running.
    Continue,
    /// The VM is over, for this reason.
    Stop(ExitReason),
}

/// A vCPU ready to run.
#[derive(Debug)]
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    metrics: Arc<VcpuMetrics>,
}

/// Log an unhandled guest access: the first few, then one in 1000 (a guest cannot flood logs).
fn log_unhandled(metrics: &VcpuMetrics, what: &str, addr: u64, len: usize) {
    let n = metrics.unhandled.fetch_add(1, Ordering::Relaxed);
    if n < 10 || n.is_multiple_of(1000) {
        tracing::debug!(
            what,
            addr = format_args!("{addr:#x}"),
            len,
            count = n + 1,
            "unhandled access"
        );
    }
}

impl Vcpu {
    /// Create vCPU `index` of `vm`.
    pub fn new(
        vm: &KvmVm,
        index: u32,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, super::kvm::KvmError> {
        Ok(Self {
            index,
            fd: vm.create_vcpu(index)?,
            pio,
            mmio,
            exit,
            metrics: Arc::new(VcpuMetrics::default()),
        })
    }

    /// The vCPU's exit counters.
    pub fn metrics(&self) -> Arc<VcpuMetrics> {
        self.metrics.clone()
    }

    /// The KVM fd (tests read registers through it).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Set the CPUID of vCPU `index` of `count` (the first step of [`Self::configure`], and
    /// all a restored vCPU needs before its saved state).
    pub fn set_cpuid(&self, vm: &KvmVm, count: u32) -> Result<(), VcpuError> {
        let cpuid = regs::vcpu_cpuid(
            vm.supported_cpuid(),
            self.index,
            count,
            vm.tsc_deadline_timer(),
        );
        self.fd.set_cpuid2(&cpuid).map_err(VcpuError::SetCpuid)
    }

    /// Set CPUID, MSRs, FPU, LAPIC and the registers for `entry`.
    pub fn configure(
        &self,
        vm: &KvmVm,
        mem: &GuestMemoryMmap,
        entry: BootEntry,
        count: u32,
    ) -> Result<(), VcpuError> {
        self.set_cpuid(vm, count)?;
        if !matches!(entry, BootEntry::RealMode { .. }) {
            let msrs = regs::boot_msrs()?;
            let set = self.fd.set_msrs(&msrs).map_err(VcpuError::SetMsrs)?;
            let wanted = msrs.as_slice().len();
            if set != wanted {
                return Err(VcpuError::PartialMsrs { set, wanted });
            }
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(VcpuError::SetFpu)?;
        let sregs = self.fd.get_sregs().map_err(VcpuError::GetSregs)?;
        let sregs = regs::boot_sregs(mem, entry, sregs)?;
        self.fd.set_sregs(&sregs).map_err(VcpuError::SetSregs)?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(VcpuError::SetRegs)?;
        if vm.has_irqchip() {
            let lapic = self.fd.get_lapic().map_err(VcpuError::GetLapic)?;
            self.fd
                .set_lapic(&regs::boot_lapic(lapic))
                .map_err(VcpuError::SetLapic)?;
        }
        Ok(())
    }

    /// Enter the guest once and handle the exit.
    pub fn run_once(&mut self) -> Result<RunOutcome, VcpuError> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick (see [`kick`]) or a signal: stop here if the VM is stopping.
                return Ok(match self.exit.reason() {
                    Some(reason) if self.exit.is_stopping() => RunOutcome::Stop(reason),
                    _ => RunOutcome::Continue,
                });
            }
            Err(e) => return Err(VcpuError::Run(e)),
        };
        let m = &self.metrics;
        m.exits.fetch_add(1, Ordering::Relaxed);
        let outcome = match exit {
            VcpuExit::IoIn(port, data) => {
                m.io_exits.fetch_add(1, Ordering::Relaxed);
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0);
                    log_unhandled(m, "pio read", u64::from(port), data.len());
                }
                RunOutcome::Continue
            }
            VcpuExit::IoOut(port, data) => {
                m.io_exits.fetch_add(1, Ordering::Relaxed);
                if !self.pio.write(u64::from(port), data) {
                    log_unhandled(m, "pio write", u64::from(port), data.len());
                }
                RunOutcome::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                m.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                    log_unhandled(m, "mmio read", addr, data.len());
                }
                RunOutcome::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                m.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if !self.mmio.write(addr, data) {
                    log_unhandled(m, "mmio write", addr, data.len());
                }
                RunOutcome::Continue
            }
            VcpuExit::Hlt => RunOutcome::Stop(ExitReason::AllVcpusHalted),
            VcpuExit::Shutdown => {
                tracing::warn!(
                    vcpu = self.index,
                    "guest triple-faulted (KVM_EXIT_SHUTDOWN)"
                );
                RunOutcome::Stop(ExitReason::GuestCrash)
            }
            VcpuExit::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    RunOutcome::Stop(ExitReason::GuestShutdown)
                }
                _ => RunOutcome::Stop(ExitReason::GuestCrash),
            },
            VcpuExit::FailEntry(reason, cpu) => {
                tracing::error!(vcpu = self.index, reason, cpu, "VM entry failed");
                RunOutcome::Stop(ExitReason::GuestCrash)
            }
            VcpuExit::InternalError => {
                tracing::error!(vcpu = self.index, "KVM internal error");
                RunOutcome::Stop(ExitReason::GuestCrash)
            }
            VcpuExit::Intr => RunOutcome::Continue,
            other => {
                tracing::error!(vcpu = self.index, exit = ?other, "unexpected vCPU exit");
                RunOutcome::Stop(ExitReason::VmmError)
            }
        };
        if outcome == RunOutcome::Continue && self.exit.is_stopping() {
            return Ok(RunOutcome::Stop(
                self.exit.reason().unwrap_or(ExitReason::VmmError),
            ));
        }
        Ok(outcome)
    }

    /// Run until the VM stops; record why in the exit signal and return it.
    pub fn run(&mut self) -> ExitReason {
        let reason = loop {
            match self.run_once() {
                Ok(RunOutcome::Continue) => {}
                Ok(RunOutcome::Stop(reason)) => break reason,
                Err(err) => {
                    tracing::error!(vcpu = self.index, error = %err, "vCPU failed");
                    break ExitReason::VmmError;
                }
            }
        };
        self.exit.stop(reason);
        reason
    }

    /// Run on a thread of its own named `vcpu<N>`, after `on_start` (which installs seccomp);
    /// the thread returns the vCPU when the VM stops.
    pub fn spawn<F>(mut self, on_start: F) -> Result<std::thread::JoinHandle<Vcpu>, VcpuError>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                if let Err(err) = on_start() {
                    tracing::error!(vcpu = self.index, error = %err, "vCPU thread setup failed");
                    self.exit.stop(ExitReason::VmmError);
                    return self;
                }
                self.run();
                self
            })
            .map_err(VcpuError::SpawnThread)
    }

    /// The vCPU's index (its APIC id).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN (first real-time signal).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) handler of the kick signal; once per process, before vCPUs start.
/// With a handler (not the default action) the signal only makes KVM_RUN return EINTR.
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Interrupt the vCPU thread `thread` (if it is in KVM_RUN, KVM_RUN returns EINTR and the
/// thread sees the VM stopping).
pub fn kick<T>(thread: &std::thread::JoinHandle<T>) {
    use vmm_sys_util::signal::Killable;
    if let Err(e) = thread.kill(kick_signal()) {
        tracing::debug!(error = %e, "kicking a vCPU thread failed");
    }
}
