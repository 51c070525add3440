//! The hostile-guest lab of `hostile_share.rs`: the test images (built with umoci from
//! busybox-static, the attacker of `attacker.c` and a setuid program), one hulld in a
//! mount namespace of its own with one pod, the host dirs the attacks aim at, and the
//! checks that read hulld's mount table and files.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::sandbox_common::PodEnv;
use crate::{common, cri_common, registry};

pub const IMAGE: &str = "registry.k8s.io/hostile:latest";
pub const LINKS_IMAGE: &str = "registry.k8s.io/hostile-links:latest";
/// The pod's share as a privileged container reaches it: the share's root, opened by
/// FUSE file handle through the share-backed `/etc/hostname` (`attacker hold-share`, see
/// attacker.c) and held by a process of the pod, since `/proc/1/root` is `hull-pause`'s
/// empty root.
pub const SHARE: &str = "/hull-share";
/// How long the attacker plants symlinks, and the test races it.
pub const RACE: Duration = Duration::from_secs(30);

/// Builds `hostile` (busybox with hard-linked applets, the attacker, a setuid-root
/// program and a 0666 device node) and `hostile-links` (the same plus `/etc`, `/escape`
/// and `/up` symlinks pointing at `$HOST/...` outside the rootfs; the image carries its own
/// copies of those dirs, so the links work in the guest).
pub const BUILD_IMAGES: &str = r#"
set -euo pipefail
REG=$1 SRC=$2 HOST=$3
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
gcc -static -O2 -o "$W/attacker" "$SRC/server/tests/hostile/attacker.c"
gcc -static -Os -o "$W/suid" "$SRC/test/critest/src/nnp.c"
umoci init --layout "$W/oci"
# base ROOTFS ETC: busybox, the attacker, a setuid-root program, a 0666 device node,
# passwd and group in ETC
base() {
    local R=$1 E=$2
    mkdir -m 1777 "$R/tmp"
    mkdir -p "$R/bin" "$E" "$R/dev" "$R/proc" "$R/sys" "$R/mnt"
    cp /bin/busybox "$R/bin/busybox"
    for a in sh cat ls mkdir mount mv printf sleep echo mknod chmod cp ln rm touch stat wc grep; do
        ln "$R/bin/busybox" "$R/bin/$a"
    done
    printf 'root:x:0:0::/root:/bin/sh
' >"$E/passwd"
    printf 'root:x:0:
' >"$E/group"
    cp "$W/attacker" "$R/bin/attacker"
    install -m 4755 "$W/suid" "$R/bin/suid"
    mknod -m 666 "$R/dev/hostile-null" c 1 3
}
image() {
    local TAG=$1 NAME=$2
    umoci repack --image "$W/oci:$TAG" "$W/$TAG"
    umoci config --image "$W/oci:$TAG" --os linux --architecture amd64         --config.cmd /bin/sh --config.env PATH=/bin
    skopeo copy --quiet --dest-tls-verify=false "oci:$W/oci:$TAG" "docker://$REG/$NAME:latest"
}
umoci new --image "$W/oci:h"
umoci unpack --image "$W/oci:h" "$W/h"
base "$W/h/rootfs" "$W/h/rootfs/etc"
image h hostile
# hostile-links: /etc, /escape and /up point at $HOST/... outside the rootfs; the image
# carries its own $HOST/image and $HOST/image-etc, so the links work in the guest.
umoci new --image "$W/oci:l"
umoci unpack --image "$W/oci:l" "$W/l"
L=$W/l/rootfs
base "$L" "$L$HOST/image-etc"
mkdir -p "$L$HOST/image"
ln -s "$HOST/image-etc" "$L/etc"
ln -s "$HOST/image" "$L/escape"
ln -s "../../../../../../../../../../../../..$HOST/image" "$L/up"
image l hostile-links
"#;

