//! hull-vmm's virtio-mmio transport (virtio 1.x, "version 2" register layout).
//!
//! Guest input is checked before use (Firecracker `transport/mmio.rs`): only 4-byte register
//! accesses are answered (config space may be accessed at any width), unknown offsets are
//! logged and ignored, the driver status may only move along the spec's sequence, features are
//! only accepted between DRIVER and FEATURES_OK and must include VERSION_1, queue registers
//! only change before DRIVER_OK, and every queue must pass size/alignment/bounds checks before
//! the device is activated.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::bus::BusDevice;
use super::virtio::{Activation, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt, status};
use crate::exit::ExitSignal;
use crate::memory::GuestMemoryMmap;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id we report ("HULL" is not registered anywhere; QEMU reports 0x554d4551).
pub const VENDOR_ID: u32 = 0x4c4c_5548;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Start of the device config space.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Errors from creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("Device declares an invalid queue max size {0}")]
    QueueMaxSize(u16),
    #[error("Failed to create a queue eventfd")]
    CreateEventFd(#[source] std::io::Error),
    #[error("Snapshot has a {got} device where this VM has a {want} device (type ids)")]
    RestoreDeviceType { got: u32, want: u32 },
    #[error("Snapshot has {got} queues for a device with {want}")]
    RestoreQueueCount { got: usize, want: usize },
    #[error("Snapshot queue {0} is invalid for this device or guest memory")]
    RestoreQueue(usize),
    #[error("Failed to read the used index of restored queue {0}")]
    RestoreUsedIdx(usize, #[source] virtio_queue::Error),
    #[error("The device refused the restored queues")]
    RestoreActivate,
}

/// The driver-visible registers of one queue, as the driver set them up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegs {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// A transport's state in a snapshot. Where each queue's device has got to is not kept: a
/// snapshot is taken of an idle VM, where every chain a device took is completed, so the
/// used index in guest memory is both the next chain to take and the next used slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueRegs>,
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Arc<[EventFd]>,
    /// Written on reset to stop the device thread's current activation.
    stop_evt: Arc<EventFd>,
    /// The activation generation; a reset moves it on (see `Activation::generation`).
    generation: Arc<std::sync::atomic::AtomicU64>,
    activated: bool,
    status: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish()
    }
}

/// The driver-status changes the spec allows (from, to); plus any → 0 (reset) and
/// any → |FAILED.
const ALLOWED_STATUS: [(u32, u32); 4] = [
    (0, status::ACKNOWLEDGE),
    (status::ACKNOWLEDGE, status::ACKNOWLEDGE | status::DRIVER),
    (
        status::ACKNOWLEDGE | status::DRIVER,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    ),
    (
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    ),
];

