//! StopPodSandbox and RemovePodSandbox. Both are idempotent and succeed for unknown ids
//! (kubelet retries them, and calls them for sandboxes a restart already cleaned).
//!
//! Stop: the agent asked to shut down (its `Shutdown` RPC: containers killed, guest powered
//! off, so the VMM exits by itself), within [`AGENT_SHUTDOWN_TIMEOUT`] → the VMM given the
//! rest of `vm.stop_grace_secs` to exit → the backend's stop (SIGTERM, SIGKILL once the
//! grace is over; helpers stopped; a grace of 0 skips the agent and kills at once) → pod
//! network torn down (tc, tap, CNI DEL from the cache, netns) → record
//! `notready`. The run dir (console log, shared dir) stays until Remove.
//! Remove: Stop if needed → run dir removed → the pod's container records and its own
//! record deleted → name released.

use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_vm::hypervisor::{VmExit, VmHandle};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{Instrument, info, info_span, warn};

use super::{Sandbox, SandboxError, SandboxManager, lock, name_key};
use crate::state::{ContainerRecord, SandboxRecord, SandboxState};

/// How long the agent's `Shutdown` (connecting included) may take at StopPodSandbox; capped
/// by the stop grace, which bounds the whole VM stop.
pub const AGENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often Stop checks whether the VMM exited after the agent's `Shutdown`.
const EXIT_POLL: Duration = Duration::from_millis(20);

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
        let client = sb.agent.lock().await.take();
        let vm = match sb.vm() {
            Some(vm) => Some(vm),
            None => self.reattach(sb).await,
        };
        if let Some(vm) = vm {
            let grace = Duration::from_secs(self.config.vm.stop_grace_secs);
            let exit = self.shutdown_vm(vm.as_ref(), client, grace).await?;
            info!(?exit, "VM stopped");
        }
        *lock(&sb.vm) = None;
        // A hostNetwork pod had no pod network (teardown would run CNI DEL for nothing).
        if !super::handlers::NodeNamespacesOf::of(&sb.record().config).network {
            self.backends
                .network
                .teardown(&sb.id)
                .await
                .map_err(SandboxError::NetworkTeardown)?;
        }
        sb.update(&self.store, |r| {
            r.state = SandboxState::NotReady;
            r.resources.vmm_pid = 0;
        })?;
        info!(ms = t.elapsed().as_millis() as u64, "pod sandbox stopped");
        Ok(())
    }

    /// Asks the agent to shut the guest down, gives the VMM what is left of `grace` to exit,
    /// then stops it through the backend (which kills it if it still runs and cleans up its
    /// helpers). A guest whose agent does not answer costs at most `grace`.
    async fn shutdown_vm(
        &self,
        vm: &dyn VmHandle,
        client: Option<AgentClient<Channel>>,
        grace: Duration,
    ) -> Result<VmExit, SandboxError> {
        let deadline = Instant::now() + grace;
        if vm.is_running() && !grace.is_zero() {
            let rpc_deadline = Instant::now() + AGENT_SHUTDOWN_TIMEOUT.min(grace);
            let asked =
                tokio::time::timeout_at(rpc_deadline, self.ask_shutdown(vm, client, rpc_deadline))
                    .await;
            match asked {
                Ok(Ok(())) => {
                    while vm.is_running() && Instant::now() < deadline {
                        tokio::time::sleep(EXIT_POLL).await;
                    }
                    if vm.is_running() {
                        warn!(
                            ?grace,
                            "VM still running after the agent's shutdown; killing"
                        );
                    } else {
                        info!("guest powered off");
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "agent shutdown failed; stopping the VMM"),
                Err(_) => warn!(
                    timeout = ?AGENT_SHUTDOWN_TIMEOUT.min(grace),
                    "agent did not answer shutdown; stopping the VMM"
                ),
            }
        }
        let rest = deadline.saturating_duration_since(Instant::now());
        vm.stop(rest).await.map_err(SandboxError::VmStop)
    }

    /// The agent's `Shutdown`, over the cached client or a new connection (after a restart).
    async fn ask_shutdown(
        &self,
        vm: &dyn VmHandle,
        client: Option<AgentClient<Channel>>,
        deadline: Instant,
    ) -> Result<(), String> {
        let agent = &self.backends.agent;
        let client = match client {
            Some(c) => c,
            None => agent
                .connect(&vm.agent_socket(), deadline)
                .await
                .map_err(|e| super::error_chain(&e))?,
        };
        agent
            .shutdown(client)
            .await
            .map_err(|s| s.message().to_owned())
    }

    async fn remove_locked(&self, sb: &Sandbox) -> Result<(), SandboxError> {
        self.stop_locked(sb).await?;
        // Unmount rootfs overlays and volumes first: the removal must not walk into them.
        super::share::release(&sb.run_dir)?;
        crate::mounts::remove_unmounted_tree(&sb.run_dir)
            .map_err(|e| SandboxError::Share(e.into()))?;
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
        let resources = sb.record().resources;
        let config = resources.vm?;
        let hypervisor = self.hypervisor_for(resources.backend)?;
        match hypervisor.reattach(&config).await {
            Ok(vm) => Some(Arc::from(vm)),
            Err(e) => {
                tracing::debug!(pod_id = %sb.id, error = %e, "no VM to re-attach");
                None
            }
        }
    }
}
