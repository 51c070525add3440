//! After a hulld restart: containers recorded as running are watched again through their
//! pod's agent (their log writer resumes where the log file ends, and their exit is
//! recorded), or marked exited when their pod's VM is gone.

use std::sync::Arc;

use super::manager::{ContainerManager, Exit};
use super::runtime;
use crate::sandbox::SandboxManager;
use crate::state::{ContainerRecord, ContainerState, SandboxState};

/// Exit code recorded for a container whose pod VM disappeared while hulld was down.
pub const LOST_EXIT_CODE: i32 = 255;

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
                let exit = Exit {
                    exit_code: LOST_EXIT_CODE,
                    oom_killed: false,
                    finished_at: crate::state::now_nanos(),
                };
                if let Err(e) = containers.mark_exited(&r.id, exit) {
                    tracing::warn!(container = %r.id, error = %e, "cannot mark a lost container");
                }
                lost += 1;
            }
        }
    }
    tracing::info!(watched, lost, "containers recovered");
    (watched, lost)
}
