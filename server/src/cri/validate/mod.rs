//! CRI request validation: what a client sends is checked here, before hulld reserves a
//! name, makes a netns or boots a VM, and a bad field comes back as `INVALID_ARGUMENT`
//! with a message naming it (`config.dns_config.servers[1]: "8.8.8.8\nsearch x" is not
//! an IP address`). The guest agent checks what reaches it again (`hull_agent_api::
//! validate`, whose value checks this module shares) as a second wall.
//!
//! - `pod.rs`: RunPodSandbox (metadata, hostname, DNS, port mappings, sysctls, log
//!   directory, labels/annotations);
//! - `container.rs`: CreateContainer (metadata, image, command/args/env, working dir,
//!   mounts, devices, log path), exec commands;
//! - `resources.rs`: Linux resources (pod, container, UpdateContainerResources) and
//!   security contexts.
//!
//! What each client-controlled path does in a VM pod, and what is refused:
//! - `log_directory` (pod) is a host directory where hulld writes the CRI logs: absolute,
//!   no `..`. `log_path` (container) is relative to it and must stay inside it after
//!   normalisation (`a/../b.log` is fine, `../x`, `/tmp/x.log` are not).
//! - `mounts[].host_path` is a host path hulld binds into the pod's virtio-fs share, so
//!   the guest can read (and write) it: absolute, no `..`. `mounts[].container_path` is a
//!   path in the container's rootfs inside the guest: absolute, no `..` (containerd
//!   cleans it; runc refuses relative ones).
//! - `working_dir` is a path in the container, in the guest: absolute (as runc requires).
//! - `devices` and `CDI_devices` name host devices, which a VM cannot be handed (hull has
//!   no device passthrough): refused, where hulld used to drop them silently.

mod container;
mod pod;
mod resources;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use hull_agent_api::validate::ValidateError;

pub use container::{create_container, exec_cmd, log_path, update_resources};
pub use pod::run_pod_sandbox;

use super::status::{CriError, quote};

/// Caps on what one request may carry.
pub mod defs {
    /// Names, namespaces, uids (Kubernetes: a DNS subdomain is at most 253 bytes).
    pub const MAX_NAME: usize = 253;
    /// Paths (Linux `PATH_MAX`).
    pub const MAX_PATH: usize = 4096;
    /// Labels or annotations of one object, keys and values together (Kubernetes'
    /// `TotalAnnotationSizeLimitB`).
    pub const MAX_MAP_BYTES: usize = 256 * 1024;
    /// One argument or environment string (Linux `MAX_ARG_STRLEN`, with its NUL).
    pub const MAX_ARG: usize = 128 * 1024 - 1;
    /// All of command, args and env together (what `execve` takes, about ARG_MAX/4 of an
    /// 8 MiB stack).
    pub const MAX_ARGV_TOTAL: usize = 2 * 1024 * 1024;
    /// DNS (kubelet's `MaxDNSNameservers`, `MaxDNSSearchPaths`, `MaxDNSSearchListChars`).
    pub const MAX_DNS_SERVERS: usize = 3;
    pub const MAX_DNS_SEARCHES: usize = 32;
    pub const MAX_DNS_SEARCH_CHARS: usize = 2048;
    pub const MAX_DNS_OPTIONS: usize = 32;
    pub const MAX_PORT_MAPPINGS: usize = 1024;
    pub const MAX_SYSCTLS: usize = 128;
    pub const MAX_MOUNTS: usize = 1024;
    pub const MAX_ENVS: usize = 16 * 1024;
}

/// A refused field: its path in the request and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl From<Invalid> for CriError {
    fn from(e: Invalid) -> Self {
        CriError::InvalidArgument(e.to_string())
    }
}

pub type Result<T = ()> = std::result::Result<T, Invalid>;

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A shared check's error, under this request's field name.
pub(super) fn shared(field: &str, e: ValidateError) -> Invalid {
    let reason = match e {
        ValidateError::Empty { .. } => "is empty".to_owned(),
        ValidateError::Invalid { value, reason, .. } => format!("{value:?} is invalid: {reason}"),
    };
    invalid(field, reason)
}

/// No NUL or other control characters (tabs included), at most `max` bytes.
pub(super) fn text(field: &str, value: &str, max: usize) -> Result {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("{} contains the control character {c:?}", quote(value)),
        ));
    }
    Ok(())
}

/// Like [`text`], and not empty.
pub(super) fn required(field: &str, value: &str, max: usize) -> Result {
    if value.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    text(field, value, max)
}

/// No NUL (which no C string can carry), at most `max` bytes; other bytes are the
/// program's business (arguments, environment values).
pub(super) fn no_nul(field: &str, value: &str, max: usize) -> Result {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(
            field,
            format!("{} contains a NUL byte", quote(value)),
        ));
    }
    Ok(())
}

/// An absolute path without `..` components, NUL or other control characters.
pub(super) fn absolute_path(field: &str, value: &str) -> Result {
    required(field, value, defs::MAX_PATH)?;
    if !value.starts_with('/') {
        return Err(invalid(
            field,
            format!("{} is not an absolute path", quote(value)),
        ));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(invalid(
            field,
            format!("{} has a '..' component", quote(value)),
        ));
    }
    Ok(())
}

/// Labels or annotations: keys not empty and without control characters, keys and
/// values together at most [`defs::MAX_MAP_BYTES`].
pub(super) fn string_map(field: &str, map: &HashMap<String, String>) -> Result {
    let mut total = 0usize;
    for (k, v) in map {
        required(&format!("{field} key"), k, defs::MAX_MAP_BYTES)?;
        total = total.saturating_add(k.len() + v.len());
    }
    if total > defs::MAX_MAP_BYTES {
        return Err(invalid(
            field,
            format!("hold {total} bytes, more than {}", defs::MAX_MAP_BYTES),
        ));
    }
    Ok(())
}