pub fn push_images(registry: &str, host: &Path) {
    let out = Command::new("bash")
        .args(["-c", BUILD_IMAGES, "build", registry])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg(host)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "building the test images failed (needs umoci, skopeo, gcc, busybox-static):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One hulld in its own mount namespace with one pod, the test registry, and the host
/// dirs the attacks aim at (`host`: `etc/` with a hostname and resolv.conf, empty
/// `mounts/`, `rootfs/` and `image/`, `bind/` with a canary, `image-etc/passwd` with a
/// user only the host knows, `victim/` with a tmpfs mounted in hulld's namespace).
pub struct Lab {
    _env: PodEnv,
    _registry: registry::TestRegistry,
    pub hulld: common::Hulld,
    pub rt: RuntimeServiceClient<Channel>,
    host: tempfile::TempDir,
    _logs: tempfile::TempDir,
    pod_id: String,
    pod: cri::PodSandboxConfig,
    names: u32,
}

impl Lab {
    /// `before_start` runs on hulld's temp root before hulld starts.
    pub async fn new(name: &str, before_start: impl FnOnce(&Path)) -> Self {
        let env = PodEnv::new();
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path();
        for d in [
            "etc",
            "mounts",
            "rootfs",
            "image",
            "bind",
            "image-etc",
            "victim",
        ] {
            std::fs::create_dir(h.join(d)).unwrap();
        }
        std::fs::write(h.join("etc/hostname"), "original\n").unwrap();
        std::fs::write(h.join("etc/resolv.conf"), "original\n").unwrap();
        std::fs::write(h.join("bind/canary"), "host\n").unwrap();
        std::fs::write(
            h.join("image-etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nhostonly:x:4242:4242::/:/bin/sh\n",
        )
        .unwrap();
        let registry = registry::TestRegistry::start();
        push_images(&registry.host(), h);
        let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
        cri_common::mirror_registry_k8s_io(&hulld, &registry.host());
        before_start(hulld.root());
        hulld.start_in_own_mount_ns();
        let lab_victim = h.join("victim");
        let ok = nsenter(
            hulld.pid(),
            &["mount", "-t", "tmpfs", "-o", "size=1m", "hostile-victim"],
        )
        .arg(&lab_victim)
        .status()
        .unwrap();
        assert!(ok.success(), "mount the victim tmpfs in hulld's namespace");
        std::fs::write(
            proc_root(hulld.pid(), &lab_victim.join("canary")),
            "alive\n",
        )
        .unwrap();
        let mut images = hulld.images().await;
        cri_common::pull(&mut images, IMAGE).await;
        cri_common::pull(&mut images, LINKS_IMAGE).await;
        let mut rt = hulld.runtime().await;
        let logs = tempfile::tempdir().expect("tempdir");
        let pod = cri_common::pod_config(name, logs.path());
        let pod_id = cri_common::run_pod(&mut rt, &pod).await;
        Self {
            _env: env,
            _registry: registry,
            hulld,
            rt,
            host,
            _logs: logs,
            pod_id,
            pod,
            names: 0,
        }
    }

    pub fn host(&self) -> &Path {
        self.host.path()
    }

    pub fn config(&mut self, image: &str, args: &[&str]) -> cri::ContainerConfig {
        self.names += 1;
        let name = format!("c{}", self.names);
        cri_common::container(&name, image, args, &format!("{name}.log"))
    }

    pub async fn create(&mut self, config: cri::ContainerConfig) -> Result<String, tonic::Status> {
        let r = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(self.pod.clone()),
            })
            .await?;
        Ok(r.into_inner().container_id)
    }

    pub async fn remove(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(drop)
    }

    /// A privileged container running `script` (`$SHARE` is the share's root), once it
    /// reaches the share.
    pub async fn attacker(&mut self, script: &str) -> String {
        let escape = format!("attacker hold-share /etc/hostname {SHARE} && SHARE={SHARE}");
        let mut config = self.config(IMAGE, &["sh", "-c", &format!("{escape} && {script}")]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
        });
        let id = cri_common::create_start(&mut self.rt, &self.pod_id, &self.pod, config).await;
        // The container's command makes the link; the exec times out (60 s) if it never
        // does.
        let wait = format!("until ls {SHARE}/ >/dev/null 2>&1; do sleep 0.2; done; ls {SHARE}/");
        let (code, out) = self.exec(&id, &wait).await;
        assert!(
            code == 0 && out.contains(&id),
            "the privileged container cannot reach the share at {SHARE} ({code}): {out}"
        );
        id
    }

    /// ExecSync `sh -c script`: exit code and stdout+stderr.
    pub async fn exec(&mut self, id: &str, script: &str) -> (i32, String) {
        let out = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 60,
            })
            .await
            .expect("exec sync")
            .into_inner();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.exit_code, text)
    }

    /// StopPodSandbox then RemovePodSandbox; the first error.
    pub async fn remove_pod(&mut self) -> Result<(), tonic::Status> {
        let stop = self
            .rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: self.pod_id.clone(),
            })
            .await;
        let remove = self
            .rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: self.pod_id.clone(),
            })
            .await;
        stop?;
        remove.map(drop)
    }

    /// Mount points in hulld's namespace at or below `dir` (raw bytes: a guest can make
    /// them non-UTF-8).
    pub fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        mounts_of(self.hulld.pid())
            .into_iter()
            .filter(|(p, _, _)| p.starts_with(dir))
            .map(|(p, _, _)| p)
            .collect()
    }

    /// What the attacks changed on the host, if anything.
    pub fn damage(&self) -> Vec<String> {
        let h = self.host();
        let mut out = Vec::new();
        for f in ["etc/hostname", "etc/resolv.conf"] {
            let now = std::fs::read_to_string(h.join(f)).unwrap_or_default();
            if now != "original\n" {
                out.push(format!("host {f} overwritten: {now:?}"));
            }
        }
        for d in ["mounts", "rootfs", "image", "bind"] {
            for e in std::fs::read_dir(h.join(d)).unwrap().flatten() {
                if e.file_name() != "canary" {
                    out.push(format!("created on the host: {}", e.path().display()));
                }
            }
        }
        let victim = h.join("victim");
        for p in self.mounts_under(h) {
            if p != victim {
                out.push(format!("mounted on the host: {}", p.display()));
            }
        }
        if !self.mounts_under(h).contains(&victim) {
            out.push("the victim tmpfs was unmounted".into());
        }
        out
    }

    /// Removes the pod, then checks that nothing of it is mounted in hulld's namespace.
    pub async fn finish(mut self, checks: Checks) {
        let removed = self.remove_pod().await;
        let left = self.mounts_under(self.hulld.root());
        if let Err(panic) = checks {
            std::panic::resume_unwind(panic);
        }
        removed.expect("remove the pod");
        assert!(
            left.is_empty(),
            "mounts left after RemovePodSandbox: {left:?}"
        );
    }
}

