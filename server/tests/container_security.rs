//! A container's security context, end to end through CRI in one real pod VM: dropped
//! capabilities (one, and ALL) as the process sees them in /proc/self/status, a read-only
//! rootfs, masked paths, the RuntimeDefault seccomp profile blocking a call an unconfined
//! container may make, run_as_username with the image's /etc/passwd and /etc/group, no_new_privs with a
//! set-user-ID program, and RunAsGroup without a user refused.

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::time::Duration;

use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/secctx:latest";

/// Builds `secctx:latest` (busybox with hard-linked applets, users root/app(1000),
/// group staff(50) listing app, a set-user-ID-root `nnp` printing its euid) with umoci
/// and pushes it with skopeo, like test/images/build.sh.
const BUILD_IMAGE: &str = r#"
set -euo pipefail
REG=$1 SRC=$2
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
umoci init --layout "$W/oci"
umoci new --image "$W/oci:s"
umoci unpack --image "$W/oci:s" "$W/b"
R=$W/b/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/usr/local/bin" "$R/home/app"
mkdir -m 1777 "$R/tmp"
cp /bin/busybox "$R/bin/busybox"
for a in sh cat touch id sleep unshare echo; do ln "$R/bin/busybox" "$R/bin/$a"; done
printf 'root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nstaff:x:50:app\n' >"$R/etc/group"
gcc -static -Os -o "$R/usr/local/bin/nnp" "$SRC/test/critest/src/nnp.c"
chmod 4755 "$R/usr/local/bin/nnp"
umoci repack --image "$W/oci:s" "$W/b"
umoci config --image "$W/oci:s" --os linux --architecture amd64 \
    --config.cmd /bin/sh --config.env PATH=/usr/local/bin:/bin
skopeo copy --quiet --dest-tls-verify=false "oci:$W/oci:s" "docker://$REG/secctx:latest"
"#;

fn push_image(host: &str) {
    let out = std::process::Command::new("bash")
        .args(["-c", BUILD_IMAGE, "build", host])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "building the test image failed (needs umoci, skopeo, gcc, busybox-static):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container(
    name: &str,
    args: &[&str],
    sc: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(sc),
        }),
        ..cri_common::container(name, IMAGE, args, &format!("{name}.log"))
    }
}

fn caps(add: &[&str], drop: &[&str]) -> Option<cri::Capability> {
    Some(cri::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        add_ambient_capabilities: Vec::new(),
    })
}

fn profile(kind: cri::security_profile::ProfileType) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: String::new(),
    })
}

struct Pod<'a> {
    rt: RuntimeServiceClient<Channel>,
    id: &'a str,
    config: &'a cri::PodSandboxConfig,
}

impl Pod<'_> {
    async fn create(&mut self, config: cri::ContainerConfig) -> Result<String, tonic::Status> {
        let r = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.id.into(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await?;
        Ok(r.into_inner().container_id)
    }

    /// Creates and starts a container.
    async fn run(&mut self, config: cri::ContainerConfig) -> String {
        let name = config.metadata.clone().unwrap_or_default().name;
        let id = self
            .create(config)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        id
    }

    /// ExecSync: (exit code, stdout, stderr).
    async fn exec(&mut self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let out = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .expect("exec sync")
            .into_inner();
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.exit_code, s(&out.stdout), s(&out.stderr))
    }

    async fn wait_exited(&mut self, id: &str) {
        cri_common::wait_exited(&mut self.rt, id, Duration::from_secs(60)).await;
    }
}

/// A `Cap*:` (or `Seccomp:`) field of /proc/self/status.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

fn cap_mask(status: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(status, field), 16).expect("hex caps")
}

const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_RAW: u64 = 1 << 13;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_in_the_guest() {
    let env = PodEnv::new();
    let reg = registry::TestRegistry::start();
    let h = reg.host();
    push_image(&h);
    let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    cri_common::mirror_registry_k8s_io(&hulld, &h);
    hulld.start();
    let mut images = hulld.images().await;
    let mut rt = hulld.runtime().await;
    cri_common::pull(&mut images, IMAGE).await;
    let logs = tempfile::tempdir().expect("tempdir");
    let pod_config = cri_common::pod_config("secctx", logs.path());
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;
    // The checks run in a task so that a failed one still tears the pod down.
    let checks = {
        let rt = rt.clone();
        let (pod_id, logs) = (pod_id.clone(), logs.path().to_owned());
        tokio::spawn(async move {
            let mut pod = Pod {
                rt,
                id: &pod_id,
                config: &pod_config,
            };
            checks(&mut pod, &logs).await
        })
    }
    .await;
    let stopped = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    let removed = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
    stopped.expect("stop pod");
    removed.expect("remove pod");
}

