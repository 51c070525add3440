//! hulld's own metrics, served in the Prometheus text format on `[metrics] address` (off by
//! default, like containerd's `metrics.address`).
//!
//! Code anywhere in the process records through the `metrics` facade (`hull-image` its
//! pulls, `hull-vm` its template hits); a no-op until [`install`] sets the recorder, which
//! hulld does only when the endpoint is on. The exposition is `metrics-exporter-prometheus`'s;
//! gauges of current state (pods, containers by state) are refreshed at each scrape
//! (`http.rs`). The names:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hull_cri_requests_total` | counter | `rpc`, `code` (gRPC code name: `OK`, `NotFound`, ...) |
//! | `hull_cri_request_errors_total` | counter | `rpc`, `code` (only codes other than `OK`) |
//! | `hull_cri_request_duration_seconds` | histogram | `rpc` |
//! | `hull_pods` | gauge | `state` (`ready`, `notready`, `creating`) |
//! | `hull_containers` | gauge | `state` (`created`, `running`, `exited`, `unknown`) |
//! | `hull_vm_start_duration_seconds` | histogram | `backend`, `boot` (`cold`, `restore`): VMM start to agent ready |
//! | `hull_vm_template_lookups_total` | counter | `result` (`hit`, `miss`) |
//! | `hull_image_pulls_total` | counter | `result` (`ok`, `error`) |
//! | `hull_image_pull_bytes_total` | counter | bytes fetched from registries |
//! | `hull_image_pull_duration_seconds` | histogram | |
//! | `hull_leftovers_cleaned_total` | counter | `kind`: `sandbox_unwound`, `sandbox_leftover`, `vm_template` |
//!
//! The RPC name is one of the CRI's methods, or `other` (a client cannot grow the label
//! set). A call's code is the one in its response head: every unary CRI error (tonic
//! answers them trailers-only); a stream that fails after its head counts as `OK`.

mod http;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use http::{MetricsServer, MetricsServerError};

pub const RPC_REQUESTS: &str = "hull_cri_requests_total";
pub const RPC_ERRORS: &str = "hull_cri_request_errors_total";
pub const RPC_DURATION: &str = "hull_cri_request_duration_seconds";
pub const PODS: &str = "hull_pods";
pub const CONTAINERS: &str = "hull_containers";
pub const VM_START: &str = "hull_vm_start_duration_seconds";
pub const LEFTOVERS: &str = "hull_leftovers_cleaned_total";
/// Recorded by `hull-vm` (its template manager).
pub const TEMPLATE_LOOKUPS: &str = "hull_vm_template_lookups_total";
/// Recorded by `hull-image` (its pull).
pub const PULLS: &str = "hull_image_pulls_total";
pub const PULL_BYTES: &str = "hull_image_pull_bytes_total";
pub const PULL_DURATION: &str = "hull_image_pull_duration_seconds";

/// Histogram buckets (seconds): from a fast List call to a VM booting under TCG.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The CRI's methods (runtime.v1): the values the `rpc` label takes besides `other`.
const CRI_RPCS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Errors of [`install`].
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("Cannot set up the Prometheus recorder")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
}

/// Sets the process's metrics recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, InstallError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// HELP lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RPC_REQUESTS, "CRI calls served, by RPC and gRPC code.");
    describe_counter!(RPC_ERRORS, "CRI calls that failed, by RPC and gRPC code.");
    describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a CRI call (to its response head)."
    );
    describe_gauge!(PODS, "Pod sandboxes, by state.");
    describe_gauge!(CONTAINERS, "Containers, by state.");
    describe_histogram!(
        VM_START,
        metrics::Unit::Seconds,
        "Pod VM start, from starting the VMM to its agent answering, by backend and boot kind."
    );
    describe_counter!(
        TEMPLATE_LOOKUPS,
        "VM template lookups at pod VM start: hit (restored) or miss (template made now)."
    );
    describe_counter!(PULLS, "Image pulls, by result.");
    describe_counter!(
        PULL_BYTES,
        metrics::Unit::Bytes,
        "Bytes fetched from registries by image pulls."
    );
    describe_histogram!(
        PULL_DURATION,
        metrics::Unit::Seconds,
        "Duration of successful image pulls."
    );
    describe_counter!(
        LEFTOVERS,
        "What recovery and the leftover janitor cleaned up, by kind: half-created sandboxes unwound at start-up (sandbox_unwound), run dirs, VMs and CNI attachments of sandboxes hulld no longer knows (sandbox_leftover), unusable VM templates (vm_template)."
    );
}

