//! VM size from the pod: `linux.resources` (the sum of the containers' limits kubelet
//! computes) plus `linux.overhead` (the RuntimeClass overhead), plus hull's own guest
//! overhead for memory. Without limits the configured defaults apply.

use hull_cri_api::{LinuxContainerResources, PodSandboxConfig};

use crate::config::VmSection;

const MIB: i64 = 1024 * 1024;
/// QEMU microvm's (and the guest's) upper vCPU count hull asks for.
pub const MAX_VCPUS: u32 = 64;
/// The smallest VM hull boots: the guest kernel and agent need room.
pub const MIN_MEMORY_MIB: u64 = 128;

/// vCPUs and memory of a pod's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

fn cpus(r: &LinuxContainerResources) -> f64 {
    if r.cpu_quota > 0 && r.cpu_period > 0 {
        r.cpu_quota as f64 / r.cpu_period as f64
    } else {
        0.0
    }
}

fn mem_mib(r: &LinuxContainerResources) -> u64 {
    u64::try_from(r.memory_limit_in_bytes.max(0))
        .unwrap_or(0)
        .div_ceil(MIB as u64)
}

/// The node's memory in MiB (`MemTotal`), read once; `None` where /proc says nothing.
fn host_memory_mib() -> Option<u64> {
    static HOST: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *HOST.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_mem_total_mib(&meminfo)
    })
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The VM size for `config`: limits beyond the node's memory get a VM of the node's
/// memory (as Kata caps a VM at the host's), so a pod with a huge limit still boots.
pub fn vm_size(config: &PodSandboxConfig, vm: &VmSection) -> VmSize {
    size_within(config, vm, host_memory_mib())
}

fn size_within(config: &PodSandboxConfig, vm: &VmSection, host_mib: Option<u64>) -> VmSize {
    let linux = config.linux.as_ref();
    let res = linux.and_then(|l| l.resources.as_ref());
    let over = linux.and_then(|l| l.overhead.as_ref());
    let cpu = res.map(cpus).unwrap_or(0.0);
    let vcpus = if cpu > 0.0 {
        let total = cpu + over.map(cpus).unwrap_or(0.0);
        (total.ceil() as u32).clamp(1, MAX_VCPUS)
    } else {
        vm.default_vcpus.clamp(1, MAX_VCPUS)
    };
    let mem = res.map(mem_mib).unwrap_or(0);
    let memory_mib = if mem > 0 {
        let total = mem + over.map(mem_mib).unwrap_or(0) + vm.memory_overhead_mib;
        total.min(host_mib.unwrap_or(u64::MAX)).max(MIN_MEMORY_MIB)
    } else {
        vm.default_memory_mib
    };
    VmSize { vcpus, memory_mib }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_cri_api::LinuxPodSandboxConfig;

    fn pod(
        res: Option<LinuxContainerResources>,
        over: Option<LinuxContainerResources>,
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                resources: res,
                overhead: over,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn limits(cpu_millis: i64, mem_mib: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: cpu_millis * 100,
            memory_limit_in_bytes: mem_mib * MIB,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_limits() {
        let vm = VmSection::default();
        let want = VmSize {
            vcpus: vm.default_vcpus,
            memory_mib: vm.default_memory_mib,
        };
        assert_eq!(vm_size(&PodSandboxConfig::default(), &vm), want);
        assert_eq!(vm_size(&pod(None, None), &vm), want);
        assert_eq!(
            vm_size(&pod(Some(LinuxContainerResources::default()), None), &vm),
            want
        );
    }

    #[test]
    fn limits_plus_overhead_round_up() {
        let vm = VmSection::default();
        let s = vm_size(&pod(Some(limits(1500, 300)), Some(limits(250, 50))), &vm);
        assert_eq!(
            s,
            VmSize {
                vcpus: 2,
                memory_mib: 300 + 50 + vm.memory_overhead_mib
            }
        );
        let s = vm_size(&pod(Some(limits(100, 10)), None), &vm);
        assert_eq!(
            s,
            VmSize {
                vcpus: 1,
                memory_mib: MIN_MEMORY_MIB
            }
        );
        let s = vm_size(&pod(Some(limits(1_000_000, 0)), None), &vm);
        assert_eq!(s.vcpus, MAX_VCPUS);
        assert_eq!(s.memory_mib, vm.default_memory_mib);
    }

    #[test]
    fn limits_past_the_node_get_the_nodes_memory() {
        let vm = VmSection::default();
        let huge = pod(Some(limits(1000, 1 << 30)), None);
        assert_eq!(size_within(&huge, &vm, Some(24_000)).memory_mib, 24_000);
        assert_eq!(
            size_within(&huge, &vm, None).memory_mib,
            (1 << 30) + vm.memory_overhead_mib
        );
        assert_eq!(
            parse_mem_total_mib("MemTotal:       24575056 kB\nMemFree: 1 kB\n"),
            Some(23_999)
        );
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }
}
