use std::collections::{HashMap, HashSet};

use hull_agent_api::v1 as pb;
use hull_cri_api as cri;

use super::descriptors::{self, ALL, BASE_LABELS, label_keys};
use super::sample::{self, NetIface, ProcUsage, Samples};
use crate::state::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};

fn pod() -> SandboxRecord {
    SandboxRecord {
        id: "p0d".into(),
        state: SandboxState::Ready,
        config: cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "shop".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            ..Default::default()
        },
        runtime_handler: String::new(),
        created_at: 1,
        resources: Default::default(),
    }
}

fn container() -> ContainerRecord {
    ContainerRecord {
        id: "c0ffee".into(),
        sandbox_id: "p0d".into(),
        state: ContainerState::Running,
        config: cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "nginx".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_shares: 512,
                    cpu_quota: 50_000,
                    cpu_period: 100_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        image_ref: "registry.k8s.io/nginx:1".into(),
        image_id: "sha256:x".into(),
        created_at: 1,
        started_at: 1_700_000_000_500_000_000,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path: String::new(),
        runtime_spec: None,
    }
}

fn stats() -> pb::ContainerStatsResponse {
    pb::ContainerStatsResponse {
        cpu_usage_usec: 3_500_000,
        cpu_user_usec: 2_900_000,
        cpu_system_usec: 600_000,
        cpu_nr_periods: 10,
        cpu_nr_throttled: 4,
        cpu_throttled_usec: 2_000_001,
        memory_current_bytes: 10_000,
        memory_file_bytes: 3_000,
        memory_active_file_bytes: 1_000,
        memory_inactive_file_bytes: 2_000,
        memory_anon_bytes: 6_000,
        memory_pgfault: 77,
        memory_pgmajfault: 5,
        oom_kills: 1,
        pids_current: 3,
        pids_max: 1024,
        ..Default::default()
    }
}

/// Each sample as `name{k=v,...} value`, keyed for lookups.
fn by_series(metrics: &[cri::Metric]) -> HashMap<String, u64> {
    let descs: HashMap<&str, Vec<String>> = ALL.iter().map(|d| (d.name, label_keys(d))).collect();
    metrics
        .iter()
        .map(|m| {
            let keys = &descs[m.name.as_str()];
            assert_eq!(keys.len(), m.label_values.len(), "{}", m.name);
            let labels: Vec<String> = keys
                .iter()
                .zip(&m.label_values)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let series = format!("{}{{{}}}", m.name, labels.join(","));
            (series, m.value.map(|v| v.value).unwrap_or(u64::MAX))
        })
        .collect()
}

#[test]
fn descriptors_are_unique_sorted_and_carry_cadvisor_labels() {
    let descs = descriptors::cri_descriptors();
    let names: HashSet<&str> = descs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), descs.len(), "duplicate names");
    for d in &descs {
        let mut sorted = d.label_keys.clone();
        sorted.sort();
        assert_eq!(sorted, d.label_keys, "{}: keys must be sorted", d.name);
        for base in BASE_LABELS {
            assert!(d.label_keys.iter().any(|k| k == base), "{}", d.name);
        }
        assert!(!d.help.is_empty());
    }
    for want in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_network_receive_bytes_total",
        "container_network_transmit_errors_total",
        "container_fs_usage_bytes",
        "container_processes",
        "container_oom_events_total",
        "hull_pod_vm_process_resident_memory_bytes",
    ] {
        assert!(names.contains(want), "missing {want}");
    }
}

#[test]
fn container_samples_from_the_guest_cgroup() {
    let (p, c) = (pod(), container());
    let mut m = Samples::container(&p, &c);
    sample::cgroup(&mut m, &stats());
    sample::spec(&mut m, &c);
    let s = by_series(&m.out);
    let base =
        "container=nginx,id=c0ffee,image=registry.k8s.io/nginx:1,name=nginx,namespace=shop,pod=web";
    let get = |name: &str| s[&format!("{name}{{{base}}}")];
    assert_eq!(get("container_cpu_usage_seconds_total"), 3);
    assert_eq!(get("container_cpu_user_seconds_total"), 2);
    assert_eq!(get("container_cpu_cfs_throttled_periods_total"), 4);
    assert_eq!(get("container_cpu_cfs_throttled_seconds_total"), 2);
    assert_eq!(get("container_memory_usage_bytes"), 10_000);
    // usage - inactive_file, as kubelet computes it
    assert_eq!(get("container_memory_working_set_bytes"), 8_000);
    assert_eq!(get("container_memory_rss"), 6_000);
    assert_eq!(get("container_memory_cache"), 3_000);
    assert_eq!(get("container_oom_events_total"), 1);
    assert_eq!(get("container_processes"), 3);
    assert_eq!(get("container_threads_max"), 1024);
    assert_eq!(get("container_spec_memory_limit_bytes"), 64 << 20);
    assert_eq!(get("container_spec_cpu_quota"), 50_000);
    assert_eq!(get("container_start_time_seconds"), 1_700_000_000);
    let fault = "container_memory_failures_total{container=nginx,failure_type=pgmajfault,id=c0ffee,image=registry.k8s.io/nginx:1,name=nginx,namespace=shop,pod=web,scope=hierarchy}";
    assert_eq!(s[fault], 5);
    // No two samples share name and labels (kubelet's registry would refuse the scrape).
    assert_eq!(s.len(), m.out.len());
    assert!(m.out.iter().all(|x| x.timestamp == 0));
}

