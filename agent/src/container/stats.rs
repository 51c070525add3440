//! A container's cgroup v2 numbers, as the agent's `ContainerStats` answers them: each
//! file read once, a missing file or key read as 0 (older guest kernels lack some).

use std::collections::HashMap;
use std::path::Path;

use hull_agent_api::v1 as pb;

/// `key value` lines of a flat-keyed cgroup file (cpu.stat, memory.stat, memory.events).
fn keyed(path: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(path.join(file))
        .map(|text| parse_keyed(&text))
        .unwrap_or_default()
}

fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The stats of the cgroup at `path`, stamped `timestamp_unix_nanos`.
pub fn read(path: &Path, timestamp_unix_nanos: i64) -> pb::ContainerStatsResponse {
    let cpu = keyed(path, "cpu.stat");
    let mem = keyed(path, "memory.stat");
    let events = keyed(path, "memory.events");
    let single = |file| super::cgroup::v2::single(path, file);
    let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    pb::ContainerStatsResponse {
        cpu_usage_usec: get(&cpu, "usage_usec"),
        cpu_user_usec: get(&cpu, "user_usec"),
        cpu_system_usec: get(&cpu, "system_usec"),
        cpu_nr_periods: get(&cpu, "nr_periods"),
        cpu_nr_throttled: get(&cpu, "nr_throttled"),
        cpu_throttled_usec: get(&cpu, "throttled_usec"),
        memory_current_bytes: single("memory.current"),
        memory_max_bytes: single("memory.max"),
        memory_anon_bytes: get(&mem, "anon"),
        memory_file_bytes: get(&mem, "file"),
        memory_active_file_bytes: get(&mem, "active_file"),
        memory_inactive_file_bytes: get(&mem, "inactive_file"),
        memory_file_mapped_bytes: get(&mem, "file_mapped"),
        memory_kernel_bytes: get(&mem, "kernel"),
        memory_pgfault: get(&mem, "pgfault"),
        memory_pgmajfault: get(&mem, "pgmajfault"),
        memory_swap_bytes: single("memory.swap.current"),
        memory_peak_bytes: single("memory.peak"),
        memory_max_events: get(&events, "max"),
        oom_kills: get(&events, "oom_kill"),
        pids_current: single("pids.current"),
        pids_max: single("pids.max"),
        timestamp_unix_nanos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_file_once_and_missing_as_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        let w = |f: &str, t: &str| std::fs::write(p.join(f), t).expect("write");
        w(
            "cpu.stat",
            "usage_usec 300\nuser_usec 200\nsystem_usec 100\nnr_periods 7\nnr_throttled 2\nthrottled_usec 55\n",
        );
        w(
            "memory.stat",
            "anon 4096\nfile 8192\nactive_file 1024\ninactive_file 7168\nfile_mapped 512\npgfault 9\npgmajfault 1\n",
        );
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("memory.current", "12288\n");
        w("memory.max", "max\n");
        w("pids.current", "4\n");
        w("pids.max", "100\n");
        let s = read(p, 42);
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (300, 200, 100)
        );
        assert_eq!(
            (s.cpu_nr_periods, s.cpu_nr_throttled, s.cpu_throttled_usec),
            (7, 2, 55)
        );
        assert_eq!((s.memory_current_bytes, s.memory_max_bytes), (12288, 0));
        assert_eq!((s.memory_anon_bytes, s.memory_file_bytes), (4096, 8192));
        assert_eq!(
            (s.memory_active_file_bytes, s.memory_inactive_file_bytes),
            (1024, 7168)
        );
        assert_eq!((s.memory_pgfault, s.memory_pgmajfault), (9, 1));
        assert_eq!((s.memory_max_events, s.oom_kills), (3, 1));
        assert_eq!((s.pids_current, s.pids_max), (4, 100));
        // No such files or keys in this cgroup: 0.
        assert_eq!(
            (
                s.memory_kernel_bytes,
                s.memory_swap_bytes,
                s.memory_peak_bytes
            ),
            (0, 0, 0)
        );
        assert_eq!(s.timestamp_unix_nanos, 42);
    }
}
