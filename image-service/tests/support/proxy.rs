//! A loopback TCP proxy in front of the test registry that breaks blob downloads on
//! purpose: the first `cuts` responses for one blob are cut off after a number of
//! bytes, and every request line with its `Range` header is recorded.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request seen by the proxy: its request line and `Range` header, if any.
#[derive(Debug, Clone)]
pub struct Seen {
    pub line: String,
    pub range: Option<String>,
}

struct State {
    upstream: String,
    blob: String,
    cuts: AtomicUsize,
    cut_after: usize,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

/// The running proxy; stops accepting on drop.
pub struct BreakingProxy {
    port: u16,
    state: Arc<State>,
}

impl BreakingProxy {
    /// Proxies to `upstream` (`host:port`); cuts the next `cuts` responses for `blob`
    /// (a digest) after `cut_after` bytes of the response.
    pub fn start(upstream: &str, blob: &str, cuts: usize, cut_after: usize) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = l.local_addr().expect("proxy addr").port();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            blob: blob.to_string(),
            cuts: AtomicUsize::new(cuts),
            cut_after,
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Self { port, state }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets how many more responses for the blob are cut.
    pub fn set_cuts(&self, n: usize) {
        self.state.cuts.store(n, Ordering::SeqCst);
    }

    /// The requests for the blob so far.
    pub fn blob_requests(&self) -> Vec<Seen> {
        let needle = format!("/blobs/{}", self.state.blob);
        let seen = self.state.seen.lock().expect("proxy log");
        seen.iter()
            .filter(|s| s.line.contains(&needle))
            .cloned()
            .collect()
    }
}

impl Drop for BreakingProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request per connection: the request head is forwarded with `Connection: close`,
/// the response relayed until the registry closes (or the cut).
fn serve(mut client: TcpStream, st: &State) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let mut out = format!("{line}\r\n");
    let mut range = None;
    for h in lines.filter(|h| !h.is_empty()) {
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if lower.starts_with("range:") {
            range = Some(h[6..].trim().to_string());
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let is_blob = line.starts_with("GET ") && line.contains(&format!("/blobs/{}", st.blob));
    st.seen
        .lock()
        .expect("proxy log")
        .push(Seen { line, range });
    let cut = is_blob
        && st
            .cuts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let mut up = TcpStream::connect(&st.upstream)?;
    up.write_all(out.as_bytes())?;
    let mut left = if cut { st.cut_after } else { usize::MAX };
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = n.min(left);
        client.write_all(&buf[..n])?;
        left -= n;
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
