//! Builds a container's OCI spec from the CRI `ContainerConfig`, the image config and
//! the pod, with Kubernetes' (and containerd's) rules.
//!
//! The agent applies the spec inside the guest (see agent/src/container/spec.rs for the
//! fields it honours); fields it does not enforce yet are still emitted, so the spec is
//! complete and the gap is the agent's alone.

use std::collections::BTreeMap;
use std::path::Path;

use hull_cri_api as cri;

use super::oci;
use super::user;

/// The image config fields a container inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

impl ImageDefaults {
    /// Reads the `config` object of an OCI/Docker image config JSON (`Entrypoint`, `Cmd`,
    /// `Env`, `WorkingDir`, `User`, `StopSignal`); missing or odd fields are defaults.
    pub fn from_image_config(image_config: &serde_json::Value) -> Self {
        let c = &image_config["config"];
        let strings = |key: &str| -> Vec<String> {
            c[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
        Self {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: string("WorkingDir"),
            user: string("User"),
            stop_signal: string("StopSignal"),
        }
    }
}

/// The signal that stops a container: the image's StopSignal (`SIGQUIT`, `QUIT`, `3`),
/// else SIGTERM.
pub fn stop_signal(image_stop_signal: &str) -> i32 {
    use std::str::FromStr;
    let s = image_stop_signal.trim();
    if let Ok(n) = s.parse::<i32>()
        && nix::sys::signal::Signal::try_from(n).is_ok()
    {
        return n;
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|sig| sig as i32)
        .unwrap_or(nix::libc::SIGTERM)
}

/// A CRI mount already placed in the sandbox's share: `source` is its guest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    pub container_path: String,
    pub source: String,
    pub readonly: bool,
    /// Read-only all the way down (the host side is, see `volumes`).
    pub recursive_readonly: bool,
    /// The host source has mounts below it, which the guest sees as virtio-fs submounts.
    pub host_submounts: bool,
    pub propagation: cri::MountPropagation,
}

/// Everything the spec depends on besides the CRI config.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageDefaults,
    /// Host path of the container's rootfs (for /etc/passwd and /etc/group).
    pub host_rootfs: &'a Path,
    /// Guest path of the rootfs.
    pub guest_rootfs: &'a str,
    pub mounts: &'a [GuestMount],
    pub hostname: &'a str,
    pub pod_sysctls: &'a BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("No command specified: the config has no command/args and the image no Entrypoint/Cmd")]
    NoCommand,
    #[error("Cannot resolve the container user: {0}")]
    User(#[from] user::UserError),
    #[error("run_as_user {0} is out of range")]
    BadUid(i64),
    #[error("Unknown capability {0:?}")]
    BadCapability(String),
    #[error("Seccomp profile {path} cannot be used: {why}")]
    Seccomp { path: String, why: String },
    #[error("{0} is not an absolute container path")]
    BadPath(String),
    #[error("run_as_group is set without run_as_user or run_as_username")]
    GroupWithoutUser,
    #[error("Mount {0}: {1}")]
    BadMount(String, &'static str),
}

/// containerd's default capability set (`oci.DefaultCapabilities`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of Linux 6.1 (the agent's list).
pub use hull_agent_api::CAPABILITIES as ALL_CAPS;

/// containerd's default masked paths.
pub const DEFAULT_MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the spec.
pub fn build(input: &SpecInput<'_>) -> Result<oci::Spec, SpecError> {
    let c = input.config;
    let sc = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let caps = capabilities(&sc)?;
    let seccomp = seccomp::profile(&sc, &caps.bounding)?;
    let mut process = oci::Process {
        terminal: c.tty,
        user: resolve_user(input, &sc)?,
        args: process_args(c, input.image)?,
        env: merge_env(&input.image.env, &c.envs, input.hostname),
        cwd: working_dir(c, input.image),
        capabilities: Some(caps),
        no_new_privileges: sc.no_new_privs,
        oom_score_adj: None,
    };
    let resources = c.linux.as_ref().and_then(|l| l.resources.as_ref());
    if let Some(r) = resources.filter(|r| r.oom_score_adj != 0) {
        process.oom_score_adj = Some(r.oom_score_adj);
    }
    let mut linux = oci::Linux {
        namespaces: namespaces(&sc),
        resources: Some(oci::Resources {
            devices: device_rules(sc.privileged),
            ..resources.map(self::resources).unwrap_or_default()
        }),
        sysctl: input.pod_sysctls.clone(),
        seccomp,
        ..Default::default()
    };
    if !sc.privileged {
        linux.masked_paths = or_default(&sc.masked_paths, &DEFAULT_MASKED);
        linux.readonly_paths = or_default(&sc.readonly_paths, &DEFAULT_READONLY);
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    if let Some(m) = &c.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    Ok(oci::Spec {
        oci_version: "1.1.0".into(),
        process,
        root: oci::Root {
            path: input.guest_rootfs.to_owned(),
            readonly: sc.readonly_rootfs,
        },
        hostname: (!input.hostname.is_empty()).then(|| input.hostname.to_owned()),
        mounts: mounts(input, &sc)?,
        linux,
        annotations,
    })
}

fn or_default(given: &[String], default: &[&str]) -> Vec<String> {
    if given.is_empty() {
        default.iter().map(|s| (*s).to_owned()).collect()
    } else {
        given.to_vec()
    }
}

/// Kubernetes' rule (containerd `getProcessArgs`): a CRI command replaces the image's
/// Entrypoint and Cmd; CRI args alone replace only Cmd.
pub fn process_args(
    c: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<Vec<String>, SpecError> {
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(command)
}

/// Image env first; a CRI env var replaces the image's of the same name; PATH defaults.
pub fn merge_env(image: &[String], cri_env: &[cri::KeyValue], hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(image.len() + cri_env.len() + 2);
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_owned();
        match out
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = kv,
            None => out.push(kv),
        }
    };
    if !image.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH.to_owned());
    }
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    for e in image
        .iter()
        .filter(|e| e.contains('=') && !e.starts_with('='))
    {
        set(e.clone());
    }
    for kv in cri_env
        .iter()
        .filter(|kv| !kv.key.is_empty() && !kv.key.contains('='))
    {
        set(format!("{}={}", kv.key, kv.value));
    }
    out
}

