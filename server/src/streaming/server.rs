//! Accepting connections, routing `/<kind>/<token>`, and the upgrade handshakes: SPDY/3.1
//! with `X-Stream-Protocol-Version` negotiation, or WebSocket with a subprotocol.
//! Refusals are plain-text HTTP answers: 404 for an unknown, used or expired token, 400
//! for a request that does not upgrade, 403 when no protocol is shared.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::http::{self, Head, HeadError};
use super::portforward::{self, PORT_FORWARD_PROTOCOL};
use super::remotecommand::{self, SPDY_PROTOCOLS, Version, Wanted};
use super::ws::{self, WS_PROTOCOLS, WsSender};
use super::{StreamingServer, Target, exec, spdy};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket subprotocol tunnelling SPDY port-forward.
const WS_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

pub(super) async fn accept_loop(server: Arc<StreamingServer>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    tracing::debug!(%peer, "streaming connection");
                    handle(server, stream).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Reader = BufReader<OwnedReadHalf>;

async fn handle(server: Arc<StreamingServer>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, http::read_head(&mut r)).await {
        Err(_) => return refuse(&mut w, 408, "timed out reading the request").await,
        Ok(Err(HeadError::TooLarge)) => return refuse(&mut w, 431, "request head too large").await,
        Ok(Err(HeadError::Eof | HeadError::Io(_))) => return,
        Ok(Err(e)) => return refuse(&mut w, 400, &e.to_string()).await,
        Ok(Ok(h)) => h,
    };
    if head.method != "GET" && head.method != "POST" {
        return refuse(&mut w, 405, "only GET and POST upgrade to a stream").await;
    }
    let mut parts = head.path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return refuse(&mut w, 404, &format!("unknown path {:?}", head.path)).await;
    }
    let target = match server.consume(token) {
        Some(t) if t.kind() == kind => t,
        _ => {
            tracing::info!(
                kind,
                "streaming request with an unknown, used or expired token"
            );
            return refuse(&mut w, 404, "unknown, used or expired streaming token").await;
        }
    };
    match target {
        Target::PortForward(t) => port_forward(head, r, w, t).await,
        Target::Exec(t) => {
            let wanted = t.wanted;
            remote_command(head, r, w, wanted, Command::Exec(t)).await
        }
        Target::Attach(t) => {
            let wanted = t.wanted;
            remote_command(head, r, w, wanted, Command::Attach(t)).await
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, code: u16, body: &str) {
    let _ = http::respond(w, code, &[], body).await;
}

enum Command {
    Exec(exec::ExecTarget),
    Attach(exec::AttachTarget),
}

impl Command {
    async fn run(self, s: remotecommand::Session) {
        match self {
            Self::Exec(t) => exec::run_exec(t, s).await,
            Self::Attach(t) => exec::run_attach(t, s).await,
        }
    }
}

/// kubelet's `httpstream.Handshake`: the first protocol of the client's list that the
/// server supports; no list at all means the oldest protocol (`Ok("")`).
pub fn negotiate(client: &[String], server: &[&str]) -> Result<String, String> {
    if client.is_empty() {
        return Ok(String::new());
    }
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}"
            )
        })
}

