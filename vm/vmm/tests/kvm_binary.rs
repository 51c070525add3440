//! The `hull-vmm` binary end to end on /dev/kvm, with a tiny PVH ELF "kernel" built here:
//! the full builder path (memfd RAM, irqchip, ELF loader, PVH start info, command line,
//! serial to a log file, i8042 reset) and the exit codes.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// 32-bit code, entered per PVH with %ebx = hvm_start_info:
///   mov 24(%ebx),%esi        # cmdline_paddr
///   mov $0x3f8,%dx
/// 1: lodsb; test %al,%al; jz 2f; out %al,%dx; jmp 1b
/// 2: mov $'\n',%al; out %al,%dx; mov $0xfe,%al; out %al,$0x64; hlt
const PRINT_CMDLINE_AND_RESET: &[u8] = &[
    0x8b, 0x73, 0x18, 0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xb0,
    0x0a, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

/// `int3` with an empty IDT: a triple fault.
const TRIPLE_FAULT: &[u8] = &[0xcc];

const LOAD_ADDR: u64 = 0x10_0000;

/// Kills the VMM if a test fails before waiting for it (a spinning guest never exits).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at 1 MiB and a PT_NOTE carrying the
/// Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18) pointing at it.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut elf = Vec::new();
    let (phoff, phnum, note_off, code_off) = (64u64, 2u16, 64 + 2 * 56u64, 0x1000u64);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&phoff.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, phnum, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |elf: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [off, addr, addr, size, size, 0x1000] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut elf, 1, code_off, LOAD_ADDR, code.len() as u64);
    phdr(&mut elf, 4, note_off, 0, 20);
    assert_eq!(elf.len() as u64, note_off);
    for v in [4u32, 4, 18] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(b"Xen\0");
    elf.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(code);
    elf
}

fn run_vmm(dir: &Path, code: &[u8], extra: &[&str]) -> (i32, String, String) {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (run as root on a host with KVM)"
    );
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(code)).unwrap();
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&console);
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--console-log")
        .arg(&console)
        .args(["--memory-mib", "64", "--id", "test-vm"])
        .args(extra)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), log, stderr)
}

#[test]
fn pvh_guest_prints_its_cmdline_and_resets_with_exit_code_0() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, stderr) = run_vmm(
        dir.path(),
        PRINT_CMDLINE_AND_RESET,
        &["--cmdline", "hull.test=42"],
    );
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        log.starts_with("console=ttyS0 reboot=k"),
        "console: {log:?}"
    );
    assert!(log.trim_end().ends_with("hull.test=42"), "console: {log:?}");
}

#[test]
fn triple_fault_exits_with_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_vmm(dir.path(), TRIPLE_FAULT, &[]);
    assert_eq!(code, 3, "stderr: {stderr}");
}

#[test]
fn two_vcpus_boot_the_same_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, stderr) = run_vmm(dir.path(), PRINT_CMDLINE_AND_RESET, &["--vcpus", "2"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(log.contains("panic=1"), "console: {log:?}");
}

#[test]
fn bad_config_exits_with_code_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Missing kernel"));
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0u8; 4096]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--kernel")
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 32-bit: `jmp .` — spins until stopped from outside.
const SPIN: &[u8] = &[0xeb, 0xfe];

