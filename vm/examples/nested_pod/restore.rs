//! `nested_pod bench`'s VM templates part: one hull-vmm guest booted to agent-ready and
//! snapshotted through the control API (`{"op":"snapshot"}`, exit code 7), then restores
//! of it (`hull-vmm --config X --restore DIR`) timed from launch to the agent answering the
//! hybrid-vsock handshake (a restored agent is already listening: no ready line comes).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hull_vm::hypervisor::AGENT_VSOCK_PORT;
use hull_vmm_api::config::{VmmConfig, VsockConfig};

use super::bench::{MEMORY_MIB, Sample, boot_timeout, cmdline, hull_sample, stop};
use super::{Opts, api_request};

/// hull-vmm's exit code after writing a snapshot.
const EXIT_SNAPSHOTTED: i32 = 7;
/// How long hull-vmm may take to write the snapshot and exit.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The snapshot all restores start from.
pub struct Snapshot {
    dir: PathBuf,
}

/// The bench's VM (the cold boots' device set: vsock, console, API) with files `<prefix>-*`.
fn vmm_config(opts: &Opts, dir: &Path, prefix: &str) -> anyhow::Result<VmmConfig> {
    let f = |name: &str| dir.join(format!("{prefix}-{name}"));
    Ok(VmmConfig {
        id: prefix.into(),
        vcpus: 1,
        memory_mib: MEMORY_MIB,
        kernel: opts.path("--kernel")?,
        initramfs: Some(opts.path("--initramfs")?),
        cmdline: cmdline(opts),
        console_log: Some(f("console.log")),
        api_socket: Some(f("api.sock")),
        rng: false,
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: f("agent.vsock"),
        }),
        blk: None,
        net: None,
        fs: None,
    })
}

/// Writes `config` to `<dir>/<prefix>.json` and spawns hull-vmm on it (restoring `restore`).
fn spawn(
    opts: &Opts,
    dir: &Path,
    prefix: &str,
    config: &VmmConfig,
    restore: Option<&Path>,
) -> anyhow::Result<(Child, PathBuf)> {
    let path = dir.join(format!("{prefix}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(config)?)?;
    let log = dir.join(format!("{prefix}-vmm.log"));
    let mut cmd = Command::new(opts.path("--hull-vmm")?);
    cmd.arg("--config").arg(&path);
    if let Some(restore) = restore {
        cmd.arg("--restore").arg(restore);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?);
    Ok((cmd.spawn().context("spawn hull-vmm")?, log))
}

/// Boots the guest, waits for the agent's ready line, snapshots it into `<dir>/snapshot`.
pub fn make_snapshot(opts: &Opts, dir: &Path) -> anyhow::Result<Snapshot> {
    let config = vmm_config(opts, dir, "template")?;
    let snap = dir.join("snapshot");
    let _ = std::fs::remove_dir_all(&snap);
    std::fs::create_dir_all(&snap)?;
    let console = config.console_log.clone().unwrap_or_default();
    let api_sock = config.api_socket.clone().unwrap_or_default();
    let (mut child, log) = spawn(opts, dir, "template", &config, None)?;
    let t0 = Instant::now();
    let booted = super::bench::wait_ready(&console, &mut child, t0, &log, boot_timeout(opts));
    let booted = match booted {
        Ok(t) => t,
        Err(e) => {
            stop(child);
            return Err(e);
        }
    };
    let t1 = Instant::now();
    let request = serde_json::json!({ "op": "snapshot", "dir": snap }).to_string();
    let reply = api_request(&api_sock, &request);
    let status = wait_exit(&mut child, SNAPSHOT_TIMEOUT);
    let written = t1.elapsed();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let reply = reply.with_context(|| format!("snapshot request; hull-vmm log:\n{log_text}"))?;
    ensure!(
        reply.get("ok") == Some(&serde_json::Value::Bool(true)),
        "snapshot refused: {reply}; hull-vmm log:\n{log_text}"
    );
    let Some(code) = status else {
        stop(child);
        bail!("hull-vmm still running {SNAPSHOT_TIMEOUT:?} after the snapshot request");
    };
    ensure!(
        code == Some(EXIT_SNAPSHOTTED),
        "hull-vmm exited with {code:?} after the snapshot request, want {EXIT_SNAPSHOTTED}:\n{log_text}"
    );
    let memory = std::fs::metadata(snap.join("memory")).context("snapshot memory file")?;
    let state = std::fs::metadata(snap.join("vm.json")).context("snapshot vm.json")?;
    println!(
        "NESTED-BENCH-SNAPSHOT guest booted to agent-ready in {:.1} ms, snapshot written and hull-vmm exited in {:.1} ms: memory {} KiB of data ({} MiB apparent), vm.json {} bytes",
        booted.as_secs_f64() * 1e3,
        written.as_secs_f64() * 1e3,
        memory.blocks() / 2,
        memory.len() >> 20,
        state.len()
    );
    Ok(Snapshot { dir: snap })
}

/// Waits up to `timeout` for `child` to exit: `Some(exit code)`, `None` if it still runs.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<Option<i32>> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One hybrid-vsock handshake for the agent's port; `Ok` on `OK ...`.
fn handshake(uds: &Path) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(uds)?;
    // Long: an unanswered CONNECT is waiting for the guest, not lost.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(s, "CONNECT {AGENT_VSOCK_PORT}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    ensure!(line.starts_with("OK "), "got {line:?}");
    Ok(())
}

/// Restore `i`: launch → the agent answers the handshake (polled every millisecond).
pub fn restore_boot(
    opts: &Opts,
    dir: &Path,
    snapshot: &Snapshot,
    i: usize,
) -> anyhow::Result<Sample> {
    let prefix = format!("restore-{i}");
    let config = vmm_config(opts, dir, &prefix)?;
    let uds = config
        .vsock
        .as_ref()
        .map(|v| v.uds_path.clone())
        .unwrap_or_default();
    let api_sock = config.api_socket.clone().unwrap_or_default();
    let t0 = Instant::now();
    let (mut child, log) = spawn(opts, dir, &prefix, &config, Some(&snapshot.dir))?;
    let timeout = boot_timeout(opts);
    let ready = loop {
        let attempt = handshake(&uds);
        if attempt.is_ok() {
            break Ok(t0.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            break Err(anyhow::anyhow!(
                "hull-vmm exited ({status}) before the restored agent answered:\n{log}"
            ));
        }
        if t0.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "restored agent did not answer in {timeout:?}: {attempt:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let sample = ready.and_then(|ready| hull_sample(&child, &api_sock, ready));
    stop(child);
    sample
}
