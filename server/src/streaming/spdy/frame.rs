//! SPDY/3.1 frames: the binary layout (control frames with a version and a type, data
//! frames with a stream id) and the header blocks inside SYN_STREAM/SYN_REPLY/HEADERS,
//! zlib-compressed with [`super::dictionary::DICTIONARY`], one compression
//! context per direction for the whole connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;

/// Largest frame payload accepted (the length field has 24 bits; kubelet's clients send
/// data frames of at most 32 KiB).
pub const MAX_PAYLOAD: usize = 1 << 24;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

pub const FLAG_FIN: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("SPDY frame is too short for its type ({0} bytes)")]
    Short(usize),
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("SPDY header block cannot be decompressed: {0}")]
    Inflate(String),
    #[error("SPDY header block is malformed")]
    HeaderBlock,
    #[error("SPDY header block is larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("SPDY header block cannot be compressed: {0}")]
    Deflate(String),
}

/// One header: a lower-case name and its value (several values are joined by NUL).
pub type Headers = Vec<(String, String)>;

/// A decoded frame. Frames hulld does not act on (SETTINGS, WINDOW_UPDATE, unknown
/// types) are `Ignored`: SPDY requires receivers to skip what they do not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Ignored(u16),
}

/// The 8-byte prefix every frame starts with.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    word: u32,
    pub flags: u8,
    pub length: usize,
}

impl Prefix {
    pub fn parse(b: &[u8; 8]) -> Self {
        let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let length = usize::from(b[5]) << 16 | usize::from(b[6]) << 8 | usize::from(b[7]);
        Self {
            word,
            flags: b[4],
            length,
        }
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, FrameError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(FrameError::Short(b.len()))
}

/// Header (de)compression state of one connection: one inflater for what the peer sends,
/// one deflater for what we send.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail for a fresh zlib stream: the dictionary must come before any input.
        let _ = deflate.set_dictionary(DICTIONARY);
        Self {
            inflate: Decompress::new(true),
            deflate,
        }
    }

    /// Decodes a frame from its prefix and payload.
    pub fn decode(&mut self, p: Prefix, payload: &[u8]) -> Result<Frame, FrameError> {
        let fin = p.flags & FLAG_FIN != 0;
        if p.word & 0x8000_0000 == 0 {
            return Ok(Frame::Data {
                stream: p.word & 0x7fff_ffff,
                fin,
                data: payload.to_vec(),
            });
        }
        let version = ((p.word >> 16) & 0x7fff) as u16;
        if version != 3 {
            return Err(FrameError::Version(version));
        }
        let stream = || be32(payload, 0).map(|v| v & 0x7fff_ffff);
        Ok(match (p.word & 0xffff) as u16 {
            TYPE_SYN_STREAM => Frame::SynStream {
                stream: stream()?,
                fin,
                headers: self
                    .inflate_block(payload.get(10..).ok_or(FrameError::Short(payload.len()))?)?,
            },
            TYPE_SYN_REPLY => Frame::SynReply {
                stream: stream()?,
                fin,
                headers: self
                    .inflate_block(payload.get(4..).ok_or(FrameError::Short(payload.len()))?)?,
            },
            TYPE_HEADERS => Frame::Headers {
                stream: stream()?,
                fin,
                headers: self
                    .inflate_block(payload.get(4..).ok_or(FrameError::Short(payload.len()))?)?,
            },
            TYPE_RST_STREAM => Frame::RstStream {
                stream: stream()?,
                status: be32(payload, 4)?,
            },
            TYPE_PING => Frame::Ping(be32(payload, 0)?),
            TYPE_GOAWAY => Frame::GoAway {
                last_stream: stream()?,
                status: be32(payload, 4).unwrap_or(0),
            },
            t @ (TYPE_SETTINGS | TYPE_WINDOW_UPDATE) => Frame::Ignored(t),
            other => Frame::Ignored(other),
        })
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Headers, FrameError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlockTooLarge);
                }
                out.reserve(out.len().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            let res =
                self.inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - before_in) as usize;
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) if consumed >= input.len() && out.len() < out.capacity() => break,
                Ok(_)
                    if out.len() == before_out
                        && consumed < input.len()
                        && out.len() < out.capacity() =>
                {
                    return Err(FrameError::Inflate("no progress".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| FrameError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(FrameError::Inflate(e.to_string())),
            }
        }
        parse_block(&out)
    }

    fn deflate_block(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Deflate(e.to_string()))?;
            consumed += (self.deflate.total_in() - before_in) as usize;
            // A sync flush is complete once all input is taken and output space is left.
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Encodes a frame.
    pub fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>, FrameError> {
        let (kind, flags, body) = match frame {
            Frame::Data { stream, fin, data } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.push(if *fin { FLAG_FIN } else { 0 });
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                return Ok(out);
            }
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let mut b = stream.to_be_bytes().to_vec();
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                b.extend(self.deflate_block(headers)?);
                (TYPE_SYN_STREAM, u8::from(*fin), b)
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => {
                let mut b = stream.to_be_bytes().to_vec();
                b.extend(self.deflate_block(headers)?);
                (TYPE_SYN_REPLY, u8::from(*fin), b)
            }
            Frame::Headers {
                stream,
                fin,
                headers,
            } => {
                let mut b = stream.to_be_bytes().to_vec();
                b.extend(self.deflate_block(headers)?);
                (TYPE_HEADERS, u8::from(*fin), b)
            }
            Frame::RstStream { stream, status } => (TYPE_RST_STREAM, 0, pair(*stream, *status)),
            Frame::Ping(id) => (TYPE_PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway {
                last_stream,
                status,
            } => (TYPE_GOAWAY, 0, pair(*last_stream, *status)),
            Frame::Ignored(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8003u16).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend(body);
        Ok(out)
    }
}

fn pair(a: u32, b: u32) -> Vec<u8> {
    let mut v = a.to_be_bytes().to_vec();
    v.extend_from_slice(&b.to_be_bytes());
    v
}

/// Parses a decompressed header block: a count, then length-prefixed names and values.
fn parse_block(b: &[u8]) -> Result<Headers, FrameError> {
    let count = be32(b, 0).map_err(|_| FrameError::HeaderBlock)? as usize;
    if count > b.len() / 8 {
        return Err(FrameError::HeaderBlock);
    }
    let mut at = 4usize;
    let mut next = || -> Result<Vec<u8>, FrameError> {
        let len = be32(b, at).map_err(|_| FrameError::HeaderBlock)? as usize;
        let s = b
            .get(at + 4..at + 4 + len)
            .ok_or(FrameError::HeaderBlock)?
            .to_vec();
        at += 4 + len;
        Ok(s)
    };
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = next()?;
        let value = next()?;
        let name = String::from_utf8(name).map_err(|_| FrameError::HeaderBlock)?;
        let value = String::from_utf8_lossy(&value).into_owned();
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// The first value of header `name` (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(v.as_str()))
}
