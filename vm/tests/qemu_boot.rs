//! Boots the real hull guest (kernel + initramfs from packaging/guest/build.sh) under the
//! QEMU backend, drives hull-agent over vsock, runs a busybox container from a virtio-fs
//! share, execs into it, stops the VM and checks nothing is left behind.
//!
//! Needs root, QEMU, vhost-device-vsock, virtiofsd, /bin/busybox (busybox-static) and the
//! built guest in $HULL_GUEST_DIR (default /var/lib/hull/guest).

#![allow(dead_code)] // qemu_common is shared with qemu_net.rs

mod qemu_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_agent_api::v1::{self as pb, OutputStream};
use hull_vm::hypervisor::{Hypervisor, HypervisorError, VmConfig, VmExit, VmHandle};
use hull_vm::qemu::{QemuConfig, QemuHypervisor};
use qemu_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_guest_runs_container_and_exec_then_cleans_up() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("hull-qemu-boot-")
        .tempdir()
        .expect("tempdir");
    let cfg = config(tmp.path(), "qemu-boot-test");
    busybox_rootfs(&tmp.path().join("share/c1/rootfs"));
    let hv = QemuHypervisor::new(QemuConfig::default());
    let booted = Instant::now();
    let vm: Arc<dyn VmHandle> = Arc::from(hv.start(&cfg).await.expect("start VM"));
    let limit = Duration::from_secs(240);
    let result = guarded(&vm, limit, |vm| async move { drive_guest(&*vm).await }).await;
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    let exit = vm.stop(Duration::from_secs(10)).await.expect("stop VM");
    if let Err(e) = result {
        panic!("{e}\nconsole:\n{console}");
    }
    eprintln!(
        "boot + container + exec + shutdown took {:?}",
        booted.elapsed()
    );
    assert_eq!(exit, VmExit::Shutdown, "console:\n{console}");
    assert!(!vm.is_running());
    assert_eq!(
        vm.stop(Duration::from_secs(1)).await.expect("second stop"),
        exit,
        "stop is idempotent"
    );
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "left behind: {left:#?}");
}

async fn drive_guest(vm: &dyn VmHandle) {
    let mut client = connect(vm).await;
    setup_sandbox(&mut client).await;
    create_container(&mut client).await;
    let stdout = tokio::spawn(collect_output(
        client.clone(),
        "c1",
        "",
        OutputStream::Stdout,
    ));
    let stderr = tokio::spawn(collect_output(
        client.clone(),
        "c1",
        "",
        OutputStream::Stderr,
    ));
    let start = pb::StartContainerRequest {
        container_id: "c1".into(),
    };
    client
        .start_container(start)
        .await
        .expect("start container");
    exec_in_container(&mut client).await;
    exec_with_capabilities(&mut client).await;

    let stats = client.container_stats(pb::ContainerStatsRequest {
        container_id: "c1".into(),
    });
    let stats = stats.await.expect("stats").into_inner();
    assert!(
        stats.memory_current_bytes > 0 && stats.pids_current >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.memory_max_bytes, 64 << 20);

    let stdin = pb::StdinChunk {
        container_id: "c1".into(),
        exec_id: String::new(),
        data: b"go\n".to_vec(),
        close_stdin: true,
    };
    client
        .write_stdin(tokio_stream::iter([stdin]))
        .await
        .expect("write stdin");
    let wait = wait_process(&mut client, "c1", "").await.expect("wait");
    assert_eq!(
        (wait.exit_status, wait.signal, wait.oom_killed),
        (3, 0, false)
    );
    assert_eq!(stdout.await.expect("stdout"), "hello from ctr\ngot go\n");
    assert_eq!(
        stderr.await.expect("stderr"),
        "nameserver 10.96.0.10\nsearch svc.cluster.local\n"
    );
    assert_eq!(
        code(wait_process(&mut client, "nope", "").await),
        tonic::Code::NotFound
    );

    let remove = pb::RemoveContainerRequest {
        container_id: "c1".into(),
        force: false,
    };
    client.remove_container(remove).await.expect("remove");
    client
        .shutdown(pb::ShutdownRequest {})
        .await
        .expect("shutdown");
    // The agent reboots the guest; with -no-reboot QEMU then exits by itself.
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("QEMU did not exit after the agent's Shutdown")
        .expect("wait");
    assert_eq!(exit, VmExit::Shutdown);
    assert!(!vm.is_running());
}

async fn setup_sandbox(client: &mut Client) {
    let health = client
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.agent_version, hull_agent_api::VERSION);
    assert!(health.kernel_release.contains("hull"), "{health:?}");
    let setup = pb::SetupSandboxRequest {
        sandbox_id: "qemu-boot-test".into(),
        hostname: "hull-pod".into(),
        dns: Some(pb::DnsConfig {
            nameservers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec![],
        }),
        sysctls: [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into(),
        ..Default::default()
    };
    client.setup_sandbox(setup).await.expect("setup sandbox");
    let bad = pb::SetupSandboxRequest {
        hostname: "bad host!".into(),
        ..Default::default()
    };
    assert_eq!(
        code(client.setup_sandbox(bad).await),
        tonic::Code::InvalidArgument
    );
}

