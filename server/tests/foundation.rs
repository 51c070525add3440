//! The foundation: hulld serves Version, Status, RuntimeConfig on its socket, refuses what
//! is not built yet with UNIMPLEMENTED, rejects bad configs with exit code 2, and shuts
//! down cleanly on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Hulld;
use hull_cri_api as cri;
use nix::sys::signal::Signal;

fn condition<'a>(status: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    status
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

#[tokio::test]
async fn version_status_runtime_config_and_unimplemented() {
    let mut hulld = Hulld::configure("");
    hulld.write_cni_config();
    hulld.start();
    let mut rt = hulld.runtime().await;

    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_name, "hull");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");

    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    for kind in ["RuntimeReady", "NetworkReady"] {
        let c = condition(&s, kind);
        assert!(c.status, "{kind} should be true: {c:?}");
        assert_eq!(c.reason, "");
    }
    assert!(s.info.is_empty(), "info only when verbose");

    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["socket"], hulld.socket.display().to_string());
    assert_eq!(config["cgroup_driver"], "cgroupfs");

    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "abc".into(),
            location: "/tmp/x".into(),
            timeout: 1,
        })
        .await
        .unwrap_err();
    // CheckpointContainer checks its request first (server/src/cri/checkpoint.rs; the
    // refusals of a real pod's checkpoint are in tests/metrics.rs): an unknown container.
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    assert!(err.message().contains("abc"), "{}", err.message());
}

#[tokio::test]
async fn conditions_follow_real_checks() {
    let mut hulld = Hulld::configure("");
    hulld.start();
    let mut rt = hulld.runtime().await;

    // No CNI config yet.
    let s = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(net.message.contains("no network config found"), "{net:?}");
    assert!(condition(&s, "RuntimeReady").status);

    // A config appears: the next Status sees it.
    hulld.write_cni_config();
    let s = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&s, "NetworkReady").status);

    // The persistent state dir becomes unusable.
    let lib = hulld.root().join("lib");
    std::fs::rename(&lib, hulld.root().join("lib.moved")).unwrap();
    std::fs::write(&lib, b"not a dir").unwrap();
    let s = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let runtime = condition(&s, "RuntimeReady");
    assert!(!runtime.status);
    assert_eq!(runtime.reason, "StateDirNotWritable");
    assert!(runtime.message.contains("lib"), "{runtime:?}");
}

#[tokio::test]
async fn sigterm_shuts_down_and_removes_the_socket() {
    let mut hulld = Hulld::configure("");
    hulld.start();
    let parent = hulld.socket.parent().unwrap();
    let mode = std::fs::metadata(parent).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket dir must be private");
    // A second hulld on the same socket is refused, and leaves the first one serving.
    let out = Command::new(env!("CARGO_BIN_EXE_hulld"))
        .arg("--config")
        .arg(&hulld.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));
    let mut rt = hulld.runtime().await;
    rt.version(cri::VersionRequest::default()).await.unwrap();

    let status = hulld.stop_with(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(!hulld.socket.exists(), "socket left behind");
    // Restart on the same state: the store opens again.
    hulld.start();
    let status = hulld.stop_with(Signal::SIGINT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn malformed_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[vm]\ndefault_memory_mib = \"lots\"\n",
            "vm.default_memory_mib",
        ),
        ("[cni]\nbin_dir = [\"/x\"]\n", "bin_dir"),
        ("log_format = \"xml\"\n", "log_format"),
        ("socket = \"hull.sock\"\n", "socket"),
        ("[vm\n", "not valid TOML"),
    ];
    for (text, needle) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hulld"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hulld"))
        .args(["--config", "/nonexistent/hull.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn print_config_shows_effective_config() {
    let hulld = Hulld::configure("[vm]\ndefault_vcpus = 3\n");
    let out = Command::new(env!("CARGO_BIN_EXE_hulld"))
        .arg("--config")
        .arg(&hulld.config_path)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["vm"]["default_vcpus"].as_integer(), Some(3));
    assert_eq!(printed["vm"]["default_memory_mib"].as_integer(), Some(256));
    assert_eq!(
        printed["socket"].as_str(),
        Some(hulld.socket.to_str().unwrap())
    );
}
