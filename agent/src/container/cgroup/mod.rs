//! Per-container cgroups: where they go ([`Placement`]), limits from the OCI resources and
//! the CRI's updates, stats, OOM counts, and kill-all on remove.
//!
//! In a pod VM the guest has cgroup v2 only, and containers live at
//! `/sys/fs/cgroup/hull/<id>`. A host-isolation pod's containers live on the node's
//! cgroups, which may be v2 (unified), v1, or hybrid (v1 controllers plus an empty
//! unified hierarchy, as on this project's build hosts): [`Placement::host`] finds the
//! mounted hierarchies, and each container gets a directory `<parent>/<id>` in every one
//! of them (runc's layout; `<parent>` is the pod's `cgroup_parent` from kubelet), limits
//! go where the controllers are ([`v1`] or [`v2`] files), and a container process joins
//! all of them.

pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

use hull_agent_api::v1::{HugepageLimit, LinuxResources};
use serde::{Deserialize, Serialize};

use super::spec::{DeviceRule, Resources};

/// Errors from cgroup file operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Failed to create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to write {file}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid resource value: {0}")]
    Invalid(String),
    #[error("The {0} cgroup controller is not mounted on this host")]
    NoController(&'static str),
    #[error("Failed to remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
}

/// A container's numbers, in the units of cgroup v2's files (µs, bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub memory_current_bytes: u64,
    /// 0: no limit.
    pub memory_max_bytes: u64,
    pub memory_anon_bytes: u64,
    pub memory_file_bytes: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
}

/// One container's cgroup: its directory in each hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// The unified (v2) directory: where the limits are on a v2 host; an extra,
    /// controller-less one on a hybrid host.
    pub unified: Option<PathBuf>,
    /// v1 directories with their hierarchy's controllers (empty on a v2 host).
    pub v1: Vec<(Vec<String>, PathBuf)>,
}

impl Cgroup {
    /// Whether the limits are cgroup v1 files.
    pub fn is_v1(&self) -> bool {
        !self.v1.is_empty()
    }

    /// The v1 directory of the hierarchy with `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, d)| d.as_path())
    }

    /// Every directory, v1 first.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(_, d)| d.as_path())
            .chain(self.unified.as_deref())
    }

    /// Moves `pid` (in the caller's PID namespace) into every directory.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }
}

/// Where containers' cgroups are made: the mounted hierarchies and the parent path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Mount point of the unified hierarchy, if any.
    unified: Option<PathBuf>,
    /// Mount points of the v1 hierarchies, with their controllers.
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The parent cgroup, absolute within each hierarchy (`/hull`, `/kubepods/pod<uid>`).
    parent: String,
}

/// The v1 controllers (or named hierarchies) a container joins.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

impl Placement {
    /// In a pod VM: cgroup v2 at /sys/fs/cgroup, containers under `/hull`.
    pub fn guest() -> Self {
        Self {
            unified: Some(PathBuf::from("/sys/fs/cgroup")),
            v1: Vec::new(),
            parent: "/hull".into(),
        }
    }

    /// On the node: the hierarchies mounted there, containers under `parent`.
    pub fn host(parent: String) -> Result<Self, CgroupError> {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        let mut p = Self::from_mountinfo(&info);
        p.parent = parent;
        Ok(p)
    }

