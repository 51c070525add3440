//! Start-up recovery of pod sandboxes (containerd `podsandbox/recover.go`).
//!
//! For every sandbox record:
//! - `creating`: a RunPodSandbox was cut short by a crash. Its resources are unwound the
//!   way Remove would (VMM found from its pid files and stopped, pod network torn down
//!   from the CNI cache, run dir removed) and the record deleted. If that fails, the
//!   record stays NOTREADY with its name reserved, for RemovePodSandbox.
//! - `ready`: hulld re-attaches to the VMM; if it still runs, the sandbox stays READY (the
//!   agent is reconnected on first use); if it died, the sandbox becomes NOTREADY and the
//!   backend's leftover helpers are stopped. Its network stays until StopPodSandbox.
//! - `notready`: kept as is, for Stop/Remove.

use std::sync::Arc;

use crate::sandbox::{SandboxManager, error_chain, name_key};
use crate::state::{SandboxRecord, SandboxState};

/// What recovery did, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    pub ready: Vec<String>,
    pub not_ready: Vec<String>,
    /// `creating` records unwound and deleted.
    pub unwound: Vec<String>,
    pub errors: Vec<String>,
}

impl SandboxManager {
    /// Reloads every sandbox from the store. Call once, before serving.
    pub async fn recover(self: &Arc<Self>) -> RecoverReport {
        let mut report = RecoverReport::default();
        let records = match self.store.list::<SandboxRecord>() {
            Ok(r) => r,
            Err(e) => {
                report
                    .errors
                    .push(format!("listing sandboxes: {}", error_chain(&e)));
                return report;
            }
        };
        for rec in records {
            let id = rec.id.clone();
            let meta = rec.config.metadata.clone().unwrap_or_default();
            let state = rec.state;
            let sb = self.new_sandbox(rec);
            self.insert(Arc::clone(&sb));
            let _ = self.reserve_name(&name_key(&meta), &id);
            match state {
                SandboxState::Creating => match self.remove(&id).await {
                    Ok(()) => report.unwound.push(id),
                    Err(e) => {
                        let msg = error_chain(&e);
                        let _ = sb.update(&self.store, |r| {
                            r.state = SandboxState::NotReady;
                            r.resources.error = format!("recovery could not unwind: {msg}");
                        });
                        report.errors.push(format!("{id}: {msg}"));
                        report.not_ready.push(id);
                    }
                },
                SandboxState::Ready => {
                    let vm = self.reattach(&sb).await;
                    match vm {
                        Some(vm) if vm.failure().is_none() => {
                            *crate::sandbox::lock(&sb.vm) = Some(vm);
                            self.watch_vm(&sb);
                            report.ready.push(id);
                        }
                        other => {
                            let mut error = "the VM exited while hulld was down".to_owned();
                            if let Some(vm) = other {
                                if let Some(failure) = vm.failure() {
                                    error = format!("{error}: {failure}");
                                }
                                let _ = vm.stop(std::time::Duration::from_secs(1)).await;
                            }
                            let _ = sb.update(&self.store, |r| {
                                r.state = SandboxState::NotReady;
                                r.resources.vmm_pid = 0;
                                r.resources.error = error;
                            });
                            report.not_ready.push(id);
                        }
                    }
                }
                SandboxState::NotReady => report.not_ready.push(id),
            }
        }
        tracing::info!(
            ready = report.ready.len(),
            not_ready = report.not_ready.len(),
            unwound = report.unwound.len(),
            errors = report.errors.len(),
            "sandboxes recovered"
        );
        report
    }
}
