//! The metrics hulld answers `ListMetricDescriptors` with: cAdvisor's names, help and
//! labels (what kubelet's `/metrics/cadvisor` showed before `PodAndContainerStatsFromCRI`,
//! so dashboards and alerts keep working), plus hull's own `hull_pod_vm_*` figures of what
//! a pod's VM costs the host.
//!
//! Every metric carries cAdvisor's labels as kubelet set them (`container`, `id`, `image`,
//! `name`, `namespace`, `pod`); some add one or two (`interface`, `device`,
//! `failure_type`/`scope`, `process`). Label keys are sorted, as the CRI asks: a metric's
//! values come in the same order (see [`label_keys`]).

use hull_cri_api as cri;

/// cAdvisor's labels, on every metric.
pub const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn cri(self) -> i32 {
        match self {
            Kind::Counter => cri::MetricType::Counter as i32,
            Kind::Gauge => cri::MetricType::Gauge as i32,
        }
    }
}

/// One metric hulld reports.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Labels besides [`BASE_LABELS`].
    pub extra: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: Kind::Counter,
        extra: &[],
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: Kind::Gauge,
        extra: &[],
    }
}

const fn with(d: Desc, extra: &'static [&'static str]) -> Desc {
    Desc { extra, ..d }
}

const IFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];
const PROCESS: &[&str] = &["process"];

/// Container CPU (cgroup `cpu.stat` in the guest). CRI values are integers: seconds are
/// whole seconds, as containerd and CRI-O report them.
pub const CPU_USAGE: Desc = counter(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
);
pub const CPU_USER: Desc = counter(
    "container_cpu_user_seconds_total",
    "Cumulative user cpu time consumed in seconds.",
);
pub const CPU_SYSTEM: Desc = counter(
    "container_cpu_system_seconds_total",
    "Cumulative system cpu time consumed in seconds.",
);
pub const CFS_PERIODS: Desc = counter(
    "container_cpu_cfs_periods_total",
    "Number of elapsed enforcement period intervals.",
);
pub const CFS_THROTTLED_PERIODS: Desc = counter(
    "container_cpu_cfs_throttled_periods_total",
    "Number of throttled period intervals.",
);
pub const CFS_THROTTLED_SECONDS: Desc = counter(
    "container_cpu_cfs_throttled_seconds_total",
    "Total time duration the container has been throttled.",
);

/// Container memory (cgroup `memory.*` in the guest).
pub const MEM_USAGE: Desc = gauge(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
);
pub const MEM_WORKING_SET: Desc = gauge(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
);
pub const MEM_RSS: Desc = gauge("container_memory_rss", "Size of RSS in bytes.");
pub const MEM_CACHE: Desc = gauge(
    "container_memory_cache",
    "Number of bytes of page cache memory.",
);
pub const MEM_MAPPED: Desc = gauge(
    "container_memory_mapped_file",
    "Size of memory mapped files in bytes.",
);
pub const MEM_SWAP: Desc = gauge("container_memory_swap", "Container swap usage in bytes.");
pub const MEM_KERNEL: Desc = gauge(
    "container_memory_kernel_usage",
    "Size of kernel memory allocated in bytes.",
);
pub const MEM_MAX_USAGE: Desc = gauge(
    "container_memory_max_usage_bytes",
    "Maximum memory usage recorded in bytes",
);
pub const MEM_ACTIVE_FILE: Desc = gauge(
    "container_memory_total_active_file_bytes",
    "Current total active cache memory in file on disk, in bytes.",
);
pub const MEM_INACTIVE_FILE: Desc = gauge(
    "container_memory_total_inactive_file_bytes",
    "Current total inactive cache memory in file, in bytes.",
);
pub const MEM_FAILURES: Desc = with(
    counter(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
    ),
    &["failure_type", "scope"],
);
pub const OOM_EVENTS: Desc = counter(
    "container_oom_events_total",
    "Count of out of memory events observed for the container",
);

/// Container limits, from its CRI config.
pub const SPEC_MEMORY_LIMIT: Desc = gauge(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container.",
);
pub const SPEC_CPU_SHARES: Desc = gauge("container_spec_cpu_shares", "CPU share of the container.");
pub const SPEC_CPU_QUOTA: Desc = gauge("container_spec_cpu_quota", "CPU quota of the container.");
pub const SPEC_CPU_PERIOD: Desc =
    gauge("container_spec_cpu_period", "CPU period of the container.");
pub const START_TIME: Desc = gauge(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
);

/// Container processes (`pids.*`).
pub const PROCESSES: Desc = gauge(
    "container_processes",
    "Number of processes running inside the container.",
);
pub const THREADS_MAX: Desc = gauge(
    "container_threads_max",
    "Maximum number of threads allowed inside the container, infinity if value is zero",
);

