//! The pod's PID namespace and its PID 1, `hull-pause`.
//!
//! The CRI's default PID mode is `POD`: the containers of a pod share one PID namespace.
//! hull's pods have no pause container, and the guest's own PID namespace is the agent's:
//! a container there would see `/init` (hull-agent) as PID 1, every kernel thread, and
//! through `/proc/1/root` the agent's mount namespace with the whole virtio-fs share. So,
//! as Kata's agent gives a pod a sandbox-level PID namespace, the agent makes one for the
//! pod when its first `POD`-mode container is created: a helper (`hull-agent` re-executed
//! with `argv[0]` = [`ARG0`]) unshares a PID and a mount namespace and forks `hull-pause`,
//! PID 1 of the new namespace, which
//! - pivots into an empty read-only tmpfs (its `/proc/1/root` leads nowhere),
//! - drops to uid/gid 65534 with no capabilities, no_new_privs, not dumpable,
//! - closes every descriptor, and
//! - reaps the orphans of the pod's processes (an init must), nothing else.
//!
//! It cannot be killed from inside the namespace (the kernel ignores signals to a PID
//! namespace's init that it has no handler for) and the OOM killer leaves it alone
//! (`oom_score_adj` -1000). If it dies all the same, the kernel kills the namespace's
//! processes and the next `POD` container gets a new namespace.
//!
//! `POD`-mode container helpers join the namespace through a descriptor the agent hands
//! them as [`PIDNS_FD`] (no pid that could be reused between the check and the join).
//! `CONTAINER` mode gets a new namespace per container, as before.

use std::convert::Infallible;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};
use tokio::sync::watch;

use super::helper::{self, REPORT_FD};
use super::process::{self, ProcessError};
use crate::reaper::{Exit, Reaper};

/// `argv[0]` of the pause helper, and the name its process shows in the pod.
pub const ARG0: &str = "hull-pause";

/// The descriptor of the pod's PID namespace in a `POD`-mode container helper.
pub const PIDNS_FD: i32 = 5;

/// The empty dir the pause process mounts its tmpfs root on (in its own mount namespace).
const ROOT_DIR: &str = "/run/hull-agent/pause-root";

/// uid and gid of the pause process (`nobody`).
const NOBODY: u32 = 65534;

/// The pod's PID namespace, held by its running `hull-pause`.
struct PodPidNs {
    pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    /// `/proc/<pid>/ns/pid`, opened while the process was known to be alive.
    ns: File,
}

/// The pod's PID namespace, made on first use (a VM template never has one).
#[derive(Clone, Default)]
pub struct PodNamespace {
    inner: Arc<Mutex<Option<PodPidNs>>>,
}

impl PodNamespace {
    /// A descriptor of the pod's PID namespace, starting `hull-pause` if none runs.
    /// Blocking: call it from a blocking task.
    pub fn pid_ns(&self, reaper: &Reaper) -> Result<OwnedFd, ProcessError> {
        let mut held = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let died = held
            .as_ref()
            .and_then(|ns| ns.exit.borrow().map(|exit| (ns.pid, exit.status)));
        if let Some((pid, status)) = died {
            tracing::warn!(
                pid,
                status,
                "hull-pause died; the pod gets a new PID namespace"
            );
            *held = None;
        }
        if held.is_none() {
            *held = Some(start(reaper)?);
        }
        let ns = held.as_ref().map(|ns| ns.ns.try_clone());
        ns.expect("set above")
            .map(OwnedFd::from)
            .map_err(ProcessError::Spawn)
    }
}

/// Spawns the helper and waits for `hull-pause` to be set up.
fn start(reaper: &Reaper) -> Result<PodPidNs, ProcessError> {
    let (report_r, report_w) = process::pipe("report pipe")?;
    let report_w = process::high(report_w, "report pipe")?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(ARG0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    process::dup_in_child(&mut cmd, vec![(report_w.as_raw_fd(), REPORT_FD)]);
    let child = cmd.spawn().map_err(ProcessError::Spawn)?;
    drop(reaper.watch(child.id() as i32));
    drop(child);
    drop(cmd);
    drop(report_w);
    let mut report = BufReader::new(File::from(report_r));
    let pid = process::read_until_ready(&mut report)?;
    process::read_exec_result(report)?;
    let exit = reaper.watch(pid);
    let ns = File::open(format!("/proc/{pid}/ns/pid")).map_err(ProcessError::Spawn)?;
    if exit.borrow().is_some() {
        return Err(ProcessError::Setup("hull-pause exited at once".to_owned()));
    }
    tracing::info!(pid, "pod PID namespace made (hull-pause)");
    Ok(PodPidNs { pid, exit, ns })
}

type HelperResult<T> = std::result::Result<T, String>;

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Entry of the helper (`argv[0]` = [`ARG0`]): forks `hull-pause` into a new PID
/// namespace and reports its pid.
pub fn run() -> ExitCode {
    let mut report = helper::report_file();
    let result = (|| -> HelperResult<()> {
        // Inherited by the pause process: the OOM killer must not end the pod's namespace.
        std::fs::write("/proc/self/oom_score_adj", "-1000").map_err(ctx("oom_score_adj"))?;
        std::fs::create_dir_all(ROOT_DIR).map_err(ctx("create the pause root"))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS)
            .map_err(ctx("unshare"))?;
        // SAFETY: this helper is single-threaded (a fresh exec, no runtime), so the child
        // may run arbitrary code after fork.
        match unsafe { nix::unistd::fork() }.map_err(ctx("fork"))? {
            ForkResult::Parent { child } => {
                helper::report(&mut report, &format!("P {child}"));
                Ok(())
            }
            ForkResult::Child => {
                let err = pause(&mut report).err().unwrap_or_default();
                helper::report(&mut report, &format!("E {err}"));
                std::process::exit(127)
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            helper::report(&mut report, &format!("E {e}"));
            ExitCode::FAILURE
        }
    }
}

/// PID 1 of the pod's namespace: jail itself, report ready, then reap forever.
fn pause(report: &mut File) -> HelperResult<Infallible> {
    empty_root()?;
    nix::sys::prctl::set_name(c"hull-pause").map_err(ctx("set name"))?;
    for fd in 0..=2 {
        let _ = nix::unistd::close(fd);
    }
    // Leaving uid 0 clears every capability (no SECBIT_KEEP_CAPS) and dumpability.
    nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
    let (gid, uid) = (Gid::from_raw(NOBODY), Uid::from_raw(NOBODY));
    nix::unistd::setresgid(gid, gid, gid).map_err(ctx("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(ctx("setresuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(ctx("no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(ctx("dumpable"))?;
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(ctx("block SIGCHLD"))?;
    helper::report(report, "R");
    // The agent reads EOF as "set up"; nothing of the agent stays open in the pod.
    let _ = nix::unistd::close(report.as_raw_fd());
    loop {
        reap_all();
        let _ = chld.wait();
    }
}

/// Every exited child (the pod's orphans), without blocking.
fn reap_all() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Makes an empty read-only tmpfs this process' root, the agent's mounts detached.
fn empty_root() -> HelperResult<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx("make / private"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        ROOT_DIR,
        Some("tmpfs"),
        flags,
        Some("size=4k,mode=0555"),
    )
    .map_err(ctx("mount the pause root"))?;
    nix::unistd::chdir(ROOT_DIR).map_err(ctx("chdir to the pause root"))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx("detach the old root"))?;
    nix::unistd::chdir("/").map_err(ctx("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(ctx("remount the pause root read-only"))
}
