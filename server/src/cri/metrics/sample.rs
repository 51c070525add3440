//! Building CRI `Metric`s from what hulld reads: the agent's cgroup numbers of a
//! container, the pod netns' interfaces, the host processes of the pod's VM. Pure functions
//! over parsed inputs (the reading is in `collect.rs`), so every label and unit is
//! unit-tested.

use std::collections::BTreeMap;

use hull_agent_api::v1 as pb;
use hull_cri_api as cri;

use super::descriptors::{self as d, Desc, label_keys};
use crate::state::{ContainerRecord, SandboxRecord};

/// Collects metrics that share the base label values of one pod or container.
pub struct Samples {
    base: BTreeMap<&'static str, String>,
    pub out: Vec<cri::Metric>,
}

impl Samples {
    /// Labels of a container, as kubelet gave them to cAdvisor: `container` and `name` the
    /// container's CRI name, `id` its id, `image` the image as asked for.
    pub fn container(pod: &SandboxRecord, c: &ContainerRecord) -> Self {
        let name = c
            .config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let image = if c.image_ref.is_empty() {
            c.config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default()
        } else {
            c.image_ref.clone()
        };
        Self::new(pod, name.clone(), c.id.clone(), image, name)
    }

    /// Labels of the pod itself (cAdvisor's pod cgroup): `container` and `image` empty,
    /// `id` the sandbox id, `name` the pod's name.
    pub fn pod(pod: &SandboxRecord) -> Self {
        let name = pod
            .config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Self::new(pod, String::new(), pod.id.clone(), String::new(), name)
    }

    fn new(
        pod: &SandboxRecord,
        container: String,
        id: String,
        image: String,
        name: String,
    ) -> Self {
        let meta = pod.config.metadata.clone().unwrap_or_default();
        let base = BTreeMap::from([
            ("container", container),
            ("id", id),
            ("image", image),
            ("name", name),
            ("namespace", meta.namespace),
            ("pod", meta.name),
        ]);
        Self {
            base,
            out: Vec::new(),
        }
    }

