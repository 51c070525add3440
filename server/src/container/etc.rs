//! `/etc/hostname` and `/etc/resolv.conf` in every container, as containerd gives them:
//! hulld writes both from the pod config (its hostname, or its name cut to 63 bytes; its
//! DNS config, or the host's resolv.conf when it has none) into the container's own files
//! dir, which the guest never sees (next to its writable layer, on the same file system,
//! deleted with it), and they are bound into the share like volumes (`volumes.rs`): the
//! container can rewrite them, read-only only with a read-only rootfs, and cannot create
//! anything beside them. A path the CRI config already mounts is left to that mount.

use std::path::{Path, PathBuf};

use hull_cri_api as cri;

#[derive(Debug, thiserror::Error)]
pub enum EtcError {
    #[error("Cannot read the host's resolv.conf {path}")]
    ReadHostResolv {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pod's hostname: the config's, or its name cut the way kubelet does (63 bytes, no
/// trailing `-` or `.`), which is also what the guest sets.
pub fn hostname(config: &cri::PodSandboxConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.']).to_owned()
}

/// resolv.conf from a CRI DNS config; empty when it has nothing to say.
pub fn resolv_conf(dns: &cri::DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Writes the container's hostname and resolv.conf files into `files_dir` and returns them
/// as mounts of the paths the CRI mounts leave free, for `volumes::prepare`. `host_resolv`
/// is the file copied when the pod has no DNS config (`/etc/resolv.conf` in hulld).
pub fn prepare(
    files_dir: &Path,
    (sandbox, config): (&cri::PodSandboxConfig, &cri::ContainerConfig),
    host_resolv: &Path,
) -> Result<Vec<cri::Mount>, EtcError> {
    let taken = |p: &str| config.mounts.iter().any(|m| m.container_path == p);
    let readonly = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.readonly_rootfs);
    let mut out = Vec::new();
    let mut add = |file: &str, content: &str| -> Result<(), EtcError> {
        let path = files_dir.join(file);
        std::fs::create_dir_all(files_dir)
            .and_then(|()| std::fs::write(&path, content))
            .map_err(|source| EtcError::Write {
                path: path.clone(),
                source,
            })?;
        out.push(cri::Mount {
            container_path: format!("/etc/{file}"),
            host_path: path.display().to_string(),
            readonly,
            ..Default::default()
        });
        Ok(())
    };
    if !taken("/etc/hostname") {
        add("hostname", &format!("{}\n", hostname(sandbox)))?;
    }
    if !taken("/etc/resolv.conf") {
        let from_pod = sandbox
            .dns_config
            .as_ref()
            .map(resolv_conf)
            .unwrap_or_default();
        let content = if from_pod.is_empty() {
            std::fs::read_to_string(host_resolv).map_err(|source| EtcError::ReadHostResolv {
                path: host_resolv.to_owned(),
                source,
            })?
        } else {
            from_pod
        };
        add("resolv.conf", &content)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, hostname: &str, dns: Option<cri::DnsConfig>) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                ..Default::default()
            }),
            hostname: hostname.into(),
            dns_config: dns,
            ..Default::default()
        }
    }

    #[test]
    fn hostname_is_the_configs_or_the_cut_pod_name() {
        assert_eq!(hostname(&pod("web", "h1", None)), "h1");
        assert_eq!(hostname(&pod("web", "", None)), "web");
        let long = format!("{}-{}", "a".repeat(62), "b");
        assert_eq!(hostname(&pod(&long, "", None)), "a".repeat(62));
    }

    #[test]
    fn writes_both_files_unless_mounted_by_cri() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-resolv");
        std::fs::write(&host, "nameserver 9.9.9.9\n").unwrap();
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let config = cri::ContainerConfig::default();
        let etc = dir.path().join("c1/files");
        let m = prepare(&etc, (&pod("p", "", Some(dns)), &config), &host).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].container_path, "/etc/hostname");
        assert_eq!(Path::new(&m[0].host_path), etc.join("hostname"));
        assert_eq!(Path::new(&m[1].host_path), etc.join("resolv.conf"));
        assert!(!m[0].readonly);
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "p\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );

        // No DNS config: the host's file. A CRI mount of /etc/hostname wins.
        let config = cri::ContainerConfig {
            mounts: vec![cri::Mount {
                container_path: "/etc/hostname".into(),
                host_path: "/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let files = dir.path().join("c2/files");
        let m = prepare(&files, (&pod("p", "", None), &config), &host).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].container_path, "/etc/resolv.conf");
        let resolv = files.join("resolv.conf");
        assert_eq!(
            std::fs::read_to_string(resolv).unwrap(),
            "nameserver 9.9.9.9\n"
        );
    }
}
