//! The nested harness (test/nested/run.sh) as a cargo test. Debian's generic kernel boots
//! under QEMU TCG with `-cpu max` (emulated AMD SVM) as a throw-away test host; inside it, on
//! real nested KVM, the `hull` backend runs three pods with this build's hull-vmm and
//! virtiofsd, the first creating the VM template and all restored from it: for each the
//! agent answers over the hybrid vsock, a busybox container runs from the virtio-fs share,
//! the NIC passes a ping; then the same guest boots a few times under hull-vmm and QEMU
//! microvm (KVM), and one hull-vmm snapshot of it is restored a few times, for the
//! side-by-side boot time and memory numbers (vm/examples/nested_pod).
//!
//! Needs: the guest built (packaging/guest/build.sh, $HULL_GUEST_DIR or /var/lib/hull/guest),
//! the `nested_pod` example and the `hull-vmm` binary (crate `hull-vmm`, vm/vmm) built next
//! to this test from the current sources (`cargo test --workspace` builds both; alone:
//! `cargo build -p hull-vmm` and `cargo build -p hull-vm --example nested_pod`),
//! qemu-system-x86, busybox-static, iproute2, cpio, xz-utils, zstd, bc, virtiofsd, and a
//! reachable Debian mirror for `apt-get download linux-image-amd64` (cached in
//! /var/cache/hull-nested). A missing prerequisite fails the test with the harness's
//! message. Takes about 2-4 minutes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `program` of this build, `<target>/<profile>/<program>` (this test being
/// `<target>/<profile>/deps/kvm_nested-<hash>`). Neither program is this test's package's
/// binary (no `CARGO_BIN_EXE_*`) and `cargo test --test kvm_nested` builds neither, so the
/// test refuses one that is missing or older than a source file cargo built it from (the
/// `<program>.d` dep-info next to it) rather than test a stale build.
fn built(program: &str, build: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(program);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified());
    let at = mtime(&path).unwrap_or_else(|e| panic!("{} ({e}): `{build}`", path.display()));
    let dep_info = std::fs::read_to_string(path.with_extension("d")).unwrap_or_default();
    let sources = dep_info.split_once(": ").map_or("", |(_, deps)| deps);
    if let Some(newer) = sources
        .split_whitespace()
        .find(|src| mtime(Path::new(src)).is_ok_and(|m| m > at))
    {
        panic!("{} is older than {newer}: `{build}`", path.display());
    }
    path
}

#[test]
fn hull_backend_runs_a_pod_in_a_nested_test_host_and_benchmarks_against_qemu() {
    let vmm = built("hull-vmm", "cargo build -p hull-vmm");
    let client = built(
        "examples/nested_pod",
        "cargo build -p hull-vm --example nested_pod",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/nested/run.sh");
    let t0 = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg("--hull-vmm")
        .arg(&vmm)
        .arg("--pod-client")
        .arg(&client)
        .args(["--timeout", "240", "--runs", "3", "--compare-qemu"])
        // Wall-clock time (not --icount): under instruction counting a nested boot was seen
        // to stall now and then (QEMU's and hull-vmm's alike), and its timeouts are in
        // instruction time, many minutes of real time.
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}\nnested harness took {:?}", t0.elapsed());
    assert!(
        out.status.success(),
        "nested harness failed:\n{stdout}\n{stderr}"
    );
    let mut wanted: Vec<String> = Vec::new();
    for pod in [1, 2, 3] {
        for check in [
            "agent answered over vsock",
            "SetupSandbox configured eth0",
            "container ran from the virtio-fs share",
            "test host pinged the guest",
        ] {
            wanted.push(format!("NESTED-POD pod {pod}: {check}"));
        }
    }
    // The first pod made the VM template and started from it, the others were restored.
    wanted.push("NESTED-POD-PATH pod 1: template-created+restored".into());
    wanted.push("NESTED-POD-PATH pod 2: template-restored".into());
    wanted.push("NESTED-POD-PATH pod 3: template-restored".into());
    wanted.push("NESTED-POD PASS".into());
    for bench in [
        "NESTED-BENCH-SNAPSHOT",
        "NESTED-BENCH-P50 hull-vmm:",
        "NESTED-BENCH-P50 hull-vmm-restore:",
        "NESTED-BENCH-P50 hull-vmm-restore-after-busy:",
        "NESTED-BENCH-P50 qemu-microvm:",
        "NESTED-BENCH-RATIO hull-vmm-cold/qemu",
        "NESTED-BENCH-RATIO hull-vmm-restore/qemu",
        "NESTED-BENCH-RATIO hull-vmm-restore-after-busy/qemu",
    ] {
        wanted.push(bench.into());
    }
    for want in &wanted {
        assert!(
            stdout.contains(want.as_str()),
            "missing {want:?} in:\n{stdout}"
        );
    }
    assert!(stderr.contains("nested: PASS"), "{stderr}");
}
