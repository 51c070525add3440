//! Root tests of named network namespaces.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hull_network::netns::Netns;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (unshare, mount)"
    );
}

#[tokio::test]
async fn create_run_spawn_delete() {
    require_root();
    let name = format!("hulltest-ns-{}", std::process::id());
    let ns = Netns::create_named(&name).unwrap();
    assert!(matches!(
        Netns::create_named(&name),
        Err(hull_network::netns::NetnsError::Exists(_))
    ));
    let ino = std::fs::metadata(ns.path()).unwrap().ino();
    let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(ino, own);
    // A closure on a dedicated thread sees the namespace; this thread does not move.
    let inside = ns
        .run(|| {
            std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .ok()
        })
        .unwrap();
    assert_eq!(inside, Some(ino));
    let inside = ns
        .run_async(|| {
            std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .ok()
        })
        .await
        .unwrap();
    assert_eq!(inside, Some(ino));
    assert_eq!(
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
        own
    );
    // A child process starts inside it.
    let mut cmd = std::process::Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    ns.setns_on_exec(&mut cmd).unwrap();
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    assert_eq!(out.trim(), format!("net:[{ino}]"));
    // The namespace is pinned by the mount alone, and deletion is idempotent.
    assert!(Netns::open(ns.path()).is_ok());
    Netns::delete(ns.path()).unwrap();
    Netns::delete(ns.path()).unwrap();
    assert!(!ns.path().exists());
    assert!(Netns::open(Path::new("/proc/self/status")).is_err());
}
