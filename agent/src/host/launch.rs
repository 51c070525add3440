//! The host-mode launcher: the pod's namespaces, the fork into the server, the signal relay,
//! and the cleanup after an agent is gone. Runs single-threaded, before any runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hull_agent_api::host::HostModeConfig;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::container::cgroup::{self, Cgroup};

/// What this process is after [`launch`].
pub enum Role {
    /// The launcher, done: the server exited with this code.
    Launcher(ExitCode),
    /// The server: serve the API.
    Server,
}

/// Signals the launcher relays to the server (and SIGCHLD, which it waits for).
fn relayed() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The namespaces the pod has of its own, as unshare flags.
fn own_namespaces(config: &HostModeConfig) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    if !config.node_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !config.node_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !config.node_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    flags
}

/// Unshares the pod's namespaces, pins IPC/UTS, forks the server and (in the launcher)
/// supervises it.
pub fn launch(config: &HostModeConfig) -> Result<Role, String> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("create {}: {e}", config.state_dir.display()))?;
    nix::sched::unshare(own_namespaces(config)).map_err(|e| format!("unshare: {e}"))?;
    pin(config)?;
    let mask = relayed();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(|e| format!("sigmask: {e}"))?;
    // SAFETY: single-threaded (no runtime yet, logging does not spawn threads), so the
    // child may run anything after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            become_server(config, &mask)?;
            Ok(Role::Server)
        }
        ForkResult::Parent { child } => {
            tracing::info!(server_pid = child.as_raw(), "host-mode server started");
            Ok(Role::Launcher(supervise(child, &mask)))
        }
    }
}

/// The server's set-up: dies with the launcher, reaps the pod's orphans, takes signals.
fn become_server(config: &HostModeConfig, mask: &SigSet) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    if config.node_pid {
        // Not a PID namespace's init: orphans of the containers must still come to us.
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    }
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(mask), None).map_err(|e| format!("sigmask: {e}"))
}

/// Waits for the server, relaying stop signals to it; its exit status is ours.
fn supervise(server: Pid, mask: &SigSet) -> ExitCode {
    loop {
        let signal = match mask.wait() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "sigwait failed; killing the server");
                let _ = kill(server, Signal::SIGKILL);
                return ExitCode::FAILURE;
            }
        };
        if signal != Signal::SIGCHLD {
            tracing::info!(?signal, "relaying to the server");
            let _ = kill(server, Signal::SIGTERM);
            continue;
        }
        match waitpid(server, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                tracing::info!(code, "host-mode server exited");
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                tracing::warn!(?sig, "host-mode server killed");
                return ExitCode::from(128 + sig as u8);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// The pins of the pod's own IPC and UTS namespaces.
fn pins(config: &HostModeConfig) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    if !config.node_ipc {
        out.push(("ipc", config.ns_dir.join("ipc")));
    }
    if !config.node_uts {
        out.push(("uts", config.ns_dir.join("uts")));
    }
    out
}

/// Bind-mounts `/proc/self/ns/<kind>` on `ns_dir/<kind>` (in the node's mount namespace),
/// so the pod's namespaces outlive any one process and can be entered by path.
fn pin(config: &HostModeConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.ns_dir)
        .map_err(|e| format!("create {}: {e}", config.ns_dir.display()))?;
    for (kind, target) in pins(config) {
        std::fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        let source = format!("/proc/self/ns/{kind}");
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("pin {kind} namespace on {}: {e}", target.display()))?;
    }
    Ok(())
}

/// What `--host-cleanup` does: container cgroups, the pod cgroup hull made, the pins,
/// the state dir.
pub async fn cleanup(config: &HostModeConfig) -> Result<(), String> {
    let mut errors = Vec::new();
    for cg in recorded_cgroups(&config.state_dir) {
        if let Err(e) = cgroup::destroy(&cg).await {
            errors.push(crate::service::chain(&e));
        }
    }
    if config.cgroup_parent.is_empty() {
        let placement = cgroup::Placement::host(config.cgroup_parent())
            .map_err(|e| crate::service::chain(&e))?;
        for dir in placement.parent_dirs() {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    errors.push(format!("remove {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
    }
    for (_, target) in pins(config) {
        unpin(&target, &mut errors);
    }
    if errors.is_empty() {
        let _ = std::fs::remove_dir_all(&config.state_dir);
        let _ = std::fs::remove_dir(&config.ns_dir);
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn unpin(target: &Path, errors: &mut Vec<String>) {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => errors.push(format!("unmount {}: {e}", target.display())),
    }
    if let Err(e) = std::fs::remove_file(target)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", target.display()));
    }
}

/// The cgroups of the containers the agent had (each one's `init.json` records it).
fn recorded_cgroups(state_dir: &Path) -> Vec<Cgroup> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("init.json")).ok())
        .filter_map(|json| {
            let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
            serde_json::from_value(value.get("cgroup")?.clone()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_unshares_what_it_does_not_share_with_the_node() {
        let mut c = HostModeConfig {
            sandbox_id: "p".into(),
            socket: "/s".into(),
            state_dir: "/d".into(),
            ns_dir: "/n".into(),
            node_network: false,
            node_pid: false,
            node_ipc: false,
            node_uts: false,
            cgroup_parent: String::new(),
        };
        assert_eq!(
            own_namespaces(&c),
            CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID
        );
        assert_eq!(pins(&c).len(), 2);
        c.node_pid = true;
        c.node_ipc = true;
        c.node_uts = true;
        assert!(own_namespaces(&c).is_empty());
        assert!(pins(&c).is_empty());
    }

    #[test]
    fn cgroups_are_found_in_the_helper_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("c1")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("c2")).expect("mkdir");
        let cg = Cgroup {
            unified: Some("/sys/fs/cgroup/unified/hull/p/c1".into()),
            v1: vec![(
                vec!["memory".into()],
                "/sys/fs/cgroup/memory/hull/p/c1".into(),
            )],
        };
        let init = serde_json::json!({"rootfs": "/r", "spec": {}, "cgroup": cg});
        std::fs::write(dir.path().join("c1/init.json"), init.to_string()).expect("write");
        std::fs::write(dir.path().join("c2/init.json"), b"{").expect("write");
        assert_eq!(recorded_cgroups(dir.path()), vec![cg]);
        assert!(recorded_cgroups(&dir.path().join("missing")).is_empty());
    }
}
