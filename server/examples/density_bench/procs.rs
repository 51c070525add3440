//! Host-side accounting of one pod's processes: which processes belong to a pod (hull: the
//! ones naming its run dir; containerd: its shim and the shim's descendants), their PSS
//! from `smaps_rollup`, the part of it that is guest RAM (the memfd mappings in `smaps`),
//! their CPU ticks, and the pod's files on tmpfs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ, which is 100 on x86 Linux.
pub const USER_HZ: f64 = 100.0;
/// Mappings of a memfd at least this big are guest RAM (QEMU's memory backend, hull-vmm's
/// RAM, and the helpers' vhost-user mappings of it).
const GUEST_RAM_MIN_BYTES: u64 = 16 << 20;

/// One process on the host.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: String,
}

/// Every process now (those that exit while being read are skipped).
pub fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect()
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces: the fields after the last ')'.
    let close = stat.rfind(')')?;
    let comm = stat.get(stat.find('(')? + 1..close)?.to_owned();
    let ppid = stat.get(close + 2..)?.split(' ').nth(1)?.parse().ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(Proc {
        pid,
        ppid,
        comm,
        cmdline,
    })
}

/// The component a process of a pod counts as, by its name.
pub fn component(comm: &str) -> String {
    match comm {
        c if c.starts_with("qemu-system") => "qemu".into(),
        c if c.starts_with("vhost-device-vs") => "vhost-device-vsock".into(),
        c if c.starts_with("containerd-shim") => "containerd-shim".into(),
        c => c.to_owned(),
    }
}

/// hull: the processes whose command line names the pod's run dir.
pub fn hull_pod(procs: &[Proc], run_dir: &Path) -> Vec<Proc> {
    let needle = format!("{}/", run_dir.display());
    procs
        .iter()
        .filter(|p| p.cmdline.contains(&needle))
        .cloned()
        .collect()
}

/// containerd: the pod's shim (`-id <sandbox id>`) and everything under it (runc's init
/// reparents the pause and container processes to the shim).
pub fn containerd_pod(procs: &[Proc], sandbox_id: &str) -> Vec<Proc> {
    let needle = format!(" -id {sandbox_id} ");
    let mut pod: Vec<Proc> = procs
        .iter()
        .filter(|p| p.comm.starts_with("containerd-shim") && p.cmdline.contains(&needle))
        .cloned()
        .collect();
    let mut children: HashMap<u32, Vec<&Proc>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut i = 0;
    while i < pod.len() {
        let kids = children.get(&pod[i].pid).cloned().unwrap_or_default();
        pod.extend(kids.into_iter().cloned());
        i += 1;
    }
    pod
}

/// PSS of a process (KiB) from `smaps_rollup`, and the part of it in guest RAM mappings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub pss_kib: u64,
    pub guest_ram_pss_kib: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let pss_kib = field_kib(&rollup, "Pss:")?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(Memory {
        pss_kib,
        guest_ram_pss_kib: guest_ram_pss(&smaps),
    })
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sum of `Pss` over the big memfd mappings in a `smaps` text.
fn guest_ram_pss(smaps: &str) -> u64 {
    let mut total = 0;
    let mut in_ram = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let size = first
                .split_once('-')
                .and_then(|(a, b)| {
                    let a = u64::from_str_radix(a, 16).ok()?;
                    let b = u64::from_str_radix(b, 16).ok()?;
                    b.checked_sub(a)
                })
                .unwrap_or(0);
            let path = words.nth(4).unwrap_or("");
            in_ram = path.starts_with("/memfd:") && size >= GUEST_RAM_MIN_BYTES;
        } else if in_ram && first == "Pss:" {
            total += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// utime + stime of a process, in USER_HZ ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After ")": state(0) ppid(1) ... utime is field 14 of the line, index 11 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/meminfo` field in KiB.
pub fn meminfo_kib(name: &str) -> Option<u64> {
    field_kib(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        &format!("{name}:"),
    )
}

/// Bytes of the files under `dir` that live on a tmpfs (memory the pod pins on the host
/// until it is removed), not crossing into other mounts.
pub fn tmpfs_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if !on_tmpfs(dir) {
        return 0;
    }
    let dev = top.dev();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn on_tmpfs(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let mut w = line.split_whitespace();
        let (Some(_), Some(target), Some(fstype)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if dir.starts_with(target) && best.is_none_or(|(len, _)| target.len() >= len) {
            best = Some((target.len(), fstype == "tmpfs"));
        }
    }
    best.is_some_and(|(_, tmpfs)| tmpfs)
}

/// Memory of one pod, KiB by component, plus guest RAM and its tmpfs files.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PodMemory {
    /// PSS outside guest RAM, by component (several processes of one kind add up).
    pub components_kib: BTreeMap<String, u64>,
    /// Processes per component.
    pub processes: BTreeMap<String, u32>,
    /// Guest RAM the host holds for the pod (the memfd pages, over every process mapping it).
    pub guest_ram_kib: u64,
    pub tmpfs_kib: u64,
}

impl PodMemory {
    pub fn of(procs: &[Proc], tmpfs_dir: Option<&Path>) -> Self {
        let mut m = PodMemory::default();
        for p in procs {
            let Some(mem) = memory(p.pid) else { continue };
            let c = component(&p.comm);
            *m.components_kib.entry(c.clone()).or_default() +=
                mem.pss_kib.saturating_sub(mem.guest_ram_pss_kib);
            *m.processes.entry(c).or_default() += 1;
            m.guest_ram_kib += mem.guest_ram_pss_kib;
        }
        m.tmpfs_kib = tmpfs_dir.map(tmpfs_bytes).unwrap_or(0) / 1024;
        m
    }

    pub fn total_kib(&self) -> u64 {
        self.components_kib.values().sum::<u64>() + self.guest_ram_kib + self.tmpfs_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_the_big_memfd_mappings() {
        let smaps = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 1234 /memfd:memory-backend-memfd (deleted)
Size:             262144 kB
Pss:               30000 kB
7f0020000000-7f0020001000 rw-s 00000000 00:01 99 /memfd:small (deleted)
Pss:                   4 kB
55d000000000-55d000100000 r-xp 00000000 08:01 77 /usr/bin/qemu-system-x86_64
Pss:                1000 kB
";
        assert_eq!(guest_ram_pss(smaps), 30000);
    }
}
