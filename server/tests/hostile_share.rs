//! A hostile guest against the host side of the pod's virtio-fs share (issue 19, items
//! 1-4 and 8): each attack runs inside a real pod VM (QEMU TCG here) from a privileged
//! container, which reaches the agent's mount of the share through `/proc/1/root` (issue
//! 19 item 9) and does what guest root can do there. (Mounting the `hullshare` tag again
//! does not give the share's root: the guest kernel hands back the newest virtio-fs
//! superblock, a submount such as the container's own rootfs.) If containers stop seeing
//! the agent's PID namespace, the tests say so instead of passing. Each test asserts the
//! host is untouched:
//!
//! - symlinks planted in every container dir of the share, ahead of hulld and in a race
//!   with it (a static C attacker, `hostile/attacker.c`, looping for a fixed time while the
//!   test creates and removes containers), never make hulld write, mount or create mount
//!   points outside the share, nor unmount a host mount (a tmpfs "victim");
//! - an image's own symlinks out of its rootfs (absolute and `..`) never make hulld create
//!   mount points on the host or read the host's `/etc/passwd`;
//! - directories renamed to non-UTF-8 names by the guest never keep a mount alive past
//!   RemovePodSandbox, nor make the removal fail;
//! - a read-only volume stays read-only for the guest;
//! - setuid files and device nodes, from images or written by the guest, are out of a
//!   non-root host user's reach.
//!
//! hulld runs in a mount namespace of its own (`Hulld::start_in_own_mount_ns`), so an
//! attack that works cannot touch the machine's mount table (other test runs read it);
//! the checks look at hulld's namespace through `/proc/<hulld>/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/hostile:latest";
const LINKS_IMAGE: &str = "registry.k8s.io/hostile-links:latest";
/// The pod's share as a privileged container reaches it: the agent's mount.
const SHARE: &str = "/proc/1/root/run/hull/shared";
/// How long the attacker plants symlinks, and the test races it.
const RACE: Duration = Duration::from_secs(30);

/// Builds `hostile` (busybox with hard-linked applets, the attacker, a setuid-root
/// program and a 0666 device node) and `hostile-links` (the same plus `/etc`, `/escape`
/// and `/up` symlinks pointing at `$HOST/...` outside the rootfs; the image carries its own
/// copies of those dirs, so the links work in the guest).
const BUILD_IMAGES: &str = r#"
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

