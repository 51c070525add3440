//! The VM template of default-sized pods, made when hulld starts (as Kata's VM factory does
//! at `factory init`), so the first such pod restores it instead of first booting and
//! snapshotting the template VM itself. Pods of other sizes make theirs at their first start.

use std::sync::Arc;
use std::time::Instant;

use hull_cri_api::PodSandboxConfig;
use hull_vm::hypervisor::{NetConfig, VmConfig};

use super::SandboxManager;

/// Stands for the run dir, tap and share of a pod that does not exist: only which devices
/// a pod has goes into its template, and the template VM gets its own stand-ins.
const WARM_ID: &str = "vm-template-warmup";

impl SandboxManager {
    /// The VM config of a pod without resource requests, as far as its template goes.
    pub(super) fn default_pod_vm_config(&self) -> VmConfig {
        let nic = NetConfig {
            tap: "tap-unused".into(),
            mac: "02:00:00:00:00:00".into(),
            mtu: 1500,
        };
        let run_dir = self.sandboxes_dir().join(WARM_ID);
        self.pod_vm_config(WARM_ID, &PodSandboxConfig::default(), run_dir, nic)
    }

    /// With `vm.templates` on, starts making the default-sized pods' VM template in the
    /// background; `None` when there is nothing to do (templates off, no pod VMM).
    pub fn warm_vm_template(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<bool>> {
        if !self.config.vm.templates {
            return None;
        }
        let hypervisor = Arc::clone(self.backends.hypervisor.as_ref().ok()?);
        let config = self.default_pod_vm_config();
        Some(tokio::spawn(async move {
            let t0 = Instant::now();
            let elapsed_ms = || t0.elapsed().as_millis() as u64;
            match hypervisor.warm(&config).await {
                Ok(true) => {
                    tracing::info!(
                        vcpus = config.vcpus,
                        memory_mib = config.memory_mib,
                        elapsed_ms = elapsed_ms(),
                        "VM template of default-sized pods ready"
                    );
                    true
                }
                Ok(false) => {
                    // The hull backend has logged why; QEMU has no templates.
                    tracing::debug!(
                        backend = ?hypervisor.backend(),
                        elapsed_ms = elapsed_ms(),
                        "no VM template to warm (backend without templates, or it could not be made)"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "warming the VM template failed; pods boot as they come");
                    false
                }
            }
        }))
    }
}
