//! Spreading layer dirs over the file system's allocation groups.
//!
//! ext4 places a new directory near its parent's block group and a new file in its
//! directory's group. When a layer store churns (layers removed and pulled again, image
//! GC), the groups of the removed layers are full of recently freed inodes; on ext4
//! without a journal the inode allocator skips those one by one (it does not reuse an
//! inode freed within `dirtytime_expire_seconds`, 12 h by default) for every new file, so
//! unpacking 10k files there took 5–10 s instead of 0.5 s. The ext4 `TOPDIR` attribute
//! (`chattr +T`, what `/home` gets) makes the allocator place each new subdirectory of
//! the marked dir in a lightly used group (Orlov's top-level policy), so each layer
//! lands in a fresh group. It is not inherited, so only the layer dirs themselves are
//! spread, and a layer's files stay together.

use std::os::fd::AsRawFd as _;
use std::path::Path;

/// `FS_TOPDIR_FL` from `linux/fs.h`.
const FS_TOPDIR_FL: libc::c_long = 0x0002_0000;

/// Marks `dir` as a top of directory hierarchies, where the file system knows the
/// attribute (ext2/3/4). Best effort: elsewhere it changes nothing and is not an error.
pub(crate) fn mark_topdir(dir: &Path) {
    if let Err(e) = set_flag(dir, FS_TOPDIR_FL) {
        tracing::debug!(dir = %dir.display(), error = %e, "TOPDIR attribute not set");
    }
}

fn set_flag(dir: &Path, flag: libc::c_long) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    let flags = get_flags(&f)?;
    if flags & flag != 0 {
        return Ok(());
    }
    set_flags(&f, flags | flag)
}

#[allow(unsafe_code)]
fn get_flags(f: &std::fs::File) -> std::io::Result<libc::c_long> {
    let mut flags: libc::c_long = 0;
    // SAFETY: the descriptor is open (owned by `f`) for the whole call, and
    // FS_IOC_GETFLAGS writes one `long` into `flags`, which lives on this stack frame.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

#[allow(unsafe_code)]
fn set_flags(f: &std::fs::File, flags: libc::c_long) -> std::io::Result<()> {
    // SAFETY: as in `get_flags`; FS_IOC_SETFLAGS only reads the `long` behind the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_store_root_is_a_topdir_on_ext4() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = super::super::LayerStore::open(dir.path()).unwrap();
        let on_ext4 = nix::sys::statfs::statfs(store.root())
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC);
        let f = std::fs::File::open(store.root()).unwrap();
        if on_ext4 {
            assert_ne!(get_flags(&f).unwrap() & FS_TOPDIR_FL, 0, "TOPDIR not set");
        }
        // Idempotent, and best effort where it cannot be set.
        mark_topdir(store.root());
        mark_topdir(&dir.path().join("missing"));
        if on_ext4 {
            assert_ne!(get_flags(&f).unwrap() & FS_TOPDIR_FL, 0);
        }
    }
}
