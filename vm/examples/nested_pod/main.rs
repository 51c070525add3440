//! The client the nested harness (test/nested/run.sh) runs inside its test host, where KVM
//! boots stock guests. Two modes:
//!
//! ```text
//! nested_pod pod   --dir D --kernel K --initramfs I --hull-vmm P --virtiofsd P [--net TAP] [--fs]
//! nested_pod bench --dir D --kernel K --initramfs I --hull-vmm P [--qemu P] [--runs N]
//!                  [--cmdline-extra ARGS]
//! ```
//!
//! `pod` is a pod the way hulld runs one: the `hull` backend ([`HullHypervisor`]) starts
//! virtiofsd and hull-vmm, the agent answers over the hybrid vsock, SetupSandbox configures
//! eth0 on the tap, a busybox container runs from the virtio-fs share (CreateContainer,
//! StartContainer, ReadOutput, WaitProcess) and the test host pings the guest. Every check
//! prints a `NESTED-POD` line; any failure exits non-zero.
//!
//! `bench` boots the same guest N times with hull-vmm and with QEMU microvm (KVM), both with
//! a vsock device and the console in a file, and times launch → the agent's ready line on the
//! console (polled every millisecond, the same way for both). It prints the p50 of each, the
//! ratio, hull-vmm's KVM exit counters and its memory outside guest RAM (smaps).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hull_agent_api::v1::{self as pb, OutputStream};
use hull_agent_api::{AGENT_VSOCK_PORT, AgentClient, GUEST_SHARED_DIR};
use hull_vm::hull::files::RunFiles;
use hull_vm::hull::{HullConfig, HullHypervisor};
use hull_vm::hypervisor::{AGENT_READY_MARKER, Hypervisor, NetConfig, VmConfig, VmHandle};
use tonic::transport::Channel;

mod bench;
use bench::bench;

const MAC: &str = "02:68:75:6c:6c:01";
const GUEST_IP: &str = "10.199.0.2";
const HOST_IP: &str = "10.199.0.1";
/// Written into the container's rootfs on the host; the container prints it.
const MARKER: &str = "served-by-virtiofsd";

/// Command-line options (`--key value` pairs and `--flag`s).
struct Opts(Vec<String>);

impl Opts {
    fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == key)?;
        self.0.get(i + 1).map(String::as_str)
    }
    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        self.get(key)
            .map(PathBuf::from)
            .with_context(|| format!("{key} is required"))
    }
    fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|a| a == key)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(!args.is_empty(), "usage: nested_pod pod|bench [options]");
    let mode = args.remove(0);
    let opts = Opts(args);
    match mode.as_str() {
        "pod" => pod(&opts).await,
        "bench" => bench(&opts),
        other => bail!("unknown mode {other}"),
    }
}

/// A busybox rootfs with a marker file at `root`.
fn busybox_rootfs(root: &Path) -> anyhow::Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copy /bin/busybox")?;
    for applet in ["sh", "cat", "ip", "grep", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/marker"), format!("{MARKER}\n"))?;
    Ok(())
}

async fn pod(opts: &Opts) -> anyhow::Result<()> {
    let dir = opts.path("--dir")?;
    let share = dir.join("share");
    let with_fs = opts.flag("--fs");
    if with_fs {
        busybox_rootfs(&share.join("c1/rootfs"))?;
    }
    let cfg = VmConfig {
        id: "nested-pod".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: opts.path("--kernel")?,
        initramfs: opts.path("--initramfs")?,
        cmdline: String::new(),
        run_dir: dir.join("run"),
        netns: None,
        net: opts.get("--net").map(|tap| NetConfig {
            tap: tap.into(),
            mac: MAC.into(),
            mtu: 1500,
        }),
        shared_dir: with_fs.then_some(share),
    };
    let hv = HullHypervisor::new(HullConfig {
        vmm: opts.path("--hull-vmm")?,
        virtiofsd: opts.path("--virtiofsd").unwrap_or_default(),
    });
    let t0 = Instant::now();
    let vm = hv.start(&cfg).await.context("hull backend start")?;
    println!(
        "NESTED-POD started hull-vmm pid {} in {:?}",
        vm.pid(),
        t0.elapsed()
    );
    let result = drive_pod(&*vm, &cfg, t0).await;
    if result.is_err() {
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        println!("NESTED-POD console:\n{console}");
    }
    let exit = vm.stop(Duration::from_secs(5)).await.context("stop")?;
    let left: Vec<_> = RunFiles::new(&cfg.run_dir)
        .transient()
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    println!("NESTED-POD stopped: {exit:?}, files left: {left:?}");
    result?;
    ensure!(left.is_empty(), "stop left {left:?}");
    println!("NESTED-POD PASS");
    Ok(())
}

