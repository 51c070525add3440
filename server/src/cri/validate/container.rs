//! CreateContainer, UpdateContainerResources, and exec commands.

use std::path::{Component, Path, PathBuf};

use hull_cri_api as cri;

use super::pod::pod_config;
use super::resources::{container_security, linux_resources};
use super::{Result, absolute_path, defs, invalid, no_nul, quote, required, string_map, text};

/// Everything CreateContainer takes from the client. The sandbox config is checked as
/// far as hulld uses it (its log directory); the rest was checked at RunPodSandbox.
pub fn create_container(req: &cri::CreateContainerRequest) -> Result {
    required("pod_sandbox_id", &req.pod_sandbox_id, defs::MAX_NAME)?;
    let config = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("config", "is missing"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is missing"))?;
    required("config.metadata.name", &meta.name, defs::MAX_NAME)?;
    if meta.name.contains('/') {
        return Err(invalid(
            "config.metadata.name",
            format!("{} contains '/'", quote(&meta.name)),
        ));
    }
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.as_str())
        .unwrap_or("");
    required("config.image.image", image, defs::MAX_PATH)?;
    if image.contains(char::is_whitespace) {
        return Err(invalid(
            "config.image.image",
            format!("{} contains whitespace", quote(image)),
        ));
    }
    argv(config)?;
    if !config.working_dir.is_empty() {
        absolute_path("config.working_dir", &config.working_dir)?;
    }
    mounts(&config.mounts)?;
    devices(config)?;
    string_map("config.labels", &config.labels)?;
    string_map("config.annotations", &config.annotations)?;
    if let Some(linux) = &config.linux {
        if let Some(r) = &linux.resources {
            linux_resources("config.linux.resources", r)?;
        }
        if let Some(sc) = &linux.security_context {
            container_security("config.linux.security_context", sc)?;
        }
    }
    let log_dir = req
        .sandbox_config
        .as_ref()
        .map(|s| s.log_directory.as_str())
        .unwrap_or("");
    if let Some(sandbox) = &req.sandbox_config
        && sandbox.metadata.is_some()
    {
        pod_config("sandbox_config", sandbox)?;
    } else if !log_dir.is_empty() {
        absolute_path("sandbox_config.log_directory", log_dir)?;
    }
    if !config.log_path.is_empty() {
        log_path("config.log_path", &config.log_path)?;
    }
    Ok(())
}

/// Command, args and env: no NUL (execve cannot pass one), each string under Linux's
/// `MAX_ARG_STRLEN`, all together under [`defs::MAX_ARGV_TOTAL`]; env keys not empty and
/// without `=`.
fn argv(config: &cri::ContainerConfig) -> Result {
    let mut total = 0usize;
    for (what, list) in [("command", &config.command), ("args", &config.args)] {
        for (i, a) in list.iter().enumerate() {
            no_nul(&format!("config.{what}[{i}]"), a, defs::MAX_ARG)?;
            total = total.saturating_add(a.len() + 1);
        }
    }
    if config.envs.len() > defs::MAX_ENVS {
        return Err(invalid(
            "config.envs",
            format!(
                "has {} entries, more than {}",
                config.envs.len(),
                defs::MAX_ENVS
            ),
        ));
    }
    for (i, kv) in config.envs.iter().enumerate() {
        let field = format!("config.envs[{i}]");
        required(&format!("{field}.key"), &kv.key, defs::MAX_ARG)?;
        if kv.key.contains('=') {
            return Err(invalid(
                format!("{field}.key"),
                format!("{} contains '='", quote(&kv.key)),
            ));
        }
        no_nul(
            &format!("{field}.value"),
            &kv.value,
            defs::MAX_ARG - kv.key.len(),
        )?;
        total = total.saturating_add(kv.key.len() + kv.value.len() + 2);
    }
    if total > defs::MAX_ARGV_TOTAL {
        return Err(invalid(
            "config",
            format!(
                "command, args and envs take {total} bytes, more than {}",
                defs::MAX_ARGV_TOTAL
            ),
        ));
    }
    Ok(())
}