#[test]
fn control_api_reports_and_shuts_down() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("spin.elf");
    std::fs::write(&kernel, pvh_elf(SPIN)).unwrap();
    let api = dir.path().join("api.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&api)
        .args(["--memory-mib", "32", "--id", "api-test"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let ask = |req: &str| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&api).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !api.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "API socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = ask("{\"op\":\"status\"}\n");
    assert!(status.contains("\"id\":\"api-test\""), "{status}");
    assert!(status.contains("\"state\":\"running\""), "{status}");
    let metrics = ask("{\"op\":\"metrics\"}\n");
    let m: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert!(m["vmm_rss_kb"].as_u64().unwrap() > 0, "{metrics}");
    assert!(m["rss_kb"].as_u64().unwrap() >= m["vmm_rss_kb"].as_u64().unwrap());
    assert_eq!(ask("{\"op\":\"shutdown\"}\n").trim(), r#"{"ok":true}"#);
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(5), "exit code for an API shutdown");
}

/// The virtio handshake payload of `kvm_virtio_mmio.rs` (same bytes): negotiates the device
/// at 0xc0000000, submits one RNG request, spins until it is used, then resets via i8042.
const VIRTIO_RNG_HANDSHAKE: &[u8] = &[
    0xbe, 0x00, 0x00, 0x00, 0xc0, 0x8b, 0x06, 0xe7, 0x80, 0x8b, 0x46, 0x04, 0xe7, 0x80, 0x8b, 0x46,
    0x08, 0xe7, 0x80, 0xc7, 0x46, 0x70, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x46, 0x70, 0x03, 0x00, 0x00,
    0x00, 0xc7, 0x46, 0x14, 0x01, 0x00, 0x00, 0x00, 0x8b, 0x46, 0x10, 0xe7, 0x80, 0xc7, 0x46, 0x24,
    0x01, 0x00, 0x00, 0x00, 0xc7, 0x46, 0x20, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x46, 0x70, 0x0b, 0x00,
    0x00, 0x00, 0x8b, 0x46, 0x70, 0xe7, 0x80, 0xc7, 0x46, 0x30, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x46,
    0x34, 0xe7, 0x80, 0xc7, 0x46, 0x38, 0x10, 0x00, 0x00, 0x00, 0xc7, 0x86, 0x80, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x20, 0x00, 0xc7, 0x86, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x86,
    0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x20, 0x00, 0xc7, 0x86, 0x94, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xc7, 0x86, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x20, 0x00, 0xc7, 0x86, 0xa4, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x46, 0x44, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x46, 0x70,
    0x0f, 0x00, 0x00, 0x00, 0x8b, 0x46, 0x70, 0xe7, 0x80, 0xc7, 0x05, 0x00, 0x00, 0x20, 0x00, 0x00,
    0x30, 0x20, 0x00, 0xc7, 0x05, 0x04, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x08,
    0x00, 0x20, 0x00, 0x20, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x05, 0x0c, 0x00, 0x20, 0x00, 0x02, 0x00,
    0x66, 0xc7, 0x05, 0x0e, 0x00, 0x20, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x05, 0x04, 0x10, 0x20, 0x00,
    0x00, 0x00, 0x66, 0xc7, 0x05, 0x02, 0x10, 0x20, 0x00, 0x01, 0x00, 0xc7, 0x46, 0x50, 0x00, 0x00,
    0x00, 0x00, 0xf3, 0x90, 0x66, 0x83, 0x3d, 0x02, 0x20, 0x20, 0x00, 0x01, 0x75, 0xf4, 0xa1, 0x08,
    0x20, 0x20, 0x00, 0xe7, 0x80, 0xa1, 0x00, 0x30, 0x20, 0x00, 0xe7, 0x80, 0x8b, 0x46, 0x60, 0xe7,
    0x80, 0xc7, 0x46, 0x64, 0x01, 0x00, 0x00, 0x00, 0x8b, 0x46, 0x60, 0xe7, 0x80, 0xb0, 0xfe, 0xe6,
    0x64, 0xf4,
];

#[test]
fn virtio_rng_activation_and_worker_run_under_seccomp() {
    // DRIVER_OK is written by the vCPU thread (under its filter), the request is served by
    // the device thread (under its filter): a syscall outside either list would kill the
    // process with SIGSYS instead of reaching the i8042 reset.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_vmm(dir.path(), VIRTIO_RNG_HANDSHAKE, &["--rng"]);
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn sigterm_stops_with_exit_code_5_even_with_device_threads() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("spin.elf");
    std::fs::write(&kernel, pvh_elf(SPIN)).unwrap();
    let uds = dir.path().join("v.sock");
    let mut child = spawn_with_devices(&kernel, &uds, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !uds.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "vsock socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(5), "{status:?}");
}

/// 32-bit PVH code for the snapshot test: prints `A`, stores `M` at 0x2000 and `R` in %bl,
/// spins until the byte at 0x3000 is not 0, then prints %bl, the byte at 0x2000 and a
/// newline, and resets. The test snapshots it while it spins and sets that byte in the
/// snapshot's memory file: a VM restored from it prints `RM` and no `A`, so registers, RAM
/// and the instruction pointer came back (and RAM came from the file).
const PRINT_SPIN_PRINT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov $0x3f8,%dx
    0xb0, 0x41, 0xee, // mov $'A',%al; out %al,%dx
    0xc6, 0x05, 0x00, 0x20, 0x00, 0x00, 0x4d, // movb $'M',0x2000
    0xb3, 0x52, // mov $'R',%bl
    0x80, 0x3d, 0x00, 0x30, 0x00, 0x00, 0x00, // 1: cmpb $0,0x3000
    0x74, 0xf7, // je 1b
    0x88, 0xd8, 0xee, // mov %bl,%al; out %al,%dx
    0xa0, 0x00, 0x20, 0x00, 0x00, 0xee, // mov 0x2000,%al; out %al,%dx
    0xb0, 0x0a, 0xee, // mov $'\n',%al; out %al,%dx
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, // i8042 reset; hlt
];

/// hull-vmm on `kernel` with 32 MiB, an rng and a vsock bridged to `uds`, plus `extra`.
fn spawn_with_devices(kernel: &Path, uds: &Path, extra: &[std::ffi::OsString]) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--kernel")
        .arg(kernel)
        .args([
            "--memory-mib",
            "32",
            "--rng",
            "--vsock-cid",
            "3",
            "--vsock-uds",
        ])
        .arg(uds)
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen in {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn api_request(api: &Path, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(api).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_snapshot_taken_mid_loop_resumes_in_a_new_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = d.join("spin.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_SPIN_PRINT)).unwrap();
    let vmm = |console: &str, api: &str, extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--console-log".into(),
            d.join(console).into(),
            "--api-socket".into(),
            d.join(api).into(),
        ];
        args.extend(extra.iter().map(Into::into));
        spawn_with_devices(&kernel, &d.join(format!("{api}.vsock")), &args)
    };
    let mut first = vmm("c1.log", "a1.sock", &[]);
    let console = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    wait_for("the guest's first line", 20, || {
        console("c1.log").contains('A')
    });
    let snap = d.join("snap");
    std::fs::create_dir(&snap).unwrap();
    let req = format!("{{\"op\":\"snapshot\",\"dir\":\"{}\"}}\n", snap.display());
    assert_eq!(
        api_request(&d.join("a1.sock"), &req).trim(),
        r#"{"ok":true}"#
    );
    let status = first.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(first.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(7), "snapshot exit code; stderr: {err}");
    assert_eq!(
        console("c1.log"),
        "A",
        "the first VM went on after the snapshot"
    );
    let mem = std::fs::metadata(snap.join("memory")).unwrap();
    assert_eq!(mem.len(), 32 << 20);
    // Let the restored guest out of its loop (the memory file is guest-physical below 3 GiB).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("memory"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[1], 0x3000).unwrap();

    let snap_arg = snap.to_str().unwrap();
    let mut second = vmm("c2.log", "a2.sock", &["--restore", snap_arg]);
    let status = second.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(second.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "restored VM; stderr: {err}");
    assert_eq!(console("c2.log"), "RM\n", "restored VM's console");

    // A config that does not match the snapshot is a config error (exit 1), said clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--memory-mib", "64", "--restore", snap_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("memory_mib"), "stderr: {err}");
}

/// Uid and gid the jailed test VMM drops to (in hull's jail range).
const JAIL_ID: u32 = 0x6800_0042;

/// The `Uid:`/`Gid:` lines of a process.
fn ids_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (line("Uid:"), line("Gid:"))
}