/// `nsenter` into hulld's mount namespace, running `args`.
pub fn nsenter(pid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t")
        .arg(pid.to_string())
        .arg("-m")
        .arg("--")
        .args(args);
    cmd
}

/// `path` as process `pid` sees it (its mount namespace).
pub fn proc_root(pid: u32, path: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/{pid}/root"));
    p.push(path.strip_prefix("/").unwrap_or(path));
    p
}

/// (mount point, fs type, per-mount options) of every mount in `pid`'s namespace.
pub fn mounts_of(pid: u32) -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    info.split(|b| *b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let dash = fields.iter().position(|f| *f == b"-")?;
            let point = unescape(fields.get(4)?);
            let fstype = String::from_utf8_lossy(fields.get(dash + 1)?).into_owned();
            let opts = String::from_utf8_lossy(fields.get(5)?).into_owned();
            Some((
                PathBuf::from(std::ffi::OsStr::from_bytes(&point)),
                fstype,
                opts,
            ))
        })
        .collect()
}

pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|o| field[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(o) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

pub fn hostpath(host: &Path, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// Setuid/setgid files and device nodes below `dir` (walked without following symlinks),
/// as paths relative to `ns_root` (a process's `/proc/<pid>/root`).
pub fn special_files(dir: &Path, ns_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            let t = m.file_type();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_block_device()
                || t.is_char_device()
                || (t.is_file() && m.permissions().mode() & 0o6000 != 0)
            {
                let rel = e.path().strip_prefix(ns_root).unwrap().to_owned();
                out.push(Path::new("/").join(rel));
            }
        }
    }
    out
}

/// A panic of the checks, kept until the pod is torn down.
pub type Checks = Result<(), Box<dyn std::any::Any + Send>>;

/// Runs `checks`, catching a failed one's panic so that the test still tears the pod down.
pub async fn run_checks(checks: impl std::future::Future<Output = ()>) -> Checks {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(checks).catch_unwind().await
}