    /// The hierarchy roots in `mountinfo` (mounts of a hierarchy's root only; the first
    /// mount of each).
    fn from_mountinfo(mountinfo: &str) -> Self {
        let mut p = Self {
            unified: None,
            v1: Vec::new(),
            parent: String::new(),
        };
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, _source, opts) = (right.next(), right.next(), right.next());
            let point = PathBuf::from(hull_agent_api::mountinfo::unescape(point));
            if *root != "/" {
                continue;
            }
            match fstype {
                Some("cgroup2") if p.unified.is_none() => p.unified = Some(point),
                Some("cgroup") => {
                    let controllers: Vec<String> = opts
                        .unwrap_or_default()
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    let seen = p.v1.iter().any(|(c, _)| *c == controllers);
                    if !controllers.is_empty() && !seen {
                        p.v1.push((controllers, point));
                    }
                }
                _ => {}
            }
        }
        p
    }

    /// The unified hierarchy's mount point and the v1 ones with their controllers.
    pub fn hierarchies(&self) -> (Option<&Path>, &[(Vec<String>, PathBuf)]) {
        (self.unified.as_deref(), &self.v1)
    }

    /// The cgroup of container `id`.
    pub fn cgroup_of(&self, id: &str) -> Cgroup {
        let rel = format!("{}/{id}", self.parent.trim_end_matches('/'));
        let at = |mount: &Path| mount.join(rel.trim_start_matches('/'));
        Cgroup {
            unified: self.unified.as_deref().map(at),
            v1: self.v1.iter().map(|(c, m)| (c.clone(), at(m))).collect(),
        }
    }

    /// The parent's directories (to remove a parent hull made, once empty).
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        let rel = self.parent.trim_start_matches('/');
        self.v1
            .iter()
            .map(|(_, m)| m.join(rel))
            .chain(self.unified.as_deref().map(|m| m.join(rel)))
            .collect()
    }

    /// Creates container `id`'s cgroup with its limits and device rules.
    pub fn create(&self, id: &str, resources: Option<&Resources>) -> Result<Cgroup, CgroupError> {
        let cg = self.cgroup_of(id);
        let v2_limits = self.v1.is_empty();
        if let (Some(mount), Some(dir)) = (&self.unified, &cg.unified) {
            make_dirs(mount, dir, v2_limits)?;
        }
        for ((_, mount), (controllers, dir)) in self.v1.iter().zip(&cg.v1) {
            let cpuset = controllers.iter().any(|c| c == "cpuset");
            if let Err(e) = make_v1_dirs(mount, dir, cpuset) {
                remove_dirs(&cg);
                return Err(e);
            }
        }
        if let Some(r) = resources
            && let Err(e) = apply(&cg, r)
        {
            remove_dirs(&cg);
            return Err(e);
        }
        Ok(cg)
    }
}

