//! The nested harness (test/nested/run.sh) as a cargo test. Debian's generic kernel boots
//! under QEMU TCG with `-cpu max` (emulated AMD SVM) as a throw-away test host; inside it, on
//! real nested KVM, the `hull` backend runs three pods with this build's hull-vmm and
//! virtiofsd, the first creating the VM template and all restored from it: for each the
//! agent answers over the hybrid vsock, a busybox container runs from the virtio-fs share,
//! the NIC passes a ping with the pod's own MAC, the guest clock is the host's, and no two
//! pods share a MAC, boot id or random numbers; then the same guest boots a few times under
//! hull-vmm and QEMU microvm (KVM), and one hull-vmm snapshot of it is restored a few times,
//! for the side-by-side boot time and memory numbers (vm/examples/nested_pod).
//!
//! Needs: the guest built (packaging/guest/build.sh, $HULL_GUEST_DIR or /var/lib/hull/guest),
//! qemu-system-x86, busybox-static, iproute2, cpio, xz-utils, zstd, bc, virtiofsd, and a
//! reachable Debian mirror for `apt-get download linux-image-amd64` (cached in
//! /var/cache/hull-nested). The test builds hull-vmm (crate `hull-vmm`, vm/vmm) and the `nested_pod` example itself
//! (cargo, same target dir and profile), so a stale binary from an earlier build is never
//! what runs. A missing prerequisite fails the test with the harness's message. Takes about
//! 2-4 minutes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds hull-vmm and the `nested_pod` example with this test's cargo, target dir and
/// profile, and returns both: `<target>/<profile>/hull-vmm` and
/// `<target>/<profile>/examples/nested_pod`, this test being
/// `<target>/<profile>/deps/kvm_nested-<hash>`. `cargo test` builds examples only for some
/// commands (`--workspace` does, `--test kvm_nested` does not), and a binary left from an
/// earlier build would test old code, so both are always (re)built here, by name in the
/// whole workspace (whichever crate holds them); cargo makes that a no-op when they are up
/// to date.
fn harness_binaries() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    // cargo's profile "dev" builds into debug/; every other profile into a dir of its name.
    let profile = if profile == "debug" { "dev" } else { profile };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--bin",
            "hull-vmm",
            "--example",
            "nested_pod",
        ])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(&workspace)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo build --bin hull-vmm --example nested_pod failed"
    );
    let vmm = profile_dir.join("hull-vmm");
    let client = profile_dir.join("examples/nested_pod");
    for f in [&vmm, &client] {
        assert!(f.is_file(), "{} is missing after the build", f.display());
    }
    (vmm, client)
}

#[test]
fn hull_backend_runs_a_pod_in_a_nested_test_host_and_benchmarks_against_qemu() {
    let (vmm, client) = harness_binaries();
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
            "guest clock is the host's",
            "eth0 has the pod's own MAC",
            "MAC on the wire is the pod's own",
        ] {
            wanted.push(format!("NESTED-POD pod {pod}: {check}"));
        }
    }
    // The first pod made the VM template and started from it, the others were restored.
    wanted.push("NESTED-POD-PATH pod 1: template-created+restored".into());
    wanted.push("NESTED-POD-PATH pod 2: template-restored".into());
    wanted.push("NESTED-POD-PATH pod 3: template-restored".into());
    // Restored from one template, yet distinct (vm/examples/nested_pod/identity.rs).
    for unique in ["mac", "boot_id", "random"] {
        wanted.push(format!("NESTED-POD-UNIQUE {unique}: 3 pods, all different"));
    }
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
