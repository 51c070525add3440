//! Any `:authority` on hulld's unix sockets.
//!
//! gRPC clients that dial a unix socket send something as the HTTP/2 `:authority`:
//! grpc-go `localhost`, but Python's `grpcio` (C-core) the percent-encoded socket path,
//! grpc-java, older grpcurl and crictl the raw path (`/run/hull/hull.sock`). hulld's HTTP/2
//! stack (h2, under hyper and tonic) parses `:authority` as a URI authority and resets
//! every stream whose value is not one (`RST_STREAM PROTOCOL_ERROR`, hyperium/h2#487,
//! still open), so those clients cannot make a single call. containerd (grpc-go) takes
//! anything.
//!
//! [`AnyAuthority`] sits between the socket and h2 and rewrites the client's side of the
//! connection: frames pass through untouched, except header blocks (HEADERS plus their
//! CONTINUATIONs), which it decodes with its own HPACK decoder (the client's dynamic
//! table lives there) and encodes again as literals without indexing, so h2's decoder
//! never holds a dynamic-table entry the client made. An `:authority` that h2 would
//! refuse becomes `localhost`; everything else is kept as sent. The server's side is
//! not touched. A header block that does not decode, or that is larger than
//! [`MAX_BLOCK`] encoded or [`MAX_DECODED`] decoded, ends the connection, as h2 would
//! for a compression error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's minimum).
const OUT_FRAME: usize = 16_384;
/// The largest encoded header block (all its frames) hulld takes from a client.
pub const MAX_BLOCK: usize = 256 * 1024;
/// The largest decoded header list (RFC 7541 §4.1 sizes: name + value + 32 per field).
pub const MAX_DECODED: usize = 1024 * 1024;
/// The HPACK dynamic table size h2 advertises (it never sends SETTINGS_HEADER_TABLE_SIZE).
const TABLE_SIZE: usize = 4096;
/// What an `:authority` that h2 would refuse becomes (grpc-go's choice for unix sockets).
pub const FALLBACK_AUTHORITY: &[u8] = b"localhost";
const READ_CHUNK: usize = 16 * 1024;

/// Why a client's connection was ended.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("Header block of stream {0} is not followed by its CONTINUATION")]
    Interleaved(u32),
    #[error("CONTINUATION frame without a HEADERS frame (stream {0})")]
    StrayContinuation(u32),
    #[error("HEADERS frame padding is longer than the frame (stream {0})")]
    BadPadding(u32),
    #[error("Header block larger than {MAX_BLOCK} bytes (stream {0})")]
    BlockTooLarge(u32),
    #[error("Header list larger than {MAX_DECODED} bytes decoded (stream {0})")]
    ListTooLarge(u32),
    #[error("HPACK decoding failed (stream {stream}): {reason}")]
    Hpack { stream: u32, reason: String },
}

