//! The agent-facing half of a container's life: start with output pumped into the CRI log
//! and an exit watcher, stop with a grace period, ExecSync with a timeout, and stats.
//! Every call takes the pod's agent client (from the sandbox).

use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use tonic::transport::Channel;

use super::manager::{ContainerManager, Exit};
use crate::logs::{LogWriter, Resume, Stream};
use crate::state::ContainerRecord;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Agent {call} failed for container {id}")]
    Agent {
        call: &'static str,
        id: String,
        #[source]
        source: tonic::Status,
    },
    #[error("Exec in {id} did not finish within {timeout:?}; killed")]
    Timeout { id: String, timeout: Duration },
    #[error("Exec command is empty")]
    EmptyCommand,
}

pub(super) fn agent_err(
    call: &'static str,
    id: &str,
) -> impl FnOnce(tonic::Status) -> RuntimeError {
    let id = id.to_owned();
    move |source| RuntimeError::Agent { call, id, source }
}

pub(super) fn output_req(
    id: &str,
    exec_id: &str,
    stream: pb::OutputStream,
) -> pb::ReadOutputRequest {
    pb::ReadOutputRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        stream: stream as i32,
        limit: 0,
    }
}

/// Starts the container and spawns its watcher: stdout/stderr go to the log writer, and
/// the exit (code, OOM kill, time) is recorded when the main process ends. The output
/// streams are opened before the start, so no early output is lost.
pub async fn start(
    manager: Arc<ContainerManager>,
    mut agent: AgentClient<Channel>,
    record: &ContainerRecord,
) -> Result<(), RuntimeError> {
    let id = record.id.clone();
    let writer = manager.log_writer(record).ok().flatten();
    let mut pumps = Vec::new();
    for (stream, kind) in [
        (Stream::Stdout, pb::OutputStream::Stdout),
        (Stream::Stderr, pb::OutputStream::Stderr),
    ] {
        let s = agent
            .read_output(output_req(&id, "", kind))
            .await
            .map_err(agent_err("ReadOutput", &id))?
            .into_inner();
        pumps.push(tokio::spawn(pump(s, writer.clone(), stream)));
    }
    let req = pb::StartContainerRequest {
        container_id: id.clone(),
    };
    agent
        .start_container(req)
        .await
        .map_err(agent_err("StartContainer", &id))?;
    if let Err(e) = manager.mark_started(&id, crate::state::now_nanos()) {
        tracing::warn!(container = %id, error = %e, "cannot record the start");
    }
    tokio::spawn(watch(manager, agent, id, pumps));
    Ok(())
}

/// Copies one output stream into the log, chunk offsets included (the writer skips what it
/// already has and logs gaps). Waits for the writer rather than dropping: the agent's
/// bounded buffer absorbs a slow disk.
async fn pump(mut s: tonic::Streaming<pb::OutputChunk>, writer: Option<LogWriter>, stream: Stream) {
    while let Ok(Some(chunk)) = s.message().await {
        if let Some(w) = &writer
            && !w.write_at(stream, chunk.offset, chunk.data).await
        {
            break;
        }
    }
    if let Some(w) = &writer {
        w.end(stream).await;
    }
}

/// Watches an already running container again (after a hulld restart): its log writer
/// resumes where the log file ends (no line lost or repeated, see [`crate::logs::resume`])
/// and its exit is recorded. The writer is opened before this returns, so a
/// ReopenContainerLog served after recovery finds it.
pub fn rewatch(
    manager: Arc<ContainerManager>,
    agent: AgentClient<Channel>,
    record: ContainerRecord,
) {
    let id = record.id.clone();
    let writer = match manager.resume_log_writer(&record) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(container = %id, error = %crate::sandbox::error_chain(&e),
                "cannot resume the container's log; its exit is still watched");
            None
        }
    };
    tokio::spawn(async move {
        let pumps = match writer {
            Some((writer, at)) => reattach_output(agent.clone(), &id, writer, at).await,
            None => Vec::new(),
        };
        watch(manager, agent, id, pumps).await;
    });
}

