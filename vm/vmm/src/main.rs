//! hull-vmm: one microVM per process. Reads a JSON config (`--config`) or flags, boots the
//! guest and exits with a code that says why it stopped (see `ExitReason::code`):
//! 0 guest shutdown, 1 config error, 2 setup error, 3 guest crash, 4 VMM error,
//! 5 shutdown requested (API or SIGTERM), 6 all vCPUs halted, 7 snapshot written (the API's
//! `snapshot` request). With `--restore DIR` it resumes the VM saved in DIR instead of booting.

use std::path::PathBuf;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::error_chain;
use hull_vmm::event_loop::EventLoop;
use hull_vmm::exit::ExitReason;
use hull_vmm_api::config::{BlkConfig, FsConfig, NetConfig, VmmConfig, VsockConfig};

/// hull-agent's vsock port (`hull_agent_api::AGENT_VSOCK_PORT`), what `--probe-vsock` asks
/// for by default. A number here, not a dependency: hull-vmm knows nothing else of the agent.
const AGENT_VSOCK_PORT: u32 = 1024;

#[derive(Debug, Parser)]
#[command(name = "hull-vmm", about = "hull's microVM monitor (KVM)")]
struct Args {
    /// JSON config file; when given, the other flags are ignored (but `--restore`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Resume the VM saved in this snapshot directory (written by the API's `snapshot`)
    /// instead of booting the kernel: the config must have the snapshot's vCPUs, memory and
    /// device set; backends (sockets, tap, console) come from the config.
    #[arg(long)]
    restore: Option<PathBuf>,
    #[arg(long, default_value = "")]
    id: String,
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initramfs: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long)]
    console_log: Option<PathBuf>,
    #[arg(long)]
    api_socket: Option<PathBuf>,
    #[arg(long)]
    rng: bool,
    #[arg(long)]
    vsock_cid: Option<u32>,
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Raw disk image for a virtio-blk device.
    #[arg(long)]
    blk: Option<PathBuf>,
    #[arg(long)]
    blk_read_only: bool,
    /// Tap device (in hull-vmm's network namespace) for a virtio-net NIC.
    #[arg(long)]
    net_tap: Option<String>,
    /// The NIC's MAC (aa:bb:cc:dd:ee:ff); needs --net-tap or --net-no-backend.
    #[arg(long)]
    net_mac: Option<String>,
    /// A NIC without a tap (a VM template's): frames sent are dropped, nothing arrives.
    #[arg(long)]
    net_no_backend: bool,
    /// virtiofsd's vhost-user socket for a virtio-fs device; needs --fs-tag.
    #[arg(long)]
    fs_socket: Option<PathBuf>,
    /// The virtio-fs mount tag; needs --fs-socket.
    #[arg(long)]
    fs_tag: Option<String>,
    /// Instead of running a VM: connect to the hybrid-vsock socket at this path, ask for
    /// `--probe-port` (`CONNECT <port>`), print the answer and exit 0 on `OK`.
    #[arg(long)]
    probe_vsock: Option<PathBuf>,
    #[arg(long, default_value_t = AGENT_VSOCK_PORT)]
    probe_port: u32,
    /// Jail hull-vmm (see `hull_vmm::jail`): an empty dir whose tmpfs becomes the
    /// root of a mount namespace holding only what the VM needs; needs --jail-uid/gid.
    #[arg(long)]
    jail_root: Option<PathBuf>,
    /// The unprivileged uid hull-vmm drops to before the guest runs.
    #[arg(long)]
    jail_uid: Option<u32>,
    #[arg(long)]
    jail_gid: Option<u32>,
    /// Another path to keep in the jail (a dir the API's `snapshot` writes into).
    #[arg(long)]
    jail_path: Vec<PathBuf>,
}

/// The jail asked for: root dir, uid, gid, extra paths.
struct JailArgs {
    root: PathBuf,
    uid: u32,
    gid: u32,
    extra: Vec<PathBuf>,
}

fn jail_args(args: &mut Args) -> anyhow::Result<Option<JailArgs>> {
    match (args.jail_root.take(), args.jail_uid, args.jail_gid) {
        (Some(root), Some(uid), Some(gid)) => Ok(Some(JailArgs {
            root,
            uid,
            gid,
            extra: std::mem::take(&mut args.jail_path),
        })),
        (None, None, None) if args.jail_path.is_empty() => Ok(None),
        _ => anyhow::bail!("--jail-root, --jail-uid and --jail-gid go together"),
    }
}

/// The hybrid-vsock handshake, as hulld's agent client does it.
fn probe_vsock(path: &std::path::Path, port: u32) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 && s.read(&mut byte)? == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_string();
    anyhow::ensure!(
        line.starts_with("OK "),
        "no OK from the guest (got {line:?})"
    );
    Ok(line)
}

