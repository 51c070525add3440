//! Mount namespace setup of a container's init process (runs in the helper's child, in its
//! new mount namespace, before `pivot_root`).
//!
//! The agent switched the guest's root away from the initramfs rootfs at boot (see
//! `init::switch_root`), so `pivot_root` works here. Mount destinations are joined onto the
//! rootfs path without resolving symlinks inside the rootfs; a hostile image can only
//! redirect a mount inside its own VM.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::spec::{Mount, Spec};

type Result<T> = std::result::Result<T, String>;

/// Device nodes bind-mounted from the guest's /dev into the container's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Mounts used when the spec has none.
fn default_mounts() -> Vec<Mount> {
    let m = |dest: &str, kind: &str, opts: &[&str]| Mount {
        destination: dest.to_owned(),
        kind: Some(kind.to_owned()),
        source: Some(kind.to_owned()),
        options: opts.iter().map(|s| (*s).to_owned()).collect(),
    };
    vec![
        m("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777"],
        ),
        m("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ]
}

pub fn setup(rootfs: &Path, spec: &Spec) -> Result<()> {
    root_propagation(rootfs, spec)?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind rootfs {}: {e}", rootfs.display()))?;
    // The share is mounted nosuid in the guest and a bind inherits that: set-user-ID
    // programs of the image (no_new_privs=false) need it cleared on the container's root.
    mount(
        None::<&str>,
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("remount rootfs {} suid: {e}", rootfs.display()))?;
    let mounts = if spec.mounts.is_empty() {
        default_mounts()
    } else {
        spec.mounts.clone()
    };
    let mut dev_is_tmpfs = false;
    for m in &mounts {
        mount_one(rootfs, m)?;
        dev_is_tmpfs |= m.destination == "/dev" && m.kind.as_deref() == Some("tmpfs");
    }
    if dev_is_tmpfs {
        populate_dev(rootfs)?;
    }
    pivot(rootfs)?;
    if let Some(linux) = &spec.linux {
        for (key, value) in &linux.sysctl {
            let path = hull_agent_api::validate::sysctl_key(key).map_err(|e| e.to_string())?;
            std::fs::write(&path, value).map_err(|e| format!("sysctl {key}: {e}"))?;
        }
        for p in &linux.masked_paths {
            mask(p)?;
        }
        for p in &linux.readonly_paths {
            readonly(p)?;
        }
    }
    if spec.readonly_root() {
        // Last, so that every mount point above could still be created in the rootfs.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("remount the root read-only: {e}"))?;
    }
    Ok(())
}

/// Whether a mount asks for bidirectional propagation (CRI Bidirectional: `rshared`).
fn bidirectional(m: &Mount) -> bool {
    propagation(&m.options).is_some_and(|p| p.contains(MsFlags::MS_SHARED))
}

/// Keeps what the container mounts from reaching the node (runc's rule), except through
/// bidirectional volumes.
///
/// Normally every mount of the new namespace becomes a slave (`rslave`, runc's default): it
/// still receives the node's new mounts (HostToContainer volumes work), and sends none.
/// A bidirectional volume must be a *peer* of the node's mount instead, which a bind of a
/// slave never is: then only the root mount and the mount holding the rootfs become slaves
/// (pivot_root needs neither to be shared, and every mount made here lands below the
/// rootfs), the bidirectional bind joins the node's peer group, the other binds take their
/// own propagation, and the old root is made `rslave` before it is detached, so its
/// unmounting never propagates to the node.
fn root_propagation(rootfs: &Path, spec: &Spec) -> Result<()> {
    let slave = |path: &Path, flags: MsFlags| {
        mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("make {} a slave mount: {e}", path.display()))
    };
    if !spec.mounts.iter().any(bidirectional) {
        return slave(Path::new("/"), MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }
    slave(Path::new("/"), MsFlags::MS_SLAVE)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    let holder = hull_agent_api::mountinfo::mount_points(&info)
        .map(std::path::PathBuf::from)
        .filter(|p| rootfs.starts_with(p))
        .max_by_key(|p| p.components().count())
        .unwrap_or_else(|| "/".into());
    slave(&holder, MsFlags::MS_SLAVE)
}

/// The propagation an OCI mount option asks for, if any.
fn propagation(options: &[String]) -> Option<MsFlags> {
    options.iter().rev().find_map(|o| {
        Some(match o.as_str() {
            "private" => MsFlags::MS_PRIVATE,
            "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => MsFlags::MS_SLAVE,
            "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => MsFlags::MS_SHARED,
            "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
            _ => return None,
        })
    })
}

/// Splits OCI mount options into flags and the data string.
fn parse_options(options: &[String]) -> (MsFlags, bool, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut bind = false;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => bind = true,
            // Read-only all the way down: see `make_recursive_readonly`.
            "rro" => {}
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            other => data.push(other.to_owned()),
        }
    }
    (flags, bind, data)
}

