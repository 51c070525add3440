//! The whole CRI path of a container, the way kubelet drives it: PullImage from a real
//! registry on 127.0.0.1 (through the `registry.k8s.io` mirror), RunPodSandbox (a real
//! guest under QEMU, real CNI plugins), CreateContainer from the pulled image,
//! StartContainer, the CRI log file, ExecSync, StopContainer, RemoveContainer, and the
//! pod's teardown.

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::time::Duration;

use cri_common::{container as config_of, create_start, exec_sh as exec, wait_exited};
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

/// A container of `image` running `args`, logging to `<name>/0.log`.
fn container(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    config_of(name, image, args, &format!("{name}/0.log"))
}

/// The CRI log lines without their timestamps: `stream P|F content`.
fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').expect("timestamp").1.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_run_create_start_log_exec_stop_remove() {
    let env = PodEnv::new();
    let image = "registry.k8s.io/busybox:latest";
    let (_reg, hulld, _, mut rt) = cri_common::mirrored_hulld(&env, image).await;

    let logs = tempfile::tempdir().unwrap();
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "cri-path".into(),
            namespace: "hulltest".into(),
            uid: "uid-cri-path".into(),
            attempt: 0,
        }),
        log_directory: logs.path().display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["hulltest.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        ..Default::default()
    };
    let host_vol = tempfile::tempdir().unwrap();
    std::fs::write(host_vol.path().join("from-host"), "written on the host\n").unwrap();
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;

    // Run the checks in a task so that a failed one still tears the pod down below.
    let checks = {
        let mut rt = rt.clone();
        let pod_id = pod_id.clone();
        let logs = logs.path().to_owned();
        let vol = host_vol.path().to_owned();
        tokio::spawn(async move { checks(&mut rt, &pod_id, &pod_config, image, &logs, &vol).await })
    }
    .await;

    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        left.is_empty(),
        "containers left after pod removal: {left:?}"
    );
    // The container left for RemovePodSandbox lost its writable layer with the pod.
    let layers = hulld.root().join("lib/images/containers");
    let layers: Vec<_> = std::fs::read_dir(&layers)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        layers.is_empty(),
        "container dirs left under the image root: {layers:?}"
    );
}

