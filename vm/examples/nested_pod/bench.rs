//! `nested_pod bench`: boot-to-agent-ready of hull-vmm and QEMU microvm on the same guest,
//! in the same (nested) test host, measured the same way; the same for hull-vmm restoring a
//! snapshot of that guest taken at agent-ready (`restore.rs`); and what each VMM costs in
//! host memory outside guest RAM (from /proc/<pid>/smaps).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::restore::{make_snapshot, restore_boot};
use super::{AGENT_READY_MARKER, Opts, api};

/// Kernel arguments both VMMs get on top of their own (hull-vmm adds `console=ttyS0
/// reboot=k panic=1 pci=off ...`, the backend `loglevel=4 8250.nr_uarts=1`).
const CMDLINE: &str = "loglevel=4 8250.nr_uarts=1";
pub const MEMORY_MIB: u64 = 256;
/// Default for `--boot-timeout` (seconds).
const BOOT_TIMEOUT_SECS: u64 = 120;

/// One boot.
pub struct Sample {
    pub ready: Duration,
    pub mem: MemSplit,
    pub metrics: Option<serde_json::Value>,
}

/// Memory of a VMM process in KiB, split into guest RAM and everything else.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemSplit {
    pub guest_rss: u64,
    /// Resident outside guest RAM (shared library pages included).
    pub other_rss: u64,
    /// Private_Clean + Private_Dirty outside guest RAM: what this VMM alone costs while it
    /// is the only one running (its program text counts as private then).
    pub other_private: u64,
    /// Private_Dirty outside guest RAM: what each further VM costs (heap, stacks, data;
    /// the program text is shared between VMMs).
    pub other_dirty: u64,
}

/// Sums smaps, treating a mapping as guest RAM if `is_guest(header, size_kib)`.
pub fn smaps_split(pid: u32, is_guest: impl Fn(&str, u64) -> bool) -> anyhow::Result<MemSplit> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut split = MemSplit::default();
    let (mut header, mut guest) = (String::new(), false);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        if !key.ends_with(':') {
            header = line.to_owned();
            continue;
        }
        let kib: u64 = val.parse().unwrap_or(0);
        match key {
            "Size:" => guest = is_guest(&header, kib),
            "Rss:" if guest => split.guest_rss += kib,
            "Rss:" => split.other_rss += kib,
            "Private_Clean:" if !guest => split.other_private += kib,
            "Private_Dirty:" if !guest => {
                split.other_private += kib;
                split.other_dirty += kib;
            }
            _ => {}
        }
    }
    Ok(split)
}

/// `--boot-timeout`: how long one boot or restore may take to agent-ready.
pub fn boot_timeout(opts: &Opts) -> Duration {
    let secs = opts.get("--boot-timeout").and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(BOOT_TIMEOUT_SECS))
}

