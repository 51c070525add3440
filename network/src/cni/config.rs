//! Network configuration lists (`.conflist`, or a single `.conf` wrapped into a list), the
//! runtime's capability arguments, and building each plugin's stdin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::version::{CniVersion, VersionError};

/// Errors of parsing a network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Failed to read CNI config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid JSON in CNI config {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Invalid CNI config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("Unsupported cniVersion in CNI config {path}")]
    Version {
        path: PathBuf,
        #[source]
        source: VersionError,
    },
}

/// A parsed network configuration list. Plugin objects are kept as JSON so fields hull
/// does not know are passed through to the plugins unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    /// `cniVersion` of the list (also given to every plugin).
    pub cni_version: String,
    /// Network name (given to every plugin as `name`).
    pub name: String,
    /// `disableCheck`: CHECK is skipped.
    pub disable_check: bool,
    /// Plugin configurations, in ADD order; each has a string `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl NetworkConfigList {
    /// Reads a `.conflist`, or a `.conf`/`.json` holding one plugin configuration.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let mut list = if is_list {
            Self::from_list_value(value, path)?
        } else {
            Self::from_conf_value(value, path)?
        };
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// Parses a configuration list object (`{cniVersion, name, plugins: [...]}`).
    pub fn from_list_value(value: Value, path: &Path) -> Result<Self, ConfigError> {
        let Value::Object(mut obj) = value else {
            return Err(invalid(path, "not a JSON object"));
        };
        let name =
            take_string(&mut obj, "name").ok_or_else(|| invalid(path, "missing network name"))?;
        let cni_version = take_string(&mut obj, "cniVersion")
            .ok_or_else(|| invalid(path, "missing cniVersion"))?;
        let disable_check = matches!(obj.get("disableCheck"), Some(Value::Bool(true)))
            || matches!(obj.get("disableCheck"), Some(Value::String(s)) if s == "true");
        let Some(Value::Array(raw)) = obj.remove("plugins") else {
            return Err(invalid(path, "missing plugins list"));
        };
        let mut plugins = Vec::with_capacity(raw.len());
        for p in raw {
            let Value::Object(p) = p else {
                return Err(invalid(path, "a plugin is not an object"));
            };
            plugin_type(&p).ok_or_else(|| invalid(path, "a plugin has no type"))?;
            plugins.push(p);
        }
        let list = Self {
            cni_version,
            name,
            disable_check,
            plugins,
            source: None,
        };
        list.validate(path)?;
        Ok(list)
    }

    /// Wraps a single plugin configuration (`.conf`) into a list, as libcni does.
    pub fn from_conf_value(value: Value, path: &Path) -> Result<Self, ConfigError> {
        let Value::Object(obj) = value else {
            return Err(invalid(path, "not a JSON object"));
        };
        if obj.contains_key("plugins") {
            return Self::from_list_value(Value::Object(obj), path);
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(path, "missing network name"))?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(path, "missing cniVersion"))?;
        plugin_type(&obj).ok_or_else(|| invalid(path, "missing plugin type"))?;
        let list = Self {
            cni_version: cni_version.to_owned(),
            name: name.to_owned(),
            disable_check: false,
            plugins: vec![obj],
            source: None,
        };
        list.validate(path)?;
        Ok(list)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.plugins.is_empty() {
            return Err(invalid(path, "empty plugins list"));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return Err(invalid(path, "bad network name"));
        }
        self.version().map_err(|source| ConfigError::Version {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(())
    }

    /// The list's CNI version.
    pub fn version(&self) -> Result<CniVersion, VersionError> {
        CniVersion::parse(&self.cni_version)
    }

    /// The `type` of each plugin, in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins.iter().filter_map(plugin_type).collect()
    }

    /// The stdin of plugin `index`: its configuration with the list's `name` and
    /// `cniVersion`, `prevResult` if given, and `runtimeConfig` holding the capability
    /// arguments this plugin declares in `capabilities` (and only those).
    pub fn plugin_stdin(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &BTreeMap<String, Value>,
    ) -> Option<Value> {
        let mut conf = self.plugins.get(index)?.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut runtime = Map::new();
        if let Some(Value::Object(caps)) = conf.get("capabilities") {
            for (cap, enabled) in caps {
                if enabled == &Value::Bool(true)
                    && let Some(arg) = capability_args.get(cap)
                {
                    runtime.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Some(Value::Object(conf))
    }

    /// The list as a conflist JSON object (what the cache stores).
    pub fn to_value(&self) -> Value {
        let plugins = self.plugins.iter().cloned().map(Value::Object).collect();
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        obj.insert("name".into(), Value::String(self.name.clone()));
        if self.disable_check {
            obj.insert("disableCheck".into(), Value::Bool(true));
        }
        obj.insert("plugins".into(), Value::Array(plugins));
        Value::Object(obj)
    }
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A plugin's `type` (its binary name), if it is a plain file name.
pub fn plugin_type(plugin: &Map<String, Value>) -> Option<&str> {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/') && *t != "." && *t != "..")
}

/// A port mapping of the pod (CRI `PortMapping`), given to plugins with the
/// `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lowercase, as the portmap plugin expects).
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The pod's DNS settings, for plugins with the `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCapability {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Traffic shaping, for plugins with the `bandwidth` capability (bits per second, bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// What the runtime knows and plugins may ask for through `capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsCapability>,
    pub bandwidth: Option<Bandwidth>,
}

impl RuntimeConfig {
    /// Capability name → argument. Port mappings without a host port are dropped (as
    /// containerd does); empty settings are left out.
    pub fn capability_args(&self) -> BTreeMap<String, Value> {
        let mut args = BTreeMap::new();
        let ports: Vec<&PortMapping> = self
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .collect();
        if !ports.is_empty() {
            args.insert(
                "portMappings".into(),
                serde_json::to_value(ports).unwrap_or(Value::Null),
            );
        }
        if let Some(dns) = self
            .dns
            .as_ref()
            .filter(|d| **d != DnsCapability::default())
        {
            args.insert(
                "dns".into(),
                serde_json::to_value(dns).unwrap_or(Value::Null),
            );
        }
        if let Some(bw) = &self.bandwidth {
            args.insert(
                "bandwidth".into(),
                serde_json::to_value(bw).unwrap_or(Value::Null),
            );
        }
        args.retain(|_, v| !v.is_null());
        args
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
