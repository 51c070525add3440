//! Port forwarding over SPDY (`portforward.k8s.io`, kubelet's protocol): for every
//! forwarded connection the client opens an `error` and a `data` stream carrying the same
//! `port` and `requestID` headers; the data stream is relayed to `localhost:<port>` inside
//! the pod through the agent's PortForward call, and a failure is written as text on the
//! error stream.

use std::collections::HashMap;

use hull_agent_api::AgentClient;
use hull_agent_api::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::spdy::conn::{Event, Sender};
use super::spdy::frame::{Headers, header};

/// The only port-forward protocol over SPDY.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The pod to forward to.
#[derive(Clone, Debug)]
pub struct PortForwardTarget {
    pub agent: AgentClient<Channel>,
    pub sandbox_id: String,
}

#[derive(Default)]
struct Pair {
    data: Option<u32>,
    error: Option<u32>,
    port: Option<u16>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    rx: Option<mpsc::Receiver<Vec<u8>>>,
    task: Option<JoinHandle<()>>,
}

/// Kubelet's request id rule: the header, or for clients that send none, the error
/// stream's id (the data stream is the one opened just after it).
fn request_id(id: u32, headers: &Headers) -> Option<String> {
    if let Some(r) = header(headers, "requestid").filter(|r| !r.is_empty()) {
        return Some(r.to_owned());
    }
    match header(headers, "streamtype")? {
        "error" => Some(id.to_string()),
        "data" => Some(id.saturating_sub(2).to_string()),
        _ => None,
    }
}

/// Serves one port-forward connection until the client closes it.
pub async fn run(t: PortForwardTarget, mut events: mpsc::Receiver<Event>, sender: Sender) {
    tracing::info!(sandbox = %t.sandbox_id, "port-forward connection");
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut by_stream: HashMap<u32, String> = HashMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Stream { id, headers, .. } => {
                let Some(rid) = request_id(id, &headers) else {
                    let _ = sender
                        .reset(id, super::spdy::frame::RST_PROTOCOL_ERROR)
                        .await;
                    continue;
                };
                let pair = pairs.entry(rid.clone()).or_default();
                if pair.tx.is_none() && pair.task.is_none() {
                    let (tx, rx) = mpsc::channel(16);
                    pair.tx = Some(tx);
                    pair.rx = Some(rx);
                }
                match header(&headers, "streamtype") {
                    Some("data") => pair.data = Some(id),
                    Some("error") => pair.error = Some(id),
                    _ => {
                        let _ = sender
                            .reset(id, super::spdy::frame::RST_PROTOCOL_ERROR)
                            .await;
                        continue;
                    }
                }
                by_stream.insert(id, rid.clone());
                let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                pair.port = pair.port.or(port);
                // Both streams of the request are there: start relaying.
                if let (Some(data), Some(error)) = (pair.data, pair.error)
                    && let Some(rx) = pair.rx.take()
                {
                    pair.task = Some(tokio::spawn(forward(
                        t.clone(),
                        sender.clone(),
                        data,
                        error,
                        pair.port,
                        rx,
                    )));
                }
            }
            Event::Data { id, data, fin } => {
                let Some(pair) = by_stream.get(&id).and_then(|r| pairs.get_mut(r)) else {
                    continue;
                };
                if pair.data != Some(id) {
                    continue;
                }
                if let Some(tx) = &pair.tx
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    pair.tx = None;
                }
                if fin {
                    pair.tx = None;
                }
            }
            Event::Reset { id } => {
                if let Some(rid) = by_stream.remove(&id)
                    && let Some(pair) = pairs.get_mut(&rid)
                {
                    pair.tx = None;
                    if pair.data == Some(id)
                        && let Some(task) = pair.task.take()
                    {
                        task.abort();
                    }
                }
            }
        }
        pairs.retain(|_, p| p.task.as_ref().is_none_or(|t| !t.is_finished()) || p.tx.is_some());
    }
    for (_, p) in pairs {
        if let Some(t) = p.task {
            t.abort();
        }
    }
    sender.close().await;
    tracing::info!(sandbox = %t.sandbox_id, "port-forward connection closed");
}

async fn forward(
    t: PortForwardTarget,
    sender: Sender,
    data_id: u32,
    error_id: u32,
    port: Option<u16>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let Some(port) = port.filter(|p| *p > 0) else {
        let msg = "invalid port: the port header must be a number in 1-65535";
        let _ = sender.data(error_id, msg.as_bytes(), true).await;
        let _ = sender.data(data_id, &[], true).await;
        return;
    };
    let (tx, req_rx) = mpsc::channel::<pb::PortForwardChunk>(16);
    let first = pb::PortForwardChunk {
        port: u32::from(port),
        data: Vec::new(),
    };
    let _ = tx.send(first).await;
    let mut agent = t.agent.clone();
    let call = agent
        .port_forward(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await;
    let mut replies = match call {
        Ok(r) => r.into_inner(),
        Err(e) => {
            fail(&sender, &t, port, error_id, data_id, e.message()).await;
            return;
        }
    };
    tracing::debug!(sandbox = %t.sandbox_id, port, "forwarding");
    let upstream = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            let chunk = pb::PortForwardChunk { port: 0, data };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        // Dropping tx half-closes the pod side.
    });
    loop {
        match replies.message().await {
            Ok(Some(chunk)) => {
                if sender.data(data_id, &chunk.data, false).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                fail(&sender, &t, port, error_id, data_id, e.message()).await;
                upstream.abort();
                return;
            }
        }
    }
    upstream.abort();
    let _ = sender.data(data_id, &[], true).await;
    let _ = sender.data(error_id, &[], true).await;
}

async fn fail(
    sender: &Sender,
    t: &PortForwardTarget,
    port: u16,
    error_id: u32,
    data_id: u32,
    why: &str,
) {
    let msg = format!(
        "error forwarding port {port} to pod {}: {why}",
        t.sandbox_id
    );
    tracing::info!(sandbox = %t.sandbox_id, port, error = why, "port-forward failed");
    let _ = sender.data(error_id, msg.as_bytes(), true).await;
    let _ = sender.data(data_id, &[], true).await;
}
