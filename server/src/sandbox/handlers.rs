//! Which isolation a RunPodSandbox gets, decided before anything is taken: the runtime
//! handler (`[runtimes.<name>]`, `""` = `default_runtime`), the node namespaces the pod
//! asks for, and the host-isolation policy (`[host_isolation]`, see `config::runtimes`).
//!
//! A VM cannot share the node's network, PID or IPC namespace, so a pod asking for one
//! under a VM handler runs with host isolation (`node_namespaces = "host"`, the default)
//! or is refused (`"refuse"`). A host-isolation pod whose Kubernetes namespace is not
//! allowed gets `PermissionDenied`; one with a sysctl of a namespace it shares with the
//! node (it would change the node) gets `InvalidArgument`.

use hull_cri_api::{NamespaceMode, PodSandboxConfig};

use super::SandboxError;
use crate::config::{Config, Isolation, NodeNamespaces, RuntimeHandler};

/// The node namespaces a pod asks for in `linux.security_context.namespace_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeNamespacesOf {
    pub network: bool,
    pub pid: bool,
    pub ipc: bool,
}

impl NodeNamespacesOf {
    pub fn of(config: &PodSandboxConfig) -> Self {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let node = |mode: Option<i32>| mode == Some(NamespaceMode::Node as i32);
        Self {
            network: node(ns.map(|n| n.network)),
            pid: node(ns.map(|n| n.pid)),
            ipc: node(ns.map(|n| n.ipc)),
        }
    }

    pub fn any(self) -> bool {
        self.network || self.pid || self.ipc
    }

