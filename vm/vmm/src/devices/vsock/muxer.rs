//! The host side of hybrid vsock: maps guest stream connections onto unix sockets
//! (Firecracker `vsock/unix/muxer.rs`).
//!
//! - Host → guest: a host process connects to `uds_path` and writes `CONNECT <port>\n`; we
//!   send the guest a REQUEST from a fresh host port, and on its RESPONSE answer
//!   `OK <host port>\n` on the unix socket, which then carries the stream.
//! - Guest → host: a guest REQUEST to port P connects to `<uds_path>_P`.
//!
//! Everything is bounded: connections ([`MAX_CONNECTIONS`]), half-open handshakes
//! ([`MAX_HANDSHAKES`]), the handshake line (32 bytes), queued control packets
//! ([`MAX_CONTROL_PACKETS`]) and per-connection buffered data (`CONN_BUF_SIZE`).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, ForwardError, State};
use super::packet::{HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Most live connections per VM.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host sockets that connected but have not sent their `CONNECT` line yet.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>\n` line.
pub const MAX_HANDSHAKE_LINE: usize = 32;
/// Most control packets waiting for guest RX buffers.
pub const MAX_CONTROL_PACKETS: usize = 4096;
/// Epoll tokens at or above this are socket fds (`token - FD_TOKEN_BASE`).
pub const FD_TOKEN_BASE: u64 = 1 << 32;
/// First host port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (host port, guest port).
pub type ConnKey = (u32, u32);

/// A host socket waiting to say which guest port it wants.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// All connections of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    pub guest_cid: u64,
    uds_path: PathBuf,
    pub listener: UnixListener,
    conns: HashMap<ConnKey, Conn>,
    fd_conn: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    control: VecDeque<Header>,
    next_local_port: u32,
    pub epoll: Epoll,
}

fn fd_token(fd: RawFd) -> u64 {
    FD_TOKEN_BASE + u64::try_from(fd).unwrap_or(0)
}

/// Bind the host socket at `uds_path` (replacing a stale socket file), non-blocking.
pub fn bind_listener(uds_path: &std::path::Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(uds_path);
    let listener = UnixListener::bind(uds_path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Parse `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text
        .strip_prefix("CONNECT ")?
        .trim_end_matches(['\n', '\r']);
    port.parse().ok()
}

