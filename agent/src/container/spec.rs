//! The subset of the OCI runtime spec (config.json) the agent implements, with validation.
//! Unknown fields are ignored; fields that matter but are not implemented (user namespaces)
//! are rejected rather than silently dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: String,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// None keeps every capability (uid 0 in the guest); see [`super::caps`].
    pub capabilities: Option<super::caps::Capabilities>,
}

/// OCI `root`: the path comes from the CreateContainer request; only `readonly` is read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub readonly: bool,
}

fn root_dir() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    pub resources: Option<Resources>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    pub seccomp: Option<super::seccomp::Seccomp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(default, rename = "hugepageLimits")]
    pub hugepage_limits: Vec<HugepageLimit>,
    /// The device cgroup rules, in order (applied on cgroup v1 hosts, see `cgroup`).
    #[serde(default)]
    pub devices: Vec<DeviceRule>,
    /// Raw cgroup v2 files (`memory.high`).
    #[serde(default)]
    pub unified: BTreeMap<String, String>,
}

/// OCI `linux.resources.devices[]`: allow or deny access to devices of a type and number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a` (all), `c` or `b`; absent is all.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    /// Some of `rwm`; absent is all three.
    pub access: Option<String>,
}

impl DeviceRule {
    /// The v1 file (`devices.allow`/`devices.deny`) and line (`c 1:3 rwm`, `a`).
    pub fn v1_line(&self) -> Result<(&'static str, String), String> {
        let file = if self.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        let kind = self.kind.as_deref().unwrap_or("a");
        if !matches!(kind, "a" | "c" | "b") {
            return Err(format!("device type {kind:?}"));
        }
        let access = self.access.as_deref().unwrap_or("rwm");
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(format!("device access {access:?}"));
        }
        let number = |n: Option<i64>| match n {
            None | Some(-1) => Ok("*".to_owned()),
            Some(n) if n >= 0 => Ok(n.to_string()),
            Some(n) => Err(format!("device number {n}")),
        };
        let (major, minor) = (number(self.major)?, number(self.minor)?);
        if kind == "a" && major == "*" && minor == "*" {
            return Ok((file, "a".to_owned()));
        }
        Ok((file, format!("{kind} {major}:{minor} {access}")))
    }
}

/// OCI `linux.resources.hugepageLimits[]`: `pageSize` as in the cgroup files (`2MB`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    pub limit: Option<i64>,
    /// Memory plus swap (the CRI's and runc's meaning).
    pub swap: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pids {
    pub limit: i64,
}

/// Validation errors (reported as `InvalidArgument`).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("OCI spec is not valid JSON for the supported subset: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("OCI spec has no process")]
    NoProcess,
    #[error("process.args is empty")]
    NoArgs,
    #[error("{field} {value:?} must be an absolute path without '..'")]
    BadPath { field: &'static str, value: String },
    #[error("process.env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("{0} namespaces are not supported")]
    UnsupportedNamespace(String),
    #[error("rlimit {0:?} is unknown")]
    BadRlimit(String),
    #[error("linux.seccomp: {0}")]
    Seccomp(String),
    #[error("process.capabilities: {0}")]
    Capabilities(String),
    #[error("a string in the spec contains a NUL byte")]
    Nul,
}