    /// `hostNetwork, hostPID` for messages.
    fn names(self) -> String {
        let names: Vec<&str> = [
            (self.network, "hostNetwork"),
            (self.pid, "hostPID"),
            (self.ipc, "hostIPC"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        names.join(", ")
    }
}

/// What a pod runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct PodIsolation {
    /// The handler's name (`default_runtime` for `""`).
    pub handler: String,
    pub runtime: RuntimeHandler,
    pub isolation: Isolation,
    pub node: NodeNamespacesOf,
}

/// Resolves the handler and applies the policy.
pub fn resolve(
    config: &Config,
    handler: &str,
    pod: &PodSandboxConfig,
) -> Result<PodIsolation, SandboxError> {
    let (name, runtime) =
        config
            .runtime_handler(handler)
            .ok_or_else(|| SandboxError::UnknownHandler {
                name: handler.to_owned(),
                known: crate::config::runtimes_names(config),
            })?;
    let node = NodeNamespacesOf::of(pod);
    let isolation = match (runtime.isolation, node.any()) {
        (Isolation::Host, _) => Isolation::Host,
        (Isolation::Vm, false) => Isolation::Vm,
        (Isolation::Vm, true) => match config.host_isolation.node_namespaces {
            NodeNamespaces::Host => Isolation::Host,
            NodeNamespaces::Refuse => {
                return Err(SandboxError::NodeNamespacesRefused {
                    asked: node.names(),
                    handler: name.to_owned(),
                });
            }
        },
    };
    if isolation == Isolation::Host {
        let namespace = pod
            .metadata
            .as_ref()
            .map(|m| m.namespace.as_str())
            .unwrap_or_default();
        if !config.host_isolation.allows(namespace) {
            return Err(SandboxError::HostIsolationDenied {
                namespace: namespace.to_owned(),
                why: if node.any() {
                    format!("it asks for {}", node.names())
                } else {
                    format!("its runtime handler {name:?} has isolation = \"host\"")
                },
            });
        }
        check_sysctls(pod, node)?;
    }
    Ok(PodIsolation {
        handler: name.to_owned(),
        runtime: runtime.clone(),
        isolation,
        node,
    })
}

/// A host pod's sysctls must belong to namespaces of its own (kubelet's rule too).
fn check_sysctls(pod: &PodSandboxConfig, node: NodeNamespacesOf) -> Result<(), SandboxError> {
    let sysctls = pod.linux.as_ref().map(|l| &l.sysctls);
    for key in sysctls.into_iter().flat_map(|s| s.keys()) {
        let own = match hull_agent_api::host::sysctl_namespace(key) {
            Some("net") => !node.network,
            Some("ipc") => !node.ipc,
            // The UTS namespace is the node's exactly when the network is.
            Some("uts") => !node.network,
            _ => false,
        };
        if !own {
            return Err(SandboxError::InvalidRequest(format!(
                "sysctl {key:?} is not in a namespace of the pod's own; with host isolation it would change the node"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_cri_api::{
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxMetadata,
    };

    fn pod(namespace: &str, options: Option<NamespaceOption>) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "p".into(),
                namespace: namespace.into(),
                uid: "u".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: options,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn host_net() -> Option<NamespaceOption> {
        Some(NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        })
    }

    #[test]
    fn node_namespaces_get_host_isolation_where_allowed() {
        let config = Config::default();
        let r = resolve(&config, "", &pod("kube-system", host_net())).expect("allowed");
        assert_eq!((r.isolation, r.handler.as_str()), (Isolation::Host, "hull"));
        assert!(r.node.network && !r.node.pid);
        let r = resolve(&config, "", &pod("default", None)).expect("vm");
        assert_eq!(r.isolation, Isolation::Vm);
        let err = resolve(&config, "", &pod("default", host_net())).expect_err("denied");
        assert!(matches!(err, SandboxError::HostIsolationDenied { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("\"default\"")
                && msg.contains("hostNetwork")
                && msg.contains("host_isolation.allowed_namespaces"),
            "{msg}"
        );
    }

    #[test]
    fn a_host_handler_selects_host_isolation_and_is_policed_too() {
        let config = Config::default();
        let r = resolve(&config, "host", &pod("kube-system", None)).expect("allowed");
        assert_eq!(r.isolation, Isolation::Host);
        assert!(!r.node.any());
        let err = resolve(&config, "host", &pod("web", None)).expect_err("denied");
        assert!(err.to_string().contains("isolation = \"host\""), "{err}");
        let err = resolve(&config, "runc", &pod("web", None)).expect_err("unknown");
        assert!(matches!(err, SandboxError::UnknownHandler { .. }));
        assert!(err.to_string().contains("\"runc\"") && err.to_string().contains("\"hull\""));
    }

    #[test]
    fn refuse_keeps_a_vm_only_node() {
        let mut config = Config::default();
        config.host_isolation.node_namespaces = NodeNamespaces::Refuse;
        let err = resolve(&config, "", &pod("kube-system", host_net())).expect_err("refused");
        assert!(
            matches!(err, SandboxError::NodeNamespacesRefused { .. }),
            "{err}"
        );
        // An explicit host handler is still a host pod.
        let r = resolve(&config, "host", &pod("kube-system", None)).expect("host handler");
        assert_eq!(r.isolation, Isolation::Host);
    }

    #[test]
    fn host_pods_cannot_set_node_sysctls() {
        let config = Config::default();
        let mut p = pod("kube-system", host_net());
        if let Some(l) = p.linux.as_mut() {
            l.sysctls = [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into();
        }
        let err = resolve(&config, "", &p).expect_err("net sysctl with hostNetwork");
        assert!(matches!(err, SandboxError::InvalidRequest(_)), "{err}");
        let mut p = pod("kube-system", None);
        if let Some(l) = p.linux.as_mut() {
            l.sysctls = [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into();
        }
        resolve(&config, "host", &p).expect("its own netns");
        if let Some(l) = p.linux.as_mut() {
            l.sysctls = [("vm.swappiness".to_owned(), "1".to_owned())].into();
        }
        assert!(resolve(&config, "host", &p).is_err(), "node-wide");
        // A VM pod's sysctls stay in its guest.
        resolve(&config, "", &pod("default", None)).expect("vm");
    }
}
