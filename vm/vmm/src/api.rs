//! The control API: a unix socket speaking one JSON request per connection, one line each
//! way. Requests: `{"op":"status"}`, `{"op":"metrics"}`, `{"op":"shutdown"}`, and
//! `{"op":"snapshot","dir":"/abs/dir"}`: stop the VM and save it into `dir` (an existing,
//! empty directory) as a template; hull-vmm exits with code 7 once the snapshot is written.
//! The messages themselves are in `hull_vmm_api::control`, shared with the hull backend.
//!
//! ```text
//! $ echo '{"op":"metrics"}' | socat - UNIX-CONNECT:/run/hull/sandboxes/<id>/vmm.sock
//! {"exits":18234,"io_exits":17001,"mmio_exits":1203,"unhandled":12,"rss_kb":40312,...}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hull_vmm_api::control::{MAX_REQUEST_BYTES, MetricsReply, Request, StatusReply};

use super::devices::net::NetCounters;
use super::exit::{ExitReason, ExitSignal};
use super::vcpu::VcpuMetrics;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors from starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Failed to bind the API socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to start the API thread")]
    SpawnThread(#[source] std::io::Error),
}

/// What the API reports, shared with the VMM.
#[derive(Debug)]
pub struct VmmInfo {
    pub id: String,
    pub started: Instant,
    pub memory_mib: u64,
    pub vcpus: Vec<Arc<VcpuMetrics>>,
    /// The virtio-net counters, when the VM has a NIC.
    pub net: Option<Arc<NetCounters>>,
    /// Where a `snapshot` request asked the VM to be saved.
    pub snapshot_dir: std::sync::Mutex<Option<PathBuf>>,
}

/// Sum `Rss:` of the guest-RAM mappings and of everything else in a smaps text.
pub fn split_rss(smaps: &str) -> (u64, u64) {
    let (mut guest, mut other, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest = line.contains("hull-guest-ram");
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if in_guest {
                guest += kb;
            } else {
                other += kb;
            }
        }
    }
    (guest, other)
}

/// Exit counters summed over the vCPUs (no syscalls: safe under any filter).
pub fn exit_counters(info: &VmmInfo) -> MetricsReply {
    let mut m = MetricsReply::default();
    for v in &info.vcpus {
        m.exits += v.exits.load(Ordering::Relaxed);
        m.io_exits += v.io_exits.load(Ordering::Relaxed);
        m.mmio_exits += v.mmio_exits.load(Ordering::Relaxed);
        m.unhandled += v.unhandled.load(Ordering::Relaxed);
    }
    m.net = info.net.as_ref().map(|n| n.snapshot());
    m
}

/// Exit counters plus RSS (reads /proc/self/smaps).
pub fn collect_metrics(info: &VmmInfo) -> MetricsReply {
    let mut m = exit_counters(info);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (guest, other) = split_rss(&smaps);
    m.guest_ram_rss_kb = guest;
    m.vmm_rss_kb = other;
    m.rss_kb = guest + other;
    m
}

/// Answer one request line.
pub fn respond(line: &str, info: &VmmInfo, exit: &ExitSignal) -> String {
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => serde_json::to_string(&StatusReply {
            id: info.id.clone(),
            state: if exit.is_stopping() {
                "stopping"
            } else {
                "running"
            }
            .into(),
            pid: std::process::id(),
            uptime_ms: info.started.elapsed().as_millis() as u64,
            vcpus: info.vcpus.len(),
            memory_mib: info.memory_mib,
        }),
        Ok(Request::Metrics) => serde_json::to_string(&collect_metrics(info)),
        Ok(Request::Shutdown) => {
            exit.stop(ExitReason::ApiShutdown);
            Ok(r#"{"ok":true}"#.to_string())
        }
        Ok(Request::Snapshot { dir }) => Ok(request_snapshot(dir, info, exit)),
        Err(err) => Ok(serde_json::json!({ "error": err.to_string() }).to_string()),
    };
    reply.unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}

/// Record where to save the VM and stop it with [`ExitReason::Snapshotted`] (the main thread
/// saves it once the vCPUs are paused). Refused when the VM is already stopping or `dir` is
/// not an absolute path to an existing directory.
fn request_snapshot(dir: PathBuf, info: &VmmInfo, exit: &ExitSignal) -> String {
    if !dir.is_absolute() {
        return serde_json::json!({ "error": "snapshot dir must be an absolute path" }).to_string();
    }
    if exit.is_stopping() {
        return serde_json::json!({ "error": "the VM is already stopping" }).to_string();
    }
    let mut slot = info.snapshot_dir.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Some(dir);
    drop(slot);
    exit.stop(ExitReason::Snapshotted);
    r#"{"ok":true}"#.to_string()
}

