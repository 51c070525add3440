//! Running one CNI plugin: find the binary in the bin dirs, set the `CNI_*` environment,
//! write the configuration on stdin, read the result or the CNI error object from stdout,
//! all under a timeout (the plugin is killed when it runs out).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::netns::Netns;

/// Only this much of a plugin's stdout is parsed (a result or error object is far smaller).
const MAX_OUTPUT: usize = 4 << 20;

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        })
    }
}

/// Errors of running a plugin.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Failed to find plugin {plugin:?} in {dirs:?}")]
    FindPlugin { plugin: String, dirs: Vec<PathBuf> },
    #[error("Failed to start plugin {plugin}")]
    Spawn {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to enter the runtime netns for plugin {plugin}")]
    RuntimeNetns {
        plugin: String,
        #[source]
        source: crate::netns::NetnsError,
    },
    #[error("Failed to talk to plugin {plugin}")]
    Io {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Plugin {plugin} {command} timed out after {timeout:?}")]
    Timeout {
        plugin: String,
        command: Command,
        timeout: Duration,
    },
    #[error("Plugin {plugin} {command} failed: {msg}{}{} (code {code})", if details.is_empty() { "" } else { ": " }, details)]
    Plugin {
        plugin: String,
        command: Command,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("Plugin {plugin} {command} printed an invalid result")]
    BadOutput {
        plugin: String,
        command: Command,
        #[source]
        source: serde_json::Error,
    },
}

/// The CNI error object a failing plugin prints.
#[derive(Debug, Deserialize)]
struct PluginError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Everything but the configuration that a plugin call needs.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
    /// Run the plugin in this namespace instead of the caller's (hull's tests use it).
    pub runtime_netns: Option<&'a Netns>,
}

/// Finds the plugin binary `plugin` in `dirs` (first match wins).
pub fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, ExecError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| ExecError::FindPlugin {
            plugin: plugin.to_owned(),
            dirs: dirs.to_vec(),
        })
}

fn cni_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `plugin` with `stdin`; returns its stdout parsed as JSON for ADD, `None` otherwise.
pub async fn invoke(
    plugin: &str,
    stdin: &Value,
    inv: &Invocation<'_>,
) -> Result<Option<Value>, ExecError> {
    let path = find_plugin(plugin, inv.bin_dirs)?;
    let mut cmd = tokio::process::Command::new(&path);
    cmd.env("CNI_COMMAND", inv.command.to_string())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path(inv.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = inv.runtime_netns {
        ns.setns_on_exec(cmd.as_std_mut())
            .map_err(|source| ExecError::RuntimeNetns {
                plugin: plugin.to_owned(),
                source,
            })?;
    }
    let input = serde_json::to_vec(stdin).map_err(|source| ExecError::BadOutput {
        plugin: plugin.to_owned(),
        command: inv.command,
        source,
    })?;
    let run = async {
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            plugin: plugin.to_owned(),
            source,
        })?;
        if let Some(mut w) = child.stdin.take() {
            // A plugin may exit without reading stdin (e.g. on a bad environment).
            match w.write_all(&input).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(ExecError::Io {
                        plugin: plugin.to_owned(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        child
            .wait_with_output()
            .await
            .map_err(|source| ExecError::Io {
                plugin: plugin.to_owned(),
                source,
            })
    };
    let out = tokio::time::timeout(inv.timeout, run)
        .await
        .map_err(|_| ExecError::Timeout {
            plugin: plugin.to_owned(),
            command: inv.command,
            timeout: inv.timeout,
        })??;
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    if !out.status.success() {
        return Err(plugin_failure(
            plugin,
            inv.command,
            stdout,
            &out.stderr,
            out.status,
        ));
    }
    if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        let text = String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(4096)]);
        tracing::debug!(sandbox_id = %inv.container_id, plugin, command = %inv.command, stderr = %text.trim(), "plugin stderr");
    }
    if inv.command != Command::Add {
        return Ok(None);
    }
    serde_json::from_slice(stdout)
        .map(Some)
        .map_err(|source| ExecError::BadOutput {
            plugin: plugin.to_owned(),
            command: inv.command,
            source,
        })
}

/// Builds the error of a plugin that exited non-zero: its CNI error object if it printed
/// one, else its stderr (or stdout) text and exit status.
fn plugin_failure(
    plugin: &str,
    command: Command,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> ExecError {
    if let Ok(e) = serde_json::from_slice::<PluginError>(stdout)
        && !e.msg.is_empty()
    {
        return ExecError::Plugin {
            plugin: plugin.to_owned(),
            command,
            code: e.code,
            msg: e.msg,
            details: e.details,
        };
    }
    let text = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    let text = String::from_utf8_lossy(&text[..text.len().min(4096)])
        .trim()
        .to_owned();
    let msg = if text.is_empty() {
        format!("exited with {status}")
    } else {
        text
    };
    ExecError::Plugin {
        plugin: plugin.to_owned(),
        command,
        code: 0,
        msg,
        details: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn plugin_error_object_is_reported() {
        let out =
            br#"{"cniVersion":"1.0.0","code":7,"msg":"failed to allocate","details":"range full"}"#;
        let e = plugin_failure(
            "host-local",
            Command::Add,
            out,
            b"",
            std::process::ExitStatus::from_raw(256),
        );
        assert_eq!(
            e.to_string(),
            "Plugin host-local ADD failed: failed to allocate: range full (code 7)"
        );
        let e = plugin_failure(
            "x",
            Command::Del,
            b"",
            b"boom\n",
            std::process::ExitStatus::from_raw(256),
        );
        assert_eq!(e.to_string(), "Plugin x DEL failed: boom (code 0)");
    }

    #[test]
    fn missing_plugin_is_named() {
        let e = find_plugin("no-such-plugin", &[PathBuf::from("/nonexistent")]);
        assert!(
            matches!(e, Err(ExecError::FindPlugin { plugin, .. }) if plugin == "no-such-plugin")
        );
        assert_eq!(
            cni_path(&[PathBuf::from("/a"), PathBuf::from("/b")]),
            "/a:/b"
        );
    }
}
