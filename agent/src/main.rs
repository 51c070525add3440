//! # hull-agent
//!
//! PID 1 of every hull pod VM. It mounts the guest's pseudo filesystems, reaps orphans,
//! configures the pod network from what hulld sends, and runs the pod's containers
//! (namespaces and cgroup v2 inside the guest), serving `hull-agent-api` over vsock port 1024.
//!
//! On the node, `hull-agent --host-mode <config>` runs one host-isolation pod's containers
//! with the same code, behind the same API on a unix socket (see [`host`]).
//!
//! The same binary is also the container helper: the agent re-executes itself
//! (`/proc/self/exe __container-init|__container-exec <config>`) to set up each container
//! process in a fresh single-threaded process, see [`container`].
//!
//! Lifecycle: [`init::early_setup`] (mounts, cgroup controllers) → logging to the console →
//! a multi-threaded tokio runtime serving gRPC (`SetupSandbox` first: host entropy, clock,
//! virtio-fs share, network, see [`sandbox`]) → on `Shutdown`, or on a
//! fatal error, [`init::power_off`] (`reboot -f` semantics: with QEMU's `-no-reboot` the
//! VMM then exits).

mod container;
mod host;
mod init;
mod netcfg;
mod oom;
mod output;
mod portforward;
mod reaper;
mod sandbox;
mod service;
mod share;
mod vmstate;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.first().map(String::as_str) == Some(container::PAUSE_ARG0) {
        return container::run_pause();
    }
    match args.get(1).map(String::as_str) {
        Some(container::helper::INIT_ARG) => return container::helper::run_init(&args),
        Some(container::helper::EXEC_ARG) => return container::helper::run_exec(&args),
        Some(hull_agent_api::host::HOST_MODE_ARG) => return host::run(&args),
        Some(hull_agent_api::host::HOST_CLEANUP_ARG) => return host::cleanup(&args),
        _ => {}
    }
    let pid1 = std::process::id() == 1;
    if pid1 {
        init::install_panic_hook();
        if let Err(e) = init::early_setup() {
            eprintln!("hull-agent: early setup failed: {e:#}");
            init::power_off();
        }
    }
    init::setup_logging();
    let result = run();
    match &result {
        Ok(()) => tracing::info!("agent stopped"),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "agent failed"),
    }
    if pid1 {
        init::power_off();
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(service::serve())
}
