//! The CRI side of the density benchmark: N idle pods (RunPodSandbox, then a busybox
//! `sleep` container) started with a given number of calls in flight, exercised (execs and
//! log lines), and removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hull_cri_api as cri;
use hull_cri_api::client::{ImageServiceClient, RuntimeServiceClient};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The container's main process: easy to find from an exec (`sleep 2147483`).
pub const SLEEP_ARG: &str = "2147483";
/// Log lines each container writes before it goes idle.
const START_LOG_LINES: u32 = 200;

pub async fn channel(socket: PathBuf) -> anyhow::Result<Channel> {
    Endpoint::try_from("http://[::]:50051")?
        .timeout(Duration::from_secs(600))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connecting to the CRI socket")
}

/// What every pod of a run looks like.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub prefix: String,
    pub image: String,
    pub log_dir: PathBuf,
    /// Pod-level memory limit (`linux.resources`), MiB; 0 = none (the runtime's default).
    pub memory_limit_mib: i64,
    pub runtime_handler: String,
}

impl PodTemplate {
    pub fn pod(&self, i: usize) -> cri::PodSandboxConfig {
        let resources = (self.memory_limit_mib > 0).then(|| self.limits());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("{}-{i}", self.prefix),
                namespace: "density".into(),
                uid: format!("{}-{i}-{}", self.prefix, std::process::id()),
                attempt: 0,
            }),
            hostname: format!("density-{i}"),
            log_directory: self
                .log_dir
                .join(format!("{}-{i}", self.prefix))
                .display()
                .to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                resources,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn limits(&self) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            memory_limit_in_bytes: self.memory_limit_mib << 20,
            ..Default::default()
        }
    }

    fn container(&self) -> cri::ContainerConfig {
        let script = format!(
            "i=0; while [ $i -lt {START_LOG_LINES} ]; do echo density log line $i; i=$((i+1)); done; exec sleep {SLEEP_ARG}"
        );
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "sleep".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script],
            log_path: "sleep.log".into(),
            linux: (self.memory_limit_mib > 0).then(|| cri::LinuxContainerConfig {
                resources: Some(self.limits()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// One pod's start.
#[derive(Debug, Clone)]
pub struct Started {
    pub index: usize,
    pub pod_id: String,
    pub container_id: String,
    pub run_ms: f64,
    pub container_ms: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Pulls the image unless the runtime has it.
pub async fn ensure_image(ch: &Channel, image: &str) -> anyhow::Result<()> {
    let mut img = ImageServiceClient::new(ch.clone());
    let spec = cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    let status = img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await
        .context("ImageStatus")?
        .into_inner();
    if status.image.is_none() {
        img.pull_image(cri::PullImageRequest {
            image: Some(spec),
            ..Default::default()
        })
        .await
        .with_context(|| format!("PullImage {image}"))?;
    }
    Ok(())
}

async fn start_one(ch: Channel, t: PodTemplate, i: usize) -> anyhow::Result<Started> {
    let mut rt = RuntimeServiceClient::new(ch);
    let pod = t.pod(i);
    let t0 = Instant::now();
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: t.runtime_handler.clone(),
        })
        .await
        .with_context(|| format!("RunPodSandbox #{i}"))?
        .into_inner()
        .pod_sandbox_id;
    let run_ms = ms(t0);
    let t1 = Instant::now();
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(t.container()),
            sandbox_config: Some(pod),
        })
        .await
        .with_context(|| format!("CreateContainer in pod #{i} ({pod_id})"))?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .with_context(|| format!("StartContainer in pod #{i} ({pod_id})"))?;
    Ok(Started {
        index: i,
        pod_id,
        container_id,
        run_ms,
        container_ms: ms(t1),
    })
}

