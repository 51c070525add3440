//! virtio-net on the pod's tap device: queue 0 = RX (tap → guest), queue 1 = TX.
//!
//! Features: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC when a MAC is configured, VIRTIO_NET_F_MTU
//! with the tap's MTU (a guest driver told an MTU above 1500 posts big multi-page RX buffers).
//! No checksum/segmentation offloads and no mergeable RX buffers: every frame fits one RX
//! chain behind a 12-byte header. One device thread owns the tap and both queues; it watches the
//! tap only while the guest has RX buffers (backpressure: a guest that stops refilling RX
//! leaves frames in the tap's queue, where the kernel drops them when it is full).
//!
//! A device may have no backend ([`Net::without_backend`], for VM templates booted before any
//! pod tap exists): the guest sees the same device, TX chains are validated and completed with
//! their frames counted in `tx_dropped`, and RX buffers stay posted, never used.

pub mod queues;
pub mod tap;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::virtio::{
    ActivateError, Activation, ActivationSender, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
    expect_queues, read_config_bytes, spawn_device_thread,
};
use crate::exit::ExitReason;
pub use queues::{NetCounters, NetError, NetQueues, NetStats};
pub use tap::{TapError, interface_mtu, open_tap};

/// The device reports its maximum MTU in the config space.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// The device has a MAC in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// MTUs we report: Linux's minimum, up to what fits [`queues::MAX_FRAME`] with an Ethernet
/// and a VLAN header.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=(queues::MAX_FRAME as u32 - 18);
/// `struct virtio_net_config` up to `mtu`: `mac[6]`, status, max_virtqueue_pairs, mtu (le16).
const CONFIG_LEN: usize = 12;
/// The MTU a device without a backend reports: what a pod tap has unless the CNI sets one.
pub const DEFAULT_MTU: u32 = 1500;
/// Queue size of RX and TX.
pub const QUEUE_SIZE: u16 = 256;

const RX: usize = 0;
const TX: usize = 1;
const TAP_TOKEN: u64 = 2;
const STOP_TOKEN: u64 = 3;
const EXIT_TOKEN: u64 = 4;

/// The virtio-net device. The tap, if any, is opened at creation (before seccomp).
#[derive(Debug)]
pub struct Net {
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    counters: Arc<NetCounters>,
    worker: ActivationSender,
}

impl Net {
    /// A NIC on tap `tap_name` in the current netns; the guest is told the tap's MTU.
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Self, TapError> {
        let tap = open_tap(tap_name)?;
        let mtu = interface_mtu(tap_name)?;
        tracing::info!(tap = tap_name, mtu, "virtio-net: attached to the tap");
        Self::with_tap(tap, mac, Some(mtu)).map_err(|source| TapError::Attach {
            name: tap_name.to_string(),
            source,
        })
    }

    /// A NIC on an already open frame fd (a tap, or a datagram socket in tests). An `mtu`
    /// outside [`MTU_RANGE`] is not reported.
    pub fn with_tap(tap: File, mac: Option<[u8; 6]>, mtu: Option<u32>) -> std::io::Result<Self> {
        Self::spawn(Some(tap), mac, mtu)
    }

    /// A NIC with no backend, reporting [`DEFAULT_MTU`]: the guest's frames are dropped and
    /// it never receives any. Only the device thread is created (no host fd besides its own).
    pub fn without_backend(mac: Option<[u8; 6]>) -> std::io::Result<Self> {
        tracing::info!("virtio-net: no backend, frames are dropped");
        Self::spawn(None, mac, Some(DEFAULT_MTU))
    }

