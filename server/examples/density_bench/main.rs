//! Density benchmark client (test/bench/density_bench.sh runs it against hulld and against
//! containerd + runc): N idle pods, each a busybox `sleep` container, started with C
//! RunPodSandbox calls in flight; then what each idle pod costs the host.
//!
//! One run: pull the image if needed → N pods started C at a time (RunPodSandbox, then
//! CreateContainer + StartContainer; latency and errors of each) → all READY/RUNNING →
//! settle → memory per pod by component (PSS from `smaps_rollup`, guest RAM from the memfd
//! mappings in `smaps`, the pod's files on tmpfs, the runtime daemon's PSS growth / N, the
//! node's MemAvailable drop / N) → CPU of the pods' processes over `--idle-secs` → each pod
//! serves execs and log lines → settle → memory again → all removed (C at a time) → what is
//! left (hull: processes naming a pod's run dir, run dirs, netns). Prints a summary and
//! writes everything as JSON (`--json`). Exits 1 if any call failed or anything was left.

mod pods;
mod procs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Hull,
    Containerd,
}

#[derive(Debug, Parser)]
struct Args {
    /// The runtime's CRI socket.
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, value_enum)]
    runtime: Runtime,
    /// hulld's state_dir (pods' run dirs are `<state>/sandboxes/<id>`).
    #[arg(long, default_value = "/run/hull")]
    state_dir: PathBuf,
    /// The runtime daemon's pid (its PSS growth is shared out over the pods).
    #[arg(long)]
    daemon_pid: Option<u32>,
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// RunPodSandbox calls in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long)]
    image: String,
    /// Where the pods' CRI log directories go.
    #[arg(long)]
    log_dir: PathBuf,
    #[arg(long, default_value = "density")]
    prefix: String,
    /// Pod memory limit in MiB (0: none, the runtime's default VM size).
    #[arg(long, default_value_t = 0)]
    memory_limit_mib: i64,
    #[arg(long, default_value = "")]
    runtime_handler: String,
    /// Seconds between the pods being ready and the memory snapshot.
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    /// CPU window over the idle pods.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// ExecSync calls per pod in the exercise phase (0: skip the phase).
    #[arg(long, default_value_t = 3)]
    execs: usize,
    /// Leave the pods running (for a look by hand); the caller removes them.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
}

fn lat(v: &[f64]) -> serde_json::Value {
    json!({ "p50": percentile(v, 50.0), "p99": percentile(v, 99.0),
            "max": v.iter().copied().reduce(f64::max), "n": v.len() })
}

