//! Guest RAM: one sealed memfd, mapped shared, split around the 32-bit MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets a vhost-user backend such as virtiofsd map the
//! same pages: the fd and each region's offset in it are what `VHOST_USER_SET_MEM_TABLE` sends.

use std::fs::File;
use std::sync::Arc;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout;

/// The guest memory type every part of hull-vmm uses.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The size limits, stated with the config that is checked against them.
pub use hull_vmm_api::config::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Guest memory size {0} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB")]
    InvalidSize(u64),
    #[error("Failed to create the guest memory memfd")]
    CreateMemfd(#[source] nix::Error),
    #[error("Failed to size the guest memory memfd")]
    SizeMemfd(#[source] std::io::Error),
    #[error("Failed to seal the guest memory memfd")]
    SealMemfd(#[source] nix::Error),
    #[error("Failed to duplicate the guest memory memfd")]
    CloneMemfd(#[source] std::io::Error),
    #[error("Failed to map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    /// The mapped regions.
    pub memory: GuestMemoryMmap,
    /// The memfd all regions are slices of (region `i` starts at its offset in `regions()`).
    pub memfd: Arc<File>,
    /// Total RAM in bytes.
    pub size: u64,
}

impl GuestRam {
    /// Create `mib` MiB of guest RAM backed by a fresh memfd.
    pub fn new(mib: u64) -> Result<Self, MemoryError> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
            return Err(MemoryError::InvalidSize(mib));
        }
        let size = mib << 20;
        let fd = memfd_create(
            "hull-guest-ram",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(MemoryError::CreateMemfd)?;
        let file = File::from(fd);
        file.set_len(size).map_err(MemoryError::SizeMemfd)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK),
        )
        .map_err(MemoryError::SealMemfd)?;
        let mut ranges = Vec::new();
        let mut file_offset = 0u64;
        for (start, len) in layout::ram_regions(size) {
            let clone = file.try_clone().map_err(MemoryError::CloneMemfd)?;
            // `len` ≤ MAX_MEMORY_MIB MiB, which fits usize on the 64-bit hosts we build for.
            let len_usize = usize::try_from(len).map_err(|_| MemoryError::InvalidSize(mib))?;
            ranges.push((
                GuestAddress(start),
                len_usize,
                Some(FileOffset::new(clone, file_offset)),
            ));
            file_offset += len;
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        let ram = Self {
            memory,
            memfd: Arc::new(file),
            size,
        };
        ram.advise_huge_pages();
        Ok(ram)
    }

    /// Each region as (guest address, length, offset in the memfd, host address).
    pub fn regions(&self) -> Vec<RamRegion> {
        let mut offset = 0;
        self.memory
            .iter()
            .map(|r| {
                let len = r.len();
                let host_addr = r.as_ptr() as u64;
                let region = RamRegion {
                    guest_addr: r.start_addr().0,
                    len,
                    memfd_offset: offset,
                    host_addr,
                };
                offset += len;
                region
            })
            .collect()
    }

    /// Ask for transparent huge pages on guest RAM. A memfd is shmem, so this takes effect
    /// when the host's `/sys/kernel/mm/transparent_hugepage/shmem_enabled` is `advise` (or
    /// `always`/`within_size`); with 4 KiB pages every first touch of a guest page is a
    /// nested-paging fault, which dominates boot time under nested virtualization.
    fn advise_huge_pages(&self) {
        for region in self.regions() {
            let Ok(len) = usize::try_from(region.len) else {
                continue;
            };
            // SAFETY: `host_addr..host_addr+len` is exactly one live mapping owned by
            // `self.memory` (created by `from_ranges_with_files` above). MADV_HUGEPAGE only
            // changes the kernel's paging policy for it; it does not touch the contents or
            // unmap anything, so no Rust reference into the mapping is invalidated.
            let rc = unsafe {
                libc::madvise(
                    region.host_addr as *mut libc::c_void,
                    len,
                    libc::MADV_HUGEPAGE,
                )
            };
            if rc != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE failed");
            }
        }
    }

    /// End of the RAM below the MMIO gap.
    pub fn low_ram_end(&self) -> u64 {
        self.size.min(layout::MMIO_GAP_START)
    }
}

/// One contiguous piece of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_addr: u64,
    pub len: u64,
    pub memfd_offset: u64,
    pub host_addr: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_a_shared_memfd() {
        let ram = GuestRam::new(32).unwrap();
        assert_eq!(ram.size, 32 << 20);
        assert_eq!(ram.memfd.metadata().unwrap().len(), 32 << 20);
        ram.memory
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        // The write is visible through the memfd: the mapping is MAP_SHARED.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&*ram.memfd, &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn memfd_cannot_shrink_under_the_guest() {
        let ram = GuestRam::new(16).unwrap();
        assert!(ram.memfd.set_len(4096).is_err());
    }

    #[test]
    fn rejects_silly_sizes() {
        assert!(matches!(GuestRam::new(1), Err(MemoryError::InvalidSize(1))));
        assert!(matches!(
            GuestRam::new(MAX_MEMORY_MIB + 1),
            Err(MemoryError::InvalidSize(_))
        ));
    }

    #[test]
    fn regions_report_memfd_offsets() {
        let ram = GuestRam::new(64).unwrap();
        let regions = ram.regions();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].guest_addr, 0);
        assert_eq!(regions[0].len, 64 << 20);
        assert_eq!(regions[0].memfd_offset, 0);
        assert_eq!(ram.low_ram_end(), 64 << 20);
    }
}
