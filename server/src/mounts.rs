//! hulld's view of the host's mount table, for tearing down what it mounted.
//!
//! Paths come from `/proc/self/mountinfo` read as bytes ([`hull_agent_api::mountinfo::entries`]),
//! never lossily: a guest that names a directory holding a mount with non-UTF-8 bytes (in a
//! writable volume) must not hide that mount from the unmount. hulld unmounts only points the
//! table lists, with `UMOUNT_NOFOLLOW`, and deletes a tree only when the table lists nothing
//! at or below it, so `remove_dir_all` never walks into a mounted volume.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// Unmount passes before giving up (stacked mounts need one pass each).
const MAX_UNMOUNT_PASSES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    #[error("Cannot read the mount table")]
    ReadTable(#[source] std::io::Error),
    #[error("Cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} still has mounts at or below it: {points:?}")]
    StillMounted { path: PathBuf, points: Vec<PathBuf> },
    #[error("Cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mount of the host's table: its point and per-mount options (`ro,nosuid,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub options: String,
}

/// Every mount at or below `dir` (component-wise: `/a/bc` is not below `/a/b`), in table
/// order (parents before the mounts on top of them).
pub fn under(dir: &Path) -> Result<Vec<Mount>, MountsError> {
    let table = std::fs::read("/proc/self/mountinfo").map_err(MountsError::ReadTable)?;
    Ok(hull_agent_api::mountinfo::entries(&table)
        .map(|e| Mount {
            point: PathBuf::from(OsStr::from_bytes(&e.point)),
            options: e.options,
        })
        .filter(|m| m.point.starts_with(dir))
        .collect())
}

/// Mounts strictly below `dir`.
pub fn below(dir: &Path) -> Result<Vec<Mount>, MountsError> {
    let mut all = under(dir)?;
    all.retain(|m| m.point != dir);
    Ok(all)
}

/// Unmounts everything at or below `dir`, deepest first, lazily (a busy mount must not
/// keep a pod from going away) and without following a symlink at the mount point.
/// Idempotent; fails if the table still lists a mount there afterwards.
pub fn unmount_under(dir: &Path) -> Result<(), MountsError> {
    for _ in 0..MAX_UNMOUNT_PASSES {
        let mut points: Vec<PathBuf> = under(dir)?.into_iter().map(|m| m.point).collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            unmount_listed(&p)?;
        }
    }
    still_mounted(dir)
}

/// Unmounts the mounts whose point is exactly `point` (stacked ones too), if the table
/// lists any. Mounts below it go with it (a lazy unmount detaches the whole subtree).
pub fn unmount_at(point: &Path) -> Result<(), MountsError> {
    for _ in 0..MAX_UNMOUNT_PASSES {
        if !under(point)?.iter().any(|m| m.point == point) {
            return Ok(());
        }
        unmount_listed(point)?;
    }
    Err(MountsError::StillMounted {
        path: point.to_owned(),
        points: vec![point.to_owned()],
    })
}

fn unmount_listed(point: &Path) -> Result<(), MountsError> {
    match umount2(point, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        // Gone already: a lazy unmount of its parent took it along.
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(MountsError::Unmount {
            path: point.to_owned(),
            source,
        }),
    }
}

fn still_mounted(dir: &Path) -> Result<(), MountsError> {
    let points: Vec<PathBuf> = under(dir)?.into_iter().map(|m| m.point).collect();
    if points.is_empty() {
        Ok(())
    } else {
        Err(MountsError::StillMounted {
            path: dir.to_owned(),
            points,
        })
    }
}

/// Deletes the tree at `dir` (never following a symlink in it) after checking that the
/// mount table lists nothing at or below it. A missing `dir` is fine.
pub fn remove_unmounted_tree(dir: &Path) -> Result<(), MountsError> {
    still_mounted(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountsError::Remove {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{MsFlags, mount};

    fn tmpfs(at: &Path) {
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs (run as root, CI does)");
    }

    #[test]
    fn a_non_utf8_mount_point_is_listed_unmounted_and_the_tree_removed() {
        assert!(nix::unistd::geteuid().is_root(), "this test mounts tmpfs");
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let bad = top.join(OsStr::from_bytes(b"\xff\xfe dir"));
        std::fs::create_dir_all(bad.join("inner")).unwrap();
        tmpfs(&bad);
        std::fs::create_dir(bad.join("inner")).unwrap();
        tmpfs(&bad.join("inner"));
        tmpfs(&bad.join("inner")); // stacked
        let listed: Vec<PathBuf> = under(&top).unwrap().into_iter().map(|m| m.point).collect();
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert!(listed.contains(&bad));
        let err = remove_unmounted_tree(&top).expect_err("mounted");
        assert!(matches!(err, MountsError::StillMounted { .. }), "{err}");
        assert!(bad.join("inner").exists(), "nothing removed while mounted");
        unmount_under(&top).unwrap();
        unmount_under(&top).unwrap();
        assert!(under(&top).unwrap().is_empty());
        remove_unmounted_tree(&top).unwrap();
        assert!(!top.exists());
        remove_unmounted_tree(&top).unwrap();
    }

    #[test]
    fn a_symlink_at_a_listed_point_is_not_followed() {
        assert!(nix::unistd::geteuid().is_root(), "this test mounts tmpfs");
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        tmpfs(&victim);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        // Not listed: nothing happens, and the link's target stays mounted.
        unmount_at(&link).unwrap();
        assert!(under(&victim).unwrap().iter().any(|m| m.point == victim));
        // Even straight at the syscall, UMOUNT_NOFOLLOW does not follow the link.
        let _ = unmount_listed(&link);
        assert_eq!(under(&victim).unwrap().len(), 1);
        assert!(below(tmp.path()).unwrap().iter().any(|m| m.point == victim));
        unmount_at(&victim).unwrap();
        assert!(under(&victim).unwrap().is_empty());
    }
}