fn working_dir(c: &cri::ContainerConfig, image: &ImageDefaults) -> String {
    [c.working_dir.as_str(), image.working_dir.as_str()]
        .into_iter()
        .find(|d| d.starts_with('/'))
        .unwrap_or("/")
        .to_owned()
}

/// run_as_user / run_as_username / the image's User, run_as_group, supplemental groups.
fn resolve_user(
    input: &SpecInput<'_>,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<oci::User, SpecError> {
    let rootfs = input.host_rootfs;
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(SpecError::GroupWithoutUser);
    }
    let mut u = if let Some(uid) = &sc.run_as_user {
        let id = u32::try_from(uid.value).map_err(|_| SpecError::BadUid(uid.value))?;
        user::resolve(rootfs, &id.to_string())?
    } else if !sc.run_as_username.is_empty() {
        user::resolve(rootfs, &sc.run_as_username)?
    } else {
        user::resolve(rootfs, &input.image.user)?
    };
    if let Some(g) = &sc.run_as_group {
        u.gid = u32::try_from(g.value).map_err(|_| SpecError::BadUid(g.value))?;
    }
    let mut gids = u.additional_gids;
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| SpecError::BadUid(*g))?;
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    Ok(oci::User {
        uid: u.uid,
        gid: u.gid,
        additional_gids: gids,
    })
}

fn cap_name(c: &str) -> Result<String, SpecError> {
    let upper = c.to_ascii_uppercase();
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(SpecError::BadCapability(c.to_owned()))
    }
}

