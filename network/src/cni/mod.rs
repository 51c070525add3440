//! A CNI runtime per the CNI spec (0.3.x, 0.4.0, 1.0.0, 1.1.0): load the network from the
//! lexically first valid `.conflist`/`.conf`/`.json` in the conf dir (invalid files are
//! skipped with a warning, as CRI-O does, so one stray file does not take the node
//! network down), run its plugins for
//! ADD (in order, chaining `prevResult`), DEL (in reverse, with the cached result) and
//! CHECK, pass capabilities through `runtimeConfig` to the plugins that declare them, and
//! cache config + result per sandbox so DEL works after a restart or a config change.

pub mod cache;
pub mod config;
pub mod exec;
pub mod result;
pub mod version;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, info, warn};

pub use cache::{Cache, CacheEntry, CacheError};
pub use config::{
    Bandwidth, ConfigError, DnsCapability, NetworkConfigList, PortMapping, RuntimeConfig,
};
pub use exec::{Command, ExecError};
pub use result::{CniResult, IpConfig, IpNetwork, ResultError, Route};
pub use version::{CniVersion, VersionError};

use crate::netns::Netns;

/// Default directory of network configurations.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Default plugin directories (upstream's, then Debian's).
pub const DEFAULT_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// Default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/hull/cni";
/// Default time a single plugin call may take.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the CNI runtime.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("No CNI network config (*.conflist, *.conf, *.json) in {0}")]
    NoConfig(PathBuf),
    #[error("Failed to read the CNI conf dir {path}")]
    ReadConfDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No valid CNI network config in {dir}: {problems}")]
    NoValidConfig { dir: PathBuf, problems: String },
    #[error("Failed to load the cached CNI network config")]
    LoadConfig(#[from] ConfigError),
    #[error("Invalid CNI argument {0:?}")]
    InvalidArgs(String),
    #[error("CNI ADD failed for {container_id}")]
    Add {
        container_id: String,
        #[source]
        source: ExecError,
    },
    #[error("CNI DEL failed for {container_id}")]
    Del {
        container_id: String,
        #[source]
        source: ExecError,
    },
    /// DEL of some plugins failed; every plugin's DEL still ran, and the cache entry is
    /// kept so DEL can be tried again.
    #[error(
        "CNI DEL failed for {container_id} in {failed} of {total} plugins ({others}); the others' DEL ran"
    )]
    DelPlugins {
        container_id: String,
        failed: usize,
        total: usize,
        /// The failures after the first, joined.
        others: String,
        /// The first failure.
        #[source]
        source: Box<ExecError>,
    },
    #[error("CNI CHECK failed for {container_id}")]
    Check {
        container_id: String,
        #[source]
        source: ExecError,
    },
    #[error("CNI CHECK is not possible for {container_id}: {reason}")]
    CheckUnsupported {
        container_id: String,
        reason: String,
    },
    #[error("Bad CNI result")]
    Result(#[from] ResultError),
    #[error("CNI result cache")]
    Cache(#[from] CacheError),
}

/// Where the CNI runtime finds things.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    /// Limit for one plugin call.
    pub plugin_timeout: Duration,
    /// Run plugins inside this network namespace instead of hulld's own (the "host" side
    /// of the pod network). `None` in production; tests use it to keep bridges and
    /// iptables rules out of the real host namespace.
    pub runtime_netns: Option<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            runtime_netns: None,
        }
    }
}

