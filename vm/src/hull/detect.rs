//! Can this host's KVM boot a stock Linux guest? hull-vmm needs that; QEMU can fall back to
//! TCG. The check is cheap and read-only, so hulld runs it once at start:
//!
//! 1. `/dev/kvm` opens read-write (the KVM API is there at all);
//! 2. the `kvm_pvm` module is not loaded (`/sys/module/kvm_pvm`): PVM implements the KVM API
//!    on hosts without VT-x/AMD-V, but runs only PVM-enabled guest kernels, so a stock
//!    guest fails to boot even though every ioctl hull-vmm makes succeeds;
//! 3. the CPU advertises hardware virtualization (`vmx` or `svm` in /proc/cpuinfo); inside
//!    a VM without nested virtualization /dev/kvm may be absent or PVM, never usable.
//!
//! A boot probe (start a tiny VM in long mode with paging) would catch a broken KVM the
//! checks miss, but it needs a payload and ~100 ms; the checks above decide every host we
//! know of, and a VM that then fails to boot still fails loudly at RunPodSandbox.

use std::path::Path;

/// Why KVM cannot boot stock guests here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmUnusable {
    #[error("/dev/kvm cannot be opened read-write ({0})")]
    NoDevice(String),
    #[error(
        "/dev/kvm is PVM (module kvm_pvm loaded): it runs only PVM-enabled guest kernels, not stock ones"
    )]
    Pvm,
    #[error("the CPU has no VT-x/AMD-V (no vmx or svm flag in /proc/cpuinfo)")]
    NoHardwareVirt,
}

/// What the checks look at, gathered from the host (separate so the decision is unit-tested).
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `Err(reason)` when /dev/kvm did not open.
    pub kvm_device: Result<(), String>,
    pub pvm_module: bool,
    /// The text of /proc/cpuinfo.
    pub cpuinfo: String,
}

impl HostFacts {
    /// Reads the facts from this host.
    pub fn gather() -> Self {
        let kvm_device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| e.to_string());
        Self {
            kvm_device,
            pvm_module: Path::new("/sys/module/kvm_pvm").exists(),
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        }
    }

    /// `Ok` if a stock guest can boot on this KVM.
    pub fn check(&self) -> Result<(), KvmUnusable> {
        if let Err(e) = &self.kvm_device {
            return Err(KvmUnusable::NoDevice(e.clone()));
        }
        if self.pvm_module {
            return Err(KvmUnusable::Pvm);
        }
        let hw = self
            .cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if !hw {
            return Err(KvmUnusable::NoHardwareVirt);
        }
        Ok(())
    }
}

/// Whether this host's KVM boots stock guests, and if not, why.
pub fn kvm_boots_stock_guests() -> Result<(), KvmUnusable> {
    HostFacts::gather().check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dev: bool, pvm: bool, flags: &str) -> HostFacts {
        HostFacts {
            kvm_device: if dev { Ok(()) } else { Err("ENOENT".into()) },
            pvm_module: pvm,
            cpuinfo: format!("processor\t: 0\nflags\t\t: fpu {flags} sse2\n"),
        }
    }

    #[test]
    fn decision_table() {
        assert_eq!(facts(true, false, "vmx").check(), Ok(()));
        assert_eq!(facts(true, false, "svm").check(), Ok(()));
        assert_eq!(facts(true, true, "svm").check(), Err(KvmUnusable::Pvm));
        assert_eq!(
            facts(true, false, "hypervisor").check(),
            Err(KvmUnusable::NoHardwareVirt)
        );
        assert!(matches!(
            facts(false, false, "vmx").check(),
            Err(KvmUnusable::NoDevice(_))
        ));
        // "svm" must be a whole flag, not a substring of another one.
        assert_eq!(
            facts(true, false, "svm_lock").check(),
            Err(KvmUnusable::NoHardwareVirt)
        );
    }

    #[test]
    fn this_host_is_judged_consistently() {
        let facts = HostFacts::gather();
        if facts.pvm_module {
            assert_eq!(kvm_boots_stock_guests(), Err(KvmUnusable::Pvm));
        }
        assert_eq!(facts.check(), kvm_boots_stock_guests());
    }
}
