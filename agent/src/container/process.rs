//! One process of a container (its init or an exec): spawning the helper with the right
//! file descriptors, reading its report, stdio ends, exit watching.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::sync::watch;

use super::helper::{REPORT_FD, START_FD};
use super::pause::PIDNS_FD;
use super::spec::ConsoleSize;
use crate::output::{self, OutputHub};
use crate::reaper::{Exit, Reaper};

/// Errors from starting a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("Failed to create {what}")]
    Fds {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Failed to spawn the container helper")]
    Spawn(#[source] std::io::Error),
    #[error("Container setup failed: {0}")]
    Setup(String),
}

/// The agent's ends of a process' stdio.
#[derive(Default)]
struct Stdio3 {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The pty master when the process has a terminal (stdin/stdout are dups of it).
    pub pty: Option<File>,
}

pub struct Process {
    pub pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    stdio: Mutex<Stdio3>,
    pty: Option<File>,
    /// Stdout (the terminal's output with a pty) and stderr, read from the spawn on.
    stdout: Arc<OutputHub>,
    stderr: Arc<OutputHub>,
}

/// A spawned helper whose process is set up but may still wait for its start byte.
pub struct Spawned {
    pub process: Process,
    /// The rest of the report pipe: EOF once the process exec'd, `E ...` if that failed.
    pub report: BufReader<File>,
}

pub(super) fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), ProcessError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| ProcessError::Fds { what, source })
}

/// Moves `fd` above the low numbers the child's dup2()s target, so they cannot collide.
pub(super) fn high(fd: OwnedFd, what: &'static str) -> Result<OwnedFd, ProcessError> {
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(100))
        .map_err(|source| ProcessError::Fds { what, source })?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor, owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// A terminal from the devpts whose multiplexer is `ptmx` (an exec's: the container's,
/// see [`super::pty`]), else from the agent's own.
fn open_pty(
    ptmx: Option<&Path>,
    ws: Option<&nix::pty::Winsize>,
) -> Result<(OwnedFd, OwnedFd), ProcessError> {
    if let Some(ptmx) = ptmx {
        match super::pty::open(ptmx, ws) {
            Ok(pair) => return Ok(pair),
            Err(e) => tracing::warn!(
                ptmx = %ptmx.display(),
                error = %e,
                "no terminal from the container's devpts; using the agent's"
            ),
        }
    }
    let pty = nix::pty::openpty(ws, None).map_err(|source| ProcessError::Fds {
        what: "pty",
        source,
    })?;
    Ok((pty.master, pty.slave))
}

