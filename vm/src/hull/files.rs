//! What the hull backend writes for one VM: the files in its run dir and the hull-vmm
//! configuration built from a [`VmConfig`] (pure functions, unit-tested).

use std::path::{Path, PathBuf};

use crate::hypervisor::VmConfig;
use crate::qemu::argv::{self, SHARE_TAG};
use hull_vmm_api::config::{FsConfig, NetConfig, VmmConfig, VsockConfig};

/// The guest's vsock context id (one VM per hull-vmm, so always the first free one).
pub const GUEST_CID: u32 = 3;

/// Kernel arguments the backend adds before the caller's (hull-vmm puts its own base
/// arguments and the virtio-mmio devices first): one UART, and a quiet console, since
/// every console byte is a VM exit.
pub const BACKEND_CMDLINE: &str = "loglevel=4 8250.nr_uarts=1";

/// Files of one VM in its run dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// Hybrid-vsock socket for host clients.
    pub agent_socket: PathBuf,
    /// hull-vmm's control API.
    pub api_socket: PathBuf,
    /// vhost-user socket between hull-vmm and virtiofsd.
    pub fs_backend: PathBuf,
    /// The pid file virtiofsd itself writes next to its socket.
    pub fs_backend_pid: PathBuf,
    pub console_log: PathBuf,
    /// hull-vmm's JSON configuration.
    pub vmm_config: PathBuf,
    pub vmm_pid: PathBuf,
    pub vmm_log: PathBuf,
    pub virtiofsd_pid: PathBuf,
    pub virtiofsd_log: PathBuf,
    /// Present when the VM was restored from a template: the template's dir.
    pub restored_from: PathBuf,
}

impl RunFiles {
    /// The files of a VM in `run_dir`. Those both backends have (the agent socket, the
    /// console, virtiofsd's) are named once, by the qemu backend's [`argv::RunFiles`]:
    /// virtiofsd is started from those (`argv::virtiofsd`) and found again from these.
    pub fn new(run_dir: &Path) -> Self {
        let shared = argv::RunFiles::new(run_dir);
        let f = |name: &str| run_dir.join(name);
        Self {
            agent_socket: shared.agent_socket,
            api_socket: f("vmm.sock"),
            fs_backend: shared.fs_backend,
            fs_backend_pid: shared.fs_backend_pid,
            console_log: shared.console_log,
            vmm_config: f("hull-vmm.json"),
            vmm_pid: f("hull-vmm.pid"),
            vmm_log: f("hull-vmm.log"),
            virtiofsd_pid: shared.virtiofsd_pid,
            virtiofsd_log: shared.virtiofsd_log,
            restored_from: f("restored-from"),
        }
    }

    /// Sockets, pid files and the config (what `stop` removes; logs stay for debugging).
    pub fn transient(&self) -> [&Path; 8] {
        [
            &self.agent_socket,
            &self.api_socket,
            &self.fs_backend,
            &self.fs_backend_pid,
            &self.vmm_config,
            &self.vmm_pid,
            &self.virtiofsd_pid,
            &self.restored_from,
        ]
    }
}

/// The hull-vmm configuration for `config`: vsock on [`RunFiles::agent_socket`], virtio-fs
/// to virtiofsd when there is a shared dir, the NIC on the pod's tap, virtio-rng (so the
/// guest's crng is ready without waiting for jitter entropy), console to the log file.
pub fn vmm_config(config: &VmConfig, files: &RunFiles) -> VmmConfig {
    let mut cmdline = BACKEND_CMDLINE.to_owned();
    if !config.cmdline.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(config.cmdline.trim());
    }
    VmmConfig {
        id: config.id.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        kernel: config.kernel.clone(),
        initramfs: Some(config.initramfs.clone()),
        cmdline,
        console_log: Some(files.console_log.clone()),
        api_socket: Some(files.api_socket.clone()),
        rng: true,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: files.agent_socket.clone(),
        }),
        blk: None,
        net: config.net.as_ref().map(|n| NetConfig {
            tap: Some(n.tap.clone()),
            mac: Some(n.mac.clone()),
        }),
        fs: config.shared_dir.as_ref().map(|_| FsConfig {
            socket: files.fs_backend.clone(),
            tag: SHARE_TAG.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod config of the qemu backend's tests, with a cmdline to trim.
    fn config() -> VmConfig {
        VmConfig {
            cmdline: " RUST_LOG=debug ".into(),
            ..argv::test_config()
        }
    }

    #[test]
    fn every_device_is_configured() {
        let cfg = config();
        let files = RunFiles::new(&cfg.run_dir);
        let v = vmm_config(&cfg, &files);
        assert_eq!((v.id.as_str(), v.vcpus, v.memory_mib), ("pod1", 2, 512));
        assert_eq!(v.cmdline, "loglevel=4 8250.nr_uarts=1 RUST_LOG=debug");
        assert_eq!(v.initramfs.as_deref(), Some(Path::new("/i")));
        assert_eq!(
            v.console_log.as_deref(),
            Some(Path::new("/run/hull/sandboxes/pod1/console.log"))
        );
        let vsock = v.vsock.as_ref().expect("vsock");
        assert_eq!(vsock.guest_cid, 3);
        assert_eq!(
            vsock.uds_path,
            Path::new("/run/hull/sandboxes/pod1/agent.vsock")
        );
        let net = v.net.as_ref().expect("net");
        assert_eq!(
            (net.tap.as_deref(), net.mac.as_deref()),
            (Some("tap0"), Some("02:00:00:00:00:01"))
        );
        let fs = v.fs.as_ref().expect("fs");
        assert_eq!(
            fs.socket,
            Path::new("/run/hull/sandboxes/pod1/vhost-fs.sock")
        );
        assert_eq!(fs.tag, "hullshare");
        assert!(v.rng && v.blk.is_none());
        // What hull-vmm reads back is what we meant.
        let json = serde_json::to_string(&v).expect("json");
        let back: VmmConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, v);
    }

    #[test]
    fn optional_devices_are_left_out() {
        let mut cfg = config();
        cfg.net = None;
        cfg.shared_dir = None;
        cfg.cmdline.clear();
        let v = vmm_config(&cfg, &RunFiles::new(&cfg.run_dir));
        assert!(v.net.is_none() && v.fs.is_none());
        assert_eq!(v.cmdline, BACKEND_CMDLINE);
    }

    #[test]
    fn the_run_dir_holds_every_file() {
        let files = RunFiles::new(Path::new("/r"));
        assert!(files.transient().iter().all(|p| p.starts_with("/r")));
        assert!(!files.transient().contains(&files.console_log.as_path()));
        assert_eq!(files.agent_socket, Path::new("/r/agent.vsock"));
        assert_eq!(files.vmm_pid, Path::new("/r/hull-vmm.pid"));
    }
}
