//! Failure injection at each step of RunPodSandbox, with the real pieces: a CNI plugin
//! that fails ADD, a kernel that is garbage, an agent that cannot answer in time. Each
//! returns a clear error and leaves nothing behind: no netns, veth, IP reservation,
//! portmap chain, VMM process, run dir or record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sandbox_common;

use std::os::unix::fs::PermissionsExt;

use hull_cri_api as cri;
use sandbox_common::{PodEnv, TestVmm};

fn pod(name: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "sbfail".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 18081,
                host_ip: String::new(),
            }],
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

/// Runs one pod that must fail with `code` and a message containing `needle`, then checks
/// that nothing is left.
async fn expect_clean_failure(
    env: &PodEnv,
    conflist: &str,
    vm: &[(&str, String)],
    code: tonic::Code,
    needle: &str,
) {
    let mut hulld = env.hulld(conflist, vm);
    hulld.start();
    let mut rt = hulld.runtime().await;
    let err = rt
        .run_pod_sandbox(pod("web"))
        .await
        .expect_err("RunPodSandbox must fail");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().contains(needle),
        "message lacks {needle:?}: {}",
        err.message()
    );
    assert!(
        err.message().contains("cleaned up"),
        "no cleanup report: {}",
        err.message()
    );
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "sandbox still listed: {items:?}");
    // The error names the sandbox, so its netns, processes and dirs can be checked.
    let id = err
        .message()
        .strip_prefix("Pod sandbox ")
        .and_then(|m| m.get(..32))
        .unwrap_or_else(|| panic!("no sandbox id in {}", err.message()))
        .to_owned();
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &id,
    ));
    let sandboxes = hulld.root().join("run/sandboxes");
    left.extend(
        std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("dir {}", e.path().display())),
    );
    assert!(left.is_empty(), "left behind after {needle}: {left:#?}");
    // The name was released: the same pod fails again the same way, not AlreadyExists.
    let again = rt
        .run_pod_sandbox(pod("web"))
        .await
        .expect_err("fails again");
    assert_eq!(again.code(), code, "{}", again.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_step_failing_leaves_nothing() {
    let env = PodEnv::new();

    // CNI ADD fails in the last plugin of the chain (bridge and portmap had succeeded).
    let plugin = env.extra_bin.path().join("hullfail");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\ncase \"$CNI_COMMAND\" in\n\
         ADD) echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"injected CNI failure\"}'; exit 1;;\n\
         VERSION) echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}';;\nesac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let failing = env.conflist(&[serde_json::json!({"type": "hullfail"})]);
    expect_clean_failure(
        &env,
        &failing,
        &[],
        tonic::Code::Internal,
        "injected CNI failure",
    )
    .await;

    // The VM does not start: the kernel is garbage. Each backend says so in its own words
    // (QEMU after its spawn, hull-vmm before it serves its API): see TestVmm.
    let garbage = env.extra_bin.path().join("garbage-kernel");
    std::fs::write(&garbage, vec![0x5au8; 1 << 16]).unwrap();
    let ok = env.conflist(&[]);
    let vm = [("kernel", format!("{garbage:?}"))];
    expect_clean_failure(
        &env,
        &ok,
        &vm,
        tonic::Code::Internal,
        TestVmm::current().garbage_kernel_error(),
    )
    .await;

    // The agent never answers: the guest's /init is busybox init, not hull-agent.
    let initrd = no_agent_initramfs(env.extra_bin.path());
    let vm = [
        ("initramfs", format!("{initrd:?}")),
        ("agent_timeout_secs", "3".to_string()),
    ];
    expect_clean_failure(
        &env,
        &ok,
        &vm,
        tonic::Code::DeadlineExceeded,
        "did not answer",
    )
    .await;
}

/// A pod the node cannot hold (issue 20) is refused with RESOURCE_EXHAUSTED before
/// anything is taken: the real hulld reading the real /proc/meminfo, with a headroom
/// (`[node] memory_headroom_mib`, 16 TiB) no node has. No netns, veth, run dir or record;
/// no VMM or helper process; the name stays free, so a retry is refused the same way, not
/// with AlreadyExists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_node_cannot_hold_is_refused_with_resource_exhausted() {
    let env = PodEnv::new();
    let mut hulld = env.hulld(&env.conflist(&[]), &[]);
    let mut config = std::fs::read_to_string(&hulld.config_path).unwrap();
    config.push_str("[node]\nmemory_headroom_mib = 16777216\n");
    std::fs::write(&hulld.config_path, config).unwrap();
    hulld.start();
    let mut rt = hulld.runtime().await;
    for attempt in 0..2 {
        let err = rt
            .run_pod_sandbox(pod("big"))
            .await
            .expect_err("RunPodSandbox must be refused");
        assert_eq!(
            err.code(),
            tonic::Code::ResourceExhausted,
            "attempt {attempt}: {}",
            err.message()
        );
        for needle in [
            "cannot hold this pod",
            "node.memory_headroom_mib keeps 16777216 MiB",
        ] {
            assert!(
                err.message().contains(needle),
                "{needle:?} not in {}",
                err.message()
            );
        }
    }
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "sandbox listed: {items:?}");
    let mut left = env.network_leftovers();
    left.extend(
        std::fs::read_dir(hulld.root().join("run/sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("dir {}", e.path().display())),
    );
    // No VMM or helper was ever spawned for it: nothing but hulld names its root.
    let hulld_pid = hulld.child.as_ref().map(|c| c.id());
    left.extend(
        processes_naming(hulld.root())
            .into_iter()
            .filter(|(pid, _)| Some(*pid) != hulld_pid)
            .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Processes whose command line names `dir` (a hulld's VMMs and helpers get their
/// sockets and shares below its state dir), with that command line.
fn processes_naming(dir: &std::path::Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some((pid, cmd))
        })
        .collect()
}

/// A guest that does not answer at StopPodSandbox (its VMM is frozen with SIGSTOP) is
/// killed once the stop grace is over: Stop takes no longer than the agent's shutdown
/// deadline plus the grace, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_of_a_hung_guest_is_bounded_by_the_grace() {
    let env = PodEnv::new();
    let grace = std::time::Duration::from_secs(3);
    let vm = [
        ("agent_timeout_secs", "120".to_string()),
        ("stop_grace_secs", grace.as_secs().to_string()),
    ];
    let mut hulld = env.hulld(&env.conflist(&[]), &vm);
    hulld.start();
    let mut rt = hulld.runtime().await;
    let id = rt
        .run_pod_sandbox(pod("hung"))
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let pid = info["vmmPid"].as_i64().expect("vmmPid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP)
        .expect("SIGSTOP the VMM");

    let t = std::time::Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("stop");
    let took = t.elapsed();
    // Outcome: the VMM is gone (below). The bound tells "killed once the 3 s grace was over"
    // from "waited for the unanswering agent" (agent_timeout_secs: 120 s); half of that
    // leaves room for the helpers, the network and a loaded machine.
    let bound = std::time::Duration::from_secs(60);
    assert!(
        took >= grace,
        "the hung guest was killed before its grace: {took:?}"
    );
    assert!(
        took < bound,
        "stop of a hung guest took {took:?} (bound {bound:?})"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} still there after stop"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("remove");
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &id,
    ));
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// A gzip'd newc initramfs whose /init is busybox (its `init` applet): a guest that boots
/// and runs, but has no agent.
fn no_agent_initramfs(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("no-agent-root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::copy("/bin/busybox", root.join("init")).expect("/bin/busybox (busybox-static)");
    let out = dir.join("no-agent.img");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {:?} && find . | cpio -o -H newc --quiet | gzip > {:?}",
            root, out
        ))
        .status()
        .expect("cpio");
    assert!(
        status.success(),
        "building the no-agent initramfs (needs cpio, gzip)"
    );
    out
}
