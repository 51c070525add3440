//! PodSandboxStatus, ListPodSandbox, PodSandboxStats and ListPodSandboxStats: read-only
//! views of the sandbox manager (no per-pod lock; kubelet polls these).

use std::collections::HashMap;

use hull_cri_api as cri;

use crate::cri::CriService;
use crate::cri::status::CriError;
use crate::sandbox::Sandbox;
use crate::state::{ContainerState, SandboxRecord, SandboxState, now_nanos};

fn cri_state(state: SandboxState) -> i32 {
    match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::Creating | SandboxState::NotReady => {
            cri::PodSandboxState::SandboxNotready as i32
        }
    }
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn id_matches(filter_id: &str, id: &str) -> bool {
    filter_id.is_empty() || id.starts_with(filter_id)
}

/// The sandbox's record, after noticing a VM that died under a READY sandbox.
fn fresh_record(daemon: &crate::daemon::Daemon, sb: &Sandbox) -> SandboxRecord {
    let vm_dead = sb.state() == SandboxState::Ready && sb.vm().is_some_and(|vm| !vm.is_running());
    if vm_dead {
        tracing::warn!(pod_id = %sb.id(), "VM exited; sandbox is NOTREADY");
        let _ = sb.update(&daemon.store, |r| {
            r.state = SandboxState::NotReady;
            r.resources.error = "the VM exited".into();
        });
    }
    sb.record()
}

/// `info` of a verbose PodSandboxStatus: one JSON document, as containerd does.
fn verbose_info(sb: &Sandbox, rec: &SandboxRecord) -> Result<HashMap<String, String>, CriError> {
    let r = &rec.resources;
    let vm = sb.vm();
    let doc = serde_json::json!({
        // containerd's keys first: `jq .info.config` works as with containerd.
        "pid": vm.as_ref().map(|v| v.pid()).unwrap_or(r.vmm_pid),
        "runtimeHandler": rec.runtime_handler,
        "runtimeType": crate::cri::RUNTIME_NAME,
        "config": serde_json::to_value(&rec.config).map_err(|e| CriError::internal("Encoding info", e))?,
        // "vm": a microVM; "host": the containers run on the node (hull-agent in host
        // mode, whose pid is vmmPid).
        "isolation": r.isolation.as_str(),
        "vmmPid": vm.as_ref().map(|v| v.pid()).unwrap_or(r.vmm_pid),
        "vmRunning": vm.as_ref().is_some_and(|v| v.is_running()),
        "backend": r.backend,
        "consoleLog": r.console_log,
        "agentSocket": r.agent_socket,
        "netns": r.netns,
        "runDir": r.run_dir,
        "sharedDir": r.shared_dir,
        "stagingDir": crate::sandbox::share::staging_dir(&r.run_dir),
        "vcpus": r.vm.as_ref().filter(|v| v.host.is_none()).map(|v| v.vcpus),
        "memoryMib": r.vm.as_ref().filter(|v| v.host.is_none()).map(|v| v.memory_mib),
        "ips": r.ips,
        "timingsMs": r.timings_ms,
        "error": r.error,
    });
    let json = serde_json::to_string(&doc).map_err(|e| CriError::internal("Encoding info", e))?;
    Ok(HashMap::from([("info".to_owned(), json)]))
}

fn pod_status(rec: &SandboxRecord) -> cri::PodSandboxStatus {
    let mut ips = rec.resources.ips.iter();
    let network = ips.next().map(|first| cri::PodSandboxNetworkStatus {
        ip: first.clone(),
        additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    });
    let options = rec
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: cri_state(rec.state),
        created_at: rec.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const NANOS_PER_TICK: u64 = 10_000_000;

/// Host-side numbers of a VMM process from /proc: CPU time and RSS.
fn vmm_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())?;
    Some((
        ticks.saturating_mul(NANOS_PER_TICK),
        rss_kib.saturating_mul(1024),
    ))
}

/// The host processes of a pod's VM: the VMM and every helper whose pid file is in the
/// sandbox's run dir (virtiofsd, the vsock backend), without duplicates or hulld itself.
fn vm_pids(vmm_pid: u32, run_dir: &std::path::Path) -> Vec<u32> {
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

/// The pod netns' interfaces as the VMM (which runs in that netns) sees them in
/// `/proc/<pid>/net/dev`: `eth0` (the CNI interface) is the default one; `lo` and the VM's
/// tap (a mirror of eth0's traffic) are left out.
fn parse_net_dev(text: &str, ts: i64) -> Option<cri::NetworkUsage> {
    let value = |v: u64| Some(cri::UInt64Value { value: v });
    let interfaces: Vec<cri::NetworkInterfaceUsage> = text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (name != "lo" && !name.starts_with("tap") && f.len() >= 11).then(|| {
                cri::NetworkInterfaceUsage {
                    name: name.to_owned(),
                    rx_bytes: value(f[0]),
                    rx_errors: value(f[2]),
                    tx_bytes: value(f[8]),
                    tx_errors: value(f[10]),
                }
            })
        })
        .collect();
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.first())
        .cloned();
    default_interface.as_ref()?;
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface,
        interfaces,
    })
}

