//! CNI results: the 1.x format and the 0.3.x/0.4.0 one (whose IPs carry a `version` field
//! that hull ignores), parsed into one model.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::version::{CniVersion, VersionError};

/// Errors of result parsing.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("Plugin result is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("Plugin result has an unsupported cniVersion")]
    Version(#[source] VersionError),
}

/// An address with its prefix length, e.g. `10.88.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no prefix length"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} has a bad address"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| format!("{s:?} has a bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("{s:?} has a prefix longer than {max}"));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface the plugins created or configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for interfaces inside the pod, empty for host-side ones.
    #[serde(default)]
    pub sandbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address assigned by the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route for the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings returned by the plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// A CNI result (the last plugin's output of an ADD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version.
    pub fn from_value(value: &Value) -> Result<Self, ResultError> {
        let result = Self::deserialize(value).map_err(ResultError::Json)?;
        CniVersion::parse(&result.cni_version).map_err(ResultError::Version)?;
        Ok(result)
    }

    /// The index of the interface called `ifname` inside the sandbox `netns`; if no
    /// interface names that exact netns path (a plugin may print it differently), the
    /// first `ifname` that is inside some sandbox.
    pub fn interface_index(&self, ifname: &str, netns: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox == netns)
            .or_else(|| {
                self.interfaces
                    .iter()
                    .position(|i| i.name == ifname && !i.sandbox.is_empty())
            })
    }

    /// The addresses of interface `index` (an IP without an interface index counts too).
    /// With no such interface, all addresses.
    pub fn ips_of(&self, index: Option<usize>) -> Vec<IpConfig> {
        match index {
            Some(_) => self
                .ips
                .iter()
                .filter(|ip| ip.interface.is_none() || ip.interface == index)
                .cloned()
                .collect(),
            None => self.ips.clone(),
        }
    }
}

#[cfg(test)]
#[path = "result_tests.rs"]
mod tests;