async fn checks(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    logs: &std::path::Path,
    host_vol: &std::path::Path,
) {
    // A container that writes to both streams and exits 3.
    let config = container(
        "echo",
        image,
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    );
    let id = create_start(rt, pod_id, pod_config, config).await;
    let st = wait_exited(rt, &id, Duration::from_secs(60)).await;
    assert_eq!(st.exit_code, 3, "{st:?}");
    assert!(
        st.finished_at >= st.started_at && st.started_at > 0,
        "{st:?}"
    );
    let mut lines = log_lines(&logs.join("echo/0.log"));
    lines.sort();
    assert_eq!(lines, ["stderr F oops", "stdout F hello"]);

    // A long-running one: ExecSync, then StopContainer ends it.
    let mut config = container("sleeper", image, &["sleep", "1000"]);
    // ExecSync runs as the container's process: its working dir and env.
    config.working_dir = "/data".into();
    config.envs.push(cri::KeyValue {
        key: "SLEEPER".into(),
        value: "yes".into(),
    });
    config.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: host_vol.display().to_string(),
        ..Default::default()
    });
    let sleeper = create_start(rt, pod_id, pod_config, config).await;
    // `crictl inspect`: info.config and info.runtimeSpec are JSON objects (jq-able), as
    // containerd gives them; the spec is the one the agent ran.
    let st = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: sleeper.clone(),
            verbose: true,
        })
        .await
        .expect("verbose status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("info json");
    assert_eq!(info["config"]["metadata"]["name"], "sleeper", "{info}");
    assert_eq!(info["config"]["working_dir"], "/data", "{info}");
    assert_eq!(info["config"]["envs"][0]["key"], "SLEEPER", "{info}");
    assert_eq!(info["sandboxID"], pod_id, "{info}");
    assert_eq!(
        info["runtimeSpec"]["process"]["args"],
        serde_json::json!(["sleep", "1000"]),
        "{info}"
    );
    assert_eq!(info["runtimeSpec"]["process"]["cwd"], "/data", "{info}");
    assert!(info["runtimeSpec"]["mounts"].is_array(), "{info}");
    let pod = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .expect("verbose pod status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&pod.info["info"]).expect("pod info json");
    assert_eq!(
        info["config"]["metadata"]["name"],
        pod_config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        "{info}"
    );
    assert!(info["config"]["dns_config"].is_object(), "{info}");
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "hostname; pwd; echo $SLEEPER; exit 7".into(),
            ],
            timeout: 30,
        })
        .await
        .expect("exec sync")
        .into_inner();
    assert_eq!(out.exit_code, 7, "{out:?}");
    // No hostname in the pod config: the pod's name is the guest's hostname.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cri-path\n/data\nyes\n",
        "{out:?}"
    );

    // The hostPath volume both ways: a host file read in the container, a container
    // write seen on the host.
    let out = exec(
        rt,
        &sleeper,
        "cat /data/from-host && echo written in the container > /data/from-ctr",
    )
    .await;
    assert_eq!(out, "written on the host\n");
    assert_eq!(
        std::fs::read_to_string(host_vol.join("from-ctr")).unwrap_or_default(),
        "written in the container\n"
    );
    // The pod's hostname and DNS config, as containerd writes them.
    let out = exec(rt, &sleeper, "cat /etc/hostname /etc/resolv.conf").await;
    assert_eq!(
        out,
        "cri-path\nsearch hulltest.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    // The container may rewrite them (containerd's are writable too).
    let script = "echo nameserver 10.0.0.1 >> /etc/resolv.conf && echo renamed > /etc/hostname \
                  && tail -n1 /etc/resolv.conf && cat /etc/hostname";
    let out = exec(rt, &sleeper, script).await;
    assert_eq!(out, "nameserver 10.0.0.1\nrenamed\n");
    rt.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    let st = wait_exited(rt, &sleeper, Duration::from_secs(30)).await;
    assert_ne!(st.exit_code, 0, "{st:?}");

    // Remove both, twice: the second is a no-op.
    for id in [&id, &sleeper, &id] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("remove");
    }
    let gone = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await;
    assert_eq!(
        gone.map(|_| ()).map_err(|e| e.code()),
        Err(tonic::Code::NotFound)
    );

    // One more, left for RemovePodSandbox to take away.
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(container("left", image, &["true"])),
        sandbox_config: Some(pod_config.clone()),
    })
    .await
    .expect("create left");
}

/// kubelet removes a pod's dead containers while it stops the pod (a static pod's
/// manifest edited): each RemoveContainer during StopPodSandbox succeeds, whatever moment
/// of the guest's shutdown it meets, instead of failing on the agent going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_containers_while_the_pod_stops() {
    let env = PodEnv::new();
    let image = "registry.k8s.io/busybox:latest";
    let (_reg, _hulld, _, mut rt) = cri_common::mirrored_hulld(&env, image).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_config = cri_common::pod_config("rm-while-stopping", logs.path());
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;

    let mut dead = Vec::new();
    for i in 0..8 {
        let name = format!("dead{i}");
        let config = container(&name, image, &["true"]);
        let id = create_start(&mut rt, &pod_id, &pod_config, config).await;
        wait_exited(&mut rt, &id, Duration::from_secs(60)).await;
        dead.push(id);
    }
    let stop = {
        let mut rt = rt.clone();
        let pod_sandbox_id = pod_id.clone();
        tokio::spawn(async move {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id })
                .await
        })
    };
    // One removal every 150 ms: they meet the guest's shutdown at different moments.
    let mut removed = Vec::new();
    for id in &dead {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await;
        removed.push((id.clone(), r.map(|_| ())));
    }
    let stopped = stop.await.expect("stop task");
    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    stopped.expect("StopPodSandbox");
    for (id, r) in removed {
        r.unwrap_or_else(|e| panic!("RemoveContainer {id} while the pod stopped: {e}"));
    }
}
