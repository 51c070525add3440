//! hulld's container runtime against a real pod VM (root; the guest under QEMU, TCG here):
//! a pod from RunPodSandbox through the CRI, then containers built by hulld's OCI spec
//! builder on a busybox-static rootfs in the pod's share (the image service is not handed
//! to the container manager yet, so this bypasses CreateContainer's image step), started,
//! stopped and exec'd by hulld's container runtime: CRI log content exactly, OOMKilled with
//! a 15 MiB limit, the stop timeout, ExecSync output/exit code/kill on timeout, stats,
//! user/env/working dir/read-only rootfs, two containers talking over localhost, and a log
//! rotation with ReopenContainerLog while the container writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_agent_api::AgentClient;
use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use hulld::container::manager::ContainerManager;
use hulld::container::runtime;
use hulld::container::spec::{self, ImageDefaults, SpecInput};
use hulld::container::volumes;
use hulld::events::Events;
use hulld::state::{ContainerRecord, ContainerState, Store};
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const APPLETS: [&str; 16] = [
    "sh", "echo", "sleep", "cat", "id", "pwd", "env", "touch", "printf", "head", "ls", "true",
    "dd", "yes", "nc", "seq",
];

fn busybox(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "work", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\napp:x:1234:2345::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:2345:\nextra:x:3456:app\n",
    )
    .unwrap();
}

struct Pod {
    /// The pod's run dir (its share's staging dir, where hulld builds a container, is in it).
    run_dir: std::path::PathBuf,
    agent: AgentClient<Channel>,
    manager: Arc<ContainerManager>,
    logs: tempfile::TempDir,
    _store_dir: tempfile::TempDir,
}

impl Pod {
    /// Creates `id` with `config` in the guest and returns its record (not stored yet).
    async fn create(
        &mut self,
        id: &str,
        config: cri::ContainerConfig,
        image: &ImageDefaults,
    ) -> ContainerRecord {
        let rootfs = hulld::sandbox::share::staging_dir(&self.run_dir)
            .join(id)
            .join("rootfs");
        busybox(&rootfs);
        let guest_root = format!("{}/{id}/rootfs", hull_agent_api::GUEST_SHARED_DIR);
        let mounts = volumes::prepare(
            &self.run_dir,
            hull_agent_api::GUEST_SHARED_DIR,
            id,
            &config.mounts,
        )
        .unwrap();
        let oci = spec::build(&SpecInput {
            config: &config,
            image,
            host_rootfs: &rootfs,
            guest_rootfs: &guest_root,
            mounts: &mounts,
            hostname: "ctrpod",
            pod_sysctls: &BTreeMap::new(),
        })
        .unwrap();
        self.agent
            .create_container(pb::CreateContainerRequest {
                container_id: id.into(),
                oci_spec_json: serde_json::to_vec(&oci).unwrap(),
                rootfs: guest_root,
            })
            .await
            .expect("agent create");
        let record = ContainerRecord {
            id: id.into(),
            sandbox_id: "pod".into(),
            state: ContainerState::Created,
            config,
            image_ref: "busybox".into(),
            image_id: "sha256:test".into(),
            created_at: hulld::state::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: self
                .logs
                .path()
                .join(format!("{id}.log"))
                .display()
                .to_string(),
            runtime_spec: None,
        };
        self.manager.add(&record).unwrap();
        record
    }

    async fn run(&mut self, id: &str, config: cri::ContainerConfig) -> ContainerRecord {
        let r = self.create(id, config, &ImageDefaults::default()).await;
        runtime::start(Arc::clone(&self.manager), self.agent.clone(), &r)
            .await
            .expect("start");
        r
    }

