#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use hull_cri_api as cri;

use super::*;

pub(super) fn pod() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: "2c1b6c3e-0000-4000-8000-000000000001".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: "/var/log/pods/default_web_2c1b".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![cri::PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        }],
        linux: Some(cri::LinuxPodSandboxConfig {
            sysctls: HashMap::from([
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("kernel.shm_rmid_forced".into(), "1".into()),
                ("net.ipv4.ip_local_port_range".into(), "1024\t65000".into()),
            ]),
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn run(config: cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }
}

pub(super) fn container() -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: "0123456789abcdef0123456789abcdef".into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "registry.k8s.io/pause:3.10".into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo hi\nthere".into()],
            working_dir: "/srv".into(),
            envs: vec![cri::KeyValue {
                key: "PATH".into(),
                value: "/bin:/usr/bin".into(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/var/lib/kubelet/pods/x/volumes/data".into(),
                ..Default::default()
            }],
            log_path: "app/0.log".into(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    oom_score_adj: -997,
                    cpuset_cpus: "0-1".into(),
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 0,
                    }],
                    unified: HashMap::from([("memory.high".into(), "max".into())]),
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    masked_paths: vec!["/proc/kcore".into()],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        sandbox_config: Some(pod()),
    }
}

/// The refused field of a pod config changed by `change`.
fn pod_field(change: impl FnOnce(&mut cri::PodSandboxConfig)) -> String {
    let mut c = pod();
    change(&mut c);
    run_pod_sandbox(&run(c)).expect_err("refused").field
}

fn container_field(change: impl FnOnce(&mut cri::ContainerConfig)) -> String {
    let mut r = container();
    change(r.config.as_mut().unwrap());
    create_container(&r).expect_err("refused").field
}

fn dns(c: &mut cri::PodSandboxConfig) -> &mut cri::DnsConfig {
    c.dns_config.as_mut().unwrap()
}

fn linux(c: &mut cri::PodSandboxConfig) -> &mut cri::LinuxPodSandboxConfig {
    c.linux.as_mut().unwrap()
}

fn res(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    c.linux.as_mut().unwrap().resources.as_mut().unwrap()
}

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

#[test]
fn good_requests_pass() {
    run_pod_sandbox(&run(pod())).unwrap();
    create_container(&container()).unwrap();
    // What crictl's samples and critest send: a bare pod.
    let bare = cri::PodSandboxConfig {
        metadata: pod().metadata,
        ..Default::default()
    };
    run_pod_sandbox(&run(bare)).unwrap();
    exec_cmd(&["ls".into(), "-l".into()]).unwrap();
}

#[test]
fn pod_identity_and_hostname() {
    fn meta(c: &mut cri::PodSandboxConfig) -> &mut cri::PodSandboxMetadata {
        c.metadata.as_mut().unwrap()
    }
    assert_eq!(pod_field(|c| c.metadata = None), "config.metadata");
    assert_eq!(pod_field(|c| meta(c).name.clear()), "config.metadata.name");
    assert_eq!(
        pod_field(|c| meta(c).name = "a;IP=10.88.0.1".into()),
        "config.metadata.name"
    );
    assert_eq!(
        pod_field(|c| meta(c).namespace = "ns\0x".into()),
        "config.metadata.namespace"
    );
    assert_eq!(
        pod_field(|c| meta(c).uid = "u".repeat(300)),
        "config.metadata.uid"
    );
    for bad in ["-web", "web_1", &"a".repeat(64), "a..b", "web\n", "wéb"] {
        assert_eq!(
            pod_field(|c| c.hostname = bad.into()),
            "config.hostname",
            "{bad:?}"
        );
    }
    // An FQDN (setHostnameAsFQDN) is a hostname.
    let mut c = pod();
    c.hostname = "web.sub.default.svc".into();
    run_pod_sandbox(&run(c)).unwrap();
    let e = run_pod_sandbox(&cri::RunPodSandboxRequest {
        config: None,
        runtime_handler: String::new(),
    });
    assert_eq!(e.unwrap_err().field, "config");
}

