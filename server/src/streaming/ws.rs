//! WebSocket (RFC 6455), server side, for kubelet's channel protocols: the handshake
//! (`Sec-WebSocket-Accept`, subprotocol choice), the frame codec (masked client frames,
//! fragments, ping/pong, close), and the remote command channels: every message starts
//! with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255,
//! "close channel N"), or with an ASCII digit and base64 data for `base64.channel.k8s.io`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::remotecommand::{ResizeDecoder, Session, TermSize, Version, Wanted};

/// Subprotocols for exec and attach, most preferred first.
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// Encodes one unmasked (server) frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is too large")]
    TooLarge(u64),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// Reads one frame: (fin, opcode, unmasked payload).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(bool, u8, Vec<u8>), WsError> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let fin = h[0] & 0x80 != 0;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(WsError::TooLarge(len));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    if masked {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((fin, opcode, data))
}

/// Reads the next message, joining fragments.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, WsError> {
    let mut buf: Option<(u8, Vec<u8>)> = None;
    loop {
        let (fin, op, data) = read_frame(r).await?;
        match op {
            OP_PING => return Ok(Message::Ping(data)),
            OP_PONG => continue,
            OP_CLOSE => return Ok(Message::Close),
            OP_TEXT | OP_BINARY if buf.is_none() => buf = Some((op, data)),
            OP_CONT => match &mut buf {
                Some((_, b)) if b.len() + data.len() <= MAX_MESSAGE => b.extend(data),
                Some(_) => return Err(WsError::TooLarge((MAX_MESSAGE + 1) as u64)),
                None => return Err(WsError::Protocol("continuation without a message")),
            },
            _ => return Err(WsError::Protocol("unexpected opcode")),
        }
        if fin && let Some((op, b)) = buf.take() {
            return Ok(if op == OP_TEXT {
                Message::Text(b)
            } else {
                Message::Binary(b)
            });
        }
    }
}

enum Out {
    Frame(u8, Vec<u8>),
    Finish,
}

/// Sends channel messages on a WebSocket; cheap to clone.
#[derive(Clone)]
pub struct WsSender {
    tx: mpsc::Sender<Out>,
    base64: bool,
}

impl WsSender {
    /// Starts the writer task on the write half.
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(write: W, base64: bool) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(write_loop(write, rx));
        Self { tx, base64 }
    }

    pub async fn channel(&self, chan: u8, data: &[u8]) {
        let frame = if self.base64 {
            let mut m = vec![b'0' + chan];
            m.extend_from_slice(STANDARD.encode(data).as_bytes());
            Out::Frame(OP_TEXT, m)
        } else {
            let mut m = Vec::with_capacity(data.len() + 1);
            m.push(chan);
            m.extend_from_slice(data);
            Out::Frame(OP_BINARY, m)
        };
        let _ = self.tx.send(frame).await;
    }

    pub async fn raw(&self, opcode: u8, data: Vec<u8>) {
        let _ = self.tx.send(Out::Frame(opcode, data)).await;
    }

    /// Channels end with the connection: v5's close signal (255) goes from the client
    /// to the server only (client-go discards it as an unknown stream).
    pub async fn close_channel(&self, _chan: u8) {}

    /// Sends a close frame after everything queued and ends the connection.
    pub async fn finish(&self) {
        let _ = self.tx.send(Out::Finish).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        let bytes = match out {
            Out::Frame(op, data) => encode_frame(op, &data),
            Out::Finish => {
                // Status 1000, normal closure.
                let _ = w.write_all(&encode_frame(OP_CLOSE, &[0x03, 0xe8])).await;
                break;
            }
        };
        if w.write_all(&bytes).await.is_err() {
            break;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Starts a remote command session on an accepted WebSocket: announces readiness with an
/// empty message on the first output channel (as kubelet does) and routes the client's
/// stdin and resize channels.
pub async fn ws_session<R>(read: R, sender: WsSender, version: Version, wanted: Wanted) -> Session
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let first = if wanted.stdout {
        1
    } else if wanted.stderr {
        2
    } else {
        3
    };
    sender.channel(first, &[]).await;
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (gone_tx, gone_rx) = watch::channel(false);
    tokio::spawn(route(
        read,
        sender.clone(),
        wanted.stdin.then_some(stdin_tx),
        wanted.tty.then_some(resize_tx),
        gone_tx,
    ));
    Session {
        version,
        wanted,
        stdin: wanted.stdin.then_some(stdin_rx),
        resize: wanted.tty.then_some(resize_rx),
        out: super::remotecommand::Output::Ws(sender),
        gone: gone_rx,
    }
}

async fn route<R: AsyncRead + Unpin>(
    mut read: R,
    sender: WsSender,
    mut stdin: Option<mpsc::Sender<Vec<u8>>>,
    mut resize: Option<mpsc::Sender<TermSize>>,
    gone: watch::Sender<bool>,
) {
    let mut decoder = ResizeDecoder::default();
    loop {
        let (chan, data) = match read_message(&mut read).await {
            Ok(Message::Binary(m)) if !m.is_empty() => (m[0], m[1..].to_vec()),
            Ok(Message::Text(m)) if !m.is_empty() => {
                let data = STANDARD.decode(&m[1..]).unwrap_or_default();
                (m[0].wrapping_sub(b'0'), data)
            }
            Ok(Message::Ping(p)) => {
                sender.raw(OP_PONG, p).await;
                continue;
            }
            Ok(Message::Close) | Err(_) => break,
            Ok(_) => continue,
        };
        match chan {
            0 => {
                if let Some(tx) = &stdin
                    && tx.send(data).await.is_err()
                {
                    stdin = None;
                }
            }
            4 => {
                for size in decoder.push(&data) {
                    if let Some(tx) = &resize {
                        let _ = tx.send(size).await;
                    }
                }
            }
            255 if data.first() == Some(&0) => stdin = None,
            255 if data.first() == Some(&4) => resize = None,
            _ => {}
        }
    }
    let _ = gone.send(true);
}

/// A byte stream carried in binary WebSocket messages (client-go's tunnelling
/// connection, used for SPDY port-forward over WebSocket): returns the read and write
/// halves of the inner stream.
pub fn tunnel<R, W>(
    mut read: R,
    write: W,
) -> (
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_inner, mut to_inner) = tokio::io::split(theirs);
    let sender = WsSender::start(write, false);
    let pong = sender.clone();
    tokio::spawn(async move {
        loop {
            match read_message(&mut read).await {
                Ok(Message::Binary(m)) | Ok(Message::Text(m)) => {
                    if to_inner.write_all(&m).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Ping(p)) => pong.raw(OP_PONG, p).await,
                Ok(Message::Close) | Err(_) => break,
            }
        }
        let _ = to_inner.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_inner.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sender.raw(OP_BINARY, buf[..n].to_vec()).await,
            }
        }
        sender.finish().await;
    });
    tokio::io::split(ours)
}