/// An absolute path with no `..` component and no NUL.
pub fn check_path(field: &'static str, value: &str) -> Result<(), SpecError> {
    if !value.starts_with('/') || value.split('/').any(|c| c == "..") || value.contains('\0') {
        return Err(SpecError::BadPath {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl Process {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.args.is_empty() {
            return Err(SpecError::NoArgs);
        }
        check_path("process.cwd", &self.cwd)?;
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(SpecError::BadEnv(e.clone()));
            }
        }
        let strings = self.args.iter().chain(&self.env);
        if strings.into_iter().any(|s| s.contains('\0')) {
            return Err(SpecError::Nul);
        }
        if let Some(caps) = &self.capabilities {
            caps.validate().map_err(SpecError::Capabilities)?;
        }
        for r in &self.rlimits {
            rlimit_resource(&r.kind).ok_or_else(|| SpecError::BadRlimit(r.kind.clone()))?;
        }
        Ok(())
    }
}

impl Spec {
    pub fn parse(json: &[u8]) -> Result<Self, SpecError> {
        let spec: Spec = serde_json::from_slice(json)?;
        spec.process
            .as_ref()
            .ok_or(SpecError::NoProcess)?
            .validate()?;
        for m in &spec.mounts {
            check_path("mounts[].destination", &m.destination)?;
        }
        if let Some(linux) = &spec.linux {
            for ns in &linux.namespaces {
                if ns.kind == "user" {
                    return Err(SpecError::UnsupportedNamespace(ns.kind.clone()));
                }
            }
            if let Some(profile) = &linux.seccomp {
                super::seccomp::compile(profile).map_err(SpecError::Seccomp)?;
            }
            for p in linux.masked_paths.iter().chain(&linux.readonly_paths) {
                check_path("linux.maskedPaths/readonlyPaths", p)?;
            }
        }
        Ok(spec)
    }

    pub fn readonly_root(&self) -> bool {
        self.root.as_ref().is_some_and(|r| r.readonly)
    }

    pub fn seccomp(&self) -> Option<&super::seccomp::Seccomp> {
        self.linux.as_ref().and_then(|l| l.seccomp.as_ref())
    }

    /// Whether the spec asks for a new namespace of this kind (no `path`).
    pub fn wants_namespace(&self, kind: &str) -> bool {
        self.linux.as_ref().is_some_and(|l| {
            l.namespaces
                .iter()
                .any(|n| n.kind == kind && n.path.is_none())
        })
    }
}

/// An exec's process: the container's own process (user, groups, capabilities,
/// no_new_privileges, rlimits, env, cwd) with the fields the exec request sets replacing
/// it, as containerd builds an exec spec from the container's. `env` entries are merged by
/// name (the exec's win); `args` must be given.
///
/// hulld sends a JSON OCI `process` object; any field it leaves out is the container's.
pub fn exec_process(base: &Process, exec_json: &[u8]) -> Result<Process, SpecError> {
    let overlay: serde_json::Value = serde_json::from_slice(exec_json)?;
    let serde_json::Value::Object(overlay) = overlay else {
        return Err(SpecError::NoProcess);
    };
    if !overlay.contains_key("args") {
        return Err(SpecError::NoArgs);
    }
    let mut merged = serde_json::to_value(base)?;
    let base_env = base.env.clone();
    if let serde_json::Value::Object(fields) = &mut merged {
        for (key, value) in overlay {
            fields.insert(key, value);
        }
    }
    let mut process: Process = serde_json::from_value(merged)?;
    let mut env = base_env;
    for e in std::mem::take(&mut process.env) {
        let key = e.split('=').next().unwrap_or_default().to_owned();
        match env
            .iter_mut()
            .find(|b| b.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = e,
            None => env.push(e),
        }
    }
    process.env = env;
    process.validate()?;
    Ok(process)
}

/// Maps an OCI rlimit name (`RLIMIT_NOFILE`) to the libc resource.
pub fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_runc_style_spec() {
        let json = br#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},
            "args":["sh","-c","exit 3"],"env":["PATH=/bin"],"cwd":"/",
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}]},
            "root":{"path":"rootfs"},"hostname":"c1",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"}],
            "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/x"}],
            "resources":{"memory":{"limit":67108864},"pids":{"limit":100}}}}"#;
        let spec = Spec::parse(json).expect("valid");
        assert!(spec.wants_namespace("pid"));
        assert!(!spec.wants_namespace("network"));
        assert_eq!(spec.mounts.len(), 1);
    }

    #[test]
    fn execs_inherit_the_container_process() {
        let json = br#"{"process":{"user":{"uid":1001,"gid":1002,"additionalGids":[5]},
            "args":["sleep","9"],"env":["PATH=/c","A=1"],"cwd":"/work","noNewPrivileges":true,
            "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}},
            "root":{"path":"x","readonly":true}}"#;
        let spec = Spec::parse(json).expect("valid");
        assert!(spec.readonly_root());
        let base = spec.process.expect("process");
        let exec = br#"{"args":["id","-u"],"env":["PATH=/e","B=2"]}"#;
        let p = exec_process(&base, exec).expect("exec");
        assert_eq!(p.args, ["id", "-u"]);
        assert_eq!((p.user.uid, p.user.gid), (1001, 1002));
        assert_eq!(p.user.additional_gids, [5]);
        assert_eq!(p.env, ["PATH=/e", "A=1", "B=2"]);
        assert_eq!(p.cwd, "/work");
        assert!(p.no_new_privileges);
        let caps = p.capabilities.expect("caps");
        assert_eq!(caps.bounding, ["CAP_KILL"]);
        let p = exec_process(&base, br#"{"args":["x"],"cwd":"/","user":{"uid":0}}"#).expect("exec");
        assert_eq!((p.cwd.as_str(), p.user.uid, p.user.gid), ("/", 0, 0));
        assert!(
            exec_process(&base, br#"{"env":["A=2"]}"#).is_err(),
            "args are required"
        );
        assert!(exec_process(&base, br#"{"args":[]}"#).is_err());
        assert!(exec_process(&base, b"[]").is_err());
    }

    #[test]
    fn rejects_bad_specs() {
        let bad: [&[u8]; 7] = [
            b"{",
            br#"{"hostname":"x"}"#,
            br#"{"process":{"args":[]}}"#,
            br#"{"process":{"args":["a"],"cwd":"rel"}}"#,
            br#"{"process":{"args":["a"],"env":["NOEQUALS"]}}"#,
            br#"{"process":{"args":["a"]},"mounts":[{"destination":"/a/../../etc"}]}"#,
            br#"{"process":{"args":["a"]},"linux":{"namespaces":[{"type":"user"}]}}"#,
        ];
        for json in bad {
            assert!(
                Spec::parse(json).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }
}
