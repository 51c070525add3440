//! hulld's configuration: `/etc/hull/config.toml`.
//!
//! Every key is optional; the defaults work on a fresh Debian machine set up by
//! `packaging/install.sh`. Unknown keys are errors, so a typo is caught at start-up rather
//! than silently ignored. Errors name the offending key (`vm.default_vcpus`), so
//! `hulld` can say exactly what is wrong and exit with code 2.

mod runtimes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use runtimes::{
    DEFAULT_RUNTIME, HOST_RUNTIME, HostIsolationSection, Isolation, NodeNamespaces, RuntimeHandler,
    default_runtimes,
};

/// Where hulld looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";

/// The configured handler names, quoted, for messages.
pub fn runtimes_names(config: &Config) -> String {
    runtimes::names(&config.runtimes)
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("Config file {path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The effective configuration of hulld.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: metadata store, content store, CNI cache.
    pub root_dir: PathBuf,
    /// Runtime state: per-sandbox dirs (sockets, console logs, shared dirs).
    pub state_dir: PathBuf,
    /// The CRI socket (its parent dir is created 0700).
    pub socket: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Reported to kubelet by the `RuntimeConfig` RPC; how host-isolation pods'
    /// `cgroup_parent` reads (a cgroupfs path, or a systemd slice name).
    pub cgroup_driver: CgroupDriver,
    /// The handler kubelet's `""` (no RuntimeClass) means: one of `runtimes`.
    pub default_runtime: String,
    /// Seconds between the passes that remove what belongs to no sandbox (run dirs, pod
    /// netns, CNI attachments whose DEL failed); 0 runs the pass only at start-up.
    pub cleanup_interval_secs: u64,
    pub vm: VmSection,
    pub cni: CniSection,
    pub streaming: StreamingSection,
    /// hulld's Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Registry mirrors, credentials and pull limits (`[registry]`, see `hull_image::RegistryConfig`).
    pub registry: hull_image::RegistryConfig,
    /// Runtime handlers by name (`[runtimes.<name>]`), see [`RuntimeHandler`].
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Who may run with host isolation (`[host_isolation]`).
    pub host_isolation: HostIsolationSection,
    /// What the node can hold (`[node]`): RunPodSandbox's memory admission.
    pub node: NodeSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Which VMM runs pods: `auto` picks hull-vmm where the host's KVM boots stock guests,
/// QEMU otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    Auto,
    Hull,
    Qemu,
}

/// Pod VM defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    pub vmm: VmmChoice,
    /// vCPUs of a pod VM whose sandbox config gives no CPU limit.
    pub default_vcpus: u32,
    /// Memory of a pod VM whose sandbox config gives no memory limit.
    pub default_memory_mib: u64,
    /// The guest kernel built by `packaging/guest/build.sh`.
    pub kernel: PathBuf,
    /// The guest initramfs (hull-agent as `/init`).
    pub initramfs: PathBuf,
    /// Extra guest kernel command-line arguments.
    pub kernel_params: String,
    /// Seconds to wait for the agent after the VMM started.
    pub agent_timeout_secs: u64,
    /// MiB added to the pod's memory limit (plus overhead) for the guest kernel and agent
    /// when the VM is sized from `linux.resources`.
    pub memory_overhead_mib: u64,
    /// Seconds a VM gets to exit at StopPodSandbox before it is killed.
    pub stop_grace_secs: u64,
    /// With hull-vmm: start pod VMs from a VM template (a guest booted to agent-ready once
    /// per kernel/initramfs/size, snapshotted, and restored for each pod) instead of booting
    /// each one. Restored VMs share the template's kernel address-space layout; each gets
    /// its own CRNG seed, clock and MAC from hulld at SetupSandbox. hulld makes the template
    /// of pods without resource requests when it starts.
    pub templates: bool,
    /// Bytes of a QEMU pod VM's guest console kept in its `console.log`; the rest is
    /// dropped (a guest cannot fill `/run`). hull-vmm keeps the same 64 MiB.
    pub console_log_max_bytes: u64,
}

/// CNI plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniSection {
    /// The lexically first `.conflist`/`.conf`/`.json` here is the pod network.
    pub conf_dir: PathBuf,
    /// Where CNI plugin binaries are searched, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Run the plugins inside this network namespace (a path such as `/run/netns/x`)
    /// instead of hulld's own: the "host" side of the pod network then lives there. For
    /// tests and benchmarks that must not touch the node's network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_netns: Option<PathBuf>,
}

