//! RunPodSandbox.

use std::net::IpAddr;

use hull_agent_api::validate as shared_checks;
use hull_cri_api as cri;

use super::resources::{linux_resources, pod_security};
use super::{Result, absolute_path, defs, invalid, quote, required, shared, string_map, text};

/// Everything RunPodSandbox takes from the client.
pub fn run_pod_sandbox(req: &cri::RunPodSandboxRequest) -> Result {
    text("runtime_handler", &req.runtime_handler, defs::MAX_NAME)?;
    let config = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("config", "is missing"))?;
    pod_config("config", config)
}

/// A pod's config, as RunPodSandbox and CreateContainer (its `sandbox_config`) carry it.
pub fn pod_config(at: &str, config: &cri::PodSandboxConfig) -> Result {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid(format!("{at}.metadata"), "is missing"))?;
    for (name, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        let field = format!("{at}.metadata.{name}");
        required(&field, value, defs::MAX_NAME)?;
        // They go into CNI_ARGS (`K8S_POD_NAME=..;..`): no separator may be injected.
        if value.contains([';', '=']) {
            return Err(invalid(
                field,
                format!("{} contains ';' or '=' (CNI_ARGS separators)", quote(value)),
            ));
        }
    }
    if !config.hostname.is_empty() {
        shared_checks::hostname(&config.hostname)
            .map_err(|e| shared(&format!("{at}.hostname"), e))?;
    }
    if !config.log_directory.is_empty() {
        absolute_path(&format!("{at}.log_directory"), &config.log_directory)?;
    }
    if let Some(dns) = &config.dns_config {
        dns_config(&format!("{at}.dns_config"), dns)?;
    }
    port_mappings(&format!("{at}.port_mappings"), &config.port_mappings)?;
    string_map(&format!("{at}.labels"), &config.labels)?;
    string_map(&format!("{at}.annotations"), &config.annotations)?;
    if let Some(linux) = &config.linux {
        let at = format!("{at}.linux");
        text(
            &format!("{at}.cgroup_parent"),
            &linux.cgroup_parent,
            defs::MAX_PATH,
        )?;
        sysctls(&format!("{at}.sysctls"), &linux.sysctls)?;
        if let Some(r) = &linux.resources {
            linux_resources(&format!("{at}.resources"), r)?;
        }
        if let Some(r) = &linux.overhead {
            linux_resources(&format!("{at}.overhead"), r)?;
        }
        if let Some(sc) = &linux.security_context {
            pod_security(&format!("{at}.security_context"), sc)?;
        }
    }
    Ok(())
}

fn dns_config(at: &str, dns: &cri::DnsConfig) -> Result {
    let count = |what: &str, n: usize, max: usize| {
        if n > max {
            Err(invalid(
                format!("{at}.{what}"),
                format!("has {n} entries, more than {max}"),
            ))
        } else {
            Ok(())
        }
    };
    count("servers", dns.servers.len(), defs::MAX_DNS_SERVERS)?;
    count("searches", dns.searches.len(), defs::MAX_DNS_SEARCHES)?;
    count("options", dns.options.len(), defs::MAX_DNS_OPTIONS)?;
    for (i, s) in dns.servers.iter().enumerate() {
        if s.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("{at}.servers[{i}]"),
                format!("{} is not an IP address", quote(s)),
            ));
        }
    }
    for (i, s) in dns.searches.iter().enumerate() {
        shared_checks::dns_search(s).map_err(|e| shared(&format!("{at}.searches[{i}]"), e))?;
    }
    let chars: usize = dns.searches.iter().map(|s| s.len() + 1).sum();
    if chars > defs::MAX_DNS_SEARCH_CHARS {
        return Err(invalid(
            format!("{at}.searches"),
            format!(
                "make a search line of {chars} bytes, more than {}",
                defs::MAX_DNS_SEARCH_CHARS
            ),
        ));
    }
    for (i, o) in dns.options.iter().enumerate() {
        shared_checks::dns_option(o).map_err(|e| shared(&format!("{at}.options[{i}]"), e))?;
    }
    Ok(())
}

fn port_mappings(at: &str, ports: &[cri::PortMapping]) -> Result {
    if ports.len() > defs::MAX_PORT_MAPPINGS {
        return Err(invalid(
            at,
            format!(
                "has {} entries, more than {}",
                ports.len(),
                defs::MAX_PORT_MAPPINGS
            ),
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            return Err(invalid(
                format!("{at}.container_port"),
                format!("{} is not a port (1-65535)", p.container_port),
            ));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(invalid(
                format!("{at}.host_port"),
                format!("{} is not a port (0-65535, 0 for none)", p.host_port),
            ));
        }
        if cri::Protocol::try_from(p.protocol).is_err() {
            return Err(invalid(
                format!("{at}.protocol"),
                format!("{} is not TCP (0), UDP (1) or SCTP (2)", p.protocol),
            ));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("{at}.host_ip"),
                format!("{} is not an IP address", quote(&p.host_ip)),
            ));
        }
    }
    Ok(())
}

/// Whether a sysctl (its path under /proc/sys) is one the kernel keeps per namespace,
/// the ones kubelet lets a pod set (its safe set is a subset): `kernel.shm*`,
/// `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`, `net.*` (runc allows the same).
fn namespaced(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches("/proc/sys/").split('/').collect();
    match parts.as_slice() {
        ["net", _, ..] => true,
        ["fs", "mqueue", _, ..] => true,
        ["kernel", name] => name.starts_with("shm") || name.starts_with("msg") || *name == "sem",
        _ => false,
    }
}

fn sysctls(at: &str, sysctls: &std::collections::HashMap<String, String>) -> Result {
    if sysctls.len() > defs::MAX_SYSCTLS {
        return Err(invalid(
            at,
            format!(
                "has {} entries, more than {}",
                sysctls.len(),
                defs::MAX_SYSCTLS
            ),
        ));
    }
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("{at}[{}]", quote(key));
        let path = shared_checks::sysctl_key(key).map_err(|e| shared(&field, e))?;
        if !namespaced(&path) {
            return Err(invalid(
                field,
                "is not a namespaced sysctl (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)",
            ));
        }
        let value = &sysctls[key];
        if value.is_empty() {
            return Err(invalid(field, "has an empty value"));
        }
        // Tabs and spaces separate fields of some values (ip_local_port_range).
        if value.len() > 4096 || value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid(
                field,
                format!(
                    "value {} has control characters or is over 4096 bytes",
                    quote(value)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn is_namespaced(path: &str) -> bool {
    namespaced(path)
}