    fn spawn(
        mut tap: Option<File>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> std::io::Result<Self> {
        let mtu = mtu
            .filter(|m| MTU_RANGE.contains(m))
            .and_then(|m| u16::try_from(m).ok());
        let counters = Arc::new(NetCounters::default());
        let thread_counters = counters.clone();
        let worker = spawn_device_thread("net", move |mut a: Activation| {
            let file = tap.take();
            let queues = std::mem::take(&mut a.queues);
            let Ok([rxq, txq]) = <[Queue; 2]>::try_from(queues) else {
                crate::error_limited!("virtio-net: bad activation");
                tap = file;
                return;
            };
            let mut q = NetQueues::new(
                a.mem.clone(),
                rxq,
                txq,
                a.interrupt.clone(),
                file,
                thread_counters.clone(),
            );
            if let Err(err) = run(&mut q, &a) {
                crate::error_limited!(error = %err, "virtio-net: device stopped");
                let reason = match err {
                    RunError::Net(NetError::BadQueue(_) | NetError::Queue(_)) => {
                        ExitReason::GuestCrash
                    }
                    _ => ExitReason::VmmError,
                };
                a.exit.stop(reason);
            }
            tracing::info!(stats = ?q.stats(), "virtio-net: activation ended");
            tap = q.tap;
        })?;
        Ok(Self {
            mac,
            mtu,
            counters,
            worker,
        })
    }

    /// The device's counters (frames, drops, refused chains), live.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

/// Why the device thread stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("Failed to set up or wait on the device epoll")]
    Epoll(#[source] std::io::Error),
}

fn add(epoll: &Epoll, fd: RawFd, token: u64) -> Result<(), RunError> {
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
        .map_err(RunError::Epoll)
}

/// Clear queue `index`'s notification eventfd.
fn drain(a: &Activation, index: usize) {
    if let Some(evt) = a.queue_evts.get(index) {
        let _ = evt.read();
    }
}

/// Serve one activation until reset or VM exit.
pub fn run(q: &mut NetQueues, a: &Activation) -> Result<(), RunError> {
    let epoll = Epoll::new().map_err(RunError::Epoll)?;
    for (token, evt) in (0u64..).zip(a.queue_evts.iter()) {
        add(&epoll, evt.as_raw_fd(), token)?;
    }
    add(&epoll, a.stop_evt.as_raw_fd(), STOP_TOKEN)?;
    add(&epoll, a.exit.eventfd().as_raw_fd(), EXIT_TOKEN)?;
    let tap_fd = q.tap.as_ref().map(AsRawFd::as_raw_fd);
    if let Some(fd) = tap_fd {
        add(&epoll, fd, TAP_TOKEN)?;
    }
    let mut tap_watched = true;
    let mut events = [EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RunError::Epoll(e)),
        };
        let mut tx_used = false;
        for ev in &events[..n] {
            match ev.data() {
                STOP_TOKEN | EXIT_TOKEN => return Ok(()),
                t if t == TX as u64 => {
                    drain(a, TX);
                    tx_used |= q.process_tx()?;
                }
                t if t == RX as u64 => drain(a, RX),
                _ => {} // the tap is readable: the RX pass below
            }
        }
        let rx = q.process_rx()?;
        q.notify(rx.used, tx_used)?;
        // Backpressure: watch the tap only while the guest has buffers for its frames.
        let Some(tap_fd) = tap_fd else { continue };
        if rx.starved == tap_watched {
            let op = if rx.starved {
                ControlOperation::Delete
            } else {
                ControlOperation::Add
            };
            epoll
                .ctl(op, tap_fd, EpollEvent::new(EventSet::IN, TAP_TOKEN))
                .map_err(RunError::Epoll)?;
            tap_watched = !rx.starved;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn device_features(&self) -> u64 {
        let mac = if self.mac.is_some() {
            VIRTIO_NET_F_MAC
        } else {
            0
        };
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | mac | mtu
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Fields of features we do not offer (status, max_virtqueue_pairs) read as zero.
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        config[10..].copy_from_slice(&self.mtu.unwrap_or_default().to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        expect_queues(&a, 2)?;
        self.worker.send(a)
    }
}

#[cfg(test)]
pub(crate) mod tests;
