//! The QEMU backend with a pod network: QEMU runs inside a network namespace the test
//! creates, on a tap device there; the agent configures the guest NIC (MAC, MTU, address,
//! default route) and a container sees it and reaches the tap side; a container's server
//! is reached with the agent's PortForward. Then hulld's restart
//! path: the VM handle is dropped, the VM is found again with `reattach`, and the agent
//! still answers; a tty exec, resize, a SIGKILL'd container and an OOM-killed one run
//! before the VM is stopped (without the agent's help) and everything is gone.
//!
//! Needs what qemu_boot.rs needs, plus iproute2.

#![allow(dead_code)] // qemu_common is shared with qemu_boot.rs

mod qemu_common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::v1::{self as pb, OutputStream};
use hull_vm::hypervisor::{Hypervisor, NetConfig, VmExit, VmHandle};
use hull_vm::qemu::{QemuConfig, QemuHypervisor};
use qemu_common::*;

const MAC: &str = "02:00:0a:c7:00:02";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named netns with `tap0` (10.199.0.1/24), deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("hull-qtest-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", &ns.0, "link", "set", "tap0", "mtu", "1400", "up"]);
        ip(&["-n", &ns.0, "addr", "add", "10.199.0.1/24", "dev", "tap0"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "args": args, "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/", "terminal": terminal,
        "consoleSize": { "height": 24, "width": 80 }
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_in_netns_with_tap_reattach_tty_kill_and_oom() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("hull-qemu-net-")
        .tempdir()
        .expect("tempdir");
    let netns = Netns::new();
    let mut cfg = config(tmp.path(), "qemu-net-test");
    cfg.netns = Some(format!("/run/netns/{}", netns.0).into());
    cfg.net = Some(NetConfig {
        tap: "tap0".into(),
        mac: MAC.into(),
        mtu: 1400,
    });
    busybox_rootfs(&tmp.path().join("share/c1/rootfs"));

    let vm: Arc<dyn VmHandle> = Arc::from(
        QemuHypervisor::new(QemuConfig::default())
            .start(&cfg)
            .await
            .expect("start VM"),
    );
    let limit = Duration::from_secs(240);
    let ns = netns.0.clone();
    let result = guarded(
        &vm,
        limit,
        |vm| async move { network_part(&*vm, &ns).await },
    )
    .await;
    if let Err(e) = result {
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        let _ = vm.stop(Duration::from_secs(5)).await;
        panic!("network part: {e}\nconsole:\n{console}");
    }
    let first_pid = vm.pid();
    drop(vm); // hulld "restarts": the VM must keep running without its handle.

    let vm: Arc<dyn VmHandle> = Arc::from(
        QemuHypervisor::new(QemuConfig::default())
            .reattach(&cfg)
            .await
            .expect("reattach"),
    );
    let alive = vm.is_running();
    let result = guarded(&vm, limit, |vm| async move { process_part(&*vm).await }).await;
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    let exit = vm.stop(Duration::from_secs(5)).await.expect("stop VM");
    assert!(alive, "VM did not survive its handle");
    assert_eq!(vm.pid(), first_pid);
    if let Err(e) = result {
        panic!("process part: {e}\nconsole:\n{console}");
    }
    assert_eq!(exit, VmExit::Shutdown);
    assert!(!vm.is_running());
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "left behind: {left:#?}");
}