fn serve_one(stream: UnixStream, info: &VmmInfo, exit: &ExitSignal) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_REQUEST_BYTES)).read_line(&mut line)?;
    let mut out = respond(&line, info, exit);
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// Bind `path` and answer requests on a thread named `api` (after `on_start`, which
/// installs its seccomp filter).
pub fn spawn<F>(
    path: &Path,
    info: Arc<VmmInfo>,
    exit: Arc<ExitSignal>,
    on_start: F,
) -> Result<std::thread::JoinHandle<()>, ApiError>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.display().to_string(),
        source,
    })?;
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Err(err) = on_start() {
                tracing::error!(error = %err, "API thread setup failed");
                exit.stop(ExitReason::VmmError);
                return;
            }
            tracing::info!(path = %path.display(), "control API listening");
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(err) = serve_one(s, &info, &exit) {
                            tracing::debug!(error = %err, "API request failed");
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "API accept failed"),
                }
            }
        })
        .map_err(ApiError::SpawnThread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_vmm_api::control::NetStats;
    use std::io::Read;

    fn info() -> Arc<VmmInfo> {
        let v = Arc::new(VcpuMetrics::default());
        v.exits.store(10, Ordering::Relaxed);
        v.io_exits.store(7, Ordering::Relaxed);
        Arc::new(VmmInfo {
            id: "pod-1".into(),
            started: Instant::now(),
            memory_mib: 128,
            vcpus: vec![v.clone(), v],
            net: None,
            snapshot_dir: Default::default(),
        })
    }

    #[test]
    fn smaps_split() {
        let smaps = "7f00-7f10 rw-s 00000000 00:01 5 /memfd:hull-guest-ram (deleted)\n\
                     Size: 1024 kB\nRss:     300 kB\n\
                     5600-5700 r-xp 00000000 08:01 9 /usr/bin/hull-vmm\nRss: 2000 kB\n\
                     7ffc-7ffd rw-p 00000000 00:00 0 [stack]\nRss: 12 kB\n";
        assert_eq!(split_rss(smaps), (300, 2012));
    }

    #[test]
    fn requests_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let exit = Arc::new(ExitSignal::new().unwrap());
        spawn(&path, info(), exit.clone(), || Ok(())).unwrap();
        let ask = |req: &str| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let st: StatusReply = serde_json::from_str(&ask("{\"op\":\"status\"}\n")).unwrap();
        assert_eq!(
            (st.id.as_str(), st.state.as_str(), st.vcpus),
            ("pod-1", "running", 2)
        );
        let m: MetricsReply = serde_json::from_str(&ask("{\"op\":\"metrics\"}\n")).unwrap();
        assert_eq!((m.exits, m.io_exits), (20, 14));
        assert!(m.vmm_rss_kb > 0);
        assert!(ask("{\"op\":\"reboot\"}\n").contains("error"));
        assert!(ask("not json\n").contains("error"));
        assert!(!exit.is_stopping());
        assert_eq!(ask("{\"op\":\"shutdown\"}\n").trim(), r#"{"ok":true}"#);
        assert_eq!(exit.reason(), Some(ExitReason::ApiShutdown));
    }

    #[test]
    fn a_snapshot_request_records_the_dir_and_stops_the_vm() {
        let info = info();
        let exit = ExitSignal::new().unwrap();
        let reply = respond(r#"{"op":"snapshot","dir":"relative"}"#, &info, &exit);
        assert!(reply.contains("absolute"), "{reply}");
        assert!(!exit.is_stopping());
        let reply = respond(r#"{"op":"snapshot","dir":"/tmp/t1"}"#, &info, &exit);
        assert_eq!(reply, r#"{"ok":true}"#);
        assert_eq!(exit.reason(), Some(ExitReason::Snapshotted));
        let dir = info.snapshot_dir.lock().unwrap().clone();
        assert_eq!(dir, Some(PathBuf::from("/tmp/t1")));
        let again = respond(r#"{"op":"snapshot","dir":"/tmp/t2"}"#, &info, &exit);
        assert!(again.contains("already stopping"), "{again}");
    }

    #[test]
    fn metrics_carry_net_counters_only_with_a_nic() {
        let without = serde_json::to_string(&exit_counters(&info())).unwrap();
        assert!(!without.contains("net"), "{without}");
        let mut with = Arc::try_unwrap(info()).unwrap();
        with.net = Some(Arc::new(NetCounters::default()));
        let m = exit_counters(&with);
        assert_eq!(m.net, Some(NetStats::default()));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""net":{"rx_frames":0,"#), "{json}");
        let back: MetricsReply = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