/// MemAvailable in KiB, the median of 5 samples 200 ms apart (other work on the host moves it).
async fn mem_available() -> u64 {
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(procs::meminfo_kib("MemAvailable").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    v.sort_unstable();
    v[2]
}

struct Ctx {
    args: Args,
}

impl Ctx {
    fn pod_procs(&self, all: &[procs::Proc], pod_id: &str) -> Vec<procs::Proc> {
        match self.args.runtime {
            Runtime::Hull => procs::hull_pod(all, &self.run_dir(pod_id)),
            Runtime::Containerd => procs::containerd_pod(all, pod_id),
        }
    }

    fn run_dir(&self, pod_id: &str) -> PathBuf {
        self.args.state_dir.join("sandboxes").join(pod_id)
    }

    fn daemon_pss(&self) -> u64 {
        self.args
            .daemon_pid
            .and_then(procs::memory)
            .map(|m| m.pss_kib)
            .unwrap_or(0)
    }

    /// Memory per pod (means over the pods), KiB.
    fn memory(
        &self,
        ids: &[String],
        daemon_before: u64,
        avail_before: u64,
        avail_now: u64,
    ) -> serde_json::Value {
        let all = procs::all();
        let n = ids.len().max(1) as u64;
        let mut sum: BTreeMap<String, u64> = BTreeMap::new();
        let mut nprocs: BTreeMap<String, u32> = BTreeMap::new();
        let (mut guest, mut tmpfs, mut totals) = (0, 0, Vec::new());
        for id in ids {
            let dir = (self.args.runtime == Runtime::Hull).then(|| self.run_dir(id));
            let m = procs::PodMemory::of(&self.pod_procs(&all, id), dir.as_deref());
            for (c, kib) in &m.components_kib {
                *sum.entry(c.clone()).or_default() += kib;
            }
            for (c, k) in &m.processes {
                nprocs.insert(c.clone(), (*k).max(*nprocs.get(c).unwrap_or(&0)));
            }
            guest += m.guest_ram_kib;
            tmpfs += m.tmpfs_kib;
            totals.push(m.total_kib() as f64);
        }
        let daemon_share = self.daemon_pss().saturating_sub(daemon_before) / n;
        let per_pod: BTreeMap<String, u64> = sum.iter().map(|(c, k)| (c.clone(), k / n)).collect();
        let total = per_pod.values().sum::<u64>() + guest / n + tmpfs / n + daemon_share;
        json!({
            "components_kib": per_pod, "processes_per_pod": nprocs,
            "guest_ram_kib": guest / n, "tmpfs_kib": tmpfs / n,
            "daemon_share_kib": daemon_share, "total_kib": total,
            "pod_total_min_kib": totals.iter().copied().reduce(f64::min),
            "pod_total_max_kib": totals.iter().copied().reduce(f64::max),
            "mem_available_drop_kib": avail_before.saturating_sub(avail_now) / n,
        })
    }

    /// CPU seconds the pods' processes have used so far, mean per pod (under TCG the work of
    /// a boot or of the execs, independent of how long the loaded host made it take).
    fn cpu_secs_per_pod(&self, ids: &[String]) -> f64 {
        let all = procs::all();
        let ticks: u64 = ids
            .iter()
            .flat_map(|id| self.pod_procs(&all, id))
            .filter_map(|p| procs::cpu_ticks(p.pid))
            .sum();
        ticks as f64 / procs::USER_HZ / ids.len().max(1) as f64
    }

    /// CPU of the pods' processes (and the daemon) over the idle window, % of one core per pod.
    async fn idle_cpu(&self, ids: &[String]) -> serde_json::Value {
        let all = procs::all();
        let mut pids: Vec<u32> = ids
            .iter()
            .flat_map(|id| self.pod_procs(&all, id))
            .map(|p| p.pid)
            .collect();
        pids.extend(self.args.daemon_pid);
        let ticks = |pids: &[u32]| -> Vec<Option<u64>> {
            pids.iter().map(|p| procs::cpu_ticks(*p)).collect()
        };
        let before = ticks(&pids);
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(self.args.idle_secs)).await;
        let after = ticks(&pids);
        let (mut pods_ticks, mut daemon_ticks) = (0, 0);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let d = match (b, a) {
                (Some(b), Some(a)) => a.saturating_sub(*b),
                _ => 0,
            };
            if Some(pids[i]) == self.args.daemon_pid && i == pids.len() - 1 {
                daemon_ticks = d;
            } else {
                pods_ticks += d;
            }
        }
        let secs = self.args.idle_secs.max(1) as f64;
        let n = ids.len().max(1) as f64;
        json!({
            "window_secs": self.args.idle_secs,
            "pct_core_per_pod": pods_ticks as f64 / procs::USER_HZ / secs / n * 100.0,
            "daemon_pct_core_per_pod": daemon_ticks as f64 / procs::USER_HZ / secs / n * 100.0,
            "loadavg_before": load_before.trim(),
            "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        })
    }

    /// hull: what the removed pods left (processes naming a run dir, run dirs, netns).
    fn leftovers(&self, ids: &[String]) -> Vec<String> {
        if self.args.runtime != Runtime::Hull {
            let all = procs::all();
            return ids
                .iter()
                .flat_map(|id| self.pod_procs(&all, id))
                .map(|p| format!("process {} {}", p.pid, p.comm))
                .collect();
        }
        let all = procs::all();
        let mut left = Vec::new();
        for id in ids {
            for p in self.pod_procs(&all, id) {
                left.push(format!("process {} ({}) of pod {id}", p.pid, p.comm));
            }
            if self.run_dir(id).exists() {
                left.push(format!("run dir {}", self.run_dir(id).display()));
            }
            let ns = Path::new("/run/netns").join(format!("hull-{id}"));
            if ns.exists() {
                left.push(format!("netns {}", ns.display()));
            }
        }
        left
    }
}

fn kib_mib(v: &serde_json::Value) -> String {
    v.as_u64()
        .map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn print_memory(what: &str, m: &serde_json::Value) {
    let parts: Vec<String> = m["components_kib"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(c, k)| format!("{c} {}", kib_mib(k)))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "  {what}: {} MiB/pod = {} + guest RAM {} + tmpfs {} + daemon share {}; MemAvailable drop {} MiB/pod",
        kib_mib(&m["total_kib"]),
        parts.join(" + "),
        kib_mib(&m["guest_ram_kib"]),
        kib_mib(&m["tmpfs_kib"]),
        kib_mib(&m["daemon_share_kib"]),
        kib_mib(&m["mem_available_drop_kib"]),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{:?}", args.runtime));
    let ch = pods::channel(args.socket.clone()).await?;
    pods::ensure_image(&ch, &args.image).await?;
    let template = pods::PodTemplate {
        prefix: args.prefix.clone(),
        image: args.image.clone(),
        log_dir: args.log_dir.clone(),
        memory_limit_mib: args.memory_limit_mib,
        runtime_handler: args.runtime_handler.clone(),
    };
    let (n, c) = (args.pods, args.concurrency);
    let ctx = Ctx { args };
    let avail_before = mem_available().await;
    let daemon_before = ctx.daemon_pss();
    let t = std::time::Instant::now();
    let (started, mut errors) = pods::start_all(&ch, &template, n, c).await;
    let start_secs = t.elapsed().as_secs_f64();
    let ids: Vec<String> = started.iter().map(|s| s.pod_id.clone()).collect();
    println!(
        "{label}: {} of {n} pods started with {c} in flight in {start_secs:.1} s",
        ids.len()
    );
    let mut report = json!({
        "label": label, "runtime": format!("{:?}", ctx.args.runtime).to_lowercase(),
        "pods": n, "concurrency": c, "memory_limit_mib": ctx.args.memory_limit_mib,
        "start_secs": start_secs,
        "run_pod_sandbox_ms": lat(&started.iter().map(|s| s.run_ms).collect::<Vec<_>>()),
        "container_create_start_ms": lat(&started.iter().map(|s| s.container_ms).collect::<Vec<_>>()),
    });
    let result = measure(
        &ctx,
        &ch,
        &started,
        &ids,
        (daemon_before, avail_before),
        &mut report,
    )
    .await;
    if let Err(e) = &result {
        errors.push(format!("{e:#}"));
    }
    if !ctx.args.keep {
        let t = std::time::Instant::now();
        let (times, remove_errors) = pods::remove_all(&ch, &ids, c).await;
        report["remove_ms"] = lat(&times);
        report["remove_secs"] = json!(t.elapsed().as_secs_f64());
        errors.extend(remove_errors);
        let still = pods::listed(&ch).await.unwrap_or_default();
        let mut left: Vec<String> = still
            .iter()
            .filter(|id| ids.contains(id))
            .map(|id| format!("pod {id} still listed"))
            .collect();
        left.extend(ctx.leftovers(&ids));
        println!(
            "  removed in {:.1} s; left behind: {}",
            t.elapsed().as_secs_f64(),
            if left.is_empty() {
                "nothing".to_owned()
            } else {
                left.join(", ")
            }
        );
        report["left_behind"] = json!(left);
        errors.extend(left.iter().map(|l| format!("left behind: {l}")));
    }
    for e in &errors {
        println!("  ERROR: {e}");
    }
    report["errors"] = json!(errors);
    if let Some(path) = &ctx.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Readiness, memory, idle CPU, exercise, memory again.
async fn measure(
    ctx: &Ctx,
    ch: &tonic::transport::Channel,
    started: &[pods::Started],
    ids: &[String],
    (daemon_before, avail_before): (u64, u64),
    report: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let r = &report["run_pod_sandbox_ms"];
    println!(
        "  RunPodSandbox p50 {:.0} ms, p99 {:.0} ms",
        r["p50"].as_f64().unwrap_or(f64::NAN),
        r["p99"].as_f64().unwrap_or(f64::NAN)
    );
    let bad = pods::not_ready(ch, started).await?;
    anyhow::ensure!(bad.is_empty(), "not ready: {}", bad.join(", "));
    let args = &ctx.args;
    let start_cpu = ctx.cpu_secs_per_pod(ids);
    println!("  CPU to start a pod (its processes, to ready + container): {start_cpu:.2} s");
    report["start_cpu_secs_per_pod"] = json!(start_cpu);
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle = ctx.memory(ids, daemon_before, avail_before, mem_available().await);
    print_memory("idle", &idle);
    report["memory_idle"] = idle;
    if args.idle_secs > 0 {
        let cpu = ctx.idle_cpu(ids).await;
        println!(
            "  idle CPU over {} s: {:.3}% of a core per pod (+ daemon {:.3}%), load {}",
            args.idle_secs,
            cpu["pct_core_per_pod"].as_f64().unwrap_or(f64::NAN),
            cpu["daemon_pct_core_per_pod"].as_f64().unwrap_or(f64::NAN),
            cpu["loadavg_after"].as_str().unwrap_or("")
        );
        report["cpu_idle"] = cpu;
    }
    if args.execs > 0 {
        let before = ctx.cpu_secs_per_pod(ids);
        let t = std::time::Instant::now();
        let errs = pods::exercise(ch, started, args.execs, ctx.args.concurrency).await;
        anyhow::ensure!(errs.is_empty(), "exercise: {}", errs.join("; "));
        let cpu = ctx.cpu_secs_per_pod(ids) - before;
        println!(
            "  execs+logs: {:.1} s, {cpu:.2} CPU s per pod",
            t.elapsed().as_secs_f64()
        );
        report["exercise_cpu_secs_per_pod"] = json!(cpu);
        report["exercise_secs"] = json!(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let after = ctx.memory(ids, daemon_before, avail_before, mem_available().await);
        print_memory("after execs+logs", &after);
        report["memory_after_exercise"] = after;
    }
    Ok(())
}
