//! A vCPU's architectural state, read out of KVM when the VM is paused and written back into
//! a fresh vCPU on restore (Firecracker `vstate/vcpu/x86_64.rs` save/restore order).

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;

/// Errors from reading or writing vCPU state, named after the KVM call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuStateError {
    #[error("Failed to {step} of vCPU {index}")]
    Kvm {
        step: &'static str,
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to build an MSR list")]
    Msrs(#[source] vmm_sys_util::fam::Error),
}

/// Everything KVM keeps for one vCPU that a running guest may have changed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub index: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    pub msrs: Vec<kvm_msr_entry>,
    /// The TSC frequency the guest calibrated against (kHz), when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// How many MSRs one KVM_GET/SET_MSRS call carries.
const MSR_CHUNK: usize = 64;

fn kvm_err(step: &'static str, index: u32) -> impl FnOnce(kvm_ioctls::Error) -> CpuStateError {
    move |source| CpuStateError::Kvm {
        step,
        index,
        source,
    }
}

/// Read every MSR in `indices` that KVM lets us read; one it refuses is skipped (KVM stops a
/// batch at the first MSR it cannot read, so the rest of that batch is read again).
fn read_msrs(
    fd: &VcpuFd,
    index: u32,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, CpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut pos = 0;
    while let Some(rest) = indices.get(pos..).filter(|r| !r.is_empty()) {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(CpuStateError::Msrs)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(kvm_err("read the MSRs", index))?
            .min(chunk.len());
        out.extend_from_slice(&msrs.as_slice()[..read]);
        pos += read;
        if let Some(refused) = chunk.get(read) {
            tracing::debug!(
                vcpu = index,
                msr = format_args!("{refused:#x}"),
                "MSR not readable; skipped"
            );
            pos += 1;
        }
    }
    Ok(out)
}

/// Write `msrs` back, skipping (with a warning) any KVM refuses.
fn write_msrs(fd: &VcpuFd, index: u32, msrs: &[kvm_msr_entry]) -> Result<(), CpuStateError> {
    let mut pos = 0;
    while let Some(rest) = msrs.get(pos..).filter(|r| !r.is_empty()) {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let list = Msrs::from_entries(chunk).map_err(CpuStateError::Msrs)?;
        let written = fd
            .set_msrs(&list)
            .map_err(kvm_err("write the MSRs", index))?
            .min(chunk.len());
        pos += written;
        if let Some(refused) = chunk.get(written) {
            tracing::warn!(
                vcpu = index,
                msr = format_args!("{:#x}", refused.index),
                "KVM refused an MSR on restore; skipped"
            );
            pos += 1;
        }
    }
    Ok(())
}

impl VcpuState {
    /// Read the state of the (paused) vCPU `fd`; `msr_indices` is KVM's MSR index list.
    pub fn save(fd: &VcpuFd, index: u32, msr_indices: &[u32]) -> Result<Self, CpuStateError> {
        Ok(Self {
            index,
            // KVM_GET_MP_STATE and KVM_GET_VCPU_EVENTS first: they settle pending events
            // (Firecracker does the same).
            mp_state: fd
                .get_mp_state()
                .map_err(kvm_err("read the MP state", index))?,
            vcpu_events: fd
                .get_vcpu_events()
                .map_err(kvm_err("read the pending events", index))?,
            regs: fd
                .get_regs()
                .map_err(kvm_err("read the registers", index))?,
            sregs: fd
                .get_sregs()
                .map_err(kvm_err("read the segment registers", index))?,
            xsave: fd
                .get_xsave()
                .map_err(kvm_err("read the XSAVE area", index))?,
            xcrs: fd.get_xcrs().map_err(kvm_err("read the XCRs", index))?,
            debugregs: fd
                .get_debug_regs()
                .map_err(kvm_err("read the debug registers", index))?,
            lapic: fd
                .get_lapic()
                .map_err(kvm_err("read the local APIC", index))?,
            msrs: read_msrs(fd, index, msr_indices)?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Write the state into a fresh vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), CpuStateError> {
        let index = self.index;
        if let Some(khz) = self.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
            && let Err(e) = fd.set_tsc_khz(khz)
        {
            tracing::warn!(vcpu = index, khz, error = %e, "cannot scale the TSC to the snapshot's frequency");
        }
        fd.set_sregs(&self.sregs)
            .map_err(kvm_err("write the segment registers", index))?;
        fd.set_regs(&self.regs)
            .map_err(kvm_err("write the registers", index))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave` read by KVM_GET_XSAVE on a host of the
        // same kind; KVM_SET_XSAVE reads exactly `size_of::<kvm_xsave>()` bytes from it (no
        // XSAVE2 extension is in use, so KVM expects no larger buffer).
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm_err("write the XSAVE area", index))?;
        fd.set_xcrs(&self.xcrs)
            .map_err(kvm_err("write the XCRs", index))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(kvm_err("write the debug registers", index))?;
        fd.set_lapic(&self.lapic)
            .map_err(kvm_err("write the local APIC", index))?;
        write_msrs(fd, index, &self.msrs)?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm_err("write the MP state", index))?;
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(kvm_err("write the pending events", index))?;
        Ok(())
    }
}