#[test]
fn dns_cannot_inject_resolv_conf_lines() {
    assert_eq!(
        pod_field(|c| dns(c).servers[0] = "10.0.0.1\nsearch evil".into()),
        "config.dns_config.servers[0]"
    );
    assert_eq!(
        pod_field(|c| dns(c).servers.push("not-an-ip".into())),
        "config.dns_config.servers[1]"
    );
    assert_eq!(
        pod_field(|c| dns(c).servers = vec!["1.1.1.1".into(); 4]),
        "config.dns_config.servers"
    );
    for bad in ["", "a b", "x\nnameserver 6.6.6.6", "a..b"] {
        assert_eq!(
            pod_field(|c| dns(c).searches[1] = bad.into()),
            "config.dns_config.searches[1]",
            "{bad:?}"
        );
    }
    assert_eq!(
        pod_field(|c| dns(c).searches = vec!["a".repeat(60); 33]),
        "config.dns_config.searches"
    );
    for bad in ["", "ndots:5\nnameserver 6.6.6.6", "a b", "x\0"] {
        assert_eq!(
            pod_field(|c| dns(c).options[0] = bad.into()),
            "config.dns_config.options[0]",
            "{bad:?}"
        );
    }
}

#[test]
fn sysctls_are_namespaced_and_well_formed() {
    let with = |k: &str, v: &str| {
        let (k, v) = (k.to_owned(), v.to_owned());
        pod_field(move |c| {
            linux(c).sysctls.insert(k, v);
        })
    };
    assert!(with("", "1").starts_with("config.linux.sysctls"));
    for bad in [
        "kernel.panic",
        "vm.max_map_count",
        "fs.file-max",
        "user.max_user_namespaces",
        "kernel.hostname",
        "dev.tty.ldisc_autoload",
        "net/../../proc/sysrq-trigger",
        "net/ipv4/../../vm/x",
        "net..ipv4",
        "net",
    ] {
        let f = with(bad, "1");
        assert!(f.starts_with("config.linux.sysctls["), "{bad}: {f}");
    }
    assert!(with("net.ipv4.ip_forward", "").contains("ip_forward"));
    assert!(with("net.ipv4.ip_forward", "1\n2").contains("ip_forward"));
    for good in [
        "net.ipv4.conf.all.forwarding",
        "net/ipv4/conf/eth0.100/forwarding",
        "kernel.msgmax",
        "kernel.sem",
        "fs.mqueue.msg_max",
    ] {
        let mut c = pod();
        linux(&mut c).sysctls.insert(good.into(), "1".into());
        run_pod_sandbox(&run(c)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    assert!(pod::is_namespaced("/proc/sys/kernel/shmmax"));
    assert!(!pod::is_namespaced("/proc/sys/kernel/shm/x"));
}

#[test]
fn port_mappings() {
    fn port(c: &mut cri::PodSandboxConfig) -> &mut cri::PortMapping {
        &mut c.port_mappings[0]
    }
    assert_eq!(
        pod_field(|c| port(c).container_port = 0),
        "config.port_mappings[0].container_port"
    );
    assert_eq!(
        pod_field(|c| port(c).container_port = 70_000),
        "config.port_mappings[0].container_port"
    );
    assert_eq!(
        pod_field(|c| port(c).host_port = -1),
        "config.port_mappings[0].host_port"
    );
    assert_eq!(
        pod_field(|c| port(c).protocol = 7),
        "config.port_mappings[0].protocol"
    );
    assert_eq!(
        pod_field(|c| port(c).host_ip = "0.0.0.0;rm".into()),
        "config.port_mappings[0].host_ip"
    );
}

#[test]
fn resources_in_range() {
    fn pod_res(c: &mut cri::PodSandboxConfig) -> &mut cri::LinuxContainerResources {
        linux(c).resources.as_mut().unwrap()
    }
    assert_eq!(
        pod_field(|c| pod_res(c).memory_limit_in_bytes = -5),
        "config.linux.resources.memory_limit_in_bytes"
    );
    assert_eq!(
        pod_field(|c| pod_res(c).memory_limit_in_bytes = i64::MAX),
        "config.linux.resources.memory_limit_in_bytes"
    );
    assert_eq!(
        pod_field(|c| pod_res(c).cpu_quota = -7),
        "config.linux.resources.cpu_quota"
    );
    assert_eq!(
        pod_field(|c| pod_res(c).cpu_period = 10),
        "config.linux.resources.cpu_period"
    );
    assert_eq!(
        pod_field(|c| pod_res(c).cpu_shares = 1),
        "config.linux.resources.cpu_shares"
    );
    assert_eq!(
        pod_field(|c| linux(c).overhead = Some(cri::LinuxContainerResources {
            oom_score_adj: 5000,
            ..Default::default()
        })),
        "config.linux.overhead.oom_score_adj"
    );
    assert_eq!(
        container_field(|c| res(c).oom_score_adj = -1001),
        "config.linux.resources.oom_score_adj"
    );
    assert_eq!(
        container_field(|c| res(c).cpuset_cpus = "3-1".into()),
        "config.linux.resources.cpuset_cpus"
    );
    assert_eq!(
        container_field(|c| res(c).hugepage_limits[0].page_size = "2MB/../x".into()),
        "config.linux.resources.hugepage_limits[0].page_size"
    );
    assert_eq!(
        container_field(|c| {
            res(c).unified.insert("../cgroup.procs".into(), "1".into());
        }),
        "config.linux.resources.unified[\"../cgroup.procs\"]"
    );
    assert_eq!(
        container_field(|c| {
            res(c).memory_limit_in_bytes = 100 << 20;
            res(c).memory_swap_limit_in_bytes = 50 << 20;
        }),
        "config.linux.resources.memory_swap_limit_in_bytes"
    );
    let update = cri::UpdateContainerResourcesRequest {
        container_id: "abc".into(),
        linux: Some(cri::LinuxContainerResources {
            cpu_shares: -3,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        update_resources(&update).unwrap_err().field,
        "linux.cpu_shares"
    );
}

#[test]
fn container_strings_and_security() {
    assert_eq!(container_field(|c| c.metadata = None), "config.metadata");
    assert_eq!(
        container_field(|c| c.metadata.as_mut().unwrap().name = "a/b".into()),
        "config.metadata.name"
    );
    assert_eq!(container_field(|c| c.image = None), "config.image.image");
    assert_eq!(
        container_field(|c| c.args[1] = "a\0b".into()),
        "config.args[1]"
    );
    assert_eq!(
        container_field(|c| c.command[0] = "x".repeat(200_000)),
        "config.command[0]"
    );
    assert_eq!(
        container_field(|c| c.envs[0].key = "A=B".into()),
        "config.envs[0].key"
    );
    assert_eq!(
        container_field(|c| c.envs[0].key.clear()),
        "config.envs[0].key"
    );
    assert_eq!(
        container_field(|c| c.envs[0].value = "\0".into()),
        "config.envs[0].value"
    );
    assert_eq!(
        container_field(|c| c.args = vec!["x".repeat(100_000); 30]),
        "config"
    );
    assert_eq!(
        container_field(
            |c| sc(c).capabilities.as_mut().unwrap().add_capabilities[0] = "CAP_NOPE".into()
        ),
        "config.linux.security_context.capabilities.add_capabilities[0]"
    );
    assert_eq!(
        container_field(|c| sc(c).run_as_user = Some(cri::Int64Value { value: -1 })),
        "config.linux.security_context.run_as_user"
    );
    assert_eq!(
        container_field(|c| sc(c).masked_paths.push("proc/x".into())),
        "config.linux.security_context.masked_paths[1]"
    );
    assert_eq!(
        container_field(|c| sc(c).run_as_username = "root:x".into()),
        "config.linux.security_context.run_as_username"
    );
    assert_eq!(exec_cmd(&[]).unwrap_err().field, "cmd");
    assert_eq!(exec_cmd(&["a\0".into()]).unwrap_err().field, "cmd[0]");
}

#[test]
fn client_paths() {
    for bad in ["", "data", "/a/../etc", "/x\0"] {
        assert_eq!(
            container_field(|c| c.mounts[0].container_path = bad.into()),
            "config.mounts[0].container_path",
            "{bad:?}"
        );
        assert_eq!(
            container_field(|c| c.mounts[0].host_path = bad.into()),
            "config.mounts[0].host_path",
            "{bad:?}"
        );
    }
    assert_eq!(
        container_field(|c| c.mounts[0].propagation = 9),
        "config.mounts[0].propagation"
    );
    assert_eq!(
        container_field(|c| c.working_dir = "srv".into()),
        "config.working_dir"
    );
    let device = |host: &str, perms: &str| cri::Device {
        container_path: "/dev/x".into(),
        host_path: host.into(),
        permissions: perms.into(),
    };
    assert_eq!(
        container_field(|c| c.devices.push(device("dev/sda", "rwm"))),
        "config.devices[0].host_path"
    );
    assert_eq!(
        container_field(|c| c.devices.push(device("/dev/sda", "rwx"))),
        "config.devices[0].permissions"
    );
    let mut r = container();
    r.config
        .as_mut()
        .unwrap()
        .devices
        .push(device("/dev/fuse", "rwm"));
    let e = create_container(&r).unwrap_err();
    assert!(e.reason.contains("cannot pass host devices"), "{e}");

    for bad in [
        "/tmp/x.log",
        "../../etc/cron.d/x",
        "a/../../x",
        ".",
        "a/..",
        "x/",
        "a\nb",
    ] {
        assert_eq!(
            container_field(|c| c.log_path = bad.into()),
            "config.log_path",
            "{bad:?}"
        );
    }
    assert_eq!(
        log_path("f", "a/./b/../c.log").unwrap(),
        std::path::PathBuf::from("a/c.log")
    );
    let mut r = container();
    r.sandbox_config.as_mut().unwrap().log_directory = "var/log/pods".into();
    assert_eq!(
        create_container(&r).unwrap_err().field,
        "sandbox_config.log_directory"
    );
    assert_eq!(
        pod_field(|c| c.log_directory = "relative/dir".into()),
        "config.log_directory"
    );
    assert_eq!(
        pod_field(|c| c.log_directory = "/var/log/pods/../../etc".into()),
        "config.log_directory"
    );
}

#[test]
fn labels_and_annotations_are_bounded() {
    assert_eq!(
        pod_field(|c| {
            c.labels.insert(String::new(), "v".into());
        }),
        "config.labels key"
    );
    assert_eq!(
        pod_field(|c| {
            c.annotations.insert("big".into(), "x".repeat(300 * 1024));
        }),
        "config.annotations"
    );
}

#[test]
fn messages_name_the_field_and_quote_little() {
    let e: CriError = pod_field_err(|c| dns(c).servers[0] = "x".repeat(1 << 20)).into();
    let msg = e.to_string();
    assert!(
        msg.starts_with("config.dns_config.servers[0]: \"xxx"),
        "{msg}"
    );
    assert!(msg.len() < 300, "{} bytes", msg.len());
    assert!(msg.contains("1048576 bytes"));
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

fn pod_field_err(change: impl FnOnce(&mut cri::PodSandboxConfig)) -> Invalid {
    let mut c = pod();
    change(&mut c);
    run_pod_sandbox(&run(c)).expect_err("refused")
}
