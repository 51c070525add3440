//! Containers in the pod VM: the OCI spec hulld builds for the agent, user lookups in the
//! image, and (with the sandbox API) the container manager and exit watcher.

pub mod etc;
mod exec_sync;
pub mod host_volumes;
pub mod images;
pub mod inroot;
pub mod manager;
pub mod oci;
pub mod orphans;
pub mod recover;
pub mod runtime;
pub mod spec;
pub mod user;
pub mod view;
pub mod volumes;

pub use spec::{GuestMount, ImageDefaults, SpecInput};

/// The hook the sandbox manager calls when a pod's VM dies: every container of the pod
/// that is running or created turns EXITED with the message (see
/// [`manager::ContainerManager::mark_lost`]).
pub fn lost_with_vm(
    containers: &std::sync::Arc<manager::ContainerManager>,
) -> crate::sandbox::watch::VmDeathHook {
    let containers = std::sync::Arc::clone(containers);
    std::sync::Arc::new(move |sandbox_id: &str, message: &str| {
        let records = match containers.list_records() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pod_id = sandbox_id, error = %e, "cannot list the containers of a pod whose VM died");
                return;
            }
        };
        for r in records.iter().filter(|r| {
            r.sandbox_id == sandbox_id
                && matches!(
                    r.state,
                    crate::state::ContainerState::Running | crate::state::ContainerState::Created
                )
        }) {
            if let Err(e) = containers.mark_lost(&r.id, message) {
                tracing::warn!(container = %r.id, error = %e, "cannot mark a container of a dead VM exited");
            }
        }
    })
}
