//! The container helper: `hull-agent __container-init|__container-exec <config.json>`.
//!
//! The agent never forks from its multi-threaded tokio process to build a container. It
//! spawns its own binary (`/proc/self/exe`, fork+exec by `std::process::Command`), and this
//! fresh, single-threaded process does everything that is unsafe after a fork in a threaded
//! program: join the container's cgroup, `unshare`/`setns`, `fork` into the new PID
//! namespace, mount the rootfs, `pivot_root`, drop to the user, and `execve`.
//!
//! File descriptors from the agent: 0/1/2 = the process' stdio (pipes or a pty slave),
//! [`REPORT_FD`] = a pipe the helper and the container process write one-line messages to
//! (`P <pid>` from the helper, `R` when the process is set up, `E <message>` on error;
//! closed on a successful `execve`), [`START_FD`] (init only) = a pipe the process blocks on
//! until the agent's `StartContainer` writes a byte (EOF = removed before start).
//! The helper exits right after the fork; the container process is re-parented to the agent
//! (PID 1), whose reaper gets its exit status.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};
use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::rootfs;
use super::seccomp::{self, Seccomp};
use super::spec::{Process, Spec, rlimit_resource};

pub const INIT_ARG: &str = "__container-init";
pub const EXEC_ARG: &str = "__container-exec";
pub const REPORT_FD: i32 = 3;
pub const START_FD: i32 = 4;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `__container-init` gets from the agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub rootfs: PathBuf,
    pub spec: Spec,
    pub cgroup: Cgroup,
    /// Join the pod's PID namespace, open as [`super::pause::PIDNS_FD`] (the spec asks
    /// for no PID namespace of its own, and the agent is not in the pod's: a pod VM).
    #[serde(default)]
    pub pod_pidns: bool,
}

/// What `__container-exec` gets from the agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    /// Agent-side pid of the container's init process, whose namespaces are joined.
    pub target_pid: i32,
    pub process: Process,
    pub cgroup: Cgroup,
    /// The container's profile: execs get the same filter as its init.
    pub seccomp: Option<Seccomp>,
}

type Result<T> = std::result::Result<T, String>;

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub(super) fn report_file() -> File {
    // SAFETY: the agent dup2()s the report pipe onto REPORT_FD before exec'ing the helper,
    // and nothing else in this process owns that descriptor.
    File::from(unsafe { OwnedFd::from_raw_fd(REPORT_FD) })
}

pub(super) fn report(file: &mut File, msg: &str) {
    // One write per line (< PIPE_BUF): lines from the helper and the process never interleave.
    let line: String = msg.replace('\n', " ").chars().take(1000).collect();
    let _ = file.write_all(format!("{line}\n").as_bytes());
}

fn read_config<T: for<'de> Deserialize<'de>>(args: &[String]) -> Result<T> {
    let path = args.get(2).ok_or("missing config path")?;
    let data = std::fs::read(path).map_err(ctx("read config"))?;
    serde_json::from_slice(&data).map_err(ctx("parse config"))
}

/// Entry of `__container-init`.
pub fn run_init(args: &[String]) -> ExitCode {
    let mut report_pipe = report_file();
    match init_main(args, &mut report_pipe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&mut report_pipe, &format!("E {e}"));
            ExitCode::FAILURE
        }
    }
}

fn init_main(args: &[String], report_pipe: &mut File) -> Result<()> {
    let cfg: InitConfig = read_config(args)?;
    join_cgroup(&cfg.cgroup)?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    for (kind, flag) in [
        ("pid", CloneFlags::CLONE_NEWPID),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ] {
        if cfg.spec.wants_namespace(kind) {
            flags |= flag;
        }
    }
    nix::sched::unshare(flags).map_err(ctx("unshare"))?;
    if cfg.pod_pidns {
        // SAFETY: the agent dup2()s the pod's PID namespace onto PIDNS_FD for this helper;
        // nothing else owns it. It is closed here, before the fork: no container inherits it.
        let ns = unsafe { OwnedFd::from_raw_fd(super::pause::PIDNS_FD) };
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWPID)
            .map_err(ctx("join the pod's PID namespace"))?;
    }
    // SAFETY: this helper is single-threaded (a fresh exec, no runtime), so the child may
    // run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(ctx("fork"))? {
        ForkResult::Parent { child } => {
            report(report_pipe, &format!("P {child}"));
            Ok(())
        }
        ForkResult::Child => {
            let err = child_init(&cfg, report_pipe).err().unwrap_or_default();
            report(report_pipe, &format!("E {err}"));
            std::process::exit(127)
        }
    }
}

