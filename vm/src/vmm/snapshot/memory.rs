//! Guest RAM to and from a snapshot's memory file. Only pages that hold something travel:
//! saving scans the memfd's data ranges (SEEK_DATA/SEEK_HOLE) and leaves all-zero pages out
//! (holes in the file); restoring reads the file's data ranges straight into the guest's
//! mapping, one copy per byte. A guest that boots to agent-ready touches ~40 MiB of its RAM.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::unistd::{Whence, lseek};
use vm_memory::{Bytes, GuestAddress};

use super::{SnapshotError, io_err};
use crate::vmm::memory::GuestRam;

/// Bytes copied per read/write when saving.
const CHUNK: usize = 1 << 20;
/// The unit of zero detection.
const PAGE: usize = 4096;

/// The data ranges of `file` in `0..len` (offset, length).
fn data_ranges(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let off = i64::try_from(pos).map_err(std::io::Error::other)?;
        let start = match lseek(file, off, Whence::SeekData) {
            Ok(o) => o as u64,
            // ENXIO: no data at or after `pos`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = (lseek(file, start as i64, Whence::SeekHole)? as u64).min(len);
        ranges.push((start, end - start));
        pos = end;
    }
    Ok(ranges)
}

/// Copy `ranges` of `from` into `to` at the same offsets, leaving all-zero pages out.
/// Returns the bytes written.
fn copy_nonzero(from: &File, to: &File, ranges: &[(u64, u64)]) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for &(start, len) in ranges {
        let mut off = start;
        let end = start + len;
        while off < end {
            let n = usize::try_from(end - off).unwrap_or(CHUNK).min(CHUNK);
            from.read_exact_at(&mut buf[..n], off)?;
            // Write each run of non-zero pages with one pwrite.
            let mut page = 0;
            while page < n {
                let is_zero = |p: usize| buf[p..(p + PAGE).min(n)].iter().all(|&b| b == 0);
                if is_zero(page) {
                    page += PAGE;
                    continue;
                }
                let run = page;
                while page < n && !is_zero(page) {
                    page += PAGE;
                }
                let run_end = page.min(n);
                to.write_all_at(&buf[run..run_end], off + run as u64)?;
                written += (run_end - run) as u64;
            }
            off += n as u64;
        }
    }
    Ok(written)
}

/// Write guest RAM (its memfd, `size` bytes) to `dir/memory`; returns the bytes of data.
pub fn save_memory(memfd: &File, size: u64, dir: &Path) -> Result<u64, SnapshotError> {
    let path = dir.join(super::MEMORY_FILE);
    let file = File::create(&path).map_err(io_err("create", &path))?;
    file.set_len(size).map_err(io_err("size", &path))?;
    let ranges = data_ranges(memfd, size).map_err(io_err("scan guest RAM for", &path))?;
    copy_nonzero(memfd, &file, &ranges).map_err(io_err("write guest RAM to", &path))
}

/// Fill fresh guest RAM from `dir/memory`; returns the bytes read.
pub fn restore_memory(ram: &GuestRam, dir: &Path) -> Result<u64, SnapshotError> {
    let path = dir.join(super::MEMORY_FILE);
    let mut file = File::open(&path).map_err(io_err("open", &path))?;
    let len = file.metadata().map_err(io_err("stat", &path))?.len();
    if len != ram.size {
        return Err(SnapshotError::Mismatch(format!(
            "memory file is {len} bytes, guest RAM {}",
            ram.size
        )));
    }
    let ranges = data_ranges(&file, len).map_err(io_err("scan", &path))?;
    let regions = ram.regions();
    let mut total = 0;
    for (start, len) in ranges {
        // A data range may span the regions on both sides of the MMIO gap: split it.
        for r in &regions {
            let lo = start.max(r.memfd_offset);
            let hi = (start + len).min(r.memfd_offset + r.len);
            if lo >= hi {
                continue;
            }
            let addr = GuestAddress(r.guest_addr + (lo - r.memfd_offset));
            let count = usize::try_from(hi - lo)
                .map_err(|_| SnapshotError::Mismatch(format!("data range of {} bytes", hi - lo)))?;
            file.seek(SeekFrom::Start(lo))
                .map_err(io_err("seek in", &path))?;
            ram.memory
                .read_exact_volatile_from(addr, &mut file, count)
                .map_err(|e| SnapshotError::Io {
                    step: "read guest RAM from",
                    path: path.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            total += hi - lo;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nonzero_pages_travel_and_holes_stay_zero() {
        let dir = tempfile::tempdir().unwrap();
        let ram = GuestRam::new(16).unwrap();
        let size = ram.size;
        ram.memory
            .write_slice(b"first page", GuestAddress(0))
            .unwrap();
        ram.memory
            .write_slice(&[7u8; 4096], GuestAddress(5 << 20))
            .unwrap();
        // Touched but zero: not saved.
        ram.memory
            .write_slice(&[0u8; 8192], GuestAddress(9 << 20))
            .unwrap();
        let saved = save_memory(&ram.memfd, size, dir.path()).unwrap();
        assert_eq!(saved, 8192, "two non-zero pages");
        let restored = GuestRam::new(16).unwrap();
        let read = restore_memory(&restored, dir.path()).unwrap();
        assert_eq!(read, 8192);
        let mut a = [0u8; 10];
        restored.memory.read_slice(&mut a, GuestAddress(0)).unwrap();
        assert_eq!(&a, b"first page");
        let mut b = [0u8; 4096];
        restored
            .memory
            .read_slice(&mut b, GuestAddress(5 << 20))
            .unwrap();
        assert!(b.iter().all(|&x| x == 7));
        restored
            .memory
            .read_slice(&mut b, GuestAddress(3 << 20))
            .unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn a_memory_file_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let small = GuestRam::new(16).unwrap();
        save_memory(&small.memfd, small.size, dir.path()).unwrap();
        let big = GuestRam::new(32).unwrap();
        let err = restore_memory(&big, dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::Mismatch(_)), "{err}");
    }
}
