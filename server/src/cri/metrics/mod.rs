//! `ListMetricDescriptors` and `ListPodSandboxMetrics`: what kubelet serves at
//! `/metrics/cadvisor` when it takes pod and container stats from the CRI
//! (`PodAndContainerStatsFromCRI`). kubelet asks for the descriptors once when it starts and
//! for the metrics at every scrape.
//!
//! Per ready pod: its network (the pod netns' interfaces) and its VM's cost on the host
//! (`hull_pod_vm_*`, per host process), at pod level (`container=""`); per running
//! container: its guest cgroup (CPU, memory, OOM kills, processes, through the agent), its
//! limits and start time, and its writable layer on the host. A pod or container that
//! cannot be read right now (its VM is going away) is left out of this scrape, not failed.

mod collect;
pub mod descriptors;
mod sample;

use hull_agent_api::v1 as pb;
use hull_cri_api as cri;

use super::CriService;
use super::status::CriError;
use crate::sandbox::Sandbox;
use crate::state::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use sample::Samples;

impl CriService {
    pub(crate) fn do_list_metric_descriptors(&self) -> cri::ListMetricDescriptorsResponse {
        tracing::debug!("ListMetricDescriptors");
        cri::ListMetricDescriptorsResponse {
            descriptors: descriptors::cri_descriptors(),
        }
    }

    pub(crate) async fn do_list_pod_sandbox_metrics(
        &self,
    ) -> Result<cri::ListPodSandboxMetricsResponse, CriError> {
        tracing::trace!("ListPodSandboxMetrics");
        let containers: Vec<ContainerRecord> = self.daemon.store.list()?;
        let mut pod_metrics = Vec::new();
        for sb in self.daemon.sandboxes.list() {
            let rec = sb.record();
            if rec.state != SandboxState::Ready {
                continue;
            }
            let span = tracing::trace_span!("pod_metrics", pod_id = %rec.id);
            let _enter = span.enter();
            let running: Vec<&ContainerRecord> = containers
                .iter()
                .filter(|c| c.sandbox_id == rec.id && c.state == ContainerState::Running)
                .collect();
            pod_metrics.push(self.pod_metrics(&sb, &rec, &running).await);
        }
        Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
    }

    async fn pod_metrics(
        &self,
        sb: &Sandbox,
        rec: &SandboxRecord,
        running: &[&ContainerRecord],
    ) -> cri::PodSandboxMetrics {
        let mut container_metrics = Vec::new();
        let mut containers_usage = 0u64;
        for c in running {
            match self.container_metrics(sb, rec, c).await {
                Ok((m, usage)) => {
                    containers_usage = containers_usage.saturating_add(usage);
                    container_metrics.push(m);
                }
                Err(e) => tracing::debug!(container_id = %c.id, error = %e, "no metrics"),
            }
        }
        let mut pod = Samples::pod(rec);
        if let Some(vm) = sb.vm().filter(|v| v.is_running()) {
            sample::network(&mut pod, &collect::pod_interfaces(vm.pid()));
            let procs: Vec<_> = collect::vm_pids(vm.pid(), &rec.resources.run_dir)
                .into_iter()
                .filter_map(collect::proc_usage)
                .collect();
            sample::vm(&mut pod, rec, &sample::merge_procs(procs), containers_usage);
        }
        cri::PodSandboxMetrics {
            pod_sandbox_id: rec.id.clone(),
            metrics: pod.out,
            container_metrics,
        }
    }

    /// A running container's metrics, and its memory usage in the guest.
    async fn container_metrics(
        &self,
        sb: &Sandbox,
        rec: &SandboxRecord,
        c: &ContainerRecord,
    ) -> Result<(cri::ContainerMetrics, u64), CriError> {
        let mut agent = sb
            .agent()
            .await
            .map_err(|e| CriError::FailedPrecondition(crate::sandbox::error_chain(&e)))?;
        let stats = agent
            .container_stats(pb::ContainerStatsRequest {
                container_id: c.id.clone(),
            })
            .await
            .map_err(|e| CriError::internal("Agent ContainerStats", e))?
            .into_inner();
        let mut m = Samples::container(rec, c);
        sample::cgroup(&mut m, &stats);
        sample::spec(&mut m, c);
        let writable = self
            .daemon
            .containers
            .images()
            .and_then(|i| i.writable_dir(&c.id));
        if let Some(dir) = writable {
            let dir2 = dir.clone();
            let used =
                tokio::task::spawn_blocking(move || crate::container::runtime::dir_usage(&dir2).0)
                    .await
                    .unwrap_or(0);
            if let Some(f) = collect::fs_usage(&dir, used) {
                sample::fs(&mut m, &f);
            }
        }
        Ok((
            cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: m.out,
            },
            stats.memory_current_bytes,
        ))
    }
}

#[cfg(test)]
mod tests;
