//! Putting a Linux kernel, its initramfs and command line into guest memory, with the boot
//! structures its entry protocol wants: `boot_params` (the zero page, for bzImage and plain
//! ELF vmlinux entered in 64-bit mode) or `hvm_start_info` (PVH ELF entry, 32-bit).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{
    self, BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout;
use super::memory::GuestRam;
use super::regs::BootEntry;

/// Arguments hull-vmm always puts first on the kernel command line.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule \
    i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Errors from loading the kernel and writing boot data, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Failed to open kernel {path}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kernel is neither an ELF vmlinux nor a bzImage")]
    LoadKernel(#[source] loader::Error),
    #[error("Failed to open initramfs {path}")]
    OpenInitrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Initramfs of {size} bytes does not fit below {limit:#x} after the kernel")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("Failed to read the initramfs into guest memory")]
    LoadInitrd(#[source] GuestMemoryError),
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Failed to write the kernel command line")]
    WriteCmdline(#[source] loader::Error),
    #[error("Failed to write the boot parameters")]
    WriteBootParams(#[source] GuestMemoryError),
}

/// Where things were loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub entry: BootEntry,
    /// First byte after the kernel image.
    pub kernel_end: u64,
}

/// A loaded initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Build a command line from hull-vmm's own arguments plus the caller's.
pub fn build_cmdline(parts: &[&str]) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    for part in parts.iter().filter(|p| !p.trim().is_empty()) {
        cmdline
            .insert_str(part.trim())
            .map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Load the kernel at `path`: ELF (PVH entry if it has the note, else 64-bit) or bzImage.
pub fn load_kernel(
    ram: &GuestRam,
    path: &Path,
) -> Result<(LoadedKernel, KernelLoaderResult), BootError> {
    let open_err = |source| BootError::OpenKernel {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match Elf::load(&ram.memory, None, &mut file, himem) {
        Ok(res) => {
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr.0 },
                _ => BootEntry::Linux64 {
                    entry: res.kernel_load.0,
                },
            };
            Ok((
                LoadedKernel {
                    entry,
                    kernel_end: res.kernel_end,
                },
                res,
            ))
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            file.seek(SeekFrom::Start(0)).map_err(open_err)?;
            let res = BzImage::load(&ram.memory, None, &mut file, himem)
                .map_err(BootError::LoadKernel)?;
            // The 64-bit entry point is 0x200 past the protected-mode kernel's start.
            let entry = BootEntry::Linux64 {
                entry: res.kernel_load.0 + 0x200,
            };
            Ok((
                LoadedKernel {
                    entry,
                    kernel_end: res.kernel_end,
                },
                res,
            ))
        }
        Err(e) => Err(BootError::LoadKernel(e)),
    }
}

/// Load the initramfs page-aligned at the top of low RAM (below `max_addr`), above the kernel.
pub fn load_initrd(
    ram: &GuestRam,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<LoadedInitrd, BootError> {
    let open_err = |source| BootError::OpenInitrd {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let limit = ram.low_ram_end().min(max_addr);
    let too_big = || BootError::InitrdTooBig { size, limit };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(layout::HIMEM_START) {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    ram.memory
        .read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(BootError::LoadInitrd)?;
    Ok(LoadedInitrd { addr, size })
}

/// The guest's RAM map (E820 type 1 = RAM), leaving out the BIOS hole 640 KiB..1 MiB.
pub fn ram_map(ram: &GuestRam) -> Vec<(u64, u64)> {
    let mut map = vec![(0, layout::EBDA_START)];
    for (start, len) in layout::ram_regions(ram.size) {
        if start == 0 {
            map.push((layout::HIMEM_START, len - layout::HIMEM_START));
        } else {
            map.push((start, len));
        }
    }
    map
}

/// Write the command line, then the zero page for a Linux64 entry.
pub fn write_linux_boot_params(
    ram: &GuestRam,
    cmdline: &Cmdline,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    loader::load_cmdline(&ram.memory, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let mut params = boot_params::default();
    if let Some(hdr) = setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = layout::CMDLINE_MAX_SIZE as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = ram_map(ram);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: 1,
        };
    }
    params.e820_entries = map.len() as u8;
    ram.memory
        .write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(BootError::WriteBootParams)
}

/// Write the command line, then `hvm_start_info`, its memory map and module list (PVH).
///
/// The structures are serialised field by field (little endian, the ABI's layout) so no
/// `unsafe impl ByteValued` is needed for the bindgen types.
pub fn write_pvh_start_info(
    ram: &GuestRam,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    loader::load_cmdline(&ram.memory, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let map = ram_map(ram);
    let mut memmap = Vec::new();
    for (addr, size) in &map {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&1u32.to_le_bytes()); // XEN_HVM_MEMMAP_TYPE_RAM
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    let modlist_addr = layout::PVH_MEMMAP_START + memmap.len() as u64;
    let mut modlist = Vec::new();
    if let Some(initrd) = initrd {
        for v in [initrd.addr, initrd.size, 0, 0] {
            modlist.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut info = Vec::with_capacity(56);
    for v in [0x336e_c578u32, 1, 0, u32::from(initrd.is_some())] {
        info.extend_from_slice(&v.to_le_bytes()); // magic, version, flags, nr_modules
    }
    let modlist_paddr = if initrd.is_some() { modlist_addr } else { 0 };
    for v in [
        modlist_paddr,
        layout::CMDLINE_START,
        0,
        layout::PVH_MEMMAP_START,
    ] {
        info.extend_from_slice(&v.to_le_bytes()); // modlist, cmdline, rsdp, memmap
    }
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    let write = |bytes: &[u8], addr: u64| {
        ram.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(BootError::WriteBootParams)
    };
    write(&info, layout::PVH_INFO_START)?;
    write(&memmap, layout::PVH_MEMMAP_START)?;
    write(&modlist, modlist_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cmdline_joins_parts_and_rejects_junk() {
        let c = build_cmdline(&["console=ttyS0", "  ", "quiet panic=1"]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet panic=1"
        );
        assert!(build_cmdline(&["a\"b"]).is_err() || build_cmdline(&[&"x".repeat(5000)]).is_err());
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let ram = GuestRam::new(32).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 8192]).unwrap();
        assert!(matches!(
            load_kernel(&ram, f.path()),
            Err(BootError::LoadKernel(_))
        ));
        assert!(matches!(
            load_kernel(&ram, Path::new("/nonexistent/vmlinux")),
            Err(BootError::OpenKernel { .. })
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let ram = GuestRam::new(32).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x5a; 10000]).unwrap();
        let l = load_initrd(&ram, f.path(), 0x20_0000, u64::MAX).unwrap();
        assert_eq!(l.size, 10000);
        assert_eq!(l.addr % 4096, 0);
        assert!(l.addr + l.size <= 32 << 20);
        let b: u8 = ram.memory.read_obj(GuestAddress(l.addr + 9999)).unwrap();
        assert_eq!(b, 0x5a);
        // Does not fit above a kernel ending near the top.
        let err = load_initrd(&ram, f.path(), (32 << 20) - 4096, u64::MAX);
        assert!(matches!(err, Err(BootError::InitrdTooBig { .. })));
    }

    #[test]
    fn zero_page_has_e820_and_cmdline() {
        let ram = GuestRam::new(64).unwrap();
        let c = build_cmdline(&["console=ttyS0"]).unwrap();
        let initrd = LoadedInitrd {
            addr: 0x200_0000,
            size: 0x1000,
        };
        write_linux_boot_params(&ram, &c, None, Some(initrd)).unwrap();
        let p: boot_params = ram
            .memory
            .read_obj(GuestAddress(layout::ZERO_PAGE_START))
            .unwrap();
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!(
            (e1.addr, e1.size),
            (layout::HIMEM_START, (64 << 20) - layout::HIMEM_START)
        );
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x200_0000);
        let mut buf = [0u8; 14];
        ram.memory
            .read_slice(&mut buf, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_start_info_layout() {
        let ram = GuestRam::new(64).unwrap();
        let c = build_cmdline(&["x=1"]).unwrap();
        write_pvh_start_info(
            &ram,
            &c,
            Some(LoadedInitrd {
                addr: 0x300_0000,
                size: 77,
            }),
        )
        .unwrap();
        let m = &ram.memory;
        let rd32 = |a: u64| m.read_obj::<u32>(GuestAddress(a)).unwrap();
        let rd64 = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        let base = layout::PVH_INFO_START;
        assert_eq!(rd32(base), 0x336e_c578);
        assert_eq!(rd32(base + 12), 1); // nr_modules
        assert_eq!(rd64(base + 24), layout::CMDLINE_START);
        assert_eq!(rd64(base + 40), layout::PVH_MEMMAP_START);
        assert_eq!(rd32(base + 48), 2);
        let modlist = rd64(base + 16);
        assert_eq!((rd64(modlist), rd64(modlist + 8)), (0x300_0000, 77));
        assert_eq!(rd64(layout::PVH_MEMMAP_START + 24), layout::HIMEM_START);
    }
}
