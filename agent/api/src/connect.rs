//! Host side of the hybrid-vsock handshake (Firecracker / vhost-device-vsock style).
//!
//! The VMM exposes the guest's vsock as a unix socket. A host client connects, writes
//! `CONNECT <port>\n` and reads `OK <host port>\n`; from then on the stream is a plain
//! byte pipe to the guest listener on `<port>`. Until the agent listens (the guest is still
//! booting) the VMM refuses or closes the connection, so [`connect_stream`] retries until
//! its deadline. [`connect`] wraps that into a tonic [`Channel`] whose reconnects go
//! through the same handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::v1::agent_client::AgentClient;

/// The longest `OK <port>\n` line accepted.
const MAX_REPLY: usize = 32;
/// The longest a detached, unanswered attempt keeps its socket open.
const ORPHAN_LIMIT: Duration = Duration::from_secs(600);
/// Pause after a refused attempt.
const RETRY_DELAY: Duration = Duration::from_millis(20);
/// How long a reconnect of an established channel keeps retrying.
const RECONNECT_WINDOW: Duration = Duration::from_secs(5);

/// Errors from reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Failed to connect to {path} (port {port}) before the deadline: {last}")]
    Deadline {
        path: PathBuf,
        port: u32,
        last: String,
    },
    #[error("Failed to create the gRPC channel")]
    Channel(#[source] tonic::transport::Error),
}

/// Connects to `port` in the guest through the hybrid-vsock socket at `path`, retrying
/// until `deadline`. Returns the stream positioned just after the `OK` line.
///
/// One attempt at a time, and an attempt is never abandoned while its `CONNECT` is
/// unanswered: vhost-device-vsock 0.3 writes the `OK` line with `unwrap()` and its vring
/// worker dies (the VM's vsock goes dead) if the host socket was closed meanwhile. So a
/// refused attempt (EOF: nobody listens yet) is retried, a silent one is waited for, and
/// one still pending at the deadline is left to finish in the background.
pub async fn connect_stream(
    path: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, ConnectError> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt_path = path.to_owned();
        let mut attempt = tokio::spawn(async move {
            timeout(ORPHAN_LIMIT, handshake(&attempt_path, port))
                .await
                .unwrap_or_else(|_| Err("no reply to CONNECT".to_owned()))
        });
        let last = tokio::select! {
            done = &mut attempt => match done {
                Ok(Ok(stream)) => {
                    tracing::debug!(path = %path.display(), port, attempts, "hybrid vsock connected");
                    return Ok(stream);
                }
                Ok(Err(e)) => e,
                Err(e) => format!("attempt task failed: {e}"),
            },
            // Dropping the JoinHandle detaches the attempt; it closes its socket only once
            // answered (or after ORPHAN_LIMIT).
            () = tokio::time::sleep_until(deadline) => "no reply to CONNECT".to_owned(),
        };
        if Instant::now() + RETRY_DELAY >= deadline {
            return Err(ConnectError::Deadline {
                path: path.to_owned(),
                port,
                last: format!("{last} (after {attempts} attempts)"),
            });
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn handshake(path: &Path, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Byte by byte: whatever follows the newline belongs to the guest's stream.
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("read reply: {e}"))?;
        if byte == b'\n' {
            break;
        }
        if line.len() >= MAX_REPLY {
            return Err("reply line too long".to_owned());
        }
        line.push(byte);
    }
    parse_ok(&line)?;
    Ok(stream)
}

/// Checks an `OK <port>` reply (without the newline).
fn parse_ok(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "reply is not UTF-8".to_owned())?;
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("unexpected reply {text:?}"))
}

/// Opens a gRPC channel to the agent behind the hybrid-vsock socket `path`, waiting until
/// `deadline` for the guest to start listening. Later reconnects retry for a few seconds.
pub async fn connect(
    path: &Path,
    port: u32,
    deadline: Instant,
) -> Result<AgentClient<Channel>, ConnectError> {
    // Wait for the agent once, so a booting guest is not an error; that stream becomes
    // the channel's first connection.
    let first = Arc::new(Mutex::new(Some(
        connect_stream(path, port, deadline).await?,
    )));
    let path = path.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let first = first.clone();
        async move {
            let ready = first.lock().unwrap_or_else(PoisonError::into_inner).take();
            let stream = match ready {
                Some(stream) => stream,
                None => connect_stream(&path, port, Instant::now() + RECONNECT_WINDOW)
                    .await
                    .map_err(std::io::Error::other)?,
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by the API but never resolved: the connector ignores it.
    let channel = Endpoint::from_static("http://hull-agent.vsock")
        .connect_with_connector(connector)
        .await
        .map_err(ConnectError::Channel)?;
    Ok(AgentClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn parses_ok_lines() {
        assert_eq!(parse_ok(b"OK 1073741824"), Ok(1_073_741_824));
        assert!(parse_ok(b"ERR").is_err());
        assert!(parse_ok(b"OK x").is_err());
        assert!(parse_ok(&[0xff, 0xfe]).is_err());
    }

    /// A fake VMM socket: refuses the first connection (closes it), then answers OK and
    /// echoes. The helper must retry and hand back a stream that carries the payload.
    #[tokio::test]
    async fn retries_until_ok_and_keeps_payload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("vsock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (first, _) = listener.accept().await.expect("accept");
            drop(first);
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.expect("read connect");
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 5555\nhello").await.expect("write");
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = connect_stream(&sock, 1024, deadline)
            .await
            .expect("connect");
        let mut payload = [0u8; 5];
        stream.read_exact(&mut payload).await.expect("payload");
        assert_eq!(&payload, b"hello");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("missing");
        let deadline = Instant::now() + Duration::from_millis(200);
        let err = connect_stream(&sock, 1024, deadline)
            .await
            .expect_err("must fail");
        assert!(matches!(err, ConnectError::Deadline { .. }), "{err}");
    }
}
