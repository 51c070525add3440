//! `nested_pod pod`: three pods through the `hull` backend, every check of a pod on each,
//! and (`identity`) that the pods restored from one template are distinct.

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

use super::identity::{self, Identity};
use super::{Opts, bench, print_metrics};

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
    let applets = ["sh", "cat", "ip", "grep", "echo"];
    for applet in applets
        .iter()
        .chain(identity::APPLETS)
        .collect::<std::collections::BTreeSet<_>>()
    {
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
    let mut ids = Vec::new();
    for n in 1..=PODS {
        if n == PODS {
            bench::settle(&dir, "pod", n)?;
        }
        let (boot, id) = one_pod(&hv, opts, &dir, n)
            .await
            .with_context(|| format!("pod {n}"))?;
        boots.push(boot);
        ids.extend(id);
    }
    // Every pod's container reported its identity (needs the share and the NIC).
    if ids.len() == PODS {
        identity::check_all(&ids)?;
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

/// Pod `n`'s MAC: every pod gets its own, as hulld gives each pod the MAC of its CNI
/// interface; a VM restored from a template must not keep the template's.
fn mac(n: usize) -> String {
    format!("02:68:75:6c:6c:{n:02x}")
}

async fn one_pod(
    hv: &HullHypervisor,
    opts: &Opts,
    dir: &Path,
    n: usize,
) -> anyhow::Result<(Boot, Option<Identity>)> {
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
            mac: mac(n),
            mtu: 1500,
        }),
        shared_dir: with_fs.then_some(share),
        host: None,
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
    let (ready, id) = result?;
    println!(
        "NESTED-POD-PATH pod {n}: {}, start-to-agent-ready {:.1} ms",
        describe(&boot),
        ready.as_secs_f64() * 1e3
    );
    ensure!(left.is_empty(), "stop left {left:?}");
    Ok((boot, id))
}

/// Every check of one pod; the time from start to the agent being ready, and the pod's
/// identity (with the share and the NIC).
async fn drive_pod(
    vm: &dyn VmHandle,
    cfg: &VmConfig,
    t0: Instant,
    n: usize,
) -> anyhow::Result<(Duration, Option<Identity>)> {
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
    let mut id = None;
    if cfg.shared_dir.is_some() {
        id = run_container(&mut client, cfg.net.is_some(), n).await?;
    }
    if let Some(net) = &cfg.net {
        identity::flush_neighbours(&net.tap)?;
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
        if let Some(id) = &mut id {
            id.wire_mac = Some(identity::wire_mac(&net.tap, GUEST_IP)?);
        }
    }
    Ok((ready, id))
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
            mac: mac(n),
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
        true => println!(
            "NESTED-POD pod {n}: SetupSandbox configured eth0 {} {GUEST_IP}/24",
            mac(n)
        ),
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

/// Runs the pod's first container: it prints the marker from the share and (with a NIC)
/// its address and the pod's identity, which is returned.
async fn run_container(
    client: &mut AgentClient<Channel>,
    net: bool,
    n: usize,
) -> anyhow::Result<Option<Identity>> {
    let mut script = "cat /etc/marker".to_owned();
    if net {
        script.push_str("; ip -o -4 addr show dev eth0 | grep -o '[0-9.]*/24'; ");
        script.push_str(identity::SCRIPT);
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
    let before = identity::host_secs()?;
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
    let after = identity::host_secs()?;
    let mut want = format!("{MARKER}\n");
    if net {
        want.push_str(&format!("{GUEST_IP}/24\n"));
    }
    ensure!(
        wait.exit_status == 0 && out.starts_with(&want),
        "container exited {} (signal {}) with output {out:?}, want {want:?} first",
        wait.exit_status,
        wait.signal
    );
    println!(
        "NESTED-POD pod {n}: container ran from the virtio-fs share: {:?}",
        want.trim()
    );
    if !net {
        return Ok(None);
    }
    let id = identity::parse(&out[want.len()..], n, &mac(n), (before, after))?;
    println!("NESTED-POD pod {n}: identity {id:?}");
    Ok(Some(id))
}
