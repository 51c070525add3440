//! ExecSync: run a command in a container and return its output and exit code.
//!
//! Everything here is bounded, because the command's output is the guest's to choose:
//! - each stream keeps at most [`MAX_EXEC_SYNC_OUTPUT`] bytes, and the rest is dropped, as
//!   containerd's CRI plugin does (`cappedWriter`). That is kubelet's CRI message limit, so a
//!   reply that large fails at kubelet rather than reaching a probe cut short. The agent is
//!   asked to end each stream at the cap too, and a stream is dropped once it reaches it;
//! - past the timeout the process is killed, the call fails with `DeadlineExceeded`, and the
//!   output streams are dropped at once (no reader outlives the call);
//! - after the process exited, its output is read until EOF, the cap, or [`DRAIN_IDLE`]
//!   without a byte: a background child that inherited stdout never closes it, and
//!   containerd would wait for it forever (`drain_exec_sync_io_timeout` = 0).

use std::pin::pin;
use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::runtime::{RuntimeError, agent_err, output_req};

/// Bytes of each output stream (stdout, stderr) an ExecSync returns: containerd's
/// `maxStreamSize`, kubelet's CRI client `maxMsgSize` (16 MiB).
pub const MAX_EXEC_SYNC_OUTPUT: usize = 16 << 20;

/// How long the output of an exited process may stay quiet before ExecSync returns.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// One output stream, read up to the cap.
struct Capped {
    stream: Option<tonic::Streaming<pb::OutputChunk>>,
    data: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn new(stream: tonic::Streaming<pb::OutputChunk>) -> Self {
        Self {
            stream: Some(stream),
            data: Vec::new(),
            truncated: false,
        }
    }

    /// The next chunk, or `None` once the stream ended (or is no longer read).
    async fn next(&mut self) -> Option<pb::OutputChunk> {
        let stream = self.stream.as_mut()?;
        match stream.message().await {
            Ok(Some(chunk)) => Some(chunk),
            _ => None,
        }
    }

    /// Keeps what fits under the cap; at the cap the stream is dropped (the agent stops).
    fn take(&mut self, chunk: Option<pb::OutputChunk>) {
        let Some(chunk) = chunk else {
            self.stream = None;
            return;
        };
        let room = MAX_EXEC_SYNC_OUTPUT - self.data.len();
        if chunk.data.len() >= room {
            self.data.extend_from_slice(&chunk.data[..room]);
            self.truncated |= chunk.data.len() > room || self.data.len() == MAX_EXEC_SYNC_OUTPUT;
            self.stream = None;
        } else {
            self.data.extend_from_slice(&chunk.data);
        }
    }

    fn open(&self) -> bool {
        self.stream.is_some()
    }
}

/// ExecSync: runs `cmd` in the container, collects stdout/stderr (each capped) and the
/// exit code; past `timeout` (zero: none) the process is killed and the call fails.
pub async fn exec_sync(
    mut agent: AgentClient<Channel>,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<cri::ExecSyncResponse, RuntimeError> {
    if cmd.is_empty() {
        return Err(RuntimeError::EmptyCommand);
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exec_id = format!("sync-{:x}-{n}", crate::state::now_nanos());
    // Only the command: the agent runs it as the container's own process (user, groups,
    // capabilities, env, working dir), as containerd builds an exec from the container.
    let process = serde_json::json!({ "args": cmd });
    let req = pb::ExecProcessRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.clone(),
        oci_process_json: process.to_string().into_bytes(),
    };
    agent
        .exec_process(req)
        .await
        .map_err(agent_err("ExecProcess", id))?;
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut stdout = open_output(&mut agent, id, &exec_id, pb::OutputStream::Stdout).await?;
    let mut stderr = open_output(&mut agent, id, &exec_id, pb::OutputStream::Stderr).await?;
    let wait = pb::WaitProcessRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.clone(),
    };
    let mut waiter = agent.clone();
    let mut wait = pin!(waiter.wait_process(wait));
    let mut timed_out = pin!(async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    });
    let mut exit: Option<pb::WaitProcessResponse> = None;
    loop {
        if let Some(exit) = &exit
            && !stdout.open()
            && !stderr.open()
        {
            return Ok(response(id, &exec_id, stdout, stderr, exit));
        }
        let idle = tokio::time::sleep(DRAIN_IDLE);
        tokio::select! {
            c = stdout.next(), if stdout.open() => stdout.take(c),
            c = stderr.next(), if stderr.open() => stderr.take(c),
            r = &mut wait, if exit.is_none() => {
                exit = Some(r.map_err(agent_err("WaitProcess", id))?.into_inner());
            }
            () = &mut timed_out, if exit.is_none() => {
                drop((stdout, stderr));
                let kill = pb::SignalProcessRequest {
                    container_id: id.to_owned(),
                    exec_id,
                    signal: nix::libc::SIGKILL,
                };
                let _ = agent.signal_process(kill).await;
                return Err(RuntimeError::Timeout { id: id.to_owned(), timeout });
            }
            () = idle, if exit.is_some() => {
                tracing::info!(container = id, exec_id, "exec exited but its output stays open \
                    (a background process holds it); returning what was read");
                stdout.stream = None;
                stderr.stream = None;
            }
        }
    }
}

/// One output stream of the exec, asking the agent to end it at the cap.
async fn open_output(
    agent: &mut AgentClient<Channel>,
    id: &str,
    exec_id: &str,
    kind: pb::OutputStream,
) -> Result<Capped, RuntimeError> {
    let mut req = output_req(id, exec_id, kind);
    req.limit = MAX_EXEC_SYNC_OUTPUT as u64;
    let stream = agent
        .read_output(req)
        .await
        .map_err(agent_err("ReadOutput", id))?
        .into_inner();
    Ok(Capped::new(stream))
}

fn response(
    id: &str,
    exec_id: &str,
    stdout: Capped,
    stderr: Capped,
    exit: &pb::WaitProcessResponse,
) -> cri::ExecSyncResponse {
    for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
        if s.truncated {
            tracing::warn!(
                container = id,
                exec_id,
                stream = name,
                limit = MAX_EXEC_SYNC_OUTPUT,
                "ExecSync output over the limit: the rest was dropped"
            );
        }
    }
    cri::ExecSyncResponse {
        stdout: stdout.data,
        stderr: stderr.data,
        exit_code: exit.exit_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize) -> Option<pb::OutputChunk> {
        Some(pb::OutputChunk {
            data: vec![b'y'; n],
            offset: None,
        })
    }

    #[test]
    fn a_stream_keeps_only_the_cap() {
        // A stand-in stream is not needed to test the cap: take() works on the buffer.
        let mut c = Capped {
            stream: None,
            data: Vec::new(),
            truncated: false,
        };
        c.take(chunk(MAX_EXEC_SYNC_OUTPUT - 10));
        assert!(!c.truncated);
        c.take(chunk(100));
        assert_eq!(c.data.len(), MAX_EXEC_SYNC_OUTPUT);
        assert!(c.truncated);
        assert!(!c.open(), "no longer read at the cap");
    }
}
