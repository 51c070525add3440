//! cgroup v2 (unified) files: the limits an update writes, stats and OOM counts.

use std::path::Path;

use hull_agent_api::v1::LinuxResources;

use super::{CgroupError, Stats, write};

/// The runc/crun conversion from cgroup v1 shares to v2 weight.
fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// A cpuset list: digits, commas and ranges only.
pub(super) fn cpuset(list: &str) -> Result<&str, CgroupError> {
    let ok = list
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-');
    if ok && list.len() <= 1024 {
        Ok(list)
    } else {
        Err(CgroupError::Invalid(format!("cpuset {list:?}")))
    }
}

pub(super) fn limit_or_max(v: i64) -> String {
    if v < 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// The files and values an update writes, in order (unset fields leave files alone).
/// `cpu_max` is the cgroup's current `cpu.max`, for a quota or period given alone.
pub fn update_writes(
    r: &LinuxResources,
    cpu_max: &str,
) -> Result<Vec<(String, String)>, CgroupError> {
    let mut w: Vec<(String, String)> = Vec::new();
    if r.cpu_shares > 0 {
        w.push((
            "cpu.weight".into(),
            shares_to_weight(r.cpu_shares).to_string(),
        ));
    }
    if r.cpu_quota != 0 || r.cpu_period > 0 {
        let mut cur = cpu_max.split_whitespace();
        let (cur_quota, cur_period) = (cur.next().unwrap_or("max"), cur.next().unwrap_or("100000"));
        let quota = match r.cpu_quota {
            0 => cur_quota.to_owned(),
            q => limit_or_max(q),
        };
        let period = match r.cpu_period {
            0 => cur_period.to_owned(),
            p => p.to_string(),
        };
        w.push(("cpu.max".into(), format!("{quota} {period}")));
    }
    if !r.cpuset_cpus.is_empty() {
        w.push(("cpuset.cpus".into(), cpuset(&r.cpuset_cpus)?.to_owned()));
    }
    if !r.cpuset_mems.is_empty() {
        w.push(("cpuset.mems".into(), cpuset(&r.cpuset_mems)?.to_owned()));
    }
    if r.memory_limit_bytes != 0 {
        w.push(("memory.max".into(), limit_or_max(r.memory_limit_bytes)));
        if r.memory_swap_limit_bytes != 0 {
            let swap = match (r.memory_limit_bytes, r.memory_swap_limit_bytes) {
                (m, s) if m > 0 && s > 0 => (s - m).max(0).to_string(),
                _ => "max".to_owned(),
            };
            w.push(("memory.swap.max".into(), swap));
        }
    }
    if r.pids_limit != 0 {
        w.push(("pids.max".into(), limit_or_max(r.pids_limit)));
    }
    for h in &r.hugepage_limits {
        let size_ok = !h.page_size.is_empty()
            && h.page_size.len() <= 8
            && h.page_size.bytes().all(|b| b.is_ascii_alphanumeric());
        if !size_ok {
            return Err(CgroupError::Invalid(format!(
                "hugepage size {:?}",
                h.page_size
            )));
        }
        w.push((
            format!("hugetlb.{}.max", h.page_size),
            h.limit_bytes.to_string(),
        ));
    }
    let mut unified: Vec<_> = r.unified.iter().collect();
    unified.sort();
    for (file, value) in unified {
        let name_ok = !file.is_empty()
            && file.len() <= 64
            && !file.starts_with('.')
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
        if !name_ok || !file.contains('.') {
            return Err(CgroupError::Invalid(format!("cgroup file {file:?}")));
        }
        w.push((file.clone(), value.clone()));
    }
    Ok(w)
}

/// Applies limits to a cgroup (at create, and UpdateContainerResources). Files the kernel
/// lacks are skipped for swap and hugetlb (optional controllers), an error otherwise.
pub fn update(path: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let cpu_max = std::fs::read_to_string(path.join("cpu.max")).unwrap_or_default();
    for (file, value) in update_writes(r, &cpu_max)? {
        let target = path.join(&file);
        let optional = file.starts_with("hugetlb.") || file == "memory.swap.max";
        if optional && !target.exists() {
            tracing::info!(file, "cgroup file absent: skipped");
            continue;
        }
        tracing::debug!(file, value, "cgroup write");
        write(&target, &value)?;
    }
    Ok(())
}

/// The container's numbers from its v2 cgroup.
pub fn stats(p: &Path) -> Stats {
    Stats {
        cpu_usage_usec: flat_keyed(p, "cpu.stat", "usage_usec"),
        cpu_user_usec: flat_keyed(p, "cpu.stat", "user_usec"),
        cpu_system_usec: flat_keyed(p, "cpu.stat", "system_usec"),
        memory_current_bytes: single(p, "memory.current"),
        memory_max_bytes: single(p, "memory.max"),
        memory_anon_bytes: flat_keyed(p, "memory.stat", "anon"),
        memory_file_bytes: flat_keyed(p, "memory.stat", "file"),
        oom_kills: flat_keyed(p, "memory.events", "oom_kill"),
        pids_current: single(p, "pids.current"),
    }
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
    fn update_writes_from_cri_resources() {
        let r = LinuxResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            memory_limit_bytes: 64 << 20,
            pids_limit: -1,
            cpuset_cpus: "0-1".into(),
            unified: [("memory.high".to_owned(), "32M".to_owned())].into(),
            ..Default::default()
        };
        let w = update_writes(&r, "max 100000\n").expect("valid");
        let get = |f: &str| w.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("pids.max"), Some("max"));
        assert_eq!(get("cpuset.cpus"), Some("0-1"));
        assert_eq!(get("memory.high"), Some("32M"));
        assert_eq!(get("memory.swap.max"), None);
        // A period alone keeps the quota; nothing set writes nothing.
        let p = LinuxResources {
            cpu_period: 20_000,
            ..Default::default()
        };
        assert_eq!(
            update_writes(&p, "30000 100000").expect("valid"),
            vec![("cpu.max".to_owned(), "30000 20000".to_owned())]
        );
        assert!(
            update_writes(&LinuxResources::default(), "")
                .expect("valid")
                .is_empty()
        );
        for bad in [
            LinuxResources {
                cpuset_cpus: "0;rm".into(),
                ..Default::default()
            },
            LinuxResources {
                unified: [("../cgroup.procs".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                update_writes(&bad, ""),
                Err(CgroupError::Invalid(_))
            ));
        }
    }

    #[test]
    fn update_writes_files_and_skips_absent_hugetlb() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").expect("write");
        std::fs::write(dir.path().join("memory.max"), "max\n").expect("write");
        let r = LinuxResources {
            cpu_quota: 20_000,
            memory_limit_bytes: 1 << 30,
            hugepage_limits: vec![hull_agent_api::v1::HugepageLimit {
                page_size: "2MB".into(),
                limit_bytes: 0,
            }],
            ..Default::default()
        };
        update(dir.path(), &r).expect("update");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("read");
        assert_eq!(read("cpu.max"), "20000 100000");
        assert_eq!(read("memory.max"), "1073741824");
        assert!(!dir.path().join("hugetlb.2MB.max").exists());
    }

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
