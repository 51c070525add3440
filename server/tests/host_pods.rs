//! Host-isolation pods through the CRI (issue 14), with a real hulld, real CNI plugins in a
//! throw-away "node" netns (`cni.runtime_netns`, which is also the node network hostNetwork
//! pods get), hull-agent in host mode running the containers on this machine's cgroups
//! (v1 hybrid here), and a VM pod under QEMU beside them:
//! - a hostNetwork pod serves on a node port the node reaches on 127.0.0.1, sees the
//!   node's interfaces, and a pod-network (VM) pod reaches it by the node's IP;
//! - a hostPID pod sees a process of the node; a hostIPC pod sees the node's SysV segment
//!   and a pod with its own IPC namespace does not;
//! - the VM pod and the host pods survive a `kill -9` of hulld and serve after its restart;
//! - nothing is left after removal: processes, netns, namespace pins, run dirs, cgroups;
//! - the policy: a namespace not allowed host isolation gets PermissionDenied and leaves
//!   nothing; the `host` handler selects host isolation; an unknown handler is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_common::{container, create_start, exec_sh};
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::{PodEnv, sandbox_leftovers};
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/busybox:latest";
/// The namespace the tests' hulld allows host isolation.
const ALLOWED: &str = "hull-node-agents";
/// The hostNetwork pod's web server port (in the test's own node netns: no clash).
const PORT: u16 = 8088;

/// hull-agent as built by `cargo build -p hull-agent` (test/run.sh does), beside hulld.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let agent = dir.join("hull-agent");
    assert!(
        agent.is_file(),
        "{} missing: build it with `cargo build -p hull-agent`",
        agent.display()
    );
    agent
}

/// hulld on `env`'s network, pulling from `reg`, with host isolation for [`ALLOWED`] and a
/// VM handler `big`.
fn hulld(env: &PodEnv, reg: &str) -> common::Hulld {
    let hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    cri_common::mirror_registry_k8s_io(&hulld, reg);
    let mut config = std::fs::read_to_string(&hulld.config_path).unwrap();
    config.push_str(&format!(
        "[host_isolation]\nallowed_namespaces = [\"{ALLOWED}\"]\nagent = \"{}\"\n\
         [runtimes.big]\nisolation = \"vm\"\ndefault_memory_mib = 320\n",
        agent_binary().display()
    ));
    std::fs::write(&hulld.config_path, config).unwrap();
    hulld
}

fn pod(
    name: &str,
    namespace: &str,
    logs: &Path,
    ns: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    let mut p = cri_common::pod_config(name, logs);
    p.metadata.as_mut().unwrap().namespace = namespace.into();
    p.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    p
}

fn node(network: bool, pid: bool, ipc: bool) -> cri::NamespaceOption {
    let mode = |on| {
        if on {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        }
    };
    cri::NamespaceOption {
        network: mode(network),
        pid: mode(pid),
        ipc: mode(ipc),
        ..Default::default()
    }
}

async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// PodSandboxStatus's state and verbose info.
async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> (i32, serde_json::Value) {
    let resp = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info = serde_json::from_str(&resp.info["info"]).expect("info json");
    (resp.status.expect("status").state, info)
}

/// The cgroup directories of hull's pod `id` on this machine (every hierarchy).
fn pod_cgroups(id: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.contains(" - cgroup"))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join("hull").join(id))
        .filter(|p| p.exists())
        .collect()
}

/// An HTTP GET of `/` on 127.0.0.1:`port` from inside `env`'s node netns.
fn get_on_node(env: &PodEnv, port: u16) -> String {
    get_in(env.host.path(), port)
}

