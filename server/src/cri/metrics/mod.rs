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
//! Pods are read [`CONCURRENT_PODS`] at a time, and a guest that does not answer within
//! [`GUEST_TIMEOUT`] (a hung or stopped VM) costs its containers' series in this scrape,
//! never the other pods' or its own VM cost and network series.

mod collect;
pub mod descriptors;
mod sample;

use std::time::Duration;

use futures::StreamExt;
use hull_agent_api::v1 as pb;
use hull_cri_api as cri;
use tracing::Instrument;

use super::CriService;
use super::status::CriError;
use crate::sandbox::Sandbox;
use crate::state::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use sample::Samples;

/// How long one pod's guest may take to give its containers' figures.
const GUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pods read at once.
const CONCURRENT_PODS: usize = 8;

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
        let ready = self.daemon.sandboxes.list().into_iter().filter_map(|sb| {
            let rec = sb.record();
            (rec.state == SandboxState::Ready).then_some((sb, rec))
        });
        let containers = &containers;
        let pod_metrics = futures::stream::iter(ready)
            .map(|(sb, rec)| async move {
                let span = tracing::debug_span!("pod_metrics", pod_id = %rec.id);
                let running: Vec<&ContainerRecord> = containers
                    .iter()
                    .filter(|c| c.sandbox_id == rec.id && c.state == ContainerState::Running)
                    .collect();
                self.pod_metrics(&sb, &rec, &running).instrument(span).await
            })
            .buffered(CONCURRENT_PODS)
            .collect()
            .await;
        Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
    }

    async fn pod_metrics(
        &self,
        sb: &Sandbox,
        rec: &SandboxRecord,
        running: &[&ContainerRecord],
    ) -> cri::PodSandboxMetrics {
        let mut container_metrics = Vec::new();
        let mut containers_usage = Some(0u64);
        let read = async {
            for c in running {
                match self.container_metrics(sb, rec, c).await {
                    Ok((m, usage)) => {
                        containers_usage = containers_usage.map(|u| u.saturating_add(usage));
                        container_metrics.push(m);
                    }
                    Err(e) => tracing::debug!(container_id = %c.id, error = %e, "no metrics"),
                }
            }
        };
        if tokio::time::timeout(GUEST_TIMEOUT, read).await.is_err() {
            tracing::warn!(
                pod_id = %rec.id,
                timeout = ?GUEST_TIMEOUT,
                "the guest agent did not give its containers' figures in time: they are left out of this scrape"
            );
            container_metrics.clear();
            containers_usage = None;
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
