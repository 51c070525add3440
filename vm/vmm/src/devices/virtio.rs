//! What a virtio device implements to sit behind hull-vmm's virtio-mmio transport, and the
//! pieces shared by every device: the interrupt, the activation bundle, the worker thread.
//!
//! A device's queues are processed on a worker thread of its own, started at activation
//! (`DRIVER_OK`) and stopped by device reset or VM exit; its notifications arrive on ioeventfds.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::super::exit::{ExitReason, ExitSignal};
use super::super::memory::GuestMemoryMmap;

/// Device type ids (virtio spec 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// Feature bits every hull device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
/// Configuration change interrupt bit.
pub const INT_CONFIG: u32 = 2;

/// The device's interrupt line (an irqfd) plus the InterruptStatus register behind it.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised by writing `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Set `bit` in InterruptStatus and raise the line.
    pub fn trigger(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Set InterruptStatus without raising the line (restoring a snapshot, whose irqchip
    /// state already has the line's level).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// InterruptACK: clear the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd (tests read it to see interrupts).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Everything a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (the transport's QueueNotify and the ioeventfds).
    pub queue_evts: Arc<[EventFd]>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub acked_features: u64,
    /// Written by the transport on device reset: the worker must stop.
    pub stop_evt: Arc<EventFd>,
    /// Which activation of the transport this is, and the transport's current one (a reset
    /// moves it on): an activation that is not current by the time the device thread gets
    /// to it is dropped (see [`spawn_device_thread`]).
    pub generation: u64,
    pub current: Arc<AtomicU64>,
    /// The VM's exit signal (a worker stops with the VM, and may stop the VM).
    pub exit: Arc<ExitSignal>,
}

/// Errors from activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Device got {got} queues, wants {want}")]
    QueueCount { got: usize, want: usize },
    #[error("Failed to set up the device worker")]
    Worker(#[source] std::io::Error),
    #[error("Device cannot be activated twice")]
    AlreadyActive,
    #[error("The device thread is gone")]
    WorkerGone,
}

/// A driver's read of `data.len()` bytes at `offset` of a device's config space `config`;
/// a read that does not fit inside it reads zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        Some(src) => data.copy_from_slice(src),
        None => data.fill(0),
    }
}

