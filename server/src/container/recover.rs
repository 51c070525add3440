//! After a hulld restart: containers recorded as running are watched again through their
//! pod's agent (their log writer resumes where the log file ends, and their exit is
//! recorded), or marked exited when their pod's VM is gone.

use std::sync::Arc;

use super::manager::ContainerManager;
use super::runtime;
use crate::sandbox::SandboxManager;
use crate::state::{ContainerRecord, ContainerState, SandboxState};

pub use super::manager::LOST_EXIT_CODE;

/// Re-watches or closes every running container; returns (watched, marked exited).
pub async fn recover(
    containers: &Arc<ContainerManager>,
    sandboxes: &SandboxManager,
) -> (usize, usize) {
    let records: Vec<ContainerRecord> = match containers.list_records() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "container recovery: cannot list records");
            return (0, 0);
        }
    };
    let (mut watched, mut lost) = (0, 0);
    for r in records
        .into_iter()
        .filter(|r| r.state == ContainerState::Running)
    {
        let sandbox = sandboxes
            .get(&r.sandbox_id)
            .filter(|s| s.state() == SandboxState::Ready);
        let agent = match sandbox {
            Some(s) => s.agent().await.ok(),
            None => None,
        };
        match agent {
            Some(agent) => {
                runtime::rewatch(Arc::clone(containers), agent, r.clone());
                watched += 1;
            }
            None => {
                let why = sandbox_gone_message(sandboxes, &r.sandbox_id);
                if let Err(e) = containers.mark_lost(&r.id, &why) {
                    tracing::warn!(container = %r.id, error = %e, "cannot mark a lost container");
                }
                lost += 1;
            }
        }
    }
    tracing::info!(watched, lost, "containers recovered");
    (watched, lost)
}

/// Why a running container's pod could not be reached after a restart.
fn sandbox_gone_message(sandboxes: &SandboxManager, sandbox_id: &str) -> String {
    match sandboxes.get(sandbox_id) {
        Some(sb) => {
            let error = sb.record().resources.error;
            if error.is_empty() {
                "the pod's VM could not be reached after a hulld restart".to_owned()
            } else {
                format!("the pod's VM is gone: {error}")
            }
        }
        None => "the pod sandbox is gone".to_owned(),
    }
}