async fn network_part(vm: &dyn VmHandle, netns: &str) {
    let mut client = connect(vm).await;
    let setup = pb::SetupSandboxRequest {
        sandbox_id: "qemu-net-test".into(),
        hostname: "net-pod".into(),
        interfaces: vec![pb::Interface {
            name: String::new(),
            mac: MAC.into(),
            mtu: 1400,
            addresses: vec![pb::IpAddress {
                cidr: "10.199.0.2/24".into(),
            }],
        }],
        routes: vec![pb::Route {
            destination: "0.0.0.0/0".into(),
            gateway: "10.199.0.1".into(),
            device: String::new(),
        }],
        ..Default::default()
    };
    client.setup_sandbox(setup).await.expect("setup sandbox");
    let wrong_mac = pb::SetupSandboxRequest {
        interfaces: vec![pb::Interface {
            mac: "02:00:00:00:00:99".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        code(client.setup_sandbox(wrong_mac).await),
        // No NIC carries the MAC: the pod's network is not what the request
        // assumes, a precondition (hull-agent 44fbc4c), not a malformed field.
        tonic::Code::FailedPrecondition
    );

    let script = "ip link show eth0 | grep -o 'mtu 1400'; ip -o -4 addr show dev eth0 | grep -o 10.199.0.2/24; \
                  ip route | grep -o 'default via 10.199.0.1'; ping -c1 -W20 10.199.0.1 >/dev/null && echo ping-ok";
    let rootfs = format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    let create = pb::CreateContainerRequest {
        container_id: "net".into(),
        oci_spec_json: spec_json(&["sh", "-c", script]),
        rootfs,
    };
    client.create_container(create).await.expect("create");
    let out = tokio::spawn(collect_output(
        client.clone(),
        "net",
        "",
        OutputStream::Stdout,
    ));
    client
        .start_container(pb::StartContainerRequest {
            container_id: "net".into(),
        })
        .await
        .expect("start");
    let wait = wait_process(&mut client, "net", "").await.expect("wait");
    assert_eq!(
        out.await.expect("output"),
        "mtu 1400\n10.199.0.2/24\ndefault via 10.199.0.1\nping-ok\n"
    );
    assert_eq!(wait.exit_status, 0);
    client
        .remove_container(pb::RemoveContainerRequest {
            container_id: "net".into(),
            force: false,
        })
        .await
        .expect("remove");

    // And the other way: the pod netns reaches the guest through the tap.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "/bin/busybox",
            "ping",
            "-c1",
            "-W20",
            "10.199.0.2",
        ])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "host-side ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    port_forward(&mut client).await;
    // Left for the re-attached side to find: one running, one created.
    let rootfs = format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    for id in ["persist", "pending"] {
        let create = pb::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec_json(&["sleep", "1000"]),
            rootfs: rootfs.clone(),
        };
        client.create_container(create).await.expect("create");
    }
    client
        .start_container(pb::StartContainerRequest {
            container_id: "persist".into(),
        })
        .await
        .expect("start");
}

/// After a hulld restart, the agent tells what runs in the guest.
async fn list_after_reattach(client: &mut Client) {
    let list = client
        .list_containers(pb::ListContainersRequest {})
        .await
        .expect("list")
        .into_inner();
    let summary: Vec<(String, i32, usize, bool)> = list
        .containers
        .iter()
        .map(|c| {
            (
                c.container_id.clone(),
                c.state,
                c.processes.len(),
                c.processes[0].pid > 0 && !c.processes[0].exited,
            )
        })
        .collect();
    let running = pb::ContainerState::Running as i32;
    let created = pb::ContainerState::Created as i32;
    assert_eq!(
        summary,
        vec![
            ("pending".into(), created, 1, true),
            ("persist".into(), running, 1, true)
        ]
    );
    let remove = pb::RemoveContainerRequest {
        container_id: "pending".into(),
        force: false,
    };
    client
        .remove_container(remove)
        .await
        .expect("remove a never-started container");
}

