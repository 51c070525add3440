//! A small streaming client for the tests: the HTTP upgrade request, SPDY/3.1 streams
//! (with hulld's own frame codec: the interop with client-go is what critest and crictl
//! check) and WebSocket channel messages, enough to drive exec, attach and port-forward.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use hulld::streaming::spdy::frame::{Codec, Frame, Prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The answer to an upgrade request: status code, headers, and the connection if 101.
pub struct Upgrade {
    pub code: u16,
    pub head: String,
    pub body: String,
    pub conn: Option<(OwnedReadHalf, OwnedWriteHalf)>,
}

/// Sends `POST <path>` with `headers` to the URL's host and reads the answer head (and a
/// body for refusals).
pub async fn request(url: &str, method: &str, headers: &[(&str, &str)]) -> Upgrade {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let stream = TcpStream::connect(host)
        .await
        .expect("connect to the streaming server");
    let (mut r, mut w) = stream.into_split();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    w.write_all(req.as_bytes()).await.expect("send request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if r.read(&mut b).await.expect("read answer") == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad answer head {head:?}"));
    if code == 101 {
        return Upgrade {
            code,
            head,
            body: String::new(),
            conn: Some((r, w)),
        };
    }
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut body)).await;
    Upgrade {
        code,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
        conn: None,
    }
}

/// SPDY upgrade with the given protocol list.
pub async fn spdy(url: &str, protocols: &[&str]) -> Upgrade {
    let mut h = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        h.push(("X-Stream-Protocol-Version", p));
    }
    request(url, "POST", &h).await
}

/// The client side of a SPDY connection.
pub struct SpdyClient {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    tx: Codec,
    rx: Codec,
    next: u32,
}

/// What the server sent on each stream: data, and whether it ended (FIN or reset).
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub data: HashMap<u32, Vec<u8>>,
    pub ended: Vec<u32>,
    pub replies: Vec<u32>,
}

impl SpdyClient {
    pub fn new(conn: (OwnedReadHalf, OwnedWriteHalf)) -> Self {
        Self {
            r: conn.0,
            w: conn.1,
            tx: Codec::new(),
            rx: Codec::new(),
            next: 1,
        }
    }

    async fn send(&mut self, f: &Frame) {
        let b = self.tx.encode(f).expect("encode");
        self.w.write_all(&b).await.expect("write frame");
    }

    /// Opens a stream with these headers; returns its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next;
        self.next += 2;
        let headers = headers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        self.send(&Frame::SynStream {
            stream: id,
            fin: false,
            headers,
        })
        .await;
        id
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(&Frame::Data {
            stream: id,
            fin,
            data: data.to_vec(),
        })
        .await;
    }

    pub async fn ping(&mut self, id: u32) {
        self.send(&Frame::Ping(id)).await;
    }

    /// Reads one frame; `None` at EOF.
    pub async fn frame(&mut self) -> Option<Frame> {
        let mut p = [0u8; 8];
        self.r.read_exact(&mut p).await.ok()?;
        let p = Prefix::parse(&p);
        let mut payload = vec![0u8; p.length];
        self.r.read_exact(&mut payload).await.ok()?;
        Some(
            self.rx
                .decode(p, &payload)
                .expect("decode a frame from hulld"),
        )
    }

    /// Reads until every stream in `until` ended (or EOF/GOAWAY, or `limit`).
    pub async fn collect(&mut self, until: &[u32], limit: Duration, got: &mut Received) {
        let deadline = tokio::time::Instant::now() + limit;
        while !until.iter().all(|id| got.ended.contains(id)) {
            let f = match tokio::time::timeout_at(deadline, self.frame()).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(_) => panic!("timed out; so far: {:?}", printable(got)),
            };
            match f {
                Frame::SynReply { stream, .. } => got.replies.push(stream),
                Frame::Data { stream, fin, data } => {
                    got.data.entry(stream).or_default().extend(data);
                    if fin {
                        got.ended.push(stream);
                    }
                }
                Frame::RstStream { stream, .. } => got.ended.push(stream),
                Frame::GoAway { .. } => return,
                _ => {}
            }
        }
    }
}

pub fn printable(got: &Received) -> HashMap<u32, String> {
    got.data
        .iter()
        .map(|(k, v)| (*k, String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// A WebSocket client: upgrade, masked frames out, messages in.
pub struct WsClient {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
}

pub async fn websocket(url: &str, protocols: &str) -> Upgrade {
    request(
        url,
        "GET",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", protocols),
        ],
    )
    .await
}

impl WsClient {
    pub fn new(conn: (OwnedReadHalf, OwnedWriteHalf)) -> Self {
        Self {
            r: conn.0,
            w: conn.1,
        }
    }

    /// Sends a masked binary message.
    pub async fn send(&mut self, data: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x82];
        if data.len() < 126 {
            f.push(0x80 | data.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(data.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.w.write_all(&f).await.expect("write ws frame");
    }

    /// Reads one message: (opcode, payload); `None` at EOF.
    pub async fn message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.r.read_exact(&mut h).await.ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => u64::from(self.r.read_u16().await.ok()?),
            127 => self.r.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut data = vec![0u8; len as usize];
        self.r.read_exact(&mut data).await.ok()?;
        Some((h[0] & 0x0f, data))
    }
}
