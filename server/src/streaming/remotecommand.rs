//! The remote command protocol of exec and attach (kubelet's `remotecommand`): the
//! negotiated version, the streams a session has, and the final status on the error
//! stream. The transports (SPDY streams, WebSocket channels) fill in a [`Session`]; the
//! handlers in `exec.rs` only see the session.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::spdy::conn::{Event, Sender};
use super::spdy::frame::header;
use super::ws::WsSender;

/// Versions offered over SPDY, most preferred first (kubelet's list; v5 differs from v4
/// only over WebSocket).
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long a client has to open its streams after the upgrade.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The negotiated protocol version (1..=5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u8);

impl Version {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "v5.channel.k8s.io" => Some(Self(5)),
            "v4.channel.k8s.io" => Some(Self(4)),
            "v3.channel.k8s.io" => Some(Self(3)),
            "v2.channel.k8s.io" => Some(Self(2)),
            "channel.k8s.io" | "" => Some(Self(1)),
            _ => None,
        }
    }
    /// v3 and later have a resize stream.
    pub fn resizes(self) -> bool {
        self.0 >= 3
    }
}

/// What the session was asked for (from the CRI request behind the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Wanted {
    /// kubelet's rule: with a TTY there is no separate stderr.
    pub fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Self {
        Self {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }
}

/// A terminal size from the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How the command ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The output side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chan {
    Stdout,
    Stderr,
    Error,
}

#[derive(Clone)]
pub enum Output {
    Spdy {
        sender: Sender,
        ids: [Option<u32>; 3],
    },
    Ws(WsSender),
}

impl Output {
    /// Writes output; errors (client gone) are ignored: the session ends on its own.
    pub async fn write(&self, chan: Chan, data: &[u8]) {
        match self {
            Self::Spdy { sender, ids } => {
                if let Some(id) = ids[chan as usize] {
                    let _ = sender.data(id, data, false).await;
                }
            }
            Self::Ws(ws) => ws.channel(chan as u8 + 1, data).await,
        }
    }

    pub async fn close(&self, chan: Chan) {
        match self {
            Self::Spdy { sender, ids } => {
                if let Some(id) = ids[chan as usize] {
                    let _ = sender.data(id, &[], true).await;
                }
            }
            Self::Ws(ws) => ws.close_channel(chan as u8 + 1).await,
        }
    }

    /// A writer for one output channel, or `None` if the client did not ask for it.
    pub fn clone_for(&self, chan: Chan, wanted: bool) -> Option<ChanWriter> {
        wanted.then(|| ChanWriter {
            out: self.clone(),
            chan,
        })
    }

    /// Ends the connection after everything queued.
    pub async fn finish(&self) {
        match self {
            Self::Spdy { sender, .. } => sender.close().await,
            Self::Ws(ws) => ws.finish().await,
        }
    }
}

/// Writes one output channel.
pub struct ChanWriter {
    out: Output,
    chan: Chan,
}

impl ChanWriter {
    pub async fn write(&self, data: &[u8]) {
        self.out.write(self.chan, data).await;
    }
}

/// One exec or attach session, transport-independent.
pub struct Session {
    pub version: Version,
    pub wanted: Wanted,
    /// Client stdin; the channel closes at the client's EOF.
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub out: Output,
    /// Becomes true when the client's connection is gone.
    pub gone: watch::Receiver<bool>,
}

impl Session {
    /// Writes the outcome on the error stream in the negotiated version's format, closes
    /// all output streams and ends the connection.
    pub async fn finish(&self, outcome: &Outcome, cmd: &[String]) {
        self.out.close(Chan::Stdout).await;
        self.out.close(Chan::Stderr).await;
        if let Some(body) = status_body(self.version, outcome, cmd) {
            self.out.write(Chan::Error, &body).await;
        }
        self.out.close(Chan::Error).await;
        self.out.finish().await;
    }
}

