//! Runtime handlers (`[runtimes.<name>]`, containerd's `runtimes` table: one entry per
//! RuntimeClass handler) and the host-isolation policy (`[host_isolation]`).
//!
//! A handler's `isolation` is `vm` (the pod is a microVM; the handler may set the VMM and
//! the VM's default size) or `host` (the pod's containers run on the node, in namespaces
//! pinned for the pod, by hull-agent in host mode). kubelet sends the handler name of a
//! pod's RuntimeClass, or `""` without one, which means `default_runtime`.
//!
//! The built-in handlers `hull` (vm) and `host` (host) are always there; a
//! `[runtimes.hull]` or `[runtimes.host]` entry replaces them, others are added.
//!
//! Host isolation is allowed only to pods whose Kubernetes namespace is in
//! `host_isolation.allowed_namespaces` (default `["kube-system"]`): a namespace is the unit
//! Kubernetes grants rights by (RBAC, Pod Security admission), and `kube-system` is where
//! the node agents that need the node's namespaces live (kube-proxy, CNI agents, CSI node
//! plugins, node exporters). `"*"` allows every namespace (test clusters). A pod under a
//! VM handler that asks for the node's network, PID or IPC namespace runs with host
//! isolation when `host_isolation.node_namespaces = "host"` (the default) and its namespace
//! is allowed; `"refuse"` keeps a VM-only node (such pods get `InvalidArgument`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::VmmChoice;

/// The handler kubelet's `""` means unless `default_runtime` says otherwise.
pub const DEFAULT_RUNTIME: &str = "hull";
/// The built-in host-isolation handler.
pub const HOST_RUNTIME: &str = "host";

/// How a handler's pods are isolated from the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Each pod is a microVM (hull's default).
    #[default]
    Vm,
    /// The pod's containers run on the node (namespaces and cgroups of the host kernel).
    Host,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Host => "host",
        }
    }
}

/// One `[runtimes.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    pub isolation: Isolation,
    /// VM handlers: the VMM (default `vm.vmm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmChoice>,
    /// VM handlers: vCPUs of a pod without a CPU limit (default `vm.default_vcpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_vcpus: Option<u32>,
    /// VM handlers: memory of a pod without a memory limit (default `vm.default_memory_mib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_mib: Option<u64>,
}

impl RuntimeHandler {
    fn of(isolation: Isolation) -> Self {
        Self {
            isolation,
            vmm: None,
            default_vcpus: None,
            default_memory_mib: None,
        }
    }
}

/// What a pod under a VM handler that asks for a node namespace gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeNamespaces {
    /// It runs with host isolation (if its namespace is allowed).
    Host,
    /// It is refused with `InvalidArgument` (a VM cannot share the node's namespaces).
    Refuse,
}

/// `[host_isolation]`: who may run on the host, and with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostIsolationSection {
    pub node_namespaces: NodeNamespaces,
    /// Kubernetes namespaces whose pods may have host isolation; `"*"` is every one.
    pub allowed_namespaces: Vec<String>,
    /// The hull-agent binary run in host mode for each host-isolation pod.
    pub agent: PathBuf,
}

impl Default for HostIsolationSection {
    fn default() -> Self {
        Self {
            node_namespaces: NodeNamespaces::Host,
            allowed_namespaces: vec!["kube-system".into()],
            agent: PathBuf::from("/usr/local/bin/hull-agent"),
        }
    }
}

impl HostIsolationSection {
    /// Whether pods of Kubernetes namespace `ns` may run with host isolation.
    pub fn allows(&self, ns: &str) -> bool {
        self.allowed_namespaces.iter().any(|a| a == "*" || a == ns)
    }
}

/// The built-in handlers: `hull` (vm) and `host` (host).
pub fn default_runtimes() -> BTreeMap<String, RuntimeHandler> {
    BTreeMap::from([
        (
            DEFAULT_RUNTIME.to_owned(),
            RuntimeHandler::of(Isolation::Vm),
        ),
        (HOST_RUNTIME.to_owned(), RuntimeHandler::of(Isolation::Host)),
    ])
}

/// The configured handlers plus the built-ins they do not replace.
pub(super) fn with_builtins(
    configured: BTreeMap<String, RuntimeHandler>,
) -> BTreeMap<String, RuntimeHandler> {
    let mut all = default_runtimes();
    all.extend(configured);
    all
}

