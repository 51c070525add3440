//! Which pod VMM the integration tests run hulld with, so that one suite covers both
//! backends. `HULL_TEST_VMM` chooses:
//!
//! - `qemu` (the default): QEMU microvm, KVM where it boots stock guests, TCG where it
//!   must (every machine without VT-x/AMD-V, such as the CI machine);
//! - `hull`: hull-vmm with VM templates on (the first pod makes the template, later ones
//!   are restored), which needs KVM that boots stock guests: on the CI machine that is the
//!   nested test host, where `test/nested/server-tests.sh` runs a focused set of these
//!   tests (add a test file to its list when the VMM makes a difference to it).
//!
//! A test states what differs between the backends through [`TestVmm`], never by naming a
//! backend itself:
//!
//! ```ignore
//! let vmm = TestVmm::current();
//! assert_eq!(info["backend"], vmm.name());
//! assert!(err.message().contains(vmm.garbage_kernel_error()));
//! ```
//!
//! [`PodEnv::hulld`](super::PodEnv::hulld) puts [`TestVmm::vm_keys`] into every hulld
//! config it writes, so a test built on `PodEnv` runs on the chosen backend without more.
#![allow(dead_code)]

/// A pod VMM hulld can run the integration tests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestVmm {
    Qemu,
    Hull,
}

impl TestVmm {
    /// The backend `HULL_TEST_VMM` names (unset or empty: QEMU). Any other value fails the
    /// test: a typo must not quietly test the other backend.
    pub fn current() -> Self {
        match std::env::var("HULL_TEST_VMM").as_deref() {
            Err(_) | Ok("") | Ok("qemu") => Self::Qemu,
            Ok("hull") => Self::Hull,
            Ok(other) => panic!("HULL_TEST_VMM={other:?}: want \"qemu\" or \"hull\""),
        }
    }

    /// The `vm.vmm` config value, which is also the `backend` of PodSandboxStatus's verbose
    /// info and of the runtime's Status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Hull => "hull",
        }
    }

    /// The VMM process's name as hulld's errors give it.
    pub fn process(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Hull => "hull-vmm",
        }
    }

    /// The helper programs a pod VM of this backend runs beside the VMM.
    pub fn helpers(self) -> &'static [&'static str] {
        match self {
            // vsock through vhost-user; hull-vmm has its own hybrid vsock.
            Self::Qemu => &["vhost-device-vsock", "virtiofsd"],
            Self::Hull => &["virtiofsd"],
        }
    }

    /// Whether pods start from VM templates (after the first, restored, not booted).
    pub fn templates(self) -> bool {
        self == Self::Hull
    }

    /// The `[vm]` keys (TOML values) a hulld config gets for this backend; a test's own keys
    /// come after them and win.
    pub fn vm_keys(self) -> Vec<(&'static str, String)> {
        vec![
            ("vmm", format!("{:?}", self.name())),
            ("templates", self.templates().to_string()),
        ]
    }

    /// What RunPodSandbox's error says when the kernel is garbage. QEMU starts and then exits
    /// before the agent is ready; hull-vmm refuses to load the kernel before it opens its
    /// API socket (after its VM template, which needs the same kernel, failed too).
    pub fn garbage_kernel_error(self) -> &'static str {
        match self {
            Self::Qemu => {
                "The VM exited before its agent answered: VM did not come up: qemu exited before its agent was ready: qemu: "
            }
            Self::Hull => "Failed to start the VM: VM did not come up: hull-vmm exited with code",
        }
    }
}