#[test]
fn working_set_of_an_older_agent_falls_back_to_file_pages() {
    let old = pb::ContainerStatsResponse {
        memory_current_bytes: 10_000,
        memory_file_bytes: 3_000,
        ..Default::default()
    };
    assert_eq!(sample::working_set(&old), 7_000);
    assert_eq!(sample::working_set(&stats()), 8_000);
}

#[test]
fn pod_samples_network_and_vm_cost() {
    let mut p = pod();
    p.resources.vm = Some(hull_vm::hypervisor::VmConfig {
        id: "p0d".into(),
        vcpus: 2,
        memory_mib: 256,
        kernel: "/k".into(),
        initramfs: "/i".into(),
        cmdline: String::new(),
        run_dir: "/r".into(),
        netns: None,
        net: None,
        shared_dir: None,
        host: None,
    });
    let mut m = Samples::pod(&p);
    let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n  tap0: 7000 50 0 0 0 0 0 0 5000 40 0 0 0 0 0 0\n";
    let ifaces = sample::parse_net_dev(text);
    assert_eq!(
        ifaces,
        [NetIface {
            name: "eth0".into(),
            rx_bytes: 5000,
            rx_packets: 40,
            rx_errors: 1,
            rx_dropped: 2,
            tx_bytes: 7000,
            tx_packets: 50,
            tx_errors: 3,
            tx_dropped: 4,
        }]
    );
    sample::network(&mut m, &ifaces);
    let procs = sample::merge_procs(vec![
        ProcUsage {
            process: "virtiofsd".into(),
            cpu_millis: 10,
            rss_bytes: 1000,
        },
        ProcUsage {
            process: "qemu-system-x86".into(),
            cpu_millis: 500,
            rss_bytes: 90_000,
        },
        ProcUsage {
            process: "virtiofsd".into(),
            cpu_millis: 20,
            rss_bytes: 2000,
        },
    ]);
    assert_eq!(procs.len(), 2);
    sample::vm(&mut m, &p, &procs, Some(40_000));
    let s = by_series(&m.out);
    let base = "container=,id=p0d,image=,name=web,namespace=shop,pod=web";
    let iface = "container=,id=p0d,image=,interface=eth0,name=web,namespace=shop,pod=web";
    assert_eq!(
        s[&format!("container_network_receive_bytes_total{{{iface}}}")],
        5000
    );
    assert_eq!(
        s[&format!("container_network_transmit_packets_dropped_total{{{iface}}}")],
        4
    );
    let fsd = format!("hull_pod_vm_process_resident_memory_bytes{{{base},process=virtiofsd}}");
    assert_eq!(s[&fsd], 3000);
    let cpu = format!("hull_pod_vm_process_cpu_milliseconds_total{{{base},process=virtiofsd}}");
    assert_eq!(s[&cpu], 30);
    assert_eq!(s[&format!("hull_pod_vm_memory_bytes{{{base}}}")], 256 << 20);
    assert_eq!(s[&format!("hull_pod_vm_vcpus{{{base}}}")], 2);
    assert_eq!(
        s[&format!("hull_pod_vm_overhead_memory_bytes{{{base}}}")],
        93_000 - 40_000
    );
    assert_eq!(s.len(), m.out.len());
    // A guest that did not answer: the VM's figures, no overhead (it would count the
    // containers' memory as overhead).
    let mut silent = Samples::pod(&p);
    sample::vm(&mut silent, &p, &procs, None);
    let s = by_series(&silent.out);
    assert_eq!(s[&fsd], 3000);
    assert!(
        !s.keys().any(|k| k.starts_with("hull_pod_vm_overhead")),
        "{s:?}"
    );
}
