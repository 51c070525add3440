//! CRI steps the container tests share: a hulld pulling from the test registry, a pod,
//! containers created and started, ExecSync, waiting for an exit.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use hull_cri_api as cri;
use hull_cri_api::client::{ImageServiceClient, RuntimeServiceClient};
use tonic::transport::Channel;

use crate::common::Hulld;

/// Points `registry.k8s.io` at the test registry `host` in hulld's config (before start).
pub fn mirror_registry_k8s_io(hulld: &Hulld, host: &str) {
    let mut config = std::fs::read_to_string(&hulld.config_path).expect("read hulld config");
    config.push_str(&format!(
        "[registry.hosts.\"registry.k8s.io\"]\nmirrors = [{{ endpoint = \"http://{host}\" }}]\nupstream = false\n"
    ));
    std::fs::write(&hulld.config_path, config).expect("write hulld config");
}

/// What most container tests start from: a registry on loopback holding the test images
/// (`common::push_test_images`), a hulld on `env`'s pod network with `registry.k8s.io`
/// mirrored to it and the agent given 120 s (a loaded TCG host), started, and `image`
/// pulled. The registry lives as long as the returned value is kept.
pub async fn mirrored_hulld(
    env: &crate::sandbox_common::PodEnv,
    image: &str,
) -> (
    crate::registry::TestRegistry,
    Hulld,
    ImageServiceClient<Channel>,
    RuntimeServiceClient<Channel>,
) {
    let reg = crate::registry::TestRegistry::start();
    let host = reg.host();
    crate::common::push_test_images(&host);
    let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    mirror_registry_k8s_io(&hulld, &host);
    hulld.start();
    let mut images = hulld.images().await;
    let rt = hulld.runtime().await;
    pull(&mut images, image).await;
    (reg, hulld, images, rt)
}

/// PullImage, which must succeed.
pub async fn pull(images: &mut ImageServiceClient<Channel>, image: &str) {
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
}

/// A pod in namespace `hulltest` named `name`, its container logs under `logs`.
pub fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "hulltest".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        ..Default::default()
    }
}

/// RunPodSandbox, which must succeed; the pod id.
pub async fn run_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("run pod")
    .into_inner()
    .pod_sandbox_id
}

/// A container of `image` running `args`, logging to `log_path` (relative to the pod's
/// log directory).
pub fn container(name: &str, image: &str, args: &[&str], log_path: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        ..Default::default()
    }
}

/// CreateContainer then StartContainer, which must both succeed; the container id.
pub async fn create_start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}

/// ExecSync `sh -c script`, which must exit 0; its stdout.
pub async fn exec_sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> String {
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .expect("exec sync")
        .into_inner();
    assert_eq!(out.exit_code, 0, "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ContainerStatus, which must succeed.
pub async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("container status")
    .into_inner()
    .status
    .expect("status")
}

/// Polls ContainerStatus until the container exited (or `limit` passes: a failure).
pub async fn wait_exited(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    limit: Duration,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + limit;
    loop {
        let st = status(rt, id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// StopPodSandbox then RemovePodSandbox, which must both succeed.
pub async fn stop_remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .expect("remove pod");
}