/// Waits for the agent's ready line on `console`; the time since `t0`.
pub fn wait_ready(
    console: &Path,
    child: &mut Child,
    t0: Instant,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let marker = AGENT_READY_MARKER.as_bytes();
    loop {
        let text = std::fs::read(console).unwrap_or_default();
        if text.windows(marker.len()).any(|w| w == marker) {
            return Ok(t0.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("VMM exited ({status}) before the agent was ready:\n{log}");
        }
        if t0.elapsed() > timeout {
            bail!("agent not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let t0 = Instant::now();
    while matches!(child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// [`CMDLINE`] plus `--cmdline-extra` (e.g. `loglevel=7` to see the kernel's timestamps).
pub fn cmdline(opts: &Opts) -> String {
    match opts.get("--cmdline-extra") {
        Some(extra) => format!("{CMDLINE} {extra}"),
        None => CMDLINE.to_owned(),
    }
}

fn hull_boot(opts: &Opts, dir: &Path, i: usize) -> anyhow::Result<Sample> {
    let f = |name: &str| dir.join(format!("hull-{i}-{name}"));
    let (console, api_sock, log) = (f("console.log"), f("api.sock"), f("vmm.log"));
    let mut cmd = Command::new(opts.path("--hull-vmm")?);
    cmd.arg("--kernel").arg(opts.path("--kernel")?);
    cmd.arg("--initramfs").arg(opts.path("--initramfs")?);
    cmd.args([
        "--memory-mib",
        &MEMORY_MIB.to_string(),
        "--vcpus",
        "1",
        "--cmdline",
        &cmdline(opts),
    ]);
    cmd.arg("--console-log")
        .arg(&console)
        .arg("--api-socket")
        .arg(&api_sock);
    cmd.args(["--vsock-cid", "3", "--vsock-uds"])
        .arg(f("agent.vsock"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("spawn hull-vmm")?;
    let ready = wait_ready(&console, &mut child, t0, &log, boot_timeout(opts));
    let sample = ready.and_then(|ready| hull_sample(&child, &api_sock, ready));
    stop(child);
    sample
}

/// A hull-vmm sample once its guest is ready: memory split and the API's metrics.
pub fn hull_sample(child: &Child, api_sock: &Path, ready: Duration) -> anyhow::Result<Sample> {
    let mem = smaps_split(child.id(), |h, _| h.contains("hull-guest-ram"))?;
    let metrics = api(api_sock, "metrics").ok();
    Ok(Sample {
        ready,
        mem,
        metrics,
    })
}

fn qemu_boot(opts: &Opts, qemu: &Path, dir: &Path, i: usize) -> anyhow::Result<Sample> {
    let console = dir.join(format!("qemu-{i}-console.log"));
    let log = dir.join(format!("qemu-{i}.log"));
    let mut serial = std::ffi::OsString::from("file:");
    serial.push(&console);
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-L",
        "/usr/share/qemu",
        "-M",
        "microvm,accel=kvm,acpi=off,rtc=off",
        "-cpu",
        "host",
    ]);
    cmd.args([
        "-smp",
        "1",
        "-m",
        &format!("{MEMORY_MIB}M"),
        "-nodefaults",
        "-no-user-config",
    ]);
    cmd.args(["-nographic", "-no-reboot", "-serial"])
        .arg(serial);
    cmd.arg("-kernel").arg(opts.path("--kernel")?);
    cmd.arg("-initrd").arg(opts.path("--initramfs")?);
    cmd.args([
        "-append",
        &format!("console=ttyS0 reboot=t panic=-1 {}", cmdline(opts)),
    ]);
    cmd.args(["-device", "vhost-vsock-device,guest-cid=3"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("spawn qemu")?;
    let ready = wait_ready(&console, &mut child, t0, &log, boot_timeout(opts));
    let guest_kib = MEMORY_MIB * 1024;
    let sample = ready.and_then(|ready| {
        let mem = smaps_split(child.id(), |_, size| size == guest_kib)?;
        Ok(Sample {
            ready,
            mem,
            metrics: None,
        })
    });
    stop(child);
    sample
}

fn p50<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[(v.len() - 1) / 2]
}

/// The 90th percentile (nearest rank): the largest of fewer than 10 samples.
fn p90<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[(v.len() * 9).div_ceil(10).max(1) - 1]
}

/// Prints every sample and the p50 line; returns the p50 and p90 of boot-to-agent-ready.
fn report(name: &str, samples: &[Sample]) -> (Duration, Duration) {
    for (i, s) in samples.iter().enumerate() {
        println!(
            "NESTED-BENCH {name} run {i}: ready {:.1} ms, guest RAM rss {} KiB, other rss {} KiB, other private {} KiB (dirty {} KiB){}",
            s.ready.as_secs_f64() * 1e3,
            s.mem.guest_rss,
            s.mem.other_rss,
            s.mem.other_private,
            s.mem.other_dirty,
            s.metrics
                .as_ref()
                .map(|m| format!(", metrics {m}"))
                .unwrap_or_default()
        );
    }
    let ready = p50(samples.iter().map(|s| s.ready).collect());
    let ready90 = p90(samples.iter().map(|s| s.ready).collect());
    let private = p50(samples.iter().map(|s| s.mem.other_private).collect());
    let dirty = p50(samples.iter().map(|s| s.mem.other_dirty).collect());
    let rss = p50(samples.iter().map(|s| s.mem.other_rss).collect());
    println!(
        "NESTED-BENCH-P50 {name}: boot-to-agent-ready {:.1} ms (p90 {:.1} ms, {} runs), memory outside guest RAM: private {private} KiB ({:.2} MiB; dirty {dirty} KiB, {:.2} MiB), rss {rss} KiB",
        ready.as_secs_f64() * 1e3,
        ready90.as_secs_f64() * 1e3,
        samples.len(),
        private as f64 / 1024.0,
        dirty as f64 / 1024.0
    );
    (ready, ready90)
}

fn ratio(
    name: &str,
    (v50, v90): (Duration, Duration),
    (q50, q90): (Duration, Duration),
    note: &str,
) {
    println!(
        "NESTED-BENCH-RATIO {name}/qemu boot-to-agent-ready p50: {:.3} (p90: {:.3}) ({note})",
        v50.as_secs_f64() / q50.as_secs_f64(),
        v90.as_secs_f64() / q90.as_secs_f64()
    );
}

/// Prints the guest console of a boot (kernel timestamps show where boot time goes).
fn show_console(name: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    println!("NESTED-BENCH console of the first {name} boot:\n{text}");
}

pub fn bench(opts: &Opts) -> anyhow::Result<()> {
    let dir = opts.path("--dir")?;
    std::fs::create_dir_all(&dir)?;
    let runs: usize = opts.get("--runs").unwrap_or("5").parse()?;
    let qemu: Option<PathBuf> = opts.get("--qemu").map(PathBuf::from);
    let snapshot = make_snapshot(opts, &dir).context("hull-vmm snapshot")?;
    let (mut hull, mut restores, mut after_busy, mut qemus) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so a slow phase of the (shared, emulated) test host hits all alike; each
    // measured boot but one kind starts on a settled test host (see `settle`).
    // hull-vmm must boot and restore every time; QEMU is only the reference, so a QEMU boot
    // that fails is reported and skipped (one success is enough for a ratio).
    for i in 0..runs.max(1) {
        settle(&dir, "hull-vmm", i)?;
        let h = hull_boot(opts, &dir, i).with_context(|| format!("hull-vmm boot {i}"))?;
        print_boot("hull-vmm", i, &h);
        hull.push(h);
        // Right after the cold boot's VM stopped, unsettled: the pessimistic number.
        let r = restore_boot(opts, &dir, &snapshot, i)
            .with_context(|| format!("hull-vmm restore {i}"))?;
        print_boot("hull-vmm-restore-after-busy", i, &r);
        after_busy.push(r);
        settle(&dir, "hull-vmm-restore", i)?;
        let r = restore_boot(opts, &dir, &snapshot, runs + i)
            .with_context(|| format!("hull-vmm restore {}", runs + i))?;
        print_boot("hull-vmm-restore", i, &r);
        restores.push(r);
        if let Some(q) = &qemu {
            settle(&dir, "qemu", i)?;
            match qemu_boot(opts, q, &dir, i) {
                Ok(s) => {
                    print_boot("qemu", i, &s);
                    qemus.push(s);
                }
                Err(e) => println!("NESTED-BENCH-BOOT qemu {i} failed: {e:#}"),
            }
        }
    }
    if qemu.is_some() && qemus.is_empty() {
        bail!("no QEMU boot reached agent-ready");
    }
    show_console("hull-vmm", &dir.join("hull-0-console.log"));
    let h = report("hull-vmm", &hull);
    let r = report("hull-vmm-restore", &restores);
    let rb = report("hull-vmm-restore-after-busy", &after_busy);
    if !qemus.is_empty() {
        show_console("qemu", &dir.join("qemu-0-console.log"));
        let q = report("qemu-microvm", &qemus);
        ratio("hull-vmm-cold", h, q, "cold boot");
        ratio("hull-vmm-restore", r, q, "goal <= 0.5");
        ratio(
            "hull-vmm-restore-after-busy",
            rb,
            q,
            "each right after a cold boot, unsettled: see bench.rs",
        );
    }
    Ok(())
}

/// MiB written by `settle`: more than a guest touches on its way to agent-ready (~40).
const SETTLE_MIB: usize = 64;

/// Settles the test host before a measured boot: writes `SETTLE_MIB` to a file in its
/// tmpfs and deletes it, timed.
///
/// Why: in the nested test host (QEMU TCG), the first ~32 MiB of shared memory written after
/// a VM whose guest ran a while are slow: measured, a 32 MiB tmpfs write right after a cold
/// boot's VM stopped took 1.6 s, the next two 0.26 s each (touching 1.2 GiB of anonymous
/// memory, which gets huge pages, did not help; perf puts the time in the kernel's
/// clear_page). A hull-vmm restore fills guest RAM (a memfd) that way, so right after such a
/// VM its ~31 MiB read took ~1.7 s against ~0.15 s on a settled host. This is the
/// emulator's cost of writing to pages that just held the nested guest (TCG tracks guest
/// pages it has translated code from), not something real hardware has, so every measured
/// boot, QEMU's included, starts settled, and one series (`hull-vmm-restore-after-busy`)
/// does not, to show the unsettled cost.
pub fn settle(dir: &Path, before: &str, i: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let t = Instant::now();
    let path = dir.join("settle");
    let mut f = File::create(&path).context("settle file")?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..SETTLE_MIB {
        f.write_all(&chunk).context("settle write")?;
    }
    drop(f);
    std::fs::remove_file(&path).context("settle remove")?;
    println!(
        "NESTED-BENCH-SETTLE before {before} {i}: {SETTLE_MIB} MiB written in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn print_boot(name: &str, i: usize, s: &Sample) {
    println!(
        "NESTED-BENCH-BOOT {name} {i}: {:.1} ms",
        s.ready.as_secs_f64() * 1e3
    );
}