fn push_images(registry: &str, host: &Path) {
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
struct Lab {
    _env: PodEnv,
    _registry: registry::TestRegistry,
    hulld: common::Hulld,
    rt: RuntimeServiceClient<Channel>,
    host: tempfile::TempDir,
    _logs: tempfile::TempDir,
    pod_id: String,
    pod: cri::PodSandboxConfig,
    names: u32,
}

impl Lab {
    /// `before_start` runs on hulld's temp root before hulld starts.
    async fn new(name: &str, before_start: impl FnOnce(&Path)) -> Self {
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

    fn host(&self) -> &Path {
        self.host.path()
    }

    fn config(&mut self, image: &str, args: &[&str]) -> cri::ContainerConfig {
        self.names += 1;
        let name = format!("c{}", self.names);
        cri_common::container(&name, image, args, &format!("{name}.log"))
    }

    async fn create(&mut self, config: cri::ContainerConfig) -> Result<String, tonic::Status> {
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

    async fn remove(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(drop)
    }

    /// A privileged container running `script` (`$SHARE` is the share's root), once it
    /// reaches the share.
    async fn attacker(&mut self, script: &str) -> String {
        let mut config = self.config(IMAGE, &["sh", "-c", &format!("SHARE={SHARE}; {script}")]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
        });
        let id = cri_common::create_start(&mut self.rt, &self.pod_id, &self.pod, config).await;
        let (code, out) = self.exec(&id, &format!("ls {SHARE}")).await;
        assert!(
            code == 0 && out.contains(&id),
            "the privileged container cannot reach the share at {SHARE} ({code}): {out}"
        );
        id
    }

    /// ExecSync `sh -c script`: exit code and stdout+stderr.
    async fn exec(&mut self, id: &str, script: &str) -> (i32, String) {
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
    async fn remove_pod(&mut self) -> Result<(), tonic::Status> {
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
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        mounts_of(self.hulld.pid())
            .into_iter()
            .filter(|(p, _, _)| p.starts_with(dir))
            .map(|(p, _, _)| p)
            .collect()
    }

    /// What the attacks changed on the host, if anything.
    fn damage(&self) -> Vec<String> {
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
    async fn finish(mut self, checks: Checks) {
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
fn nsenter(pid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t")
        .arg(pid.to_string())
        .arg("-m")
        .arg("--")
        .args(args);
    cmd
}

/// `path` as process `pid` sees it (its mount namespace).
fn proc_root(pid: u32, path: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/{pid}/root"));
    p.push(path.strip_prefix("/").unwrap_or(path));
    p
}

/// (mount point, fs type, per-mount options) of every mount in `pid`'s namespace.
fn mounts_of(pid: u32) -> Vec<(PathBuf, String, String)> {
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

fn unescape(field: &[u8]) -> Vec<u8> {
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

fn hostpath(host: &Path, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// Item 2: `<ctr>/mounts/evil -> <victim>` planted in the share made hulld unmount the
/// victim when it removed the container (no race needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_share_never_makes_hulld_unmount_a_host_mount() {
    let mut lab = Lab::new("hostile-release", |_| {}).await;
    let checks = async {
        let (host, victim) = (lab.host().to_owned(), lab.host().join("victim"));
        let script = format!(
            "exec attacker $SHARE 600 {} {}",
            host.display(),
            victim.display()
        );
        lab.attacker(&script).await;
        let vol = tempfile::tempdir().unwrap();
        for round in 0..3 {
            let mut config = lab.config(IMAGE, &["sleep", "1000"]);
            config.mounts = vec![hostpath(vol.path(), "/vol", false)];
            let id = lab.create(config).await.expect("create");
            // Give the attacker time to plant `mounts/evil` in the new container's dir.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let removed = lab.remove(&id).await;
            let damage = lab.damage();
            assert!(damage.is_empty(), "round {round}: {damage:?}");
            removed.expect("remove");
        }
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Item 1 (and item 3 raced by the guest): symlinks planted as fast as the guest can while
/// the test creates and removes containers with volumes for [`RACE`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_raced_into_the_share_never_redirect_hulld() {
    let mut lab = Lab::new("hostile-race", |_| {}).await;
    let checks = async {
        let host = lab.host().to_owned();
        let script = format!(
            "exec attacker $SHARE {} {} -",
            RACE.as_secs() + 30,
            host.display()
        );
        lab.attacker(&script).await;
        let (vol, vol2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let end = Instant::now() + RACE;
        let mut rounds = 0;
        while Instant::now() < end {
            rounds += 1;
            let mut config = lab.config(IMAGE, &["sleep", "1000"]);
            config.mounts = vec![
                hostpath(vol.path(), "/race/x", false),
                hostpath(vol2.path(), "/race/y/z", true),
            ];
            if let Ok(id) = lab.create(config).await {
                let _ = lab.remove(&id).await;
            }
            let damage = lab.damage();
            assert!(damage.is_empty(), "round {rounds}: {damage:?}");
        }
        eprintln!("{rounds} create/remove rounds raced the attacker");
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Item 3: an image whose symlinks point out of its rootfs (`/escape -> $HOST/image`,
/// `/up -> ../../..$HOST/image`, `/etc -> $HOST/image-etc`) gets its mount points and
/// its user inside the rootfs, never on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_symlinks_keep_mount_points_and_users_in_the_rootfs() {
    let mut lab = Lab::new("hostile-links", |_| {}).await;
    let checks = async {
        let vol = tempfile::tempdir().unwrap();
        let file = vol.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let mut config = lab.config(LINKS_IMAGE, &["sleep", "1000"]);
        config.mounts = vec![
            hostpath(vol.path(), "/escape/planted-dir/sub", false),
            hostpath(&file, "/escape/planted-file", false),
            hostpath(vol.path(), "/up/planted-up", false),
        ];
        // The guest may refuse the container (its agent cannot follow the links either):
        // what counts is what hulld did on the host before asking it.
        let created = lab.create(config).await;
        let damage = lab.damage();
        if let Ok(id) = &created {
            lab.remove(id).await.expect("remove");
        }
        assert!(damage.is_empty(), "{damage:?} (create: {created:?})");
        // `hostonly` is only in the host's $HOST/image-etc/passwd, not in the image's.
        let mut config = lab.config(LINKS_IMAGE, &["sleep", "1000"]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: "hostonly".into(),
                ..Default::default()
            }),
        });
        let created = lab.create(config).await;
        if let Ok(id) = &created {
            let _ = lab.remove(id).await;
        }
        let err = created.expect_err("a user only the host's passwd knows must be unknown");
        assert!(
            err.code() == tonic::Code::InvalidArgument
                && err
                    .message()
                    .contains("\"hostonly\" is not in the image's /etc/passwd"),
            "{err}"
        );
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Item 8: the guest renames dirs holding mounts to non-UTF-8 names (the container's dir
/// in the share, and a dir inside a hostPath volume holding a host tmpfs); removing the
/// container and the pod still succeeds and leaves no mount behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_renames_never_keep_mounts_alive() {
    let mut lab = Lab::new("hostile-rename", |_| {}).await;
    let checks = async {
        let attacker = lab.attacker("exec sleep 1000").await;
        let vol = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(vol.path().join("a/sub")).unwrap();
        let sub = vol.path().join("a/sub");
        let ok = nsenter(
            lab.hulld.pid(),
            &["mount", "-t", "tmpfs", "-o", "size=1m", "hostile-sub"],
        )
        .arg(&sub)
        .status()
        .unwrap();
        assert!(ok.success());
        let mut config = lab.config(IMAGE, &["sleep", "1000"]);
        config.mounts = vec![hostpath(vol.path(), "/vol", false)];
        let id = lab.create(config).await.expect("create");
        let bad = r"$(printf '\377\376')";
        let script = format!(
            "S={SHARE}; mv $S/{id}/mounts/0/a $S/{id}/mounts/0/{bad}; mv $S/{id} $S/{bad}; ls $S | wc -c"
        );
        let (_, out) = lab.exec(&attacker, &script).await;
        eprintln!("renames in the share: {out}");
        lab.remove(&id).await.expect("remove the container");
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Sibling of item 1: a read-only volume stays read-only for the guest (a bind made
/// read-only after it propagated to virtiofsd's namespace stayed writable there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_volume_stays_read_only_for_the_guest() {
    let mut lab = Lab::new("hostile-ro", |_| {}).await;
    let checks = async {
        let attacker = lab.attacker("exec sleep 1000").await;
        let vol = tempfile::tempdir().unwrap();
        std::fs::write(vol.path().join("keep"), "host\n").unwrap();
        let mut config = lab.config(IMAGE, &["sleep", "1000"]);
        config.mounts = vec![hostpath(vol.path(), "/ro", true)];
        let id = lab.create(config).await.expect("create");
        let script =
            format!("V={SHARE}/{id}/mounts/0; echo guest > $V/keep; touch $V/new; cat $V/keep");
        let (_, out) = lab.exec(&attacker, &script).await;
        let keep = std::fs::read_to_string(vol.path().join("keep")).unwrap();
        let created = vol.path().join("new").exists();
        lab.remove(&id).await.expect("remove");
        assert_eq!(keep, "host\n", "the guest wrote a read-only volume: {out}");
        assert!(
            !created,
            "the guest created a file in a read-only volume: {out}"
        );
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Item 4: setuid-root programs and device nodes, from the image's layers and written by
/// the guest into its rootfs, are out of reach of a non-root host user (with hulld's
/// root dir in a world-readable parent, as /var/lib and /run are), and the rootfs
/// overlays are mounted nosuid,nodev on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_files_and_device_nodes_are_out_of_host_users_reach() {
    let mut lab = Lab::new("hostile-suid", |root| {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
    .await;
    let checks = async {
        let attacker = lab.attacker("exec sleep 1000").await;
        let script = "cp /bin/suid /guest-suid && chmod 4755 /guest-suid && \
                      mknod -m 666 /guest-blk b 8 0 && mknod -m 666 /guest-chr c 1 1 && \
                      stat -c '%a %F' /guest-suid /guest-blk";
        let (code, out) = lab.exec(&attacker, script).await;
        eprintln!("guest wrote ({code}): {out}");
        let pid = lab.hulld.pid();
        let root = lab.hulld.root().to_owned();
        let found = special_files(&proc_root(pid, &root), &proc_root(pid, Path::new("/")));
        assert!(
            found.iter().any(|p| p.ends_with("bin/suid")),
            "the image's setuid program is not where the walk looked: {found:?}"
        );
        let mut reachable = Vec::new();
        for p in &found {
            let st = nsenter(
                pid,
                &[
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "stat",
                    "--",
                ],
            )
            .arg(p)
            .output()
            .unwrap();
            if st.status.success() {
                reachable.push(p.clone());
            }
        }
        let overlays: Vec<_> = mounts_of(pid)
            .into_iter()
            .filter(|(p, t, _)| t == "overlay" && p.starts_with(&root))
            .collect();
        assert!(
            !overlays.is_empty(),
            "no rootfs overlay under {}",
            root.display()
        );
        let mut problems: Vec<String> = reachable
            .iter()
            .map(|p| format!("uid 65534 reaches {}", p.display()))
            .collect();
        for (p, _, opts) in &overlays {
            let o: Vec<&str> = opts.split(',').collect();
            if !(o.contains(&"nosuid") && o.contains(&"nodev")) {
                problems.push(format!("overlay {} mounted {opts}", p.display()));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    };
    let checks = run_checks(checks).await;
    lab.finish(checks).await;
}

/// Setuid/setgid files and device nodes below `dir` (walked without following symlinks),
/// as paths relative to `ns_root` (a process's `/proc/<pid>/root`).
fn special_files(dir: &Path, ns_root: &Path) -> Vec<PathBuf> {
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
type Checks = Result<(), Box<dyn std::any::Any + Send>>;

/// Runs `checks`, catching a failed one's panic so that the test still tears the pod down.
async fn run_checks(checks: impl std::future::Future<Output = ()>) -> Checks {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(checks).catch_unwind().await
}
