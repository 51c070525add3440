//! The processes behind one VM handle, whichever backend runs it: the VMM (hull-vmm or
//! QEMU; its pid is the VM's pid and its exit the VM's exit) and the helper processes it
//! needs (virtiofsd, vhost-device-vsock). Both backends start, re-attach to and stop them
//! the same way; what differs is passed in: which helpers, and how the VMM's exit status
//! reads ([`ExitOf`]).
//!
//! Start: helpers (each waited for until it serves its socket), then the VMM; a start
//! that fails stops what it started ([`started`]). Stop is idempotent: the first call
//! terminates the VMM (SIGTERM, SIGKILL after the grace period), then the helpers in
//! reverse start order, then removes the run files it is given; every later call returns
//! the first one's [`VmExit`].
//!
//! The config checks both backends make before any process starts are here too
//! ([`check_id`], [`check_pod_paths`]).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::hypervisor::{HypervisorError, VmConfig, VmExit, VmHandle};
use crate::qemu::procs::{Proc, open_netns, wait_for_socket};

/// How long a helper gets to exit on SIGTERM at stop.
const HELPER_GRACE: Duration = Duration::from_secs(2);
/// How long the VMM of a start that failed gets to exit on SIGTERM.
const FAILED_START_GRACE: Duration = Duration::from_secs(1);

/// How a backend reads its VMM's exit status.
pub(crate) type ExitOf = fn(ExitStatus) -> VmExit;

/// A process to start for a VM: what it is, its command line, and where its output and
/// pid go.
pub(crate) struct Spawn<'a> {
    pub what: &'static str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub log: &'a Path,
    pub pid_file: &'a Path,
}

/// A helper to start and the socket it creates once it serves.
pub(crate) struct Helper<'a> {
    pub spawn: Spawn<'a>,
    pub socket: &'a Path,
}

/// The VMM and helpers of one VM, and how it stopped once it has.
pub(crate) struct VmProcs {
    vmm: Option<Proc>,
    /// In start order; stopped in reverse.
    helpers: Vec<Proc>,
    exit_of: ExitOf,
    stopped: Mutex<Option<VmExit>>,
}

impl VmProcs {
    /// No processes yet: [`Self::start_helpers`] and [`Self::spawn_vmm`] add them.
    pub fn new(exit_of: ExitOf) -> Self {
        Self {
            vmm: None,
            helpers: Vec::new(),
            exit_of,
            stopped: Mutex::new(None),
        }
    }