/// CPU time and RSS of the whole VM as the host sees it (guest work and VMM overhead).
fn vm_usage(sb: &Sandbox, rec: &SandboxRecord) -> Option<(u64, u64)> {
    let vm = sb.vm().filter(|v| v.is_running())?;
    let usages: Vec<(u64, u64)> = vm_pids(vm.pid(), &rec.resources.run_dir)
        .into_iter()
        .filter_map(vmm_usage)
        .collect();
    if usages.is_empty() {
        return None;
    }
    Some(usages.iter().fold((0, 0), |(c, m), (uc, um)| {
        (c.saturating_add(*uc), m.saturating_add(*um))
    }))
}

/// CPU time and working set of a host pod's containers (from their cgroups on the node).
fn host_containers_usage(containers: &[(cri::ContainerStats, u64)]) -> (u64, u64) {
    let of = |v: Option<&cri::UInt64Value>| v.map(|v| v.value).unwrap_or(0);
    containers.iter().fold((0, 0), |(cpu, mem), (c, _)| {
        let c_cpu = of(c
            .cpu
            .as_ref()
            .and_then(|u| u.usage_core_nano_seconds.as_ref()));
        let c_mem = of(c.memory.as_ref().and_then(|u| u.working_set_bytes.as_ref()));
        (cpu.saturating_add(c_cpu), mem.saturating_add(c_mem))
    })
}

/// A pod's stats: CPU and memory of its VM's host processes (what the pod costs the
/// node: the containers' work inside the guest plus the VMM, virtiofsd and the guest
/// kernel; for a host pod its agent plus its containers' cgroups), its running
/// containers' own stats from the guest's cgroups, and the number of their processes.
fn pod_stats(
    sb: &Sandbox,
    rec: &SandboxRecord,
    containers: Vec<(cri::ContainerStats, u64)>,
) -> cri::PodSandboxStats {
    let ts = now_nanos();
    let value = |v: u64| Some(cri::UInt64Value { value: v });
    let mut usage = vm_usage(sb, rec);
    if rec.resources.isolation == crate::config::Isolation::Host {
        // A host pod's containers are not in its agent's process: their cgroups count.
        let (cpu, mem) = host_containers_usage(&containers);
        usage = usage.map(|(c, m)| (c.saturating_add(cpu), m.saturating_add(mem)));
    }
    let (cpu, memory) = match usage {
        Some((cpu_ns, rss)) => (
            Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: value(cpu_ns),
                usage_nano_cores: None,
            }),
            Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: value(rss),
                rss_bytes: value(rss),
                usage_bytes: value(rss),
                ..Default::default()
            }),
        ),
        None => (None, None),
    };
    let processes: u64 = containers.iter().map(|(_, p)| p).sum();
    let network = sb
        .vm()
        .filter(|v| v.is_running())
        .and_then(|v| std::fs::read_to_string(format!("/proc/{}/net/dev", v.pid())).ok())
        .and_then(|text| parse_net_dev(&text, ts));
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu,
            memory,
            network,
            process: Some(cri::ProcessUsage {
                timestamp: ts,
                process_count: value(processes),
            }),
            containers: containers.into_iter().map(|(c, _)| c).collect(),
        }),
        windows: None,
    }
}

impl CriService {
    fn pod_sandbox_lookup(&self, id: &str) -> Result<std::sync::Arc<Sandbox>, CriError> {
        self.daemon.sandboxes.get(id).ok_or_else(|| {
            CriError::NotFound(format!(
                "pod sandbox {} not found",
                crate::cri::status::quote(id)
            ))
        })
    }