async fn drive_pod(vm: &dyn VmHandle, cfg: &VmConfig, t0: Instant) -> anyhow::Result<()> {
    vm.wait_agent_ready(Instant::now() + Duration::from_secs(120))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut client = hull_agent_api::connect(&vm.agent_socket(), AGENT_VSOCK_PORT, deadline)
        .await
        .context("connect to the agent")?;
    let health = client.health(pb::HealthRequest {}).await?.into_inner();
    println!(
        "NESTED-POD agent answered over vsock {:?} after start (kernel {}, guest uptime {:.2} s)",
        t0.elapsed(),
        health.kernel_release,
        health.uptime_seconds
    );
    print_metrics(&RunFiles::new(&cfg.run_dir).api_socket);
    match bench::smaps_split(vm.pid(), |h, _| h.contains("hull-guest-ram")) {
        Ok(m) => println!(
            "NESTED-POD hull-vmm memory outside guest RAM: private {} KiB (dirty {} KiB), rss {} KiB (guest RAM rss {} KiB)",
            m.other_private, m.other_dirty, m.other_rss, m.guest_rss
        ),
        Err(e) => println!("NESTED-POD smaps unreadable: {e:#}"),
    }
    if cfg.net.is_some() {
        setup_network(&mut client).await?;
    }
    if cfg.shared_dir.is_some() {
        run_container(&mut client, cfg.net.is_some()).await?;
    }
    if cfg.net.is_some() {
        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "10", GUEST_IP])
            .output()
            .context("run ping")?;
        let out = String::from_utf8_lossy(&ping.stdout);
        ensure!(
            ping.status.success(),
            "ping {GUEST_IP} from the test host failed: {out}"
        );
        println!(
            "NESTED-POD test host pinged the guest: {}",
            out.lines().nth(1).unwrap_or("")
        );
    }
    Ok(())
}

async fn setup_network(client: &mut AgentClient<Channel>) -> anyhow::Result<()> {
    let setup = pb::SetupSandboxRequest {
        sandbox_id: "nested-pod".into(),
        hostname: "nested-pod".into(),
        interfaces: vec![pb::Interface {
            name: String::new(),
            mac: MAC.into(),
            mtu: 1500,
            addresses: vec![pb::IpAddress {
                cidr: format!("{GUEST_IP}/24"),
            }],
        }],
        routes: vec![pb::Route {
            destination: "0.0.0.0/0".into(),
            gateway: HOST_IP.into(),
            device: String::new(),
        }],
        ..Default::default()
    };
    client.setup_sandbox(setup).await.context("SetupSandbox")?;
    println!("NESTED-POD SetupSandbox configured eth0 {MAC} {GUEST_IP}/24");
    Ok(())
}

fn spec_json(script: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/",
                     "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "hostname": "ctr",
        "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
        "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "uts" },
                                  { "type": "network", "path": "/proc/1/ns/net" }] }
    }))?)
}

async fn run_container(client: &mut AgentClient<Channel>, net: bool) -> anyhow::Result<()> {
    let mut script = "cat /etc/marker".to_owned();
    if net {
        script.push_str("; ip -o -4 addr show dev eth0 | grep -o '[0-9.]*/24'");
    }
    let create = pb::CreateContainerRequest {
        container_id: "c1".into(),
        oci_spec_json: spec_json(&script)?,
        rootfs: format!("{GUEST_SHARED_DIR}/c1/rootfs"),
    };
    client
        .create_container(create)
        .await
        .context("CreateContainer")?;
    let mut reader = client.clone();
    let stdout = tokio::spawn(async move {
        let req = pb::ReadOutputRequest {
            container_id: "c1".into(),
            exec_id: String::new(),
            stream: OutputStream::Stdout as i32,
        };
        let mut s = reader.read_output(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s.message().await? {
            out.extend_from_slice(&chunk.data);
        }
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    });
    let start = pb::StartContainerRequest {
        container_id: "c1".into(),
    };
    client
        .start_container(start)
        .await
        .context("StartContainer")?;
    let wait = pb::WaitProcessRequest {
        container_id: "c1".into(),
        exec_id: String::new(),
    };
    let wait = client
        .wait_process(wait)
        .await
        .context("WaitProcess")?
        .into_inner();
    let out = stdout.await??;
    let mut want = format!("{MARKER}\n");
    if net {
        want.push_str(&format!("{GUEST_IP}/24\n"));
    }
    ensure!(
        wait.exit_status == 0 && out == want,
        "container exited {} (signal {}) with output {out:?}, want {want:?}",
        wait.exit_status,
        wait.signal
    );
    println!(
        "NESTED-POD container ran from the virtio-fs share: {:?}",
        out.trim()
    );
    Ok(())
}

/// One request on hull-vmm's control API.
fn api(socket: &Path, op: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("{}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    writeln!(s, "{{\"op\":\"{op}\"}}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

fn print_metrics(socket: &Path) {
    match api(socket, "metrics") {
        Ok(m) => println!("NESTED-METRICS {m}"),
        Err(e) => println!("NESTED-METRICS unavailable: {e:#}"),
    }
}
