//! Container create+start latency in a running pod: `container_bench <hulld socket> [runs]`.
//!
//! Runs one pod through the CRI on the given hulld, then `runs` times (default 20):
//! lays a busybox-static rootfs into the pod's share, builds the OCI spec with hulld's
//! builder, creates the container through the pod's agent and starts it with hulld's
//! container runtime (output pumps and exit watcher included), timing create+start until
//! the container is running. Prints p50/p90/min/max. The rootfs copy is not timed (the
//! image service's overlay mount replaces it in CreateContainer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use hulld::container::manager::ContainerManager;
use hulld::container::runtime;
use hulld::container::spec::{self, ImageDefaults, SpecInput};
use hulld::state::{ContainerRecord, ContainerState, Store};
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

fn busybox(root: &Path) -> anyhow::Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("/bin/busybox")?;
    for a in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    Ok(())
}

fn record(id: &str, logs: &Path) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        sandbox_id: "bench".into(),
        state: ContainerState::Created,
        config: cri::ContainerConfig::default(),
        image_ref: "busybox".into(),
        image_id: String::new(),
        created_at: hulld::state::now_nanos(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path: logs.join(format!("{id}.log")).display().to_string(),
        runtime_spec: None,
    }
}

async fn one(
    i: usize,
    shared: &Path,
    agent: &mut hull_agent_api::AgentClient<Channel>,
    manager: &Arc<ContainerManager>,
    logs: &Path,
) -> anyhow::Result<Duration> {
    let id = format!("bench{i}");
    let rootfs = shared.join(&id).join("rootfs");
    busybox(&rootfs)?;
    let start = Instant::now();
    let config = cri::ContainerConfig {
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    };
    let guest_root = format!("{}/{id}/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    let oci = spec::build(&SpecInput {
        config: &config,
        image: &ImageDefaults::default(),
        host_rootfs: &rootfs,
        guest_rootfs: &guest_root,
        mounts: &[],
        hostname: "bench",
        pod_sysctls: &BTreeMap::new(),
    })?;
    agent
        .create_container(pb::CreateContainerRequest {
            container_id: id.clone(),
            oci_spec_json: serde_json::to_vec(&oci)?,
            rootfs: guest_root,
        })
        .await?;
    let r = record(&id, logs);
    manager.add(&r)?;
    runtime::start(Arc::clone(manager), agent.clone(), &r).await?;
    Ok(start.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let socket = PathBuf::from(
        args.next()
            .context("usage: container_bench <socket> [runs]")?,
    );
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut rt = connect(socket).await?;
    let pod = cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "ctr-bench".into(),
                namespace: "bench".into(),
                uid: format!("ctr-bench-{}", std::process::id()),
                attempt: 0,
            }),
            hostname: "bench".into(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    let pod_id = rt.run_pod_sandbox(pod).await?.into_inner().pod_sandbox_id;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").context("no verbose info")?)?;
    let shared = PathBuf::from(info["sharedDir"].as_str().context("sharedDir")?);
    let socket = PathBuf::from(info["agentSocket"].as_str().context("agentSocket")?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut agent =
        hull_agent_api::connect(&socket, hull_agent_api::AGENT_VSOCK_PORT, deadline).await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(&tmp.path().join("m.redb"), &hulld::state::tables())?;
    let manager = Arc::new(ContainerManager::new(store, hulld::events::Events::new()));
    let mut times = Vec::with_capacity(runs);
    let mut result = Ok(());
    for i in 0..runs {
        match one(i, &shared, &mut agent, &manager, tmp.path()).await {
            Ok(d) => times.push(d.as_secs_f64() * 1000.0),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for i in 0..times.len() {
        let rm = pb::RemoveContainerRequest {
            container_id: format!("bench{i}"),
            force: true,
        };
        let _ = agent.remove_container(rm).await;
    }
    let stop = cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    };
    rt.stop_pod_sandbox(stop).await?;
    let remove = cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    };
    rt.remove_pod_sandbox(remove).await?;
    result?;
    times.sort_by(f64::total_cmp);
    println!(
        "container create+start in a running pod, {} runs: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}