/// Stdio for a new process: the child's three ends and the agent's ends.
fn make_stdio(
    terminal: bool,
    size: Option<ConsoleSize>,
    ptmx: Option<&Path>,
) -> Result<([OwnedFd; 3], Stdio3), ProcessError> {
    if terminal {
        let ws = size.map(|s| nix::pty::Winsize {
            ws_row: s.height,
            ws_col: s.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let (master, slave) = open_pty(ptmx, ws.as_ref())?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(ProcessError::Spawn);
        let child = [dup(&slave)?, dup(&slave)?, slave];
        let master = File::from(master);
        let ours = Stdio3 {
            stdin: Some(master.try_clone().map_err(ProcessError::Spawn)?),
            stdout: Some(master.try_clone().map_err(ProcessError::Spawn)?),
            stderr: None,
            pty: Some(master),
        };
        return Ok((child, ours));
    }
    let (in_r, in_w) = pipe("stdin pipe")?;
    let (out_r, out_w) = pipe("stdout pipe")?;
    let (err_r, err_w) = pipe("stderr pipe")?;
    let ours = Stdio3 {
        stdin: Some(File::from(in_w)),
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
        pty: None,
    };
    Ok(([in_r, out_w, err_w], ours))
}

/// Makes the child of `cmd` find each `(source, target)` descriptor at `target`. The
/// sources must be >= 100 (see [`high`]) so that they never equal a target.
pub(super) fn dup_in_child(cmd: &mut Command, fds: Vec<(i32, i32)>) {
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on a vector built
    // before the fork (no allocation in the child); dup2 clears FD_CLOEXEC on the target.
    unsafe {
        cmd.pre_exec(move || {
            for &(source, target) in &fds {
                if libc::dup2(source, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Descriptors a container helper gets besides stdio and the report pipe.
#[derive(Default)]
pub struct HelperFds {
    /// The read end of the start pipe (init only), as [`START_FD`].
    pub start: Option<OwnedFd>,
    /// The pod's PID namespace (init of a `POD`-mode container), as [`PIDNS_FD`].
    pub pidns: Option<OwnedFd>,
}

/// Spawns `hull-agent <mode> <config>` and reads its report up to the `R` line.
/// `ptmx`: where its terminal comes from (an exec: the container's devpts).
pub fn spawn(
    mode: &str,
    config: &Path,
    terminal: bool,
    size: Option<ConsoleSize>,
    fds: HelperFds,
    ptmx: Option<&Path>,
    reaper: &Reaper,
) -> Result<Spawned, ProcessError> {
    let ([child_in, child_out, child_err], mut ours) = make_stdio(terminal, size, ptmx)?;
    let (report_r, report_w) = pipe("report pipe")?;
    let report_w = high(report_w, "report pipe")?;
    let start = fds.start.map(|fd| high(fd, "start pipe")).transpose()?;
    let pidns = fds.pidns.map(|fd| high(fd, "pid namespace")).transpose()?;
    let mut targets = vec![(report_w.as_raw_fd(), REPORT_FD)];
    targets.extend(start.as_ref().map(|fd| (fd.as_raw_fd(), START_FD)));
    targets.extend(pidns.as_ref().map(|fd| (fd.as_raw_fd(), PIDNS_FD)));
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(mode)
        .arg(config)
        .stdin(Stdio::from(child_in))
        .stdout(Stdio::from(child_out))
        .stderr(Stdio::from(child_err));
    dup_in_child(&mut cmd, targets);
    let child = cmd.spawn().map_err(ProcessError::Spawn)?;
    // The reaper collects the helper; nobody waits for it.
    drop(reaper.watch(child.id() as i32));
    drop(child);
    drop(cmd);
    drop(report_w);
    drop((start, pidns));
    let mut report = BufReader::new(File::from(report_r));
    let pid = read_until_ready(&mut report)?;
    let exit = reaper.watch(pid);
    let pty = ours.pty.take();
    let label = label(config);
    let stdout = hub(ours.stdout.take(), format!("{label}/stdout"))?;
    let stderr = hub(ours.stderr.take(), format!("{label}/stderr"))?;
    Ok(Spawned {
        process: Process {
            pid,
            exit,
            stdio: Mutex::new(ours),
            pty,
            stdout,
            stderr,
        },
        report,
    })
}

/// `<container id>/<init|exec-<id>>` from the helper config path, for log lines.
fn label(config: &Path) -> String {
    let part = |p: Option<&Path>| {
        p.and_then(Path::file_stem)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!("{}/{}", part(config.parent()), part(Some(config)))
}

/// The hub of one output stream, with its reader thread started (an absent stream, stderr
/// with a terminal, is a hub that already ended).
fn hub(file: Option<File>, label: String) -> Result<Arc<OutputHub>, ProcessError> {
    let Some(file) = file else {
        return Ok(OutputHub::empty(label));
    };
    let hub = OutputHub::new(label, output::CAPACITY);
    output::pump(file, Arc::clone(&hub)).map_err(ProcessError::Spawn)?;
    Ok(hub)
}

/// Reads `P <pid>` and `R` (in any order); `E <msg>` or EOF first is an error.
pub(super) fn read_until_ready(report: &mut impl BufRead) -> Result<i32, ProcessError> {
    let mut pid = None;
    let mut ready = false;
    while pid.is_none() || !ready {
        let mut line = String::new();
        let n = report
            .read_line(&mut line)
            .map_err(|e| ProcessError::Setup(format!("read report: {e}")))?;
        if n == 0 {
            return Err(ProcessError::Setup(
                "helper exited without reporting".to_owned(),
            ));
        }
        let line = line.trim_end();
        if let Some(p) = line.strip_prefix("P ") {
            pid = Some(
                p.parse()
                    .map_err(|_| ProcessError::Setup(format!("bad pid line {line:?}")))?,
            );
        } else if line == "R" {
            ready = true;
        } else if let Some(msg) = line.strip_prefix("E ") {
            return Err(ProcessError::Setup(msg.to_owned()));
        }
    }
    pid.ok_or_else(|| ProcessError::Setup("no pid".to_owned()))
}

/// Reads the report after the process was released: EOF means `execve` succeeded.
pub fn read_exec_result(mut report: BufReader<File>) -> Result<(), ProcessError> {
    let mut line = String::new();
    match report.read_line(&mut line) {
        Ok(0) => Ok(()),
        Ok(_) => Err(ProcessError::Setup(
            line.trim_end().trim_start_matches("E ").to_owned(),
        )),
        Err(e) => Err(ProcessError::Setup(format!("read report: {e}"))),
    }
}

/// Which output stream to read.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Process {
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> Option<Exit> {
        let mut rx = self.exit.clone();
        rx.wait_for(Option::is_some).await.ok().and_then(|e| *e)
    }

    fn stdio(&self) -> std::sync::MutexGuard<'_, Stdio3> {
        self.stdio.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An output stream's hub (any number of readers, see [`crate::output`]).
    pub fn output(&self, which: Output) -> Arc<OutputHub> {
        match which {
            Output::Stdout => Arc::clone(&self.stdout),
            Output::Stderr => Arc::clone(&self.stderr),
        }
    }

    /// A handle to write stdin (cloned so writes happen without holding the lock).
    pub fn stdin(&self) -> Option<File> {
        self.stdio().stdin.as_ref().and_then(|f| f.try_clone().ok())
    }

    pub fn close_stdin(&self) {
        self.stdio().stdin.take();
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let pty = self.pty.as_ref().ok_or("process has no terminal")?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_in_any_order() {
        let mut r = BufReader::new(&b"R\nP 42\n"[..]);
        assert_eq!(read_until_ready(&mut r).expect("ready"), 42);
        let mut r = BufReader::new(&b"P 42\nE mount failed\n"[..]);
        assert!(
            matches!(read_until_ready(&mut r), Err(ProcessError::Setup(m)) if m == "mount failed")
        );
        let mut r = BufReader::new(&b"P 42\n"[..]);
        assert!(read_until_ready(&mut r).is_err());
    }
}
