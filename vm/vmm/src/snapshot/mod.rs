//! VM templates: save a paused VM (vCPUs, in-kernel irqchip/PIT/clock, device registers,
//! guest RAM) to a directory, and build a new VM in that state (Firecracker snapshots, Kata
//! VM templating). A pod VM restored from a template of a guest that booted to agent-ready
//! skips the guest's boot.
//!
//! Layout of a snapshot directory: [`STATE_FILE`] (JSON, [`VmState`]) and [`MEMORY_FILE`]
//! (guest RAM, a sparse file with the memfd's layout: pages the guest never touched are holes).
//!
//! What a snapshot does not carry: host-side connections (take it with no vsock connection
//! open), chains a device has taken but not completed (take it of an idle guest; see
//! `mmio::TransportState`), and anything unique to one VM that the guest learned at boot
//! (its NIC's MAC, CRNG seed, wall clock): the agent sets those per pod in SetupSandbox.

pub mod cpu;
mod memory;

use std::path::Path;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};

use super::devices::mmio::TransportState;
use super::devices::serial::{SerialState, SerialStateDef};
use super::kvm::KvmVm;
pub use cpu::{CpuStateError, VcpuState};
pub use memory::{restore_memory, save_memory};

pub use hull_vmm_api::snapshot::{MEMORY_FILE, STATE_FILE};
/// Bumped whenever [`VmState`] changes meaning.
pub const FORMAT_VERSION: u32 = 1;

