//! When a process of a pod's VM dies (QEMU itself, virtiofsd, the vsock backend
//! vhost-device-vsock), the pod turns NOTREADY and its containers EXITED within a couple
//! of seconds, with exit code 255, reason `PodVMExited` and a message naming the process
//! and its signal; the container events go out, and the rest of the VM is stopped.
//! A guest kernel panic (a privileged container sets `vm.panic_on_oom = 2` and runs out
//! of its memory limit) does the same, the message quoting the panic. One real pod (QEMU
//! TCG guest, real CNI plugins, image from a registry on 127.0.0.1) per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hull_cri_api as cri;
use sandbox_common::PodEnv;

const IMAGE: &str = "registry.k8s.io/busybox:latest";
/// How long the containers may take to turn EXITED after the kill (the watcher polls
/// every 200 ms; the rest is a loaded 2-core machine).
const LIMIT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vm_process_dying_ends_the_pods_containers() {
    let env = PodEnv::new();
    let (_reg, hulld, _, _) = cri_common::mirrored_hulld(&env, IMAGE).await;
    let logs = tempfile::tempdir().unwrap();
    for (pid_file, what) in [
        ("qemu.pid", "qemu"),
        ("virtiofsd.pid", "virtiofsd"),
        ("vhost-vsock.pid", "vhost-device-vsock"),
    ] {
        kill_and_watch(&env, &hulld, logs.path(), pid_file, what).await;
    }
    panic_and_watch(&env, &hulld, logs.path()).await;
}

/// A container that makes the guest kernel panic: memcg OOM with `panic_on_oom = 2`.
fn panicker() -> cri::ContainerConfig {
    let mut c = cri_common::container(
        "panicker",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo 2 > /proc/sys/vm/panic_on_oom && sleep 1 && tail /dev/zero",
        ],
        "panicker.log",
    );
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
    });
    c
}

async fn panic_and_watch(env: &PodEnv, hulld: &common::Hulld, logs: &std::path::Path) {
    let mut rt = hulld.runtime().await;
    let pod_config = cri_common::pod_config("death-panic", logs);
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;
    let sleeper = cri_common::container("sleeper", IMAGE, &["sleep", "3600"], "sleeper.log");
    let sleeper = cri_common::create_start(&mut rt, &pod_id, &pod_config, sleeper).await;
    let panicker = cri_common::create_start(&mut rt, &pod_id, &pod_config, panicker()).await;
    for id in [&sleeper, &panicker] {
        let st = cri_common::wait_exited(&mut rt, id, Duration::from_secs(60)).await;
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (255, "PodVMExited"),
            "{st:?}"
        );
        assert!(
            st.message.contains("the guest kernel panicked")
                && st.message.contains("Kernel panic - not syncing"),
            "the message quotes the panic: {st:?}"
        );
    }
    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &pod_id,
    ));
    assert!(left.is_empty(), "panic: {left:#?}");
}

async fn kill_and_watch(
    env: &PodEnv,
    hulld: &common::Hulld,
    logs: &std::path::Path,
    pid_file: &str,
    what: &str,
) {
    let mut rt = hulld.runtime().await;
    let pod_config = cri_common::pod_config(&format!("death-{what}"), logs);
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;
    let run_dir = hulld.root().join("run/sandboxes").join(&pod_id);
    let running = cri_common::container(what, IMAGE, &["sleep", "3600"], &format!("{what}.log"));
    let running = cri_common::create_start(&mut rt, &pod_id, &pod_config, running).await;
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri_common::container(
                &format!("{what}-created"),
                IMAGE,
                &["true"],
                &format!("{what}-created.log"),
            )),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("events")
        .into_inner();

    let pid: i32 = std::fs::read_to_string(run_dir.join(pid_file))
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .parse()
        .unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    for id in [&running, &created] {
        let st = cri_common::wait_exited(&mut rt, id, LIMIT * 3).await;
        let took = killed.elapsed();
        eprintln!(
            "{what} killed: container {} EXITED after {took:?}",
            &id[..12]
        );
        assert!(took < LIMIT, "{what}: EXITED only after {took:?}");
        assert_eq!(st.exit_code, 255, "{st:?}");
        assert_eq!(st.reason, "PodVMExited", "{st:?}");
        assert!(
            st.message
                .contains(&format!("{what} (pid {pid}) was killed by signal 9")),
            "the message names the process: {st:?}"
        );
        assert!(st.finished_at > 0);
    }
    let pod = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(pod.state, cri::PodSandboxState::SandboxNotready as i32);

    // A stopped event for each container.
    let mut stopped = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stopped.len() < 2 {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: stopped events missing, got {stopped:?}"))
            .expect("event stream open")
            .expect("event");
        if ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32 {
            stopped.insert(ev.container_id);
        }
    }
    assert!(stopped.contains(&running) && stopped.contains(&created));

    // The rest of the VM was stopped with it: no process names the run dir.
    let procs: Vec<String> = sandbox_common::sandbox_leftovers(&hulld.root().join("run"), &pod_id)
        .into_iter()
        .filter(|l| l.starts_with("process"))
        .collect();
    assert!(procs.is_empty(), "{what}: {procs:#?}");

    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &pod_id,
    ));
    assert!(left.is_empty(), "{what}: {left:#?}");
}
