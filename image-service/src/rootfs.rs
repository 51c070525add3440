//! Container rootfs: an overlay of the image's unpacked layers (read-only lower dirs,
//! topmost first) with a per-container upper and work dir under `<root>/containers/<id>`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

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
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|source| ImageError::Mount {
        op: "Mount overlay rootfs",
        path: target.to_path_buf(),
        source,
    })
}

/// Detaches the rootfs mount at `target`; not mounted is fine.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
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
