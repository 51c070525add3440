//! Rootfs overlays, RemoveImage, ImageFsInfo and restart, against a real registry.
//! Needs root (overlay mounts, whiteout devices, trusted.* xattrs).

mod support;

use std::os::unix::fs::FileTypeExt as _;

use hull_image::ErrorKind;
use support::images::{self, Comp};
use support::{Env, Pusher, TestRegistry, config_for, init_tracing};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount overlays: run them as root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_applied_in_rootfs() {
    init_tracing();
    require_root();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    p.push("whiteout", "latest", &images::whiteout_image())
        .await;
    let env = Env::new(config_for(&reg));
    let rec = env
        .svc
        .pull(&format!("{}/whiteout", reg.host()), None)
        .await
        .unwrap();

    // In the upper layer's own dir the whiteouts are in overlay format.
    let top = env
        .root()
        .join("layers")
        .join(&rec.layers[1].diff_id[7..])
        .join("fs");
    let wh = std::fs::symlink_metadata(top.join("a/deleted.txt")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(
        xattr::get(top.join("opq"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    let target = env.dir.path().join("rootfs");
    env.svc
        .prepare_rootfs(&rec.id, "ctr-1", &target)
        .await
        .unwrap();
    let exists = |p: &str| std::fs::symlink_metadata(target.join(p)).is_ok();
    assert!(!exists("a/deleted.txt"), "whited-out file visible");
    assert_eq!(std::fs::read(target.join("a/kept.txt")).unwrap(), b"kept");
    assert!(
        !exists("opq/old.txt") && !exists("opq/sub"),
        "opaque dir shows lower entries"
    );
    assert_eq!(std::fs::read(target.join("opq/new.txt")).unwrap(), b"new");

    // Writes land in the container's own upper dir, not in the shared layers.
    std::fs::write(target.join("a/written.txt"), b"hello").unwrap();
    let upper = env.svc.container_dir("ctr-1").unwrap().join("upper");
    assert_eq!(
        std::fs::read(upper.join("a/written.txt")).unwrap(),
        b"hello"
    );
    assert!(!top.join("a/written.txt").exists());

    env.svc.remove_rootfs("ctr-1", &target).await.unwrap();
    assert!(!target.join("a").exists(), "still mounted");
    assert!(!env.svc.container_dir("ctr-1").unwrap().exists());
    env.svc.remove_rootfs("ctr-1", &target).await.unwrap(); // idempotent
    let bad = env
        .svc
        .prepare_rootfs(&rec.id, "../x", &target)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), ErrorKind::InvalidArgument);
    let unknown = env
        .svc
        .prepare_rootfs("nothere:1", "ctr-2", &target)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_image_semantics_and_fs_info() {
    init_tracing();
    require_root();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = images::busybox("");
    p.push("bb", "a", &img).await;
    p.push("bb", "b", &img).await;
    let other = images::single_file_image("data/o.txt", &vec![1u8; 200_000], Comp::Gzip);
    p.push("other", "v1", &other).await;
    let env = Env::new(config_for(&reg));
    let h = reg.host();
    let empty = env.svc.fs_info().await.unwrap();

    env.svc.pull(&format!("{h}/bb:a"), None).await.unwrap();
    let rec = env.svc.pull(&format!("{h}/bb:b"), None).await.unwrap();
    assert_eq!(rec.repo_tags.len(), 2);
    env.svc.pull(&format!("{h}/other:v1"), None).await.unwrap();
    let full = env.svc.fs_info().await.unwrap();
    assert!(
        full.images.used_bytes > empty.images.used_bytes + 1_000_000,
        "{full:?}"
    );
    assert!(full.images.inodes_used > empty.images.inodes_used + 10);
    assert_eq!(full.images.mountpoint, env.root());

    // A container's writes show up as container usage.
    let target = env.dir.path().join("rootfs");
    env.svc
        .prepare_rootfs(&format!("{h}/bb:a"), "c1", &target)
        .await
        .unwrap();
    std::fs::write(target.join("tmp/big"), vec![5u8; 300_000]).unwrap();
    let with_ctr = env.svc.fs_info().await.unwrap();
    assert!(
        with_ctr.containers.used_bytes >= full.containers.used_bytes + 300_000,
        "{with_ctr:?}"
    );
    assert!(with_ctr.containers.inodes_used > full.containers.inodes_used);

    let in_use = |id: &str| id == rec.id;
    // An image in use cannot go, by any of its tags or its id; it keeps both tags.
    for name in [format!("{h}/bb:b"), format!("{h}/bb:a"), rec.id.clone()] {
        let err = env.svc.remove(&name, &in_use).await.unwrap_err();
        assert_eq!(err.code(), ErrorKind::FailedPrecondition, "{name}: {err}");
    }
    assert_eq!(env.svc.get(&rec.id).unwrap().repo_tags.len(), 2);
    env.svc.remove_rootfs("c1", &target).await.unwrap();
    let no_ctr = env.svc.fs_info().await.unwrap();
    assert!(no_ctr.containers.used_bytes < with_ctr.containers.used_bytes);

    // Not in use: removing one tag removes the image with all its tags (as containerd
    // does), and its content.
    let none = |_: &str| false;
    env.svc.remove(&format!("{h}/bb:b"), &none).await.unwrap();
    assert!(
        env.svc.find(&format!("{h}/bb:a")).unwrap().is_none(),
        "other tag kept"
    );
    assert!(
        env.svc
            .find(&format!("{h}/bb@{}", img.digest()))
            .unwrap()
            .is_none(),
        "digest reference kept"
    );
    assert!(env.svc.find(&rec.id).unwrap().is_none());
    let after = env.svc.fs_info().await.unwrap();
    assert!(
        after.images.used_bytes + 1_000_000 < full.images.used_bytes,
        "{after:?} vs {full:?}"
    );
    assert!(
        !env.root().join("blobs/sha256").join(&rec.id[7..]).exists(),
        "config blob kept"
    );
    assert!(
        !env.root()
            .join("layers")
            .join(&rec.layers[0].diff_id[7..])
            .exists(),
        "layer kept"
    );
    // The other image is untouched, and removal is idempotent.
    assert_eq!(env.svc.list(None).unwrap().len(), 1);
    env.svc.remove(&rec.id, &none).await.unwrap();
    env.svc
        .remove(&format!("{h}/other:v1"), &none)
        .await
        .unwrap();
    let gone = env.svc.fs_info().await.unwrap();
    assert_eq!(
        gone.images.used_bytes, empty.images.used_bytes,
        "{gone:?} vs {empty:?}"
    );
    assert_eq!(env.svc.gc().await.unwrap(), hull_image::GcStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening_the_store() {
    init_tracing();
    require_root();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    p.push("whiteout", "latest", &images::whiteout_image())
        .await;
    let mut env = Env::new(config_for(&reg));
    let name = format!("{}/whiteout:latest", reg.host());
    let rec = env.svc.pull(&name, None).await.unwrap();
    env.svc.set_pinned(&name, true).unwrap();
    // Leftovers of an interrupted pull are cleaned on open.
    std::fs::write(env.root().join("tmp/partial"), b"x").unwrap();
    std::fs::create_dir_all(env.root().join("layers/tmp-abc-1-0/fs")).unwrap();
    drop(reg); // the registry is gone: nothing may be fetched again

    env.reopen();
    let again = env.svc.get(&name).unwrap();
    assert_eq!(again.id, rec.id);
    assert!(again.pinned);
    assert_eq!(env.svc.list(None).unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(env.root().join("tmp")).unwrap().count(),
        0
    );
    assert!(!env.root().join("layers/tmp-abc-1-0").exists());
    let target = env.dir.path().join("rootfs");
    env.svc
        .prepare_rootfs(&name, "after-restart", &target)
        .await
        .unwrap();
    assert_eq!(std::fs::read(target.join("opq/new.txt")).unwrap(), b"new");
    env.svc
        .remove_rootfs("after-restart", &target)
        .await
        .unwrap();
    // A pull of a present image needs no registry at all once resolved... but resolving
    // does: with the registry down it fails, and the stored image stays.
    assert!(env.svc.pull(&name, None).await.is_err());
    assert!(env.svc.find(&name).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_reboot_unsynced_layers_are_re_extracted_from_blobs() {
    init_tracing();
    require_root();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    p.push("whiteout", "latest", &images::whiteout_image())
        .await;
    let mut env = Env::new(config_for(&reg));
    let name = format!("{}/whiteout:latest", reg.host());
    let rec = env.svc.pull(&name, None).await.unwrap();
    let layer_dirs: Vec<_> = rec
        .layers
        .iter()
        .map(|l| env.root().join("layers").join(&l.diff_id[7..]))
        .collect();
    // The background sync marks the layers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !layer_dirs.iter().all(|d| d.join("synced").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "layers never marked synced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Pretend the top layer's sync never happened and the machine rebooted.
    std::fs::remove_file(layer_dirs[1].join("synced")).unwrap();
    std::fs::write(env.root().join("layers/.boot_id"), "another boot\n").unwrap();
    drop(reg);
    env.reopen();
    assert!(layer_dirs[0].join("fs").is_dir(), "synced layer kept");
    assert!(
        !layer_dirs[1].exists(),
        "unsynced layer kept across a reboot"
    );

    let target = env.dir.path().join("rootfs");
    env.svc.prepare_rootfs(&name, "c", &target).await.unwrap();
    assert_eq!(std::fs::read(target.join("opq/new.txt")).unwrap(), b"new");
    assert!(!target.join("a/deleted.txt").exists());
    env.svc.remove_rootfs("c", &target).await.unwrap();
}
