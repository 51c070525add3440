//! The virtio-net queue work: RX (tap → guest) and TX (guest → tap), each chain validated
//! whole before any byte moves (Firecracker `net/device.rs`, Cloud Hypervisor `net_util`).
//!
//! A chain is refused when a descriptor has the wrong direction (RX buffers must be
//! device-writable, TX buffers device-readable), lies outside guest memory, the chain is
//! truncated (a loop or a `next` out of the table: its last descriptor still says NEXT), or
//! its size is out of range. A refused chain is returned used with length 0, nothing read
//! or written.
//!
//! Without a tap (`tap: None`) TX chains are validated as above and the valid ones counted in
//! `tx_dropped`; the RX queue is not looked at (its buffers stay posted).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use hull_vmm_api::control::NetStats;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::super::virtio::{INT_VRING, QueueCheckError, VirtioInterrupt, check_avail_idx};
use crate::memory::GuestMemoryMmap;

/// `struct virtio_net_hdr_mrg_rxbuf`: the header before every frame with VIRTIO_F_VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// Shortest frame we pass on (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Longest frame: no TSO/UFO is offered, so frames are at most MTU-sized; 64 KiB covers any
/// MTU a tap may have.
pub const MAX_FRAME: usize = 65535;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("Chain has no descriptors")]
    Empty,
    #[error("Descriptor has the wrong direction for this queue")]
    WrongDirection,
    #[error("Descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("Chain is truncated (loop, or next index outside the table)")]
    Truncated,
    #[error("Chain holds {0} bytes, outside the allowed range")]
    Size(usize),
}

/// Errors that stop the device: the guest broke the queue protocol, or the tap failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Failed to access a queue")]
    Queue(#[source] virtio_queue::Error),
    #[error("Driver broke the queue protocol")]
    BadQueue(#[from] QueueCheckError),
    #[error("Failed to copy a frame to or from guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("Failed to read from the tap")]
    ReadTap(#[source] std::io::Error),
    #[error("Failed to raise the interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// The live counters, shared between the device thread and the control API.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
    rejected: AtomicU64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            tx_frames: get(&self.tx_frames),
            rx_dropped: get(&self.rx_dropped),
            tx_dropped: get(&self.tx_dropped),
            rejected: get(&self.rejected),
        }
    }
}

/// Add one; returns the new value.
fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Which way data moves through a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device writes (RX).
    ToGuest,
    /// Device reads (TX).
    FromGuest,
}

/// Every (addr, len) of a chain, if the whole chain is acceptable, and its total size.
pub fn validate_chain<I>(
    mem: &GuestMemoryMmap,
    descs: I,
    dir: Direction,
    max_bytes: usize,
) -> Result<(Vec<(GuestAddress, usize)>, usize), ChainError>
where
    I: Iterator<Item = Descriptor>,
{
    let (perm, writable) = match dir {
        Direction::ToGuest => (Permissions::Write, true),
        Direction::FromGuest => (Permissions::Read, false),
    };
    let mut bufs = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    for d in descs {
        if d.is_write_only() != writable {
            return Err(ChainError::WrongDirection);
        }
        let (addr, len) = (d.addr(), d.len());
        let l = usize::try_from(len).map_err(|_| ChainError::Size(usize::MAX))?;
        if !mem.check_range(addr, l, perm) {
            return Err(ChainError::OutsideMemory { addr: addr.0, len });
        }
        total = total.saturating_add(l);
        if total > max_bytes {
            return Err(ChainError::Size(total));
        }
        last_has_next = d.has_next();
        bufs.push((addr, l));
    }
    if bufs.is_empty() {
        return Err(ChainError::Empty);
    }
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    Ok((bufs, total))
}

/// The queue side of virtio-net, owned by the device thread (and driven directly by tests).
/// `tap` is the tap fd (non-blocking), or in unit tests one end of a datagram socket pair;
/// `None` for a device without a backend.
#[derive(Debug)]
pub struct NetQueues {
    pub mem: GuestMemoryMmap,
    pub rxq: Queue,
    pub txq: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    pub tap: Option<File>,
    pub counters: Arc<NetCounters>,
    /// Bounce buffer: header + one frame.
    buf: Vec<u8>,
}

/// What an RX pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxPass {
    /// Chains were returned to the guest.
    pub used: bool,
    /// The guest has no RX buffers left: stop watching the tap until it adds some.
    pub starved: bool,
}

impl NetQueues {
    pub fn new(
        mem: GuestMemoryMmap,
        rxq: Queue,
        txq: Queue,
        interrupt: Arc<VirtioInterrupt>,
        tap: Option<File>,
        counters: Arc<NetCounters>,
    ) -> Self {
        Self {
            mem,
            rxq,
            txq,
            interrupt,
            tap,
            counters,
            buf: vec![0u8; NET_HDR_LEN + MAX_FRAME],
        }
    }

    /// The counters now.
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    fn reject(&mut self, queue: &str, err: &ChainError) {
        let total = bump(&self.counters.rejected);
        crate::warn_limited!(queue, error = %err, total, "virtio-net: refused a descriptor chain");
    }

