//! Thin typed owner of the KVM system and VM file descriptors (Firecracker `vstate/vm.rs`).

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::layout;
use super::memory::GuestRam;

/// Errors from KVM system and VM ioctls, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("Failed to open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM lacks the required capability {0:?}")]
    MissingCapability(Cap),
    #[error("Failed to create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("Failed to get the supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("Failed to set the TSS address")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    #[error("Failed to create the in-kernel irqchip")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    #[error("Failed to create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("Guest memory region {0} does not fit a KVM memory slot")]
    RegionTooBig(u32),
    #[error("Failed to register guest memory slot {slot}")]
    SetMemoryRegion {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to create vCPU {index}")]
    CreateVcpu {
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to register irqfd for GSI {gsi}")]
    RegisterIrqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to register ioeventfd at {addr:#x}")]
    RegisterIoevent {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Capabilities hull-vmm cannot run without.
const REQUIRED_CAPS: [Cap; 5] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
];

/// Options for [`KvmVm::new`].
#[derive(Debug, Clone, Copy)]
pub struct KvmVmOptions {
    /// Create the in-kernel PIC + IOAPIC (+ LAPICs) and PIT. Tests of bare payloads may skip it.
    pub irqchip: bool,
}

impl Default for KvmVmOptions {
    fn default() -> Self {
        Self { irqchip: true }
    }
}

/// A KVM VM: the system fd, the VM fd, and what KVM said it supports.
#[derive(Debug)]
pub struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
    supported_cpuid: CpuId,
    irqchip: bool,
    /// KVM emulates the LAPIC's TSC-deadline mode (guests only use it if CPUID says so).
    tsc_deadline: bool,
    /// The MSRs KVM saves and restores for a vCPU (KVM_GET_MSR_INDEX_LIST; read at
    /// creation, before any seccomp filter, for snapshots).
    msr_indices: Vec<u32>,
}

impl KvmVm {
    /// Open /dev/kvm and create a VM with the x86 platform pieces Linux expects.
    pub fn new(options: KvmVmOptions) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(cap));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        // Without the list a snapshot cannot carry MSRs; booting does not need it.
        let msr_indices = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        let fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
        // The TSS address fits usize on the x86_64 hosts hull-vmm builds for.
        let tss = usize::try_from(layout::KVM_TSS_ADDRESS).unwrap_or(usize::MAX);
        fd.set_tss_address(tss).map_err(KvmError::SetTssAddress)?;
        if options.irqchip {
            fd.create_irq_chip().map_err(KvmError::CreateIrqchip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(KvmError::CreatePit)?;
        }
        Ok(Self {
            kvm,
            fd,
            supported_cpuid,
            irqchip: options.irqchip,
            tsc_deadline,
            msr_indices,
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Whether vCPUs may advertise the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER with
    /// the in-kernel LAPIC). KVM_GET_SUPPORTED_CPUID leaves that bit to userspace.
    pub fn tsc_deadline_timer(&self) -> bool {
        self.tsc_deadline && self.irqchip
    }

    /// The MSRs a snapshot saves for each vCPU.
    pub fn msr_indices(&self) -> &[u32] {
        &self.msr_indices
    }

    /// Whether the in-kernel irqchip exists.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// The CPUID KVM supports on this host (the base for every vCPU's CPUID).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// Largest vCPU count KVM recommends.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_nr_vcpus()
    }

    /// Register every region of `ram` as a KVM memory slot (slot = region index).
    pub fn register_memory(&self, ram: &GuestRam) -> Result<(), KvmError> {
        for (slot, region) in (0u32..).zip(ram.regions()) {
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.guest_addr,
                memory_size: region.len,
                userspace_addr: region.host_addr,
            };
            // SAFETY: `host_addr..host_addr+len` is a live MAP_SHARED mapping owned by
            // `ram.memory` (a GuestRegionMmap created in memory.rs), and `GuestRam` outlives the
            // VM in every caller (the builder keeps both in `Vmm`, dropping the VM fd first).
            // The guest can only write into that mapping, which hull-vmm never treats as trusted.
            unsafe { self.fd.set_user_memory_region(mem_region) }
                .map_err(|source| KvmError::SetMemoryRegion { slot, source })?;
        }
        Ok(())
    }

    /// Create vCPU `index` (its APIC id is the same number).
    pub fn create_vcpu(&self, index: u32) -> Result<VcpuFd, KvmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(|source| KvmError::CreateVcpu { index, source })
    }

    /// Let a write to `evt` raise (edge) the interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| KvmError::RegisterIrqfd { gsi, source })
    }

    /// Let a 4-byte guest write of `datamatch` at MMIO `addr` signal `evt` without a VM exit.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<(), KvmError> {
        let res = match datamatch {
            Some(value) => self
                .fd
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), value),
            None => self
                .fd
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch),
        };
        res.map_err(|source| KvmError::RegisterIoevent { addr, source })
    }
}
