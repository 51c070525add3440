//! virtio-rng: fills device-writable buffers with bytes from the host's /dev/urandom.
//!
//! Each chain is validated whole before anything is written (Cloud Hypervisor `rng.rs`): every
//! descriptor must be device-writable, lie inside guest memory, and the chain must stay under
//! [`MAX_CHAIN_BYTES`]. A bad chain is returned used with length 0 and nothing written.

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use super::virtio::{
    ActivateError, Activation, ActivationSender, INT_VRING, QueueCheckError, VIRTIO_F_VERSION_1,
    VirtioDevice, VirtioInterrupt, check_avail_idx, device_type, expect_queues, serve_queues,
    spawn_device_thread,
};
use crate::memory::GuestMemoryMmap;

/// Largest request one chain may make (bytes); more is a malformed chain.
pub const MAX_CHAIN_BYTES: u64 = 64 << 10;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("Descriptor is not device-writable")]
    ReadOnlyDescriptor,
    #[error("Descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("Chain asks for more than {MAX_CHAIN_BYTES} bytes")]
    TooLong,
}

/// Errors from processing the queue (the guest broke the protocol or entropy failed).
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("Failed to access the queue")]
    Queue(#[source] virtio_queue::Error),
    #[error("Failed to read entropy")]
    ReadEntropy(#[source] GuestMemoryError),
    #[error("Failed to raise the interrupt")]
    Interrupt(#[source] std::io::Error),
    #[error("Driver broke the queue protocol")]
    BadQueue(#[from] QueueCheckError),
}

/// The queue-processing half, owned by the worker thread (and driven directly by tests).
#[derive(Debug)]
pub struct RngQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    pub entropy: File,
    /// Chains refused so far.
    pub rejected: u64,
}

impl RngQueue {
    /// Every (addr, len) of the chain, if the whole chain is acceptable.
    fn validate<I>(mem: &GuestMemoryMmap, descs: I) -> Result<Vec<(GuestAddress, u32)>, ChainError>
    where
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let mut total = 0u64;
        let mut out = Vec::new();
        for d in descs {
            if !d.is_write_only() {
                return Err(ChainError::ReadOnlyDescriptor);
            }
            let (addr, len) = (d.addr(), d.len());
            let ok = usize::try_from(len)
                .map(|l| mem.check_range(addr, l, Permissions::Write))
                .unwrap_or(false);
            if !ok {
                return Err(ChainError::OutsideMemory { addr: addr.0, len });
            }
            total += u64::from(len);
            if total > MAX_CHAIN_BYTES {
                return Err(ChainError::TooLong);
            }
            out.push((addr, len));
        }
        Ok(out)
    }

    /// Serve every available chain; raise the interrupt if the driver wants one.
    pub fn process(&mut self) -> Result<(), RngError> {
        let mut used_any = false;
        check_avail_idx(&self.queue, &self.mem)?;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = match Self::validate(&self.mem, chain) {
                Ok(bufs) => {
                    let mut n = 0u32;
                    for (addr, len) in bufs {
                        let l = usize::try_from(len).unwrap_or(0);
                        self.mem
                            .read_exact_volatile_from(addr, &mut self.entropy, l)
                            .map_err(RngError::ReadEntropy)?;
                        n += len;
                    }
                    n
                }
                Err(err) => {
                    self.rejected += 1;
                    crate::warn_limited!(error = %err, total = self.rejected, "virtio-rng: refused a descriptor chain");
                    0
                }
            };
            self.queue
                .add_used(&self.mem, head, written)
                .map_err(RngError::Queue)?;
            used_any = true;
        }
        if used_any
            && self
                .queue
                .needs_notification(&self.mem)
                .map_err(RngError::Queue)?
        {
            self.interrupt
                .trigger(INT_VRING)
                .map_err(RngError::Interrupt)?;
        }
        Ok(())
    }
}

/// The virtio-rng device: its thread owns /dev/urandom (opened at creation).
#[derive(Debug)]
pub struct Rng {
    worker: ActivationSender,
}

impl Rng {
    /// Open the entropy source and start the device thread.
    pub fn new() -> std::io::Result<Self> {
        let mut entropy = Some(File::open("/dev/urandom")?);
        let worker = spawn_device_thread("rng", move |mut a: Activation| {
            let queues = std::mem::take(&mut a.queues);
            let (Ok([queue]), Some(file)) = (<[Queue; 1]>::try_from(queues), entropy.take()) else {
                crate::error_limited!("virtio-rng: bad activation");
                return;
            };
            let mut q = RngQueue {
                mem: a.mem.clone(),
                queue,
                interrupt: a.interrupt.clone(),
                entropy: file,
                rejected: 0,
            };
            serve_queues("rng", &a, |_| q.process().map_err(|e| e.to_string()));
            entropy = Some(q.entropy);
        })?;
        Ok(Self { worker })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        expect_queues(&a, 1)?;
        self.worker.send(a)
    }
}

#[cfg(test)]
mod tests;
