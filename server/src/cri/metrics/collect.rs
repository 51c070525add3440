//! Reading what the pod metrics are made of: host processes of a pod's VM (`/proc`), the
//! pod netns' interfaces (`/proc/<vmm>/net/dev`: the VMM runs in the pod netns), and the
//! filesystem of a container's writable layer.

use std::path::Path;

use super::sample::{FsUsage, NetIface, ProcUsage, parse_net_dev};

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const MILLIS_PER_TICK: u64 = 10;

/// CPU time, RSS and program name of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let process = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()?
        .trim()
        .to_owned();
    Some(ProcUsage {
        process,
        cpu_millis: ticks.saturating_mul(MILLIS_PER_TICK),
        rss_bytes: rss_kib.saturating_mul(1024),
    })
}

/// The host processes of a pod's VM: the VMM and every helper whose pid file is in the
/// sandbox's run dir (virtiofsd, the vsock backend), each once, never hulld itself.
pub fn vm_pids(vmm_pid: u32, run_dir: &Path) -> Vec<u32> {
    let mut pids = vec![vmm_pid];
    let files = std::fs::read_dir(run_dir).into_iter().flatten().flatten();
    for f in files.filter(|f| f.file_name().to_string_lossy().ends_with(".pid")) {
        let pid = std::fs::read_to_string(f.path())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && pid > 1
            && pid != std::process::id()
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The pod netns' interfaces, as the VMM process `pid` sees them.
pub fn pod_interfaces(vmm_pid: u32) -> Vec<NetIface> {
    std::fs::read_to_string(format!("/proc/{vmm_pid}/net/dev"))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// The name cAdvisor gives a filesystem's device: `/dev/<name>` of a block device,
/// `major:minor` otherwise (overlay, tmpfs).
fn device_name(dev: u64) -> String {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"));
    uevent
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{n}"))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// The writable layer's use (`used`: bytes of its files, from `dir_usage`) and the
/// filesystem it lives on.
pub fn fs_usage(dir: &Path, used_bytes: u64) -> Option<FsUsage> {
    let vfs = nix::sys::statvfs::statvfs(dir).ok()?;
    let st = nix::sys::stat::stat(dir).ok()?;
    Some(FsUsage {
        device: device_name(st.st_dev),
        used_bytes,
        limit_bytes: vfs.blocks().saturating_mul(vfs.fragment_size().max(1)),
        inodes_total: vfs.files(),
        inodes_free: vfs.files_free(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = proc_usage(std::process::id()).expect("own /proc");
        assert!(me.rss_bytes > 0);
        assert!(!me.process.is_empty());
        assert!(proc_usage(u32::MAX).is_none());
    }

    #[test]
    fn vm_pids_from_pid_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = |f: &str, t: &str| std::fs::write(dir.path().join(f), t).expect("write");
        w("virtiofsd.pid", "4242\n");
        w("qemu.pid", "100");
        w("self.pid", &std::process::id().to_string());
        w("junk.pid", "x");
        w("console.log", "5");
        let mut pids = vm_pids(100, dir.path());
        pids.sort_unstable();
        assert_eq!(pids, [100, 4242]);
    }

    #[test]
    fn filesystem_of_a_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fs_usage(dir.path(), 7).expect("statvfs");
        assert_eq!(f.used_bytes, 7);
        assert!(f.limit_bytes > 0 && f.inodes_total >= f.inodes_free);
        assert!(!f.device.is_empty());
    }
}
