//! Clients other than kubelet (issue 15): gRPC clients that send the socket path as the
//! HTTP/2 `:authority` (Python's grpcio at its defaults, grpc-java, older grpcurl and
//! crictl) are served, and an error that quotes a huge input still fits the 8 KiB of
//! metadata such clients accept.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Hulld;

fn hulld() -> Hulld {
    let mut hulld = Hulld::configure("");
    hulld.write_cni_config();
    hulld.start();
    hulld
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What hulld answered on stream 1: the RST_STREAM code, or the header fields and data.
#[derive(Debug, Default)]
struct Answer {
    reset: Option<u32>,
    headers: Vec<(String, String)>,
    data: Vec<u8>,
}

/// One gRPC call by hand over a raw HTTP/2 connection, with `authority` as `:authority`.
fn raw_call(socket: &Path, authority: &str, path: &str, message: &[u8]) -> Answer {
    let mut conn = UnixStream::connect(socket).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut encoder = loona_hpack::Encoder::new();
    let fields: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = encoder.encode(fields);
    let mut grpc = vec![0u8];
    grpc.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
    grpc.extend_from_slice(message);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &grpc));
    conn.write_all(&out).expect("write");

    let mut decoder = loona_hpack::Decoder::new();
    let mut answer = Answer::default();
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head)
            .expect("frame head (hulld closed?)");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).expect("frame payload");
        if kind == 0x4 && flags & 1 == 0 {
            conn.write_all(&frame(0x4, 1, 0, &[]))
                .expect("settings ack");
        }
        if stream != 1 {
            continue;
        }
        match kind {
            0x3 => {
                answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().expect("4")));
                return answer;
            }
            0x1 => {
                for (n, v) in decoder.decode(&payload).expect("hpack") {
                    answer.headers.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            }
            0x0 => answer.data.extend_from_slice(&payload),
            _ => {}
        }
        if flags & 1 != 0 {
            return answer;
        }
    }
}

#[test]
fn any_authority_is_served() {
    let hulld = hulld();
    let socket = hulld.socket.display().to_string();
    // grpc-java and older crictl: the raw path; grpcio (C-core): it percent-encoded.
    for authority in [
        socket.as_str(),
        &socket.replace('/', "%2F"),
        "localhost",
        "",
    ] {
        let a = raw_call(
            &hulld.socket,
            authority,
            "/runtime.v1.RuntimeService/Version",
            b"\x0a\x02v1",
        );
        assert_eq!(a.reset, None, ":authority {authority:?}: stream reset");
        let status = a.headers.iter().find(|(n, _)| n == "grpc-status");
        assert_eq!(
            status.map(|(_, v)| v.as_str()),
            Some("0"),
            ":authority {authority:?}: {a:?}"
        );
        assert!(
            String::from_utf8_lossy(&a.data).contains("hull"),
            "{authority:?}: {a:?}"
        );
    }
}

/// The project's own pinned grpcio (test/tools/grpcio.sh installs it from PyPI).
fn grpcio_python() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../test/tools/grpcio.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run test/tools/grpcio.sh");
    assert!(
        out.status.success(),
        "test/tools/grpcio.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 path")
        .trim()
        .to_owned()
}

#[test]
fn python_grpcio_at_its_defaults() {
    let python = grpcio_python();
    let hulld = hulld();
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test/clients/grpcio_client.py"
    );
    let out = Command::new(&python)
        .arg(client)
        .arg(&hulld.socket)
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json line");
    eprintln!("grpcio client: {result}");
    assert_eq!(result["version"]["ok"], true, "{result}");
    assert_eq!(result["version"]["runtime_name"], "hull", "{result}");
    assert_eq!(result["version"]["version"], "0.1.0", "{result}");
    assert_eq!(result["list_images"]["ok"], true, "{result}");
    // A 1 MiB container id: NOT_FOUND, with a message grpcio's 8 KiB limit lets through.
    let status = &result["container_status_1mib_id"];
    assert_eq!(status["code"], "NOT_FOUND", "{result}");
    assert!(
        status["message_len"].as_u64().expect("len") < 1024,
        "{result}"
    );
}
