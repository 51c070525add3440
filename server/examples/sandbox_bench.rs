//! RunPodSandbox benchmark over the CRI: N sequential RunPodSandbox (+ Stop + Remove)
//! calls against any CRI runtime socket, printing p50/p90 of the client-side total and,
//! for hulld, of each phase hulld reports in PodSandboxStatus' verbose info (netns, cni,
//! tap_tc, vm_start, agent_ready, agent_setup, total).
//!
//! `sandbox_bench <socket> [runs] [label]` — test/bench/sandbox_bench.sh runs it against
//! hulld and against containerd+runc with the same conflist.
//!
//! Environment: `SANDBOX_BENCH_LOG_DIR` (the pods' log directories go under it, default
//! /tmp/sandbox-bench-logs), `SANDBOX_BENCH_JSON` (also write the percentiles there as
//! `{"label", "runs", "phases": {phase: {"p50", "p90"}}}`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

async fn connect(socket: PathBuf) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connecting to the CRI socket")?;
    Ok(RuntimeServiceClient::new(channel))
}

fn request(i: usize, log_dir: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("bench-{i}"),
                namespace: "bench".into(),
                uid: format!("bench-uid-{i}-{}", std::process::id()),
                attempt: 0,
            }),
            hostname: format!("bench-{i}"),
            log_directory: format!("{log_dir}/{i}"),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let socket = PathBuf::from(
        args.next()
            .context("usage: sandbox_bench <socket> [runs] [label]")?,
    );
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);
    let label = args.next().unwrap_or_else(|| socket.display().to_string());
    let log_dir =
        std::env::var("SANDBOX_BENCH_LOG_DIR").unwrap_or_else(|_| "/tmp/sandbox-bench-logs".into());
    let mut rt = connect(socket).await?;
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(request(i, &log_dir))
            .await
            .with_context(|| format!("RunPodSandbox #{i}"))?
            .into_inner()
            .pod_sandbox_id;
        samples
            .entry("client: RunPodSandbox".into())
            .or_default()
            .push(ms(t.elapsed()));
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        if let Some(info) = status.info.get("info") {
            let doc: serde_json::Value = serde_json::from_str(info).unwrap_or_default();
            if let Some(phases) = doc.get("timingsMs").and_then(|t| t.as_object()) {
                for (phase, v) in phases {
                    if let Some(v) = v.as_f64() {
                        samples
                            .entry(format!("hulld: {phase}"))
                            .or_default()
                            .push(v);
                    }
                }
            }
        }
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        samples
            .entry("client: StopPodSandbox".into())
            .or_default()
            .push(ms(t.elapsed()));
        let t = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        samples
            .entry("client: RemovePodSandbox".into())
            .or_default()
            .push(ms(t.elapsed()));
    }
    if let Some(boot) = samples.get("hulld: agent_ready").cloned() {
        // What hull controls: everything but the guest's boot to agent-ready, per run.
        for (total, own) in [
            ("hulld: total", "hulld: total - agent_ready"),
            (
                "client: RunPodSandbox",
                "client: RunPodSandbox - agent_ready",
            ),
        ] {
            let v = samples.get(total).cloned().unwrap_or_default();
            let rest = v.iter().zip(boot.iter()).map(|(t, b)| t - b).collect();
            samples.insert(own.into(), rest);
        }
    }
    // The host-side steps alone (no guest code runs in them): netns, CNI, tap+tc, VMM spawn.
    let host: Vec<f64> = (0..runs)
        .map(|i| {
            ["netns", "cni", "tap_tc", "vm_start"]
                .iter()
                .filter_map(|p| samples.get(&format!("hulld: {p}"))?.get(i))
                .sum()
        })
        .collect();
    if samples.contains_key("hulld: vm_start") {
        samples.insert("hulld: host side (netns..vm_start)".into(), host);
    }
    println!("{label}: {runs} sequential RunPodSandbox (+Stop+Remove), milliseconds");
    println!("{:<38} {:>9} {:>9}", "phase", "p50", "p90");
    let mut phases = serde_json::Map::new();
    for (phase, mut v) in samples {
        v.sort_by(|a, b| a.total_cmp(b));
        let (p50, p90) = (percentile(&v, 50.0), percentile(&v, 90.0));
        println!("{phase:<38} {p50:>9.1} {p90:>9.1}");
        phases.insert(phase, serde_json::json!({ "p50": p50, "p90": p90 }));
    }
    if let Ok(path) = std::env::var("SANDBOX_BENCH_JSON") {
        let doc = serde_json::json!({ "label": label, "runs": runs, "phases": phases });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
