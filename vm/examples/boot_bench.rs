//! Boot-to-agent-ready benchmark for the QEMU backend: boots the hull guest N times and
//! prints p50/p90 of the time from `Hypervisor::start` to the first successful agent
//! `Health` over vsock, plus the kernel and initramfs sizes.
//!
//! ```text
//! cargo run --release -p hull-vm --example boot_bench -- [BOOTS] [vmlinux|bzImage]
//! ```
//! Env: HULL_GUEST_DIR (default /var/lib/hull/guest). Needs root, QEMU,
//! vhost-device-vsock and the guest built by packaging/guest/build.sh.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hull_agent_api::AGENT_VSOCK_PORT;
use hull_agent_api::v1::HealthRequest;
use hull_vm::hypervisor::{Hypervisor, VmConfig};
use hull_vm::qemu::{QemuConfig, QemuHypervisor};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn size_mib(path: &PathBuf) -> anyhow::Result<f64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} (run packaging/guest/build.sh)", path.display()))?
        .len() as f64
        / (1024.0 * 1024.0))
}

/// One boot: (start to agent ready, time in `start`, guest uptime when Health answered).
async fn boot_once(
    hv: &QemuHypervisor,
    cfg: &VmConfig,
) -> anyhow::Result<(Duration, Duration, f64)> {
    let t0 = Instant::now();
    let vm = hv.start(cfg).await?;
    let started = t0.elapsed();
    vm.wait_agent_ready(Instant::now() + Duration::from_secs(60))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ready = async {
        let mut client =
            hull_agent_api::connect(&vm.agent_socket(), AGENT_VSOCK_PORT, deadline).await?;
        let health = client.health(HealthRequest {}).await?.into_inner();
        anyhow::Ok((t0.elapsed(), started, health.uptime_seconds))
    }
    .await;
    vm.stop(Duration::from_secs(2)).await?;
    ready.with_context(|| {
        format!(
            "console: {}",
            std::fs::read_to_string(vm.console_log()).unwrap_or_default()
        )
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let boots: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let kernel_name = args.next().unwrap_or_else(|| "vmlinux".to_owned());
    if boots == 0 {
        bail!("BOOTS must be at least 1");
    }
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/hull/guest".into());
    let kernel = dir.join(&kernel_name);
    let initramfs = dir.join("initramfs.img");
    println!(
        "kernel {}: {:.2} MiB, initramfs: {:.2} MiB",
        kernel.display(),
        size_mib(&kernel)?,
        size_mib(&initramfs)?
    );
    let tmp = tempfile::Builder::new()
        .prefix("hull-boot-bench-")
        .tempdir()?;
    let cfg = VmConfig {
        id: "boot-bench".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel,
        initramfs,
        cmdline: String::new(),
        run_dir: tmp.path().join("run"),
        netns: None,
        net: None,
        shared_dir: None,
        host: None,
    };
    let hv = QemuHypervisor::new(QemuConfig::default());
    let mut times = Vec::with_capacity(boots);
    for i in 0..boots {
        let (t, started, uptime) = boot_once(&hv, &cfg)
            .await
            .with_context(|| format!("boot {}", i + 1))?;
        println!(
            "boot {:>3}: {:>6} ms (start() {} ms, guest uptime at first Health {:.0} ms)",
            i + 1,
            t.as_millis(),
            started.as_millis(),
            uptime * 1000.0
        );
        times.push(t);
    }
    times.sort();
    println!(
        "boot-to-agent-ready over {boots} boots: p50 {} ms, p90 {} ms, min {} ms, max {} ms",
        percentile(&times, 0.5).as_millis(),
        percentile(&times, 0.9).as_millis(),
        times[0].as_millis(),
        times[times.len() - 1].as_millis()
    );
    Ok(())
}
