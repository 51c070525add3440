//! Talking to a running hull-vmm from the backend: one request on its control API, and the
//! hybrid-vsock handshake that tells a restored guest's agent is listening.

use std::path::Path;
use std::time::{Duration, Instant};

use hull_vmm_api::control::Request;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::Proc;
use crate::hypervisor::{AGENT_VSOCK_PORT, HypervisorError};
use crate::qemu::procs::log_tail;

/// How long one API request or one vsock handshake may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two handshake attempts.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// Longest reply line read.
const MAX_LINE: u64 = 4096;

/// Sends `line` and reads one line back, within [`REQUEST_TIMEOUT`].
async fn exchange(socket: &Path, line: &str) -> std::io::Result<String> {
    let talk = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(s, MAX_LINE));
        reader.read_line(&mut reply).await?;
        Ok(reply.trim_end().to_owned())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, talk)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))?
}

/// One request on hull-vmm's control API (messages: `hull_vmm_api::control`); the reply,
/// parsed.
pub async fn api_request(
    socket: &Path,
    request: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let reply = exchange(socket, &format!("{request}\n"))
        .await
        .map_err(|e| format!("API request on {}: {e}", socket.display()))?;
    serde_json::from_str(&reply).map_err(|e| format!("API reply {reply:?}: {e}"))
}

/// Asks hull-vmm to snapshot the VM into `dir` (which must exist, empty); on `ok` it
/// pauses the guest, writes the snapshot and exits with [`super::EXIT_SNAPSHOTTED`].
pub async fn request_snapshot(api: &Path, dir: &Path) -> Result<(), String> {
    if dir.to_str().is_none() {
        return Err(format!("snapshot dir {} is not UTF-8", dir.display()));
    }
    let req = serde_json::to_value(Request::Snapshot { dir: dir.into() })
        .map_err(|e| format!("snapshot request for {}: {e}", dir.display()))?;
    let reply = api_request(api, &req).await?;
    if reply.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(())
    } else {
        Err(format!("hull-vmm refused the snapshot: {reply}"))
    }
}

/// One hybrid-vsock handshake: `CONNECT <port>\n` answered by `OK ...`. The connection is
/// closed right after (the agent sees a client that went away).
pub async fn vsock_handshake(uds: &Path, port: u32) -> std::io::Result<String> {
    let reply = exchange(uds, &format!("CONNECT {port}\n")).await?;
    if reply.starts_with("OK ") {
        Ok(reply)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("no OK from the guest (got {reply:?})"),
        ))
    }
}

/// Waits until the agent answers the handshake on `uds` (a restored guest: its agent was
/// listening when the template was snapshotted, so no ready line comes). Fails when the
/// VMM exits or `deadline` passes, with the last handshake error.
pub async fn wait_vsock_ready(
    uds: &Path,
    vmm: Option<&Proc>,
    vmm_log: &Path,
    deadline: Instant,
) -> Result<(), HypervisorError> {
    loop {
        let err = match vsock_handshake(uds, AGENT_VSOCK_PORT).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !vmm.is_some_and(Proc::alive) {
            return Err(HypervisorError::Boot(format!(
                "hull-vmm exited before the restored agent answered: {}",
                log_tail(vmm_log)
            )));
        }
        if Instant::now() >= deadline {
            return Err(HypervisorError::Boot(format!(
                "restored agent did not answer on {} in time: {err}",
                uds.display()
            )));
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A server answering every connection's first line with `reply(line)`.
    fn serve(path: &Path, reply: fn(&str) -> String) {
        let listener = UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (r, mut w) = s.into_split();
                let mut line = String::new();
                let _ = BufReader::new(r).read_line(&mut line).await;
                let _ = w.write_all(reply(&line).as_bytes()).await;
            }
        });
    }

    #[tokio::test]
    async fn handshake_and_snapshot_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("agent.vsock");
        serve(&uds, |l| {
            if l == "CONNECT 1024\n" {
                "OK 1073741824\n".into()
            } else {
                "NO\n".into()
            }
        });
        assert_eq!(
            vsock_handshake(&uds, 1024).await.expect("ok"),
            "OK 1073741824"
        );
        assert!(vsock_handshake(&uds, 7).await.is_err());
        let api = dir.path().join("vmm.sock");
        serve(&api, |l| {
            if l.contains(r#""op":"snapshot""#) && l.contains(r#""dir":"/snap""#) {
                r#"{"ok":true}"#.to_owned() + "\n"
            } else {
                r#"{"error":"bad"}"#.to_owned() + "\n"
            }
        });
        request_snapshot(&api, Path::new("/snap"))
            .await
            .expect("snapshot accepted");
        let err = request_snapshot(&api, Path::new("/other"))
            .await
            .expect_err("refused");
        assert!(err.contains("bad"), "{err}");
    }

    #[tokio::test]
    async fn readiness_gives_up_at_the_deadline_or_when_the_vmm_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("agent.vsock");
        let log = dir.path().join("vmm.log");
        std::fs::write(&log, "hull-vmm: restore failed\n").expect("log");
        let err = wait_vsock_ready(&uds, None, &log, Instant::now())
            .await
            .expect_err("no vmm");
        assert!(err.to_string().contains("restore failed"), "{err}");
        serve(&uds, |_| "OK 5\n".into());
        wait_vsock_ready(&uds, None, &log, Instant::now())
            .await
            .expect("answers");
    }
}