    pub(crate) async fn do_pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        tracing::trace!(pod_id = %req.pod_sandbox_id, "PodSandboxStatus");
        let sb = self.pod_sandbox_lookup(&req.pod_sandbox_id)?;
        let rec = fresh_record(&self.daemon, &sb);
        let info = if req.verbose {
            verbose_info(&sb, &rec)?
        } else {
            HashMap::new()
        };
        Ok(cri::PodSandboxStatusResponse {
            status: Some(pod_status(&rec)),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        })
    }

    pub(crate) async fn do_list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, CriError> {
        tracing::trace!("ListPodSandbox");
        let filter = req.filter.unwrap_or_default();
        let mut items: Vec<cri::PodSandbox> = self
            .daemon
            .sandboxes
            .list()
            .iter()
            .map(|sb| fresh_record(&self.daemon, sb))
            .filter(|r| id_matches(&filter.id, &r.id))
            .filter(|r| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == cri_state(r.state))
            })
            .filter(|r| labels_match(&filter.label_selector, &r.config.labels))
            .map(|r| cri::PodSandbox {
                id: r.id.clone(),
                state: cri_state(r.state),
                created_at: r.created_at,
                metadata: r.config.metadata,
                labels: r.config.labels,
                annotations: r.config.annotations,
                runtime_handler: r.runtime_handler,
            })
            .collect();
        items.sort_by_key(|b| std::cmp::Reverse(b.created_at));
        Ok(cri::ListPodSandboxResponse { items })
    }

    pub(crate) async fn do_pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        let sb = self.pod_sandbox_lookup(&req.pod_sandbox_id)?;
        let rec = sb.record();
        let containers = self.pod_container_stats(&rec.id).await;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(pod_stats(&sb, &rec, containers)),
        })
    }

    pub(crate) async fn do_list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
        let filter = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for sb in self.daemon.sandboxes.list() {
            let r = sb.record();
            if !id_matches(&filter.id, &r.id)
                || !labels_match(&filter.label_selector, &r.config.labels)
            {
                continue;
            }
            let containers = self.pod_container_stats(&r.id).await;
            stats.push(pod_stats(&sb, &r, containers));
        }
        Ok(cri::ListPodSandboxStatsResponse { stats })
    }

    /// Stats and process counts of the pod's running containers (one that cannot be read,
    /// say because it just exited, is left out).
    async fn pod_container_stats(&self, pod_id: &str) -> Vec<(cri::ContainerStats, u64)> {
        let records = match self.daemon.containers.list_records() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pod_id, error = %e, "cannot list the pod's containers");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for r in records
            .iter()
            .filter(|r| r.sandbox_id == pod_id && r.state == ContainerState::Running)
        {
            match self.container_stats_with_pids(r).await {
                Ok(s) => out.push(s),
                Err(e) => tracing::debug!(pod_id, container = %r.id, error = %e, "no stats"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_usage() {
        let (cpu, rss) = vmm_usage(std::process::id()).unwrap();
        assert!(rss > 0);
        let _ = cpu;
        assert!(vmm_usage(u32::MAX).is_none());
    }

    #[test]
    fn network_from_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n  eth0: 5000 40 1 0 0 0 0 0 7000 50 2 0 0 0 0 0\n  tap0: 7000 50 0 0 0 0 0 0 5000 40 0 0 0 0 0 0\n";
        let n = parse_net_dev(text, 7).unwrap();
        assert_eq!(n.interfaces.len(), 1);
        let d = n.default_interface.unwrap();
        assert_eq!(d.name, "eth0");
        let v = |x: Option<cri::UInt64Value>| x.map(|v| v.value);
        assert_eq!(
            (v(d.rx_bytes), v(d.rx_errors), v(d.tx_bytes), v(d.tx_errors)),
            (Some(5000), Some(1), Some(7000), Some(2))
        );
        assert!(parse_net_dev("a\nb\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12\n", 0).is_none());
    }

    #[test]
    fn vm_pids_from_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("virtiofsd.pid"), "4242\n").unwrap();
        std::fs::write(dir.path().join("qemu.pid"), "100").unwrap();
        std::fs::write(dir.path().join("self.pid"), std::process::id().to_string()).unwrap();
        std::fs::write(dir.path().join("junk.pid"), "x").unwrap();
        std::fs::write(dir.path().join("console.log"), "5").unwrap();
        let mut pids = vm_pids(100, dir.path());
        pids.sort_unstable();
        assert_eq!(pids, [100, 4242]);
    }

    #[test]
    fn filters() {
        let sel = HashMap::from([("app".to_string(), "web".to_string())]);
        let mut labels = HashMap::from([("app".to_string(), "web".to_string())]);
        assert!(labels_match(&sel, &labels));
        labels.insert("app".into(), "db".into());
        assert!(!labels_match(&sel, &labels));
        assert!(labels_match(&HashMap::new(), &labels));
        assert!(id_matches("", "abc"));
        assert!(id_matches("ab", "abc"));
        assert!(!id_matches("b", "abc"));
    }
}