/// The container's writable layer, on the host filesystem that holds it.
pub const FS_USAGE: Desc = with(
    gauge(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
    ),
    DEVICE,
);
pub const FS_LIMIT: Desc = with(
    gauge(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
    ),
    DEVICE,
);
pub const FS_INODES_FREE: Desc = with(
    gauge("container_fs_inodes_free", "Number of available Inodes"),
    DEVICE,
);
pub const FS_INODES_TOTAL: Desc = with(
    gauge("container_fs_inodes_total", "Number of Inodes"),
    DEVICE,
);

/// The pod's network (pod level: `container=""`), per interface of the pod netns.
pub const NET_RX_BYTES: Desc = with(
    counter(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
    ),
    IFACE,
);
pub const NET_RX_PACKETS: Desc = with(
    counter(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
    ),
    IFACE,
);
pub const NET_RX_DROPPED: Desc = with(
    counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
    ),
    IFACE,
);
pub const NET_RX_ERRORS: Desc = with(
    counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
    ),
    IFACE,
);
pub const NET_TX_BYTES: Desc = with(
    counter(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
    ),
    IFACE,
);
pub const NET_TX_PACKETS: Desc = with(
    counter(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
    ),
    IFACE,
);
pub const NET_TX_DROPPED: Desc = with(
    counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
    ),
    IFACE,
);
pub const NET_TX_ERRORS: Desc = with(
    counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
    ),
    IFACE,
);

/// hull's own: what the pod's VM costs the host (pod level), per host process of the VM
/// (the VMM, virtiofsd, the vsock backend; `process` is the program's name).
pub const VM_PROCESS_RSS: Desc = with(
    gauge(
        "hull_pod_vm_process_resident_memory_bytes",
        "Resident memory on the host of one process of the pod's VM (the VMM's includes the guest RAM it touched).",
    ),
    PROCESS,
);
pub const VM_PROCESS_CPU: Desc = with(
    counter(
        "hull_pod_vm_process_cpu_milliseconds_total",
        "Host CPU time of one process of the pod's VM (the VMM's includes the guest's vCPUs), in milliseconds.",
    ),
    PROCESS,
);
pub const VM_MEMORY: Desc = gauge(
    "hull_pod_vm_memory_bytes",
    "Guest RAM the pod's VM was given.",
);
pub const VM_VCPUS: Desc = gauge("hull_pod_vm_vcpus", "vCPUs the pod's VM was given.");
pub const VM_OVERHEAD: Desc = gauge(
    "hull_pod_vm_overhead_memory_bytes",
    "Host memory of the pod's VM beyond what its containers use: the VM processes' resident memory minus the containers' memory usage in the guest.",
);

/// Everything, in the order `ListMetricDescriptors` answers.
pub const ALL: &[Desc] = &[
    CPU_USAGE,
    CPU_USER,
    CPU_SYSTEM,
    CFS_PERIODS,
    CFS_THROTTLED_PERIODS,
    CFS_THROTTLED_SECONDS,
    MEM_USAGE,
    MEM_WORKING_SET,
    MEM_RSS,
    MEM_CACHE,
    MEM_MAPPED,
    MEM_SWAP,
    MEM_KERNEL,
    MEM_MAX_USAGE,
    MEM_ACTIVE_FILE,
    MEM_INACTIVE_FILE,
    MEM_FAILURES,
    OOM_EVENTS,
    SPEC_MEMORY_LIMIT,
    SPEC_CPU_SHARES,
    SPEC_CPU_QUOTA,
    SPEC_CPU_PERIOD,
    START_TIME,
    PROCESSES,
    THREADS_MAX,
    FS_USAGE,
    FS_LIMIT,
    FS_INODES_FREE,
    FS_INODES_TOTAL,
    NET_RX_BYTES,
    NET_RX_PACKETS,
    NET_RX_DROPPED,
    NET_RX_ERRORS,
    NET_TX_BYTES,
    NET_TX_PACKETS,
    NET_TX_DROPPED,
    NET_TX_ERRORS,
    VM_PROCESS_RSS,
    VM_PROCESS_CPU,
    VM_MEMORY,
    VM_VCPUS,
    VM_OVERHEAD,
];

/// A descriptor's label keys: the base labels and its extra ones, sorted.
pub fn label_keys(d: &Desc) -> Vec<String> {
    let mut keys: Vec<String> = BASE_LABELS
        .iter()
        .chain(d.extra)
        .map(|k| (*k).to_owned())
        .collect();
    keys.sort();
    keys
}

/// The CRI form of every descriptor.
pub fn cri_descriptors() -> Vec<cri::MetricDescriptor> {
    ALL.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: label_keys(d),
        })
        .collect()
}