fn mounts(mounts: &[cri::Mount]) -> Result {
    if mounts.len() > defs::MAX_MOUNTS {
        return Err(invalid(
            "config.mounts",
            format!(
                "has {} entries, more than {}",
                mounts.len(),
                defs::MAX_MOUNTS
            ),
        ));
    }
    for (i, m) in mounts.iter().enumerate() {
        absolute_path(
            &format!("config.mounts[{i}].container_path"),
            &m.container_path,
        )?;
        absolute_path(&format!("config.mounts[{i}].host_path"), &m.host_path)?;
        if cri::MountPropagation::try_from(m.propagation).is_err() {
            return Err(invalid(
                format!("config.mounts[{i}].propagation"),
                format!("{} is unknown", m.propagation),
            ));
        }
    }
    Ok(())
}

/// Host devices cannot reach a VM: refused, after the first one's paths are checked
/// (so the message says what is wrong with it, if anything else is).
fn devices(config: &cri::ContainerConfig) -> Result {
    if let Some(d) = config.devices.first() {
        let at = "config.devices[0]";
        absolute_path(&format!("{at}.host_path"), &d.host_path)?;
        absolute_path(&format!("{at}.container_path"), &d.container_path)?;
        if d.permissions.is_empty() || !d.permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(
                format!("{at}.permissions"),
                format!("{} is not a combination of r, w, m", quote(&d.permissions)),
            ));
        }
        return Err(invalid(
            format!("{at}.host_path"),
            format!(
                "{}: hull runs the pod in a VM and cannot pass host devices into it",
                quote(&d.host_path)
            ),
        ));
    }
    if let Some(d) = config.cdi_devices.first() {
        return Err(invalid(
            "config.CDI_devices[0]",
            format!(
                "{}: hull runs the pod in a VM and cannot pass host devices into it",
                quote(&d.name)
            ),
        ));
    }
    Ok(())
}

/// The container's log file, relative to the pod's log directory: no NUL or control
/// characters, not absolute, and inside the directory once `.` and `..` are resolved
/// lexically (`a/../b.log` is `b.log`; `../x` is refused), naming a file. Returns the
/// normalised path, which is what hulld joins to the directory.
pub fn log_path(field: &str, value: &str) -> Result<PathBuf> {
    text(field, value, defs::MAX_PATH)?;
    if value.starts_with('/') {
        return Err(invalid(
            field,
            format!(
                "{} is absolute; it must be relative to the pod's log_directory",
                quote(value)
            ),
        ));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(value).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(|| {
                    invalid(
                        field,
                        format!("{} leads out of the pod's log_directory", quote(value)),
                    )
                })?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(field, format!("{} is absolute", quote(value))));
            }
        }
    }
    if parts.is_empty() || value.ends_with('/') {
        return Err(invalid(
            field,
            format!("{} does not name a file", quote(value)),
        ));
    }
    Ok(parts.iter().collect())
}

/// An exec's command (ExecSync, Exec): not empty, no NUL, each string under
/// `MAX_ARG_STRLEN`.
pub fn exec_cmd(cmd: &[String]) -> Result {
    if cmd.is_empty() {
        return Err(invalid("cmd", "is empty"));
    }
    let mut total = 0usize;
    for (i, a) in cmd.iter().enumerate() {
        no_nul(&format!("cmd[{i}]"), a, defs::MAX_ARG)?;
        total = total.saturating_add(a.len() + 1);
    }
    if total > defs::MAX_ARGV_TOTAL {
        return Err(invalid(
            "cmd",
            format!("takes {total} bytes, more than {}", defs::MAX_ARGV_TOTAL),
        ));
    }
    Ok(())
}

/// UpdateContainerResources.
pub fn update_resources(req: &cri::UpdateContainerResourcesRequest) -> Result {
    required("container_id", &req.container_id, defs::MAX_NAME)?;
    if let Some(r) = &req.linux {
        linux_resources("linux", r)?;
    }
    string_map("annotations", &req.annotations)
}