/// A server in a container on guest port 8080, reached through the agent's PortForward.
async fn port_forward(client: &mut Client) {
    let rootfs = format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    let spec = spec_json(&["sh", "-c", "echo hello-pf | nc -l -p 8080"]);
    let create = pb::CreateContainerRequest {
        container_id: "srv".into(),
        oci_spec_json: spec,
        rootfs,
    };
    client
        .create_container(create)
        .await
        .expect("create server");
    let out = tokio::spawn(collect_output(
        client.clone(),
        "srv",
        "",
        OutputStream::Stdout,
    ));
    client
        .start_container(pb::StartContainerRequest {
            container_id: "srv".into(),
        })
        .await
        .expect("start server");
    let bad = pb::PortForwardChunk {
        port: 0,
        data: Vec::new(),
    };
    assert_eq!(
        code(client.port_forward(tokio_stream::iter([bad])).await),
        tonic::Code::InvalidArgument
    );
    let mut attempts = 0;
    let mut replies = loop {
        let first = pb::PortForwardChunk {
            port: 8080,
            data: b"ping\n".to_vec(),
        };
        match client.port_forward(tokio_stream::iter([first])).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable && attempts < 100 => attempts += 1,
            Err(e) => panic!("port forward: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut got = Vec::new();
    while let Some(chunk) = replies.message().await.expect("port-forward chunk") {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&got), "hello-pf\n");
    assert_eq!(
        wait_process(client, "srv", "")
            .await
            .expect("wait server")
            .exit_status,
        0
    );
    assert_eq!(out.await.expect("server output"), "ping\n");
    client
        .remove_container(pb::RemoveContainerRequest {
            container_id: "srv".into(),
            force: false,
        })
        .await
        .expect("remove");
}

async fn process_part(vm: &dyn VmHandle) {
    let mut client = connect(vm).await;
    client
        .health(pb::HealthRequest {})
        .await
        .expect("health after reattach");
    list_after_reattach(&mut client).await;
    let rootfs = format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    let create = pb::CreateContainerRequest {
        container_id: "long".into(),
        oci_spec_json: spec_json(&["sleep", "1000"]),
        rootfs,
    };
    client.create_container(create).await.expect("create");
    let start = pb::StartContainerRequest {
        container_id: "long".into(),
    };
    client.start_container(start.clone()).await.expect("start");
    assert_eq!(
        code(client.start_container(start).await),
        tonic::Code::FailedPrecondition
    );
    tty_exec(&mut client).await;

    let running_remove = pb::RemoveContainerRequest {
        container_id: "long".into(),
        force: false,
    };
    assert_eq!(
        code(client.remove_container(running_remove.clone()).await),
        tonic::Code::FailedPrecondition
    );
    let signal = |signal| pb::SignalProcessRequest {
        container_id: "long".into(),
        exec_id: String::new(),
        signal,
    };
    assert_eq!(
        code(client.signal_process(signal(999)).await),
        tonic::Code::FailedPrecondition
    );
    client.signal_process(signal(9)).await.expect("kill");
    let wait = wait_process(&mut client, "long", "").await.expect("wait");
    assert_eq!((wait.exit_status, wait.signal), (137, 9));
    client
        .remove_container(running_remove)
        .await
        .expect("remove");
    oom_part(&mut client).await;
}

/// A tty exec: the pty has the requested size, then the resized one.
async fn tty_exec(client: &mut Client) {
    let oci_process_json = process_json(&["sh", "-c", "stty size; sleep 2; stty size"], true);
    let exec = pb::ExecProcessRequest {
        container_id: "long".into(),
        exec_id: "tty".into(),
        oci_process_json,
    };
    client.exec_process(exec).await.expect("tty exec");
    let req = pb::ReadOutputRequest {
        container_id: "long".into(),
        exec_id: "tty".into(),
        stream: OutputStream::Stdout as i32,
        limit: 0,
    };
    let mut stream = client
        .read_output(req)
        .await
        .expect("read tty")
        .into_inner();
    let mut out = Vec::new();
    // Resize only once the first size was printed.
    while !out.ends_with(b"\r\n") {
        let chunk = stream
            .message()
            .await
            .expect("tty chunk")
            .expect("tty output before EOF");
        out.extend_from_slice(&chunk.data);
    }
    let resize = |exec_id: &str, rows| pb::ResizeTtyRequest {
        container_id: "long".into(),
        exec_id: exec_id.into(),
        rows,
        cols: 100,
    };
    client.resize_tty(resize("tty", 30)).await.expect("resize");
    while let Some(chunk) = stream.message().await.expect("tty chunk") {
        out.extend_from_slice(&chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&out), "24 80\r\n30 100\r\n");
    assert_eq!(
        code(client.resize_tty(resize("", 1)).await),
        tonic::Code::FailedPrecondition,
        "init has no tty"
    );
}

/// A container over its memory limit is OOM-killed: its wait says so and an OOM event
/// streams out.
async fn oom_part(client: &mut Client) {
    let mut events = client
        .oom_events(pb::OomEventsRequest {})
        .await
        .expect("oom events")
        .into_inner();
    let mut spec: serde_json::Value = serde_json::from_slice(&spec_json(&[
        "sh",
        "-c",
        "x=$(head -c 24000000 /dev/zero | tr '\\0' a); echo survived",
    ]))
    .expect("spec");
    spec["linux"]["resources"]["memory"]["limit"] = serde_json::json!(8 << 20);
    let create = pb::CreateContainerRequest {
        container_id: "oom".into(),
        oci_spec_json: serde_json::to_vec(&spec).expect("json"),
        rootfs: format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR),
    };
    client.create_container(create).await.expect("create");
    client
        .start_container(pb::StartContainerRequest {
            container_id: "oom".into(),
        })
        .await
        .expect("start");
    let wait = client
        .wait_process(pb::WaitProcessRequest {
            container_id: "oom".into(),
            exec_id: String::new(),
        })
        .await
        .expect("wait")
        .into_inner();
    assert_eq!((wait.exit_status, wait.oom_killed), (137, true), "{wait:?}");
    let event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("OOM event in time")
        .expect("stream")
        .expect("event");
    assert_eq!(event.container_id, "oom");
    let stats = client
        .container_stats(pb::ContainerStatsRequest {
            container_id: "oom".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.oom_kills >= 1, "{stats:?}");
    client
        .remove_container(pb::RemoveContainerRequest {
            container_id: "oom".into(),
            force: false,
        })
        .await
        .expect("remove");
}
