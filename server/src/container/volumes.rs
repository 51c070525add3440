//! A container's CRI mounts on the host side: each source (hostPath file or dir, kubelet's
//! emptyDir/configmap/secret/projected dirs, /etc/hosts, /etc/hostname, /etc/resolv.conf)
//! is bind-mounted into `<staging>/<container>/mounts/<n>`, which the guest sees over
//! virtio-fs at `GUEST_SHARED_DIR/<container>/mounts/<n>`. Symlinked sources are resolved
//! on the host (the guest cannot follow a host symlink), and a missing source becomes a
//! dir (containerd does the same).
//!
//! Each bind is made in the pod's private scratch dir first, given its final flags there
//! (read-only, recursively read-only, propagation), and only then moved under the staging
//! dir (see `crate::sandbox::share`): a moved mount propagates into virtiofsd's namespace
//! as it is, while a flag changed by a later remount would not propagate, and a read-only
//! volume would stay writable for the guest. The staging dir is read-only for the guest,
//! so the `mounts/` dirs hold nothing but hulld's own entries; they are unmounted only
//! where /proc/self/mountinfo lists a mount ([`crate::mounts`]).

use std::path::{Path, PathBuf};

use hull_cri_api as cri;
use nix::mount::{MsFlags, mount};

use super::spec::GuestMount;
use crate::mounts;
use crate::sandbox::share;

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
    #[error("Mount {index}: cannot list the submounts of {target}")]
    Submounts {
        index: usize,
        target: PathBuf,
        #[source]
        source: mounts::MountsError,
    },
}

/// `<staging>/<container_id>/mounts` for the pod whose run dir is `run_dir`.
pub fn mounts_dir(run_dir: &Path, container_id: &str) -> PathBuf {
    share::staging_dir(run_dir)
        .join(container_id)
        .join("mounts")
}

/// Binds every CRI mount into the share of the pod whose run dir is `run_dir` and returns
/// them as guest mounts, in order. On error, the mounts already made are undone.
pub fn prepare(
    run_dir: &Path,
    guest_shared_dir: &str,
    container_id: &str,
    mounts: &[cri::Mount],
) -> Result<Vec<GuestMount>, VolumeError> {
    let dir = mounts_dir(run_dir, container_id);
    let mut out = Vec::with_capacity(mounts.len());
    for (index, m) in mounts.iter().enumerate() {
        let target = dir.join(index.to_string());
        let bound = bind_one(run_dir, container_id, index, m).and_then(|()| {
            mounts::below(&target).map_err(|source| VolumeError::Submounts {
                index,
                target: target.clone(),
                source,
            })
        });
        match bound {
            Ok(submounts) => out.push(GuestMount {
                container_path: m.container_path.clone(),
                source: format!("{guest_shared_dir}/{container_id}/mounts/{index}"),
                readonly: m.readonly,
                recursive_readonly: m.recursive_read_only,
                host_submounts: !submounts.is_empty(),
                propagation: cri::MountPropagation::try_from(m.propagation)
                    .unwrap_or(cri::MountPropagation::PropagationPrivate),
            }),
            Err(e) => {
                release(run_dir, container_id);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn bind_one(
    run_dir: &Path,
    container_id: &str,
    index: usize,
    m: &cri::Mount,
) -> Result<(), VolumeError> {
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
    let source_path = resolve_source(index, Path::new(&m.host_path))?;
    let is_dir = source_path.is_dir();
    let target = mounts_dir(run_dir, container_id).join(index.to_string());
    let scratch = share::scratch_dir(run_dir).join(format!("{container_id}-{index}"));
    for point in [&target, &scratch] {
        make_point(point, is_dir).map_err(|source| VolumeError::Target {
            index,
            path: point.clone(),
            source,
        })?;
    }
    let bound = bind_with_flags(index, &source_path, &scratch, m).and_then(|()| {
        mount(
            Some(&scratch),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| VolumeError::Bind {
            index,
            source_path: source_path.clone(),
            target: target.clone(),
            source,
        })
    });
    if bound.is_err()
        && let Err(e) = mounts::unmount_under(&scratch)
    {
        tracing::warn!(container = container_id, error = %e, "cannot undo a volume bind");
    }
    remove_point(&scratch);
    bound
}

/// The host path a CRI mount names, created as a dir when missing, symlinks resolved.
fn resolve_source(index: usize, host: &Path) -> Result<PathBuf, VolumeError> {
    let err = |source| VolumeError::Resolve {
        index,
        path: host.to_owned(),
        source,
    };
    if !host.exists() {
        std::fs::create_dir_all(host).map_err(err)?;
    }
    host.canonicalize().map_err(err)
}

/// An empty dir or file to mount on, in hulld's private dirs (parents created).
fn make_point(point: &Path, is_dir: bool) -> std::io::Result<()> {
    if let Some(parent) = point.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if is_dir {
        std::fs::create_dir_all(point)
    } else {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(point)
            .map(drop)
    }
}

/// Removes a mount point hulld made (never following a symlink); missing is fine.
fn remove_point(point: &Path) {
    let removed = match point.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir(point),
        Ok(_) => std::fs::remove_file(point),
        Err(_) => Ok(()),
    };
    if let Err(e) = removed {
        tracing::warn!(path = %point.display(), error = %e, "cannot remove a mount point");
    }
}

/// Binds `source` at `point` (in the private scratch dir) with the mount's final flags.
fn bind_with_flags(
    index: usize,
    source: &Path,
    point: &Path,
    m: &cri::Mount,
) -> Result<(), VolumeError> {
    let bind_err = |e| VolumeError::Bind {
        index,
        source_path: source.to_owned(),
        target: point.to_owned(),
        source: e,
    };
    let none = None::<&str>;
    let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), point, none, rbind, none).map_err(bind_err)?;
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationBidirectional) => MsFlags::MS_SHARED,
        Ok(cri::MountPropagation::PropagationHostToContainer) => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_PRIVATE,
    };
    mount(none, point, none, propagation | MsFlags::MS_REC, none).map_err(bind_err)?;
    if m.readonly {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, point, none, ro, none).map_err(bind_err)?;
    }
    if m.recursive_read_only {
        make_recursive_readonly(index, point)?;
    }
    Ok(())
}

