//! A hostile guest against the host side of the pod's virtio-fs share (issue 19, items
//! 1-4 and 8): each attack runs inside a real pod VM (QEMU TCG here) from a privileged
//! container, which reaches the share's root as guest root can: by FUSE file handle
//! through a file the agent bound from the share (`attacker hold-share`, the "shocker"
//! route; `/proc/1/root` is `hull-pause`'s empty root since issue 19 item 9, and mounting
//! the `hullshare` tag again gives the newest virtio-fs superblock, a submount such as the
//! container's own rootfs). If that route closes, the tests say so instead of passing.
//! Each test asserts the host is untouched:
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
#[path = "hostile/lab.rs"]
mod lab;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_cri_api as cri;
use lab::{
    IMAGE, LINKS_IMAGE, Lab, RACE, SHARE, hostpath, mounts_of, nsenter, proc_root, run_checks,
    special_files,
};

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
        let (mut removals, mut refused) = (0, Vec::new());
        for round in 0..8 {
            if removals == 3 {
                break;
            }
            let mut config = lab.config(IMAGE, &["sleep", "1000"]);
            config.mounts = vec![hostpath(vol.path(), "/vol", false)];
            // The attacker looks up every container dir as soon as it appears: the guest
            // may then hold a stale virtio-fs entry for `<id>/rootfs` from before hulld's
            // overlay was on it, and the agent fails to set the container up (the guest
            // harming itself). hulld unwinds; the host must be untouched all the same.
            let id = match lab.create(config).await {
                Ok(id) => id,
                Err(e) => {
                    assert!(
                        e.code() == tonic::Code::Internal
                            && e.message().contains("Agent CreateContainer"),
                        "round {round}: {e:?}"
                    );
                    let damage = lab.damage();
                    assert!(damage.is_empty(), "round {round} (refused): {damage:?}");
                    refused.push(round);
                    continue;
                }
            };
            // Give the attacker time to plant `mounts/evil` in the new container's dir.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let removed = lab.remove(&id).await;
            let damage = lab.damage();
            assert!(damage.is_empty(), "round {round}: {damage:?}");
            removed.expect("remove");
            removals += 1;
        }
        assert_eq!(
            removals, 3,
            "containers removed under attack (the guest failed rounds {refused:?})"
        );
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