/// A privileged container's capabilities: every one hulld's bounding set has
/// (`CapBnd` of `/proc/<pid>/status`), as containerd's `WithAllCurrentCapabilities`: a node
/// whose init dropped some (this project's build machines drop CAP_SYS_RESOURCE) cannot
/// give them to a host pod's container, where the agent's capset would fail. Every cap if
/// the status cannot be read.
fn current_caps(status: &str) -> Vec<String> {
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// The default set, then drops, then adds ("ALL" in either); all of the node's when
/// privileged.
pub fn capabilities(
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<oci::Capabilities, SpecError> {
    let mut caps: Vec<String> = if sc.privileged {
        current_caps(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
    } else {
        let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| (*s).to_owned()).collect();
        let empty = cri::Capability::default();
        let spec = sc.capabilities.as_ref().unwrap_or(&empty);
        let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
        if spec.drop_capabilities.iter().any(is_all) {
            caps.clear();
        }
        for d in spec.drop_capabilities.iter().filter(|c| !is_all(c)) {
            let d = cap_name(d)?;
            caps.retain(|c| *c != d);
        }
        if spec.add_capabilities.iter().any(is_all) {
            caps = ALL_CAPS.iter().map(|s| (*s).to_owned()).collect();
        }
        for a in spec.add_capabilities.iter().filter(|c| !is_all(c)) {
            let a = cap_name(a)?;
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
        caps
    };
    caps.sort();
    let ambient = match &sc.capabilities {
        Some(c) if !sc.privileged => c
            .add_ambient_capabilities
            .iter()
            .map(|a| cap_name(a))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(oci::Capabilities {
        bounding: caps.clone(),
        effective: caps.clone(),
        permitted: caps,
        ambient,
    })
}

/// The VM is the pod: pod-level (and node-level) PID/IPC namespaces are the guest's, a
/// per-container PID namespace is a new one. Mount and cgroup namespaces are always new.
fn namespaces(sc: &cri::LinuxContainerSecurityContext) -> Vec<oci::Namespace> {
    let mut kinds = vec!["mount", "cgroup"];
    let ns = sc.namespace_options.clone().unwrap_or_default();
    if ns.pid == cri::NamespaceMode::Container as i32 {
        kinds.push("pid");
    }
    if ns.ipc == cri::NamespaceMode::Container as i32 {
        kinds.push("ipc");
    }
    kinds
        .into_iter()
        .map(|k| oci::Namespace { kind: k.to_owned() })
        .collect()
}

/// containerd's device cgroup rules: a privileged container may use every device; any
/// other only the standard character devices (and mknod, which alone opens nothing).
/// Enforced where the container's cgroup is v1 (host-isolation pods on a v1 node).
pub fn device_rules(privileged: bool) -> Vec<oci::DeviceRule> {
    let rule = |allow, kind, major, minor, access| oci::DeviceRule {
        allow,
        kind,
        major,
        minor,
        access,
    };
    if privileged {
        return vec![rule(true, None, None, None, "rwm")];
    }
    let mut out = vec![
        rule(false, None, None, None, "rwm"),
        rule(true, Some("c"), None, None, "m"),
        rule(true, Some("b"), None, None, "m"),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        out.push(rule(true, Some("c"), Some(major), Some(minor), "rwm"));
    }
    out.push(rule(true, Some("c"), Some(136), None, "rwm"));
    out
}

/// CRI resources → OCI cgroup resources (the agent writes them as cgroup v2 files).
pub fn resources(r: &cri::LinuxContainerResources) -> oci::Resources {
    let positive = |v: i64| (v > 0).then_some(v);
    let cpu = oci::Cpu {
        shares: positive(r.cpu_shares).and_then(|v| u64::try_from(v).ok()),
        quota: positive(r.cpu_quota),
        period: positive(r.cpu_period).and_then(|v| u64::try_from(v).ok()),
        cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
    };
    let memory = oci::Memory {
        limit: positive(r.memory_limit_in_bytes),
        swap: positive(r.memory_swap_limit_in_bytes),
    };
    let mut unified: BTreeMap<String, String> = r
        .unified
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pids = unified
        .remove("pids.max")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|limit| oci::Pids { limit });
    oci::Resources {
        memory: (memory != oci::Memory::default()).then_some(memory),
        cpu: (cpu != oci::Cpu::default()).then_some(cpu),
        pids,
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| oci::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified,
        devices: Vec::new(),
    }
}

/// The container's mounts: the standard ones, then the CRI mounts (which win at the same
/// destination), sorted parent-first. A read-only rootfs is a read-only bind of `/` first.
fn mounts(
    input: &SpecInput<'_>,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<Vec<oci::Mount>, SpecError> {
    let m = |dest: &str, kind: &str, src: &str, opts: &[&str]| oci::Mount {
        destination: dest.to_owned(),
        kind: kind.to_owned(),
        source: src.to_owned(),
        options: opts.iter().map(|s| (*s).to_owned()).collect(),
    };
    let sys_ro = if sc.privileged { "rw" } else { "ro" };
    let mut out = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_ro],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_ro],
        ),
    ];
    for gm in input.mounts {
        if !gm.container_path.starts_with('/') || gm.container_path.split('/').any(|c| c == "..") {
            return Err(SpecError::BadPath(gm.container_path.clone()));
        }
        let dest = gm.container_path.trim_end_matches('/');
        let dest = if dest.is_empty() { "/" } else { dest };
        out.retain(|o| o.destination != dest);
        let propagation = match gm.propagation {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => "rslave",
            cri::MountPropagation::PropagationBidirectional => "rshared",
        };
        // A guest submount takes the flags of the mount it appears under, so a read-only
        // bind in the guest would be recursive. Non-recursive read-only over submounts is
        // left to the host side, which is read-only at the top only.
        let guest_ro = gm.readonly && (gm.recursive_readonly || !gm.host_submounts);
        let rw = if guest_ro { "ro" } else { "rw" };
        let mut mount = m(dest, "bind", &gm.source, &["rbind", propagation, rw]);
        if gm.recursive_readonly {
            mount.options.push("rro".into());
        }
        out.push(mount);
    }
    // Parents before children (containerd sorts by path depth). A read-only rootfs is
    // `root.readonly`: the agent remounts the root read-only after every mount.
    out.sort_by_key(|o| o.destination.split('/').filter(|c| !c.is_empty()).count());
    Ok(out)
}

#[path = "seccomp.rs"]
pub mod seccomp;

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
