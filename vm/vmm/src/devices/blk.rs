//! virtio-blk on a host file (raw image), one request queue.
//!
//! Every request is parsed into a validated [`Request`] before any I/O (Firecracker
//! `block/virtio/request.rs::Request::parse`): header readable and 16 bytes, data descriptors
//! in the direction the type needs, whole 512-byte sectors, `sector + length` checked against
//! the capacity with `checked_*`, a writable status byte last, and at most
//! [`MAX_REQUEST_BYTES`] of data. Buffers must lie inside guest memory. A request that fails
//! parsing gets `VIRTIO_BLK_S_IOERR` (or `UNSUPP`) without any I/O, if it has a status byte.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use super::virtio::{
    ActivateError, Activation, ActivationSender, INT_VRING, QueueCheckError, VIRTIO_F_VERSION_1,
    VirtioDevice, VirtioInterrupt, check_avail_idx, device_type, expect_queues, read_config_bytes,
    serve_queues, spawn_device_thread,
};
use crate::memory::GuestMemoryMmap;

/// Sector size.
pub const SECTOR: u64 = 512;
/// Most data one request may move.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device supports FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Length of the GET_ID answer.
const ID_BYTES: usize = 20;

/// Why a request was refused (one test per variant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Chain has no status descriptor")]
    NoStatus,
    #[error("Status descriptor is not device-writable")]
    StatusReadOnly,
    #[error("Header descriptor is missing, writable or shorter than 16 bytes")]
    BadHeader,
    #[error("A buffer lies outside guest memory")]
    OutsideMemory,
    #[error("Data descriptor has the wrong direction for this request")]
    WrongDirection,
    #[error("Data length {0} is not whole sectors")]
    PartialSector(u64),
    #[error("Request of {0} bytes is over the limit")]
    TooBig(u64),
    #[error("Sector {sector} + {len} bytes runs past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("Write to a read-only disk")]
    ReadOnly,
    #[error("Unsupported request type {0}")]
    Unsupported(u32),
}

/// What a validated request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub sector: u64,
    /// (guest address, length) of each data buffer, in order.
    pub data: Vec<(GuestAddress, u32)>,
    pub status: GuestAddress,
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor, perm: Permissions) -> bool {
    usize::try_from(d.len())
        .map(|l| mem.check_range(d.addr(), l, perm))
        .unwrap_or(false)
}

impl Request {
    /// Validate a chain (its descriptors in order). `Err` carries the status address when the
    /// chain has a usable status byte, so the driver can be told.
    pub fn parse(
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
        capacity_sectors: u64,
        read_only: bool,
    ) -> Result<Self, (ParseError, Option<GuestAddress>)> {
        let (status, rest) = descs.split_last().ok_or((ParseError::NoStatus, None))?;
        if !status.is_write_only() || status.len() < 1 {
            return Err((ParseError::StatusReadOnly, None));
        }
        if !in_memory(mem, status, Permissions::Write) {
            return Err((ParseError::OutsideMemory, None));
        }
        let st = Some(status.addr());
        let fail = |e| Err((e, st));
        let Some((header, data)) = rest.split_first() else {
            return fail(ParseError::BadHeader);
        };
        if header.is_write_only() || header.len() < 16 {
            return fail(ParseError::BadHeader);
        }
        if !in_memory(mem, header, Permissions::Read) {
            return fail(ParseError::OutsideMemory);
        }
        let ty: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| (ParseError::BadHeader, st))?;
        let sector_addr = header
            .addr()
            .checked_add(8)
            .ok_or((ParseError::BadHeader, st))?;
        let sector: u64 = mem
            .read_obj(sector_addr)
            .map_err(|_| (ParseError::BadHeader, st))?;
        let kind = match ty {
            T_IN => Kind::Read,
            T_OUT => Kind::Write,
            T_FLUSH => Kind::Flush,
            T_GET_ID => Kind::GetId,
            other => return fail(ParseError::Unsupported(other)),
        };
        if kind == Kind::Write && read_only {
            return fail(ParseError::ReadOnly);
        }
        let device_writes = matches!(kind, Kind::Read | Kind::GetId);
        let perm = if device_writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() != device_writes {
                return fail(ParseError::WrongDirection);
            }
            if !in_memory(mem, d, perm) {
                return fail(ParseError::OutsideMemory);
            }
            total += u64::from(d.len());
            if total > MAX_REQUEST_BYTES {
                return fail(ParseError::TooBig(total));
            }
        }
        if matches!(kind, Kind::Read | Kind::Write) {
            if !total.is_multiple_of(SECTOR) {
                return fail(ParseError::PartialSector(total));
            }
            let end = sector
                .checked_mul(SECTOR)
                .and_then(|start| start.checked_add(total));
            if end.is_none_or(|e| e > capacity_sectors * SECTOR) {
                return fail(ParseError::OutOfRange { sector, len: total });
            }
        }
        Ok(Request {
            kind,
            sector,
            data: data.iter().map(|d| (d.addr(), d.len())).collect(),
            status: status.addr(),
        })
    }
}

