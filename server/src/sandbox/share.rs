//! The host side of a pod's virtio-fs share.
//!
//! virtiofsd serves the share from its own mount namespace. Container rootfs overlays and
//! volume binds are mounted under the share *after* virtiofsd started, so the share is
//! made its own mount point with shared propagation first: later mounts under it
//! propagate into virtiofsd's (slave) copy, and the guest sees them. (The host's `/` is
//! private here, so without this the guest would see empty directories.)
//!
//! Removing a share unmounts everything below it, deepest first, before any file is
//! deleted: `remove_dir_all` must never walk into a mounted hostPath volume.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("Cannot create the share dir {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot make {path} a shared mount point")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot read the mount table")]
    MountInfo(#[source] std::io::Error),
    #[error("Cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Creates `dir` and makes it a mount point of its own with shared propagation.
pub fn prepare(dir: &Path) -> Result<(), ShareError> {
    std::fs::create_dir_all(dir).map_err(|source| ShareError::Create {
        path: dir.to_owned(),
        source,
    })?;
    let err = |source| ShareError::Mount {
        path: dir.to_owned(),
        source,
    };
    if !mount_points_under(dir)?.iter().any(|m| m == dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(err)
}

/// Unmounts everything at or below `dir`, deepest first (lazily, so a busy mount does not
/// keep the pod from going away). Idempotent.
pub fn release(dir: &Path) -> Result<(), ShareError> {
    let mut points = mount_points_under(dir)?;
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(source) => return Err(ShareError::Unmount { path: p, source }),
        }
    }
    Ok(())
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, ShareError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(ShareError::MountInfo)?;
    Ok(parse_mount_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// The mount point field (5th) of each mountinfo line, with its octal escapes undone.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    hull_agent_api::mountinfo::mount_points(mountinfo)
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:5 / /run/hull/a\\040b/shared rw shared:7 - tmpfs t rw\n";
        assert_eq!(
            parse_mount_points(info),
            [PathBuf::from("/"), PathBuf::from("/run/hull/a b/shared")]
        );
    }

    #[test]
    fn prepare_and_release_a_share_with_a_mount_inside() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (bind mounts)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("shared");
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("keep"), b"host data").unwrap();
        prepare(&share).unwrap();
        prepare(&share).unwrap(); // idempotent: no second bind on top
        let under = mount_points_under(&share).unwrap();
        assert_eq!(under, std::slice::from_ref(&share));
        let target = share.join("ctr/volume");
        std::fs::create_dir_all(&target).unwrap();
        mount(
            Some(&volume),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        release(&share).unwrap();
        assert!(mount_points_under(&share).unwrap().is_empty());
        std::fs::remove_dir_all(&share).unwrap();
        // The volume's files were not touched by the removal.
        assert_eq!(std::fs::read(volume.join("keep")).unwrap(), b"host data");
        release(&share).unwrap();
    }
}
