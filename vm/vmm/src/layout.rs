//! The guest physical address map hull-vmm builds (x86_64), in one place.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start_info + memmap    0x0000_7000  zero page (boot_params)
//! 0x0000_9000  PML4, 0xa000 PDPTE, 0xb000 PDE (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line        0x0009_fc00  EBDA: MP table
//! 0x0010_0000  kernel (HIMEM_START)       ... RAM ...  initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio windows (4 KiB each) from MMIO_START
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC  (in-kernel irqchip)
//! 0x1_0000_0000 RAM above the gap, when the VM has more than 3 GiB
//! ```

/// Where the GDT lives.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT lives.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH memory map entries follow the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot stack top for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Level-3 page table.
pub const PDPTE_START: u64 = 0xa000;
/// Level-2 page table (512 × 2 MiB pages = the first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the low RAM the BIOS area leaves free (640 KiB).
pub const LOW_RAM_END: u64 = 0xa0000;
/// Where the kernel is loaded and high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (no RAM here).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// First GSI given to a virtio-mmio device (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC has.
pub const IRQ_MAX: u32 = 23;
/// COM1 port base and IRQ.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// COM1 IRQ line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 command/status port (a write of 0xfe there resets the machine).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// Where KVM puts its TSS (three pages just below the IOAPIC hole).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// IOAPIC and LAPIC default bases (for the MP table).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;

/// The RAM regions of a VM with `mem_size` bytes: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// Guest address of the virtio-mmio window with this index.
pub fn mmio_window(index: u32) -> u64 {
    MMIO_START + u64::from(index) * MMIO_WINDOW_SIZE
}

// The fixed boot structures must not overlap (checked at compile time).
const _: () = {
    assert!(GDT_START + 4 * 8 <= IDT_START);
    assert!(PVH_INFO_START + 56 <= PVH_MEMMAP_START);
    assert!(PVH_MEMMAP_START + 8 * 24 + 32 < ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_has_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn big_vm_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
    }

    #[test]
    fn mmio_windows_are_contiguous() {
        assert_eq!(mmio_window(2), MMIO_START + 0x2000);
    }
}