/// An HTTP GET of `/` on 127.0.0.1:`port` inside the netns at `netns`.
fn get_in(netns: &Path, port: u16) -> String {
    hull_network::netns::Netns::open(netns)
        .unwrap()
        .run(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap()
        .unwrap_or_else(|e| format!("connect failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pods_beside_a_vm_pod_survive_kill_9_and_leave_nothing() {
    let env = PodEnv::new();
    let reg = registry::TestRegistry::start();
    common::push_test_images(&reg.host());
    let mut hulld = hulld(&env, &reg.host());
    hulld.start();
    let mut rt = hulld.runtime().await;
    cri_common::pull(&mut hulld.images().await, IMAGE).await;
    let logs = tempfile::tempdir().unwrap();
    let state_dir = hulld.root().join("run");

    // A node process and a node SysV segment for the hostPID and hostIPC pods to see.
    let mut node_proc = std::process::Command::new("sleep")
        .arg("1234")
        .spawn()
        .unwrap();
    let out = std::process::Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .unwrap();
    let shm_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Shared memory id: ")
        .to_owned();
    assert!(shm_id.parse::<u32>().is_ok(), "ipcmk: {out:?}");

    let net = pod("hostnet", ALLOWED, logs.path(), node(true, false, false));
    let pid = pod("hostpid", ALLOWED, logs.path(), node(false, true, false));
    let ipc = pod("hostipc", ALLOWED, logs.path(), node(false, false, true));
    let vm = cri_common::pod_config("vm", logs.path());
    let mut ids = Vec::new();
    for (config, handler) in [(&net, ""), (&pid, ""), (&ipc, ""), (&vm, "big")] {
        ids.push(run(&mut rt, config, handler).await.expect("run pod"));
    }
    let checks = {
        let (mut rt, ids, node_pid) = (rt.clone(), ids.clone(), node_proc.id());
        let node = Node {
            netns: env.host.path().to_owned(),
            gateway: env.gateway(),
            bridge: env.bridge.clone(),
            pid: node_pid,
            shm_id: shm_id.clone(),
        };
        let configs = [net.clone(), pid.clone(), ipc.clone(), vm.clone()];
        tokio::spawn(async move { checks(&mut rt, &ids, &configs, &node).await })
    }
    .await;
    let checks = match checks {
        Ok(ctrs) => ctrs,
        Err(e) => {
            for id in &ids {
                let _ = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
                let _ = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
            }
            let _ = std::process::Command::new("ipcrm")
                .args(["-m", &shm_id])
                .status();
            std::panic::resume_unwind(e.into_panic());
        }
    };

    // kill -9 of hulld: the VM pod and the host pods keep running; a new hulld serves them.
    hulld.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(
        get_on_node(&env, PORT).contains("served by a host pod"),
        "hulld down"
    );
    hulld.start();
    let mut rt = hulld.runtime().await;
    for (id, ctr) in ids.iter().zip(&checks) {
        assert_eq!(
            status(&mut rt, id).await.0,
            cri::PodSandboxState::SandboxReady as i32
        );
        assert_eq!(
            exec_sh(&mut rt, ctr, "echo again").await.trim(),
            "again",
            "pod {id}"
        );
    }
    assert!(get_on_node(&env, PORT).contains("served by a host pod"));

    for id in &ids {
        cri_common::stop_remove_pod(&mut rt, id).await;
    }
    let _ = std::process::Command::new("ipcrm")
        .args(["-m", &shm_id])
        .status();
    let _ = node_proc.kill();
    let _ = node_proc.wait();
    let mut left = env.network_leftovers();
    for id in &ids {
        left.extend(sandbox_leftovers(&state_dir, id));
        left.extend(
            pod_cgroups(id)
                .iter()
                .map(|p| format!("cgroup {}", p.display())),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = hulld.root().display().to_string();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&root))
            .map(|l| format!("mount {l}")),
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// What the pods should see of the node.
struct Node {
    netns: PathBuf,
    gateway: String,
    bridge: String,
    pid: u32,
    shm_id: String,
}

/// The per-pod checks; returns each pod's long-running container.
async fn checks(
    rt: &mut RuntimeServiceClient<Channel>,
    ids: &[String],
    configs: &[cri::PodSandboxConfig; 4],
    node: &Node,
) -> Vec<String> {
    let (node_pid, shm_id, gateway, bridge) = (node.pid, &node.shm_id, &node.gateway, &node.bridge);
    let [net, pid, ipc, vm] = configs;
    for (id, isolation) in ids.iter().zip(["host", "host", "host", "vm"]) {
        let (state, info) = status(rt, id).await;
        assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
        assert_eq!(info["isolation"], isolation, "{id}: {info}");
    }
    let web = format!(
        "mkdir -p /tmp/www && echo 'served by a host pod' > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"
    );
    let server = create_start(
        rt,
        &ids[0],
        net,
        container("web", IMAGE, &["sh", "-c", &web], "web.log"),
    )
    .await;
    let sleeper = |name| container(name, IMAGE, &["sleep", "100000"], "s.log");
    let in_pid = create_start(rt, &ids[1], pid, sleeper("p")).await;
    let in_ipc = create_start(rt, &ids[2], ipc, sleeper("i")).await;
    let in_vm = create_start(rt, &ids[3], vm, sleeper("v")).await;

    // hostNetwork: the node reaches it on 127.0.0.1; it sees the node's bridge; the VM pod
    // reaches it by the node's IP on the pod network.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = get_in(&node.netns, PORT);
    while !page.contains("served by a host pod") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        page = get_in(&node.netns, PORT);
    }
    assert!(
        page.contains("served by a host pod"),
        "the node does not reach the hostNetwork pod on 127.0.0.1:{PORT}: {page}"
    );
    let links = exec_sh(rt, &server, "cat /proc/net/dev").await;
    assert!(links.contains(bridge), "node interfaces not seen: {links}");
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {gateway} {PORT}");
    let page = exec_sh(rt, &in_vm, &get).await;
    assert!(page.contains("served by a host pod"), "{page}");

    // hostPID sees the node's process; the others have a PID namespace of their own.
    let cmdline = exec_sh(
        rt,
        &in_pid,
        &format!("cat /proc/{node_pid}/cmdline | tr '\\0' ' '"),
    )
    .await;
    assert_eq!(cmdline.trim(), "sleep 1234");
    let own = exec_sh(
        rt,
        &in_ipc,
        &format!("test -e /proc/{node_pid}/cmdline && echo seen || echo unseen"),
    )
    .await;
    assert_eq!(
        own.trim(),
        "unseen",
        "a pod PID namespace must not see the node's processes"
    );

    // hostIPC sees the node's segment; a pod IPC namespace does not.
    let shm = exec_sh(rt, &in_ipc, "cat /proc/sysvipc/shm").await;
    assert!(
        shm.split_whitespace().any(|w| w == shm_id.as_str()),
        "{shm}"
    );
    let shm = exec_sh(rt, &in_pid, "cat /proc/sysvipc/shm").await;
    assert!(
        !shm.split_whitespace().any(|w| w == shm_id.as_str()),
        "{shm}"
    );

    // The containers run on this machine's cgroups, under hull/<pod>.
    for id in &ids[..3] {
        assert!(!pod_cgroups(id).is_empty(), "no cgroup of host pod {id}");
    }
    vec![server, in_pid, in_ipc, in_vm]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refuses_cleanly_and_handlers_select_isolation() {
    let env = PodEnv::new();
    let reg = registry::TestRegistry::start();
    common::push_test_images(&reg.host());
    let mut hulld = hulld(&env, &reg.host());
    hulld.start();
    let mut rt = hulld.runtime().await;
    cri_common::pull(&mut hulld.images().await, IMAGE).await;
    let logs = tempfile::tempdir().unwrap();
    let state_dir = hulld.root().join("run");

    // Status lists every handler, and "" for the default.
    let st = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = st
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "big", "host", "hull"]);

    // Not allowed: PermissionDenied naming the namespace, and nothing taken.
    let denied = pod("agent", "default", logs.path(), node(true, true, true));
    let err = run(&mut rt, &denied, "").await.expect_err("not allowed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("\"default\"") && err.message().contains("hostNetwork"),
        "{}",
        err.message()
    );
    let err = run(
        &mut rt,
        &pod("x", "default", logs.path(), node(false, false, false)),
        "host",
    )
    .await
    .expect_err("host handler, not allowed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = run(&mut rt, &cri_common::pod_config("y", logs.path()), "runc")
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("\"runc\""), "{}", err.message());
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    let dirs: Vec<_> = std::fs::read_dir(state_dir.join("sandboxes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "run dirs left: {dirs:?}");

    // The `host` handler: host isolation without any node namespace (its own network from
    // CNI, its own PID namespace with the agent as init, cgroups on the node).
    let cfg = pod("handler", ALLOWED, logs.path(), node(false, false, false));
    let id = run(&mut rt, &cfg, "host").await.expect("host handler pod");
    let result = {
        let (mut rt, id, cfg) = (rt.clone(), id.clone(), cfg.clone());
        tokio::spawn(async move {
            let (_, info) = status(&mut rt, &id).await;
            assert_eq!(info["isolation"], "host", "{info}");
            let c = create_start(
                &mut rt,
                &id,
                &cfg,
                container("c", IMAGE, &["sleep", "100000"], "c.log"),
            )
            .await;
            // The pod's PID namespace (the container's namespace option is POD): its init
            // is the pod's host agent, and the node's processes are not there.
            let init = exec_sh(&mut rt, &c, "cat /proc/1/cmdline | tr '\\0' ' '").await;
            assert!(init.contains("hull-agent --host-mode"), "{init}");
            let pids = exec_sh(&mut rt, &c, "ls -d /proc/[0-9]* | wc -l").await;
            assert!(
                pids.trim().parse::<u32>().unwrap() < 10,
                "node processes seen: {pids}"
            );
            let ip = exec_sh(&mut rt, &c, "ip -4 -o addr show eth0").await;
            assert!(ip.contains("inet "), "CNI gave the pod an address: {ip}");
            assert!(!pod_cgroups(&id).is_empty());
            stats_and_update(&mut rt, &id, &c).await;
        })
        .await
    };
    cri_common::stop_remove_pod(&mut rt, &id).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    let mut left = sandbox_leftovers(&state_dir, &id);
    left.extend(
        pod_cgroups(&id)
            .iter()
            .map(|p| format!("cgroup {}", p.display())),
    );
    left.extend(env.network_leftovers());
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// A host pod's stats come from the node's cgroups, and UpdateContainerResources writes
/// them (v1 files on this machine, v2 elsewhere).
async fn stats_and_update(rt: &mut RuntimeServiceClient<Channel>, pod: &str, ctr: &str) {
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: ctr.into(),
        })
        .await
        .expect("container stats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats.memory.and_then(|m| m.usage_bytes).map(|v| v.value);
    assert!(
        mem.is_some_and(|m| m > 0),
        "memory of the container's cgroup: {mem:?}"
    );
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .expect("linux stats");
    let pod_mem = pod_stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(pod_mem.is_some_and(|m| m > 0), "{pod_mem:?}");
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: ctr.into(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("update resources");
    let limits: Vec<String> = pod_cgroups(pod)
        .iter()
        .flat_map(|d| {
            [
                "memory.limit_in_bytes",
                "memory.max",
                "cpu.shares",
                "cpu.weight",
            ]
            .map(|f| std::fs::read_to_string(d.join(ctr).join(f)).unwrap_or_default())
        })
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    assert!(limits.contains(&(96u64 << 20).to_string()), "{limits:?}");
    assert!(
        limits.iter().any(|v| v == "256" || v == "10"),
        "cpu shares/weight: {limits:?}"
    );
}
