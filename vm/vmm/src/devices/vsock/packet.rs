//! The virtio-vsock packet header (virtio spec 5.10.6), parsed into a validated type before
//! anything acts on it (Firecracker `vsock/packet.rs`).

/// Size of the header on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest payload one packet may carry (Firecracker's MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: u32 = 64 << 10;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type hull supports.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A parsed, validated packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub op: Op,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("Header is {0} bytes, needs {HDR_SIZE}")]
    Short(usize),
    #[error("Unsupported socket type {0}")]
    Type(u16),
    #[error("Unknown operation {0}")]
    Op(u16),
    #[error("Payload length {0} is over the limit")]
    TooLong(u32),
    #[error("Payload length {len} is more than the {available} bytes the chain holds")]
    LongerThanChain { len: u32, available: usize },
    #[error("Only RW packets carry data (op {0:?} has {1} bytes)")]
    UnexpectedPayload(Op, u32),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Parse a header the guest sent; `available` is the payload bytes its chain holds.
    pub fn parse(bytes: &[u8], available: usize) -> Result<Self, PacketError> {
        if bytes.len() < HDR_SIZE {
            return Err(PacketError::Short(bytes.len()));
        }
        let ty = u16::from_le_bytes([bytes[28], bytes[29]]);
        if ty != TYPE_STREAM {
            return Err(PacketError::Type(ty));
        }
        let raw_op = u16::from_le_bytes([bytes[30], bytes[31]]);
        let op = Op::from_u16(raw_op).ok_or(PacketError::Op(raw_op))?;
        let len = u32_at(bytes, 24);
        if len > MAX_PKT_PAYLOAD {
            return Err(PacketError::TooLong(len));
        }
        if usize::try_from(len).map_or(true, |l| l > available) {
            return Err(PacketError::LongerThanChain { len, available });
        }
        if op != Op::Rw && len != 0 {
            return Err(PacketError::UnexpectedPayload(op, len));
        }
        Ok(Self {
            src_cid: u64_at(bytes, 0),
            dst_cid: u64_at(bytes, 8),
            src_port: u32_at(bytes, 16),
            dst_port: u32_at(bytes, 20),
            len,
            op,
            flags: u32_at(bytes, 32),
            buf_alloc: u32_at(bytes, 36),
            fwd_cnt: u32_at(bytes, 40),
        })
    }

    /// The wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(op: Op, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 5000,
            len,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trip() {
        let h = hdr(Op::Rw, 10);
        assert_eq!(Header::parse(&h.to_bytes(), 10), Ok(h));
    }

    #[test]
    fn one_test_per_error() {
        let ok = hdr(Op::Rw, 10).to_bytes();
        assert_eq!(Header::parse(&ok[..43], 10), Err(PacketError::Short(43)));
        let mut b = ok;
        b[28] = 2; // SOCK_SEQPACKET
        assert_eq!(Header::parse(&b, 10), Err(PacketError::Type(2)));
        let mut b = ok;
        b[30] = 99;
        assert_eq!(Header::parse(&b, 10), Err(PacketError::Op(99)));
        let big = hdr(Op::Rw, MAX_PKT_PAYLOAD + 1).to_bytes();
        assert_eq!(
            Header::parse(&big, usize::MAX),
            Err(PacketError::TooLong(MAX_PKT_PAYLOAD + 1))
        );
        assert_eq!(
            Header::parse(&ok, 9),
            Err(PacketError::LongerThanChain {
                len: 10,
                available: 9
            })
        );
        let req = hdr(Op::Request, 4).to_bytes();
        assert_eq!(
            Header::parse(&req, 4),
            Err(PacketError::UnexpectedPayload(Op::Request, 4))
        );
    }
}
