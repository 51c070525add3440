//! Mounts that live only in another process' mount namespace: virtiofsd's, for the binds
//! of a VM pod's volumes (issue 14).
//!
//! A hostPath volume is bound (recursively) into the pod's share so that virtiofsd can
//! serve it. A bind made in the node's mount namespace holds a copy of every mount below
//! the hostPath there, so the node's `umount` of such a submount leaves the copy, and the
//! `rmdir` of its mount point fails with `EBUSY` until the container is gone (critest's
//! "recursive/non-recursive readonly mounts" clean-up). containerd's copies live in the
//! container's own namespace, where the kernel detaches them when the node removes the
//! dir. Doing the same: the bind exists only in virtiofsd's namespace.
//!
//! How, without a helper process: the source tree is cloned detached (`open_tree` with
//! `OPEN_TREE_CLONE | AT_RECURSIVE`) in hulld's namespace; a fresh thread unshares its
//! filesystem attributes (`CLONE_FS`, so that `setns` into a mount namespace is allowed in a
//! multi-threaded process), joins virtiofsd's mount namespace, and attaches the clone there
//! (`move_mount`) and gives it its flags. The thread ends right after: nothing else in
//! hulld ever runs in that namespace.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

#[derive(Debug, thiserror::Error)]
pub enum ShareNsError {
    #[error("Cannot clone the mount tree at {path}")]
    Clone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot enter the mount namespace of process {pid}")]
    Enter {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("In the mount namespace of process {pid}: cannot {step} {path}")]
    Step {
        pid: u32,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The namespace thread failed: {0}")]
    Thread(String),
}

/// A detached copy of the mount tree at `source` (with every mount below it), made in
/// hulld's mount namespace; it goes away when dropped unless attached.
pub fn clone_tree(source: &Path) -> Result<OwnedFd, ShareNsError> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE;
    rustix::mount::open_tree(rustix::fs::CWD, source, flags).map_err(|e| ShareNsError::Clone {
        path: source.to_owned(),
        source: e.into(),
    })
}

/// Runs `f` on a new thread inside the mount namespace of process `pid`.
pub fn in_namespace_of<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> Result<T, ShareNsError> + Send + 'static,
) -> Result<T, ShareNsError> {
    let enter = move || -> Result<T, ShareNsError> {
        let err = |source: std::io::Error| ShareNsError::Enter { pid, source };
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(err)?;
        nix::sched::unshare(CloneFlags::CLONE_FS).map_err(|e| err(e.into()))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS).map_err(|e| err(e.into()))?;
        f()
    };
    std::thread::Builder::new()
        .name(format!("mntns-{pid}"))
        .spawn(enter)
        .map_err(|e| ShareNsError::Thread(e.to_string()))?
        .join()
        .map_err(|_| ShareNsError::Thread("panicked".into()))?
}

/// Attaches the detached `tree` at `target` (a path in the namespace of `pid`), then runs
/// `finish` there on it (flags, propagation).
pub fn attach_in(
    pid: u32,
    tree: OwnedFd,
    target: PathBuf,
    finish: impl FnOnce(&Path) -> Result<(), (&'static str, std::io::Error)> + Send + 'static,
) -> Result<(), ShareNsError> {
    in_namespace_of(pid, move || {
        let failed = |step, source| ShareNsError::Step {
            pid,
            step,
            path: target.clone(),
            source,
        };
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            &target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| failed("attach a mount at", e.into()))?;
        finish(&target).map_err(|(what, e)| failed(what, e))
    })
}

/// Unmounts everything at `target` (lazily, each stacked mount) in the namespace of `pid`.
/// Idempotent.
pub fn detach_in(pid: u32, target: PathBuf) -> Result<(), ShareNsError> {
    in_namespace_of(pid, move || {
        loop {
            match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(ShareNsError::Step {
                        pid,
                        step: "unmount",
                        path: target,
                        source: e.into(),
                    });
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{MntFlags, MsFlags, mount, umount2};

    fn mounted(mountinfo: &str, point: &Path) -> bool {
        hull_agent_api::mountinfo::mount_points(mountinfo).any(|p| Path::new(&p) == point)
    }

    /// A process in a mount namespace of its own (a copy of this one), as virtiofsd is.
    fn namespace_holder() -> std::process::Child {
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "60"])
            .spawn()
            .expect("unshare (util-linux)")
    }

    /// The node's rmdir of a hostPath submount it unmounted: EBUSY while a bind of the
    /// hostPath sits in the node's namespace (what hulld did), fine when the bind is in
    /// another namespace only, which the kernel then detaches.
    #[test]
    fn a_bind_in_another_namespace_does_not_keep_the_nodes_submount_busy() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts: run it as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let (host, share) = (dir.path().join("hostpath"), dir.path().join("share"));
        let (sub, target) = (host.join("tmpfs"), share.join("vol"));
        for d in [&sub, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        let tmpfs = |p: &Path| {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
        };
        let none = None::<&str>;

        // The old way: a bind in this namespace keeps the submount's mount point busy.
        tmpfs(&sub).unwrap();
        mount(
            Some(&host),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .unwrap();
        umount2(&sub, MntFlags::MNT_DETACH).unwrap();
        let busy = std::fs::remove_dir(&sub).map_err(|e| e.raw_os_error());
        umount2(&target, MntFlags::MNT_DETACH).unwrap();
        umount2(&target, MntFlags::MNT_DETACH).ok();
        assert_eq!(busy, Err(Some(libc_ebusy())), "the bug this module fixes");

        // The new way: the bind exists only in the holder's namespace.
        std::fs::create_dir_all(&sub).unwrap();
        tmpfs(&sub).unwrap();
        let mut holder = namespace_holder();
        let pid = holder.id();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let tree = clone_tree(&host).expect("clone");
        attach_in(pid, tree, target.clone(), |t| {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, t, None::<&str>, ro, None::<&str>)
                .map_err(|e| ("make read-only", e.into()))
        })
        .expect("attach");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounted(&theirs, &target) && mounted(&theirs, &target.join("tmpfs")));
        assert!(!mounted(&ours, &target), "not in the node's namespace");
        assert!(
            std::fs::write(target.join("x"), "x").is_ok(),
            "our target is a plain dir"
        );
        umount2(&sub, MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_dir(&sub).expect("rmdir of the unmounted submount");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        assert!(
            !mounted(&theirs, &target.join("tmpfs")),
            "the kernel detached the copy"
        );
        detach_in(pid, target.clone()).expect("detach");
        detach_in(pid, target.clone()).expect("again");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        assert!(!mounted(&theirs, &target));
        let _ = holder.kill();
        let _ = holder.wait();
    }

    fn libc_ebusy() -> i32 {
        nix::errno::Errno::EBUSY as i32
    }
}