fn mount_one(rootfs: &Path, m: &Mount) -> Result<()> {
    let dest = rootfs.join(m.destination.trim_start_matches('/'));
    let kind = m.kind.as_deref().unwrap_or("bind");
    let (flags, bind, data) = parse_options(&m.options);
    if bind || kind == "bind" {
        let source = m.source.as_deref().ok_or("bind mount without source")?;
        make_target(&dest, Path::new(source).is_dir())?;
        let rec = flags & MsFlags::MS_REC;
        mount(
            Some(source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(|e| format!("bind {source} on {}: {e}", m.destination))?;
        // Bind mounts take their flags only on a remount.
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags - MsFlags::MS_REC);
        if flags.intersects(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        ) {
            mount(None::<&str>, &dest, None::<&str>, remount, None::<&str>)
                .map_err(|e| format!("remount {}: {e}", m.destination))?;
        }
        if m.options.iter().any(|o| o == "rro") {
            make_recursive_readonly(&dest)
                .map_err(|e| format!("make {} recursively read-only: {e}", m.destination))?;
        }
        // In a VM within the guest only: the host side of a volume is set up by hulld. On
        // the node (host mode) a bidirectional bind stays a peer of the node's mount.
        let p = propagation(&m.options).unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        mount(None::<&str>, &dest, None::<&str>, p, None::<&str>)
            .map_err(|e| format!("propagation of {}: {e}", m.destination))?;
        return Ok(());
    }
    if kind == "cgroup" {
        return mount_cgroup(&dest, flags);
    }
    make_target(&dest, true)?;
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let source = m.source.as_deref().unwrap_or(kind);
    mount(Some(source), &dest, Some(kind), flags, data)
        .map_err(|e| format!("mount {kind} on {}: {e}", m.destination))
}

fn make_target(dest: &Path, dir: bool) -> Result<()> {
    let made = if dir {
        std::fs::create_dir_all(dest)
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dest)
            .map(drop)
    };
    made.map_err(|e| format!("create mount point {}: {e}", dest.display()))
}

fn populate_dev(rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    for name in DEVICES {
        let target = dev.join(name);
        make_target(&target, false)?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
        })
        .map_err(|e| format!("bind /dev/{name}: {e}"))?;
    }
    let links = [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ];
    for (link, target) in links {
        let path = dev.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    Ok(())
}

/// `pivot_root(rootfs, rootfs)` then detach the old root (runc's trick, no put_old dir),
/// made `rslave` first so that its unmounting cannot propagate anywhere.
fn pivot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    let rslave = MsFlags::MS_SLAVE | MsFlags::MS_REC;
    mount(None::<&str>, ".", None::<&str>, rslave, None::<&str>)
        .map_err(|e| format!("make the old root rslave: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Every mount at and below `dest` read-only (`mount_setattr` with `AT_RECURSIVE`, Linux
/// 5.12+), for the `rro` option: CRI recursive read-only volumes.
fn make_recursive_readonly(dest: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads a NUL-terminated path and `size_of::<mount_attr>()` bytes
    // of `attr`, both valid for the call; it changes mount flags only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The container's `/sys/fs/cgroup`: the node's layout as seen from its cgroup namespace.
/// A cgroup v2 mount where the agent's own `/sys/fs/cgroup` is one (every pod VM, v2
/// nodes); on a v1 or hybrid node a tmpfs with each hierarchy below it, as runc mounts
/// them (`<name>` like the node's: `memory`, `cpu,cpuacct`, `systemd`, `unified`).
fn mount_cgroup(dest: &Path, flags: MsFlags) -> Result<()> {
    make_target(dest, true)?;
    let placement = super::cgroup::Placement::host(String::new()).map_err(|e| e.to_string())?;
    let (unified, v1) = placement.hierarchies();
    let v2_only = v1.is_empty() && unified.is_some_and(|u| u == Path::new("/sys/fs/cgroup"));
    if v2_only || (v1.is_empty() && unified.is_none()) {
        return mount(Some("cgroup"), dest, Some("cgroup2"), flags, None::<&str>)
            .map_err(|e| format!("mount cgroup2 on {}: {e}", dest.display()));
    }
    let tmpfs = flags - MsFlags::MS_RDONLY;
    mount(Some("tmpfs"), dest, Some("tmpfs"), tmpfs, Some("mode=755"))
        .map_err(|e| format!("mount tmpfs on {}: {e}", dest.display()))?;
    for (controllers, point) in v1 {
        let name = point.file_name().unwrap_or_default();
        let target = dest.join(name);
        make_target(&target, true)?;
        let data = controllers.join(",");
        mount(
            Some("cgroup"),
            &target,
            Some("cgroup"),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| format!("mount cgroup {data} on {}: {e}", target.display()))?;
    }
    if let Some(u) = unified {
        let target = dest.join(u.file_name().unwrap_or_default());
        make_target(&target, true)?;
        mount(
            Some("cgroup"),
            &target,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("mount cgroup2 on {}: {e}", target.display()))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs;
        mount(None::<&str>, dest, None::<&str>, ro, None::<&str>)
            .map_err(|e| format!("remount {} read-only: {e}", dest.display()))?;
    }
    Ok(())
}

fn mask(path: &str) -> Result<()> {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(());
    }
    let result = if p.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(|e| format!("mask {path}: {e}"))
}

fn readonly(path: &str) -> Result<()> {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|()| {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
        mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
    })
    .map_err(|e| format!("readonly {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["rbind", "ro", "nosuid", "mode=755", "size=1k"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let (flags, bind, data) = parse_options(&opts);
        assert!(bind);
        assert!(flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, vec!["mode=755", "size=1k"]);
        assert_eq!(propagation(&opts), None);
        let opts = ["rbind".to_owned(), "rslave".to_owned(), "ro".to_owned()];
        assert_eq!(
            propagation(&opts),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
    }
}
