//! virtio-fs as a vhost-user frontend: virtiofsd (the backend) processes the queues in its
//! own process, on guest memory it maps from our memfd; hull-vmm only negotiates, hands over
//! the rings and relays interrupts (Cloud Hypervisor `virtio-devices/src/vhost_user/fs.rs`).
//!
//! Queues: 0 = hiprio, 1 = the one request queue. Config space: the mount tag (36 bytes,
//! NUL-padded) and `num_request_queues` (le32).
//!
//! At creation (main thread, before seccomp): connect to virtiofsd, `SET_OWNER`, read its
//! features, negotiate protocol features (REPLY_ACK, MQ when offered). At each activation
//! (DRIVER_OK), on the device thread: `SET_FEATURES` with what the driver accepted,
//! `SET_MEM_TABLE` with every guest RAM region (memfd + offset), then per queue
//! `SET_VRING_NUM/ADDR/BASE/CALL/KICK` and `SET_VRING_ENABLE`. The kick fd is the queue's
//! ioeventfd, so guest notifications go from KVM straight to virtiofsd. The call fd is our
//! own eventfd: the thread turns each call into InterruptStatus |= VRING plus the irqfd,
//! because a virtio-mmio driver ignores an interrupt whose status bit is not set.

#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::path::Path;

use hull_vmm_api::config::MAX_FS_TAG_LEN;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::virtio::{
    ActivateError, Activation, ActivationSender, INT_VRING, VIRTIO_F_VERSION_1, VirtioDevice,
    device_type, expect_queues, read_config_bytes, spawn_device_thread,
};
use crate::exit::ExitReason;
use crate::memory::GuestMemoryMmap;

/// hiprio + one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// `struct virtio_fs_config`: `tag[36]`, num_request_queues (le32).
pub const CONFIG_LEN: usize = MAX_FS_TAG_LEN + 4;

/// The vhost-user feature bit that enables protocol features (and vring enable/disable).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Guest-visible features we pass through from the backend (split rings only: our
/// transport has no packed-ring support).
const PASSTHROUGH_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

const STOP_TOKEN: u64 = NUM_QUEUES as u64;
const EXIT_TOKEN: u64 = STOP_TOKEN + 1;
const SOCKET_TOKEN: u64 = STOP_TOKEN + 2;

/// Errors from connecting to the backend and from handing it the queues.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("Failed to connect to the vhost-user backend at {path}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {step} failed")]
    Request {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("The backend serves {0} queues, virtio-fs needs {NUM_QUEUES}")]
    QueueNum(u64),
    #[error("The backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    #[error("Guest memory region has no memfd behind it")]
    MemoryRegion(#[source] vhost::Error),
    #[error("Queue {0} ring address is outside guest memory")]
    RingAddress(usize),
    #[error("Failed to create an eventfd or the device thread")]
    Setup(#[source] std::io::Error),
}

fn req<T>(step: &'static str, r: vhost::Result<T>) -> Result<T, FsError> {
    r.map_err(|source| FsError::Request { step, source })
}

/// The config space for `tag`.
pub fn fs_config(tag: &str) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    let n = tag.len().min(MAX_FS_TAG_LEN);
    config[..n].copy_from_slice(&tag.as_bytes()[..n]);
    config[MAX_FS_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    config
}

/// The virtio-fs device.
#[derive(Debug)]
pub struct Fs {
    config: [u8; CONFIG_LEN],
    features: u64,
    worker: ActivationSender,
}

impl Fs {
    /// Connect to the backend listening on `socket` and start the device thread.
    pub fn new(socket: &Path, tag: &str) -> Result<Self, FsError> {
        let mut frontend =
            Frontend::connect(socket, NUM_QUEUES as u64).map_err(|source| FsError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        req("SET_OWNER", frontend.set_owner())?;
        let backend_features = req("GET_FEATURES", frontend.get_features())?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NoVersion1(backend_features));
        }
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
            let wanted = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ;
            let acked = offered & wanted;
            req(
                "SET_PROTOCOL_FEATURES",
                frontend.set_protocol_features(acked),
            )?;
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = req("GET_QUEUE_NUM", frontend.get_queue_num())?;
                if n < NUM_QUEUES as u64 {
                    return Err(FsError::QueueNum(n));
                }
            }
        }
        let calls: Vec<EventFd> = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(FsError::Setup)?;
        let protocol = backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        let mut backend = Backend {
            frontend,
            calls,
            protocol,
        };
        let worker = spawn_device_thread("fs", move |a: Activation| backend.serve(&a))
            .map_err(FsError::Setup)?;
        tracing::info!(socket = %socket.display(), tag, features = backend_features, "virtio-fs: connected to the backend");
        Ok(Self {
            config: fs_config(tag),
            features: backend_features & PASSTHROUGH_FEATURES,
            worker,
        })
    }
}

