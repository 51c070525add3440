//! A running container across a hulld SIGKILL, through the CRI the way kubelet drives it
//! (a real guest under QEMU, real CNI plugins, an image pulled from a real registry on
//! 127.0.0.1):
//! - a busybox container prints a numbered line every 200 ms (every fifth also on stderr);
//! - UpdateContainerResources changes its memory limit and CPU quota: the guest cgroup
//!   files show the new values (ExecSync) and so does ContainerStatus;
//! - PodSandboxStats carries the container's stats, a process count and the VM's host
//!   usage, and the numbers move;
//! - hulld is SIGKILLed and, a second later, started again on the same state: the
//!   container is listed RUNNING, its log keeps growing, and its lines are consecutive on
//!   both streams — none lost, none repeated (the guarantee of `hulld::logs::resume`);
//! - StopContainer: EXITED with the exit code of its TERM trap; the pod is torn down.

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::path::Path;
use std::time::{Duration, Instant};

use cri_common::{create_start, exec_sh as exec, status};
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/busybox:latest";
const COUNTER: &str = "trap 'exit 42' TERM; i=0; while true; do echo line $i; \
    if [ $((i % 5)) = 0 ]; then echo err $i >&2; fi; i=$((i+1)); sleep 0.2; done";

/// `(stream, n)` of each `line n` / `err n` in the CRI log; asserts the line format.
fn counted(path: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_ts, stream, tag, content) = (
                parts.next(),
                parts.next().expect("stream"),
                parts.next().expect("tag"),
                parts.next().expect("content"),
            );
            assert_eq!(tag, "F", "a whole line: {l:?}");
            let n = content
                .rsplit_once(' ')
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {l:?}"));
            (stream.to_owned(), n)
        })
        .collect()
}

/// Every number of `stream` from 0 up, each once, in order; returns the last.
fn assert_consecutive(lines: &[(String, u64)], stream: &str, step: u64) -> u64 {
    let ns: Vec<u64> = lines
        .iter()
        .filter(|(s, _)| s == stream)
        .map(|(_, n)| *n)
        .collect();
    for (i, n) in ns.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64 * step,
            "{stream} line {i} out of sequence (lost or repeated): {ns:?}"
        );
    }
    ns.last().copied().unwrap_or(0)
}

/// Waits until the log holds a `line n` with n >= `at_least`.
async fn wait_log(path: &Path, at_least: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let last = counted(path)
            .iter()
            .filter(|(s, _)| s == "stdout")
            .map(|(_, n)| *n)
            .max();
        if let Some(n) = last.filter(|n| *n >= at_least) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "log {} stuck at {last:?}, wanted {at_least} (after a restart this needs an agent \
             with ReadOutputFrom: rebuild the guest, packaging/guest/build.sh initramfs)",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_container_survives_hulld_sigkill_with_exact_logs() {
    let env = PodEnv::new();
    let (_reg, mut hulld, _, mut rt) = cri_common::mirrored_hulld(&env, IMAGE).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_config = cri_common::pod_config("restart", logs.path());
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;

    // The checks run in a task so that a failed one still tears the pod down below.
    let checks = {
        let pod_id = pod_id.clone();
        let log = logs.path().join("counter/0.log");
        let hulld = &mut hulld;
        let rt = rt.clone();
        // hulld is restarted inside: the task borrows it, so it is awaited right here.
        let fut = checks(hulld, rt, pod_id, pod_config, log);
        futures_lite_catch(fut).await
    };

    if hulld.child.is_none() {
        hulld.start(); // The checks failed while hulld was down.
    }
    let mut rt = hulld.runtime().await;
    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
}

/// Runs `fut`, turning a panic into an error (so the pod can be removed first).
async fn futures_lite_catch<F: std::future::Future<Output = ()>>(
    fut: F,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    })
    .await
}

