//! A container's CRI mounts on the host side: each source (hostPath file or dir, kubelet's
//! emptyDir/configmap/secret/projected dirs, /etc/hosts, /etc/hostname, /etc/resolv.conf)
//! is bind-mounted into `<shared_dir>/<container>/mounts/<n>`, which the guest sees over
//! virtio-fs at `GUEST_SHARED_DIR/<container>/mounts/<n>`. Symlinked sources are resolved
//! on the host (the guest cannot follow a host symlink), a missing source becomes a dir
//! (containerd does the same), and a read-only mount is read-only on the host side too,
//! so an untrusted guest cannot write through it.

use std::path::{Path, PathBuf};

use hull_cri_api as cri;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::spec::GuestMount;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("Mount {index}: host path {path:?} must be absolute")]
    NotAbsolute { index: usize, path: String },
    #[error("Mount {index}: recursive_read_only needs readonly and private propagation")]
    RecursiveReadOnly { index: usize },
    #[error("Mount {index}: cannot make {target} recursively read-only")]
    MakeRecursiveReadOnly {
        index: usize,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Mount {index}: cannot resolve host path {path}")]
    Resolve {
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount {index}: cannot create the mount point {path}")]
    Target {
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount {index}: cannot bind {source_path} onto {target}")]
    Bind {
        index: usize,
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// `<shared_dir>/<container_id>/mounts`.
pub fn mounts_dir(shared_dir: &Path, container_id: &str) -> PathBuf {
    shared_dir.join(container_id).join("mounts")
}

/// Binds every CRI mount into the share and returns them as guest mounts, in order. On
/// error, the mounts already made are undone.
pub fn prepare(
    shared_dir: &Path,
    guest_shared_dir: &str,
    container_id: &str,
    mounts: &[cri::Mount],
) -> Result<Vec<GuestMount>, VolumeError> {
    let dir = mounts_dir(shared_dir, container_id);
    let mut out = Vec::with_capacity(mounts.len());
    for (index, m) in mounts.iter().enumerate() {
        match bind_one(&dir, index, m) {
            Ok(()) => out.push(GuestMount {
                container_path: m.container_path.clone(),
                source: format!("{guest_shared_dir}/{container_id}/mounts/{index}"),
                readonly: m.readonly,
                recursive_readonly: m.recursive_read_only,
                host_submounts: has_submounts(&dir.join(index.to_string())),
                propagation: cri::MountPropagation::try_from(m.propagation)
                    .unwrap_or(cri::MountPropagation::PropagationPrivate),
            }),
            Err(e) => {
                release(shared_dir, container_id);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn bind_one(dir: &Path, index: usize, m: &cri::Mount) -> Result<(), VolumeError> {
    if !m.host_path.starts_with('/') {
        return Err(VolumeError::NotAbsolute {
            index,
            path: m.host_path.clone(),
        });
    }
    let private = m.propagation == cri::MountPropagation::PropagationPrivate as i32;
    if m.recursive_read_only && !(m.readonly && private) {
        return Err(VolumeError::RecursiveReadOnly { index });
    }
    let host = Path::new(&m.host_path);
    if !host.exists() {
        std::fs::create_dir_all(host).map_err(|source| VolumeError::Resolve {
            index,
            path: host.to_owned(),
            source,
        })?;
    }
    let source_path = host.canonicalize().map_err(|source| VolumeError::Resolve {
        index,
        path: host.to_owned(),
        source,
    })?;
    let target = dir.join(index.to_string());
    let made = std::fs::create_dir_all(dir).and_then(|()| {
        if source_path.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&target)
                .map(drop)
        }
    });
    made.map_err(|source| VolumeError::Target {
        index,
        path: target.clone(),
        source,
    })?;
    let bind_err = |source| VolumeError::Bind {
        index,
        source_path: source_path.clone(),
        target: target.clone(),
        source,
    };
    let none = None::<&str>;
    mount(
        Some(&source_path),
        &target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(bind_err)?;
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationBidirectional) => MsFlags::MS_SHARED,
        Ok(cri::MountPropagation::PropagationHostToContainer) => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_PRIVATE,
    };
    let result = mount(none, &target, none, propagation | MsFlags::MS_REC, none).and_then(|()| {
        if m.readonly {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(none, &target, none, ro, none)
        } else {
            Ok(())
        }
    });
    if let Err(e) = result {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        return Err(bind_err(e));
    }
    if m.recursive_read_only
        && let Err(source) = make_recursive_readonly(&target)
    {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        return Err(VolumeError::MakeRecursiveReadOnly {
            index,
            target,
            source,
        });
    }
    Ok(())
}

/// Makes every mount below `target` read-only too (the top already is), keeping each one's
/// other flags as /proc/self/mountinfo lists them.
fn make_recursive_readonly(target: &Path) -> Result<(), nix::Error> {
    for (point, options) in submounts(target) {
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for o in options.split(',') {
            flags |= match o {
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                "strictatime" => MsFlags::MS_STRICTATIME,
                _ => MsFlags::empty(),
            };
        }
        mount(
            None::<&str>,
            Path::new(&point),
            None::<&str>,
            flags,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// The mount points strictly below `target`, with their per-mount options.
fn submounts(target: &Path) -> Vec<(String, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = format!("{}/", target.display());
    info.lines()
        .filter_map(|l| {
            let mut fields = l.split(' ').skip(4);
            let point = hull_agent_api::mountinfo::unescape(fields.next()?);
            let options = fields.next()?.to_owned();
            point.starts_with(&prefix).then_some((point, options))
        })
        .collect()
}

/// Whether a mount point lies strictly below `target` (from /proc/self/mountinfo, whose
/// paths escape space, tab, newline and backslash as octal).
pub fn has_submounts(target: &Path) -> bool {
    !submounts(target).is_empty()
}

/// Unmounts and removes every mount point of the container. Idempotent; errors are
/// logged (a leftover mount point is harmless and retried on the next call).
pub fn release(shared_dir: &Path, container_id: &str) {
    let dir = mounts_dir(shared_dir, container_id);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Stacked binds (a retried prepare) need one unmount each.
        while umount2(&path, MntFlags::MNT_DETACH).is_ok() {}
        let removed = if path.is_dir() {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(container = container_id, path = %path.display(), error = %e,
                "cannot remove a mount point");
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn cri_mount(host: &Path, dest: &str, readonly: bool) -> cri::Mount {
        cri::Mount {
            container_path: dest.into(),
            host_path: host.display().to_string(),
            readonly,
            ..Default::default()
        }
    }

    #[test]
    fn binds_files_dirs_symlinks_and_readonly() {
        assert!(
            is_root(),
            "this test binds mounts: run it as root (CI does)"
        );
        let host = tempfile::tempdir().expect("tempdir");
        let shared = tempfile::tempdir().expect("tempdir");
        let data = host.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(host.path().join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        std::os::unix::fs::symlink(&data, host.path().join("link")).expect("symlink");
        let missing = host.path().join("created/by/us");
        let mounts = [
            cri_mount(&data, "/data", false),
            cri_mount(&host.path().join("hosts"), "/etc/hosts", true),
            cri_mount(&host.path().join("link"), "/via-link", false),
            cri_mount(&missing, "/empty", false),
        ];
        let got = prepare(shared.path(), "/run/hull/shared", "c1", &mounts).expect("prepare");
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].source, "/run/hull/shared/c1/mounts/1");
        assert!(got[1].readonly && !got[0].readonly);
        let m = mounts_dir(shared.path(), "c1");
        // A write through the share lands on the host, and the other way round.
        std::fs::write(m.join("0/from-guest"), "x").expect("write through bind");
        assert!(data.join("from-guest").exists());
        std::fs::write(data.join("from-host"), "y").expect("write on host");
        assert!(
            m.join("2/from-host").exists(),
            "symlinked hostPath resolved to the dir"
        );
        assert_eq!(
            std::fs::read_to_string(m.join("1")).expect("read"),
            "127.0.0.1 localhost\n"
        );
        let ro = std::fs::write(m.join("1"), "evil");
        assert!(
            ro.is_err(),
            "read-only mount must refuse writes on the host side"
        );
        assert!(missing.is_dir());
        release(shared.path(), "c1");
        release(shared.path(), "c1");
        assert!(!m.exists());
        assert!(
            data.join("from-guest").exists(),
            "release never touches the sources"
        );
    }

    #[test]
    fn read_only_recursive_or_not_with_a_submount() {
        assert!(
            is_root(),
            "this test mounts a tmpfs: run it as root (CI does)"
        );
        let host = tempfile::tempdir().expect("tempdir");
        let shared = tempfile::tempdir().expect("tempdir");
        let sub = host.path().join("tmp fs");
        std::fs::create_dir(&sub).expect("mkdir");
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        let mut rro = cri_mount(host.path(), "/rro", true);
        rro.recursive_read_only = true;
        let mounts = [cri_mount(host.path(), "/ro", true), rro];
        let got = prepare(shared.path(), "/g", "c3", &mounts);
        let m = mounts_dir(shared.path(), "c3");
        let writes = |n: &str| {
            (
                std::fs::write(m.join(n).join("top"), "x").is_ok(),
                std::fs::write(m.join(n).join("tmp fs/inner"), "x").is_ok(),
            )
        };
        let (ro, rro) = (writes("0"), writes("1"));
        release(shared.path(), "c3");
        let _ = umount2(&sub, MntFlags::MNT_DETACH);
        let got = got.expect("prepare");
        assert!(got[0].host_submounts && got[1].recursive_readonly);
        assert_eq!(
            ro,
            (false, true),
            "non-recursive: only the top is read-only"
        );
        assert_eq!(rro, (false, false), "recursive: the submount too");
        let mut bad = cri_mount(host.path(), "/x", false);
        bad.recursive_read_only = true;
        let err = prepare(shared.path(), "/g", "c4", &[bad]).expect_err("rro without ro");
        assert!(matches!(err, VolumeError::RecursiveReadOnly { index: 0 }));
        assert!(!has_submounts(Path::new("/nonexistent-hull")));
    }

    #[test]
    fn a_bad_mount_undoes_the_others() {
        assert!(
            is_root(),
            "this test binds mounts: run it as root (CI does)"
        );
        let host = tempfile::tempdir().expect("tempdir");
        let shared = tempfile::tempdir().expect("tempdir");
        let mounts = [
            cri_mount(host.path(), "/ok", false),
            cri::Mount {
                container_path: "/bad".into(),
                host_path: "relative/path".into(),
                ..Default::default()
            },
        ];
        let err = prepare(shared.path(), "/g", "c2", &mounts).expect_err("relative");
        assert!(
            matches!(err, VolumeError::NotAbsolute { index: 1, .. }),
            "{err}"
        );
        assert!(!mounts_dir(shared.path(), "c2").exists());
    }
}
