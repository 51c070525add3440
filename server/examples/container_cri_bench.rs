//! Container create+start latency in a running pod, through the CRI as kubelet does it:
//! `container_cri_bench <socket> <image> [runs]`.
//!
//! Pulls `image` (ImageService), runs one pod, then `runs` times (default 20)
//! CreateContainer (`sleep 3600` from the image) + StartContainer, each timed from the
//! client, followed by StopContainer + RemoveContainer (timed apart). Prints p50/p90/min/max
//! of create, start, create+start, stop and remove. Everything it made is removed, also
//! when a call fails. (`container_bench` measures the same below the CRI: agent calls on a
//! rootfs copied into the share.)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use hull_cri_api as cri;
use hull_cri_api::client::{ImageServiceClient, RuntimeServiceClient};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

async fn channel(socket: PathBuf) -> anyhow::Result<Channel> {
    Endpoint::try_from("http://[::]:50051")?
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

fn pod_config(logs: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "ctr-cri-bench".into(),
            namespace: "bench".into(),
            uid: format!("ctr-cri-bench-{}", std::process::id()),
            attempt: 0,
        }),
        hostname: "bench".into(),
        log_directory: logs.into(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(i: usize, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("bench{i}"),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("bench{i}.log"),
        ..Default::default()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn summary(name: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        pct(50.0),
        pct(90.0),
        v[0],
        v[v.len() - 1]
    );
}

/// Create, start, stop, remove times of `runs` containers in `pod_id`.
async fn measure(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    image: &str,
    runs: usize,
) -> anyhow::Result<[Vec<f64>; 5]> {
    let mut out: [Vec<f64>; 5] = Default::default();
    for i in 0..runs {
        let t = Instant::now();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(container_config(i, image)),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer #{i}"))?
            .into_inner()
            .container_id;
        let created = ms(t);
        let t2 = Instant::now();
        let started = rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer #{i}"));
        let start = ms(t2);
        let both = ms(t);
        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .with_context(|| format!("StopContainer #{i}"))?;
        let stop = ms(t);
        let t = Instant::now();
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .with_context(|| format!("RemoveContainer #{i}"))?;
        started?;
        for (v, x) in out.iter_mut().zip([created, start, both, stop, ms(t)]) {
            v.push(x);
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: container_cri_bench <socket> <image> [runs]";
    let socket = PathBuf::from(args.next().context(usage)?);
    let image = args.next().context(usage)?;
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);
    let ch = channel(socket).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);
    let t = Instant::now();
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .context("PullImage")?;
    println!("pull {image}: {:.1} ms", ms(t));
    let logs = tempfile::tempdir()?;
    let pod = pod_config(&logs.path().display().to_string());
    let t = Instant::now();
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    println!("RunPodSandbox: {:.1} ms", ms(t));
    let result = measure(&mut rt, &pod_id, &pod, &image, runs).await;
    // RemovePodSandbox also removes containers a failed run left.
    let stop = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .context("RemovePodSandbox")?;
    stop.context("StopPodSandbox")?;
    let [create, start, both, stop, remove] = result?;
    println!("busybox container in a running pod, {runs} runs through the CRI, ms");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "call", "p50", "p90", "min", "max"
    );
    summary("create+start", both);
    summary("CreateContainer", create);
    summary("StartContainer", start);
    summary("StopContainer (t=0)", stop);
    summary("RemoveContainer", remove);
    Ok(())
}