async fn checks(pod: &mut Pod<'_>, logs: &std::path::Path) {
    let sleep = ["sleep", "1000"];
    let default = cri::LinuxContainerSecurityContext::default;

    // Capabilities: one dropped, then ALL dropped; execs see what the container has.
    let one = pod
        .run(container(
            "drop-one",
            &sleep,
            cri::LinuxContainerSecurityContext {
                capabilities: caps(&[], &["NET_RAW"]),
                ..default()
            },
        ))
        .await;
    let (code, status, err) = pod.exec(&one, &["cat", "/proc/self/status"]).await;
    assert_eq!(code, 0, "{err}");
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        let mask = cap_mask(&status, field);
        assert_eq!(
            mask & (CAP_NET_RAW | CAP_CHOWN),
            CAP_CHOWN,
            "{field}: {mask:x}"
        );
    }
    assert_eq!(
        status_field(&status, "Seccomp"),
        "0",
        "no profile: unconfined"
    );
    let all = pod
        .run(container(
            "drop-all",
            &sleep,
            cri::LinuxContainerSecurityContext {
                capabilities: caps(&[], &["ALL"]),
                ..default()
            },
        ))
        .await;
    let (code, status, err) = pod.exec(&all, &["cat", "/proc/self/status"]).await;
    assert_eq!(code, 0, "{err}");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(cap_mask(&status, field), 0, "{field} with ALL dropped");
    }

    // RuntimeDefault seccomp: a new user namespace needs no capability, so only the
    // profile stops it; the unconfined container above may make one.
    let confined = pod
        .run(container(
            "seccomp-default",
            &sleep,
            cri::LinuxContainerSecurityContext {
                seccomp: profile(cri::security_profile::ProfileType::RuntimeDefault),
                ..default()
            },
        ))
        .await;
    let (_, status, _) = pod.exec(&confined, &["cat", "/proc/self/status"]).await;
    assert_eq!(status_field(&status, "Seccomp"), "2", "filter mode");
    let (code, out, err) = pod.exec(&one, &["unshare", "-U", "id", "-u"]).await;
    assert_eq!((code, out.trim()), (0, "65534"), "unconfined: {err}");
    let (code, _, err) = pod.exec(&confined, &["unshare", "-U", "id", "-u"]).await;
    assert_ne!(code, 0, "RuntimeDefault must block unshare");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, out, _) = pod.exec(&confined, &["sh", "-c", "echo ok"]).await;
    assert_eq!((code, out.as_str()), (0, "ok\n"), "the rest still works");

    // Read-only rootfs: writes fail, mounts (here /dev/shm) stay writable.
    let ro = pod
        .run(container(
            "readonly",
            &sleep,
            cri::LinuxContainerSecurityContext {
                readonly_rootfs: true,
                masked_paths: vec!["/etc/group".into(), "/home".into()],
                ..default()
            },
        ))
        .await;
    let (code, _, err) = pod.exec(&ro, &["touch", "/tmp/x"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, err) = pod.exec(&ro, &["touch", "/dev/shm/x"]).await;
    assert_eq!(code, 0, "{err}");
    // Masked paths: a file reads as /dev/null, a dir as an empty read-only tmpfs.
    let (code, out, err) = pod.exec(&ro, &["cat", "/etc/group", "/etc/passwd"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("root:x:0:0:"), "only passwd is left: {out}");
    let (_, out, _) = pod.exec(&ro, &["sh", "-c", "echo /home/*"]).await;
    assert_eq!(out, "/home/*\n", "/home (holding app/) is an empty tmpfs");

    // run_as_username from /etc/passwd, its groups from /etc/group, plus supplementals.
    // It also carries the hugepage limits kubelet sends for every size the node has: the
    // guest kernel has no hugetlb, so there is nothing to limit and the container runs.
    let mut by_name = container(
        "by-name",
        &sleep,
        cri::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            supplemental_groups: vec![1234],
            ..default()
        },
    );
    if let Some(linux) = by_name.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        });
    }
    let named = pod.run(by_name).await;
    let (_, out, err) = pod.exec(&named, &["id"]).await;
    assert!(
        out.starts_with("uid=1000(app) gid=1000(app)"),
        "{out} {err}"
    );
    assert!(out.contains("50(staff)") && out.contains("1234"), "{out}");

    // no_new_privs: the set-user-ID program gets euid 0 only without it.
    for (name, nnp, want) in [("nnp-off", false, 0), ("nnp-on", true, 1000)] {
        let id = pod
            .run(container(
                name,
                &["nnp"],
                cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    no_new_privs: nnp,
                    ..default()
                },
            ))
            .await;
        pod.wait_exited(&id).await;
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            log.contains(&format!("stdout F Effective uid: {want}")),
            "{name}: {log}"
        );
    }

    // RunAsGroup without a user is refused, as containerd does.
    let err = pod
        .create(container(
            "group-only",
            &sleep,
            cri::LinuxContainerSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 1002 }),
                ..default()
            },
        ))
        .await
        .expect_err("run_as_group alone");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}
