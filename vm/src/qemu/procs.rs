//! The processes of one VM (QEMU and its vhost-user helpers): spawning them detached
//! (own session, so they outlive a hulld restart), pid files, liveness that survives
//! re-attachment (pid + start time, so a reused pid is not mistaken for ours), and
//! terminate-then-kill.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::hypervisor::HypervisorError;

const POLL: Duration = Duration::from_millis(20);
/// How long a process gets to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(3);

/// One process we started (a child) or found again from its pid file.
pub struct Proc {
    pub what: &'static str,
    pub pid: i32,
    start_time: Option<u64>,
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
}

/// The 22nd field of `/proc/<pid>/stat` (start time in clock ticks), and whether it is a zombie.
fn stat(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first()? == &"Z";
    Some((fields.get(19)?.parse().ok()?, zombie))
}

/// Whether `/proc/<pid>/cmdline` mentions `needle` (our run dir): guards against pid reuse.
pub fn cmdline_mentions(pid: i32, needle: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

impl Proc {
    /// Spawns `program args`, stdout+stderr appended to `log`, in a new session, and in
    /// the network namespace `netns` if given. Writes the pid to `pid_file`.
    pub fn spawn(
        what: &'static str,
        program: &Path,
        args: &[std::ffi::OsString],
        log: &Path,
        netns: Option<&File>,
        pid_file: &Path,
    ) -> Result<Self, HypervisorError> {
        let io = |source| HypervisorError::Io {
            what: format!("{what} log {}", log.display()),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let netns_fd = netns.map(AsRawFd::as_raw_fd);
        // SAFETY: the closure runs between fork and exec and only makes the
        // async-signal-safe syscalls setsid(2) and setns(2) on an fd the parent keeps open
        // until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                if let Some(fd) = netns_fd {
                    let fd = BorrowedFd::borrow_raw(fd);
                    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|source| HypervisorError::Spawn { what, source })?;
        let pid = child.id() as i32;
        let proc_ = Self {
            what,
            pid,
            start_time: stat(pid).map(|s| s.0),
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
        };
        if let Err(source) = std::fs::write(pid_file, format!("{pid}\n")) {
            proc_.kill_now();
            return Err(HypervisorError::Io {
                what: format!("pid file {}", pid_file.display()),
                source,
            });
        }
        tracing::debug!(what, pid, "spawned");
        Ok(proc_)
    }

    /// Finds a process again from its pid file; `None` if the file is missing or the pid
    /// is no longer one of ours (gone, or reused by a process not mentioning `run_dir`).
    pub fn adopt(what: &'static str, pid_file: &Path, run_dir: &Path) -> Option<Self> {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if pid <= 1 || !cmdline_mentions(pid, run_dir) {
            return None;
        }
        let start_time = stat(pid).map(|s| s.0);
        Some(Self {
            what,
            pid,
            start_time,
            child: Mutex::new(None),
            status: Mutex::new(None),
        })
    }

    /// Exit status if it is known (only for our own children).
    pub fn status(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn alive(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = child.as_mut() {
            return match c.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                    *child = None;
                    false
                }
                Err(_) => false,
            };
        }
        drop(child);
        if self.status().is_some() {
            return false;
        }
        matches!(stat(self.pid), Some((start, false)) if Some(start) == self.start_time)
    }

    fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    /// SIGKILL and a short blocking wait for the exit (for paths that cannot await).
    pub fn kill_now(&self) {
        self.signal(Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns whether it was still running
    /// when asked to stop.
    pub async fn terminate(&self, grace: Duration) -> Result<bool, HypervisorError> {
        if !self.alive() {
            return Ok(false);
        }
        tracing::debug!(what = self.what, pid = self.pid, "terminating");
        self.signal(Signal::SIGTERM);
        if !self.wait_exit(grace).await {
            tracing::warn!(
                what = self.what,
                pid = self.pid,
                "did not exit after SIGTERM; killing"
            );
            self.signal(Signal::SIGKILL);
            if !self.wait_exit(KILL_WAIT).await {
                return Err(HypervisorError::Stop(format!(
                    "{} (pid {}) survived SIGKILL",
                    self.what, self.pid
                )));
            }
        }
        Ok(true)
    }
}

/// How long a live VMM or helper gets to create its socket. A process that dies is seen
/// at once (the wait polls its liveness), so this bounds only a hung one; it is generous
/// because a loaded node (or a nested TCG test host) was seen taking over 10 s, and
/// kubelet's own RunPodSandbox deadline (2 min) is the limit that matters.
const SOCKET_WAIT: Duration = Duration::from_secs(45);
/// How often the console is read for the agent's ready marker.
const READY_POLL: Duration = Duration::from_millis(10);

/// The last lines of a log (from its last 64 KiB at most: a log may be a guest's flood),
/// for error messages.
pub fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
        let _ = file.take(64 << 10).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    // QEMU's note that it waits for hulld's console pump to connect says nothing about why
    // a VM failed; it would push the line that does out of an error's quote.
    let lines: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.contains("info: QEMU waiting for connection on:"))
        .take(5)
        .collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Waits until `proc_` has created `path`; its death or a timeout is a `Boot` error with