/// Reads both streams from the agent at the resumed offsets into `writer`.
async fn reattach_output(
    mut agent: AgentClient<Channel>,
    id: &str,
    writer: LogWriter,
    at: Resume,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut pumps = Vec::new();
    for (stream, kind, offset) in [
        (Stream::Stdout, pb::OutputStream::Stdout, at.stdout),
        (Stream::Stderr, pb::OutputStream::Stderr, at.stderr),
    ] {
        let req = pb::ReadOutputFromRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            stream: kind as i32,
            offset,
            from_end: false,
        };
        match agent.read_output_from(req).await {
            Ok(s) => pumps.push(tokio::spawn(pump(
                s.into_inner(),
                Some(writer.clone()),
                stream,
            ))),
            Err(e) => {
                // UNIMPLEMENTED: a guest agent older than ReadOutputFrom.
                tracing::warn!(container = %id, stream = stream.as_str(), error = %e,
                    "cannot re-attach the container's output; its exit is still watched");
            }
        }
    }
    tracing::info!(container = %id, stdout = at.stdout, stderr = at.stderr, "log re-attached");
    pumps
}

/// Waits for the main process; records the exit once the output is drained.
async fn watch(
    manager: Arc<ContainerManager>,
    mut agent: AgentClient<Channel>,
    id: String,
    pumps: Vec<tokio::task::JoinHandle<()>>,
) {
    let req = pb::WaitProcessRequest {
        container_id: id.clone(),
        exec_id: String::new(),
    };
    let exit = match agent.wait_process(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            // The VM or the connection went away: a restarted hulld re-watches.
            tracing::warn!(container = %id, error = %e, "lost the container's wait");
            return;
        }
    };
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    // The guest's clock is only as good as its RTC (whole seconds behind or ahead of the
    // host's), and started_at is a host time: the exit is stamped on the host too, never
    // before the start.
    let exit = Exit {
        exit_code: exit.exit_status,
        oom_killed: exit.oom_killed,
        finished_at: crate::state::now_nanos(),
    };
    if let Err(e) = manager.mark_exited(&id, exit) {
        tracing::warn!(container = %id, error = %e, "cannot record the exit");
    }
}

/// Sends `signal`, waits up to `timeout` for the exit, then SIGKILLs and waits again.
pub async fn stop(
    mut agent: AgentClient<Channel>,
    id: &str,
    signal: i32,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let wait_req = pb::WaitProcessRequest {
        container_id: id.to_owned(),
        exec_id: String::new(),
    };
    if !timeout.is_zero() {
        let sig = pb::SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
        };
        agent
            .signal_process(sig)
            .await
            .map_err(agent_err("SignalProcess", id))?;
        let mut waiter = agent.clone();
        if let Ok(r) = tokio::time::timeout(timeout, waiter.wait_process(wait_req.clone())).await {
            r.map_err(agent_err("WaitProcess", id))?;
            return Ok(());
        }
        tracing::info!(container = id, ?timeout, "stop timeout passed: SIGKILL");
    }
    let kill = pb::SignalProcessRequest {
        container_id: id.to_owned(),
        exec_id: String::new(),
        signal: nix::libc::SIGKILL,
    };
    agent
        .signal_process(kill)
        .await
        .map_err(agent_err("SignalProcess", id))?;
    agent
        .wait_process(wait_req)
        .await
        .map_err(agent_err("WaitProcess", id))?;
    Ok(())
}

pub use super::exec_sync::{MAX_EXEC_SYNC_OUTPUT, exec_sync};

/// The CRI stats of a container from the agent's cgroup numbers and the writable layer
/// size measured on the host.
pub fn to_cri_stats(
    record: &ContainerRecord,
    s: &pb::ContainerStatsResponse,
    writable_bytes: Option<(u64, u64)>,
) -> cri::ContainerStats {
    let ts = if s.timestamp_unix_nanos > 0 {
        s.timestamp_unix_nanos
    } else {
        crate::state::now_nanos()
    };
    let v = |value: u64| Some(cri::UInt64Value { value });
    // Working set as kubelet computes it: usage minus inactive file; the agent reports
    // file-backed memory as a whole, so this is a lower bound of the working set.
    let working_set = s.memory_current_bytes.saturating_sub(s.memory_file_bytes);
    let available =
        (s.memory_max_bytes > 0).then(|| s.memory_max_bytes.saturating_sub(working_set));
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }),
        cpu: Some(cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: v(s.cpu_usage_usec.saturating_mul(1000)),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: v(working_set),
            available_bytes: available.and_then(v),
            usage_bytes: v(s.memory_current_bytes),
            rss_bytes: v(s.memory_anon_bytes),
            page_faults: None,
            major_page_faults: None,
        }),
        writable_layer: writable_bytes.map(|(bytes, inodes)| cri::FilesystemUsage {
            timestamp: ts,
            fs_id: None,
            used_bytes: v(bytes),
            inodes_used: v(inodes),
        }),
        swap: None,
    }
}

