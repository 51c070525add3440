//! Host mode: hull-agent running one host-isolation pod's containers on the node.
//!
//! **Design (issue 14).** A host-isolation pod (hostNetwork/hostPID/hostIPC, or a handler
//! with `isolation = "host"`) is served by the same agent binary, API and container code as
//! a VM pod: hull-vm's host backend starts `hull-agent --host-mode <config>` where it would
//! start a VMM, and hulld talks to it on a unix socket with the hybrid-vsock handshake. So
//! namespaces, mounts, capabilities, seccomp, users, rlimits, masked/read-only paths and
//! no_new_privs are the guest's code ([`crate::container`]); what differs is here: no PID 1
//! duties of a VM (no init mounts, no network or clock setup, no share, no power-off), the
//! node's cgroups (v1 or v2, under the pod's `cgroup_parent`), and the pod's namespaces.
//!
//! **Namespaces.** The agent stays in the node's mount namespace (a bidirectional volume
//! must stay a peer of the node's mount, see `rootfs`; every container gets its own mount
//! namespace anyway). The launcher (this process, single-threaded) unshares what the pod
//! does not share with the node: IPC and UTS are pinned by bind mounts of their nsfs files
//! on `ns_dir/{ipc,uts}` (CRI-O's pinns; no pause process), the network namespace is the
//! pod's netns from hull-network (the backend starts us in it) or the node's. A PID
//! namespace cannot be pinned usefully (it dies with its init), so the agent itself is that
//! init: the launcher unshares `CLONE_NEWPID` and forks the server, which is PID 1 of the
//! pod's PID namespace, reaps its orphans, and takes every container process with it when
//! it dies, as a VM would. With hostPID the server is a child subreaper instead.
//!
//! **Processes.** Launcher (pid file, what hull-vm watches) → server (PID 1 of the pod's
//! PID namespace, `PR_SET_PDEATHSIG` = SIGKILL). The launcher relays SIGTERM/SIGINT/SIGHUP
//! to the server and exits with its status; SIGKILL of the launcher kills the server, and
//! with it the pod. Both survive hulld (own session), which re-attaches by pid file.
//! `--host-cleanup` ([`cleanup`]) removes what a killed agent leaves: container cgroups
//! (found in `state_dir/<id>/init.json`) and the namespace pins.

mod launch;
mod listener;
mod setup;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use hull_agent_api::host::HostModeConfig;

use crate::container::{Containers, PodPid, cgroup};
use crate::reaper::Reaper;
use crate::service::{self, Mode};

pub use setup::setup_sandbox;

/// `hull-agent --host-mode <config>`.
pub fn run(args: &[String]) -> ExitCode {
    crate::init::setup_logging();
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "host mode: bad config");
            return ExitCode::from(2);
        }
    };
    tracing::info!(sandbox_id = %config.sandbox_id, node_network = config.node_network,
        node_pid = config.node_pid, node_ipc = config.node_ipc, node_uts = config.node_uts,
        cgroup_parent = %config.cgroup_parent(), "host-mode agent starting");
    match launch::launch(&config) {
        Ok(launch::Role::Launcher(code)) => code,
        Ok(launch::Role::Server) => serve_blocking(config),
        Err(e) => {
            tracing::error!(error = %e, "host mode: cannot set up the pod's namespaces");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &[String]) -> Result<HostModeConfig, String> {
    let path = args.get(2).ok_or("missing config path")?;
    HostModeConfig::load(Path::new(path)).map_err(|e| crate::service::chain(&e))
}

/// The server process: a multi-threaded runtime serving the agent API until SIGTERM.
fn serve_blocking(config: HostModeConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "host-mode agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: HostModeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let reaper = Reaper::start()?;
    let placement = cgroup::Placement::host(config.cgroup_parent())?;
    let containers = Arc::new(Containers::new(
        reaper,
        placement,
        config.state_dir.clone(),
        // The agent is PID 1 of the pod's PID namespace, or in the node's (hostPID):
        // no hull-pause namespace of its own.
        PodPid::Agent,
    ));
    let incoming = listener::incoming(&config.socket)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested");
    };
    eprintln!("{}", hull_agent_api::READY_MARKER);
    tracing::info!(socket = %config.socket.display(), "listening");
    let server = tonic::transport::Server::builder()
        .add_service(service::service(
            Arc::clone(&containers),
            Mode::Host(config),
        ))
        .serve_with_incoming(incoming);
    // Not a graceful shutdown: hulld keeps its connection open, which would hold it forever.
    tokio::select! {
        r = server => r?,
        () = stop => {}
    }
    containers.kill_all().await;
    tracing::info!("host-mode agent stopped");
    Ok(())
}

/// `hull-agent --host-cleanup <config>`: after the agent is gone, removes its containers'
/// cgroups (killing anything still in them), the pod's own cgroup parent when hull made
/// it, and the namespace pins. Idempotent.
pub fn cleanup(args: &[String]) -> ExitCode {
    crate::init::setup_logging();
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hull-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(launch::cleanup(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull-agent: host pod cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}