/// the end of its log.
pub async fn wait_for_socket(path: &Path, proc_: &Proc, log: &Path) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + SOCKET_WAIT;
    while !path.exists() {
        if !proc_.alive() || Instant::now() >= deadline {
            let why = match proc_.status().and_then(|s| s.code()) {
                Some(code) => format!("exited with code {code}"),
                None if proc_.alive() => "timed out".into(),
                None => "died".into(),
            };
            return Err(HypervisorError::Boot(format!(
                "{} {why} before creating {}: {}",
                proc_.what,
                path.display(),
                log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Opens the pod's network namespace for a VMM to be started in.
pub fn open_netns(path: Option<&Path>) -> Result<Option<File>, HypervisorError> {
    path.map(|path| {
        File::open(path).map_err(|source| HypervisorError::Io {
            what: format!("netns {}", path.display()),
            source,
        })
    })
    .transpose()
}

/// Finds a marker in a growing file, reading only what was appended since the last look
/// (at most [`SCAN_MAX`] bytes a look): a guest that floods its console costs the boot
/// wait no more than the bytes it wrote, never a re-read of the whole file.
#[derive(Default)]
struct MarkerScan {
    pos: u64,
    /// The last bytes already scanned, shorter than the marker (it may straddle reads).
    tail: Vec<u8>,
}

/// The most a [`MarkerScan`] reads at one look.
const SCAN_MAX: u64 = 1 << 20;

impl MarkerScan {
    fn found(&mut self, path: &Path, marker: &[u8]) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = File::open(path) else {
            return false;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.pos {
            // Recreated: read it again from the start.
            *self = Self::default();
        }
        if len == self.pos || file.seek(SeekFrom::Start(self.pos)).is_err() {
            return false;
        }
        let mut window = std::mem::take(&mut self.tail);
        let before = window.len();
        if file.take(SCAN_MAX).read_to_end(&mut window).is_err() {
            return false;
        }
        self.pos += (window.len() - before) as u64;
        if window.windows(marker.len()).any(|w| w == marker) {
            return true;
        }
        let keep = marker.len().saturating_sub(1).min(window.len());
        self.tail = window.split_off(window.len() - keep);
        false
    }
}

/// Waits for the agent's ready marker on the guest console while the VMM runs. The
/// console is guest output: only a hint of when to connect, never trusted for more.
pub async fn wait_agent_marker(
    console: &Path,
    vmm: Option<&Proc>,
    vmm_log: &Path,
    deadline: std::time::Instant,
) -> Result<(), HypervisorError> {
    let marker = crate::hypervisor::AGENT_READY_MARKER.as_bytes();
    let mut scan = MarkerScan::default();
    loop {
        if scan.found(console, marker) {
            return Ok(());
        }
        if !vmm.is_some_and(Proc::alive) {
            let what = vmm.map_or("the VMM", |p| p.what);
            return Err(HypervisorError::Boot(format!(
                "{what} exited before its agent was ready: {}; console: {}",
                log_tail(vmm_log),
                log_tail(console)
            )));
        }
        if std::time::Instant::now() >= deadline {
            return Err(HypervisorError::Boot(format!(
                "agent not ready in time: {}",
                log_tail(console)
            )));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

impl Drop for Proc {
    /// Reap our own child if it already exited (never kills: VMs outlive their handle).
    fn drop(&mut self) {
        let _ = self.alive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_quotes_the_last_lines_without_qemus_console_wait_note() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qemu.log");
        std::fs::write(
            &path,
            "early\nqemu-system-x86_64: -chardev socket,id=console,path=/r/console.sock,\
             server=on,wait=on: info: QEMU waiting for connection on: disconnected:unix:/r/c\n\
             qemu: linux kernel too old to load a ram disk\n",
        )
        .expect("write");
        assert_eq!(
            log_tail(&path),
            "early | qemu: linux kernel too old to load a ram disk"
        );
    }

    #[test]
    fn the_marker_scan_reads_each_byte_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let marker = b"READY-MARKER";
        let mut scan = MarkerScan::default();
        assert!(!scan.found(&path, marker), "no file yet");
        let mut f = std::fs::File::create(&path).expect("create");
        std::io::Write::write_all(&mut f, &vec![b'x'; 3 << 20]).expect("flood");
        // Three looks to get through the flood, a bounded read each.
        for _ in 0..3 {
            assert!(!scan.found(&path, marker));
        }
        assert_eq!(scan.pos, 3 << 20);
        assert!(!scan.found(&path, marker), "nothing new: nothing read");
        // The marker split across two looks is still found.
        std::io::Write::write_all(&mut f, b"READY-").expect("write");
        assert!(!scan.found(&path, marker));
        std::io::Write::write_all(&mut f, b"MARKER\n").expect("write");
        assert!(scan.found(&path, marker));
        // A recreated file is read from its start.
        std::fs::write(&path, b"READY-MARKER").expect("recreate");
        let mut scan = MarkerScan {
            pos: 1 << 30,
            tail: Vec::new(),
        };
        assert!(scan.found(&path, marker));
        assert_eq!(log_tail(&path), "READY-MARKER");
    }

    #[tokio::test]
    async fn spawn_terminate_and_adopt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("p.pid");
        let args: Vec<std::ffi::OsString> = vec![
            "-c".into(),
            format!("sleep 30 # {}", dir.path().display()).into(),
        ];
        let p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &args,
            &dir.path().join("log"),
            None,
            &pid_file,
        )
        .expect("spawn");
        assert!(p.alive());
        let adopted = Proc::adopt("sleeper", &pid_file, dir.path()).expect("adopt");
        assert_eq!(adopted.pid, p.pid);
        assert!(adopted.alive());
        assert!(Proc::adopt("sleeper", &pid_file, Path::new("/elsewhere")).is_none());
        assert!(
            p.terminate(Duration::from_secs(5))
                .await
                .expect("terminate")
        );
        assert!(!p.alive());
        assert!(!adopted.alive());
        assert!(
            !p.terminate(Duration::from_secs(1))
                .await
                .expect("idempotent")
        );
    }
}