async fn checks(
    hulld: &mut common::Hulld,
    mut rt: RuntimeServiceClient<Channel>,
    pod_id: String,
    pod_config: cri::PodSandboxConfig,
    log: std::path::PathBuf,
) {
    let config = cri_common::container("counter", IMAGE, &["sh", "-c", COUNTER], "counter/0.log");
    let id = create_start(&mut rt, &pod_id, &pod_config, config).await;
    wait_log(&log, 5, Duration::from_secs(60)).await;

    update_resources(&mut rt, &id).await;
    pod_stats(&mut rt, &pod_id, &id).await;

    // SIGKILL hulld; the VM and the container keep running. Restart it on the same state.
    let before = wait_log(&log, 10, Duration::from_secs(60)).await;
    hulld.stop_with(nix::sys::signal::Signal::SIGKILL);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    hulld.start();
    eprintln!(
        "hulld restarted {:?} after the kill, log was at line {before}",
        killed_at.elapsed()
    );
    let mut rt = hulld.runtime().await;
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    let c = listed.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(
        c.state,
        cri::ContainerState::ContainerRunning as i32,
        "{c:?}"
    );
    // The log keeps growing: lines printed while hulld was down (held by the agent) and
    // after.
    let after = wait_log(&log, before + 25, Duration::from_secs(90)).await;
    eprintln!("log grew from line {before} to {after} after the restart");

    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 20,
    })
    .await
    .expect("stop");
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = status(&mut rt, &id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(Instant::now() < deadline, "not exited: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st.exit_code, 42, "the TERM trap's code: {st:?}");
    // The update survived the restart in the record; an exited container refuses another.
    let r = st.resources.as_ref().and_then(|r| r.linux.as_ref());
    assert_eq!(r.map(|r| r.memory_limit_in_bytes), Some(96 << 20), "{st:?}");
    let refused = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_quota: 20_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code()),
        Err(tonic::Code::FailedPrecondition)
    );
    assert!(st.finished_at > st.started_at, "{st:?}");
    // Give the log writer the stream ends, then check every line.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lines = counted(&log);
    let last = assert_consecutive(&lines, "stdout", 1);
    let last_err = assert_consecutive(&lines, "stderr", 5);
    assert!(last >= after, "{last} < {after}");
    assert!(last_err + 5 > last, "stderr kept up: {last_err} vs {last}");
    eprintln!(
        "{} log lines, stdout 0..={last}, stderr 0..={last_err}",
        lines.len()
    );
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");
}

/// UpdateContainerResources on the running counter: the guest's cgroup files change,
/// ContainerStatus reports the new values; an unknown container is NotFound.
async fn update_resources(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let linux = cri::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.into(),
        linux: Some(linux),
        ..Default::default()
    })
    .await
    .expect("update resources");
    let out = exec(
        rt,
        id,
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max",
    )
    .await;
    assert_eq!(out, format!("{}\n50000 100000\n", 96 << 20));
    let st = status(rt, id).await;
    let r = st
        .resources
        .and_then(|r| r.linux)
        .expect("resources in the status");
    assert_eq!((r.memory_limit_in_bytes, r.cpu_quota), (96 << 20, 50_000));
    let missing = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(cri::LinuxContainerResources::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        missing.map(|_| ()).map_err(|e| e.code()),
        Err(tonic::Code::NotFound)
    );
}

/// PodSandboxStats: the container's stats inside, a process count, the VM's host usage;
/// CPU numbers move between two samples.
async fn pod_stats(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str, id: &str) {
    let sample = |rt: &mut RuntimeServiceClient<Channel>| {
        let mut rt = rt.clone();
        let pod_id = pod_id.to_owned();
        async move {
            rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod_id,
            })
            .await
            .expect("pod stats")
            .into_inner()
            .stats
            .and_then(|s| s.linux)
            .expect("linux stats")
        }
    };
    let cpu = |s: &cri::LinuxPodSandboxStats| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .expect("pod cpu")
    };
    let ctr_cpu = |s: &cri::LinuxPodSandboxStats| {
        let c = s
            .containers
            .iter()
            .find(|c| c.attributes.as_ref().is_some_and(|a| a.id == id));
        c.and_then(|c| c.cpu.as_ref())
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .expect("container cpu in the pod stats")
    };
    let first = sample(rt).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = sample(rt).await;
    assert_eq!(second.containers.len(), 1, "{second:?}");
    let c = &second.containers[0];
    let mem = c.memory.as_ref().expect("container memory");
    let ws = mem.working_set_bytes.as_ref().map(|v| v.value).unwrap_or(0);
    assert!(ws > 0, "container working set: {mem:?}");
    assert!(c.writable_layer.is_some(), "writable layer usage: {c:?}");
    let pod_mem = second
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .expect("pod memory");
    assert!(
        pod_mem > ws,
        "the VM's RSS {pod_mem} covers the container's {ws}"
    );
    let procs = second
        .process
        .as_ref()
        .and_then(|p| p.process_count.as_ref())
        .map(|v| v.value)
        .expect("process count");
    assert!(procs >= 1, "{procs}");
    let net = second.network.as_ref().expect("pod network stats");
    let eth0 = net.default_interface.as_ref().expect("default interface");
    assert_eq!(eth0.name, "eth0", "{net:?}");
    assert!(cpu(&second) > cpu(&first), "pod CPU moves");
    assert!(ctr_cpu(&second) > ctr_cpu(&first), "container CPU moves");
    // No ordering between the two: the guest's cgroup clock and the host's accounting of
    // the VMM's threads differ (an emulated or overcommitted vCPU).
    eprintln!(
        "pod stats: VM cpu {} ns, VM rss {pod_mem} B, container cpu {} ns, ws {ws} B, {procs} processes",
        cpu(&second),
        ctr_cpu(&second)
    );
}