    /// One sample of `desc`; `extra` gives the values of its extra labels.
    pub fn push(&mut self, desc: &Desc, value: u64, extra: &[(&str, &str)]) {
        debug_assert_eq!(
            extra.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            desc.extra.to_vec(),
            "{}: extra labels",
            desc.name
        );
        let label_values = label_keys(desc)
            .iter()
            .map(|k| {
                self.base
                    .get(k.as_str())
                    .cloned()
                    .or_else(|| {
                        extra
                            .iter()
                            .find(|(ek, _)| ek == k)
                            .map(|(_, v)| (*v).to_owned())
                    })
                    .unwrap_or_default()
            })
            .collect();
        self.out.push(cri::Metric {
            name: desc.name.to_owned(),
            // Gathered now, not cached: kubelet stamps it itself.
            timestamp: 0,
            metric_type: desc.kind.cri(),
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

/// Whole seconds of a microsecond count (the CRI carries integers).
fn secs(usec: u64) -> u64 {
    usec / 1_000_000
}

/// The working set as kubelet and cAdvisor compute it: usage minus inactive file pages.
/// Agents older than `memory_inactive_file_bytes` report file pages as a whole only.
pub fn working_set(s: &pb::ContainerStatsResponse) -> u64 {
    let inactive = if s.memory_inactive_file_bytes > 0 || s.memory_active_file_bytes > 0 {
        s.memory_inactive_file_bytes
    } else {
        s.memory_file_bytes
    };
    s.memory_current_bytes.saturating_sub(inactive)
}

/// CPU, memory, OOM and process metrics of a container from its guest cgroup.
pub fn cgroup(m: &mut Samples, s: &pb::ContainerStatsResponse) {
    m.push(&d::CPU_USAGE, secs(s.cpu_usage_usec), &[]);
    m.push(&d::CPU_USER, secs(s.cpu_user_usec), &[]);
    m.push(&d::CPU_SYSTEM, secs(s.cpu_system_usec), &[]);
    m.push(&d::CFS_PERIODS, s.cpu_nr_periods, &[]);
    m.push(&d::CFS_THROTTLED_PERIODS, s.cpu_nr_throttled, &[]);
    m.push(&d::CFS_THROTTLED_SECONDS, secs(s.cpu_throttled_usec), &[]);
    m.push(&d::MEM_USAGE, s.memory_current_bytes, &[]);
    m.push(&d::MEM_WORKING_SET, working_set(s), &[]);
    m.push(&d::MEM_RSS, s.memory_anon_bytes, &[]);
    m.push(&d::MEM_CACHE, s.memory_file_bytes, &[]);
    m.push(&d::MEM_MAPPED, s.memory_file_mapped_bytes, &[]);
    m.push(&d::MEM_SWAP, s.memory_swap_bytes, &[]);
    m.push(&d::MEM_KERNEL, s.memory_kernel_bytes, &[]);
    m.push(&d::MEM_MAX_USAGE, s.memory_peak_bytes, &[]);
    m.push(&d::MEM_ACTIVE_FILE, s.memory_active_file_bytes, &[]);
    m.push(&d::MEM_INACTIVE_FILE, s.memory_inactive_file_bytes, &[]);
    // cgroup v2 counts are hierarchical; cAdvisor reports both scopes alike there.
    for scope in ["container", "hierarchy"] {
        let faults = [
            ("pgfault", s.memory_pgfault),
            ("pgmajfault", s.memory_pgmajfault),
        ];
        for (kind, v) in faults {
            m.push(
                &d::MEM_FAILURES,
                v,
                &[("failure_type", kind), ("scope", scope)],
            );
        }
    }
    m.push(&d::OOM_EVENTS, s.oom_kills, &[]);
    m.push(&d::PROCESSES, s.pids_current, &[]);
    m.push(&d::THREADS_MAX, s.pids_max, &[]);
}

/// The container's limits (its CRI config) and start time.
pub fn spec(m: &mut Samples, c: &ContainerRecord) {
    let r = c
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    let nonneg = |v: i64| u64::try_from(v).unwrap_or(0);
    m.push(&d::SPEC_MEMORY_LIMIT, nonneg(r.memory_limit_in_bytes), &[]);
    m.push(&d::SPEC_CPU_SHARES, nonneg(r.cpu_shares), &[]);
    m.push(&d::SPEC_CPU_QUOTA, nonneg(r.cpu_quota), &[]);
    m.push(&d::SPEC_CPU_PERIOD, nonneg(r.cpu_period), &[]);
    m.push(&d::START_TIME, nonneg(c.started_at) / 1_000_000_000, &[]);
}

/// The filesystem holding a container's writable layer, and the layer's use of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub device: String,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

pub fn fs(m: &mut Samples, f: &FsUsage) {
    let dev = [("device", f.device.as_str())];
    m.push(&d::FS_USAGE, f.used_bytes, &dev);
    m.push(&d::FS_LIMIT, f.limit_bytes, &dev);
    m.push(&d::FS_INODES_TOTAL, f.inodes_total, &dev);
    m.push(&d::FS_INODES_FREE, f.inodes_free, &dev);
}

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetIface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The pod's interfaces in a `/proc/net/dev` text, as the VMM (in the pod netns) sees
/// them: `lo` and the VM's tap (a mirror of eth0) left out.
pub fn parse_net_dev(text: &str) -> Vec<NetIface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (name != "lo" && !name.starts_with("tap") && f.len() >= 12).then(|| NetIface {
                name: name.to_owned(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
            })
        })
        .collect()
}

pub fn network(m: &mut Samples, ifaces: &[NetIface]) {
    for i in ifaces {
        let l = [("interface", i.name.as_str())];
        m.push(&d::NET_RX_BYTES, i.rx_bytes, &l);
        m.push(&d::NET_RX_PACKETS, i.rx_packets, &l);
        m.push(&d::NET_RX_ERRORS, i.rx_errors, &l);
        m.push(&d::NET_RX_DROPPED, i.rx_dropped, &l);
        m.push(&d::NET_TX_BYTES, i.tx_bytes, &l);
        m.push(&d::NET_TX_PACKETS, i.tx_packets, &l);
        m.push(&d::NET_TX_ERRORS, i.tx_errors, &l);
        m.push(&d::NET_TX_DROPPED, i.tx_dropped, &l);
    }
}

/// Host usage of the processes of one program of a pod's VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcUsage {
    /// The program's name (`/proc/<pid>/comm`): `qemu-system-x86`, `hull-vmm`, `virtiofsd`.
    pub process: String,
    pub cpu_millis: u64,
    pub rss_bytes: u64,
}

/// Adds up processes of the same program (virtiofsd runs as two with `--sandbox`).
pub fn merge_procs(procs: Vec<ProcUsage>) -> Vec<ProcUsage> {
    let mut by_name: BTreeMap<String, ProcUsage> = BTreeMap::new();
    for p in procs {
        let e = by_name
            .entry(p.process.clone())
            .or_insert_with(|| ProcUsage {
                process: p.process.clone(),
                ..Default::default()
            });
        e.cpu_millis = e.cpu_millis.saturating_add(p.cpu_millis);
        e.rss_bytes = e.rss_bytes.saturating_add(p.rss_bytes);
    }
    by_name.into_values().collect()
}

/// What the VM costs the host: per program, its size, and what is not the containers'.
pub fn vm(
    m: &mut Samples,
    pod: &SandboxRecord,
    procs: &[ProcUsage],
    containers_usage: Option<u64>,
) {
    for p in procs {
        let l = [("process", p.process.as_str())];
        m.push(&d::VM_PROCESS_RSS, p.rss_bytes, &l);
        m.push(&d::VM_PROCESS_CPU, p.cpu_millis, &l);
    }
    if let Some(vm) = &pod.resources.vm {
        m.push(&d::VM_MEMORY, vm.memory_mib.saturating_mul(1 << 20), &[]);
        m.push(&d::VM_VCPUS, u64::from(vm.vcpus), &[]);
    }
    // Without the containers' usage (the guest did not answer), no overhead figure.
    if let Some(usage) = containers_usage.filter(|_| !procs.is_empty()) {
        let rss: u64 = procs.iter().map(|p| p.rss_bytes).sum();
        m.push(&d::VM_OVERHEAD, rss.saturating_sub(usage), &[]);
    }
}