/// `QueueCount` unless the driver set up exactly the `want` queues the device has.
pub fn expect_queues(a: &Activation, want: usize) -> Result<(), ActivateError> {
    match a.queues.len() {
        got if got == want => Ok(()),
        got => Err(ActivateError::QueueCount { got, want }),
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Device type id ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Max size of each queue (the number of queues is the slice length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (must include [`VIRTIO_F_VERSION_1`]).
    fn device_features(&self) -> u64;
    /// Read device config space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device config space (ignored by default: hull devices have read-only config).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "ignoring config write");
    }
    /// Start processing the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
}

/// The driver published more new buffers than the queue holds: a hostile or broken driver
/// (Firecracker's `InvalidAvailIdx`), which stops the VM.
#[derive(Debug, thiserror::Error)]
pub enum QueueCheckError {
    #[error("Failed to read the avail index")]
    ReadAvailIdx(#[source] virtio_queue::Error),
    #[error("Avail index {avail} is more than the queue size ahead of {next}")]
    InvalidAvailIdx { avail: u16, next: u16 },
}

/// Check the avail index before popping chains.
pub fn check_avail_idx(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), QueueCheckError> {
    use virtio_queue::QueueT;
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(QueueCheckError::ReadAvailIdx)?;
    let next = queue.next_avail();
    if avail.0.wrapping_sub(next) > queue.size() {
        return Err(QueueCheckError::InvalidAvailIdx {
            avail: avail.0,
            next,
        });
    }
    Ok(())
}

/// What a worker's queue handler reports.
pub type WorkerResult = Result<(), String>;

/// Start a device's thread, named `virtio-<name>`: it installs the device seccomp filter, then
/// runs `serve` for each activation the device's [`ActivationSender`] hands it (one per
/// DRIVER_OK; a reset ends the current one). Everything that needs privileges the filter
/// forbids (opening files, binding sockets) happens before, in the device's constructor, so
/// a vCPU thread that writes DRIVER_OK only sends on a channel.
pub fn spawn_device_thread<F>(name: &str, serve: F) -> std::io::Result<ActivationSender>
where
    F: FnMut(Activation) + Send + 'static,
{
    spawn_device_thread_as(name, crate::seccomp::ThreadKind::Device, serve)
}

/// [`spawn_device_thread`] with the filter of `kind` (the vsock device's may create unix
/// sockets; the others may not create any).
pub fn spawn_device_thread_as<F>(
    name: &str,
    kind: crate::seccomp::ThreadKind,
    mut serve: F,
) -> std::io::Result<ActivationSender>
where
    F: FnMut(Activation) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel::<Activation>();
    let device = name.to_string();
    std::thread::Builder::new()
        .name(format!("virtio-{name}"))
        .spawn(move || {
            if let Err(err) = crate::seccomp::apply(kind) {
                tracing::error!(device, error = %err, "failed to install the device seccomp filter");
                return;
            }
            for activation in rx {
                // Clear the stop a reset left for the previous activation, then drop this
                // one if a reset came after it (in that order: a reset between the two is
                // seen either way).
                let _ = activation.stop_evt.read();
                if activation.current.load(Ordering::SeqCst) != activation.generation {
                    continue;
                }
                serve(activation);
            }
        })?;
    Ok(ActivationSender(tx))
}

/// Hands activations to a device thread.
#[derive(Debug)]
pub struct ActivationSender(std::sync::mpsc::Sender<Activation>);

impl ActivationSender {
    /// Give the device thread its queues.
    pub fn send(&self, a: Activation) -> Result<(), ActivateError> {
        self.0.send(a).map_err(|_| ActivateError::WorkerGone)
    }
}

/// On the device thread: call `on_queue(index)` each time queue `index` is notified, until the
/// activation's stop eventfd or the VM's exit fires. A handler error means the guest broke
/// the queue protocol: the VM stops.
pub fn serve_queues<F>(device: &str, a: &Activation, mut on_queue: F)
where
    F: FnMut(usize) -> WorkerResult,
{
    let epoll = match queue_epoll(a) {
        Ok(e) => e,
        Err(e) => {
            crate::error_limited!(device, error = %e, "worker epoll setup failed");
            a.exit.stop(ExitReason::VmmError);
            return;
        }
    };
    let stop_token = a.queue_evts.len() as u64;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::error_limited!(device, error = %e, "worker epoll failed");
                a.exit.stop(ExitReason::VmmError);
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token >= stop_token {
                return;
            }
            let index = usize::try_from(token).unwrap_or(usize::MAX);
            if let Some(evt) = a.queue_evts.get(index) {
                let _ = evt.read();
            }
            if let Err(err) = on_queue(index) {
                crate::error_limited!(device, queue = index, error = %err, "guest broke the virtio queue protocol");
                a.exit.stop(ExitReason::GuestCrash);
                return;
            }
        }
    }
}

/// Epoll over an activation's queue eventfds (tokens 0..n), its stop eventfd (n) and the VM's
/// exit eventfd (n+1).
pub fn queue_epoll(a: &Activation) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    let n = a.queue_evts.len() as u64;
    for (i, evt) in (0u64..).zip(a.queue_evts.iter()) {
        epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i),
        )?;
    }
    let stop = EpollEvent::new(EventSet::IN, n);
    epoll.ctl(ControlOperation::Add, a.stop_evt.as_raw_fd(), stop)?;
    let exit = EpollEvent::new(EventSet::IN, n + 1);
    epoll.ctl(ControlOperation::Add, a.exit.eventfd().as_raw_fd(), exit)?;
    Ok(epoll)
}