    async fn wait_exit(&self, id: &str, limit: Duration) -> ContainerRecord {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.manager.get(id).unwrap();
            if r.state == ContainerState::Exited {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn command(args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn log_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').expect("timestamp").1.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_in_a_real_pod_vm() {
    let env = PodEnv::new();
    let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    hulld.start();
    let mut rt = hulld.runtime().await;
    let pod = cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "ctr".into(),
                namespace: "ctrtest".into(),
                uid: "uid-ctr".into(),
                attempt: 1,
            }),
            hostname: "ctrpod".into(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    let pod_id = rt
        .run_pod_sandbox(pod)
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let run_dir = std::path::PathBuf::from(info["runDir"].as_str().unwrap());
    let socket = std::path::PathBuf::from(info["agentSocket"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let agent = hull_agent_api::connect(&socket, hull_agent_api::AGENT_VSOCK_PORT, deadline)
        .await
        .expect("agent");
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_dir.path().join("m.redb"), &hulld::state::tables()).unwrap();
    let p = Pod {
        run_dir,
        agent,
        manager: Arc::new(ContainerManager::new(store, Events::new())),
        logs: tempfile::tempdir().unwrap(),
        _store_dir: store_dir,
    };

    // Run the checks in a task so that a failed one still stops the pod's VM below.
    let checks = tokio::spawn(async move {
        let mut p = p;
        checks(&mut p).await;
        p
    })
    .await;
    if let Ok(p) = &checks {
        let mut agent = p.agent.clone();
        for id in ["log1", "cfg1", "oom1", "run1", "srv1", "cli1", "rot1"] {
            let _ = agent
                .remove_container(pb::RemoveContainerRequest {
                    container_id: id.into(),
                    force: true,
                })
                .await;
        }
    }
    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn checks(p: &mut Pod) {
    // 1. Output in the CRI log, exactly.
    let r = p
        .run(
            "log1",
            command(&["sh", "-c", "echo hello; echo oops >&2; printf tail"]),
        )
        .await;
    let done = p.wait_exit("log1", Duration::from_secs(60)).await;
    assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));
    let mut lines = log_lines(&r.log_path);
    lines.sort();
    assert_eq!(lines, ["stderr F oops", "stdout F hello", "stdout P tail"]);

    // 2. User, groups, env, working dir from the image and the CRI config; read-only rootfs;
    //    a hostPath volume written from the guest.
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        host_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut cfg = command(&[
        "sh",
        "-c",
        "id; pwd; echo $FOO $IMG; touch /ro-test 2>/dev/null || echo rootfs-ro",
    ]);
    cfg.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "bar".into(),
    }];
    cfg.working_dir = "/work".into();
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.path().display().to_string(),
        ..Default::default()
    }];
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: None,
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            readonly_rootfs: true,
            ..Default::default()
        }),
    });
    let image = ImageDefaults {
        env: vec!["IMG=from-image".into()],
        ..Default::default()
    };
    let r = p.create("cfg1", cfg, &image).await;
    runtime::start(Arc::clone(&p.manager), p.agent.clone(), &r)
        .await
        .expect("start");
    let done = p.wait_exit("cfg1", Duration::from_secs(60)).await;
    let lines = log_lines(&r.log_path);
    assert_eq!(done.exit_code, 0, "{lines:?}");
    assert!(
        lines[0].contains("uid=1234") && lines[0].contains("gid=2345") && lines[0].contains("3456"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1..4],
        [
            "stdout F /work",
            "stdout F bar from-image",
            "stdout F rootfs-ro"
        ],
        "{lines:?}"
    );
    // The volume is bound into the share on the host, but virtiofsd (--sandbox=namespace)
    // took its mount namespace before the bind and the share is not a shared mount, so the
    // guest sees the empty mount point until the sandbox makes the share rshared before
    // virtiofsd starts; so no write-through check here yet (see the report of issue 7).
    volumes::release(&p.run_dir, "cfg1");

    // 3. A 15 MiB limit and a shell that doubles a string until it dies: OOMKilled.
    let mut cfg = command(&[
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 15 << 20,
            ..Default::default()
        }),
        security_context: None,
    });
    p.run("oom1", cfg).await;
    let done = p.wait_exit("oom1", Duration::from_secs(120)).await;
    assert_eq!(done.reason, "OOMKilled", "exit {}", done.exit_code);

    // 5. Two containers of the pod talk over localhost.
    p.run(
        "srv1",
        command(&["nc", "-l", "-p", "8080", "-e", "echo", "hi-from-srv"]),
    )
    .await;
    let r = p
        .run(
            "cli1",
            command(&[
                "sh",
                "-c",
                "for i in $(seq 50); do nc 127.0.0.1 8080 && exit 0; sleep 0.2; done; exit 1",
            ]),
        )
        .await;
    let done = p.wait_exit("cli1", Duration::from_secs(60)).await;
    assert_eq!(done.exit_code, 0, "{:?}", log_lines(&r.log_path));
    assert!(log_lines(&r.log_path).contains(&"stdout F hi-from-srv".to_owned()));

    // 6. ReopenContainerLog: rotate while the container writes; no line lost or doubled.
    let r = p
        .run(
            "rot1",
            command(&[
                "sh",
                "-c",
                "for i in $(seq 1 40); do echo line$i; sleep 0.05; done",
            ]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rotated = format!("{}.1", r.log_path);
    std::fs::rename(&r.log_path, &rotated).unwrap();
    p.manager.reopen_log("rot1").await.expect("reopen");
    p.wait_exit("rot1", Duration::from_secs(60)).await;
    let old = log_lines(&rotated);
    let new = log_lines(&r.log_path);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "both files get lines: {old:?} {new:?}"
    );
    let all: Vec<String> = old.into_iter().chain(new).collect();
    let want: Vec<String> = (1..=40).map(|i| format!("stdout F line{i}")).collect();
    assert_eq!(all, want);

    // 4. ExecSync in a running container, stats, and the stop timeout.
    p.run(
        "run1",
        command(&["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]),
    )
    .await;
    let cmd: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = runtime::exec_sync(p.agent.clone(), "run1", &cmd, Duration::from_secs(30))
        .await
        .expect("exec");
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let start = Instant::now();
    let sleep: Vec<String> = ["sleep", "100"].iter().map(|s| s.to_string()).collect();
    let err = runtime::exec_sync(p.agent.clone(), "run1", &sleep, Duration::from_secs(2)).await;
    assert!(
        matches!(err, Err(runtime::RuntimeError::Timeout { .. })),
        "{err:?}"
    );
    // The typed Timeout is the outcome. The bound only tells "cut at the timeout" from "ran
    // the command's 100 s", with room for a TCG guest on a loaded machine.
    assert!(start.elapsed() < Duration::from_secs(60));
    let mut agent = p.agent.clone();
    let s1 = agent
        .container_stats(pb::ContainerStatsRequest {
            container_id: "run1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s2 = agent
        .container_stats(pb::ContainerStatsRequest {
            container_id: "run1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rec = p.manager.get("run1").unwrap();
    let c = runtime::to_cri_stats(&rec, &s2, None);
    assert!(c.memory.unwrap().usage_bytes.unwrap().value > 0);
    assert!(
        s2.cpu_usage_usec > s1.cpu_usage_usec,
        "cpu moves: {} -> {}",
        s1.cpu_usage_usec,
        s2.cpu_usage_usec
    );
    // The container ignores SIGTERM: only the SIGKILL after the 3 s timeout ends it. What is
    // checked is the order (no kill before the timeout: a lower bound, which load cannot
    // trip) and the outcome (killed: 137). The outer timeout only keeps a stop that never
    // kills from hanging the test.
    let start = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(120),
        runtime::stop(p.agent.clone(), "run1", 15, Duration::from_secs(3)),
    )
    .await
    .expect("stop never killed the TERM-ignoring container")
    .expect("stop");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "killed before the timeout: {took:?}"
    );
    let done = p.wait_exit("run1", Duration::from_secs(60)).await;
    assert_eq!(done.exit_code, 137);
}
