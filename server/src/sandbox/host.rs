//! What differs for a host-isolation pod in RunPodSandbox (the rest is the same recipe):
//! its "VM" is hull-agent in host mode ([`hull_vm::host`]), so its [`VmConfig`] carries a
//! [`HostPod`] (the node namespaces it shares, its cgroup parent) instead of a size; its
//! network is CNI without the VM's tap (or the node's, for hostNetwork: `cni.runtime_netns`
//! when set, which is the node's network as far as hulld is concerned, else hulld's own);
//! and its SetupSandbox carries only what a pod of the node may set (hostname, sysctls of
//! its own namespaces).

use std::path::PathBuf;

use hull_agent_api::v1 as pb;
use hull_cri_api::PodSandboxConfig;
use hull_vm::hypervisor::{HostPod, VmConfig};

use super::SandboxError;
use super::handlers::PodIsolation;
use crate::config::{CgroupDriver, Config};

/// The network namespace of the node as hulld sees it: `cni.runtime_netns`, else none
/// (hulld's own).
pub fn node_netns(config: &Config) -> Option<PathBuf> {
    config.cni.runtime_netns.clone()
}

/// kubelet's `cgroup_parent` as a cgroupfs path (relative to each hierarchy's root).
/// With the systemd driver kubelet sends a slice name, which expands like systemd's
/// (`kubepods-burstable-pod1.slice` → `/kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod1.slice`); hull creates the cgroups below it directly (no D-Bus).
pub fn cgroup_parent(driver: CgroupDriver, parent: &str) -> Result<String, SandboxError> {
    let bad =
        |why: &str| SandboxError::InvalidRequest(format!("linux.cgroup_parent {parent:?} {why}"));
    if parent.is_empty() {
        return Ok(String::new());
    }
    if parent.contains('\0') || parent.split('/').any(|c| c == ".." || c == ".") {
        return Err(bad("must not contain '.' or '..' components"));
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            if !parent.starts_with('/') {
                return Err(bad(
                    "must be an absolute cgroupfs path (cgroup_driver = \"cgroupfs\")",
                ));
            }
            Ok(parent.trim_end_matches('/').to_owned())
        }
        CgroupDriver::Systemd => {
            if parent.starts_with('/') {
                return Ok(parent.trim_end_matches('/').to_owned());
            }
            expand_slice(parent).ok_or_else(|| bad("is not a systemd slice name"))
        }
    }
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" {
        return Some(String::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// The host backend's config of pod `id`.
pub fn vm_config(
    config: &Config,
    id: &str,
    pod: &PodSandboxConfig,
    iso: &PodIsolation,
    run_dir: PathBuf,
    netns: Option<PathBuf>,
) -> Result<VmConfig, SandboxError> {
    let parent = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or_default();
    Ok(VmConfig {
        id: id.to_owned(),
        vcpus: 1,
        memory_mib: 64,
        kernel: PathBuf::new(),
        initramfs: PathBuf::new(),
        cmdline: String::new(),
        netns,
        net: None,
        shared_dir: Some(run_dir.join("shared")),
        run_dir,
        host: Some(HostPod {
            node_network: iso.node.network,
            node_pid: iso.node.pid,
            node_ipc: iso.node.ipc,
            // hostNetwork pods have the node's hostname, as with containerd.
            node_uts: iso.node.network,
            cgroup_parent: cgroup_parent(config.cgroup_driver, parent)?,
        }),
    })
}

/// A host pod's SetupSandbox: its hostname (in its own UTS namespace) and sysctls.
pub fn setup_request(
    id: &str,
    pod: &PodSandboxConfig,
    iso: &PodIsolation,
) -> pb::SetupSandboxRequest {
    let hostname = if iso.node.network {
        String::new()
    } else {
        crate::container::etc::hostname(pod)
    };
    pb::SetupSandboxRequest {
        sandbox_id: id.to_owned(),
        hostname,
        sysctls: pod
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_of_both_drivers() {
        let fs = |p| cgroup_parent(CgroupDriver::Cgroupfs, p);
        let sd = |p| cgroup_parent(CgroupDriver::Systemd, p);
        assert_eq!(fs("").expect("none"), "");
        assert_eq!(
            fs("/kubepods/burstable/pod1/").expect("path"),
            "/kubepods/burstable/pod1"
        );
        assert!(fs("kubepods").is_err());
        assert!(fs("/kubepods/../etc").is_err());
        assert_eq!(
            sd("kubepods-burstable-pod1.slice").expect("slice"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert_eq!(sd("-.slice").expect("root"), "");
        assert_eq!(
            sd("/kubepods.slice").expect("a path as is"),
            "/kubepods.slice"
        );
        assert!(sd("kubepods").is_err());
        assert!(sd("a--b.slice").is_err());
    }
}
