//! Container rootfs: an overlay of the image's unpacked layers (read-only lower dirs,
//! topmost first) with a per-container upper and work dir under `<root>/containers/<id>`.
//!
//! Images keep what they need inside the guest (setuid bits, device nodes, file
//! capabilities), and a guest can write more of the same into its upper dir. On the host
//! none of it is usable: the overlay is mounted `nosuid,nodev`, and the store and its
//! `containers/` and `layers/` dirs are 0700 ([`private_dir`]), so no host user but root
//! reaches a file in them. The overlay is mounted through a descriptor of its target
//! opened with `O_NOFOLLOW` (`/proc/self/fd/N`), and unmounted with `UMOUNT_NOFOLLOW`.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use crate::error::{ImageError, Result};

/// Longest overlay option string the kernel takes in one page.
const MAX_MOUNT_OPTIONS: usize = 4000;

/// Checks a container id before it becomes a directory name.
pub(crate) fn validate_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidArgument(format!(
            "bad container id {id:?}"
        )))
    }
}

/// Creates `dir` (and its parents) and makes it 0700: what is below it (layers with setuid
/// programs and device nodes, containers' upper dirs a guest writes) is root's only.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(ImageError::fs("Create private dir", dir))
}

/// The writable dirs of one container.
pub(crate) fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Mounts the overlay at `target` (created if missing).
pub(crate) fn mount_overlay(lowers: &[PathBuf], cdir: &Path, target: &Path) -> Result<()> {
    let upper = cdir.join("upper");
    let work = cdir.join("work");
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d).map_err(ImageError::fs("Create rootfs dir", d))?;
    }
    let mut lower = String::new();
    for (i, l) in lowers.iter().enumerate() {
        let s = l.to_str().filter(|s| !s.contains([',', ':']));
        let s = s.ok_or_else(|| {
            ImageError::InvalidArgument(format!("layer path {l:?} unusable in overlay options"))
        })?;
        if i > 0 {
            lower.push(':');
        }
        lower.push_str(s);
    }
    let (u, w) = (upper.to_string_lossy(), work.to_string_lossy());
    let opts = format!("lowerdir={lower},upperdir={u},workdir={w}");
    if opts.len() > MAX_MOUNT_OPTIONS || [&*u, &*w].iter().any(|s| s.contains([',', ':'])) {
        return Err(ImageError::InvalidArgument(format!(
            "overlay options for {} layers do not fit in one mount call",
            lowers.len()
        )));
    }
    let target_fd = open(
        target,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| ImageError::Mount {
        op: "Open the rootfs mount point",
        path: target.to_path_buf(),
        source,
    })?;
    let at = format!("/proc/self/fd/{}", target_fd.as_raw_fd());
    mount(
        Some("overlay"),
        at.as_str(),
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|source| ImageError::Mount {
        op: "Mount overlay rootfs",
        path: target.to_path_buf(),
        source,
    })
}

/// Detaches the rootfs mount at `target` (a symlink there is not followed); not mounted
/// is fine.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(ImageError::Mount {
            op: "Unmount rootfs",
            path: target.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(validate_container_id("abc-123_x.y").is_ok());
        for bad in ["", "..", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }
}
