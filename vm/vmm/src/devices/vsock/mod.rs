//! virtio-vsock in user space, hybrid style: the host side of every guest stream is a unix
//! socket (see [`muxer`]), so hulld reaches the agent the same way with either backend.
//!
//! Queues: 0 = RX (host → guest), 1 = TX (guest → host), 2 = event (unused: we never reset
//! the transport). One worker thread owns the queues, the listener and every connection.

pub mod conn;
pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::virtio::{
    ActivateError, Activation, ActivationSender, INT_VRING, QueueCheckError, VIRTIO_F_VERSION_1,
    VirtioDevice, VirtioInterrupt, check_avail_idx, device_type, expect_queues, read_config_bytes,
    spawn_device_thread_as,
};
use crate::exit::ExitReason;
use crate::memory::GuestMemoryMmap;
use muxer::{FD_TOKEN_BASE, Muxer};
use packet::{HDR_SIZE, Header, MAX_PKT_PAYLOAD};

/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
const STOP_TOKEN: u64 = 3;
const EXIT_TOKEN: u64 = 4;
const LISTENER_TOKEN: u64 = 5;

/// Errors from the vsock queues: the guest broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("Failed to access a queue")]
    Queue(#[source] virtio_queue::Error),
    #[error("Driver broke the queue protocol")]
    BadQueue(#[from] QueueCheckError),
    #[error("Failed to raise the interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// The queue side, owned by the worker (and driven directly by tests).
#[derive(Debug)]
pub struct VsockWorker {
    pub mem: GuestMemoryMmap,
    pub rxq: Queue,
    pub txq: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The queues' notification eventfds (RX, TX, event), level-triggered in the epoll: each
    /// is drained when it fires, or the worker would spin.
    pub queue_evts: Arc<[EventFd]>,
    pub muxer: Muxer,
    /// TX packets dropped as malformed.
    pub rejected: u64,
}

impl VsockWorker {
    /// Consume every TX chain (guest → host packets).
    pub fn process_tx(&mut self) -> Result<bool, VsockError> {
        check_avail_idx(&self.txq, &self.mem)?;
        let mut used = false;
        while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            match chain.reader(&self.mem) {
                Ok(mut reader) => {
                    let mut hdr = [0u8; HDR_SIZE];
                    let parsed = reader
                        .read_exact(&mut hdr)
                        .ok()
                        .map(|()| Header::parse(&hdr, reader.available_bytes()));
                    match parsed {
                        Some(Ok(h)) => {
                            let mut payload = vec![0u8; h.len as usize];
                            if reader.read_exact(&mut payload).is_ok() {
                                self.muxer.handle_guest_packet(h, &payload);
                            }
                        }
                        Some(Err(err)) => self.reject(&err.to_string()),
                        None => self.reject("chain shorter than a header"),
                    }
                }
                Err(err) => self.reject(&err.to_string()),
            }
            self.txq
                .add_used(&self.mem, head, 0)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        Ok(used)
    }

    fn reject(&mut self, why: &str) {
        self.rejected += 1;
        crate::warn_limited!(
            why,
            total = self.rejected,
            "vsock: dropped a malformed TX packet"
        );
    }

    /// Fill RX chains with control packets, then host data the guest has credit for.
    pub fn process_rx(&mut self) -> Result<bool, VsockError> {
        check_avail_idx(&self.rxq, &self.mem)?;
        let mut used = false;
        loop {
            let ctrl = self.muxer.pop_control();
            let readable = if ctrl.is_none() {
                self.muxer.next_readable()
            } else {
                None
            };
            if ctrl.is_none() && readable.is_none() {
                break;
            }
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                if let Some(hdr) = ctrl {
                    self.muxer.unpop_control(hdr);
                }
                break;
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(&self.mem) {
                Ok(w) if w.available_bytes() > HDR_SIZE => w,
                _ => {
                    // Unusable buffer: hand it back empty, keep the packet.
                    if let Some(hdr) = ctrl {
                        self.muxer.unpop_control(hdr);
                    }
                    self.rxq
                        .add_used(&self.mem, head, 0)
                        .map_err(VsockError::Queue)?;
                    used = true;
                    continue;
                }
            };
            let packet = match (ctrl, readable) {
                (Some(hdr), _) => Some((hdr, Vec::new())),
                (None, Some(key)) => {
                    let room = (writer.available_bytes() - HDR_SIZE).min(MAX_PKT_PAYLOAD as usize);
                    self.muxer.read_host(key, room)
                }
                (None, None) => None,
            };
            let Some((hdr, data)) = packet else {
                self.rxq.go_to_previous_position();
                continue;
            };
            let ok = writer.write_all(&hdr.to_bytes()).is_ok() && writer.write_all(&data).is_ok();
            let len = if ok {
                (HDR_SIZE + data.len()) as u32
            } else {
                0
            };
            self.rxq
                .add_used(&self.mem, head, len)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        Ok(used)
    }

    /// Raise the interrupt if either queue wants it.
    pub fn notify(&mut self, rx: bool, tx: bool) -> Result<(), VsockError> {
        let mut fire = false;
        if rx {
            fire |= self
                .rxq
                .needs_notification(&self.mem)
                .map_err(VsockError::Queue)?;
        }
        if tx {
            fire |= self
                .txq
                .needs_notification(&self.mem)
                .map_err(VsockError::Queue)?;
        }
        if fire {
            self.interrupt
                .trigger(INT_VRING)
                .map_err(VsockError::Interrupt)?;
        }
        Ok(())
    }

    /// Handle one epoll event. Returns false when the worker must stop.
    pub fn handle_event(&mut self, token: u64, events: EventSet) -> Result<bool, VsockError> {
        let mut tx_used = false;
        match token {
            t if t >= FD_TOKEN_BASE => {
                let fd = RawFd::try_from(t - FD_TOKEN_BASE).unwrap_or(-1);
                self.muxer.socket_event(fd, events);
            }
            LISTENER_TOKEN => self.muxer.accept(),
            STOP_TOKEN | EXIT_TOKEN => return Ok(false),
            t => {
                // A queue kick: clear it first, so a kick that comes while we work is seen.
                if let Some(evt) = usize::try_from(t).ok().and_then(|i| self.queue_evts.get(i)) {
                    let _ = evt.read();
                }
                // RX buffers arrived / event queue: nothing but the RX pass below.
                if t == TX as u64 {
                    tx_used = self.process_tx()?;
                }
            }
        }
        let rx_used = self.process_rx()?;
        self.notify(rx_used, tx_used)?;
        Ok(true)
    }

    /// Wait up to `timeout_ms` for events and handle them. Returns false when told to stop.
    pub fn poll_once(&mut self, timeout_ms: i32) -> Result<bool, VsockError> {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.muxer.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(VsockError::Interrupt(e)),
        };
        for ev in &events[..n] {
            if !self.handle_event(ev.data(), ev.event_set())? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The virtio-vsock device. The host socket is bound at creation, so hulld can connect (and
/// wait for the guest) as soon as the process runs.
#[derive(Debug)]
pub struct Vsock {
    config: [u8; 8],
    worker: ActivationSender,
}

impl Vsock {
    /// A device with the guest's CID, bridged to `uds_path`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> std::io::Result<Self> {
        let mut listener = Some(muxer::bind_listener(&uds_path)?);
        let kind = crate::seccomp::ThreadKind::VsockDevice;
        let worker = spawn_device_thread_as("vsock", kind, move |mut a: Activation| {
            let Some(l) = listener.take() else {
                return;
            };
            let mut worker = match make_worker(guest_cid, uds_path.clone(), l, &mut a) {
                Ok(w) => w,
                Err((err, l)) => {
                    crate::error_limited!(error = %err, "vsock: activation failed");
                    listener = l;
                    return;
                }
            };
            loop {
                match worker.poll_once(-1) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(err) => {
                        crate::error_limited!(error = %err, "vsock: guest broke the protocol");
                        a.exit.stop(ExitReason::GuestCrash);
                        break;
                    }
                }
            }
            listener = Some(worker.muxer.listener);
        })?;
        Ok(Self {
            config: guest_cid.to_le_bytes(),
            worker,
        })
    }
}

fn register(epoll: &Epoll, fd: RawFd, token: u64) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

/// Build the worker for an activation (taking its queues): epoll over the queue eventfds,
/// the stop eventfd, the VM's exit eventfd and the listener. On failure the listener is
/// handed back for the next activation.
pub fn make_worker(
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    a: &mut Activation,
) -> Result<VsockWorker, (ActivateError, Option<UnixListener>)> {
    let fail = |e: std::io::Error, l| (ActivateError::Worker(e), l);
    let queues = std::mem::take(&mut a.queues);
    let got = queues.len();
    let Ok([rxq, txq, _evq]) = <[Queue; 3]>::try_from(queues) else {
        return Err((ActivateError::QueueCount { got, want: 3 }, Some(listener)));
    };
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return Err(fail(e, Some(listener))),
    };
    let mut fds: Vec<(RawFd, u64)> = [RX, TX, EVQ]
        .into_iter()
        .zip(a.queue_evts.iter())
        .map(|(t, e)| (e.as_raw_fd(), t as u64))
        .collect();
    fds.push((a.stop_evt.as_raw_fd(), STOP_TOKEN));
    fds.push((a.exit.eventfd().as_raw_fd(), EXIT_TOKEN));
    fds.push((listener.as_raw_fd(), LISTENER_TOKEN));
    for (fd, token) in fds {
        if let Err(e) = register(&epoll, fd, token) {
            return Err(fail(e, Some(listener)));
        }
    }
    let muxer = Muxer::new(guest_cid, uds_path, listener, epoll);
    Ok(VsockWorker {
        mem: a.mem.clone(),
        rxq,
        txq,
        interrupt: a.interrupt.clone(),
        queue_evts: a.queue_evts.clone(),
        muxer,
        rejected: 0,
    })
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        expect_queues(&a, 3)?;
        self.worker.send(a)
    }
}

#[cfg(test)]
mod tests;
