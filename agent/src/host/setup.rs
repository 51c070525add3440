//! SetupSandbox in host mode. A VM's guest is set up from scratch (clock, entropy, share,
//! network, /etc files); a host pod lives in the node's kernel and file system, so only what
//! is the pod's own applies: the hostname of its own UTS namespace and the sysctls of its
//! own namespaces. Its network is what CNI set up (or the node's); /etc/hosts, hostname and
//! resolv.conf reach its containers as hulld's files. Anything else in the request is
//! refused rather than applied to the node.

use hull_agent_api::host::HostModeConfig;
use hull_agent_api::v1::SetupSandboxRequest;
use hull_agent_api::validate::{self, ValidateError};

use crate::sandbox::SandboxError;

/// Validates the whole request for a host pod, then applies it.
pub fn setup_sandbox(
    req: &SetupSandboxRequest,
    config: &HostModeConfig,
) -> Result<(), SandboxError> {
    let refuse = |field: &'static str, reason: &'static str| {
        SandboxError::Validate(ValidateError::Invalid {
            field,
            value: String::new(),
            reason,
        })
    };
    if !req.interfaces.is_empty() || !req.routes.is_empty() {
        return Err(refuse(
            "interfaces/routes",
            "a host-isolation pod's network comes from CNI or the node",
        ));
    }
    let mut sysctls = Vec::new();
    for (key, value) in &req.sysctls {
        let path = validate::sysctl_key(key)?;
        if !config.owns_sysctl(key) {
            return Err(SandboxError::Validate(ValidateError::Invalid {
                field: "sysctls",
                value: key.clone(),
                reason: "not in a namespace of the pod's own: it would change the node",
            }));
        }
        sysctls.push((path, value.clone()));
    }
    if !req.hostname.is_empty() && !config.node_uts {
        validate::hostname(&req.hostname)?;
        nix::unistd::sethostname(&req.hostname).map_err(|e| SandboxError::Apply {
            step: "set hostname".into(),
            source: e.into(),
        })?;
    }
    for (path, value) in sysctls {
        std::fs::write(&path, value).map_err(|source| SandboxError::Apply {
            step: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_uts: bool) -> HostModeConfig {
        HostModeConfig {
            sandbox_id: "p".into(),
            socket: "/s".into(),
            state_dir: "/d".into(),
            ns_dir: "/n".into(),
            node_network: true,
            node_pid: true,
            node_ipc: true,
            node_uts,
            cgroup_parent: String::new(),
        }
    }

    #[test]
    fn refuses_what_would_change_the_node() {
        let net = SetupSandboxRequest {
            interfaces: vec![Default::default()],
            ..Default::default()
        };
        assert!(matches!(
            setup_sandbox(&net, &config(true)),
            Err(SandboxError::Validate(_))
        ));
        for key in ["net.ipv4.ip_forward", "kernel.shmmax", "vm.swappiness"] {
            let req = SetupSandboxRequest {
                sysctls: [(key.to_owned(), "1".to_owned())].into(),
                ..Default::default()
            };
            let err = setup_sandbox(&req, &config(true)).expect_err(key);
            assert!(err.to_string().contains("node"), "{key}: {err}");
        }
        // The node's UTS namespace: the hostname is not set (it is the node's).
        let named = SetupSandboxRequest {
            hostname: "not the node".into(),
            ..Default::default()
        };
        setup_sandbox(&named, &config(true)).expect("hostname skipped");
    }
}