/// Node-level limits: a pod the node cannot hold is refused with `ResourceExhausted`
/// before anything is taken (see `sandbox::capacity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Refuse pods whose VM the node's available memory cannot hold.
    pub memory_admission: bool,
    /// MiB of `MemAvailable` kept free for the node itself and for running pods' guests
    /// growing into RAM they have not touched yet.
    pub memory_headroom_mib: u64,
    /// MiB a pod costs the host outside its guest RAM (VMM, virtiofsd, vsock helper, page
    /// tables); measured in test/bench/README.md.
    pub pod_overhead_mib: u64,
}

/// The exec/attach/port-forward streaming server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingSection {
    /// `host:port`; port 0 picks a free one.
    pub address: String,
}

/// hulld's own metrics (Prometheus text format at `http://<address>/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port` to serve on, like containerd's `metrics.address`; empty (the default)
    /// turns the endpoint off. Plain HTTP: keep it on loopback or a node-internal address.
    pub address: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root_dir: PathBuf::from("/var/lib/hull"),
            state_dir: PathBuf::from("/run/hull"),
            socket: PathBuf::from("/run/hull/hull.sock"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_runtime: DEFAULT_RUNTIME.into(),
            cleanup_interval_secs: 300,
            vm: VmSection::default(),
            cni: CniSection::default(),
            streaming: StreamingSection::default(),
            metrics: MetricsSection::default(),
            registry: hull_image::RegistryConfig::default(),
            runtimes: default_runtimes(),
            host_isolation: HostIsolationSection::default(),
            node: NodeSection::default(),
        }
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            memory_admission: true,
            // kubelet evicts at 100 MiB available by default: hull stops admitting first.
            memory_headroom_mib: 512,
            pod_overhead_mib: 64,
        }
    }
}

impl Default for VmSection {
    fn default() -> Self {
        Self {
            vmm: VmmChoice::Auto,
            default_vcpus: 1,
            default_memory_mib: 256,
            // What packaging/guest/build.sh produces.
            kernel: PathBuf::from("/var/lib/hull/guest/vmlinux"),
            initramfs: PathBuf::from("/var/lib/hull/guest/initramfs.img"),
            kernel_params: String::new(),
            agent_timeout_secs: 60,
            memory_overhead_mib: 64,
            stop_grace_secs: 5,
            templates: true,
            console_log_max_bytes: hull_vm::qemu::console::MAX_CONSOLE_BYTES,
        }
    }
}

impl Default for CniSection {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            runtime_netns: None,
        }
    }
}

impl Default for StreamingSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".into(),
        }
    }
}

