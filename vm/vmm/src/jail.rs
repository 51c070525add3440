//! hull-vmm's jail, after Firecracker's jailer: the last wall between a guest that broke
//! out of a device model and the host.
//!
//! Two steps, both before any guest code runs:
//! 1. [`enter_mount_namespace`] (single-threaded, at the very start): a private mount
//!    namespace whose root is an empty read-only tmpfs holding, at their usual absolute
//!    paths, only what the VM needs: its run dir (sockets, console log), kernel and
//!    initramfs, a snapshot dir, and the device nodes it opens (`/dev/kvm`,
//!    `/dev/net/tun`, `/dev/urandom`). hulld's CRI socket, the store, the other pods'
//!    dirs and `/proc` are not there: `connect()` on a path outside the run dir fails.
//! 2. [`drop_privileges`] (after the VM is built, before the vCPUs start): an unprivileged
//!    uid/gid of the VM's own, no supplementary groups, so no capabilities, and not
//!    dumpable. Every fd the VM needs (KVM, tap, memfd, sockets, files) was opened before.
//!
//! The per-thread seccomp filters ([`super::seccomp`]) then limit what each thread can ask
//! the kernel: only the vsock device thread may create a socket (`AF_UNIX` only) and
//! `connect()`; abstract unix sockets are per network namespace, and hull-vmm runs in the
//! pod's.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

/// Errors from setting up the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("The jail must be entered before any thread starts")]
    Threaded,
    #[error("Jail step failed: {step}")]
    Step {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("Jail step failed: {step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Jail path {0} is not absolute")]
    Relative(PathBuf),
    #[error("uid/gid 0 is not a jail")]
    Root,
}

fn step(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = what.into();
    move |source| JailError::Step { step, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = what.into();
    move |source| JailError::Io { step, source }
}

/// What a VM built from `config` opens by path: its sockets' and logs' dirs, kernel,
/// initramfs, disk, the snapshot it restores, and the device nodes of its devices.
pub fn needed_paths(
    config: &hull_vmm_api::config::VmmConfig,
    restore: Option<&Path>,
) -> Vec<PathBuf> {
    let parent = |p: &Path| p.parent().map(Path::to_path_buf);
    let mut paths = vec![PathBuf::from("/dev/kvm"), config.kernel.clone()];
    paths.extend(config.initramfs.clone());
    paths.extend(config.console_log.as_deref().and_then(parent));
    paths.extend(config.api_socket.as_deref().and_then(parent));
    paths.extend(config.vsock.as_ref().and_then(|v| parent(&v.uds_path)));
    paths.extend(config.fs.as_ref().and_then(|f| parent(&f.socket)));
    paths.extend(config.blk.as_ref().map(|b| b.path.clone()));
    paths.extend(restore.map(Path::to_path_buf));
    if config.net.as_ref().is_some_and(|n| n.tap.is_some()) {
        paths.push("/dev/net/tun".into());
    }
    if config.rng {
        paths.push("/dev/urandom".into());
    }
    paths.retain(|p| !p.as_os_str().is_empty());
    paths
}

/// The paths to keep, without those inside another kept dir, in a mount order (parents
/// first).
pub fn keep_list(paths: &[PathBuf]) -> Result<Vec<PathBuf>, JailError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !p.is_absolute() {
            return Err(JailError::Relative(p.clone()));
        }
        let p = p.canonicalize().unwrap_or_else(|_| p.clone());
        out.push(p);
    }
    out.sort();
    out.dedup();
    let dirs: Vec<PathBuf> = out.iter().filter(|p| p.is_dir()).cloned().collect();
    out.retain(|p| !dirs.iter().any(|d| d != p && p.starts_with(d)));
    Ok(out)
}

/// Enters a private mount namespace whose root (an empty tmpfs mounted on `root`, which
/// must be an empty dir) holds only `keep` (files and dirs, bound at the same paths).
pub fn enter_mount_namespace(root: &Path, keep: &[PathBuf]) -> Result<(), JailError> {
    if thread_count() > 1 {
        return Err(JailError::Threaded);
    }
    let keep = keep_list(keep)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make / private"))?;
    std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        flags,
        Some("size=64k,mode=0755"),
    )
    .map_err(step("mount the jail root"))?;
    for path in &keep {
        bind_into(root, path)?;
    }
    // The API reads /proc/self/smaps: a proc of its own processes only (after the uid
    // drop, hull-vmm sees no other process).
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(io("create the jail's /proc"))?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        flags,
        Some("hidepid=invisible,subset=pid"),
    )
    .map_err(step("mount the jail's /proc"))?;
    nix::unistd::chdir(root).map_err(step("chdir to the jail root"))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(step("remount the jail root read-only"))
}

/// Binds `path` at the same path below `root` (read-only unless it is a dir: the run dir
/// and a snapshot dir are written; device nodes keep their own access rules).
fn bind_into(root: &Path, path: &Path) -> Result<(), JailError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let target = root.join(rel);
    let is_dir = path.is_dir();
    let parent = if is_dir {
        target.as_path()
    } else {
        target.parent().unwrap_or(root)
    };
    std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    if !is_dir {
        std::fs::File::create(&target).map_err(io(format!("create {}", target.display())))?;
    }
    let what = format!("bind {}", path.display());
    mount(
        Some(path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(step(what.clone()))?;
    let is_device = path.starts_with("/dev");
    if !is_dir && !is_device {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
        mount(None::<&str>, &target, None::<&str>, ro, None::<&str>)
            .map_err(step(format!("{what} read-only")))?;
    }
    Ok(())
}

/// Drops to `uid`/`gid` with no supplementary groups: every capability goes with uid 0,
/// in every thread (glibc changes the credentials of all threads, see the seccomp
/// filters' `setresuid` entries). The process is made non-dumpable, so other processes
/// of the uid cannot ptrace it or read its memory.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    if uid == 0 || gid == 0 {
        return Err(JailError::Root);
    }
    nix::unistd::setgroups(&[]).map_err(step("setgroups"))?;
    let (gid, uid) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    nix::sys::prctl::set_dumpable(false).map_err(step("set not dumpable"))?;
    Ok(())
}

/// Threads of this process (`/proc/self/task`), 0 if unknown.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_path_once_and_nothing_inside_a_kept_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).expect("run dir");
        std::fs::write(run.join("console.log"), b"").expect("file");
        std::fs::write(dir.path().join("vmlinux"), b"").expect("kernel");
        let list = keep_list(&[
            run.join("console.log"),
            run.clone(),
            dir.path().join("vmlinux"),
            run.clone(),
        ])
        .expect("list");
        assert_eq!(list, vec![run, dir.path().join("vmlinux")]);
        assert!(matches!(
            keep_list(&["relative".into()]),
            Err(JailError::Relative(_))
        ));
        assert!(matches!(drop_privileges(0, 5), Err(JailError::Root)));
    }
}
