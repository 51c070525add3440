//! cgroup v1 files (host-isolation pods on a v1 or hybrid host): the CRI's resources as
//! runc writes them on v1 (cpu.shares, cfs quota/period, cpuset, memory and memsw limits,
//! pids.max, hugetlb limits), and stats in v2's units.

use hull_agent_api::v1::LinuxResources;

use super::v2::{cpuset, limit_or_max};
use super::{Cgroup, CgroupError, Stats};

/// One write: the controller whose hierarchy has the file, the file, the value.
pub type Write = (&'static str, String, String);

/// `memory.limit_in_bytes` reads this (or more) when there is no limit.
const UNLIMITED: u64 = 1 << 62;

/// USER_HZ: cpuacct.stat counts in ticks of 10 ms.
const USEC_PER_TICK: u64 = 10_000;

fn w(controller: &'static str, file: &str, value: String) -> Write {
    (controller, file.to_owned(), value)
}

/// The v1 files and values for `r`, in order; `memsw_now`/`mem_now` are the cgroup's
/// current limits (the swap limit must stay at or above the memory limit at every step).
pub fn update_writes(
    r: &LinuxResources,
    mem_now: u64,
    memsw_now: u64,
) -> Result<Vec<Write>, CgroupError> {
    if !r.unified.is_empty() {
        return Err(CgroupError::Invalid(
            "unified (cgroup v2) files on a cgroup v1 host".into(),
        ));
    }
    let mut out = Vec::new();
    if r.cpu_shares > 0 {
        out.push(w(
            "cpu",
            "cpu.shares",
            r.cpu_shares.clamp(2, 262_144).to_string(),
        ));
    }
    if r.cpu_period > 0 {
        out.push(w("cpu", "cpu.cfs_period_us", r.cpu_period.to_string()));
    }
    if r.cpu_quota != 0 {
        let quota = if r.cpu_quota < 0 { -1 } else { r.cpu_quota };
        out.push(w("cpu", "cpu.cfs_quota_us", quota.to_string()));
    }
    if !r.cpuset_cpus.is_empty() {
        out.push(w(
            "cpuset",
            "cpuset.cpus",
            cpuset(&r.cpuset_cpus)?.to_owned(),
        ));
    }
    if !r.cpuset_mems.is_empty() {
        out.push(w(
            "cpuset",
            "cpuset.mems",
            cpuset(&r.cpuset_mems)?.to_owned(),
        ));
    }
    memory_writes(r, mem_now, memsw_now, &mut out);
    if r.pids_limit != 0 {
        out.push(w("pids", "pids.max", limit_or_max(r.pids_limit)));
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
        let file = format!("hugetlb.{}.limit_in_bytes", h.page_size);
        out.push(w("hugetlb", &file, h.limit_bytes.to_string()));
    }
    Ok(out)
}

/// memory.limit_in_bytes and memory.memsw.limit_in_bytes (memory plus swap, the CRI's
/// swap limit as runc reads it), ordered so that memsw >= memory holds after each write.
fn memory_writes(r: &LinuxResources, mem_now: u64, memsw_now: u64, out: &mut Vec<Write>) {
    if r.memory_limit_bytes == 0 {
        return;
    }
    let limit = |v: i64| {
        if v < 0 {
            "-1".to_owned()
        } else {
            v.to_string()
        }
    };
    let mem = w(
        "memory",
        "memory.limit_in_bytes",
        limit(r.memory_limit_bytes),
    );
    let swap = match r.memory_swap_limit_bytes {
        0 => None,
        s => Some(w("memory", "memory.memsw.limit_in_bytes", limit(s))),
    };
    let new_mem = u64::try_from(r.memory_limit_bytes).unwrap_or(u64::MAX);
    let raise = new_mem > mem_now || new_mem > memsw_now;
    match swap {
        // Raising: memsw first, so memory never exceeds it.
        Some(s) if raise => out.extend([s, mem]),
        Some(s) => out.extend([mem, s]),
        None => out.push(mem),
    }
}

/// A container's numbers from its v1 cgroups, in the units of v2's files.
pub fn stats(cg: &Cgroup) -> Stats {
    let read = |controller: &str, file: &str| {
        cg.v1_dir(controller)
            .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_default()
    };
    let keyed = |controller: &str, file: &str, key: &str| {
        read(controller, file)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
            .unwrap_or(0)
    };
    let single =
        |controller: &str, file: &str| read(controller, file).trim().parse::<u64>().unwrap_or(0);
    let max = single("memory", "memory.limit_in_bytes");
    Stats {
        cpu_usage_usec: single("cpuacct", "cpuacct.usage") / 1000,
        cpu_user_usec: keyed("cpuacct", "cpuacct.stat", "user") * USEC_PER_TICK,
        cpu_system_usec: keyed("cpuacct", "cpuacct.stat", "system") * USEC_PER_TICK,
        memory_current_bytes: single("memory", "memory.usage_in_bytes"),
        memory_max_bytes: if max >= UNLIMITED { 0 } else { max },
        memory_anon_bytes: keyed("memory", "memory.stat", "rss"),
        memory_file_bytes: keyed("memory", "memory.stat", "cache"),
        oom_kills: keyed("memory", "memory.oom_control", "oom_kill"),
        pids_current: single("pids", "pids.current"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(w: &[Write]) -> Vec<(&str, &str)> {
        w.iter().map(|(_, f, v)| (f.as_str(), v.as_str())).collect()
    }

    #[test]
    fn cri_resources_as_v1_files() {
        let r = LinuxResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0".into(),
            memory_limit_bytes: 64 << 20,
            pids_limit: -1,
            ..Default::default()
        };
        let got = update_writes(&r, u64::MAX, u64::MAX).expect("valid");
        assert_eq!(
            files(&got),
            [
                ("cpu.shares", "512"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0"),
                ("memory.limit_in_bytes", "67108864"),
                ("pids.max", "max"),
            ]
        );
        assert_eq!(got[0].0, "cpu");
        let unified = LinuxResources {
            unified: [("memory.high".to_owned(), "1M".to_owned())].into(),
            ..Default::default()
        };
        assert!(matches!(
            update_writes(&unified, 0, 0),
            Err(CgroupError::Invalid(_))
        ));
    }

    #[test]
    fn swap_limit_is_written_in_the_order_the_kernel_accepts() {
        let r = LinuxResources {
            memory_limit_bytes: 100,
            memory_swap_limit_bytes: 200,
            ..Default::default()
        };
        // From unlimited down: memory first, then memsw.
        let down = update_writes(&r, u64::MAX, u64::MAX).expect("valid");
        assert_eq!(down[0].1, "memory.limit_in_bytes");
        // Up from 50/50: memsw first.
        let up = update_writes(&r, 50, 50).expect("valid");
        assert_eq!(up[0].1, "memory.memsw.limit_in_bytes");
    }

    #[test]
    fn stats_read_v1_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |c: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(c);
            std::fs::create_dir_all(&d).expect("mkdir");
            for (f, v) in files {
                std::fs::write(d.join(f), v).expect("write");
            }
            (vec![c.to_owned()], d)
        };
        let cg = Cgroup {
            unified: None,
            v1: vec![
                mk(
                    "cpuacct",
                    &[
                        ("cpuacct.usage", "5000000\n"),
                        ("cpuacct.stat", "user 3\nsystem 1\n"),
                    ],
                ),
                mk(
                    "memory",
                    &[
                        ("memory.usage_in_bytes", "4096\n"),
                        ("memory.limit_in_bytes", "9223372036854771712\n"),
                        ("memory.stat", "cache 100\nrss 200\n"),
                        (
                            "memory.oom_control",
                            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                        ),
                    ],
                ),
                mk("pids", &[("pids.current", "3\n")]),
            ],
        };
        let s = stats(&cg);
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (5000, 30_000, 10_000)
        );
        assert_eq!((s.memory_current_bytes, s.memory_max_bytes), (4096, 0));
        assert_eq!((s.memory_anon_bytes, s.memory_file_bytes), (200, 100));
        assert_eq!((s.oom_kills, s.pids_current), (2, 3));
    }
}
