//! Leftovers that belong to no sandbox: a CNI attachment whose DEL failed after its record
//! went (a chained plugin whose ADD and DEL both fail), or a run dir and netns that a crash
//! or a failed cleanup left behind. hulld looks for them at start-up, after recovery, and
//! every `cleanup_interval_secs`, and removes each one with a log line: the VMM and
//! helpers found from the run dir's pid files are stopped, the pod network is torn down
//! (CNI DEL with the cached config, which releases the IPAM lease, then the netns), and
//! the run dir is unmounted and removed.
//!
//! Only what this hulld made is touched: ids with an entry in its CNI cache or a dir under
//! its `<state_dir>/sandboxes`. A `hull-<id>` netns without either may be another
//! hulld's (tests run several on one host) and is left alone.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hull_vm::hypervisor::{NetConfig, VmConfig};
use tracing::{Instrument, info, info_span, warn};

use super::{SandboxManager, error_chain};

/// What one pass found and removed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeftoverReport {
    /// Ids whose leftovers were all removed.
    pub removed: Vec<String>,
    /// Ids with something that could not be removed (tried again next pass).
    pub failed: Vec<String>,
}

impl SandboxManager {
    /// One pass: finds and removes what belongs to no sandbox (see the module doc).
    pub async fn remove_leftovers(&self) -> LeftoverReport {
        let mut candidates: BTreeSet<String> =
            self.backends.network.attachments().into_iter().collect();
        candidates.extend(run_dirs(&self.sandboxes_dir()));
        // Listed after the candidates: a sandbox being created is known before it makes
        // anything, so it cannot be taken for a leftover.
        let known: BTreeSet<String> = self.list().iter().map(|sb| sb.id.clone()).collect();
        let mut report = LeftoverReport::default();
        for id in candidates.difference(&known) {
            if !is_sandbox_id(id) {
                continue; // not a sandbox's (the VM template's dir, say)
            }
            let span = info_span!("leftover", pod_id = %id);
            match self.remove_leftover(id).instrument(span).await {
                Ok(()) => report.removed.push(id.clone()),
                Err(e) => {
                    warn!(pod_id = %id, error = %e, "cannot remove the leftovers of a sandbox hulld no longer knows; will retry");
                    report.failed.push(id.clone());
                }
            }
        }
        crate::metrics::leftovers_cleaned("sandbox_leftover", report.removed.len());
        report
    }

    async fn remove_leftover(&self, id: &str) -> Result<(), String> {
        let run_dir = self.sandboxes_dir().join(id);
        let has_dir = run_dir.is_dir();
        let has_cni = self.backends.network.attachments().iter().any(|a| a == id);
        warn!(
            run_dir = has_dir,
            cni_attachment = has_cni,
            "removing the leftovers of a sandbox hulld no longer knows"
        );
        let mut errors = Vec::new();
        if has_dir {
            self.stop_leftover_vm(id, &run_dir).await;
        }
        if let Err(e) = self.backends.network.teardown(id).await {
            errors.push(error_chain(&e));
        }
        if has_dir {
            // Unmount the share's overlays and binds first: the removal must not walk
            // into them (and only removes a tree with nothing mounted in it).
            if let Err(e) = super::share::release(&run_dir) {
                errors.push(format!(
                    "unmounting under {}: {}",
                    run_dir.display(),
                    error_chain(&e)
                ));
            } else if let Err(e) = crate::mounts::remove_unmounted_tree(&run_dir) {
                errors.push(format!(
                    "removing {}: {}",
                    run_dir.display(),
                    error_chain(&e)
                ));
            }
        }
        if errors.is_empty() {
            info!("leftovers removed");
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stops a VMM and helpers whose pid files are still in `run_dir`.
    async fn stop_leftover_vm(&self, id: &str, run_dir: &Path) {
        let Some(hypervisor) = self.backends.hypervisor_for(None) else {
            return;
        };
        let nic = NetConfig {
            tap: String::new(),
            mac: String::new(),
            mtu: 0,
        };
        let config: VmConfig =
            self.pod_vm_config(id, &Default::default(), run_dir.to_path_buf(), nic);
        if let Ok(vm) = hypervisor.reattach(&config).await {
            warn!(pid = vm.pid(), "stopping a leftover VM");
            if let Err(e) = vm.stop(Duration::from_secs(1)).await {
                warn!(error = %error_chain(&e), "cannot stop a leftover VM");
            }
        }
    }

    /// Runs [`SandboxManager::remove_leftovers`] every `interval` (none if zero).
    pub fn clean_leftovers_every(self: &Arc<Self>, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let report = this.remove_leftovers().await;
                if report != LeftoverReport::default() {
                    info!(?report, "leftover pass done");
                }
            }
        });
    }
}

/// Whether `name` has the form of hulld's sandbox ids (32 lowercase hex digits).
fn is_sandbox_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The names of the dirs under `<state_dir>/sandboxes`.
fn run_dirs(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}