/// The error stream's content: v4+ a JSON `metav1.Status`, before that the bare message
/// on failure and nothing on success.
pub fn status_body(version: Version, outcome: &Outcome, cmd: &[String]) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
            "details": {"causes": [{"message": msg}]},
        }),
    };
    if version.0 >= 4 {
        return Some(status.to_string().into_bytes());
    }
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}")
                .into_bytes(),
        ),
        Outcome::Failed(msg) => Some(msg.clone().into_bytes()),
    }
}

/// Splits a byte stream of concatenated JSON objects into terminal sizes, keeping an
/// incomplete tail for the next call.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        sizes.push(s);
                        used = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Garbage: drop everything buffered, as kubelet stops decoding.
                        used = self.buf.len();
                        break;
                    }
                    None => {
                        used = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        sizes
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("timed out waiting for client to create streams")]
    Timeout,
    #[error("the client closed the connection before creating its streams")]
    Closed,
    #[error("the client did not create an error stream")]
    NoErrorStream,
}

/// Waits for the SPDY streams the session needs (kubelet's count: error, plus stdin,
/// stdout, stderr as wanted, plus resize with a TTY from v3), then starts the task that
/// routes the client's data to stdin and resize.
pub async fn spdy_session(
    mut events: mpsc::Receiver<Event>,
    sender: Sender,
    version: Version,
    wanted: Wanted,
) -> Result<Session, SetupError> {
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(wanted.tty && version.resizes());
    let mut ids: [Option<u32>; 3] = [None; 3];
    let (mut stdin_id, mut resize_id) = (None, None);
    let mut early = Vec::new();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while got < expected {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| SetupError::Timeout)?
            .ok_or(SetupError::Closed)?;
        let Event::Stream { id, headers, .. } = ev else {
            early.push(ev);
            continue;
        };
        match header(&headers, "streamtype").unwrap_or("") {
            "error" => ids[Chan::Error as usize] = Some(id),
            "stdout" => ids[Chan::Stdout as usize] = Some(id),
            "stderr" => ids[Chan::Stderr as usize] = Some(id),
            "stdin" => stdin_id = Some(id),
            "resize" => resize_id = Some(id),
            other => {
                tracing::debug!(stream_type = other, "unexpected stream type");
                continue;
            }
        }
        got += 1;
    }
    if ids[Chan::Error as usize].is_none() {
        return Err(SetupError::NoErrorStream);
    }
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (gone_tx, gone_rx) = watch::channel(false);
    let route = Route {
        stdin_id,
        resize_id,
        stdin: stdin_id.map(|_| stdin_tx),
        resize: resize_id.map(|_| resize_tx),
        decoder: ResizeDecoder::default(),
    };
    tokio::spawn(route.run(early, events, gone_tx));
    Ok(Session {
        version,
        wanted,
        stdin: stdin_id.map(|_| stdin_rx),
        resize: resize_id.map(|_| resize_rx),
        out: Output::Spdy { sender, ids },
        gone: gone_rx,
    })
}

struct Route {
    stdin_id: Option<u32>,
    resize_id: Option<u32>,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    resize: Option<mpsc::Sender<TermSize>>,
    decoder: ResizeDecoder,
}

impl Route {
    async fn run(
        mut self,
        early: Vec<Event>,
        mut events: mpsc::Receiver<Event>,
        gone: watch::Sender<bool>,
    ) {
        for ev in early {
            self.handle(ev).await;
        }
        while let Some(ev) = events.recv().await {
            self.handle(ev).await;
        }
        let _ = gone.send(true);
    }

    async fn handle(&mut self, ev: Event) {
        let (id, data, fin) = match ev {
            Event::Data { id, data, fin } => (id, data, fin),
            Event::Reset { id } => (id, Vec::new(), true),
            Event::Stream { .. } => return,
        };
        if Some(id) == self.stdin_id {
            if let Some(tx) = &self.stdin
                && !data.is_empty()
                && tx.send(data).await.is_err()
            {
                self.stdin = None;
            }
            if fin {
                self.stdin = None;
            }
        } else if Some(id) == self.resize_id {
            for size in self.decoder.push(&data) {
                if let Some(tx) = &self.resize {
                    let _ = tx.send(size).await;
                }
            }
            if fin {
                self.resize = None;
            }
        }
    }
}