fn child_init(cfg: &InitConfig, report_pipe: &mut File) -> Result<()> {
    let process = cfg.spec.process.as_ref().ok_or("spec has no process")?;
    rootfs::setup(&cfg.rootfs, &cfg.spec)?;
    if cfg.spec.wants_namespace("uts")
        && let Some(h) = &cfg.spec.hostname
    {
        nix::unistd::sethostname(h).map_err(ctx("sethostname"))?;
    }
    let exec = prepare_process(process, cfg.spec.seccomp())?;
    report(report_pipe, "R");
    // SAFETY: the agent dup2()s the start pipe onto START_FD; nothing else owns it.
    let mut start = File::from(unsafe { OwnedFd::from_raw_fd(START_FD) });
    let mut byte = [0u8; 1];
    if start.read(&mut byte).map_err(ctx("wait for start"))? == 0 {
        std::process::exit(1); // Removed before it was started.
    }
    drop(start);
    exec.run()
}

/// Entry of `__container-exec`.
pub fn run_exec(args: &[String]) -> ExitCode {
    let mut report_pipe = report_file();
    match exec_main(args, &mut report_pipe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&mut report_pipe, &format!("E {e}"));
            ExitCode::FAILURE
        }
    }
}

fn exec_main(args: &[String], report_pipe: &mut File) -> Result<()> {
    let cfg: ExecConfig = read_config(args)?;
    join_cgroup(&cfg.cgroup)?;
    join_namespaces(cfg.target_pid)?;
    // SAFETY: single-threaded helper, see init_main.
    match unsafe { nix::unistd::fork() }.map_err(ctx("fork"))? {
        ForkResult::Parent { child } => {
            report(report_pipe, &format!("P {child}"));
            Ok(())
        }
        ForkResult::Child => {
            let result = prepare_process(&cfg.process, cfg.seccomp.as_ref()).and_then(|exec| {
                report(report_pipe, "R");
                exec.run()
            });
            report(
                report_pipe,
                &format!("E {}", result.err().unwrap_or_default()),
            );
            std::process::exit(127)
        }
    }
}

/// The namespaces an exec joins: the container's IPC, UTS, cgroup, PID and mount ones.
const EXEC_NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Joins the namespaces of `target_pid` (a pid in this process' PID namespace) all at
/// once through a pidfd. A host-mode agent can be PID 1 of the pod's PID namespace while
/// /proc is the node's, so `/proc/<pid>` would name another process; a pidfd does not.
/// Kernels without pidfd_open (before 5.3) or pidfd setns (before 5.8) use /proc.
fn join_namespaces(target_pid: i32) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, target_pid, 0) };
    if fd >= 0 {
        let fd = i32::try_from(fd).map_err(|_| "pidfd out of range".to_owned())?;
        // SAFETY: pidfd_open just returned this descriptor; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let flags = EXEC_NAMESPACES
            .iter()
            .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
        match nix::sched::setns(&pidfd, flags) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) => {} // A kernel without pidfd setns.
            Err(e) => return Err(format!("setns to the container: {e}")),
        }
    }
    join_namespaces_by_proc(target_pid)
}

/// [`join_namespaces`] through `/proc/<pid>/ns/*`, skipping the ones already shared.
fn join_namespaces_by_proc(target_pid: i32) -> Result<()> {
    // Open every namespace first: after joining the mount namespace /proc is the container's.
    let mut targets = Vec::new();
    for (kind, flag) in EXEC_NAMESPACES {
        let ours =
            std::fs::metadata(format!("/proc/self/ns/{kind}")).map_err(ctx("stat own ns"))?;
        let path = format!("/proc/{target_pid}/ns/{kind}");
        let file = File::open(&path).map_err(ctx("open container namespace"))?;
        let theirs = file.metadata().map_err(ctx("stat container ns"))?;
        if std::os::unix::fs::MetadataExt::ino(&ours)
            != std::os::unix::fs::MetadataExt::ino(&theirs)
        {
            targets.push((file, flag));
        }
    }
    for (file, flag) in &targets {
        nix::sched::setns(file, *flag).map_err(ctx("setns"))?;
    }
    Ok(())
}

