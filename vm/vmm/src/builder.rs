//! Assembling a microVM from a [`VmmConfig`]: a flat recipe of named steps
//! (Firecracker `builder.rs::build_microvm_for_boot`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use hull_vmm_api::config::{ConfigError, VmmConfig};

use super::boot::{self, BASE_CMDLINE, BootError, LoadedInitrd};
use super::devices::blk::Blk;
use super::devices::bus::{Bus, BusError};
use super::devices::fs::{Fs, FsError};
use super::devices::i8042::I8042;
use super::devices::mmio::{MmioError, MmioTransport, QUEUE_NOTIFY_OFFSET};
use super::devices::net::{Net, NetCounters, TapError};
use super::devices::rng::Rng;
use super::devices::serial::SerialDevice;
use super::devices::virtio::VirtioDevice;
use super::devices::vsock::Vsock;
use super::exit::{ExitError, ExitReason, ExitSignal};
use super::kvm::{KvmError, KvmVm, KvmVmOptions};
use super::layout;
use super::memory::{GuestRam, MemoryError};
use super::regs::BootEntry;
use super::snapshot::{self, SnapshotError, VmState};
use super::vcpu::{Vcpu, VcpuError};

/// A virtio-mmio transport shared by the MMIO bus and the snapshot code.
pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// The console device as the builder makes it.
pub type Console = SerialDevice<Box<dyn Write + Send>>;