/// A RuntimeClass handler name is a DNS label (Kubernetes validates it as one).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks the handlers, the default and the policy; `(key, message)` on error.
pub(super) fn validate(
    default_runtime: &str,
    runtimes: &BTreeMap<String, RuntimeHandler>,
    policy: &HostIsolationSection,
) -> Result<(), (&'static str, String)> {
    for (name, h) in runtimes {
        if !dns_label(name) {
            return Err((
                "runtimes",
                format!("handler name {name:?} must be a DNS label (a-z, 0-9, '-', 1-63)"),
            ));
        }
        let vm_keys =
            h.vmm.is_some() || h.default_vcpus.is_some() || h.default_memory_mib.is_some();
        if h.isolation == Isolation::Host && vm_keys {
            return Err((
                "runtimes",
                format!(
                    "handler {name:?} has isolation = \"host\": vmm, default_vcpus and default_memory_mib are for VM handlers"
                ),
            ));
        }
        if h.default_vcpus.is_some_and(|v| !(1..=255).contains(&v)) {
            return Err((
                "runtimes",
                format!("handler {name:?}: default_vcpus must be between 1 and 255"),
            ));
        }
        if h.default_memory_mib
            .is_some_and(|m| !(64..=1 << 20).contains(&m))
        {
            return Err((
                "runtimes",
                format!("handler {name:?}: default_memory_mib must be between 64 and 1048576"),
            ));
        }
    }
    if !runtimes.contains_key(default_runtime) {
        return Err((
            "default_runtime",
            format!(
                "{default_runtime:?} is not a configured handler (have: {})",
                names(runtimes)
            ),
        ));
    }
    if let Some(bad) = policy
        .allowed_namespaces
        .iter()
        .find(|n| *n != "*" && !dns_label(n))
    {
        return Err((
            "host_isolation.allowed_namespaces",
            format!("{bad:?} is neither \"*\" nor a Kubernetes namespace name"),
        ));
    }
    if !policy.agent.is_absolute() {
        return Err((
            "host_isolation.agent",
            format!("must be an absolute path, got {:?}", policy.agent),
        ));
    }
    Ok(())
}

/// `"a", "b"` for messages.
pub fn names(runtimes: &BTreeMap<String, RuntimeHandler>) -> String {
    let quoted: Vec<String> = runtimes.keys().map(|k| format!("{k:?}")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_have_a_vm_and_a_host_handler_and_allow_kube_system() {
        let c = Config::default();
        assert_eq!(c.default_runtime, "hull");
        let (name, h) = c.runtime_handler("").expect("default handler");
        assert_eq!((name, h.isolation), ("hull", Isolation::Vm));
        assert_eq!(
            c.runtime_handler("host").map(|h| h.1.isolation),
            Some(Isolation::Host)
        );
        assert!(c.runtime_handler("runc").is_none());
        assert!(c.host_isolation.allows("kube-system"));
        assert!(!c.host_isolation.allows("default"));
        assert_eq!(c.host_isolation.node_namespaces, NodeNamespaces::Host);
    }

    #[test]
    fn configured_handlers_add_to_the_builtins_and_can_be_the_default() {
        let c = parse(
            "default_runtime = \"big\"\n[runtimes.big]\nisolation = \"vm\"\nvmm = \"qemu\"\n\
             default_vcpus = 2\ndefault_memory_mib = 1024\n[runtimes.node]\nisolation = \"host\"\n\
             [host_isolation]\nallowed_namespaces = [\"*\"]\nnode_namespaces = \"refuse\"\n",
        )
        .expect("valid");
        let (name, h) = c.runtime_handler("").expect("default");
        assert_eq!(name, "big");
        assert_eq!(h.vmm, Some(VmmChoice::Qemu));
        assert_eq!(
            (h.default_vcpus, h.default_memory_mib),
            (Some(2), Some(1024))
        );
        assert_eq!(c.runtimes.len(), 4, "hull, host, big, node");
        assert!(c.host_isolation.allows("anything"));
        // --print-config round-trips.
        assert_eq!(parse(&c.to_toml()).expect("printed config parses"), c);
    }

    #[test]
    fn bad_handlers_and_policies_name_the_key() {
        let cases = [
            ("default_runtime = \"nope\"\n", "`default_runtime`"),
            ("[runtimes.Bad_Name]\nisolation = \"vm\"\n", "`runtimes`"),
            (
                "[runtimes.x]\nisolation = \"host\"\ndefault_vcpus = 2\n",
                "`runtimes`",
            ),
            (
                "[runtimes.x]\nisolation = \"vm\"\ndefault_vcpus = 0\n",
                "`runtimes`",
            ),
            (
                "[runtimes.x]\nisolation = \"container\"\n",
                "`runtimes.x.isolation`",
            ),
            ("[runtimes.x]\nisolaton = \"vm\"\n", "isolaton"),
            (
                "[host_isolation]\nallowed_namespaces = [\"Kube System\"]\n",
                "`host_isolation.allowed_namespaces`",
            ),
            (
                "[host_isolation]\nagent = \"hull-agent\"\n",
                "`host_isolation.agent`",
            ),
            (
                "[host_isolation]\nnode_namespaces = \"maybe\"\n",
                "`host_isolation.node_namespaces`",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
