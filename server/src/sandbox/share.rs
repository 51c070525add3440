//! The host side of a pod's virtio-fs share.
//!
//! # Threat
//! The guest is hostile: a container escape gives it root in the VM, and root can mount the
//! virtio-fs tag anywhere and do whatever virtiofsd (root on the host) allows in the shared
//! tree. hulld works in that tree as root in the host's mount namespace: it creates each
//! container's dirs, mounts its rootfs overlay and binds its volumes and `/etc` files
//! there, and unmounts and deletes all of it again. If the guest could create, rename or
//! replace entries in those dirs, it could swap any of them for a symlink between two of
//! hulld's steps and make hulld write, mount or unmount anywhere on the host (Kata's
//! CVE-2020-2026 was this), or rename a dir holding a mount so that teardown misses it.
//!
//! # Design: the guest gets a read-only view of a tree only hulld writes
//! Patching each call site to resolve paths safely would leave the class open to the next
//! one, so the guest is given no way to change what hulld walks. In the pod's run dir
//! (`0700`, host users cannot reach anything in it):
//!
//! - `staging/`: hulld's working tree, the only place it creates, mounts and deletes. A
//!   mount point of its own with shared propagation, in a peer group of its own (made
//!   private first, so pod mounts never propagate into the rest of the host).
//! - `shared/`: what virtiofsd serves (both VMM backends hand virtiofsd
//!   `VmConfig::shared_dir`, which RunPodSandbox sets to
//!   [`Sandbox::shared_dir`](super::Sandbox::shared_dir)):
//!   a bind of `staging/`, a peer of it, remounted **read-only, nosuid, nodev, noexec**.
//!   Mounts made under `staging/` later (rootfs overlays, volume binds) propagate into it and
//!   into virtiofsd's namespace, each with its own flags (mount flags are per mount), so the
//!   guest can write inside a rootfs overlay, a read-write volume and its own `/etc/hostname`
//!   and `/etc/resolv.conf` (file binds, so only their content), and nowhere else: it
//!   cannot create, rename, delete or symlink anything in the container dirs, their
//!   `mounts/` dirs, or the share's root.
//! - `scratch/`: a private mount point where a volume bind gets its final flags (read-only,
//!   recursively read-only, propagation) before it is moved under `staging/`. A flag changed
//!   by a remount does not propagate, so a bind made read-only *after* it appeared under
//!   the share would stay writable in virtiofsd's copy; a moved mount propagates as it is.
//!
//! What stays writable by the guest is only ever touched by fd-based code that cannot be
//! redirected: mount points inside a rootfs (`crate::container::inroot`, `openat2` with
//! `RESOLVE_IN_ROOT`) and the rootfs's `/etc/passwd` and `/etc/group`. Teardown unmounts
//! only points `/proc/self/mountinfo` lists, read as bytes, with `UMOUNT_NOFOLLOW`, and
//! deletes a tree only when nothing is mounted below it ([`crate::mounts`]).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::mounts::{self, MountsError};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("Cannot create the share dir {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot mount {path} ({step})")]
    Mount {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot tear down the share")]
    Teardown(#[from] MountsError),
}

/// hulld's working tree of the pod whose run dir is `run_dir`.
pub fn staging_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("staging")
}

/// The read-only view of [`staging_dir`] that virtiofsd serves.
pub fn view_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("shared")
}

/// Where volume binds get their flags before they move under [`staging_dir`].
pub fn scratch_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("scratch")
}

/// Creates the run dir (0700) and the three share mounts in it. Idempotent.
pub fn prepare(run_dir: &Path) -> Result<(), ShareError> {
    create_dir(run_dir, 0o700)?;
    let (staging, view, scratch) = (
        staging_dir(run_dir),
        view_dir(run_dir),
        scratch_dir(run_dir),
    );
    let listed = mounts::under(run_dir)?;
    let is_mounted = |p: &Path| listed.iter().any(|m| m.point == p);
    let none = None::<&Path>;
    if !is_mounted(&staging) {
        create_dir(&staging, 0o755)?;
        mount_step(&staging, "bind", Some(&staging), MsFlags::MS_BIND)?;
        mount_step(&staging, "make private", none, MsFlags::MS_PRIVATE)?;
        mount_step(&staging, "make shared", none, MsFlags::MS_SHARED)?;
    }
    if !is_mounted(&scratch) {
        create_dir(&scratch, 0o700)?;
        mount_step(&scratch, "bind", Some(&scratch), MsFlags::MS_BIND)?;
        mount_step(&scratch, "make private", none, MsFlags::MS_PRIVATE)?;
    }
    if !is_mounted(&view) {
        create_dir(&view, 0o755)?;
        mount_step(
            &view,
            "bind the staging dir",
            Some(&staging),
            MsFlags::MS_BIND,
        )?;
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount_step(&view, "remount read-only", none, ro)?;
    }
    Ok(())
}

fn mount_step(
    target: &Path,
    step: &'static str,
    source: Option<&Path>,
    flags: MsFlags,
) -> Result<(), ShareError> {
    mount(source, target, None::<&str>, flags, None::<&str>).map_err(|source| ShareError::Mount {
        path: target.to_owned(),
        step,
        source,
    })
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), ShareError> {
    let err = |source| ShareError::Create {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Unmounts everything at or below `run_dir` (the view, staging with every overlay and
/// volume in it, scratch), deepest first. Idempotent; fails if a mount is left, so the
/// caller never deletes the run dir over a mounted volume.
pub fn release(run_dir: &Path) -> Result<(), ShareError> {
    mounts::unmount_under(run_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn points(dir: &Path) -> Vec<PathBuf> {
        mounts::under(dir)
            .unwrap()
            .into_iter()
            .map(|m| m.point)
            .collect()
    }

    #[test]
    fn the_view_is_read_only_and_shows_later_mounts_with_their_own_flags() {
        assert!(is_root(), "this test needs root (bind mounts)");
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("pod");
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("keep"), b"host data").unwrap();
        prepare(&run).unwrap();
        prepare(&run).unwrap(); // idempotent: no second bind on top
        let (staging, view) = (staging_dir(&run), view_dir(&run));
        assert_eq!(points(&run).len(), 3, "{:?}", points(&run));
        let mode = std::fs::metadata(&run).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // hulld writes in staging; the view shows it and refuses every change.
        std::fs::create_dir_all(staging.join("ctr/volume")).unwrap();
        assert!(view.join("ctr/volume").is_dir());
        let denied = [
            std::fs::create_dir(view.join("ctr/new")).err(),
            std::os::unix::fs::symlink("/etc", view.join("ctr/link")).err(),
            std::fs::rename(view.join("ctr"), view.join("moved")).err(),
        ];
        for e in denied {
            assert_eq!(e.and_then(|e| e.raw_os_error()), Some(libc_erofs()));
        }
        // A bind under staging appears in the view, writable there.
        mount(
            Some(&volume),
            &staging.join("ctr/volume"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        std::fs::write(view.join("ctr/volume/from-view"), b"x").unwrap();
        assert!(volume.join("from-view").exists());
        release(&run).unwrap();
        assert!(points(&run).is_empty());
        mounts::remove_unmounted_tree(&run).unwrap();
        // The volume's files were not touched by the removal.
        assert_eq!(std::fs::read(volume.join("keep")).unwrap(), b"host data");
        release(&run).unwrap();
    }

    fn libc_erofs() -> i32 {
        nix::Error::EROFS as i32
    }
}
