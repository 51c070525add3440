//! Watching each ready pod's VM: when the VMM dies (killed, crashed, or the guest
//! panicked) or a helper process it needs dies (virtiofsd, the vsock backend), the pod
//! turns NOTREADY at once and its containers EXITED, with a message naming what died
//! (Kata's shim does the same when its VM goes: the containers' tasks exit).
//!
//! Backend-agnostic: the watcher polls [`VmHandle::failure`], which each backend answers
//! for its own processes. A helper's death leaves the VMM running but useless, so the
//! backend's stop then kills what is left. The pod network stays until StopPodSandbox, as
//! after any other VM exit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hull_vm::hypervisor::VmHandle;
use tracing::{Instrument, info_span, warn};

use super::{Sandbox, SandboxManager, lock};
use crate::state::{SandboxRecord, SandboxState};

/// How often a ready pod's VM processes are checked (a `kill(0)`-like `/proc` read each).
pub const VM_WATCH_POLL: Duration = Duration::from_millis(200);

/// Called with the sandbox id and a message once a pod's VM died (hulld marks the pod's
/// containers exited with it).
pub type VmDeathHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Where the hook is kept until the daemon sets it.
pub(crate) type HookCell = OnceLock<VmDeathHook>;

impl SandboxManager {
    /// Sets what happens to a pod's containers when its VM dies (once, at start-up).
    pub fn on_vm_death(&self, hook: VmDeathHook) {
        if self.vm_death.set(hook).is_err() {
            warn!("the VM death hook was already set");
        }
    }

    /// Watches `sb`'s VM until the pod is no longer ready; see the module doc.
    pub(crate) fn watch_vm(self: &Arc<Self>, sb: &Arc<Sandbox>) {
        let (this, sb) = (Arc::clone(self), Arc::clone(sb));
        let span = info_span!("vm_watch", pod_id = %sb.id);
        tokio::spawn(async move { this.watch_loop(sb).await }.instrument(span));
    }

    async fn watch_loop(self: Arc<Self>, sb: Arc<Sandbox>) {
        loop {
            tokio::time::sleep(VM_WATCH_POLL).await;
            let Some(vm) = sb.vm().filter(|_| sb.state() == SandboxState::Ready) else {
                return;
            };
            if vm.failure().is_none() {
                continue;
            }
            // Stop/Remove hold the pod lock while they stop the VM themselves: wait for
            // them, then look again.
            let _guard = sb.lock().await;
            let Some(vm) = sb.vm().filter(|_| sb.state() == SandboxState::Ready) else {
                return;
            };
            if let Some(failure) = vm.failure() {
                self.vm_died(&sb, vm.as_ref(), &failure).await;
                return;
            }
        }
    }

    /// The pod's VM is gone: stop what is left of it, record the pod NOTREADY with the
    /// reason, and tell the containers. The caller holds the pod lock.
    async fn vm_died(&self, sb: &Sandbox, vm: &dyn VmHandle, failure: &str) {
        let message = death_message(vm, failure);
        warn!(reason = %message, "the pod's VM died; the pod is NOTREADY");
        if let Err(e) = vm.stop(Duration::ZERO).await {
            warn!(error = %super::error_chain(&e), "cannot stop what is left of the VM");
        }
        *lock(&sb.vm) = None;
        *sb.agent.lock().await = None;
        // An update, not a put: a record removed meanwhile (by another hulld instance's
        // recovery, in tests) is not brought back.
        let updated = self.store.update::<SandboxRecord>(&sb.id, |r| {
            r.state = SandboxState::NotReady;
            r.resources.vmm_pid = 0;
            r.resources.error = message.clone();
        });
        match updated {
            Ok(Some(rec)) => *lock(&sb.record) = rec,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %super::error_chain(&e), "cannot record the VM's death");
            }
        }
        if let Some(hook) = self.vm_death.get() {
            hook(&sb.id, &message);
        }
    }
}

/// What to tell the user: the processes that died, and a guest kernel panic when the
/// console shows one (QEMU and hull-vmm end a panicked guest with `panic=-1`).
fn death_message(vm: &dyn VmHandle, failure: &str) -> String {
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    let panic = console
        .lines()
        .rev()
        .take(200)
        .find(|l| l.contains("Kernel panic"))
        .map(|l| l.trim());
    match panic {
        Some(line) => format!("the guest kernel panicked ({line}); {failure}"),
        None => format!("the pod's VM died: {failure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dead(std::path::PathBuf);

    #[async_trait::async_trait]
    impl VmHandle for Dead {
        fn pid(&self) -> u32 {
            0
        }
        fn agent_socket(&self) -> std::path::PathBuf {
            self.0.join("vsock")
        }
        fn console_log(&self) -> std::path::PathBuf {
            self.0.join("console.log")
        }
        async fn stop(
            &self,
            _grace: Duration,
        ) -> Result<hull_vm::hypervisor::VmExit, hull_vm::hypervisor::HypervisorError> {
            Ok(hull_vm::hypervisor::VmExit::Shutdown)
        }
        fn is_running(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_panic_on_the_console_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vm = Dead(dir.path().to_owned());
        let failure = vm.failure().unwrap();
        assert_eq!(failure, "the VMM exited");
        assert_eq!(
            death_message(&vm, &failure),
            "the pod's VM died: the VMM exited"
        );
        std::fs::write(
            vm.console_log(),
            "[    1.0] boot\n[    2.5] Kernel panic - not syncing: sysrq triggered crash\n[    2.6] ---[ end ]---\n",
        )
        .unwrap();
        assert_eq!(
            death_message(&vm, &failure),
            "the guest kernel panicked ([    2.5] Kernel panic - not syncing: sysrq triggered crash); the VMM exited"
        );
    }
}