/// Creates `dir` and the levels between `mount` and it; on v2 with limits, each level
/// above the container enables the controllers its parent has for its children.
fn make_dirs(mount: &Path, dir: &Path, enable: bool) -> Result<(), CgroupError> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut at = mount.to_path_buf();
    for part in rel.components() {
        if enable {
            enable_controllers(&at);
        }
        at.push(part);
        if !at.exists() {
            std::fs::create_dir(&at).map_err(|source| CgroupError::Create {
                path: at.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// `+<controller>` for every controller `dir` has, into its subtree_control. Best effort:
/// a level with processes of its own cannot (the container's limits then fail clearly).
fn enable_controllers(dir: &Path) {
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = controllers
        .split_whitespace()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), missing.join(" ")) {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot enable cgroup controllers");
    }
}

/// v1 levels down to `dir`; a new cpuset level gets its parent's cpus and mems (a v1
/// cpuset starts empty and takes no process until they are set).
fn make_v1_dirs(mount: &Path, dir: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut at = mount.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        if at.exists() {
            continue;
        }
        std::fs::create_dir(&at).map_err(|source| CgroupError::Create {
            path: at.clone(),
            source,
        })?;
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                write(&at.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// The container's resources at create, as an update of a fresh cgroup (one mapping for
/// both). Hugepage sizes that are not a plain size (`2MB`) are skipped, as sizes the
/// kernel has no file for are.
fn apply(cg: &Cgroup, r: &Resources) -> Result<(), CgroupError> {
    let cpu = r.cpu.clone().unwrap_or_default();
    let fresh = LinuxResources {
        cpu_shares: cpu.shares.unwrap_or(0),
        cpu_quota: cpu.quota.filter(|q| *q > 0).unwrap_or(0),
        cpu_period: if cpu.quota.is_some_and(|q| q > 0) {
            cpu.period.unwrap_or(0)
        } else {
            0
        },
        cpuset_cpus: cpu.cpus.unwrap_or_default(),
        cpuset_mems: cpu.mems.unwrap_or_default(),
        memory_limit_bytes: r
            .memory
            .as_ref()
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .unwrap_or(0),
        memory_swap_limit_bytes: r
            .memory
            .as_ref()
            .and_then(|m| m.swap)
            .filter(|l| *l > 0)
            .unwrap_or(0),
        unified: r.unified.clone().into_iter().collect(),
        pids_limit: r
            .pids
            .as_ref()
            .map(|p| p.limit)
            .filter(|l| *l > 0)
            .unwrap_or(0),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .filter(|h| {
                !h.page_size.is_empty() && h.page_size.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .map(|h| HugepageLimit {
                page_size: h.page_size.clone(),
                limit_bytes: h.limit,
            })
            .collect(),
    };
    update(cg, &fresh)?;
    if cg.is_v1() {
        apply_devices(cg, &r.devices)?;
    }
    Ok(())
}

/// OCI `linux.resources.devices` on v1, in order (on v2 a device filter is a BPF program,
/// which hull does not load: the guest of a VM pod has no host devices to protect).
fn apply_devices(cg: &Cgroup, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    if rules.is_empty() {
        return Ok(());
    }
    let dir = cg
        .v1_dir("devices")
        .ok_or(CgroupError::NoController("devices"))?;
    for rule in rules {
        let (file, line) = rule.v1_line().map_err(CgroupError::Invalid)?;
        write(&dir.join(file), &line)?;
    }
    Ok(())
}

/// Applies new limits (UpdateContainerResources, and the limits at create).
pub fn update(cg: &Cgroup, r: &LinuxResources) -> Result<(), CgroupError> {
    if !cg.is_v1() {
        let dir = cg
            .unified
            .as_deref()
            .ok_or(CgroupError::NoController("unified"))?;
        return v2::update(dir, r);
    }
    let current = |file: &str| {
        cg.v1_dir("memory")
            .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let writes = v1::update_writes(
        r,
        current("memory.limit_in_bytes"),
        current("memory.memsw.limit_in_bytes"),
    )?;
    for (controller, file, value) in writes {
        let optional = controller == "hugetlb" || file.starts_with("memory.memsw.");
        let Some(dir) = cg.v1_dir(controller) else {
            if optional {
                continue;
            }
            return Err(CgroupError::NoController(controller));
        };
        let target = dir.join(&file);
        if optional && !target.exists() {
            tracing::info!(file, "cgroup file absent: skipped");
            continue;
        }
        tracing::debug!(file, value, "cgroup write");
        write(&target, &value)?;
    }
    Ok(())
}

/// The container's stats, whichever cgroup version holds them.
pub fn stats(cg: &Cgroup) -> Stats {
    match (&cg.unified, cg.is_v1()) {
        (_, true) => v1::stats(cg),
        (Some(dir), false) => v2::stats(dir),
        (None, false) => Stats::default(),
    }
}

pub(super) fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(file, value).map_err(|source| CgroupError::Write {
        file: file.to_owned(),
        source,
    })
}

fn remove_dirs(cg: &Cgroup) {
    for dir in cg.dirs() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The pids in the cgroup's directories (in this PID namespace's view).
fn pids(cg: &Cgroup) -> Vec<i32> {
    let mut out: Vec<i32> = cg
        .dirs()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .filter(|p| *p > 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// SIGKILLs everything in the cgroup: `cgroup.kill` on v2; on v1 the freezer holds the
/// processes still (so none forks away) while each gets SIGKILL.
fn kill_all(cg: &Cgroup) {
    if let Some(dir) = &cg.unified
        && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
        && !cg.is_v1()
    {
        return;
    }
    let freezer = cg.v1_dir("freezer").map(|d| d.join("freezer.state"));
    if let Some(f) = &freezer {
        let _ = std::fs::write(f, "FROZEN");
    }
    for pid in pids(cg) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    if let Some(f) = &freezer {
        let _ = std::fs::write(f, "THAWED");
    }
}

/// Kills every process in the cgroup and removes its directories (retrying while they
/// exit). Idempotent.
pub async fn destroy(cg: &Cgroup) -> Result<(), CgroupError> {
    let mut last = None;
    for attempt in 0..150 {
        let left: Vec<&Path> = cg.dirs().filter(|d| d.exists()).collect();
        if left.is_empty() {
            return Ok(());
        }
        if attempt % 10 == 0 {
            kill_all(cg);
        }
        for dir in left {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => last = Some((dir.to_owned(), e)),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    match last {
        Some((path, source)) => Err(CgroupError::Remove { path, source }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