/// The device thread's side: the connection and the call eventfds.
struct Backend {
    frontend: Frontend,
    calls: Vec<EventFd>,
    /// `VHOST_USER_F_PROTOCOL_FEATURES` if the backend offered it (we always accept it).
    protocol: u64,
}

fn host_addr(mem: &GuestMemoryMmap, addr: u64, queue: usize) -> Result<u64, FsError> {
    mem.get_host_address(GuestAddress(addr))
        .map(|p| p as u64)
        .map_err(|_| FsError::RingAddress(queue))
}

impl Backend {
    /// Hand guest memory and the queues to the backend.
    fn setup(&mut self, a: &Activation) -> Result<(), FsError> {
        let fe = &mut self.frontend;
        req(
            "SET_FEATURES",
            fe.set_features(a.acked_features | self.protocol),
        )?;
        let regions: Vec<VhostUserMemoryRegionInfo> = a
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(FsError::MemoryRegion)?;
        req("SET_MEM_TABLE", fe.set_mem_table(&regions))?;
        for (i, q) in a.queues.iter().enumerate() {
            req("SET_VRING_NUM", fe.set_vring_num(i, q.size()))?;
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_addr(&a.mem, q.desc_table(), i)?,
                used_ring_addr: host_addr(&a.mem, q.used_ring(), i)?,
                avail_ring_addr: host_addr(&a.mem, q.avail_ring(), i)?,
                log_addr: None,
            };
            req("SET_VRING_ADDR", fe.set_vring_addr(i, &config))?;
            req("SET_VRING_BASE", fe.set_vring_base(i, q.next_avail()))?;
            let (Some(call), Some(kick)) = (self.calls.get(i), a.queue_evts.get(i)) else {
                return Err(FsError::QueueNum(i as u64));
            };
            req("SET_VRING_CALL", fe.set_vring_call(i, call))?;
            req("SET_VRING_KICK", fe.set_vring_kick(i, kick))?;
        }
        if self.protocol != 0 {
            for i in 0..a.queues.len() {
                req("SET_VRING_ENABLE", fe.set_vring_enable(i, true))?;
            }
        }
        Ok(())
    }

    /// Stop the backend's rings (after a device reset); it keeps the connection.
    fn stop_rings(&mut self, queues: usize) {
        for i in 0..queues {
            if let Err(err) = self.frontend.get_vring_base(i) {
                crate::warn_limited!(queue = i, error = %err, "virtio-fs: GET_VRING_BASE failed");
            }
        }
    }

    /// One activation: set up, then relay calls until reset, VM exit or backend hang-up.
    fn serve(&mut self, a: &Activation) {
        if let Err(err) = self.setup(a) {
            crate::error_limited!(error = %err, "virtio-fs: handing the queues to the backend failed");
            a.exit.stop(ExitReason::VmmError);
            return;
        }
        tracing::info!("virtio-fs: queues handed to the backend");
        let epoll = match self.relay_epoll(a) {
            Ok(e) => e,
            Err(err) => {
                crate::error_limited!(error = %err, "virtio-fs: epoll setup failed");
                a.exit.stop(ExitReason::VmmError);
                return;
            }
        };
        let mut events = [EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::error_limited!(error = %e, "virtio-fs: epoll failed");
                    a.exit.stop(ExitReason::VmmError);
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => {
                        self.stop_rings(a.queues.len());
                        return;
                    }
                    EXIT_TOKEN => return,
                    SOCKET_TOKEN => {
                        crate::error_limited!("virtio-fs: the vhost-user backend hung up");
                        a.exit.stop(ExitReason::VmmError);
                        return;
                    }
                    t => {
                        let call = usize::try_from(t).ok().and_then(|i| self.calls.get(i));
                        if let Some(call) = call {
                            let _ = call.read();
                        }
                        if let Err(e) = a.interrupt.trigger(INT_VRING) {
                            crate::warn_limited!(error = %e, "virtio-fs: raising the interrupt failed");
                        }
                    }
                }
            }
        }
    }

    fn relay_epoll(&self, a: &Activation) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let mut fds: Vec<(i32, u64)> = (0u64..)
            .zip(&self.calls)
            .map(|(t, c)| (c.as_raw_fd(), t))
            .collect();
        fds.push((a.stop_evt.as_raw_fd(), STOP_TOKEN));
        fds.push((a.exit.eventfd().as_raw_fd(), EXIT_TOKEN));
        fds.push((self.frontend.as_raw_fd(), SOCKET_TOKEN));
        for (fd, token) in fds {
            let ev = EpollEvent::new(EventSet::IN, token);
            epoll.ctl(ControlOperation::Add, fd, ev)?;
        }
        Ok(epoll)
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        expect_queues(&a, NUM_QUEUES)?;
        self.worker.send(a)
    }
}
