//! `nested_pod pod`: three pods through the `hull` backend, every check of a pod on each.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hull_agent_api::v1::{self as pb, OutputStream};
use hull_agent_api::{AGENT_VSOCK_PORT, AgentClient, GUEST_SHARED_DIR};
use hull_vm::hull::files::RunFiles;
use hull_vm::hull::{Boot, HullConfig, HullHypervisor};
use hull_vm::hypervisor::{NetConfig, VmConfig, VmHandle};
use tonic::transport::Channel;

use super::{Opts, bench, print_metrics};

const MAC: &str = "02:68:75:6c:6c:01";
const GUEST_IP: &str = "10.199.0.2";
const HOST_IP: &str = "10.199.0.1";
/// Written into the container's rootfs on the host; the container prints it.
const MARKER: &str = "served-by-virtiofsd";
/// How many pods run, one after the other. Pod 1 makes the template, pods 2 and 3 are
/// restored from it; pod 3 starts on a settled test host (`bench::settle`), pods 1 and 2
/// right after the previous one's VM stopped.
const PODS: usize = 3;

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

/// How a pod started, for the `NESTED-POD-PATH` line.
fn describe(boot: &Boot) -> String {
    match boot {
        Boot::Cold => "cold".into(),
        Boot::Restored {
            created: Some(t),
            key,
            ..
        } => format!(
            "template-created+restored (template {key} created in {:.1} ms)",
            t.as_secs_f64() * 1e3
        ),
        Boot::Restored { key, .. } => format!("template-restored (template {key})"),
    }
}

pub async fn pods(opts: &Opts) -> anyhow::Result<()> {
    let dir = opts.path("--dir")?;
    let templates = !opts.flag("--no-templates");
    let hv = HullHypervisor::new(HullConfig {
        vmm: opts.path("--hull-vmm")?,
        virtiofsd: opts.path("--virtiofsd").unwrap_or_default(),
        jail: true,
    })
    .with_templates(templates);
    let mut boots = Vec::new();
    for n in 1..=PODS {
        if n == PODS {
            bench::settle(&dir, "pod", n)?;
        }
        let boot = one_pod(&hv, opts, &dir, n)
            .await
            .with_context(|| format!("pod {n}"))?;
        boots.push(boot);
    }
    if templates {
        ensure!(
            matches!(
                boots[0],
                Boot::Restored {
                    created: Some(_),
                    ..
                }
            ),
            "pod 1 did not create a template and start from it: {:?}",
            boots[0]
        );
        for (n, boot) in boots.iter().enumerate().skip(1) {
            ensure!(
                matches!(boot, Boot::Restored { created: None, .. }),
                "pod {} was not restored from the template: {boot:?}",
                n + 1
            );
        }
    }
    println!("NESTED-POD PASS");
    Ok(())
}

async fn one_pod(hv: &HullHypervisor, opts: &Opts, dir: &Path, n: usize) -> anyhow::Result<Boot> {
    let share = dir.join(format!("share{n}"));
    let with_fs = opts.flag("--fs");
    if with_fs {
        busybox_rootfs(&share.join("c1/rootfs"))?;
    }
    let cfg = VmConfig {
        id: format!("nested-pod-{n}"),
        vcpus: 1,
        memory_mib: 256,
        kernel: opts.path("--kernel")?,
        initramfs: opts.path("--initramfs")?,
        cmdline: String::new(),
        run_dir: dir.join(format!("run{n}")),
        netns: None,
        net: opts.get("--net").map(|tap| NetConfig {
            tap: tap.into(),
            mac: MAC.into(),
            mtu: 1500,
        }),
        shared_dir: with_fs.then_some(share),
    };
    let t0 = Instant::now();
    let vm = hv.start_vm(&cfg).await.context("hull backend start")?;
    let boot = vm.boot().clone();
    println!(
        "NESTED-POD pod {n}: started hull-vmm pid {} in {:?} ({})",
        vm.pid(),
        t0.elapsed(),
        describe(&boot)
    );
    let result = drive_pod(&vm, &cfg, t0, n).await;
    if let Err(e) = &result {
        println!("NESTED-POD pod {n} failed: {e:#}");
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        println!("NESTED-POD pod {n} console:\n{console}");
    }
    let exit = vm.stop(Duration::from_secs(5)).await.context("stop")?;
    let left: Vec<_> = RunFiles::new(&cfg.run_dir)
        .transient()
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    println!("NESTED-POD pod {n}: stopped: {exit:?}, files left: {left:?}");
    let ready = result?;
    println!(
        "NESTED-POD-PATH pod {n}: {}, start-to-agent-ready {:.1} ms",
        describe(&boot),
        ready.as_secs_f64() * 1e3
    );
    ensure!(left.is_empty(), "stop left {left:?}");
    Ok(boot)
}