impl Muxer {
    /// Serve host-initiated connections from `listener` (bound with [`bind_listener`]).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener, epoll: Epoll) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            fd_conn: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            epoll,
        }
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn watch(&self, fd: RawFd) -> std::io::Result<()> {
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(set, fd_token(fd)),
        )
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            crate::warn_limited!("vsock: control queue full, dropping a packet");
            return;
        }
        self.control.push_back(hdr);
    }

    /// Next control packet for the guest, if any.
    pub fn pop_control(&mut self) -> Option<Header> {
        self.control.pop_front()
    }

    /// Put back a control packet the guest had no buffer for.
    pub fn unpop_control(&mut self, hdr: Header) {
        self.control.push_front(hdr);
    }

    fn rst_for(&mut self, hdr: &Header) {
        let rst = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            op: Op::Rst,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        };
        self.push_control(rst);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.fd_conn.remove(&fd);
        }
    }

    fn reset(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let rst = conn.header(self.guest_cid, Op::Rst, 0, 0);
            self.push_control(rst);
        }
        self.remove(key);
    }

    /// A packet the guest sent (already parsed and bounded).
    pub fn handle_guest_packet(&mut self, hdr: Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "vsock: packet with wrong CIDs"
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == Op::Request {
            self.guest_connect(hdr);
            return;
        }
        let guest_cid = self.guest_cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != Op::Rst {
                self.rst_for(&hdr);
            }
            return;
        };
        conn.update_peer_credit(&hdr);
        match hdr.op {
            Op::Response if conn.state == State::Connecting => {
                conn.state = State::Established;
                let line = format!("OK {}\n", conn.local_port);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                }
            }
            Op::Rw if conn.state == State::Established => match conn.forward(payload) {
                Ok(()) => {
                    if conn.needs_credit_update() {
                        let upd = conn.header(guest_cid, Op::CreditUpdate, 0, 0);
                        self.push_control(upd);
                    }
                }
                Err(ForwardError::CreditExceeded) => {
                    crate::warn_limited!("vsock: guest exceeded its credit");
                    self.reset(key);
                }
                Err(ForwardError::Socket(kind)) => {
                    tracing::debug!(?kind, "vsock: host socket write failed");
                    self.reset(key);
                }
            },
            Op::CreditUpdate => conn.readable = true,
            Op::CreditRequest => {
                let upd = conn.header(guest_cid, Op::CreditUpdate, 0, 0);
                self.push_control(upd);
            }
            Op::Shutdown => {
                conn.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if conn.peer_shut_send && conn.peer_shut_rcv {
                    self.reset(key);
                } else if conn.peer_shut_send {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            Op::Rst => self.remove(key),
            _ => self.reset(key),
        }
    }

    fn guest_connect(&mut self, hdr: Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.rst_for(&hdr);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), hdr.dst_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.rst_for(&hdr);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, State::Established, hdr.dst_port, hdr.src_port);
        conn.update_peer_credit(&hdr);
        if self.watch(fd).is_err() {
            self.rst_for(&hdr);
            return;
        }
        let resp = conn.header(self.guest_cid, Op::Response, 0, 0);
        self.conns.insert(key, conn);
        self.fd_conn.insert(fd, key);
        self.push_control(resp);
    }

    /// Accept every pending host connection.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES
                        || self.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: closes the socket
                    }
                    let fd = stream.as_raw_fd();
                    if self.watch(fd).is_ok() {
                        let hs = Handshake {
                            stream,
                            line: Vec::new(),
                        };
                        self.handshakes.insert(fd, hs);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Readiness on a socket fd (handshake or connection).
    pub fn socket_event(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.handshake_readable(fd);
            return;
        }
        let Some(&key) = self.fd_conn.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.readable = true;
        }
        if events.contains(EventSet::OUT) && conn.flush().is_err() {
            self.reset(key);
        }
    }

    fn handshake_readable(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) => {
                    hs.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break parse_connect(&hs.line);
                    }
                    if hs.line.len() >= MAX_HANDSHAKE_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None, // EOF or error
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(port) = port else {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            tracing::debug!("vsock: bad CONNECT line from the host");
            return;
        };
        let local_port = self.next_local_port;
        self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let mut conn = Conn::new(hs.stream, State::Connecting, local_port, port);
        let req = conn.header(self.guest_cid, Op::Request, 0, 0);
        self.conns.insert((local_port, port), conn);
        self.fd_conn.insert(fd, (local_port, port));
        self.push_control(req);
    }

    /// A connection whose host socket has data and the guest has credit for, if any.
    pub fn next_readable(&self) -> Option<ConnKey> {
        self.conns
            .iter()
            .find(|(_, c)| {
                c.readable
                    && c.state == State::Established
                    && !c.local_shut
                    && !c.peer_shut_rcv
                    && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
    }

    /// Read up to `max` bytes of host data for the guest on `key`. `Ok(None)` means "no data
    /// now" (the connection is marked not readable); EOF queues a SHUTDOWN to the guest.
    pub fn read_host(&mut self, key: ConnKey, max: usize) -> Option<(Header, Vec<u8>)> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        let want = max.min(conn.peer_credit() as usize);
        let mut buf = vec![0u8; want];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.readable = false;
                    conn.local_shut = true;
                    let flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    let hdr = conn.header(guest_cid, Op::Shutdown, 0, flags);
                    self.push_control(hdr);
                    return None;
                }
                Ok(n) => {
                    buf.truncate(n);
                    conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                    let hdr = conn.header(guest_cid, Op::Rw, n as u32, 0);
                    return Some((hdr, buf));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return None;
                }
                Err(_) => {
                    self.reset(key);
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r\n"), Some(1024));
        assert_eq!(parse_connect(b"connect 1024\n"), None);
        assert_eq!(parse_connect(b"CONNECT -1\n"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999\n"), None);
        assert_eq!(parse_connect(b"\xff\n"), None);
    }

    #[test]
    fn a_connect_flood_to_unknown_ports_logs_a_burst() {
        // A guest connecting to 10000 host ports nobody listens on, never reading its RX
        // queue: every attempt is answered with a RST until the control queue is full,
        // then dropped. The "full" warning is rate limited, not logged 5904 times.
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let listener = bind_listener(&uds).expect("bind");
        let epoll = Epoll::new().expect("epoll");
        let mut muxer = Muxer::new(3, uds, listener, epoll);
        let count = crate::rate_limited::test_support::count_events(|| {
            for port in 0..10_000u32 {
                let req = Header {
                    src_cid: 3,
                    dst_cid: HOST_CID,
                    src_port: 50_000 + port,
                    dst_port: 20_000 + port,
                    len: 0,
                    op: Op::Request,
                    flags: 0,
                    buf_alloc: 4096,
                    fwd_cnt: 0,
                };
                muxer.handle_guest_packet(req, &[]);
            }
        });
        assert_eq!(muxer.control.len(), MAX_CONTROL_PACKETS);
        assert_eq!(muxer.connections(), 0);
        assert!(
            count <= u64::from(crate::rate_limited::BURST),
            "{count} lines logged"
        );
    }
}
