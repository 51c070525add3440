//! `kill -9` of hulld in the middle of RunPodSandbox, CreateContainer and PullImage, at
//! named points (hull_image::faults: `HULL_PAUSE_AT` makes hulld stop there and write a
//! marker, and the test kills it). After a restart the half-made object is removed (or,
//! for a pull, can be finished) and nothing is left: no netns, veth, IPAM lease, portmap
//! chain, VMM or helper process, mount, run dir, container dir, writable layer, or blob
//! and layer of no image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/busybox:latest";

/// Starts hulld paused at `point`, runs `call` in the background until hulld reports the
/// point, then kills hulld with SIGKILL and starts it again without the point. Returns the
/// sandbox run dirs there were at the kill.
async fn crash_at<F, Fut>(hulld: &mut common::Hulld, point: &str, call: F) -> Vec<String>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let marker = hulld.root().join(format!("paused-{point}"));
    let marker_s = marker.display().to_string();
    hulld.start_env(&[("HULL_PAUSE_AT", point), ("HULL_PAUSE_MARKER", &marker_s)]);
    let task = tokio::spawn(call(hulld.channel().await));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "hulld never reached {point} (task done: {})",
            task.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = entries(&hulld.root().join("run/sandboxes"));
    hulld.stop_with(nix::sys::signal::Signal::SIGKILL);
    task.abort();
    std::fs::remove_file(&marker).unwrap();
    eprintln!("killed hulld at {point} (sandboxes {ids:?}); restarting");
    hulld.start();
    ids
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Mounts below `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&needle))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line names `root` (VMMs, virtiofsd, vhost-device-vsock).
fn processes_under(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        if cmd.contains(&needle) && !cmd.contains("hulld") {
            out.push(cmd);
        }
    }
    out
}

async fn pods(rt: &mut RuntimeServiceClient<Channel>) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
}

fn pod_request(name: &str, logs: &Path) -> cri::RunPodSandboxRequest {
    let mut config = cri_common::pod_config(name, logs);
    config.port_mappings = vec![cri::PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: 18083,
        host_ip: String::new(),
    }];
    cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_run_pod_sandbox_leaves_nothing() {
    let env = PodEnv::new();
    let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    let logs = tempfile::tempdir().unwrap();
    let run = hulld.root().join("run");
    for point in [
        "run_sandbox.recorded",
        "run_sandbox.network",
        "run_sandbox.vm_spawned",
        "run_sandbox.vm_started",
    ] {
        let req = pod_request("crash", logs.path());
        let ids = crash_at(&mut hulld, point, |ch| async move {
            let _ = RuntimeServiceClient::new(ch).run_pod_sandbox(req).await;
        })
        .await;
        let mut rt = hulld.runtime().await;
        assert!(
            pods(&mut rt).await.is_empty(),
            "{point}: the half-made pod is listed"
        );
        let mut left = env.network_leftovers();
        for id in ids.iter().filter(|i| i.len() == 32) {
            left.extend(sandbox_common::sandbox_leftovers(&run, id));
        }
        left.extend(
            processes_under(hulld.root())
                .into_iter()
                .map(|p| format!("process {p}")),
        );
        left.extend(
            mounts_under(hulld.root())
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left.extend(
            entries(&run.join("sandboxes"))
                .into_iter()
                .map(|d| format!("run dir {d}")),
        );
        left.extend(
            entries(&hulld.root().join("lib/cni"))
                .into_iter()
                .map(|c| format!("CNI cache {c}")),
        );
        assert!(left.is_empty(), "after a kill at {point}: {left:#?}");
        hulld.stop_with(nix::sys::signal::Signal::SIGTERM);
    }
    // The name is free again: the same pod runs.
    hulld.start();
    let mut rt = hulld.runtime().await;
    let id = rt
        .run_pod_sandbox(pod_request("crash", logs.path()))
        .await
        .expect("the pod runs after the crashes")
        .into_inner()
        .pod_sandbox_id;
    cri_common::stop_remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_create_container_leaves_nothing() {
    let env = PodEnv::new();
    let (_reg, mut hulld, _, _) = cri_common::mirrored_hulld(&env, IMAGE).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_config = cri_common::pod_config("crash-ctr", logs.path());
    let pod_id = cri_common::run_pod(&mut hulld.runtime().await, &pod_config).await;
    let shared = hulld
        .root()
        .join("run/sandboxes")
        .join(&pod_id)
        .join("shared");
    let writable = hulld.root().join("lib/images/containers");
    let share_mounts = mounts_under(&shared);
    hulld.stop_with(nix::sys::signal::Signal::SIGTERM);

    for point in ["create_container.rootfs", "create_container.agent"] {
        let (pod, cfg) = (pod_id.clone(), pod_config.clone());
        crash_at(&mut hulld, point, |ch| async move {
            let _ = RuntimeServiceClient::new(ch)
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(cri_common::container(
                        "c",
                        IMAGE,
                        &["sleep", "3600"],
                        "c.log",
                    )),
                    sandbox_config: Some(cfg),
                })
                .await;
        })
        .await;
        let mut rt = hulld.runtime().await;
        let listed = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(listed.is_empty(), "{point}: {listed:?}");
        let ready = pods(&mut rt).await;
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].state,
            cri::PodSandboxState::SandboxReady as i32,
            "{point}"
        );
        let container_dirs: Vec<String> = entries(&shared)
            .into_iter()
            .filter(|n| n.len() == 64)
            .collect();
        assert!(
            container_dirs.is_empty(),
            "{point}: container dirs {container_dirs:?}"
        );
        assert!(
            entries(&writable).is_empty(),
            "{point}: writable layers {:?}",
            entries(&writable)
        );
        assert_eq!(
            mounts_under(&shared),
            share_mounts,
            "{point}: mounts in the share"
        );
        // The same container can be made and run in the pod.
        let id = cri_common::create_start(
            &mut rt,
            &pod_id,
            &pod_config,
            cri_common::container("c", IMAGE, &["sleep", "3600"], "c.log"),
        )
        .await;
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
        hulld.stop_with(nix::sys::signal::Signal::SIGTERM);
    }
    hulld.start();
    cri_common::stop_remove_pod(&mut hulld.runtime().await, &pod_id).await;
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &pod_id,
    ));
    assert!(left.is_empty(), "{left:#?}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_pull_image_leaves_nothing_and_the_pull_finishes() {
    let reg = registry::TestRegistry::start();
    let h = reg.host();
    common::push_test_images(&h);
    let mut hulld = common::Hulld::configure(&format!(
        "[registry.hosts.\"registry.k8s.io\"]\nmirrors = [{{ endpoint = \"http://{h}\" }}]\nupstream = false\n"
    ));
    let images_root = hulld.root().join("lib/images");
    for point in ["pull.blob_partial", "pull.blobs_fetched", "pull.unpacked"] {
        crash_at(&mut hulld, point, |ch| async move {
            let _ = hull_cri_api::client::ImageServiceClient::new(ch)
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
        })
        .await;
        let mut images = hulld.images().await;
        let listed = images
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        assert!(listed.is_empty(), "{point}: {listed:?}");
        // No blob or layer of no image; a partial download is kept for the next pull.
        let blobs = files_under(&images_root.join("blobs"));
        assert!(blobs.is_empty(), "{point}: blobs {blobs:?}");
        let layers = entries(&images_root.join("layers"));
        assert!(layers.is_empty(), "{point}: layers {layers:?}");
        let tmp = entries(&images_root.join("tmp"));
        assert!(
            tmp.iter().all(|t| t.ends_with(".partial")),
            "{point}: temp files {tmp:?}"
        );
        // The pull finishes (resuming a partial download), and leaves no temp file.
        cri_common::pull(&mut images, IMAGE).await;
        assert!(entries(&images_root.join("tmp")).is_empty());
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        hulld.stop_with(nix::sys::signal::Signal::SIGTERM);
    }
}
