//! The streaming server in-process, without a pod: what it answers to malformed,
//! unauthorised and unnegotiable requests (an HTTP status with a body, never a panic or a
//! dropped connection), and the pieces of the protocols that need no agent.

use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::portforward::PortForwardTarget;
use super::remotecommand::{Outcome, ResizeDecoder, TermSize, Version, status_body};
use super::server::negotiate;
use super::{StreamingServer, Target, http, ws};

/// A target whose agent is never dialled (the lazy channel connects on first use).
fn target() -> Target {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    Target::PortForward(PortForwardTarget {
        agent: AgentClient::new(channel),
        sandbox_id: "pod".into(),
    })
}

async fn server() -> Arc<StreamingServer> {
    let s = Arc::new(StreamingServer::bind("127.0.0.1:0").expect("bind"));
    tokio::spawn(Arc::clone(&s).serve());
    s
}

/// Sends raw bytes, returns the whole answer (the server closes after a refusal).
async fn raw(s: &StreamingServer, req: &[u8]) -> String {
    let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
    c.write_all(req).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn path_of(url: &str) -> String {
    url.split_once("//")
        .and_then(|(_, r)| r.split_once('/'))
        .map(|(_, p)| format!("/{p}"))
        .expect("path")
}

#[tokio::test]
async fn unknown_used_or_mismatched_tokens_are_404() {
    let s = server().await;
    let a = raw(&s, b"POST /exec/nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    assert!(
        a.contains("unknown, used or expired streaming token"),
        "{a}"
    );
    // A port-forward token used on the exec path is refused, and used up.
    let url = s.url_for(target()).expect("url");
    let p = path_of(&url).replace("/portforward/", "/exec/");
    let a = raw(&s, format!("POST {p} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    let a = raw(
        &s,
        format!("POST {} HTTP/1.1\r\n\r\n", path_of(&url)).as_bytes(),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    let a = raw(&s, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
}

#[tokio::test]
async fn malformed_requests_get_an_answer() {
    let s = server().await;
    let a = raw(&s, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    let a = raw(&s, b"DELETE /exec/x HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 405"), "{a}");
    let mut big = b"GET /exec/x HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "y".repeat(10)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let a = raw(&s, &big).await;
    assert!(a.starts_with("HTTP/1.1 431"), "{a}");
    // A client that connects and goes away costs nothing and breaks nothing.
    drop(TcpStream::connect(s.local_addr()).await.expect("connect"));
    let a = raw(&s, b"POST /exec/nope HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
}

#[tokio::test]
async fn requests_that_do_not_upgrade_or_share_no_protocol_are_refused() {
    let s = server().await;
    let p = path_of(&s.url_for(target()).expect("url"));
    let a = raw(&s, format!("POST {p} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    assert!(a.contains("missing upgrade headers"), "{a}");

    let p = path_of(&s.url_for(target()).expect("url"));
    let req = format!(
        "POST {p} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    );
    let a = raw(&s, req.as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    assert!(
        a.contains("X-Accepted-Stream-Protocol-Versions: portforward.k8s.io"),
        "{a}"
    );
    assert!(a.contains("unable to negotiate protocol"), "{a}");

    let p = path_of(&s.url_for(target()).expect("url"));
    let req = format!(
        "GET {p} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    );
    let a = raw(&s, req.as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    assert!(a.contains("SPDY/3.1+portforward.k8s.io"), "{a}");

    let p = path_of(&s.url_for(target()).expect("url"));
    let req = format!("GET {p} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let a = raw(&s, req.as_bytes()).await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    assert!(a.contains("Sec-WebSocket-Key"), "{a}");
}

#[test]
fn negotiation_follows_the_client_order() {
    let server = super::remotecommand::SPDY_PROTOCOLS;
    let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        negotiate(&c(&["v4.channel.k8s.io", "v3.channel.k8s.io"]), server).as_deref(),
        Ok("v4.channel.k8s.io")
    );
    assert_eq!(
        negotiate(&c(&["v9", "channel.k8s.io"]), server).as_deref(),
        Ok("channel.k8s.io")
    );
    assert_eq!(negotiate(&[], server).as_deref(), Ok(""));
    assert!(negotiate(&c(&["v9"]), server).is_err());
}

#[test]
fn request_heads_parse_with_repeated_and_listed_headers() {
    let h = http::parse_head(
        b"POST /exec/abc?x=1 HTTP/1.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nx-stream-protocol-version: v3.channel.k8s.io, v2.channel.k8s.io\r\nConnection: keep-alive, Upgrade\r\nUpgrade: spdy/3.1\r\n\r\n",
    )
    .expect("parse");
    assert_eq!(h.path, "/exec/abc");
    assert_eq!(
        h.values("X-Stream-Protocol-Version"),
        [
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io"
        ]
    );
    assert!(h.upgrades_to("SPDY/3.1"));
    assert!(!h.upgrades_to("websocket"));
}

#[test]
fn v4_status_carries_the_exit_code_and_v1_only_failures() {
    let cmd = vec!["sh".to_string()];
    let ok: serde_json::Value =
        serde_json::from_slice(&status_body(Version(4), &Outcome::Exited(0), &cmd).expect("body"))
            .expect("json");
    assert_eq!(ok, serde_json::json!({"metadata": {}, "status": "Success"}));
    let bad: serde_json::Value =
        serde_json::from_slice(&status_body(Version(5), &Outcome::Exited(42), &cmd).expect("body"))
            .expect("json");
    assert_eq!(bad["reason"], "NonZeroExitCode");
    assert_eq!(
        bad["details"]["causes"][0],
        serde_json::json!({"reason": "ExitCode", "message": "42"})
    );
    assert!(status_body(Version(2), &Outcome::Exited(0), &cmd).is_none());
    let v1 = status_body(Version(1), &Outcome::Failed("boom".into()), &cmd).expect("body");
    assert_eq!(v1, b"boom");
}

#[test]
fn resize_events_split_across_frames() {
    let mut d = ResizeDecoder::default();
    assert!(d.push(br#"{"Width":80,"#).is_empty());
    let got = d.push(br#""Height":24}{"Width":100,"Height":30}{"Wid"#);
    let size = |width, height| TermSize { width, height };
    assert_eq!(got, [size(80, 24), size(100, 30)]);
    assert_eq!(d.push(br#"th":1,"Height":2}"#), [size(1, 2)]);
    // Garbage is dropped, decoding goes on with the next object.
    assert!(d.push(b"}}not json").is_empty());
    assert_eq!(d.push(br#"{"Width":5,"Height":6}"#), [size(5, 6)]);
}

#[test]
fn websocket_accept_key_is_rfc6455s() {
    assert_eq!(
        ws::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[tokio::test]
async fn websocket_frames_masked_fragmented_and_bounded() {
    // A masked text frame split in two fragments, a ping, then a close.
    let mask = [1u8, 2, 3, 4];
    let masked = |b: &[u8]| {
        b.iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i % 4])
            .collect::<Vec<_>>()
    };
    let mut wire = vec![0x01, 0x80 | 3];
    wire.extend_from_slice(&mask);
    wire.extend(masked(b"hel"));
    wire.extend_from_slice(&[0x80, 0x80 | 2]);
    wire.extend_from_slice(&mask);
    wire.extend(masked(b"lo"));
    wire.extend_from_slice(&[0x89, 0]);
    wire.extend_from_slice(&[0x88, 0]);
    let mut r = &wire[..];
    assert_eq!(
        ws::read_message(&mut r).await.expect("text"),
        ws::Message::Text(b"hello".to_vec())
    );
    assert_eq!(
        ws::read_message(&mut r).await.expect("ping"),
        ws::Message::Ping(Vec::new())
    );
    assert_eq!(
        ws::read_message(&mut r).await.expect("close"),
        ws::Message::Close
    );
    // A frame claiming 2^40 bytes is refused before allocating.
    let huge = [0x82u8, 127, 0, 0, 1, 0, 0, 0, 0, 0];
    assert!(matches!(
        ws::read_message(&mut &huge[..]).await,
        Err(ws::WsError::TooLarge(_))
    ));
    // Server frames: unmasked, with the 16-bit length form past 125 bytes.
    let f = ws::encode_frame(2, &[7u8; 300]);
    assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
}