/// Creates c1, whose init prints, then waits on stdin so the execs find it running; and
/// checks that bad creates are refused.
async fn create_container(client: &mut Client) {
    let rootfs = format!("{}/c1/rootfs", hull_agent_api::GUEST_SHARED_DIR);
    let script =
        "echo hello from $(hostname); cat /etc/resolv.conf >&2; read line; echo got $line; exit 3";
    // A seccomp profile: everything but mkdir is allowed (checked by the exec below).
    let mut spec: serde_json::Value =
        serde_json::from_slice(&spec_json(&["sh", "-c", script])).expect("spec");
    spec["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    });
    let create = pb::CreateContainerRequest {
        container_id: "c1".into(),
        oci_spec_json: serde_json::to_vec(&spec).expect("json"),
        rootfs: rootfs.clone(),
    };
    client
        .create_container(create.clone())
        .await
        .expect("create container");
    assert_eq!(
        code(client.create_container(create).await),
        tonic::Code::AlreadyExists
    );
    let bad_id = pb::CreateContainerRequest {
        container_id: "../x".into(),
        oci_spec_json: spec_json(&["sh"]),
        rootfs,
    };
    assert_eq!(
        code(client.create_container(bad_id).await),
        tonic::Code::InvalidArgument
    );
    let bad_spec = pb::CreateContainerRequest {
        container_id: "c2".into(),
        oci_spec_json: b"{not json".to_vec(),
        rootfs: "/".into(),
    };
    assert_eq!(
        code(client.create_container(bad_spec).await),
        tonic::Code::InvalidArgument
    );
}

async fn exec_in_container(client: &mut Client) {
    let process = serde_json::json!({ "args": ["sh", "-c", "echo exec-$((6*7)); cat /proc/1/comm; mkdir /tmp/x 2>&1; exit 5"], "env": ["PATH=/bin"], "cwd": "/tmp" });
    let exec = pb::ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        oci_process_json: serde_json::to_vec(&process).expect("json"),
    };
    // An exec runs at once; its output waits in the pipe until read.
    client.exec_process(exec).await.expect("exec");
    let out = tokio::spawn(collect_output(
        client.clone(),
        "c1",
        "e1",
        OutputStream::Stdout,
    ));
    assert_eq!(
        wait_process(client, "c1", "e1")
            .await
            .expect("wait exec")
            .exit_status,
        5
    );
    assert_eq!(
        out.await.expect("exec output"),
        "exec-42\nsh\nmkdir: can't create directory '/tmp/x': Operation not permitted\n",
        "exec runs in the container's pid namespace"
    );
}

/// Only CAP_CHOWN and CAP_KILL left (mask 0x21); a non-root user keeps them across
/// execve only as ambient capabilities.
async fn exec_with_capabilities(client: &mut Client) {
    let caps = ["CAP_CHOWN", "CAP_KILL"];
    let process = serde_json::json!({
        "args": ["sh", "-c", "grep -E '^(CapEff|CapBnd|CapAmb|Uid)' /proc/self/status"], "env": ["PATH=/bin"], "cwd": "/",
        "user": { "uid": 1000, "gid": 1000 },
        "capabilities": { "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps }
    });
    let exec = pb::ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "caps".into(),
        oci_process_json: serde_json::to_vec(&process).expect("json"),
    };
    client
        .exec_process(exec)
        .await
        .expect("exec with capabilities");
    let out = collect_output(client.clone(), "c1", "caps", OutputStream::Stdout).await;
    assert_eq!(
        out,
        "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000021\nCapBnd:\t0000000000000021\nCapAmb:\t0000000000000021\n"
    );
}

#[tokio::test]
async fn missing_kernel_is_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = VmConfig {
        id: "qemu-missing".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: tmp.path().join("no-such-kernel"),
        initramfs: tmp.path().join("no-such-initramfs"),
        cmdline: String::new(),
        run_dir: tmp.path().join("run"),
        netns: None,
        net: None,
        shared_dir: Some(tmp.path().join("share")),
        host: None,
    };
    std::fs::create_dir_all(tmp.path().join("share")).expect("share dir");
    let err = QemuHypervisor::new(QemuConfig::default())
        .start(&cfg)
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(err, HypervisorError::Missing { what: "kernel", .. }),
        "{err}"
    );
    assert!(leftovers(tmp.path()).is_empty());
}

/// QEMU refusing to start (here: a kernel file that is not a kernel) is a `Boot` error
/// carrying QEMU's message, found by the wait for the agent within a poll (start itself
/// does not wait), and stopping the VM then cleans up the helpers started before QEMU.
#[tokio::test]
async fn failed_start_cleans_up_helpers() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("hull-qemu-fail-")
        .tempdir()
        .expect("tempdir");
    let bogus = tmp.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel").expect("write");
    std::fs::create_dir_all(tmp.path().join("share")).expect("share dir");
    let cfg = VmConfig {
        id: "qemu-fail".into(),
        vcpus: 1,
        memory_mib: 128,
        kernel: bogus.clone(),
        initramfs: bogus,
        cmdline: String::new(),
        run_dir: tmp.path().join("run"),
        netns: None,
        net: None,
        shared_dir: Some(tmp.path().join("share")),
        host: None,
    };
    let err = match QemuHypervisor::new(QemuConfig::default()).start(&cfg).await {
        Err(e) => e,
        Ok(vm) => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let Err(err) = vm.wait_agent_ready(deadline).await else {
                panic!("a VM with a bogus kernel became ready");
            };
            vm.stop(std::time::Duration::from_secs(1))
                .await
                .expect("stop");
            err
        }
    };
    assert!(matches!(err, HypervisorError::Boot(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("qemu exited before its agent was ready"),
        "{text}"
    );
    assert!(
        text.contains("linux kernel") || text.contains("kernel"),
        "{text}"
    );
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "left behind: {left:#?}");
}
