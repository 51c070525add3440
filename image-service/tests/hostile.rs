//! Hostile layers from a real registry are rejected and leave nothing behind.

mod support;

use hull_image::ImageError;
use support::images::{Comp, Entry, Image, layer, tar};
use support::{Env, Pusher, TestRegistry, config_for, init_tracing};

async fn pull_hostile(entries: &[Entry], outside: &std::path::Path) -> ImageError {
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = Image::new(
        vec![layer(&tar(entries), Comp::Gzip, false)],
        "",
        "amd64",
        false,
    );
    p.push("evil", "v1", &img).await;
    let env = Env::new(config_for(&reg));
    let err = match env.svc.pull(&format!("{}/evil:v1", reg.host()), None).await {
        Ok(rec) => panic!("hostile image pulled: {rec:?}"),
        Err(e) => e,
    };
    assert!(env.svc.list(None).expect("list").is_empty());
    assert_eq!(env.layer_dirs(), 0, "partial layer left");
    assert!(!outside.exists(), "wrote outside the layer: {outside:?}");
    err
}

fn assert_unsafe(err: &ImageError, what: &str) {
    assert!(
        matches!(err, ImageError::UnsafeEntry { .. }),
        "{what}: {err:?}"
    );
    assert_eq!(err.code(), hull_image::ErrorKind::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_rejected() {
    init_tracing();
    let outside = std::env::temp_dir().join(format!("hull-evil-{}", std::process::id()));
    let name: &'static str =
        Box::leak(format!("../../../../../../..{}", outside.display()).into_boxed_str());
    let err = pull_hostile(&[Entry::File(name, b"pwned".to_vec(), 0o644)], &outside).await;
    assert_unsafe(&err, "traversal");
    assert!(err.to_string().contains(".."), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_escape_rejected() {
    init_tracing();
    let outside_dir = tempfile::tempdir().unwrap();
    let target: &'static str = Box::leak(outside_dir.path().display().to_string().into_boxed_str());
    let err = pull_hostile(
        &[
            Entry::Symlink("escape", target),
            Entry::File("escape/pwned", b"pwned".to_vec(), 0o644),
        ],
        &outside_dir.path().join("pwned"),
    )
    .await;
    assert_unsafe(&err, "symlink escape");
    // A relative symlink climbing out, then used as a parent, too.
    let err = pull_hostile(
        &[
            Entry::Symlink("up", "../../../../../../.."),
            Entry::File("up/tmp/pwned2", b"x".to_vec(), 0o644),
        ],
        std::path::Path::new("/tmp/pwned2"),
    )
    .await;
    assert_unsafe(&err, "relative symlink escape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlink_out_rejected() {
    init_tracing();
    let nowhere = std::path::Path::new("/nonexistent-hull");
    let err = pull_hostile(
        &[Entry::Hardlink("passwd", "../../../../../../etc/passwd")],
        nowhere,
    )
    .await;
    assert_unsafe(&err, "hardlink with ..");
    // Absolute link names are archive-relative: /etc/passwd is not in this layer.
    let err = pull_hostile(&[Entry::Hardlink("passwd", "/etc/passwd")], nowhere).await;
    assert_unsafe(&err, "hardlink to a file not in the layer");
    // A hardlink through a symlink to outside.
    let err = pull_hostile(
        &[
            Entry::Symlink("etc", "/etc"),
            Entry::Hardlink("passwd", "etc/passwd"),
        ],
        nowhere,
    )
    .await;
    assert_unsafe(&err, "hardlink through symlink");
}
