//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the runtime says about
//! itself.

use std::collections::HashMap;
use std::path::Path;

use hull_cri_api as cri;

use super::CriService;
use super::status::CriError;
use crate::config::{CgroupDriver, Config};

/// The name kubelet shows for this runtime.
pub const RUNTIME_NAME: &str = "hull";

impl CriService {
    pub(crate) fn do_version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: hull_cri_api::RUNTIME_API_VERSION.into(),
        }
    }

    pub(crate) fn do_status(&self, verbose: bool) -> Result<cri::StatusResponse, CriError> {
        let config = &self.daemon.config;
        let runtime = condition("RuntimeReady", runtime_ready(config));
        let network = condition("NetworkReady", self.network_ready());
        let mut info = HashMap::new();
        if verbose {
            let json = serde_json::to_string(config.as_ref())
                .map_err(|e| CriError::internal("Encoding the config", e))?;
            info.insert("config".to_owned(), json);
            let backends = self.daemon.sandboxes.backends();
            info.insert("vmm".to_owned(), backends.backend_name());
            info.insert(
                "vmmReason".to_owned(),
                crate::sandbox::Backends::vmm_reason(config.vm.vmm),
            );
            if let Err(why) = &backends.hypervisor {
                info.insert("vmmUnavailable".to_owned(), why.clone());
            }
        }
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers: runtime_handlers(config),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        })
    }

    pub(crate) fn do_runtime_config(&self) -> cri::RuntimeConfigResponse {
        let driver = match self.daemon.config.cgroup_driver {
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        };
        cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }
    }
}

/// Every configured handler, sorted, and `""` for the default one (as containerd lists
/// its default runtime twice). Both isolations make recursive read-only mounts (hulld's
/// host side for VM pods, the agent's mount for host pods); neither runs user namespaces.
fn runtime_handlers(config: &Config) -> Vec<cri::RuntimeHandler> {
    let features = |_: &crate::config::RuntimeHandler| cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: true,
        user_namespaces: false,
    };
    let mut out = Vec::with_capacity(config.runtimes.len() + 1);
    if let Some((_, default)) = config.runtime_handler("") {
        out.push(cri::RuntimeHandler {
            name: String::new(),
            features: Some(features(default)),
        });
    }
    for (name, handler) in &config.runtimes {
        out.push(cri::RuntimeHandler {
            name: name.clone(),
            features: Some(features(handler)),
        });
    }
    out
}

/// A failed check: (reason, message), as in the CRI's `RuntimeCondition`.
type Check = Result<(), (&'static str, String)>;

fn condition(kind: &str, check: Check) -> cri::RuntimeCondition {
    match check {
        Ok(()) => cri::RuntimeCondition {
            r#type: kind.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err((reason, message)) => cri::RuntimeCondition {
            r#type: kind.into(),
            status: false,
            reason: reason.into(),
            message,
        },
    }
}

/// The runtime can work if its state dirs exist and are writable.
fn runtime_ready(config: &Config) -> Check {
    for dir in [&config.root_dir, &config.state_dir] {
        probe_writable(dir).map_err(|e| {
            (
                "StateDirNotWritable",
                format!("hull cannot write to {}: {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

impl CriService {
    /// The network is ready when the CNI conf dir holds a usable network config and
    /// hull-network can use it (its plugins are found: the check RunPodSandbox relies on).
    fn network_ready(&self) -> Check {
        crate::cni_check::find_network_config(&self.daemon.config.cni.conf_dir)
            .map_err(|message| ("NetworkPluginNotReady", message))?;
        self.daemon
            .sandboxes
            .backends()
            .network
            .ready()
            .map_err(|e| ("NetworkPluginNotReady", e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_every_handler_and_the_default_as_empty_name() {
        let config = Config::parse(
            "[runtimes.big]\nisolation = \"vm\"\n",
            std::path::Path::new("/t.toml"),
        )
        .expect("config");
        let handlers = runtime_handlers(&config);
        let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "big", "host", "hull"]);
        for h in &handlers {
            let f = h.features.as_ref().expect("features");
            assert!(
                f.recursive_read_only_mounts && !f.user_namespaces,
                "{}",
                h.name
            );
        }
    }
}