/// The `rpc` label of a CRI path's last segment.
pub fn rpc_label(rpc: &str) -> &'static str {
    CRI_RPCS
        .iter()
        .find(|r| **r == rpc)
        .copied()
        .unwrap_or("other")
}

/// The name of a numeric gRPC status (`5` → `NotFound`), as grpc-go spells it.
pub fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from_i32) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::Unknown) => "Unknown",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        Err(_) => "Unknown",
    }
}

/// One CRI call answered with `code` (the name from [`code_name`]) after `elapsed`.
pub fn rpc_finished(rpc: &str, code: &'static str, elapsed: Duration) {
    let rpc = rpc_label(rpc);
    metrics::counter!(RPC_REQUESTS, "rpc" => rpc, "code" => code).increment(1);
    if code != "OK" {
        metrics::counter!(RPC_ERRORS, "rpc" => rpc, "code" => code).increment(1);
    }
    metrics::histogram!(RPC_DURATION, "rpc" => rpc).record(elapsed);
}

/// A pod VM came up: from starting its VMM to its agent answering.
pub fn vm_started(backend: hull_vm::hypervisor::Backend, restored: bool, elapsed: Duration) {
    let backend = match backend {
        hull_vm::hypervisor::Backend::Hull => "hull",
        hull_vm::hypervisor::Backend::Qemu => "qemu",
        // A host-isolation pod: its agent on the node, no VM.
        hull_vm::hypervisor::Backend::Host => "host",
    };
    let boot = if restored { "restore" } else { "cold" };
    metrics::histogram!(VM_START, "backend" => backend, "boot" => boot).record(elapsed);
}

/// Recovery or the leftover janitor cleaned `n` leftovers of `kind`.
pub fn leftovers_cleaned(kind: &'static str, n: usize) {
    metrics::counter!(LEFTOVERS, "kind" => kind).increment(n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_bounded() {
        assert_eq!(rpc_label("ListPodSandbox"), "ListPodSandbox");
        assert_eq!(rpc_label("PullImage"), "PullImage");
        assert_eq!(rpc_label("NoSuchRpc"), "other");
        assert_eq!(rpc_label(&"x".repeat(1000)), "other");
    }

    #[test]
    fn code_names_as_grpc_go_spells_them() {
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("12"), "Unimplemented");
        assert_eq!(code_name("9"), "FailedPrecondition");
        assert_eq!(code_name("junk"), "Unknown");
        assert_eq!(code_name("99"), "Unknown");
    }

    #[test]
    fn records_into_a_local_recorder() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            rpc_finished("ListPodSandbox", "OK", Duration::from_millis(3));
            rpc_finished("ContainerStatus", "NotFound", Duration::from_millis(1));
            vm_started(
                hull_vm::hypervisor::Backend::Qemu,
                false,
                Duration::from_secs(2),
            );
            leftovers_cleaned("sandbox_unwound", 2);
        });
        let text = handle.render();
        for want in [
            "hull_cri_requests_total{rpc=\"ListPodSandbox\",code=\"OK\"} 1",
            "hull_cri_request_errors_total{rpc=\"ContainerStatus\",code=\"NotFound\"} 1",
            "hull_cri_request_duration_seconds_bucket{rpc=\"ListPodSandbox\",le=\"0.005\"} 1",
            "hull_vm_start_duration_seconds_count{backend=\"qemu\",boot=\"cold\"} 1",
            "hull_leftovers_cleaned_total{kind=\"sandbox_unwound\"} 2",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("hull_cri_request_errors_total{rpc=\"ListPodSandbox\""));
    }
}
