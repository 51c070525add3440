//! The nested harness (test/nested/run.sh) as a cargo test: Debian's generic kernel boots
//! under QEMU TCG with `-cpu max` (emulated AMD SVM) as a throw-away test host, and inside it
//! this build's hull-vmm boots the hull guest (/var/lib/hull/guest) on real nested KVM until
//! the agent answers the hybrid-vsock handshake on port 1024; then QEMU microvm boots the same
//! guest there for a side-by-side time.
//!
//! Needs the guest built (packaging/guest), qemu-system-x86_64, busybox-static and network
//! access to Debian's apt mirror for `linux-image-amd64` (cached in /var/cache/hull-nested).
//! Takes 1-3 minutes: `cargo test -p hull-vm --test kvm_nested -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "boots a nested test host under QEMU TCG (minutes); needs the guest in /var/lib/hull/guest; run with --ignored"]
fn hull_vmm_boots_the_guest_to_agent_ready_in_a_nested_test_host() {
    let guest = Path::new("/var/lib/hull/guest");
    assert!(
        guest.join("vmlinux").is_file() && guest.join("initramfs.img").is_file(),
        "the hull guest is not built: run packaging/guest first (needs /var/lib/hull/guest/{{vmlinux,initramfs.img}})"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/nested/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([
            "--hull-vmm",
            env!("CARGO_BIN_EXE_hull-vmm"),
            "--timeout",
            "300",
            "--compare-qemu",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "nested harness failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("NESTED-READY agent answered 'OK "),
        "{stdout}"
    );
    assert!(stderr.contains("nested: PASS"), "{stderr}");
}