/// Deepest level [`dir_usage`] descends to (each level holds one open directory).
const MAX_USAGE_DEPTH: usize = 128;

/// Bytes and inodes under `dir` (the container's writable layer, which the guest writes
/// while hulld walks it). Walked by descriptor, one name at a time: entries are `fstatat`'d
/// without following symlinks and subdirs opened with `O_NOFOLLOW` relative to their
/// parent, never crossing into another file system, so a guest that swaps a dir for a
/// symlink mid-walk cannot send the walk into the host's tree. Levels past
/// `MAX_USAGE_DEPTH` (128) are not counted.
pub fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    use nix::fcntl::{AtFlags, OFlag, open, openat};
    use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
    use std::os::fd::{AsRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(top) = open(dir, flags, Mode::empty()) else {
        return (0, 0);
    };
    let Ok(dev) = fstat(&top).map(|st| st.st_dev) else {
        return (0, 0);
    };
    // The names in an open dir, listed through its descriptor's magic link.
    let names = |d: &OwnedFd| -> std::vec::IntoIter<std::ffi::OsString> {
        let listed = std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()));
        let all: Vec<_> = listed
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        all.into_iter()
    };
    let first = names(&top);
    let mut stack = vec![(top, first)];
    let (mut bytes, mut inodes) = (0u64, 0u64);
    loop {
        let depth = stack.len();
        let Some((d, pending)) = stack.last_mut() else {
            break;
        };
        let Some(name) = pending.next() else {
            stack.pop();
            continue;
        };
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let Ok(st) = fstatat(&*d, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        inodes += 1;
        bytes += u64::try_from(st.st_blocks).unwrap_or(0) * 512;
        let is_dir = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
        if !is_dir || st.st_dev != dev || depth >= MAX_USAGE_DEPTH {
            continue;
        }
        if let Ok(sub) = openat(&*d, name, flags, Mode::empty()) {
            let pending = names(&sub);
            stack.push((sub, pending));
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_conversion() {
        let record = ContainerRecord {
            id: "c1".into(),
            sandbox_id: "p".into(),
            state: crate::state::ContainerState::Running,
            config: cri::ContainerConfig::default(),
            image_ref: String::new(),
            image_id: String::new(),
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            runtime_spec: None,
        };
        let s = pb::ContainerStatsResponse {
            cpu_usage_usec: 1500,
            memory_current_bytes: 10 << 20,
            memory_max_bytes: 15 << 20,
            memory_anon_bytes: 6 << 20,
            memory_file_bytes: 4 << 20,
            timestamp_unix_nanos: 42,
            ..Default::default()
        };
        let c = to_cri_stats(&record, &s, Some((8192, 3)));
        let cpu = c.cpu.expect("cpu");
        assert_eq!(cpu.timestamp, 42);
        assert_eq!(
            cpu.usage_core_nano_seconds.map(|v| v.value),
            Some(1_500_000)
        );
        let mem = c.memory.expect("mem");
        assert_eq!(mem.working_set_bytes.map(|v| v.value), Some(6 << 20));
        assert_eq!(mem.available_bytes.map(|v| v.value), Some(9 << 20));
        assert_eq!(mem.rss_bytes.map(|v| v.value), Some(6 << 20));
        let fs = c.writable_layer.expect("fs");
        assert_eq!(
            (
                fs.used_bytes.map(|v| v.value),
                fs.inodes_used.map(|v| v.value)
            ),
            (Some(8192), Some(3))
        );
        assert_eq!(c.attributes.expect("attrs").id, "c1");
    }

    #[test]
    fn writable_layer_usage_counts_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 10_000]).expect("write");
        let (bytes, inodes) = dir_usage(dir.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10_000, "{bytes}");
        assert_eq!(dir_usage(&dir.path().join("missing")), (0, 0));
        // A symlink (to a big tree) counts as one inode and is never walked into.
        std::os::unix::fs::symlink("/usr", dir.path().join("sub/usr")).expect("symlink");
        assert_eq!(dir_usage(dir.path()).1, 3);
        std::os::unix::fs::symlink("/usr", dir.path().join("top")).expect("symlink");
        assert_eq!(
            dir_usage(&dir.path().join("top")),
            (0, 0),
            "the top is no link either"
        );
    }
}