    /// Move frames from the tap into the guest's RX buffers until the tap is empty or the
    /// guest has no buffers left. Without a tap, nothing to do: the RX ring is not read.
    pub fn process_rx(&mut self) -> Result<RxPass, NetError> {
        if self.tap.is_none() {
            return Ok(RxPass::default());
        }
        check_avail_idx(&self.rxq, &self.mem)?;
        let mut pass = RxPass::default();
        loop {
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                pass.starved = true;
                break;
            };
            let head = chain.head_index();
            let max = NET_HDR_LEN + MAX_FRAME;
            let bufs = match validate_chain(&self.mem, chain, Direction::ToGuest, usize::MAX) {
                Ok((_, total)) if total < NET_HDR_LEN + MIN_FRAME => Err(ChainError::Size(total)),
                other => other,
            };
            let (bufs, capacity) = match bufs {
                Ok(b) => b,
                Err(err) => {
                    self.reject("rx", &err);
                    self.add_used_rx(head, 0)?;
                    pass.used = true;
                    continue;
                }
            };
            let n = match self.read_tap(max) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    self.rxq.go_to_previous_position();
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.rxq.go_to_previous_position();
                    break;
                }
                Err(e) => {
                    self.rxq.go_to_previous_position();
                    return Err(NetError::ReadTap(e));
                }
            };
            let len = NET_HDR_LEN + n;
            if n < MIN_FRAME || len > capacity {
                // Too big for this guest buffer (or a runt): drop it, keep the buffer.
                bump(&self.counters.rx_dropped);
                self.rxq.go_to_previous_position();
                continue;
            }
            // virtio_net_hdr: no flags, no GSO; num_buffers (last 2 bytes) = 1.
            self.buf[..NET_HDR_LEN].fill(0);
            self.buf[NET_HDR_LEN - 2] = 1;
            self.scatter(&bufs, len)?;
            bump(&self.counters.rx_frames);
            self.add_used_rx(head, len)?;
            pass.used = true;
        }
        Ok(pass)
    }

    /// One frame from the tap into `self.buf[NET_HDR_LEN..max]`.
    fn read_tap(&mut self, max: usize) -> std::io::Result<usize> {
        match &self.tap {
            Some(tap) => (&*tap).read(&mut self.buf[NET_HDR_LEN..max]),
            None => Err(ErrorKind::WouldBlock.into()),
        }
    }

    fn add_used_rx(&mut self, head: u16, len: usize) -> Result<(), NetError> {
        let len = u32::try_from(len).unwrap_or(0);
        self.rxq
            .add_used(&self.mem, head, len)
            .map_err(NetError::Queue)
    }

    /// Copy `self.buf[..len]` into the (validated) guest buffers.
    fn scatter(&self, bufs: &[(GuestAddress, usize)], len: usize) -> Result<(), NetError> {
        let mut done = 0;
        for &(addr, l) in bufs {
            if done == len {
                break;
            }
            let n = l.min(len - done);
            self.mem
                .write_slice(&self.buf[done..done + n], addr)
                .map_err(NetError::GuestMemory)?;
            done += n;
        }
        Ok(())
    }

    /// Send every TX chain's frame to the tap. Returns whether chains were used.
    pub fn process_tx(&mut self) -> Result<bool, NetError> {
        check_avail_idx(&self.txq, &self.mem)?;
        let mut used = false;
        while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let max = NET_HDR_LEN + MAX_FRAME;
            match validate_chain(&self.mem, chain, Direction::FromGuest, max) {
                Ok((_, total)) if total < NET_HDR_LEN + MIN_FRAME => {
                    self.reject("tx", &ChainError::Size(total))
                }
                Ok((bufs, total)) => self.send_frame(&bufs, total)?,
                Err(err) => self.reject("tx", &err),
            }
            self.txq
                .add_used(&self.mem, head, 0)
                .map_err(NetError::Queue)?;
            used = true;
        }
        Ok(used)
    }

    /// Gather a validated chain and write the frame (without the virtio header) to the tap;
    /// without a tap, count it dropped.
    fn send_frame(&mut self, bufs: &[(GuestAddress, usize)], total: usize) -> Result<(), NetError> {
        let Some(tap) = &self.tap else {
            bump(&self.counters.tx_dropped);
            return Ok(());
        };
        let mut done = 0;
        for &(addr, l) in bufs {
            self.mem
                .read_slice(&mut self.buf[done..done + l], addr)
                .map_err(NetError::GuestMemory)?;
            done += l;
        }
        match (&*tap).write(&self.buf[NET_HDR_LEN..total]) {
            Ok(_) => {
                bump(&self.counters.tx_frames);
            }
            Err(e) => {
                let total = bump(&self.counters.tx_dropped);
                crate::warn_limited!(error = %e, total, "virtio-net: the tap refused a frame");
            }
        }
        Ok(())
    }

    /// Raise the interrupt if a queue that was used wants it.
    pub fn notify(&mut self, rx: bool, tx: bool) -> Result<(), NetError> {
        let mut fire = false;
        if rx {
            fire |= self
                .rxq
                .needs_notification(&self.mem)
                .map_err(NetError::Queue)?;
        }
        if tx {
            fire |= self
                .txq
                .needs_notification(&self.mem)
                .map_err(NetError::Queue)?;
        }
        if fire {
            self.interrupt
                .trigger(INT_VRING)
                .map_err(NetError::Interrupt)?;
        }
        Ok(())
    }
}