fn config_from(args: Args) -> anyhow::Result<VmmConfig> {
    if let Some(path) = &args.config {
        return Ok(VmmConfig::from_file(path)?);
    }
    let restoring = args.restore.is_some();
    let kernel = args
        .kernel
        .or_else(|| restoring.then(PathBuf::new))
        .ok_or_else(|| anyhow::anyhow!("--kernel, --config or --restore is required"))?;
    let vsock = match (args.vsock_cid, args.vsock_uds) {
        (Some(guest_cid), Some(uds_path)) => Some(VsockConfig {
            guest_cid,
            uds_path,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--vsock-cid and --vsock-uds go together"),
    };
    let net = match (args.net_tap, args.net_mac, args.net_no_backend) {
        (Some(tap), mac, false) => Some(NetConfig {
            tap: Some(tap),
            mac,
        }),
        (None, mac, true) => Some(NetConfig { tap: None, mac }),
        (None, None, false) => None,
        (None, Some(_), false) => anyhow::bail!("--net-mac needs --net-tap or --net-no-backend"),
        (Some(_), _, true) => anyhow::bail!("--net-tap and --net-no-backend exclude each other"),
    };
    let fs = match (args.fs_socket, args.fs_tag) {
        (Some(socket), Some(tag)) => Some(FsConfig { socket, tag }),
        (None, None) => None,
        _ => anyhow::bail!("--fs-socket and --fs-tag go together"),
    };
    let config = VmmConfig {
        id: args.id,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        console_log: args.console_log,
        api_socket: args.api_socket,
        rng: args.rng,
        vsock,
        blk: args.blk.map(|path| BlkConfig {
            path,
            read_only: args.blk_read_only,
        }),
        net,
        fs,
    };
    match restoring {
        true => config.validate_for_restore()?,
        false => config.validate()?,
    }
    Ok(config)
}

fn run(mut args: Args) -> ExitReason {
    let restore = args.restore.clone();
    let parsed = jail_args(&mut args).and_then(|jail| Ok((jail, config_from(args)?)));
    let (jail, config) = match parsed {
        Ok(c) => c,
        Err(err) => {
            eprintln!("hull-vmm: {err:#}");
            return ExitReason::ConfigError;
        }
    };
    let span = tracing::info_span!("vmm", sandbox_id = %config.id);
    let _enter = span.enter();
    if let Some(j) = &jail {
        let mut keep = hull_vmm::jail::needed_paths(&config, restore.as_deref());
        keep.extend(j.extra.iter().cloned());
        if let Err(err) = hull_vmm::jail::enter_mount_namespace(&j.root, &keep) {
            eprintln!("hull-vmm: {}", error_chain(&err));
            return ExitReason::SetupError;
        }
        tracing::info!(root = %j.root.display(), "mount namespace jail entered");
    }
    let started = std::time::Instant::now();
    let built = match &restore {
        Some(dir) => builder::restore(config, dir),
        None => builder::build(config),
    };
    let mut vmm = match built {
        Ok(vmm) => vmm,
        Err(err) => {
            eprintln!("hull-vmm: {}", error_chain(&err));
            return err.exit_reason();
        }
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        restored = restore.is_some(),
        "VM built"
    );
    let event_loop = match EventLoop::new(vmm.exit.clone()) {
        Ok(l) => match &jail {
            Some(j) => l.with_privilege_drop(j.uid, j.gid),
            None => l,
        },
        Err(err) => {
            eprintln!("hull-vmm: {:#}", anyhow::Error::from(err));
            return ExitReason::SetupError;
        }
    };
    match event_loop.run(&mut vmm) {
        Ok(reason) => reason,
        Err(err) => {
            eprintln!("hull-vmm: {:#}", anyhow::Error::from(err));
            ExitReason::VmmError
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(path) = &args.probe_vsock {
        match probe_vsock(path, args.probe_port) {
            Ok(line) => {
                println!("{line}");
                std::process::exit(0);
            }
            Err(err) => {
                eprintln!("hull-vmm: probe failed: {err:#}");
                std::process::exit(1);
            }
        }
    }
    // SIGTERM/SIGINT go to the event loop's signalfd only: block them before any thread starts.
    if let Err(err) = EventLoop::block_termination_signals() {
        eprintln!("hull-vmm: {err}");
        std::process::exit(ExitReason::SetupError.code());
    }
    // A snapshot kicks vCPU threads out of KVM_RUN with a signal that needs a handler.
    if let Err(err) = hull_vmm::vcpu::register_kick_handler() {
        eprintln!("hull-vmm: installing the vCPU kick handler: {err}");
        std::process::exit(ExitReason::SetupError.code());
    }
    // Every thread started from here on installs its own allow-list (vm/vmm/src/seccomp.rs).
    hull_vmm::seccomp::enable();
    let reason = run(args);
    tracing::info!(?reason, code = reason.code(), "hull-vmm exiting");
    // vCPU threads may still be inside KVM_RUN; exiting the process ends them with the VM.
    std::process::exit(reason.code());
}
