//! The host-mode agent's socket: a unix socket answering the hybrid-vsock handshake
//! (`CONNECT <port>\n` → `OK <port>\n`) before the gRPC bytes, as a VMM's vsock socket does,
//! so hulld's one client reaches VM pods and host pods alike.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hull_agent_api::AGENT_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The longest `CONNECT <port>` line read.
const MAX_LINE: usize = 32;
/// How long a client has to send its `CONNECT` line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections handed to the server but not yet taken.
const BACKLOG: usize = 16;

/// Binds `path` (0600; a stale file is replaced) and yields each connection once its
/// handshake asked for the agent's port. Connections that ask for another port, or
/// nothing, are closed.
pub fn incoming(path: &Path) -> std::io::Result<ReceiverStream<std::io::Result<UnixStream>>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "handshake refused"),
                    Err(_) => tracing::debug!("handshake timed out"),
                }
            });
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Reads `CONNECT <port>\n` byte by byte (what follows is gRPC), answers `OK <port>\n`.
async fn handshake(mut s: UnixStream) -> std::io::Result<UnixStream> {
    let mut line = Vec::with_capacity(MAX_LINE);
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(std::io::Error::other("CONNECT line too long"));
        }
        line.push(b);
    }
    let port = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|p| p.trim().parse::<u32>().ok());
    if port != Some(AGENT_VSOCK_PORT) {
        return Err(std::io::Error::other(format!(
            "unexpected handshake {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.write_all(format!("OK {AGENT_VSOCK_PORT}\n").as_bytes())
        .await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn answers_the_hybrid_vsock_handshake_and_refuses_other_ports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let mut incoming = incoming(&sock).expect("bind");
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another port: closed without an answer.
        let mut other = UnixStream::connect(&sock).await.expect("connect");
        other.write_all(b"CONNECT 99\n").await.expect("write");
        let mut buf = Vec::new();
        other.read_to_end(&mut buf).await.expect("read");
        assert!(buf.is_empty());
        // The agent's port, through hull-agent-api's own client code.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let client = tokio::spawn(async move {
            let mut s = hull_agent_api::connect_stream(&sock, AGENT_VSOCK_PORT, deadline)
                .await
                .expect("handshake");
            s.write_all(b"ping").await.expect("write");
        });
        let mut server = incoming.next().await.expect("one").expect("ok");
        let mut ping = [0u8; 4];
        server.read_exact(&mut ping).await.expect("read");
        assert_eq!(&ping, b"ping");
        client.await.expect("client");
    }
}
