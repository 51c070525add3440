//! StopPodSandbox and RemovePodSandbox. Both are idempotent and succeed for unknown ids
//! (kubelet retries them, and calls them for sandboxes a restart already cleaned).
//!
//! Stop: VMM stopped (SIGTERM, SIGKILL after `vm.stop_grace_secs`; the backend also stops
//! its helpers) → pod network torn down (tc, tap, CNI DEL from the cache, netns) → record
//! `notready`. The run dir (console log, shared dir) stays until Remove.
//! Remove: Stop if needed → run dir removed → the pod's container records and its own
//! record deleted → name released.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, info, info_span};

use super::{Sandbox, SandboxError, SandboxManager, lock, name_key};
use crate::state::{ContainerRecord, SandboxRecord, SandboxState};

impl SandboxManager {
    /// StopPodSandbox; runs on its own task so a cancelled request still finishes.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        let Some(sb) = self.get(id) else {
            info!(pod_id = %id, "StopPodSandbox: unknown sandbox, nothing to do");
            return Ok(());
        };
        let this = Arc::clone(self);
        let span = info_span!("stop_pod_sandbox", pod_id = %sb.id);
        tokio::spawn(
            async move {
                let _guard = sb.lock().await;
                this.stop_locked(&sb).await
            }
            .instrument(span),
        )
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))?
    }

    /// RemovePodSandbox; stops the sandbox first if needed.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        let Some(sb) = self.get(id) else {
            info!(pod_id = %id, "RemovePodSandbox: unknown sandbox, nothing to do");
            return Ok(());
        };
        let this = Arc::clone(self);
        let span = info_span!("remove_pod_sandbox", pod_id = %sb.id);
        tokio::spawn(
            async move {
                let _guard = sb.lock().await;
                this.remove_locked(&sb).await
            }
            .instrument(span),
        )
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))?
    }

    /// Stops the VM and tears down the network; the caller holds the pod lock.
    pub(crate) async fn stop_locked(&self, sb: &Sandbox) -> Result<(), SandboxError> {
        let t = std::time::Instant::now();
        sb.agent.lock().await.take();
        let vm = match sb.vm() {
            Some(vm) => Some(vm),
            None => self.reattach(sb).await,
        };
        if let Some(vm) = vm {
            let grace = Duration::from_secs(self.config.vm.stop_grace_secs);
            let exit = vm.stop(grace).await.map_err(SandboxError::VmStop)?;
            info!(?exit, "VM stopped");
        }
        *lock(&sb.vm) = None;
        self.backends
            .network
            .teardown(&sb.id)
            .await
            .map_err(SandboxError::NetworkTeardown)?;
        sb.update(&self.store, |r| {
            r.state = SandboxState::NotReady;
            r.resources.vmm_pid = 0;
        })?;
        info!(ms = t.elapsed().as_millis() as u64, "pod sandbox stopped");
        Ok(())
    }

    async fn remove_locked(&self, sb: &Sandbox) -> Result<(), SandboxError> {
        self.stop_locked(sb).await?;
        // Unmount rootfs overlays and volumes first: the removal must not walk into them.
        super::share::release(&sb.shared_dir)?;
        match std::fs::remove_dir_all(&sb.run_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SandboxError::RemoveDir {
                    path: sb.run_dir.clone(),
                    source: e,
                });
            }
            _ => {}
        }
        for c in self.store.list::<ContainerRecord>()? {
            if c.sandbox_id == sb.id {
                self.store.delete::<ContainerRecord>(&c.id)?;
            }
        }
        let rec = sb.record();
        self.store.delete::<SandboxRecord>(&sb.id)?;
        self.forget(&sb.id);
        if let Some(meta) = &rec.config.metadata {
            self.release_name(&name_key(meta), &sb.id);
        }
        info!("pod sandbox removed");
        Ok(())
    }

    /// The VM of a sandbox hulld has no handle for (after a restart), if its VMM still
    /// runs or left helpers behind.
    pub(crate) async fn reattach(
        &self,
        sb: &Sandbox,
    ) -> Option<Arc<dyn hull_vm::hypervisor::VmHandle>> {
        let config = sb.record().resources.vm?;
        let hypervisor = self.backends.hypervisor.as_ref().ok()?;
        match hypervisor.reattach(&config).await {
            Ok(vm) => Some(Arc::from(vm)),
            Err(e) => {
                tracing::debug!(pod_id = %sb.id, error = %e, "no VM to re-attach");
                None
            }
        }
    }
}