/// Starts `n` pods with `in_flight` starts at a time; returns the started ones and the
/// errors (message per failed pod).
pub async fn start_all(
    ch: &Channel,
    t: &PodTemplate,
    n: usize,
    in_flight: usize,
) -> (Vec<Started>, Vec<String>) {
    let results: Vec<anyhow::Result<Started>> = futures::stream::iter(0..n)
        .map(|i| start_one(ch.clone(), t.clone(), i))
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    ok.sort_by_key(|s| s.index);
    (ok, errors)
}

/// Pods that are not READY or whose container is not RUNNING, as messages.
pub async fn not_ready(ch: &Channel, pods: &[Started]) -> anyhow::Result<Vec<String>> {
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut bad = Vec::new();
    for p in pods {
        let s = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.pod_id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let state = s.status.map(|s| s.state).unwrap_or(-1);
        if state != cri::PodSandboxState::SandboxReady as i32 {
            bad.push(format!("pod #{} {}: state {state}", p.index, p.pod_id));
        }
        let c = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: p.container_id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let state = c.status.map(|s| s.state).unwrap_or(-1);
        if state != cri::ContainerState::ContainerRunning as i32 {
            bad.push(format!("container of pod #{}: state {state}", p.index));
        }
    }
    Ok(bad)
}

/// Each pod serves `execs` ExecSync calls with 1000 lines of output each, and its
/// container writes 1000 more log lines (an exec writing to the main process's stdout).
pub async fn exercise(
    ch: &Channel,
    pods: &[Started],
    execs: usize,
    in_flight: usize,
) -> Vec<String> {
    let burst = format!(
        "for p in /proc/[0-9]*; do case \"$(cat $p/cmdline 2>/dev/null)\" in sleep{SLEEP_ARG}) \
         i=0; while [ $i -lt 1000 ]; do echo density exec log line $i; i=$((i+1)); done > $p/fd/1;; esac; done"
    );
    let lines = "i=0; while [ $i -lt 1000 ]; do echo density exec output line $i; i=$((i+1)); done";
    let calls = pods.iter().flat_map(|p| {
        let mut cmds = vec![lines.to_owned(); execs];
        cmds.push(burst.clone());
        cmds.into_iter()
            .map(move |c| (p.container_id.clone(), p.index, c))
    });
    futures::stream::iter(calls)
        .map(|(id, index, script)| {
            let mut rt = RuntimeServiceClient::new(ch.clone());
            async move {
                let r = rt
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id,
                        cmd: vec!["/bin/sh".into(), "-c".into(), script],
                        timeout: 120,
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().exit_code == 0 => None,
                    Ok(r) => Some(format!(
                        "exec in pod #{index}: exit {} ({})",
                        r.get_ref().exit_code,
                        String::from_utf8_lossy(&r.get_ref().stderr)
                    )),
                    Err(e) => Some(format!("exec in pod #{index}: {e}")),
                }
            }
        })
        .buffer_unordered(in_flight.max(1))
        .filter_map(|e| async move { e })
        .collect()
        .await
}

/// Stops and removes every pod, `in_flight` at a time; returns the time per pod (ms) and errors.
pub async fn remove_all(
    ch: &Channel,
    pod_ids: &[String],
    in_flight: usize,
) -> (Vec<f64>, Vec<String>) {
    let results: Vec<Result<f64, String>> = futures::stream::iter(pod_ids.iter().cloned())
        .map(|id| {
            let mut rt = RuntimeServiceClient::new(ch.clone());
            async move {
                let t = Instant::now();
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .map_err(|e| format!("StopPodSandbox {id}: {e}"))?;
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .map_err(|e| format!("RemovePodSandbox {id}: {e}"))?;
                Ok(ms(t))
            }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let mut times = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(t) => times.push(t),
            Err(e) => errors.push(e),
        }
    }
    (times, errors)
}

/// Pods the runtime still lists.
pub async fn listed(ch: &Channel) -> anyhow::Result<Vec<String>> {
    let mut rt = RuntimeServiceClient::new(ch.clone());
    Ok(rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}
