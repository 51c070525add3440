//! Bad CRI input is refused up front (issue 15): each class of bad request gets
//! INVALID_ARGUMENT (or NOT_FOUND for an unknown id) with a message naming the field,
//! before hulld takes anything: no sandbox record or run dir, no netns, no VM, no
//! container dir in the pod's share. hulld runs with the real guest and CNI, so a valid
//! pod does boot a VM (the control case), and its log shows every VM it started.
//!
//! Run with `--nocapture` to see the table of classes, codes and VMs booted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sandbox_common;

use std::collections::HashMap;
use std::path::Path;

use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

fn pod() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "bad-input".into(),
            namespace: "hulltest".into(),
            uid: "uid-bad-input".into(),
            attempt: 0,
        }),
        hostname: "bad-input".into(),
        log_directory: "/tmp".into(),
        port_mappings: vec![cri::PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 0,
            host_ip: String::new(),
        }],
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources::default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type PodChange = fn(&mut cri::PodSandboxConfig);

fn dns(c: &mut cri::PodSandboxConfig) -> &mut cri::DnsConfig {
    c.dns_config.as_mut().unwrap()
}

fn res(c: &mut cri::PodSandboxConfig) -> &mut cri::LinuxContainerResources {
    c.linux.as_mut().unwrap().resources.as_mut().unwrap()
}

fn sysctl(c: &mut cri::PodSandboxConfig, k: &str) {
    c.linux.as_mut().unwrap().sysctls = HashMap::from([(k.to_owned(), "1".to_owned())]);
}

/// RunPodSandbox classes: (class, the field the message must name, the change).
fn pod_cases() -> Vec<(&'static str, &'static str, PodChange)> {
    vec![
        ("hostname not RFC 1123", "config.hostname", |c| {
            c.hostname = "bad_host!".into()
        }),
        ("hostname over 63 bytes", "config.hostname", |c| {
            c.hostname = "a".repeat(70)
        }),
        ("DNS server not an address", "servers[0]", |c| {
            dns(c).servers[0] = "dns.example".into()
        }),
        (
            "DNS server with a newline (resolv.conf injection)",
            "servers[0]",
            |c| dns(c).servers[0] = "10.0.0.1\nnameserver 6.6.6.6".into(),
        ),
        ("DNS search with a newline", "searches[0]", |c| {
            dns(c).searches[0] = "svc\nnameserver 6.6.6.6".into()
        }),
        ("DNS option empty", "options[0]", |c| {
            dns(c).options[0] = String::new()
        }),
        ("sysctl empty", "sysctls", |c| sysctl(c, "")),
        ("sysctl not namespaced", "sysctls", |c| {
            sysctl(c, "kernel.panic")
        }),
        ("sysctl unknown family", "sysctls", |c| {
            sysctl(c, "dev.foo.bar")
        }),
        ("sysctl /-form with ..", "sysctls", |c| {
            sysctl(c, "net/../../proc/sysrq-trigger")
        }),
        ("port mapping container_port 0", "container_port", |c| {
            c.port_mappings[0] = cri::PortMapping {
                protocol: 0,
                container_port: 0,
                host_port: 18081,
                host_ip: String::new(),
            }
        }),
        ("port mapping port out of range", "host_port", |c| {
            c.port_mappings[0].host_port = 70_000
        }),
        ("port mapping bad protocol", "protocol", |c| {
            c.port_mappings[0].protocol = 9
        }),
        ("NUL byte in pod name", "config.metadata.name", |c| {
            c.metadata.as_mut().unwrap().name = "web\0x".into()
        }),
        (
            "CNI_ARGS separator in pod name",
            "config.metadata.name",
            |c| c.metadata.as_mut().unwrap().name = "web;IP=10.88.0.1".into(),
        ),
        ("negative memory", "memory_limit_in_bytes", |c| {
            res(c).memory_limit_in_bytes = -1
        }),
        ("absurd memory (i64::MAX)", "memory_limit_in_bytes", |c| {
            res(c).memory_limit_in_bytes = i64::MAX
        }),
        ("negative CPU quota", "cpu_quota", |c| res(c).cpu_quota = -5),
        ("oom_score_adj out of range", "oom_score_adj", |c| {
            res(c).oom_score_adj = 5000
        }),
        ("relative log_directory", "config.log_directory", |c| {
            c.log_directory = "logs".into()
        }),
        ("annotations over 256 KiB", "config.annotations", |c| {
            c.annotations.insert("big".into(), "x".repeat(300 << 10));
        }),
    ]
}

