//! Per-container cgroup v2 directories under `/sys/fs/cgroup/hull/<id>`: limits from the
//! OCI resources, stats, OOM counts, and kill-all on remove.

use std::path::{Path, PathBuf};

use super::spec::Resources;

pub const ROOT: &str = "/sys/fs/cgroup/hull";

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
    #[error("Failed to remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the container's cgroup and applies its limits.
pub fn create(id: &str, resources: Option<&Resources>) -> Result<PathBuf, CgroupError> {
    let parent = Path::new(ROOT);
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(|source| CgroupError::Create {
            path: parent.to_owned(),
            source,
        })?;
        let controllers =
            std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        write(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
    }
    let path = parent.join(id);
    std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
        path: path.clone(),
        source,
    })?;
    if let Some(r) = resources
        && let Err(e) = apply(&path, r)
    {
        let _ = std::fs::remove_dir(&path);
        return Err(e);
    }
    Ok(path)
}

fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(file, value).map_err(|source| CgroupError::Write {
        file: file.to_owned(),
        source,
    })
}

fn apply(path: &Path, r: &Resources) -> Result<(), CgroupError> {
    if let Some(limit) = r.memory.as_ref().and_then(|m| m.limit)
        && limit > 0
    {
        write(&path.join("memory.max"), &limit.to_string())?;
    }
    if let Some(cpu) = &r.cpu {
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            // The runc/crun conversion from cgroup v1 shares to v2 weight.
            let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write(&path.join("cpu.weight"), &weight.to_string())?;
        }
        if let Some(quota) = cpu.quota.filter(|q| *q > 0) {
            let period = cpu.period.unwrap_or(100_000);
            write(&path.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(cpus) = cpu.cpus.as_deref().filter(|c| !c.is_empty()) {
            write(&path.join("cpuset.cpus"), cpus)?;
        }
    }
    if let Some(p) = r.pids.as_ref().filter(|p| p.limit > 0) {
        write(&path.join("pids.max"), &p.limit.to_string())?;
    }
    Ok(())
}

/// Kills every process in the cgroup and removes it (retrying while they exit).
pub async fn destroy(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(CgroupError::Remove {
        path: path.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("busy")),
    })
}

/// Reads `key value` lines (cpu.stat, memory.stat, memory.events) into a lookup.
pub fn flat_keyed(path: &Path, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(path.join(file))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// Reads a single-value file; "max" and errors read as 0.
pub fn single(path: &Path, file: &str) -> u64 {
    std::fs::read_to_string(path.join(file))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_keyed_and_single_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\noom 2\noom_kill 1\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("memory.max"), "max\n").expect("write");
        std::fs::write(dir.path().join("memory.current"), "4096\n").expect("write");
        assert_eq!(flat_keyed(dir.path(), "memory.events", "oom_kill"), 1);
        assert_eq!(flat_keyed(dir.path(), "memory.events", "missing"), 0);
        assert_eq!(single(dir.path(), "memory.max"), 0);
        assert_eq!(single(dir.path(), "memory.current"), 4096);
    }
}
