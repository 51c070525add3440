//! Pod sandboxes end to end, as root, with everything real: hulld started as a process,
//! the CRI client, the bridge + host-local + portmap conflist (plugins from
//! /usr/lib/cni, run in a throw-away "host" netns), the guest kernel and agent under QEMU
//! (TCG here). Two pods get VMs and IPs; the host pings both; pod A reaches pod B and
//! serves a hostPort (through a busybox container the test creates over pod A's agent);
//! hulld is killed -9 and restarted and re-attaches; Stop/Remove leave nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sandbox_common;

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use nix::sys::signal::Signal;
use sandbox_common::{PodEnv, TestVmm, busybox_rootfs, sandbox_leftovers, spec_json};
use tonic::transport::Channel;

const HOST_PORT: i32 = 18080;

fn pod(name: &str, ports: Vec<cri::PortMapping>) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "sbtest".into(),
                uid: format!("uid-{name}"),
                attempt: 1,
            }),
            hostname: name.into(),
            labels: HashMap::from([
                ("app".into(), name.into()),
                ("suite".into(), "sandbox".into()),
            ]),
            port_mappings: ports,
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> (cri::PodSandboxStatus, serde_json::Value) {
    let resp = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).expect("info json");
    (resp.status.expect("status"), info)
}

async fn list(
    rt: &mut RuntimeServiceClient<Channel>,
    filter: cri::PodSandboxFilter,
) -> Vec<String> {
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    let mut ids: Vec<String> = items.into_iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

/// In pod A's guest: ping pod B, then answer one TCP connection on port 80.
async fn container_in_pod(
    info: &serde_json::Value,
    peer_ip: &str,
) -> hull_agent_api::AgentClient<Channel> {
    let staging = std::path::PathBuf::from(info["stagingDir"].as_str().unwrap());
    busybox_rootfs(&staging.join("c1/rootfs"));
    let socket = std::path::PathBuf::from(info["agentSocket"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut agent = hull_agent_api::connect(&socket, hull_agent_api::AGENT_VSOCK_PORT, deadline)
        .await
        .expect("agent");
    let script = format!(
        "ping -c1 -W20 {peer_ip} >/dev/null && echo p2p-ok; nc -l -p 80 -e echo hello-from-pod"
    );
    agent
        .create_container(pb::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: spec_json(&["sh", "-c", &script]),
            rootfs: format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR),
        })
        .await
        .expect("create container");
    agent
        .start_container(pb::StartContainerRequest {
            container_id: "c1".into(),
        })
        .await
        .expect("start");
    agent
}

async fn read_stdout(mut agent: hull_agent_api::AgentClient<Channel>) -> String {
    let req = pb::ReadOutputRequest {
        container_id: "c1".into(),
        exec_id: String::new(),
        stream: pb::OutputStream::Stdout as i32,
        limit: 0,
    };
    let mut s = agent
        .read_output(req)
        .await
        .expect("read_output")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = s.message().await {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_get_vms_ips_traffic_and_leave_nothing() {
    let env = PodEnv::new();
    let vm = [
        ("agent_timeout_secs", "120".into()),
        // Long, so that a guest killed at the end of the grace cannot pass for one that
        // powered off by itself (see the stops below).
        ("stop_grace_secs", "60".into()),
    ];
    let mut hulld = env.hulld(&env.conflist(&[]), &vm);
    hulld.start();
    let state_dir = hulld.root().join("run");
    let mut rt = hulld.runtime().await;
    let mut rt2 = rt.clone();

    let port = cri::PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: HOST_PORT,
        host_ip: String::new(),
    };
    let (a, b) = tokio::join!(
        rt.run_pod_sandbox(pod("a", vec![port])),
        rt2.run_pod_sandbox(pod("b", vec![]))
    );
    let a = a.expect("run pod a").into_inner().pod_sandbox_id;
    let b = b.expect("run pod b").into_inner().pod_sandbox_id;

    let mut ips = Vec::new();
    for id in [&a, &b] {
        let (st, info) = status(&mut rt, id).await;
        assert_eq!(
            st.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{info}"
        );
        let ip = st.network.expect("network").ip;
        assert!(
            ip.starts_with(&env.prefix),
            "{ip} not in {}.0/24",
            env.prefix
        );
        let pid = info["vmmPid"].as_u64().expect("vmmPid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "VMM {pid} not running"
        );
        assert_eq!(info["backend"], TestVmm::current().name());
        assert!(std::path::Path::new(info["netns"].as_str().unwrap()).exists());
        assert!(std::path::Path::new(info["consoleLog"].as_str().unwrap()).exists());
        let (ok, out) = env.ping(&ip);
        assert!(ok, "host cannot ping pod {id} at {ip}: {out}");
        ips.push(ip);
    }

    // List filters and stats.
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(&mut rt, Default::default()).await, both);
    let by_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".into(), "a".into())]),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, by_label).await, vec![a.clone()]);
    let ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: 0 }),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, ready).await, both);
    let by_id = cri::PodSandboxFilter {
        id: b[..12].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, by_id).await, vec![b.clone()]);
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: a.clone(),
        })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats.linux.expect("linux").memory.expect("memory");
    assert!(
        mem.working_set_bytes.expect("ws").value > 10 << 20,
        "VMM RSS too small"
    );

    // Pod A -> pod B, and hostPort -> pod A:80, through a container in pod A's guest.
    let (_, info_a) = status(&mut rt, &a).await;
    let agent = container_in_pod(&info_a, &ips[1]).await;
    let out = tokio::spawn(read_stdout(agent));
    let target = format!("{}:{HOST_PORT}", env.gateway());
    let got = env
        .host
        .run(move || {
            for _ in 0..100 {
                if let Ok(mut s) = std::net::TcpStream::connect(&target) {
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut buf = String::new();
                    let _ = s.read_to_string(&mut buf);
                    if !buf.is_empty() {
                        return buf;
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            String::new()
        })
        .unwrap();
    assert_eq!(
        got.trim(),
        "hello-from-pod",
        "hostPort {HOST_PORT} did not reach pod A"
    );
    let stdout = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("output")
        .expect("join");
    assert!(
        stdout.contains("p2p-ok"),
        "pod A could not ping pod B: {stdout:?}"
    );

    // hulld dies and comes back: it re-attaches to both VMs.
    hulld.stop_with(Signal::SIGKILL);
    hulld.start();
    let mut rt = hulld.runtime().await;
    for id in [&a, &b] {
        let (st, info) = status(&mut rt, id).await;
        assert_eq!(
            st.state,
            cri::PodSandboxState::SandboxReady as i32,
            "after restart: {info}"
        );
    }

    // Stop (twice), Remove of the READY pod b directly, Remove again, unknown ids.
    // Stop asks the agent to shut down first (over a new connection: hulld restarted), so
    // the guest powers off by itself (the console says so, below) and the stop returns long
    // before the 60 s grace would have ended in a kill: the bound tells those two apart,
    // with room for a TCG guest's shutdown on a loaded machine.
    let console = info_a["consoleLog"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: a.clone(),
        })
        .await
        .expect("stop a");
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "stop took {:?}: the guest was killed at the end of the grace",
            t.elapsed()
        );
    }
    let console = std::fs::read_to_string(&console).expect("console log");
    assert!(
        console.contains("hull-agent: powering off"),
        "the guest was not shut down by its agent; console tail: {}",
        console
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let (st, _) = status(&mut rt, &a).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    for id in [&a, &b, &a] {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("remove");
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("stop unknown");
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: a.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(list(&mut rt, Default::default()).await.is_empty());
    let mut left = env.network_leftovers();
    for id in [&a, &b] {
        left.extend(sandbox_leftovers(&state_dir, id));
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
}
