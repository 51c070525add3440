//! Host mode: hull-agent serving this API for one host-isolation pod (its containers run
//! on the node, not in a VM). hull-vm's host backend writes a [`HostModeConfig`] as JSON
//! into the pod's run dir and runs `hull-agent --host-mode <that file>` in the pod's
//! network namespace (or the node's); the agent pins the pod's IPC/UTS namespaces, becomes
//! the init of its PID namespace, and serves on [`HostModeConfig::socket`] with the same
//! `CONNECT <port>\n` / `OK <port>\n` handshake as a VM's hybrid vsock, so hulld reaches
//! both kinds of pod the same way. `hull-agent --host-cleanup <file>` removes what a host
//! agent that died left behind (cgroups, namespace pins).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The argument that starts hull-agent in host mode (followed by the config path).
pub const HOST_MODE_ARG: &str = "--host-mode";
/// The argument that runs the cleanup of a host pod (followed by the config path).
pub const HOST_CLEANUP_ARG: &str = "--host-cleanup";

/// How one host-mode agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostModeConfig {
    /// The pod sandbox id (names its cgroups, appears in logs).
    pub sandbox_id: String,
    /// The unix socket the agent serves on.
    pub socket: PathBuf,
    /// The agent's own files: helper configs, the cgroups of its containers.
    pub state_dir: PathBuf,
    /// Where the pod's own IPC and UTS namespaces are pinned (`ipc`, `uts`: nsfs bind
    /// mounts in the node's mount namespace).
    pub ns_dir: PathBuf,
    /// The pod runs in the node's network namespace (hostNetwork).
    pub node_network: bool,
    /// Share the node's PID namespace (hostPID); else the agent is PID 1 of a new one.
    pub node_pid: bool,
    /// Share the node's IPC namespace (hostIPC).
    pub node_ipc: bool,
    /// Share the node's UTS namespace (hostNetwork pods get the node's hostname).
    pub node_uts: bool,
    /// The cgroup the pod's containers go under, relative to each hierarchy's root
    /// (kubelet's `cgroup_parent` as a cgroupfs path); empty: `/hull/<sandbox_id>`.
    pub cgroup_parent: String,
}

/// The namespace a sysctl belongs to (kubelet's `NamespacedBy`): `"ipc"`, `"uts"`,
/// `"net"`, or `None` for a node-wide one. A host-isolation pod may set only those of the
/// namespaces it has of its own: anything else would change the node.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    const IPC: [&str; 8] = [
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some("uts")
    } else if key.starts_with("net.") {
        Some("net")
    } else {
        None
    }
}

/// Errors reading a host-mode config.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    #[error("Cannot read the host-mode config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The host-mode config {path} is invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("The host-mode config {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl HostModeConfig {
    /// Whether the pod may set sysctl `key`: it belongs to a namespace of the pod's own.
    pub fn owns_sysctl(&self, key: &str) -> bool {
        match sysctl_namespace(key) {
            Some("ipc") => !self.node_ipc,
            Some("uts") => !self.node_uts,
            Some("net") => !self.node_network,
            _ => false,
        }
    }

    /// The cgroup (relative to a hierarchy root) the pod's containers are created under.
    pub fn cgroup_parent(&self) -> String {
        if self.cgroup_parent.is_empty() {
            format!("/hull/{}", self.sandbox_id)
        } else {
            self.cgroup_parent.clone()
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, HostConfigError> {
        let text = std::fs::read(path).map_err(|source| HostConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self =
            serde_json::from_slice(&text).map_err(|source| HostConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        config.check().map_err(|why| HostConfigError::Invalid {
            path: path.to_owned(),
            why,
        })?;
        Ok(config)
    }

    /// Absolute paths, a plain id, and a cgroup parent that stays inside the hierarchy.
    pub fn check(&self) -> Result<(), String> {
        crate::validate::id("sandbox_id", &self.sandbox_id).map_err(|e| e.to_string())?;
        for (what, p) in [
            ("socket", &self.socket),
            ("state_dir", &self.state_dir),
            ("ns_dir", &self.ns_dir),
        ] {
            if !p.is_absolute() {
                return Err(format!("{what} {p:?} must be absolute"));
            }
        }
        let parent = &self.cgroup_parent;
        let ok = parent.is_empty()
            || (parent.starts_with('/')
                && parent.len() <= 512
                && parent
                    .split('/')
                    .all(|c| c != ".." && c != "." && !c.contains('\0')));
        if !ok {
            return Err(format!(
                "cgroup_parent {parent:?} must be an absolute cgroup path without '..'"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HostModeConfig {
        HostModeConfig {
            sandbox_id: "abc123".into(),
            socket: "/run/hull/sandboxes/abc123/agent.sock".into(),
            state_dir: "/run/hull/sandboxes/abc123/agent".into(),
            ns_dir: "/run/hull/sandboxes/abc123/ns".into(),
            node_network: false,
            node_pid: false,
            node_ipc: true,
            node_uts: false,
            cgroup_parent: String::new(),
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, serde_json::to_vec(&config()).expect("json")).expect("write");
        assert_eq!(HostModeConfig::load(&path).expect("load"), config());
        assert_eq!(config().cgroup_parent(), "/hull/abc123");
        for bad in ["kubepods", "/kubepods/../..", "/a/./b"] {
            let c = HostModeConfig {
                cgroup_parent: bad.into(),
                ..config()
            };
            assert!(c.check().is_err(), "{bad}");
        }
        let c = HostModeConfig {
            cgroup_parent: "/kubepods/burstable/pod-1".into(),
            ..config()
        };
        assert_eq!(c.cgroup_parent(), "/kubepods/burstable/pod-1");
        assert!(config().owns_sysctl("net.ipv4.ip_forward"));
        assert!(!config().owns_sysctl("kernel.shmmax"), "node IPC");
        assert!(config().owns_sysctl("kernel.hostname"));
        assert!(!config().owns_sysctl("vm.swappiness"), "node-wide");
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some("ipc"));
        let c = HostModeConfig {
            socket: "rel.sock".into(),
            ..config()
        };
        assert!(c.check().is_err());
        std::fs::write(&path, b"{\"sandbox_id\":1}").expect("write");
        assert!(matches!(
            HostModeConfig::load(&path),
            Err(HostConfigError::Parse { .. })
        ));
    }
}