/// The pod identity passed in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// `CNI_ARGS` as kubelet runtimes send it:
/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`.
pub fn cni_args(pod: &PodRef, sandbox_id: &str) -> Result<String, CniError> {
    let pairs = [
        ("K8S_POD_NAMESPACE", pod.namespace.as_str()),
        ("K8S_POD_NAME", pod.name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", pod.uid.as_str()),
    ];
    let mut out = String::from("IgnoreUnknown=1");
    for (k, v) in pairs {
        if v.contains([';', '=', '\0']) {
            return Err(CniError::InvalidArgs(format!("{k}={v}")));
        }
        out.push_str(&format!(";{k}={v}"));
    }
    Ok(out)
}

/// Why the network is not ready (CRI `NetworkReady` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// Machine-readable reason, as containerd reports it.
    pub reason: String,
    pub message: String,
}

/// What one attachment (a sandbox's interface) is.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: String,
}

/// The CNI runtime.
#[derive(Debug, Clone)]
pub struct Cni {
    config: CniConfig,
    cache: Cache,
}

impl Cni {
    pub fn new(config: CniConfig) -> Self {
        let cache = Cache::new(config.cache_dir.clone());
        Self { config, cache }
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Loads the lexically first valid `.conflist`/`.conf`/`.json` of the conf dir.
    /// Invalid files are skipped with a warning (as CRI-O does, and as hulld's condition
    /// check does); if none is valid, the error names each file's problem.
    pub fn load_network(&self) -> Result<NetworkConfigList, CniError> {
        let dir = &self.config.conf_dir;
        let rd = std::fs::read_dir(dir).map_err(|source| CniError::ReadConfDir {
            path: dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for file in &files {
            match NetworkConfigList::from_file(file) {
                Ok(list) => {
                    for p in &problems {
                        warn!(problem = %p, "skipped an invalid CNI config");
                    }
                    return Ok(list);
                }
                Err(e) => problems.push(error_chain(&e)),
            }
        }
        if problems.is_empty() {
            return Err(CniError::NoConfig(dir.clone()));
        }
        Err(CniError::NoValidConfig {
            dir: dir.clone(),
            problems: problems.join("; "),
        })
    }

    /// Whether a usable network exists: a parseable config whose plugins are all found.
    pub fn validate(&self) -> Result<NetworkConfigList, NotReady> {
        let not_ready = |message: String| NotReady {
            reason: "NetworkPluginNotReady".into(),
            message,
        };
        let list = self
            .load_network()
            .map_err(|e| not_ready(error_chain(&e)))?;
        for plugin in list.plugin_types() {
            exec::find_plugin(plugin, &self.config.bin_dirs)
                .map_err(|e| not_ready(error_chain(&e)))?;
        }
        Ok(list)
    }

    fn runtime_netns(&self) -> Result<Option<Netns>, ExecError> {
        self.config
            .runtime_netns
            .as_ref()
            .map(Netns::open)
            .transpose()
            .map_err(|source| ExecError::RuntimeNetns {
                plugin: "(any)".into(),
                source,
            })
    }

    fn invocation<'a>(
        &'a self,
        command: Command,
        att: &'a Attachment,
        ns: Option<&'a Netns>,
    ) -> exec::Invocation<'a> {
        exec::Invocation {
            command,
            container_id: &att.container_id,
            netns: &att.netns,
            ifname: &att.ifname,
            args: &att.args,
            bin_dirs: &self.config.bin_dirs,
            timeout: self.config.plugin_timeout,
            runtime_netns: ns,
        }
    }

    /// CNI ADD of the current network for `att`. The config is cached before the first
    /// plugin runs; on failure the caller should call [`Cni::del`], which uses that cache.
    pub async fn add(
        &self,
        att: &Attachment,
        rc: &RuntimeConfig,
    ) -> Result<(CniResult, Value), CniError> {
        let list = self.load_network()?;
        let caps = rc.capability_args();
        let mut entry = CacheEntry {
            kind: cache::CACHE_KIND.into(),
            container_id: att.container_id.clone(),
            netns: att.netns.clone(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            config: list.to_value(),
            cni_args: att.args.clone(),
            capability_args: caps.clone(),
            result: None,
        };
        self.cache.store(&entry)?;
        let err = |source| CniError::Add {
            container_id: att.container_id.clone(),
            source,
        };
        let ns = self.runtime_netns().map_err(err)?;
        let inv = self.invocation(Command::Add, att, ns.as_ref());
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugin_types().into_iter().enumerate() {
            let stdin = list
                .plugin_stdin(i, prev.as_ref(), &caps)
                .unwrap_or(Value::Null);
            debug!(sandbox_id = %att.container_id, plugin, "CNI ADD");
            prev = exec::invoke(plugin, &stdin, &inv).await.map_err(err)?;
        }
        let raw = prev.unwrap_or(Value::Null);
        let result = CniResult::from_value(&raw)?;
        entry.result = Some(raw.clone());
        self.cache.store(&entry)?;
        info!(sandbox_id = %att.container_id, network = %list.name, ips = ?result.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>(), "CNI ADD done");
        Ok((result, raw))
    }

    /// The cached network and result of `container_id`, or the current network (and no
    /// result) if nothing is cached.
    fn cached_or_current(
        &self,
        container_id: &str,
    ) -> Result<Option<(NetworkConfigList, Option<CacheEntry>)>, CniError> {
        if let Some(entry) = self.cache.load(container_id)? {
            let path = self.cache.path(container_id);
            let list = NetworkConfigList::from_list_value(entry.config.clone(), &path)?;
            return Ok(Some((list, Some(entry))));
        }
        match self.load_network() {
            Ok(list) => Ok(Some((list, None))),
            Err(
                CniError::NoConfig(_)
                | CniError::ReadConfDir { .. }
                | CniError::NoValidConfig { .. },
            ) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// CNI DEL for `att`, plugins in reverse order, with the cached config, arguments and
    /// result when there are some. A plugin whose DEL fails does not stop the others (each
    /// removes what it made: the bridge plugin its veth and IPAM lease even when portmap
    /// fails); the cache entry is removed only when every plugin succeeded, so a later
    /// DEL can retry with the same config. Idempotent.
    pub async fn del(&self, att: &Attachment) -> Result<(), CniError> {
        let Some((list, entry)) = self.cached_or_current(&att.container_id)? else {
            warn!(sandbox_id = %att.container_id, "no cached or current CNI config, skipping CNI DEL");
            return Ok(());
        };
        let mut att = att.clone();
        let (caps, prev) = match &entry {
            Some(e) => {
                att.args.clone_from(&e.cni_args);
                att.ifname.clone_from(&e.if_name);
                (e.capability_args.clone(), e.result.clone())
            }
            None => (BTreeMap::new(), None),
        };
        let prev = prev.filter(|_| list.version().is_ok_and(CniVersion::supports_check));
        let err = |source| CniError::Del {
            container_id: att.container_id.clone(),
            source,
        };
        let ns = self.runtime_netns().map_err(err)?;
        let inv = self.invocation(Command::Del, &att, ns.as_ref());
        let types = list.plugin_types();
        let mut failures = Vec::new();
        for (i, plugin) in types.iter().enumerate().rev() {
            let stdin = list
                .plugin_stdin(i, prev.as_ref(), &caps)
                .unwrap_or(Value::Null);
            debug!(sandbox_id = %att.container_id, plugin, "CNI DEL");
            if let Err(e) = exec::invoke(plugin, &stdin, &inv).await {
                warn!(sandbox_id = %att.container_id, plugin, error = %error_chain(&e), "CNI DEL of a plugin failed; going on with the others");
                failures.push(e);
            }
        }
        let failed = failures.len();
        let mut failures = failures.into_iter();
        if let Some(first) = failures.next() {
            let others: Vec<String> = failures.map(|e| error_chain(&e)).collect();
            return Err(CniError::DelPlugins {
                container_id: att.container_id.clone(),
                failed,
                total: types.len(),
                others: if others.is_empty() {
                    "no other failure".into()
                } else {
                    others.join("; ")
                },
                source: Box::new(first),
            });
        }
        self.cache.remove(&att.container_id)?;
        info!(sandbox_id = %att.container_id, network = %list.name, "CNI DEL done");
        Ok(())
    }

    /// CNI CHECK for `att` against the cached result.
    pub async fn check(&self, att: &Attachment) -> Result<(), CniError> {
        let unsupported = |reason: &str| CniError::CheckUnsupported {
            container_id: att.container_id.clone(),
            reason: reason.to_owned(),
        };
        let entry = self
            .cache
            .load(&att.container_id)?
            .ok_or_else(|| unsupported("no cached ADD result"))?;
        let list = NetworkConfigList::from_list_value(
            entry.config.clone(),
            &self.cache.path(&att.container_id),
        )?;
        if !list.version().is_ok_and(CniVersion::supports_check) {
            return Err(unsupported("the network's cniVersion has no CHECK"));
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = entry
            .result
            .ok_or_else(|| unsupported("no cached ADD result"))?;
        let err = |source| CniError::Check {
            container_id: att.container_id.clone(),
            source,
        };
        let ns = self.runtime_netns().map_err(err)?;
        let inv = self.invocation(Command::Check, att, ns.as_ref());
        for (i, plugin) in list.plugin_types().into_iter().enumerate() {
            let stdin = list
                .plugin_stdin(i, Some(&prev), &entry.capability_args)
                .unwrap_or(Value::Null);
            exec::invoke(plugin, &stdin, &inv).await.map_err(err)?;
        }
        Ok(())
    }
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_format_and_validation() {
        let pod = PodRef {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "u-1".into(),
        };
        assert_eq!(
            cni_args(&pod, "abc").ok().as_deref(),
            Some(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
            )
        );
        let bad = PodRef {
            name: "a;b".into(),
            ..pod
        };
        assert!(matches!(
            cni_args(&bad, "abc"),
            Err(CniError::InvalidArgs(_))
        ));
    }

    #[test]
    fn first_config_wins_and_validation_reports() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let bin = tempfile::tempdir()?;
        let cni = Cni::new(CniConfig {
            conf_dir: dir.path().into(),
            bin_dirs: vec![bin.path().into()],
            cache_dir: dir.path().join("cache"),
            ..CniConfig::default()
        });
        let nr = cni
            .validate()
            .err()
            .ok_or("validate passed without config")?;
        assert_eq!(nr.reason, "NetworkPluginNotReady");
        assert!(
            nr.message.contains("No CNI network config"),
            "{}",
            nr.message
        );
        std::fs::write(dir.path().join("README"), "ignored")?;
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )?;
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
        )?;
        let list = cni.load_network()?;
        assert_eq!(
            (list.name.as_str(), list.plugin_types()),
            ("a", vec!["ptp"])
        );
        let nr = cni
            .validate()
            .err()
            .ok_or("validate passed without plugin")?;
        assert!(nr.message.contains("\"ptp\""), "{}", nr.message);
        std::fs::write(bin.path().join("ptp"), "#!/bin/sh\n")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            bin.path().join("ptp"),
            std::fs::Permissions::from_mode(0o755),
        )?;
        assert!(cni.validate().is_ok());
        // An invalid file is skipped; with no valid file left, the message names it.
        std::fs::write(dir.path().join("05-bad.conflist"), "{")?;
        assert_eq!(cni.load_network()?.name, "a");
        std::fs::remove_file(dir.path().join("10-a.conf"))?;
        std::fs::remove_file(dir.path().join("20-b.conflist"))?;
        let nr = cni
            .validate()
            .err()
            .ok_or("validate passed with bad config")?;
        assert!(nr.message.contains("05-bad.conflist"), "{}", nr.message);
        Ok(())
    }
}