/// Errors from the queue (the guest broke the protocol).
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("Failed to access the queue")]
    Queue(#[source] virtio_queue::Error),
    #[error("Driver broke the queue protocol")]
    BadQueue(#[from] QueueCheckError),
    #[error("Failed to write a status byte")]
    Status(#[source] GuestMemoryError),
    #[error("Failed to raise the interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// The queue side, owned by the device thread (driven directly by tests).
#[derive(Debug)]
pub struct BlkQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    pub disk: Arc<File>,
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
    pub rejected: u64,
}

impl BlkQueue {
    /// Do the I/O of a validated request; returns (status, bytes written to the guest).
    fn execute(&self, req: &Request) -> (u8, u32) {
        let mut offset = req.sector * SECTOR;
        let mut written = 0u32;
        for (addr, len) in &req.data {
            let mut buf = vec![0u8; *len as usize];
            let ok = match req.kind {
                Kind::Read => {
                    self.disk.read_exact_at(&mut buf, offset).is_ok()
                        && self.mem.write_slice(&buf, *addr).is_ok()
                }
                Kind::Write => {
                    self.mem.read_slice(&mut buf, *addr).is_ok()
                        && self.disk.write_all_at(&buf, offset).is_ok()
                }
                Kind::GetId => {
                    let n = buf.len().min(ID_BYTES);
                    self.mem.write_slice(&self.id[..n], *addr).is_ok()
                }
                Kind::Flush => true,
            };
            if !ok {
                return (S_IOERR, written);
            }
            offset += u64::from(*len);
            if matches!(req.kind, Kind::Read | Kind::GetId) {
                written += len;
            }
        }
        if req.kind == Kind::Flush && self.disk.sync_data().is_err() {
            return (S_IOERR, 0);
        }
        (S_OK, written)
    }

    /// Serve every available request.
    pub fn process(&mut self) -> Result<(), BlkError> {
        check_avail_idx(&self.queue, &self.mem)?;
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let (status, len, at) = match Request::parse(
                &descs,
                &self.mem,
                self.capacity_sectors,
                self.read_only,
            ) {
                Ok(req) => {
                    let (s, n) = self.execute(&req);
                    (s, n, Some(req.status))
                }
                Err((err, at)) => {
                    self.rejected += 1;
                    crate::warn_limited!(error = %err, total = self.rejected, "virtio-blk: refused a request");
                    let s = if matches!(err, ParseError::Unsupported(_)) {
                        S_UNSUPP
                    } else {
                        S_IOERR
                    };
                    (s, 0, at)
                }
            };
            let used_len = match at {
                Some(addr) => {
                    self.mem.write_obj(status, addr).map_err(BlkError::Status)?;
                    len + 1
                }
                None => 0,
            };
            self.queue
                .add_used(&self.mem, head, used_len)
                .map_err(BlkError::Queue)?;
            used = true;
        }
        if used
            && self
                .queue
                .needs_notification(&self.mem)
                .map_err(BlkError::Queue)?
        {
            self.interrupt
                .trigger(INT_VRING)
                .map_err(BlkError::Interrupt)?;
        }
        Ok(())
    }
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Blk {
    capacity_sectors: u64,
    read_only: bool,
    worker: ActivationSender,
}

impl Blk {
    /// Open `path` (read-only if asked) and start the device thread.
    pub fn new(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let disk = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(path)?,
        );
        let capacity_sectors = disk.metadata()?.len() / SECTOR;
        let mut id = [0u8; ID_BYTES];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, s) in id.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        let worker = spawn_device_thread("blk", move |mut a: Activation| {
            let Ok([queue]) = <[Queue; 1]>::try_from(std::mem::take(&mut a.queues)) else {
                return;
            };
            let mut q = BlkQueue {
                mem: a.mem.clone(),
                queue,
                interrupt: a.interrupt.clone(),
                disk: disk.clone(),
                capacity_sectors,
                read_only,
                id,
                rejected: 0,
            };
            serve_queues("blk", &a, |_| q.process().map_err(|e| e.to_string()));
        })?;
        Ok(Self {
            capacity_sectors,
            read_only,
            worker,
        })
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.capacity_sectors.to_le_bytes();
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        expect_queues(&a, 1)?;
        self.worker.send(a)
    }
}

#[cfg(test)]
mod tests;