fn join_cgroup(cgroup: &Cgroup) -> Result<()> {
    cgroup.join(std::process::id()).map_err(ctx("join cgroup"))
}

/// A process ready to `execve`.
struct Exec {
    /// Filters still to install right before execve (with no_new_privs).
    seccomp: Vec<seccompiler::BpfProgram>,
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    fn run(self) -> Result<()> {
        // The report pipe must close on exec so the agent sees EOF = success.
        // SAFETY: F_SETFD on a descriptor number only changes its flags; REPORT_FD is ours.
        if unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(format!("cloexec: {}", std::io::Error::last_os_error()));
        }
        seccomp::install(&self.seccomp)?;
        let err = nix::unistd::execve(&self.path, &self.args, &self.env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        Err(format!("exec {:?}: {err}", self.path))
    }
}

/// Sets up the calling process as `process` describes (session, tty, rlimits, user, cwd)
/// and resolves the executable, without exec'ing yet.
///
/// A seccomp profile is installed last, right before `execve`, when no_new_privs is set;
/// otherwise before the user and capability changes, while CAP_SYS_ADMIN still allows it
/// (runc's rule). The profile must then allow the few syscalls those steps make.
fn prepare_process(process: &Process, profile: Option<&Seccomp>) -> Result<Exec> {
    let mut filters = profile
        .map(seccomp::compile)
        .transpose()?
        .unwrap_or_default();
    nix::unistd::setsid().map_err(ctx("setsid"))?;
    if process.terminal {
        // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the pty slave from the agent.
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if rc != 0 {
            return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
        }
    }
    for r in &process.rlimits {
        let res = rlimit_resource(&r.kind).ok_or("unknown rlimit")?;
        nix::sys::resource::setrlimit(res, r.soft, r.hard).map_err(ctx("setrlimit"))?;
    }
    if !process.no_new_privileges {
        seccomp::install(&std::mem::take(&mut filters))?;
    }
    set_user(process)?;
    nix::unistd::chdir(Path::new(&process.cwd)).map_err(ctx("chdir to cwd"))?;
    let path_var = process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let program = process.args.first().ok_or("no args")?;
    let path = resolve(program, path_var).ok_or_else(|| format!("{program}: not found"))?;
    let cstr = |s: &str| CString::new(s).map_err(ctx("NUL in string"));
    Ok(Exec {
        seccomp: filters,
        path: cstr(&path)?,
        args: process
            .args
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_>>()?,
        env: process.env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
    })
}

/// Groups, uid/gid and capabilities (see [`super::caps`] for the order), no_new_privs.
fn set_user(process: &Process) -> Result<()> {
    let user = &process.user;
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    if let Some(caps) = &process.capabilities {
        super::caps::before_setuid(caps)?;
    }
    nix::unistd::setgroups(&groups).map_err(ctx("setgroups"))?;
    nix::unistd::setgid(Gid::from_raw(user.gid)).map_err(ctx("setgid"))?;
    nix::unistd::setuid(Uid::from_raw(user.uid)).map_err(ctx("setuid"))?;
    if let Some(caps) = &process.capabilities {
        super::caps::after_setuid(caps)?;
    }
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(ctx("no_new_privs"))?;
    }
    Ok(())
}

/// `execvp`'s lookup, but in the container's PATH rather than the helper's.
fn resolve(program: &str, path_var: &str) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_owned());
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{program}"))
        .find(|p| {
            nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
                && !Path::new(p).is_dir()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_in_the_given_path() {
        assert_eq!(resolve("/x/y", ""), Some("/x/y".to_owned()));
        assert_eq!(
            resolve("sh", "/nonexistent:/bin"),
            Some("/bin/sh".to_owned())
        );
        assert_eq!(resolve("no-such-program-hull", "/bin:/usr/bin"), None);
    }

    #[test]
    fn configs_round_trip() {
        let cfg = ExecConfig {
            target_pid: 5,
            process: Process {
                args: vec!["sh".into()],
                cwd: "/".into(),
                ..Default::default()
            },
            cgroup: Cgroup {
                unified: Some("/sys/fs/cgroup/hull/c".into()),
                v1: Vec::new(),
            },
            seccomp: None,
        };
        let json = serde_json::to_vec(&cfg).expect("serialize");
        let back: ExecConfig = serde_json::from_slice(&json).expect("parse");
        assert_eq!(back.target_pid, 5);
    }
}