impl MmioTransport {
    /// Wrap `device`, whose interrupt is `irqfd`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|_| MmioError::QueueMaxSize(max))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::CreateEventFd)?);
        }
        Ok(Self {
            device,
            mem,
            exit,
            interrupt: Arc::new(VirtioInterrupt::new(irqfd)),
            queues,
            queue_evts: queue_evts.into(),
            stop_evt: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(MmioError::CreateEventFd)?),
            generation: Arc::default(),
            activated: false,
            status: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            config_generation: 0,
        })
    }

    /// The notification eventfd of each queue (the builder registers them as ioeventfds at
    /// `base + QUEUE_NOTIFY_OFFSET` with the queue index as datamatch).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt (tests check InterruptStatus and the irqfd).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    fn features_negotiable(&self) -> bool {
        self.status == status::ACKNOWLEDGE | status::DRIVER
    }

    fn queues_configurable(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = usize::try_from(self.queue_select)
            .ok()
            .and_then(|i| self.queues.get(i));
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.device.device_features();
                match self.features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // SHMLen/SHMBase: hull devices have no shared memory regions, and the spec's
            // "no such region" is all ones (Linux reads a 0 length as a region at 0).
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.features_select = value,
            0x20 => self.write_driver_features(value),
            0x24 => self.acked_features_select = value,
            0x30 => self.queue_select = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY_OFFSET => self.notify(value),
            0x64 => self.interrupt.ack(value),
            0xac => {} // SHMSel: every region reads as absent

            0x70 => self.write_status(value),
            _ => tracing::debug!(offset, "write of unknown virtio-mmio register"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.features_negotiable() {
            tracing::debug!(
                status = self.status,
                "driver features written in wrong state"
            );
            return;
        }
        let shift = match self.acked_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let offered = self.device.device_features();
        let mask = 0xffff_ffffu64 << shift;
        // Only offered features can be acked; anything else is dropped.
        self.acked_features =
            (self.acked_features & !mask) | ((u64::from(value) << shift) & offered & mask);
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queues_configurable() {
            tracing::debug!(
                status = self.status,
                offset,
                "queue register written in wrong state"
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset {
            0x38 => match u16::try_from(value) {
                Ok(size) if size.is_power_of_two() && size <= q.max_size() => q.set_size(size),
                _ => tracing::debug!(value, "rejected queue size"),
            },
            0x44 => q.set_ready(value == 1),
            0x80 => q.set_desc_table_address(Some(value), None),
            0x84 => q.set_desc_table_address(None, Some(value)),
            0x90 => q.set_avail_ring_address(Some(value), None),
            0x94 => q.set_avail_ring_address(None, Some(value)),
            0xa0 => q.set_used_ring_address(Some(value), None),
            0xa4 => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        // Without an ioeventfd the write arrives here; forward it to the same eventfd.
        match usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        {
            Some(evt) => {
                let _ = evt.write(1);
            }
            None => tracing::debug!(value, "notify of a queue that does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & status::FAILED != 0 {
            self.status |= status::FAILED;
            return;
        }
        if !ALLOWED_STATUS.contains(&(self.status, value)) {
            tracing::debug!(from = self.status, to = value, "rejected status change");
            return;
        }
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // The driver must accept VERSION_1: hull devices have no legacy interface.
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                tracing::debug!("driver did not accept VIRTIO_F_VERSION_1");
                return;
            }
        }
        if value & status::DRIVER_OK != 0 && !self.activate() {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        self.status = value;
    }

    /// The registers for a snapshot (see [`TransportState`]).
    pub fn state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegs {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                })
                .collect(),
        }
    }

    /// Put a fresh transport (same device type, backends from the new config) in the state
    /// of a snapshot, and activate the device if the driver had.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), MmioError> {
        let want = self.device.device_type();
        if state.device_type != want {
            return Err(MmioError::RestoreDeviceType {
                got: state.device_type,
                want,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(MmioError::RestoreQueueCount {
                got: state.queues.len(),
                want: self.queues.len(),
            });
        }
        // Only features the (new) device offers can stay acked.
        self.acked_features = state.acked_features & self.device.device_features();
        self.features_select = state.features_select;
        self.acked_features_select = state.acked_features_select;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        let driver_ok = state.status & status::DRIVER_OK != 0;
        for (i, (q, regs)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            restore_queue(q, regs, &self.mem, driver_ok).map_err(|e| match e {
                Some(source) => MmioError::RestoreUsedIdx(i, source),
                None => MmioError::RestoreQueue(i),
            })?;
        }
        self.interrupt.set_status(state.interrupt_status);
        if driver_ok && !self.activate() {
            return Err(MmioError::RestoreActivate);
        }
        self.status = state.status;
        Ok(())
    }

    /// Check every queue and hand them to the device. False if a queue is bad.
    fn activate(&mut self) -> bool {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                crate::warn_limited!(queue = i, "queue is not ready or lies outside guest memory");
                return false;
            }
        }
        // No fds are created here: this runs on a vCPU thread, under its seccomp filter. A
        // stop left over from an earlier reset is cleared by the device thread, once the
        // activation it was meant for has seen it.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let Ok(queues) = queues else {
            return false;
        };
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts: self.queue_evts.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
            stop_evt: self.stop_evt.clone(),
            generation: self.generation.load(std::sync::atomic::Ordering::SeqCst),
            current: self.generation.clone(),
            exit: self.exit.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.activated = true;
                true
            }
            Err(err) => {
                crate::error_limited!(error = %err, "device activation failed");
                false
            }
        }
    }

    fn reset(&mut self) {
        if std::mem::take(&mut self.activated) {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = self.stop_evt.write(1);
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// Set one queue's registers from a snapshot; when the device was live, continue at the used
/// index the guest memory holds. `Err(None)`: the registers are invalid.
fn restore_queue(
    q: &mut Queue,
    regs: &QueueRegs,
    mem: &GuestMemoryMmap,
    live: bool,
) -> Result<(), Option<virtio_queue::Error>> {
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    if !regs.size.is_power_of_two() || regs.size > q.max_size() {
        return Err(None);
    }
    q.set_size(regs.size);
    let (lo, hi) = split(regs.desc_table);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(regs.avail_ring);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(regs.used_ring);
    q.set_used_ring_address(lo, hi);
    q.set_ready(regs.ready);
    // The setters ignore misaligned addresses: what stuck must be what the snapshot says.
    if (q.desc_table(), q.avail_ring(), q.used_ring())
        != (regs.desc_table, regs.avail_ring, regs.used_ring)
    {
        return Err(None);
    }
    if live && regs.ready {
        if !q.is_valid(mem) {
            return Err(None);
        }
        let used = q
            .used_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(Some)?;
        q.set_next_avail(used.0);
        q.set_next_used(used.0);
    }
    Ok(())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(data) {
            Ok(buf) => *buf = self.read_register(offset).to_le_bytes(),
            Err(_) => tracing::debug!(offset, "non-4-byte read of a virtio-mmio register"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(buf) => self.write_register(offset, u32::from_le_bytes(buf)),
            Err(_) => tracing::debug!(offset, "non-4-byte write of a virtio-mmio register"),
        }
    }
}

#[cfg(test)]
mod tests;
