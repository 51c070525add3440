//! x86_64 boot-time CPU state: GDT, page tables, segment/control registers, MSRs, FPU,
//! LAPIC and CPUID, for the three entry kinds hull-vmm knows (Firecracker `arch/x86_64/regs.rs`).

use kvm_bindings::{
    CpuId, Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout;
use super::memory::GuestMemoryMmap;

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, identity-mapped first GiB, `rsi` = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode without paging, `rbx` = `hvm_start_info`.
    Pvh { entry: u64 },
    /// 16-bit real mode with CS base 0 (tiny test payloads).
    RealMode { ip: u16 },
}

/// Errors from writing boot structures to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("Failed to write the GDT")]
    WriteGdt(#[source] GuestMemoryError),
    #[error("Failed to write the IDT")]
    WriteIdt(#[source] GuestMemoryError),
    #[error("Failed to write the boot page tables")]
    WritePageTables(#[source] GuestMemoryError),
    #[error("Failed to build the MSR list")]
    BuildMsrs(#[source] vmm_sys_util::fam::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from its flags, base and limit (the `GDT_ENTRY` macro of Linux).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment a GDT entry at `index` describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    if bit(55) == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// The GDT for a boot entry: null, code, data, TSS.
pub fn gdt_for(entry: BootEntry) -> [u64; 4] {
    let code_flags = match entry {
        BootEntry::Pvh { .. } => 0xc09b, // 32-bit code, 4 KiB granularity
        _ => 0xa09b,                     // 64-bit code
    };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Write the GDT, an empty IDT and (for 64-bit entry) identity page tables; return the sregs.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    entry: BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    if let BootEntry::RealMode { .. } = entry {
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        return Ok(sregs);
    }
    let gdt = gdt_for(entry);
    for (i, e) in (0u64..).zip(gdt.iter()) {
        mem.write_obj(*e, GuestAddress(layout::GDT_START + i * 8))
            .map_err(RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_START))
        .map_err(RegsError::WriteIdt)?;
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        _ => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Identity-map the first GiB with 2 MiB pages.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(RegsError::WritePageTables)
    };
    w(layout::PDPTE_START | 0x03, layout::PML4_START)?;
    w(layout::PDE_START | 0x03, layout::PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    Ok(())
}

/// General registers for the boot vCPU.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = layout::PVH_INFO_START;
        }
        BootEntry::RealMode { ip } => regs.rip = u64::from(ip),
    }
    regs
}

/// FPU state after reset (x87 control word, SSE MXCSR).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs the 64-bit kernel expects zeroed or set at entry.
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(0x174, 0),               // IA32_SYSENTER_CS
        entry(0x175, 0),               // IA32_SYSENTER_ESP
        entry(0x176, 0),               // IA32_SYSENTER_EIP
        entry(0xc000_0081, 0),         // STAR
        entry(0xc000_0082, 0),         // LSTAR
        entry(0xc000_0083, 0),         // CSTAR
        entry(0xc000_0084, 0),         // SYSCALL_MASK
        entry(0xc000_0102, 0),         // KERNEL_GS_BASE
        entry(0x10, 0),                // IA32_TSC
        entry(0x1a0, 1),               // IA32_MISC_ENABLE: fast strings
        entry(0x2ff, (1 << 11) | 0x6), // MTRRdefType: enabled, write-back
    ])
    .map_err(RegsError::BuildMsrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

/// LINT0 as ExtINT (the PIC's output), LINT1 as NMI, as a PC's BIOS leaves them.
pub fn boot_lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
    lapic
}

/// The CPUID of vCPU `index` of `count`: KVM's supported set plus topology, the hypervisor
/// bit and, when KVM emulates it, the TSC-deadline timer. Without that bit Linux runs the
/// LAPIC timer in one-shot mode, calibrates it against the PIT and, under nested
/// virtualization, fails the check ("APIC timer disabled due to verification failure") and
/// falls back to the PIT: seconds of boot and a periodic tick.
pub fn vcpu_cpuid(base: &CpuId, index: u32, count: u32, tsc_deadline: bool) -> CpuId {
    let mut cpuid = base.clone();
    let apic_id = index & 0xff;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count.min(255)) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if tsc_deadline {
                    e.ecx |= 1 << 24; // TSC-deadline LAPIC timer mode
                }
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count in ebx is valid
                }
            }
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_match_linux() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn long_mode_segments() {
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s),
            (8, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((ds.type_, ds.db, ds.l, ds.g), (3, 1, 0, 1));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn linux64_sregs_enable_paging_and_write_tables() {
        let m = mem();
        let s = boot_sregs(&m, BootEntry::Linux64 { entry: 0 }, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::PML4_START);
        assert_eq!(s.cs.l, 1);
        let pde1: u64 = m.read_obj(GuestAddress(layout::PDE_START + 8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83);
        let gdt1: u64 = m.read_obj(GuestAddress(layout::GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(0xa09b, 0, 0xfffff));
    }

    #[test]
    fn pvh_sregs_are_flat_32_bit_without_paging() {
        let s = boot_sregs(&mem(), BootEntry::Pvh { entry: 0 }, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        assert_eq!(
            boot_regs(BootEntry::Pvh { entry: 0x1234 }).rbx,
            layout::PVH_INFO_START
        );
    }

    #[test]
    fn lapic_lint_modes() {
        let l = boot_lapic(kvm_lapic_state::default());
        assert_eq!((lapic_reg(&l, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn cpuid_gets_apic_id_and_hypervisor_bit() {
        let base = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = vcpu_cpuid(&base, 3, 4, false);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!(e[0].ecx & (1 << 24), 0);
        let c = vcpu_cpuid(&base, 3, 4, true);
        assert_ne!(c.as_slice()[0].ecx & (1 << 24), 0, "TSC-deadline bit");
        assert_eq!(e[1].edx, 3);
        assert_eq!(boot_msrs().unwrap().as_slice().len(), 11);
    }
}
