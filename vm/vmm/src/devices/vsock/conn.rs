//! One vsock stream connection: the host's unix socket plus the credit accounting of
//! virtio-vsock flow control (spec 5.10.6.3).

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;

use super::packet::{HOST_CID, Header, Op};

/// Receive buffer we advertise to the guest per connection (our `buf_alloc`), and the most
/// guest data we hold for a slow host socket. A guest sending beyond it breaks the protocol.
pub const CONN_BUF_SIZE: u32 = 256 << 10;

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
}

/// A connection, keyed by (host port, guest port).
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// The guest's receive buffer and how much of what we sent it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes we sent the guest (RW payloads).
    pub rx_cnt: u32,
    /// Bytes of guest data we wrote to the host socket.
    pub fwd_cnt: u32,
    /// `fwd_cnt` last told to the guest.
    pub last_fwd_cnt_sent: u32,
    /// Guest data the host socket has not taken yet.
    pub pending: Vec<u8>,
    /// The host socket may have data to read (edge-triggered readiness seen).
    pub readable: bool,
    /// The guest will send nothing more / receive nothing more.
    pub peer_shut_send: bool,
    pub peer_shut_rcv: bool,
    /// We told the guest the host side has closed.
    pub local_shut: bool,
}

/// Why a write to the host side failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// The guest sent more than the credit we gave it.
    CreditExceeded,
    /// The host socket failed.
    Socket(ErrorKind),
}

impl Conn {
    /// A connection over `stream` between our `local_port` and the guest's `peer_port`.
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending: Vec::new(),
            readable: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            local_shut: false,
        }
    }

    /// A header from us to the guest for this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: Op, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Record the credit the guest advertised.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// How many bytes we may still send the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest should hear about freed buffer space now.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CONN_BUF_SIZE / 4
    }

    /// Send guest data to the host socket, keeping what it cannot take yet.
    pub fn forward(&mut self, data: &[u8]) -> Result<(), ForwardError> {
        let held = self.pending.len() + data.len();
        if held > CONN_BUF_SIZE as usize {
            return Err(ForwardError::CreditExceeded);
        }
        self.pending.extend_from_slice(data);
        self.flush()
    }

    /// Write as much pending data as the host socket takes.
    pub fn flush(&mut self) -> Result<(), ForwardError> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(ForwardError::Socket(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ForwardError::Socket(e.kind())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, State::Established, 10, 20);
        assert_eq!(c.peer_credit(), 0);
        let mut h = c.header(3, Op::Rw, 0, 0);
        h.buf_alloc = 1000;
        h.fwd_cnt = 0;
        c.update_peer_credit(&h);
        c.rx_cnt = 400;
        assert_eq!(c.peer_credit(), 600);
        c.rx_cnt = 1200; // more than the guest allowed: no credit, no underflow
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn forward_counts_and_caps() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, State::Established, 10, 20);
        c.forward(b"hello").unwrap();
        assert_eq!(c.fwd_cnt, 5);
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let too_much = vec![0u8; CONN_BUF_SIZE as usize + 1];
        assert_eq!(c.forward(&too_much), Err(ForwardError::CreditExceeded));
    }
}