/// Errors from building a VM, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    #[error("Failed to create the exit signal")]
    ExitSignal(#[from] ExitError),
    #[error("Failed to create guest memory")]
    CreateMemory(#[from] MemoryError),
    #[error("Failed to set up KVM")]
    Kvm(#[from] KvmError),
    #[error("Failed to open the console log {path}")]
    OpenConsole {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to create an interrupt eventfd")]
    CreateIrqEventFd(#[source] std::io::Error),
    #[error("Failed to place a device on a bus")]
    AttachDevice(#[from] BusError),
    #[error("Failed to create the {what} device")]
    CreateDevice {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to open the tap for virtio-net")]
    CreateNet(#[from] TapError),
    #[error("Failed to set up virtio-fs with its vhost-user backend")]
    CreateFs(#[from] FsError),
    #[error("Failed to create a virtio-mmio transport")]
    CreateTransport(#[from] MmioError),
    #[error("Too many virtio devices (GSIs {first}..={last} are all used)")]
    TooManyDevices { first: u32, last: u32 },
    #[error("Failed to load the guest")]
    Boot(#[from] BootError),
    #[error("Failed to write the MP table")]
    Mptable(#[from] super::mptable::MptableError),
    #[error("Failed to configure a vCPU")]
    ConfigureVcpu(#[from] VcpuError),
    #[error("Failed to restore the snapshot")]
    Restore(#[from] SnapshotError),
    #[error("Failed to restore virtio device {index}")]
    RestoreDevice {
        index: usize,
        #[source]
        source: MmioError,
    },
}

impl BuildError {
    /// The exit reason this failure means for the process.
    pub fn exit_reason(&self) -> ExitReason {
        match self {
            BuildError::Config(_)
            | BuildError::Boot(_)
            | BuildError::OpenConsole { .. }
            | BuildError::Restore(SnapshotError::Mismatch(_) | SnapshotError::Version { .. })
            | BuildError::RestoreDevice {
                source: MmioError::RestoreDeviceType { .. } | MmioError::RestoreQueueCount { .. },
                ..
            } => ExitReason::ConfigError,
            _ => ExitReason::SetupError,
        }
    }
}

/// A built VM, vCPUs configured but not running.
#[derive(Debug)]
pub struct Vmm {
    pub config: VmmConfig,
    pub exit: Arc<ExitSignal>,
    pub vcpus: Vec<Vcpu>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// The virtio-net device's counters, when there is one.
    pub net: Option<Arc<NetCounters>>,
    /// COM1 and the virtio-mmio transports in window order (what a snapshot saves).
    pub serial: Arc<Mutex<Console>>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The running vCPU threads (they hand their vCPU back when the VM stops).
    pub vcpu_threads: Vec<std::thread::JoinHandle<Vcpu>>,
    /// Declared after the vCPUs and buses so it is dropped after them; the VM fd before RAM.
    pub vm: KvmVm,
    pub ram: GuestRam,
}

fn console_writer(config: &VmmConfig) -> Result<Box<dyn Write + Send>, BuildError> {
    match &config.console_log {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::OpenConsole {
                    path: path.display().to_string(),
                    source,
                })?;
            Ok(Box::new(file))
        }
        None => Ok(Box::new(std::io::sink())),
    }
}

/// Serial on COM1 (irqfd GSI 4) and the i8042 reset port.
fn attach_legacy_devices(
    vm: &KvmVm,
    pio: &mut Bus,
    config: &VmmConfig,
    exit: &Arc<ExitSignal>,
    restore: Option<&VmState>,
) -> Result<Arc<Mutex<Console>>, BuildError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::CreateIrqEventFd)?;
    if vm.has_irqchip() {
        vm.register_irqfd(&irq, layout::SERIAL_IRQ)?;
    }
    let serial = match restore {
        Some(state) => SerialDevice::from_snapshot(irq, console_writer(config)?, &state.serial)
            .map_err(|source| BuildError::CreateDevice {
                what: "serial",
                source,
            })?,
        None => SerialDevice::new(irq, console_writer(config)?),
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(u64::from(layout::SERIAL_PORT_BASE), 8, serial.clone())?;
    let i8042 = I8042::new(exit.clone());
    pio.insert(
        u64::from(layout::I8042_DATA_PORT),
        5,
        Arc::new(Mutex::new(i8042)),
    )?;
    Ok(serial)
}

/// Put `device` in virtio-mmio window `index` with GSI `IRQ_BASE + index`: irqfd for its
/// interrupt, one ioeventfd per queue on QueueNotify. Returns the transport and the
/// `virtio_mmio.device=` kernel argument that tells the guest where it is.
pub fn attach_virtio_device(
    vm: &KvmVm,
    mmio: &mut Bus,
    ram: &GuestRam,
    exit: &Arc<ExitSignal>,
    index: u32,
    device: Box<dyn VirtioDevice>,
) -> Result<(Arc<Mutex<MmioTransport>>, String), BuildError> {
    let gsi = layout::IRQ_BASE + index;
    if gsi > layout::IRQ_MAX {
        return Err(BuildError::TooManyDevices {
            first: layout::IRQ_BASE,
            last: layout::IRQ_MAX,
        });
    }
    let base = layout::mmio_window(index);
    let irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::CreateIrqEventFd)?;
    if vm.has_irqchip() {
        vm.register_irqfd(&irq, gsi)?;
    }
    let transport = MmioTransport::new(device, ram.memory.clone(), irq, exit.clone())?;
    for (q, evt) in (0u32..).zip(transport.queue_evts()) {
        vm.register_mmio_ioevent(evt, base + QUEUE_NOTIFY_OFFSET, Some(q))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(base, layout::MMIO_WINDOW_SIZE, transport.clone())?;
    let arg = format!("virtio_mmio.device=4K@{base:#x}:{gsi}");
    Ok((transport, arg))
}

/// Kernel, initramfs, command line and boot structures; returns the boot entry.
fn load_guest(
    ram: &GuestRam,
    config: &VmmConfig,
    extra: &[String],
) -> Result<BootEntry, BuildError> {
    let (kernel, result) = boot::load_kernel(ram, &config.kernel)?;
    let max_initrd = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(u64::MAX);
    let initrd: Option<LoadedInitrd> = match &config.initramfs {
        Some(path) => Some(boot::load_initrd(ram, path, kernel.kernel_end, max_initrd)?),
        None => None,
    };
    let mut parts: Vec<&str> = vec![BASE_CMDLINE];
    parts.extend(extra.iter().map(String::as_str));
    parts.push(&config.cmdline);
    let cmdline = boot::build_cmdline(&parts)?;
    match kernel.entry {
        BootEntry::Pvh { .. } => boot::write_pvh_start_info(ram, &cmdline, initrd)?,
        _ => boot::write_linux_boot_params(ram, &cmdline, result.setup_header, initrd)?,
    }
    tracing::info!(entry = ?kernel.entry, initrd = ?initrd, "guest loaded");
    Ok(kernel.entry)
}

/// The virtio devices of a config, in window order, and the NIC's counters.
type Devices = (Vec<Box<dyn VirtioDevice>>, Option<Arc<NetCounters>>);

/// The virtio devices `config` asks for, in window order.
fn create_devices(config: &VmmConfig) -> Result<Devices, BuildError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let failed = |what| move |source| BuildError::CreateDevice { what, source };
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(u64::from(vsock.guest_cid), vsock.uds_path.clone())
            .map_err(failed("vsock"))?;
        devices.push(Box::new(device));
    }
    if let Some(blk) = &config.blk {
        let device = Blk::new(&blk.path, blk.read_only).map_err(failed("blk"))?;
        devices.push(Box::new(device));
    }
    if config.rng {
        devices.push(Box::new(Rng::new().map_err(failed("rng"))?));
    }
    let mut net_counters = None;
    if let Some(net) = &config.net {
        let device = match &net.tap {
            Some(tap) => Net::new(tap, net.mac_bytes())?,
            None => Net::without_backend(net.mac_bytes()).map_err(failed("net"))?,
        };
        net_counters = Some(device.counters());
        devices.push(Box::new(device));
    }
    if let Some(fs) = &config.fs {
        devices.push(Box::new(Fs::new(&fs.socket, &fs.tag)?));
    }
    Ok((devices, net_counters))
}

/// Build the VM described by `config`, to boot its kernel.
pub fn build(config: VmmConfig) -> Result<Vmm, BuildError> {
    assemble(config, None)
}

/// Build the VM described by `config` in the state of the snapshot in `dir` (see
/// [`snapshot`]): same vCPUs, RAM and device set; backends from `config`.
pub fn restore(config: VmmConfig, dir: &Path) -> Result<Vmm, BuildError> {
    assemble(config, Some(dir))
}

/// Check `config` and, when restoring, read the snapshot's state (RAM comes later).
fn check_and_read_state(
    config: &VmmConfig,
    restore_dir: Option<&Path>,
) -> Result<Option<VmState>, BuildError> {
    let Some(dir) = restore_dir else {
        config.validate()?;
        return Ok(None);
    };
    config.validate_for_restore()?;
    let cid = config.vsock.as_ref().map(|v| v.guest_cid);
    Ok(Some(VmState::read(
        dir,
        config.vcpus,
        config.memory_mib,
        cid,
    )?))
}

/// Put `devices` in the virtio-mmio windows, in order; when restoring, there must be as many
/// as the snapshot has. Returns the transports and their `virtio_mmio.device=` arguments.
fn attach_virtio_devices(
    vm: &KvmVm,
    mmio: &mut Bus,
    ram: &GuestRam,
    exit: &Arc<ExitSignal>,
    devices: Vec<Box<dyn VirtioDevice>>,
    state: Option<&VmState>,
) -> Result<(Vec<SharedTransport>, Vec<String>), BuildError> {
    if let Some(state) = state
        && state.transports.len() != devices.len()
    {
        return Err(SnapshotError::Mismatch(format!(
            "{} virtio devices in the snapshot, {} in the config",
            state.transports.len(),
            devices.len()
        ))
        .into());
    }
    let (mut transports, mut args) = (Vec::new(), Vec::new());
    for (index, device) in (0u32..).zip(devices) {
        let (transport, arg) = attach_virtio_device(vm, mmio, ram, exit, index, device)?;
        args.push(arg);
        transports.push(transport);
    }
    Ok((transports, args))
}

fn assemble(config: VmmConfig, restore_dir: Option<&Path>) -> Result<Vmm, BuildError> {
    let state = check_and_read_state(&config, restore_dir)?;
    let exit = Arc::new(ExitSignal::new()?);
    let ram = GuestRam::new(config.memory_mib)?;
    if let Some(dir) = restore_dir {
        let started = std::time::Instant::now();
        let bytes = snapshot::restore_memory(&ram, dir)?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(bytes, elapsed_ms, "guest RAM restored");
    }
    let vm = KvmVm::new(KvmVmOptions::default())?;
    vm.register_memory(&ram)?;
    let mut pio = Bus::new();
    let serial = attach_legacy_devices(&vm, &mut pio, &config, &exit, state.as_ref())?;
    let mut mmio = Bus::new();
    let (devices, net_counters) = create_devices(&config)?;
    let (transports, extra_cmdline) =
        attach_virtio_devices(&vm, &mut mmio, &ram, &exit, devices, state.as_ref())?;
    let entry = match &state {
        Some(_) => None,
        None => {
            let entry = load_guest(&ram, &config, &extra_cmdline)?;
            super::mptable::write_mptable(&ram.memory, config.vcpus)?;
            Some(entry)
        }
    };
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let mut vcpus = Vec::new();
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, index, pio.clone(), mmio.clone(), exit.clone())?;
        match entry {
            Some(entry) => vcpu.configure(&vm, &ram.memory, entry, config.vcpus)?,
            None => vcpu.set_cpuid(&vm, config.vcpus)?,
        }
        vcpus.push(vcpu);
    }
    if let Some(state) = &state {
        restore_state(&vm, &vcpus, &transports, state)?;
    }
    Ok(Vmm {
        config,
        exit,
        vcpus,
        pio,
        mmio,
        net: net_counters,
        serial,
        transports,
        vcpu_threads: Vec::new(),
        vm,
        ram,
    })
}

/// The snapshot's irqchip/PIT/clock, vCPU registers and device registers into a VM whose
/// RAM already holds the snapshot's.
fn restore_state(
    vm: &KvmVm,
    vcpus: &[Vcpu],
    transports: &[Arc<Mutex<MmioTransport>>],
    state: &VmState,
) -> Result<(), BuildError> {
    snapshot::restore_platform(vm, state)?;
    for (vcpu, cpu) in vcpus.iter().zip(&state.cpus) {
        cpu.restore(vcpu.fd()).map_err(SnapshotError::from)?;
    }
    for (index, (t, ts)) in transports.iter().zip(&state.transports).enumerate() {
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        t.restore(ts)
            .map_err(|source| BuildError::RestoreDevice { index, source })?;
    }
    Ok(())
}