impl Config {
    /// Loads `path`. A missing file is an error only if `required` (an explicit
    /// `--config`); otherwise the defaults apply.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates a config document; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Syntax {
                path: path.to_owned(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            }
        })?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                path: path.to_owned(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().message().to_owned(),
            }
        })?;
        config.runtimes = runtimes::with_builtins(std::mem::take(&mut config.runtimes));
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                path: path.to_owned(),
                key: key.into(),
                message,
            })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges and absolute paths.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let absolute = [
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("vm.kernel", &self.vm.kernel),
            ("vm.initramfs", &self.vm.initramfs),
            ("cni.conf_dir", &self.cni.conf_dir),
        ];
        for (key, path) in absolute {
            if !path.is_absolute() {
                return Err((key, format!("must be an absolute path, got {path:?}")));
            }
        }
        if self.cni.bin_dirs.iter().any(|d| !d.is_absolute()) {
            return Err((
                "cni.bin_dirs",
                "every entry must be an absolute path".into(),
            ));
        }
        if !(1..=255).contains(&self.vm.default_vcpus) {
            return Err(("vm.default_vcpus", "must be between 1 and 255".into()));
        }
        if !(64..=1 << 20).contains(&self.vm.default_memory_mib) {
            return Err((
                "vm.default_memory_mib",
                "must be between 64 and 1048576".into(),
            ));
        }
        if self
            .cni
            .runtime_netns
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(("cni.runtime_netns", "must be an absolute path".into()));
        }
        if self.vm.memory_overhead_mib > 1 << 16 {
            return Err(("vm.memory_overhead_mib", "must be at most 65536".into()));
        }
        if self.node.memory_headroom_mib > 1 << 24 {
            return Err((
                "node.memory_headroom_mib",
                "must be at most 16777216".into(),
            ));
        }
        if self.node.pod_overhead_mib > 1 << 16 {
            return Err(("node.pod_overhead_mib", "must be at most 65536".into()));
        }
        if self.vm.stop_grace_secs > 3600 {
            return Err(("vm.stop_grace_secs", "must be at most 3600".into()));
        }
        if self.vm.agent_timeout_secs == 0 {
            return Err(("vm.agent_timeout_secs", "must be at least 1".into()));
        }
        if self
            .streaming
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err((
                "streaming.address",
                format!("{:?} is not an ip:port address", self.streaming.address),
            ));
        }
        runtimes::validate(&self.default_runtime, &self.runtimes, &self.host_isolation)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err((
                "log_level",
                format!("{:?} is not a log level or filter", self.log_level),
            ));
        }
        Ok(())
    }

    /// The config as pretty TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, paths and numbers cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    /// The handler a RunPodSandbox's `runtime_handler` names (`""`: the default), with
    /// its resolved name; `None` if no such handler is configured.
    pub fn runtime_handler(&self, name: &str) -> Option<(&str, &RuntimeHandler)> {
        let name = if name.is_empty() {
            self.default_runtime.as_str()
        } else {
            name
        };
        self.runtimes
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Where the metadata store lives.
    pub fn metadata_path(&self) -> PathBuf {
        self.root_dir.join("metadata.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn defaults_roundtrip_through_print_config() {
        let printed = Config::default().to_toml();
        assert_eq!(parse(&printed).unwrap(), Config::default());
    }

    #[test]
    fn the_installed_config_is_the_defaults_without_mirrors() {
        let shipped = include_str!("../../packaging/config.toml");
        let c = parse(shipped).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.registry.hosts.is_empty(), "{:?}", c.registry.hosts);
    }

    #[test]
    fn one_registry_host_keeps_the_other_registry_defaults() {
        let c = parse(
            "[registry.hosts.\"localhost:5000\"]\nauth = { username = \"u\", password = \"p\" }\n",
        )
        .unwrap();
        let defaults = hull_image::RegistryConfig::default();
        assert_eq!(c.registry.hosts.len(), 1);
        assert_eq!(c.registry.max_layer_bytes, defaults.max_layer_bytes);
        assert_eq!(c.registry.platform, defaults.platform);
        assert_eq!(c.registry.hosts["localhost:5000"].plain_http, None);
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("[vm]\ndefault_vcpus = 2\n").unwrap();
        assert_eq!(c.vm.default_vcpus, 2);
        assert_eq!(c.vm.default_memory_mib, 256);
        assert_eq!(c.socket, PathBuf::from("/run/hull/hull.sock"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[vm]\ndefault_vcpus = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`vm.default_vcpus`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = parse("[cni]\nconfdir = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("confdir"), "{err}");
    }

    #[test]
    fn bad_enum_value_names_the_key() {
        let err = parse("cgroup_driver = \"cgroupv3\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`cgroup_driver`"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let err = parse("[vm]\ndefault_vcpus = 0\n").unwrap_err().to_string();
        assert!(err.contains("`vm.default_vcpus`"), "{err}");
        let err = parse("socket = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`socket`"), "{err}");
        let err = parse("[streaming]\naddress = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`streaming.address`"), "{err}");
    }

    #[test]
    fn node_section_keys_and_ranges() {
        let c = parse("[node]\nmemory_headroom_mib = 2048\n").unwrap();
        assert_eq!(c.node.memory_headroom_mib, 2048);
        assert!(c.node.memory_admission);
        assert_eq!(
            c.node.pod_overhead_mib,
            NodeSection::default().pod_overhead_mib
        );
        let c = parse("[node]\nmemory_admission = false\n").unwrap();
        assert!(!c.node.memory_admission);
        let err = parse("[node]\npod_overhead_mib = 100000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`node.pod_overhead_mib`"), "{err}");
        let err = parse("[node]\nheadroom = 1\n").unwrap_err().to_string();
        assert!(err.contains("headroom"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = parse("log_level = \"info\"\nroot_dir = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn missing_default_file_is_fine_but_explicit_one_is_not() {
        let p = Path::new("/nonexistent/hull.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