type ContainerChange = fn(&mut cri::ContainerConfig);

fn container() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "registry.k8s.io/not-pulled:1".into(),
            ..Default::default()
        }),
        args: vec!["sleep".into(), "1".into()],
        log_path: "c/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources::default()),
            security_context: Some(cri::LinuxContainerSecurityContext::default()),
        }),
        ..Default::default()
    }
}

fn cres(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    c.linux.as_mut().unwrap().resources.as_mut().unwrap()
}

fn mount(c: &mut cri::ContainerConfig, container_path: &str, host_path: &str) {
    c.mounts.push(cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.into(),
        ..Default::default()
    });
}

fn container_cases() -> Vec<(&'static str, &'static str, ContainerChange)> {
    vec![
        ("absolute log_path", "config.log_path", |c| {
            c.log_path = "/tmp/x.log".into()
        }),
        ("log_path leaving log_directory", "config.log_path", |c| {
            c.log_path = "../../etc/cron.d/x".into()
        }),
        ("NUL byte in env", "config.envs[0].value", |c| {
            c.envs.push(cri::KeyValue {
                key: "A".into(),
                value: "x\0y".into(),
            })
        }),
        ("NUL byte in args", "config.args[1]", |c| {
            c.args[1] = "1\0".into()
        }),
        ("relative working_dir", "config.working_dir", |c| {
            c.working_dir = "srv".into()
        }),
        ("relative mount container_path", "container_path", |c| {
            mount(c, "data", "/tmp")
        }),
        ("mount host_path with ..", "host_path", |c| {
            mount(c, "/data", "/tmp/../etc")
        }),
        (
            "host device (none can reach a VM)",
            "config.devices[0]",
            |c| {
                c.devices.push(cri::Device {
                    container_path: "/dev/sda".into(),
                    host_path: "/dev/sda".into(),
                    permissions: "rwm".into(),
                })
            },
        ),
        ("cgroup file outside the cgroup", "unified", |c| {
            cres(c).unified = HashMap::from([("../cgroup.procs".into(), "1".into())])
        }),
        ("negative CPU shares", "cpu_shares", |c| {
            cres(c).cpu_shares = -2
        }),
        ("unknown capability", "add_capabilities", |c| {
            c.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .capabilities = Some(cri::Capability {
                add_capabilities: vec!["CAP_NOPE".into()],
                ..Default::default()
            })
        }),
    ]
}