/// Makes every mount below `target` read-only too (the top already is), keeping each one's
/// other flags as /proc/self/mountinfo lists them.
fn make_recursive_readonly(index: usize, target: &Path) -> Result<(), VolumeError> {
    let submounts = mounts::below(target).map_err(|source| VolumeError::Submounts {
        index,
        target: target.to_owned(),
        source,
    })?;
    for sub in submounts {
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for o in sub.options.split(',') {
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
        mount(None::<&str>, &sub.point, None::<&str>, flags, None::<&str>).map_err(|source| {
            VolumeError::MakeRecursiveReadOnly {
                index,
                target: sub.point.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Whether a mount point lies strictly below `target` (from /proc/self/mountinfo).
pub fn has_submounts(target: &Path) -> bool {
    mounts::below(target).is_ok_and(|m| !m.is_empty())
}

/// Unmounts and removes every mount point of the container, and any scratch bind an
/// interrupted prepare left. Idempotent; errors are logged (a leftover mount is retried on
/// the next call, and no caller deletes a tree with a mount in it).
pub fn release(run_dir: &Path, container_id: &str) {
    let dir = mounts_dir(run_dir, container_id);
    let scratch = share::scratch_dir(run_dir);
    let prefix = format!("{container_id}-");
    let leftovers = std::fs::read_dir(&scratch)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path());
    let points: Vec<PathBuf> = leftovers.chain(std::iter::once(dir.clone())).collect();
    for p in &points {
        if let Err(e) = mounts::unmount_under(p) {
            tracing::warn!(container = container_id, error = %crate::sandbox::error_chain(&e),
                "cannot unmount a volume");
            return;
        }
    }
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        remove_point(&entry.path());
    }
    let _ = std::fs::remove_dir(&dir);
    for p in &points[..points.len() - 1] {
        remove_point(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{MntFlags, umount2};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A pod run dir with its share mounts (released and removed on drop).
    struct Pod {
        _tmp: tempfile::TempDir,
        run: PathBuf,
    }

    impl Pod {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let run = tmp.path().join("pod");
            share::prepare(&run).expect("share");
            Self { _tmp: tmp, run }
        }

        /// `rel` in the guest's (read-only) view of the share.
        fn view(&self, rel: &str) -> PathBuf {
            share::view_dir(&self.run).join(rel)
        }
    }

    impl Drop for Pod {
        fn drop(&mut self) {
            let _ = share::release(&self.run);
        }
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
        let pod = Pod::new();
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
        let got = prepare(&pod.run, "/run/hull/shared", "c1", &mounts).expect("prepare");
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].source, "/run/hull/shared/c1/mounts/1");
        assert!(got[1].readonly && !got[0].readonly);
        let m = mounts_dir(&pod.run, "c1");
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
        // The guest's view got the binds as they were moved in: read-only stays so.
        std::fs::write(pod.view("c1/mounts/0/from-view"), "x").expect("rw volume in the view");
        let ro = std::fs::write(pod.view("c1/mounts/1"), "evil");
        assert!(ro.is_err(), "read-only volume writable in the guest's view");
        assert!(missing.is_dir());
        assert!(
            std::fs::read_dir(share::scratch_dir(&pod.run))
                .unwrap()
                .next()
                .is_none(),
            "scratch binds moved out"
        );
        release(&pod.run, "c1");
        release(&pod.run, "c1");
        assert!(!m.exists());
        assert!(!pod.view("c1/mounts/0").exists(), "gone from the view too");
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
        let pod = Pod::new();
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
        let got = prepare(&pod.run, "/g", "c3", &mounts);
        let m = share::view_dir(&pod.run).join("c3/mounts");
        let writes = |n: &str| {
            (
                std::fs::write(m.join(n).join("top"), "x").is_ok(),
                std::fs::write(m.join(n).join("tmp fs/inner"), "x").is_ok(),
            )
        };
        let (ro, rro) = (writes("0"), writes("1"));
        release(&pod.run, "c3");
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
        let err = prepare(&pod.run, "/g", "c4", &[bad]).expect_err("rro without ro");
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
        let pod = Pod::new();
        let mounts = [
            cri_mount(host.path(), "/ok", false),
            cri::Mount {
                container_path: "/bad".into(),
                host_path: "relative/path".into(),
                ..Default::default()
            },
        ];
        let err = prepare(&pod.run, "/g", "c2", &mounts).expect_err("relative");
        assert!(
            matches!(err, VolumeError::NotAbsolute { index: 1, .. }),
            "{err}"
        );
        assert!(!mounts_dir(&pod.run, "c2").exists());
        assert!(
            mounts::below(&share::staging_dir(&pod.run))
                .unwrap()
                .is_empty()
        );
    }
}
