//! At start-up, before serving: what a CreateContainer cut short by a crash left behind.
//! The container record is written last, so such a container has none: its dir in the
//! pod's share (rootfs overlay, volume bind mounts, /etc files), its writable layer, and
//! maybe a created container inside the guest. Each is removed, with a log line (the CRI
//! call itself failed for the client, which creates the container again).

use std::collections::HashSet;
use std::sync::Arc;

use super::manager::ContainerManager;
use super::volumes;
use crate::sandbox::{Sandbox, SandboxManager};
use crate::state::SandboxState;

/// Whether a name has the form of hulld's container ids (64 lowercase hex digits).
fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes every half-created container; returns how many.
pub async fn remove_orphans(
    containers: &Arc<ContainerManager>,
    sandboxes: &SandboxManager,
) -> usize {
    let known: HashSet<String> = match containers.list_records() {
        Ok(r) => r.into_iter().map(|r| r.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "orphan containers: cannot list records");
            return 0;
        }
    };
    let mut removed = HashSet::new();
    for sb in sandboxes.list() {
        let Ok(rd) = std::fs::read_dir(sb.staging_dir()) else {
            continue;
        };
        let orphans: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_container_id(n) && !known.contains(n))
            .collect();
        for id in orphans {
            remove_in_sandbox(containers, &sb, &id).await;
            removed.insert(id);
        }
    }
    // Writable layers whose share dir is gone too (the pod was removed meanwhile).
    if let Some(images) = containers.images() {
        for id in images.container_ids() {
            if is_container_id(&id) && !known.contains(&id) && !removed.contains(&id) {
                tracing::warn!(container = %id, "removing the writable layer of a container hulld does not know");
                let nowhere = std::path::Path::new("/nonexistent");
                if let Err(e) = images.remove_rootfs(&id, nowhere).await {
                    tracing::warn!(container = %id, error = %e, "cannot remove an orphan writable layer");
                }
                removed.insert(id);
            }
        }
    }
    tracing::info!(removed = removed.len(), "half-created containers removed");
    removed.len()
}

async fn remove_in_sandbox(containers: &ContainerManager, sb: &Sandbox, id: &str) {
    tracing::warn!(container = %id, pod_id = %sb.id(), "removing a container whose creation was cut short");
    if sb.state() == SandboxState::Ready
        && let Ok(mut agent) = sb.agent().await
    {
        let rm = hull_agent_api::v1::RemoveContainerRequest {
            container_id: id.to_owned(),
            force: true,
        };
        if let Err(e) = agent.remove_container(rm).await
            && e.code() != tonic::Code::NotFound
        {
            tracing::warn!(container = %id, error = %e, "cannot remove an orphan container in the guest");
        }
    }
    volumes::release(sb.run_dir(), id);
    let rootfs = sb.staging_dir().join(id).join("rootfs");
    if let Some(images) = containers.images()
        && let Err(e) = images.remove_rootfs(id, &rootfs).await
    {
        tracing::warn!(container = %id, error = %e, "cannot remove an orphan rootfs");
    }
    // Deleted only once nothing is mounted in it (RemovePodSandbox sweeps what is left).
    if let Err(e) = crate::mounts::remove_unmounted_tree(&sb.staging_dir().join(id)) {
        tracing::warn!(container = %id, error = %crate::sandbox::error_chain(&e),
            "cannot remove an orphan container dir");
    }
}
