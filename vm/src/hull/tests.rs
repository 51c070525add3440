//! Unit tests of the hull backend's process handling, with a fake hull-vmm (a shell
//! script that binds nothing but creates the API socket path the backend waits for, and
//! exits 5 on SIGTERM like hull-vmm). The real hull-vmm runs under this backend in the
//! nested harness (vm/examples/nested_pod.rs, test/nested/run.sh).

use std::os::unix::fs::PermissionsExt;

use super::*;

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Behaves like hull-vmm as far as the backend can see: reads `--config FILE`, creates the
/// API socket named in it, runs until SIGTERM, then exits 5. The trap comes before the
/// socket: the backend may stop the VM as soon as the socket is there.
const FAKE_VMM: &str = r#"[ "$1" = --config ] || exit 1
trap 'exit 5' TERM
api=$(sed -n 's/.*"api_socket": "\(.*\)".*/\1/p' "$2")
touch "$api"
while :; do sleep 0.05; done"#;

struct Setup {
    dir: tempfile::TempDir,
    config: VmConfig,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    let initramfs = dir.path().join("initramfs.img");
    std::fs::write(&kernel, b"k").expect("kernel");
    std::fs::write(&initramfs, b"i").expect("initramfs");
    let config = VmConfig {
        id: "pod-1".into(),
        vcpus: 1,
        memory_mib: 128,
        kernel,
        initramfs,
        cmdline: String::new(),
        run_dir: dir.path().join("run"),
        netns: None,
        net: None,
        shared_dir: None,
        host: None,
    };
    Setup { dir, config }
}

/// The backend with templates off (the fake cannot snapshot); see `template_tests`.
fn hv(vmm: PathBuf) -> HullHypervisor {
    HullHypervisor::new(HullConfig {
        vmm,
        virtiofsd: "/nonexistent/virtiofsd".into(),
        jail: true,
    })
    .with_templates(false)
}

#[tokio::test]
async fn start_reattach_stop_and_cleanup() {
    let s = setup();
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_VMM);
    let hv = hv(vmm);
    let vm = hv.start(&s.config).await.expect("start");
    let files = RunFiles::new(&s.config.run_dir);
    assert!(vm.is_running());
    assert!(files.vmm_config.is_file() && files.vmm_pid.is_file());
    let written: hull_vmm_api::config::VmmConfig =
        serde_json::from_slice(&std::fs::read(&files.vmm_config).expect("read config"))
            .expect("parse config");
    assert_eq!(written.vsock.expect("vsock").uds_path, files.agent_socket);
    assert_eq!(vm.agent_socket(), files.agent_socket);

    // A restarted hulld finds the same process again.
    let again = hv.reattach(&s.config).await.expect("reattach");
    assert_eq!(again.pid(), vm.pid());
    assert!(again.is_running());

    let exit = again.stop(Duration::from_secs(5)).await.expect("stop");
    assert_eq!(exit, VmExit::Shutdown);
    assert!(!vm.is_running());
    assert!(files.transient().iter().all(|p| !p.exists()));
    // Idempotent, from either handle.
    assert_eq!(
        vm.stop(Duration::ZERO).await.expect("stop"),
        VmExit::Shutdown
    );
    assert!(hv.reattach(&s.config).await.is_err());
}

#[tokio::test]
async fn a_vmm_that_exits_at_once_fails_the_start_with_its_log() {
    let s = setup();
    let vmm = write_script(
        s.dir.path(),
        "hull-vmm",
        "echo 'hull-vmm: bad tap' >&2; exit 2",
    );
    let err = hv(vmm).start(&s.config).await.err().expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("exited with code 2") && msg.contains("bad tap"),
        "{msg}"
    );
    let files = RunFiles::new(&s.config.run_dir);
    assert!(files.transient().iter().all(|p| !p.exists()));
}

#[tokio::test]
async fn a_guest_that_stops_by_itself_reports_how() {
    let s = setup();
    let body = format!("{FAKE_VMM_PREFIX}\nsleep 0.2; exit 3");
    let vmm = write_script(s.dir.path(), "hull-vmm", &body);
    let vm = hv(vmm).start(&s.config).await.expect("start");
    let exit = vm.wait().await.expect("wait");
    assert_eq!(
        exit,
        VmExit::Failed {
            code: Some(3),
            signal: None
        }
    );
}

/// The part of [`FAKE_VMM`] that creates the API socket.
const FAKE_VMM_PREFIX: &str = r#"api=$(sed -n 's/.*"api_socket": "\(.*\)".*/\1/p' "$2")
touch "$api""#;

#[tokio::test]
async fn invalid_configs_are_refused_before_anything_starts() {
    let s = setup();
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_VMM);
    let hv = hv(vmm);
    let mut bad = s.config.clone();
    bad.id = "../x".into();
    assert!(matches!(
        hv.start(&bad).await.err(),
        Some(HypervisorError::InvalidConfig(_))
    ));
    let mut bad = s.config.clone();
    bad.vcpus = 0;
    let err = hv.start(&bad).await.err().expect("vcpus");
    assert!(err.to_string().contains("vcpus"), "{err}");
    let mut bad = s.config.clone();
    bad.shared_dir = Some(s.dir.path().to_owned());
    assert!(matches!(
        hv.start(&bad).await.err(),
        Some(HypervisorError::Missing { what, .. }) if what.starts_with("virtiofsd")
    ));
    let missing = HullHypervisor::new(HullConfig {
        vmm: s.dir.path().join("no-such-vmm"),
        virtiofsd: "/x".into(),
        jail: true,
    });
    assert!(missing.templates.is_some(), "templates are on by default");
    assert!(matches!(
        missing.start(&s.config).await.err(),
        Some(HypervisorError::Missing {
            what: "hull-vmm",
            ..
        })
    ));
    assert!(!s.config.run_dir.exists(), "nothing was created");
}

#[test]
fn exit_codes_map_to_vm_exits() {
    use std::os::unix::process::ExitStatusExt;
    let code = |c: i32| std::process::ExitStatus::from_raw(c << 8);
    assert_eq!(exit_of(code(0)), VmExit::Shutdown);
    assert_eq!(exit_of(code(5)), VmExit::Shutdown);
    assert_eq!(
        exit_of(code(3)),
        VmExit::Failed {
            code: Some(3),
            signal: None
        }
    );
    assert_eq!(
        exit_of(std::process::ExitStatus::from_raw(9)),
        VmExit::Failed {
            code: None,
            signal: Some(9)
        }
    );
}

mod template_tests;
