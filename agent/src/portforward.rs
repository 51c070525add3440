//! `PortForward`: one TCP connection from the host to `localhost:<port>` in the guest, relayed
//! over a bidirectional gRPC stream (hulld's streaming server speaks the Kubernetes
//! port-forward protocols on the host side).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hull_agent_api::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

const CHUNK: usize = 32 * 1024;

/// Validates the first message, connects, and starts the two relay tasks. Returns the
/// receiver the reply stream reads from.
pub async fn start(
    mut inbound: Streaming<pb::PortForwardChunk>,
) -> Result<mpsc::Receiver<Result<pb::PortForwardChunk, Status>>, Status> {
    let first = inbound
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty port-forward stream"))??;
    let port = u16::try_from(first.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("port {} is not 1-65535", first.port)))?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let stream = match TcpStream::connect(v4).await {
        Ok(s) => s,
        Err(_) => TcpStream::connect(v6)
            .await
            .map_err(|e| Status::unavailable(format!("connect to localhost:{port}: {e}")))?,
    };
    tracing::debug!(port, "port-forward connected");
    let (mut read_half, mut write_half) = stream.into_split();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut pending = Some(first.data);
        loop {
            let data = match pending.take() {
                Some(d) => d,
                None => match inbound.next().await {
                    Some(Ok(chunk)) => chunk.data,
                    Some(Err(_)) | None => break,
                },
            };
            if !data.is_empty() && write_half.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = pb::PortForwardChunk {
                        port: 0,
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(rx)
}