/// Every check of one pod; the time from start to the agent being ready.
async fn drive_pod(
    vm: &dyn VmHandle,
    cfg: &VmConfig,
    t0: Instant,
    n: usize,
) -> anyhow::Result<Duration> {
    vm.wait_agent_ready(Instant::now() + Duration::from_secs(120))
        .await?;
    let ready = t0.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut client = hull_agent_api::connect(&vm.agent_socket(), AGENT_VSOCK_PORT, deadline)
        .await
        .context("connect to the agent")?;
    let health = client.health(pb::HealthRequest {}).await?.into_inner();
    println!(
        "NESTED-POD pod {n}: agent answered over vsock {:?} after start (ready after {ready:?}; kernel {}, guest uptime {:.2} s)",
        t0.elapsed(),
        health.kernel_release,
        health.uptime_seconds
    );
    print_metrics(&RunFiles::new(&cfg.run_dir).api_socket);
    match bench::smaps_split(vm.pid(), |h, _| h.contains("hull-guest-ram")) {
        Ok(m) => println!(
            "NESTED-POD pod {n}: hull-vmm memory outside guest RAM: private {} KiB (dirty {} KiB), rss {} KiB (guest RAM rss {} KiB)",
            m.other_private, m.other_dirty, m.other_rss, m.guest_rss
        ),
        Err(e) => println!("NESTED-POD smaps unreadable: {e:#}"),
    }
    // SetupSandbox mounts the share too (the agent does not at boot), so it always runs.
    setup_sandbox(&mut client, cfg.net.is_some(), n).await?;
    if cfg.shared_dir.is_some() {
        run_container(&mut client, cfg.net.is_some(), n).await?;
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
            "NESTED-POD pod {n}: test host pinged the guest: {}",
            out.lines().nth(1).unwrap_or("")
        );
    }
    Ok(ready)
}

/// 32 bytes from the host's RNG for the guest's (restored VMs share their template's CRNG).
fn host_entropy() -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf)
}

async fn setup_sandbox(
    client: &mut AgentClient<Channel>,
    net: bool,
    n: usize,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut setup = pb::SetupSandboxRequest {
        sandbox_id: format!("nested-pod-{n}"),
        hostname: format!("nested-pod-{n}"),
        entropy: host_entropy()?,
        host_time_unix_nanos: i64::try_from(now.as_nanos())?,
        ..Default::default()
    };
    if net {
        // By MAC, or (a restored VM keeps its template's MAC) eth0, which then gets MAC.
        setup.interfaces = vec![pb::Interface {
            name: "eth0".into(),
            mac: MAC.into(),
            mtu: 1500,
            addresses: vec![pb::IpAddress {
                cidr: format!("{GUEST_IP}/24"),
            }],
        }];
        setup.routes = vec![pb::Route {
            destination: "0.0.0.0/0".into(),
            gateway: HOST_IP.into(),
            device: String::new(),
        }];
    }
    client.setup_sandbox(setup).await.context("SetupSandbox")?;
    match net {
        true => println!("NESTED-POD pod {n}: SetupSandbox configured eth0 {MAC} {GUEST_IP}/24"),
        false => println!("NESTED-POD pod {n}: SetupSandbox done (no NIC)"),
    }
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

async fn run_container(
    client: &mut AgentClient<Channel>,
    net: bool,
    n: usize,
) -> anyhow::Result<()> {
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
            limit: 0,
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
        "NESTED-POD pod {n}: container ran from the virtio-fs share: {:?}",
        out.trim()
    );
    Ok(())
}