#[test]
fn a_jailed_vmm_runs_as_its_uid_sees_only_its_files_and_snapshots() {
    let run = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let (r, s) = (run.path(), snap.path());
    // What a jailed VMM must not reach: say, hulld's CRI socket.
    let cri = elsewhere.path().join("hull.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&cri).unwrap();
    std::os::unix::fs::chown(s, Some(JAIL_ID), Some(JAIL_ID)).unwrap();
    let kernel = r.join("spin.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_SPIN_PRINT)).unwrap();
    let api = r.join("vmm.sock");
    let id = JAIL_ID.to_string();
    let args: Vec<std::ffi::OsString> = vec![
        "--console-log".into(),
        r.join("console.log").into(),
        "--api-socket".into(),
        api.clone().into(),
        "--jail-root".into(),
        r.join("jail").into(),
        "--jail-uid".into(),
        id.clone().into(),
        "--jail-gid".into(),
        id.clone().into(),
        "--jail-path".into(),
        s.into(),
    ];
    let mut vmm = spawn_with_devices(&kernel, &r.join("vsock.sock"), &args);
    wait_for("the guest's first line", 20, || {
        std::fs::read_to_string(r.join("console.log"))
            .unwrap_or_default()
            .contains('A')
    });
    let pid = vmm.0.id();
    let want = format!("{id} {id} {id} {id}");
    assert_eq!(ids_of(pid), (want.clone(), want), "every id dropped");
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let seen = |p: &Path| root.join(p.strip_prefix("/").unwrap()).exists();
    assert!(
        seen(&kernel) && seen(&api) && seen(s),
        "its own files are there"
    );
    assert!(seen(Path::new("/dev/kvm")) && seen(Path::new("/dev/urandom")));
    assert!(!seen(&cri), "a path outside the jail is not");
    assert!(!seen(Path::new("/etc/passwd")) && !seen(Path::new("/usr/bin")));
    let metrics = api_request(&api, "{\"op\":\"metrics\"}\n");
    assert!(
        metrics.contains("\"vmm_rss_kb\""),
        "metrics in the jail: {metrics}"
    );
    let ask = format!("{{\"op\":\"snapshot\",\"dir\":\"{}\"}}\n", s.display());
    assert_eq!(api_request(&api, &ask).trim(), r#"{"ok":true}"#);
    let status = vmm.0.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = vmm.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(status.code(), Some(7), "snapshot written: {stderr}");
    let files = std::fs::read_dir(s).unwrap().count();
    assert!(files >= 2, "snapshot files in {}: {files}", s.display());
}