/// Errors from saving or restoring a snapshot, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("Failed to {step} {path}")]
    Io {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to encode or decode the VM state")]
    Json(#[source] serde_json::Error),
    #[error("Snapshot format {got} is not the {FORMAT_VERSION} this hull-vmm reads")]
    Version { got: u32 },
    #[error("Snapshot does not match this VM: {0}")]
    Mismatch(String),
    #[error("Failed to {step} of the VM")]
    Kvm {
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Cpu(#[from] CpuStateError),
    #[error("The vCPUs did not pause within {0} ms")]
    PauseTimeout(u64),
    #[error("A device has an open connection or work in flight: {0}")]
    Busy(String),
}

/// Everything of a VM but its RAM.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub version: u32,
    pub memory_mib: u64,
    /// The guest's vsock CID (its driver read it at boot, so a restore must keep it).
    pub vsock_cid: Option<u32>,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub cpus: Vec<VcpuState>,
    #[serde(with = "SerialStateDef")]
    pub serial: SerialState,
    /// One per virtio-mmio window, in window order.
    pub transports: Vec<TransportState>,
}

fn kvm_err(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { step, source }
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { step, path, source }
}

/// The in-kernel irqchip, PIT and clock of a paused VM.
pub struct PlatformState {
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
}

fn get_chip(vm: &KvmVm, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.fd()
        .get_irqchip(&mut chip)
        .map_err(kvm_err("read the irqchip"))?;
    Ok(chip)
}

impl PlatformState {
    /// Read it from a VM whose vCPUs are out of KVM_RUN.
    pub fn save(vm: &KvmVm) -> Result<Self, SnapshotError> {
        Ok(Self {
            clock: vm.fd().get_clock().map_err(kvm_err("read the clock"))?,
            pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.fd().get_pit2().map_err(kvm_err("read the PIT"))?,
        })
    }
}

/// Write the platform part of `state` into a fresh VM (after its vCPUs exist: the LAPICs are
/// theirs). The guest clock continues from the snapshot's value: the guest sees no time pass
/// (its wall clock is set by the agent per pod).
pub fn restore_platform(vm: &KvmVm, state: &VmState) -> Result<(), SnapshotError> {
    let fd = vm.fd();
    fd.set_pit2(&state.pit).map_err(kvm_err("write the PIT"))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(kvm_err("write the clock"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        fd.set_irqchip(chip).map_err(kvm_err("write the irqchip"))?;
    }
    Ok(())
}

impl VmState {
    /// Write `self` as `dir/vm.json`.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_vec(self).map_err(SnapshotError::Json)?;
        std::fs::write(&path, json).map_err(io_err("write", &path))
    }

    /// Read `dir/vm.json` and check it is one this VM can be: same vCPUs, RAM and CID.
    pub fn read(
        dir: &Path,
        vcpus: u32,
        memory_mib: u64,
        vsock_cid: Option<u32>,
    ) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        let state: VmState = serde_json::from_slice(&bytes).map_err(SnapshotError::Json)?;
        if state.version != FORMAT_VERSION {
            return Err(SnapshotError::Version { got: state.version });
        }
        let mismatch = |what: &str, snap: String, now: String| {
            Err(SnapshotError::Mismatch(format!(
                "{what}: snapshot {snap}, config {now}"
            )))
        };
        if state.cpus.len() != vcpus as usize {
            return mismatch("vcpus", state.cpus.len().to_string(), vcpus.to_string());
        }
        if state.memory_mib != memory_mib {
            return mismatch(
                "memory_mib",
                state.memory_mib.to_string(),
                memory_mib.to_string(),
            );
        }
        if state.vsock_cid != vsock_cid {
            return mismatch(
                "vsock cid",
                format!("{:?}", state.vsock_cid),
                format!("{vsock_cid:?}"),
            );
        }
        Ok(state)
    }
}

/// How long the vCPUs get to leave KVM_RUN once the VM is stopping.
const PAUSE_TIMEOUT_MS: u64 = 2000;

/// Wait for every vCPU thread to end (kicking the ones still in KVM_RUN) and take the vCPUs
/// back. The VM's exit signal must already be raised.
pub fn pause_vcpus(
    threads: Vec<std::thread::JoinHandle<super::vcpu::Vcpu>>,
) -> Result<Vec<super::vcpu::Vcpu>, SnapshotError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(PAUSE_TIMEOUT_MS);
    while threads.iter().any(|t| !t.is_finished()) {
        if std::time::Instant::now() > deadline {
            return Err(SnapshotError::PauseTimeout(PAUSE_TIMEOUT_MS));
        }
        for t in threads.iter().filter(|t| !t.is_finished()) {
            super::vcpu::kick(t);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut vcpus = Vec::with_capacity(threads.len());
    for t in threads {
        // A vCPU thread does not panic (no unwrap on its path); if one did, its state is lost.
        let vcpu = t
            .join()
            .map_err(|_| SnapshotError::Busy("a vCPU thread panicked".into()))?;
        vcpus.push(vcpu);
    }
    vcpus.sort_by_key(|v| v.index());
    Ok(vcpus)
}

/// Save a stopped VM into `dir` (which exists): pause the vCPUs, then state and RAM.
pub fn save_vm(vmm: &mut super::builder::Vmm, dir: &Path) -> Result<(), SnapshotError> {
    let started = std::time::Instant::now();
    let vcpus = pause_vcpus(std::mem::take(&mut vmm.vcpu_threads))?;
    let lock_err = |what: &str| SnapshotError::Busy(format!("{what} lock poisoned"));
    let serial = vmm
        .serial
        .lock()
        .map_err(|_| lock_err("serial"))?
        .snapshot();
    let mut transports = Vec::with_capacity(vmm.transports.len());
    for t in &vmm.transports {
        transports.push(t.lock().map_err(|_| lock_err("transport"))?.state());
    }
    let platform = PlatformState::save(&vmm.vm)?;
    let mut cpus = Vec::with_capacity(vcpus.len());
    for v in &vcpus {
        cpus.push(VcpuState::save(v.fd(), v.index(), vmm.vm.msr_indices())?);
    }
    let state = VmState {
        version: FORMAT_VERSION,
        memory_mib: vmm.config.memory_mib,
        vsock_cid: vmm.config.vsock.as_ref().map(|v| v.guest_cid),
        clock: platform.clock,
        pic_master: platform.pic_master,
        pic_slave: platform.pic_slave,
        ioapic: platform.ioapic,
        pit: platform.pit,
        cpus,
        serial,
        transports,
    };
    let bytes = save_memory(&vmm.ram.memfd, vmm.ram.size, dir)?;
    state.write(dir)?;
    tracing::info!(
        dir = %dir.display(),
        memory_bytes = bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(())
}