impl From<AuthorityError> for io::Error {
    fn from(e: AuthorityError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    fn parse(b: &[u8; FRAME_HEAD]) -> Self {
        Self {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

enum State {
    /// So many bytes of the preface seen.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: every byte goes through as is.
    Passthrough,
    /// Collecting a frame head.
    Head,
    /// Copying a frame's payload through.
    Forward(usize),
    /// Collecting a HEADERS/CONTINUATION payload.
    Collect(Head, usize),
}

/// A header block being collected.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream transformer (sync, so it is tested without sockets).
pub struct Rewriter {
    state: State,
    head: Vec<u8>,
    payload: Vec<u8>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// How many `:authority` values were replaced (for tests and the debug log).
    pub replaced: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface(0),
            head: Vec::with_capacity(FRAME_HEAD),
            payload: Vec::new(),
            block: None,
            decoder,
            replaced: 0,
        }
    }
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

impl Rewriter {
    /// Takes the next bytes from the client and appends what h2 should read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Preface(seen) => {
                    let take = (PREFACE.len() - *seen).min(input.len());
                    let matches = input[..take] == PREFACE[*seen..*seen + take];
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *seen += take;
                    if !matches {
                        self.state = State::Passthrough;
                    } else if *seen == PREFACE.len() {
                        self.state = State::Head;
                    }
                }
                State::Passthrough => {
                    out.extend_from_slice(input);
                    input = &[];
                }
                State::Head => {
                    let take = (FRAME_HEAD - self.head.len()).min(input.len());
                    self.head.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.head.len() == FRAME_HEAD {
                        self.start_frame(out)?;
                    }
                }
                State::Forward(left) => {
                    let take = (*left).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Collect(head, left) => {
                    let take = (*left).min(input.len());
                    self.payload.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *left -= take;
                    if *left == 0 {
                        let head = *head;
                        self.state = State::Head;
                        self.header_frame(head, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let bytes: [u8; FRAME_HEAD] = std::mem::take(&mut self.head)
            .try_into()
            .expect("the head buffer holds exactly FRAME_HEAD bytes here");
        let head = Head::parse(&bytes);
        if head.kind == HEADERS || head.kind == CONTINUATION {
            let collected = self.block.as_ref().map_or(0, |b| b.fragment.len());
            if collected + head.len > MAX_BLOCK + 256 + 5 {
                return Err(AuthorityError::BlockTooLarge(head.stream));
            }
            self.payload.clear();
            self.state = State::Collect(head, head.len);
            if head.len == 0 {
                self.state = State::Head;
                self.header_frame(head, out)?;
            }
            return Ok(());
        }
        if let Some(b) = &self.block {
            return Err(AuthorityError::Interleaved(b.stream));
        }
        out.extend_from_slice(&bytes);
        self.state = if head.len == 0 {
            State::Head
        } else {
            State::Forward(head.len)
        };
        Ok(())
    }

    fn header_frame(&mut self, head: Head, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let payload = std::mem::take(&mut self.payload);
        if head.kind == HEADERS {
            if let Some(b) = &self.block {
                return Err(AuthorityError::Interleaved(b.stream));
            }
            let bad = || AuthorityError::BadPadding(head.stream);
            let mut body = payload.as_slice();
            let mut pad = 0;
            if head.flags & PADDED != 0 {
                let (&p, rest) = body.split_first().ok_or_else(bad)?;
                pad = usize::from(p);
                body = rest;
            }
            let mut priority = None;
            if head.flags & PRIORITY != 0 {
                let (p, rest) = body.split_first_chunk::<5>().ok_or_else(bad)?;
                priority = Some(*p);
                body = rest;
            }
            let end = body.len().checked_sub(pad).ok_or_else(bad)?;
            self.block = Some(Block {
                stream: head.stream,
                end_stream: head.flags & END_STREAM != 0,
                priority,
                fragment: body[..end].to_vec(),
            });
        } else {
            let block = self
                .block
                .as_mut()
                .filter(|b| b.stream == head.stream)
                .ok_or(AuthorityError::StrayContinuation(head.stream))?;
            block.fragment.extend_from_slice(&payload);
        }
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.fragment.len() > MAX_BLOCK)
        {
            return Err(AuthorityError::BlockTooLarge(head.stream));
        }
        if head.flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish_block(block, out)?;
        }
        Ok(())
    }

    /// Decodes a whole block, fixes `:authority`, and writes it as fresh frames.
    fn finish_block(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| AuthorityError::Hpack {
                stream: block.stream,
                reason: e.to_string(),
            })?;
        if size > MAX_DECODED {
            return Err(AuthorityError::ListTooLarge(block.stream));
        }
        for (name, value) in &mut fields {
            if name == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&value[..value.len().min(256)]),
                    "client sent an :authority h2 refuses; serving it as localhost"
                );
                *value = FALLBACK_AUTHORITY.to_vec();
                self.replaced += 1;
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(name, value, &mut encoded);
        }
        write_header_frames(&block, &encoded, out);
        Ok(())
    }
}

/// RFC 7541 §5.1 integer with an N-bit prefix; `first` holds the representation bits.
fn encode_int(mut value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name, neither string Huffman-coded
/// (RFC 7541 §6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_int(name.len(), 7, 0, out);
    out.extend_from_slice(name);
    encode_int(value.len(), 7, 0, out);
    out.extend_from_slice(value);
}

fn frame_head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("frames are at most OUT_FRAME bytes");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// HEADERS (with the client's END_STREAM and priority, without padding) and as many
/// CONTINUATIONs as `encoded` needs at [`OUT_FRAME`] bytes a frame.
fn write_header_frames(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let prio_len = block.priority.map_or(0, |p| p.len());
    let first = encoded.len().min(OUT_FRAME - prio_len);
    let (head, mut rest) = encoded.split_at(first);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(prio_len + head.len(), HEADERS, flags, block.stream, out);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(rest.len().min(OUT_FRAME));
        let flags = if more.is_empty() { END_HEADERS } else { 0 };
        frame_head(chunk.len(), CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(chunk);
        rest = more;
    }
}

/// A client connection whose reads go through a [`Rewriter`]; writes go straight through.
pub struct AnyAuthority<IO> {
    inner: IO,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    chunk: Box<[u8]>,
    eof: bool,
}

impl<IO> AnyAuthority<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO> std::fmt::Debug for AnyAuthority<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyAuthority")
            .field("rewriter", &self.rewriter)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AnyAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let filled = chunk.filled();
            if filled.is_empty() {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.rewriter.feed(filled, &mut this.out) {
                tracing::warn!(error = %e, "closing a CRI connection");
                return Poll::Ready(Err(e.into()));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AnyAuthority<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
