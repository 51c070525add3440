//! One SPDY connection, server side: a reader task that decodes frames into [`Event`]s
//! (answering SYN_STREAM with SYN_REPLY and PING with PING on its own), and a writer task
//! that encodes what the handlers send through a [`Sender`].

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{Codec, Frame, FrameError, Headers, Prefix};

/// Largest frame accepted from a client (spdystream sends data frames of at most 32 KiB).
const MAX_FRAME: usize = 1 << 20;
/// Data frames we send are cut to this size.
const OUT_CHUNK: usize = 32 * 1024;

/// What the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new stream (already answered with SYN_REPLY).
    Stream {
        id: u32,
        headers: Headers,
        fin: bool,
    },
    Data {
        id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    Reset {
        id: u32,
    },
}

#[derive(Debug)]
enum Out {
    Frame(Frame),
    Close,
}

/// Sends on the connection; cheap to clone. Errors mean the connection is gone, which
/// the reader side reports too, so callers may ignore them.
#[derive(Clone, Debug)]
pub struct Sender {
    tx: mpsc::Sender<Out>,
}

#[derive(Debug, thiserror::Error)]
#[error("The SPDY connection is closed")]
pub struct Closed;

impl Sender {
    /// Sends `data` on stream `id`, in frames of at most 32 KiB; `fin` half-closes it.
    pub async fn data(&self, id: u32, data: &[u8], fin: bool) -> Result<(), Closed> {
        let mut chunks: Vec<&[u8]> = data.chunks(OUT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let frame = Frame::Data {
                stream: id,
                fin: fin && i == last,
                data: c.to_vec(),
            };
            self.tx.send(Out::Frame(frame)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    pub async fn reset(&self, id: u32, status: u32) -> Result<(), Closed> {
        let frame = Frame::RstStream { stream: id, status };
        self.tx.send(Out::Frame(frame)).await.map_err(|_| Closed)
    }

    /// Sends GOAWAY, flushes and closes the connection once everything queued is written.
    pub async fn close(&self) {
        let _ = self.tx.send(Out::Close).await;
    }
}

/// Starts the reader and writer tasks on the two halves of an upgraded connection.
pub fn start<R, W>(read: R, write: W) -> (mpsc::Receiver<Event>, Sender)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let sender = Sender { tx: out_tx };
    tokio::spawn(write_loop(write, out_rx));
    let s = sender.clone();
    tokio::spawn(async move {
        if let Err(e) = read_loop(read, &ev_tx, &s).await {
            tracing::debug!(error = %e, "SPDY connection ended");
        }
    });
    (ev_rx, sender)
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("stopped")]
    Stopped,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    events: &mpsc::Sender<Event>,
    sender: &Sender,
) -> Result<(), ReadError> {
    let mut codec = Codec::new();
    let mut last_stream = 0u32;
    loop {
        let mut prefix = [0u8; 8];
        match read.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let p = Prefix::parse(&prefix);
        if p.length > MAX_FRAME {
            return Err(ReadError::TooLarge(p.length));
        }
        let mut payload = vec![0u8; p.length];
        read.read_exact(&mut payload).await?;
        let ev = match codec.decode(p, &payload)? {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                last_stream = stream;
                let reply = Frame::SynReply {
                    stream,
                    fin: false,
                    headers: Vec::new(),
                };
                sender
                    .tx
                    .send(Out::Frame(reply))
                    .await
                    .map_err(|_| ReadError::Stopped)?;
                Event::Stream {
                    id: stream,
                    headers,
                    fin,
                }
            }
            Frame::Data { stream, fin, data } => Event::Data {
                id: stream,
                data,
                fin,
            },
            Frame::RstStream { stream, .. } => Event::Reset { id: stream },
            Frame::Ping(id) => {
                let _ = sender.tx.send(Out::Frame(Frame::Ping(id))).await;
                continue;
            }
            Frame::GoAway { .. } => {
                tracing::debug!(last_stream, "client sent GOAWAY");
                return Ok(());
            }
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored(_) => continue,
        };
        events.send(ev).await.map_err(|_| ReadError::Stopped)?;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, mut rx: mpsc::Receiver<Out>) {
    let mut codec = Codec::new();
    while let Some(out) = rx.recv().await {
        let frame = match out {
            Out::Frame(f) => f,
            Out::Close => {
                let goaway = Frame::GoAway {
                    last_stream: 0,
                    status: 0,
                };
                if let Ok(b) = codec.encode(&goaway) {
                    let _ = write.write_all(&b).await;
                }
                break;
            }
        };
        let bytes = match codec.encode(&frame) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a SPDY frame");
                break;
            }
        };
        if write.write_all(&bytes).await.is_err() {
            break;
        }
        // Flush when nothing else is queued, so small writes are not held back.
        if rx.is_empty() && write.flush().await.is_err() {
            break;
        }
    }
    let _ = write.flush().await;
    let _ = write.shutdown().await;
}