async fn remote_command(
    head: Head,
    r: Reader,
    mut w: OwnedWriteHalf,
    wanted: Wanted,
    cmd: Command,
) {
    if head.upgrades_to("websocket") {
        let Some(key) = head.get("sec-websocket-key").map(str::to_owned) else {
            return refuse(&mut w, 400, "unable to upgrade: missing Sec-WebSocket-Key").await;
        };
        let offered = head.values("sec-websocket-protocol");
        let chosen = if offered.is_empty() {
            "channel.k8s.io".to_owned()
        } else {
            match negotiate(&offered, WS_PROTOCOLS) {
                Ok(p) => p,
                Err(msg) => return refuse(&mut w, 403, &msg).await,
            }
        };
        let mut extra = vec![("Sec-WebSocket-Accept", ws::accept_key(&key))];
        if !offered.is_empty() {
            extra.push(("Sec-WebSocket-Protocol", chosen.clone()));
        }
        if http::switch(&mut w, "websocket", &extra).await.is_err() {
            return;
        }
        let base64 = chosen == "base64.channel.k8s.io";
        let version = Version::from_name(&chosen).unwrap_or(Version(1));
        tracing::info!(protocol = %chosen, "exec/attach over WebSocket");
        let sender = WsSender::start(w, base64);
        let session = ws::ws_session(r, sender, version, wanted).await;
        return cmd.run(session).await;
    }
    if !head.upgrades_to("SPDY/3.1") {
        return refuse(
            &mut w,
            400,
            "unable to upgrade: missing upgrade headers in request",
        )
        .await;
    }
    let offered = head.values("x-stream-protocol-version");
    let chosen = match negotiate(&offered, SPDY_PROTOCOLS) {
        Ok(p) => p,
        Err(msg) => {
            let accepted = (
                "X-Accepted-Stream-Protocol-Versions",
                SPDY_PROTOCOLS.join(", "),
            );
            let _ = http::respond(&mut w, 403, &[accepted], &msg).await;
            return;
        }
    };
    let mut extra = Vec::new();
    if !chosen.is_empty() {
        extra.push(("X-Stream-Protocol-Version", chosen.clone()));
    }
    if http::switch(&mut w, "SPDY/3.1", &extra).await.is_err() {
        return;
    }
    let version = Version::from_name(&chosen).unwrap_or(Version(1));
    tracing::info!(protocol = %chosen, "exec/attach over SPDY");
    let (events, sender) = spdy::conn::start(r, w);
    match remotecommand::spdy_session(events, sender.clone(), version, wanted).await {
        Ok(session) => cmd.run(session).await,
        Err(e) => {
            tracing::info!(error = %e, "exec/attach client did not set up its streams");
            sender.close().await;
        }
    }
}

async fn port_forward(
    head: Head,
    r: Reader,
    mut w: OwnedWriteHalf,
    t: portforward::PortForwardTarget,
) {
    if head.upgrades_to("websocket") {
        let Some(key) = head.get("sec-websocket-key").map(str::to_owned) else {
            return refuse(&mut w, 400, "unable to upgrade: missing Sec-WebSocket-Key").await;
        };
        let offered = head.values("sec-websocket-protocol");
        if !offered.iter().any(|p| p == WS_PORT_FORWARD) {
            let msg = format!(
                "unable to upgrade: port-forward over WebSocket needs subprotocol {WS_PORT_FORWARD}, client offered {offered:?}"
            );
            return refuse(&mut w, 403, &msg).await;
        }
        let extra = [
            ("Sec-WebSocket-Accept", ws::accept_key(&key)),
            ("Sec-WebSocket-Protocol", WS_PORT_FORWARD.to_owned()),
        ];
        if http::switch(&mut w, "websocket", &extra).await.is_err() {
            return;
        }
        tracing::info!("port-forward: SPDY over WebSocket");
        let (tr, tw) = ws::tunnel(r, w);
        let (events, sender) = spdy::conn::start(tr, tw);
        return portforward::run(t, events, sender).await;
    }
    if !head.upgrades_to("SPDY/3.1") {
        return refuse(
            &mut w,
            400,
            "unable to upgrade: missing upgrade headers in request",
        )
        .await;
    }
    let offered = head.values("x-stream-protocol-version");
    if let Err(msg) = negotiate(&offered, &[PORT_FORWARD_PROTOCOL]) {
        let accepted = (
            "X-Accepted-Stream-Protocol-Versions",
            PORT_FORWARD_PROTOCOL.to_owned(),
        );
        let _ = http::respond(&mut w, 403, &[accepted], &msg).await;
        return;
    }
    let extra = [(
        "X-Stream-Protocol-Version",
        PORT_FORWARD_PROTOCOL.to_owned(),
    )];
    if http::switch(&mut w, "SPDY/3.1", &extra).await.is_err() {
        return;
    }
    let (events, sender) = spdy::conn::start(r, w);
    portforward::run(t, events, sender).await;
}