    /// Finds a VM's processes again from their pid files (`(what, pid file)`, helpers in
    /// start order); those that are gone or no longer ours are left out.
    pub fn adopt(
        run_dir: &Path,
        vmm: (&'static str, &Path),
        helpers: &[(&'static str, &Path)],
        exit_of: ExitOf,
    ) -> Self {
        let adopt = |(what, pid_file): (&'static str, &Path)| Proc::adopt(what, pid_file, run_dir);
        Self {
            vmm: adopt(vmm),
            helpers: helpers.iter().copied().filter_map(adopt).collect(),
            exit_of,
            stopped: Mutex::new(None),
        }
    }

    /// The VMM process, if it was started or found again.
    pub fn vmm(&self) -> Option<&Proc> {
        self.vmm.as_ref()
    }

    /// The VMM's pid, 0 if there is none.
    pub fn pid(&self) -> u32 {
        self.vmm.as_ref().map(|p| p.pid as u32).unwrap_or(0)
    }

    /// Whether the VMM still runs.
    pub fn is_running(&self) -> bool {
        self.vmm.as_ref().is_some_and(Proc::alive)
    }

    /// What of this VM died, if anything: every process that exited, the VMM first, with
    /// its exit code or signal when it was our child. `None` while all run.
    pub fn failure(&self) -> Option<String> {
        let dead = |p: &Proc| -> Option<String> {
            if p.alive() {
                return None;
            }
            Some(format!(
                "{} (pid {}) {}",
                p.what,
                p.pid,
                how_it_ended(p.status())
            ))
        };
        let mut gone: Vec<String> = match &self.vmm {
            Some(vmm) => dead(vmm).into_iter().collect(),
            None => vec!["the VMM is not running".to_owned()],
        };
        gone.extend(self.helpers.iter().filter_map(dead));
        (!gone.is_empty()).then(|| gone.join("; "))
    }

    /// Spawns every helper (outside the pod's netns: they serve host-side sockets), then
    /// waits for each one's socket, so their startups overlap. A helper that dies or is
    /// late fails the start with the end of its log.
    pub async fn start_helpers(&mut self, helpers: &[Helper<'_>]) -> Result<(), HypervisorError> {
        let first = self.helpers.len();
        for h in helpers {
            let s = &h.spawn;
            let p = Proc::spawn(s.what, s.program, &s.args, s.log, None, s.pid_file)?;
            self.helpers.push(p);
        }
        for (h, p) in helpers.iter().zip(&self.helpers[first..]) {
            wait_for_socket(h.socket, p, h.spawn.log).await?;
        }
        Ok(())
    }

    /// Spawns the VMM, inside the network namespace at `netns` if given (for its tap).
    pub fn spawn_vmm(
        &mut self,
        vmm: &Spawn<'_>,
        netns: Option<&Path>,
    ) -> Result<&Proc, HypervisorError> {
        let netns = open_netns(netns)?;
        let p = Proc::spawn(
            vmm.what,
            vmm.program,
            &vmm.args,
            vmm.log,
            netns.as_ref(),
            vmm.pid_file,
        )?;
        Ok(self.vmm.insert(p))
    }

    /// SIGKILLs every process still running, the VMM first, without awaiting: for an owner
    /// that is dropped before it could stop them (a cancelled template creation).
    pub fn kill_now(&self) {
        for p in self.vmm.iter().chain(self.helpers.iter().rev()) {
            if p.alive() {
                tracing::warn!(what = p.what, pid = p.pid, "abandoned; killing");
                p.kill_now();
            }
        }
    }

    /// Stops the VM once (see the module doc) and removes `run_files` (sockets and pid
    /// files; logs stay); returns how it ended.
    pub async fn stop(
        &self,
        grace: Duration,
        run_files: &[&Path],
    ) -> Result<VmExit, HypervisorError> {
        let mut stopped = self.stopped.lock().await;
        if let Some(exit) = *stopped {
            return Ok(exit);
        }
        let mut exit = VmExit::Shutdown;
        if let Some(vmm) = &self.vmm {
            vmm.terminate(grace).await?;
            // Only a child's status is known; an adopted VMM that stopped counts as shut down.
            if let Some(status) = vmm.status() {
                exit = (self.exit_of)(status);
            }
        }
        for helper in self.helpers.iter().rev() {
            helper.terminate(HELPER_GRACE).await?;
        }
        remove_files(run_files);
        tracing::info!(?exit, "VM stopped");
        *stopped = Some(exit);
        Ok(exit)
    }
}

/// "exited with code 1", "was killed by signal 9 (SIGKILL)", or "exited" when the status
/// is unknown (a process adopted after a restart).
fn how_it_ended(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.map(|s| (s.signal(), s.code())) {
        Some((Some(sig), _)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown");
            format!("was killed by signal {sig} ({name})")
        }
        Some((None, Some(code))) => format!("exited with code {code}"),
        _ => "exited".to_owned(),
    }
}

/// Checks the VM's id before anything is named after it (run dir files, processes): 1-64
/// of `[A-Za-z0-9_-]`.
pub(crate) fn check_id(config: &VmConfig) -> Result<(), HypervisorError> {
    let id = &config.id;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HypervisorError::InvalidConfig(format!(
            "id {id:?} must be 1-64 of [A-Za-z0-9_-]"
        )))
    }
}

/// Checks that the config is a VM's (no host-isolation part) and that the pod's parts
/// outside the VMM are there: the shared dir and `virtiofsd` (the program serving it) when
/// there is one, the netns when there is one.
pub(crate) fn check_pod_paths(config: &VmConfig, virtiofsd: &Path) -> Result<(), HypervisorError> {
    if config.host.is_some() {
        return Err(HypervisorError::InvalidConfig(
            "a host-isolation pod cannot run in a VM (it needs the host backend)".into(),
        ));
    }
    if let Some(dir) = &config.shared_dir {
        must_exist("shared dir", dir)?;
        must_exist("virtiofsd (cargo install virtiofsd)", virtiofsd)?;
    }
    if let Some(ns) = &config.netns {
        must_exist("netns", ns)?;
    }
    Ok(())
}

/// [`HypervisorError::Missing`] `what` unless `path` (a program or file a VM needs) exists.
pub(crate) fn must_exist(what: &'static str, path: &Path) -> Result<(), HypervisorError> {
    if path.exists() {
        Ok(())
    } else {
        Err(HypervisorError::Missing {
            what,
            path: path.to_owned(),
        })
    }
}

/// Removes a VM's run files (sockets, pid files) that are there; a start does it first, so
/// nothing of an earlier VM in the same run dir is taken for the new one's.
pub(crate) fn remove_files(run_files: &[&Path]) {
    for f in run_files {
        let _ = std::fs::remove_file(f);
    }
}

/// `vm` once `launched` says its start worked; otherwise stops whatever that start left
/// running, removes its run files, and returns the start's error.
pub(crate) async fn started<V: VmHandle>(
    vm: V,
    launched: Result<(), HypervisorError>,
) -> Result<V, HypervisorError> {
    match launched {
        Ok(()) => Ok(vm),
        Err(e) => {
            tracing::warn!(error = %e, "VM start failed; cleaning up");
            let _ = vm.stop(FAILED_START_GRACE).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c` that exits `code` on SIGTERM, then creates `ready` and runs; the comment
    /// puts `dir` on its command line, as a real VMM's run dir is (what `Proc::adopt` checks).
    fn until_term(ready: &Path, code: i32, dir: &Path) -> Vec<OsString> {
        let script = format!(
            "trap 'exit {code}' TERM\ntouch '{}'\nwhile :; do sleep 0.05; done # {}",
            ready.display(),
            dir.display()
        );
        vec!["-c".into(), script.into()]
    }

    fn failed(code: i32) -> VmExit {
        VmExit::Failed {
            code: Some(code),
            signal: None,
        }
    }

    #[tokio::test]
    async fn start_adopt_and_stop_once_with_the_backends_exit_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let [sock, h_log, h_pid, v_ready, v_log, v_pid] =
            ["h.sock", "h.log", "h.pid", "v.ready", "v.log", "v.pid"].map(|n| d.join(n));
        let sh = Path::new("/bin/sh");
        let helper = Helper {
            spawn: Spawn {
                what: "helper",
                program: sh,
                args: until_term(&sock, 0, d),
                log: &h_log,
                pid_file: &h_pid,
            },
            socket: &sock,
        };
        let vmm = Spawn {
            what: "vmm",
            program: sh,
            args: until_term(&v_ready, 3, d),
            log: &v_log,
            pid_file: &v_pid,
        };
        let mut procs = VmProcs::new(failed_unless_zero);
        procs.start_helpers(&[helper]).await.expect("helpers");
        assert!(sock.exists());
        let p = procs.spawn_vmm(&vmm, None).expect("vmm");
        wait_for_socket(&v_ready, p, &v_log)
            .await
            .expect("vmm ready");
        assert!(procs.is_running() && procs.pid() > 0);

        let adopted = VmProcs::adopt(d, ("vmm", &v_pid), &[("helper", &h_pid)], |_| failed(9));
        assert_eq!((adopted.pid(), adopted.helpers.len()), (procs.pid(), 1));

        let files = [sock.as_path(), &h_pid, &v_pid];
        let exit = procs
            .stop(Duration::from_secs(5), &files)
            .await
            .expect("stop");
        assert_eq!(exit, failed(3), "the child's status, read by the backend");
        assert!(!procs.is_running() && !adopted.is_running());
        assert!(!procs.helpers[0].alive(), "helpers are stopped too");
        assert!(files.iter().all(|f| !f.exists()) && v_log.exists());
        assert_eq!(procs.stop(Duration::ZERO, &[]).await.expect("again"), exit);
        // An adopted VMM has no status to read: stopped is shut down.
        let exit = adopted.stop(Duration::ZERO, &[]).await.expect("stop");
        assert_eq!(exit, VmExit::Shutdown);
    }

    fn failed_unless_zero(status: ExitStatus) -> VmExit {
        match status.code() {
            Some(0) => VmExit::Shutdown,
            code => VmExit::Failed { code, signal: None },
        }
    }

    #[tokio::test]
    async fn a_helper_that_dies_before_its_socket_fails_the_start_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let [sock, log, pid] = ["h.sock", "h.log", "h.pid"].map(|n| dir.path().join(n));
        let helper = Helper {
            spawn: Spawn {
                what: "helper",
                program: Path::new("/bin/sh"),
                args: vec!["-c".into(), "echo no socket for you >&2; exit 4".into()],
                log: &log,
                pid_file: &pid,
            },
            socket: &sock,
        };
        let mut procs = VmProcs::new(failed_unless_zero);
        let err = procs.start_helpers(&[helper]).await.expect_err("fails");
        let msg = err.to_string();
        assert!(
            msg.contains("helper exited with code 4") && msg.contains("no socket for you"),
            "{msg}"
        );
        assert_eq!(
            procs.stop(Duration::ZERO, &[&pid]).await.expect("stop"),
            VmExit::Shutdown
        );
        assert!(!pid.exists());
    }
}