/// How many VMs, pod networks and sandbox dirs hulld made so far, by its log and dirs.
fn taken(hulld: &common::Hulld) -> (usize, usize, usize) {
    let log = std::fs::read_to_string(hulld.log_path()).unwrap_or_default();
    let dirs = std::fs::read_dir(hulld.root().join("run/sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    (
        log.matches("VM started").count(),
        log.matches("pod network ready").count(),
        dirs,
    )
}

struct Row {
    call: &'static str,
    class: String,
    code: tonic::Code,
    vm: bool,
}

async fn expect_refused(
    rt: &mut RuntimeServiceClient<Channel>,
    hulld: &common::Hulld,
    req: cri::RunPodSandboxRequest,
    class: &str,
    field: &str,
) -> Row {
    let before = taken(hulld);
    let err = rt.run_pod_sandbox(req).await.expect_err(class);
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{class}: {err:?}");
    assert!(
        err.message().contains(field),
        "{class}: {:?}",
        err.message()
    );
    assert!(
        err.message().len() < 1024,
        "{class}: a {} byte message",
        err.message().len()
    );
    let after = taken(hulld);
    assert_eq!(
        before, after,
        "{class}: hulld took something (VMs, networks, dirs)"
    );
    Row {
        call: "RunPodSandbox",
        class: class.into(),
        code: err.code(),
        vm: after.0 > before.0,
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_take_nothing() {
    let env = PodEnv::new();
    let mut hulld = env.hulld(&env.conflist(&[]), &[]);
    hulld.start_logging();
    let mut rt = hulld.runtime().await;
    let mut rows = Vec::new();

    for (class, field, change) in pod_cases() {
        let mut config = pod();
        change(&mut config);
        let req = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        rows.push(expect_refused(&mut rt, &hulld, req, class, field).await);
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    assert_eq!(taken(&hulld), (0, 0, 0), "a bad pod booted a VM");

    // The second wall: a namespaced sysctl the guest kernel lacks. Only the guest knows
    // its sysctls, so this one boots a VM; the agent refuses it, hulld answers
    // INVALID_ARGUMENT and unwinds everything.
    let mut config = pod();
    sysctl(&mut config, "net.ipv4.no_such_knob");
    let before = taken(&hulld);
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("unknown sysctl");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no_such_knob"), "{err:?}");
    let after = taken(&hulld);
    assert_eq!(after.2, 0, "the run dir is unwound");
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
    rows.push(Row {
        call: "RunPodSandbox",
        class: "sysctl the guest kernel lacks (second wall: the agent)".into(),
        code: err.code(),
        vm: after.0 > before.0,
    });
    let vms_so_far = after.0;

    // The control: the same pod, valid, boots a VM; the containers' cases run in it.
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod()),
            runtime_handler: String::new(),
        })
        .await
        .expect("a valid pod runs")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(
        taken(&hulld).0,
        vms_so_far + 1,
        "the valid pod booted one VM"
    );
    let shared = hulld
        .root()
        .join("run/sandboxes")
        .join(&pod_id)
        .join("shared");
    let share_before = entries(&shared);

    for (class, field, change) in container_cases() {
        let mut config = container();
        change(&mut config);
        let before = taken(&hulld);
        let err = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod()),
            })
            .await
            .expect_err(class);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{class}: {err:?}");
        assert!(
            err.message().contains(field),
            "{class}: {:?}",
            err.message()
        );
        assert_eq!(
            entries(&shared),
            share_before,
            "{class}: something in the share"
        );
        assert_eq!(taken(&hulld), before, "{class}");
        rows.push(Row {
            call: "CreateContainer",
            class: class.into(),
            code: err.code(),
            vm: false,
        });
    }
    // The control: a valid container gets past validation (to the image lookup).
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container()),
            sandbox_config: Some(pod()),
        })
        .await
        .expect_err("image not pulled");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let listed = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.is_empty());

    // Other calls: an empty exec, bad resources, a 1 MiB id.
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: "x".into(),
            cmd: vec![],
            timeout: 1,
        })
        .await
        .expect_err("empty cmd");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    rows.push(Row {
        call: "ExecSync",
        class: "empty cmd".into(),
        code: err.code(),
        vm: false,
    });
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "x".into(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: -10,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("negative memory");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    rows.push(Row {
        call: "UpdateContainerResources",
        class: "negative memory".into(),
        code: err.code(),
        vm: false,
    });
    let huge = "a".repeat(1 << 20);
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: huge.clone(),
            verbose: false,
        })
        .await
        .expect_err("1 MiB id");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    rows.push(Row {
        call: "ContainerStatus",
        class: format!(
            "1 MiB container id (message: {} bytes)",
            err.message().len()
        ),
        code: err.code(),
        vm: false,
    });
    let err = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: huge,
        })
        .await
        .map(|_| ());
    if let Err(e) = &err {
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    }

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    let left = sandbox_common::sandbox_leftovers(&hulld.root().join("run"), &pod_id);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        taken(&hulld).0,
        vms_so_far + 1,
        "no VM but the valid pod's since"
    );

    eprintln!("\n| call | bad input | gRPC code | VM booted |\n|---|---|---|---|");
    for r in &rows {
        eprintln!(
            "| {} | {} | {:?} | {} |",
            r.call,
            r.class,
            r.code,
            if r.vm { "yes" } else { "no" }
        );
    }
}
