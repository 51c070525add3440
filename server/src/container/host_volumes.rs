//! A host-isolation pod's CRI mounts. Its agent runs on the node, so each mount's source
//! is the host path itself (symlinks resolved, a missing source created as a dir, as
//! containerd does), bound by the agent into the container's own mount namespace, as runc
//! does: nothing is mounted in hulld's (the node's) mount namespace. So the node's unmount
//! and rmdir of a hostPath's submount behave as with containerd, read-only (recursive or
//! not) is the container's bind, and a bidirectional mount stays a peer of the node's.
//!
//! As containerd, a Bidirectional mount needs its source on a shared mount of the node,
//! and HostToContainer on a shared or slave one; otherwise the propagation could not
//! happen, and the container is refused with a message saying which mount is not.

use std::path::{Path, PathBuf};

use hull_cri_api as cri;

use super::spec::GuestMount;

#[derive(Debug, thiserror::Error)]
pub enum HostVolumeError {
    #[error("Mount {index}: host path {path:?} must be absolute")]
    NotAbsolute { index: usize, path: String },
    #[error("Mount {index}: recursive_read_only needs readonly and private propagation")]
    RecursiveReadOnly { index: usize },
    #[error("Mount {index}: cannot resolve host path {path}")]
    Resolve {
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount {index}: path {path} is mounted on {mount} but it is not a {need} mount")]
    Propagation {
        index: usize,
        path: PathBuf,
        mount: PathBuf,
        need: &'static str,
    },
}

/// The guest mounts of `mounts` for a host pod, in order.
pub fn prepare(mounts: &[cri::Mount]) -> Result<Vec<GuestMount>, HostVolumeError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .iter()
        .enumerate()
        .map(|(index, m)| one(index, m, &mountinfo))
        .collect()
}

fn one(index: usize, m: &cri::Mount, mountinfo: &str) -> Result<GuestMount, HostVolumeError> {
    if !m.host_path.starts_with('/') {
        return Err(HostVolumeError::NotAbsolute {
            index,
            path: m.host_path.clone(),
        });
    }
    let propagation = cri::MountPropagation::try_from(m.propagation)
        .unwrap_or(cri::MountPropagation::PropagationPrivate);
    if m.recursive_read_only
        && !(m.readonly && propagation == cri::MountPropagation::PropagationPrivate)
    {
        return Err(HostVolumeError::RecursiveReadOnly { index });
    }
    let host = Path::new(&m.host_path);
    let resolve = |source| HostVolumeError::Resolve {
        index,
        path: host.to_owned(),
        source,
    };
    if !host.exists() {
        std::fs::create_dir_all(host).map_err(resolve)?;
    }
    let source = host.canonicalize().map_err(resolve)?;
    check_propagation(index, &source, propagation, mountinfo)?;
    Ok(GuestMount {
        container_path: m.container_path.clone(),
        source: source.display().to_string(),
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        host_submounts: false,
        propagation,
    })
}

/// containerd's `ensureShared` / `ensureSharedOrSlave` on the mount holding `source`.
fn check_propagation(
    index: usize,
    source: &Path,
    propagation: cri::MountPropagation,
    mountinfo: &str,
) -> Result<(), HostVolumeError> {
    let need = match propagation {
        cri::MountPropagation::PropagationBidirectional => "shared",
        cri::MountPropagation::PropagationHostToContainer => "shared or slave",
        cri::MountPropagation::PropagationPrivate => return Ok(()),
    };
    let Some((point, optional)) = holder(source, mountinfo) else {
        return Ok(());
    };
    let shared = optional.split(' ').any(|f| f.starts_with("shared:"));
    let slave = optional.split(' ').any(|f| f.starts_with("master:"));
    let ok = shared || (slave && need != "shared");
    if ok {
        Ok(())
    } else {
        Err(HostVolumeError::Propagation {
            index,
            path: source.to_owned(),
            mount: point,
            need,
        })
    }
}

/// The mount point holding `path` (the last, i.e. topmost, of the longest prefix) and its
/// optional fields (`shared:N master:M ...`).
fn holder(path: &Path, mountinfo: &str) -> Option<(PathBuf, String)> {
    let mut best: Option<(PathBuf, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(hull_agent_api::mountinfo::unescape(point));
        if !path.starts_with(&point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| point.components().count() >= b.components().count());
        if longer {
            best = Some((point, fields[6..].join(" ")));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv rw,relatime - tmpfs t rw
31 30 0:41 / /srv/shared rw shared:7 - tmpfs t rw
32 30 0:42 / /srv/slave rw master:7 - tmpfs t rw
";

    fn mount(path: &Path, propagation: cri::MountPropagation) -> cri::Mount {
        cri::Mount {
            container_path: "/m".into(),
            host_path: path.display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn sources_are_host_paths_resolved_and_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::os::unix::fs::symlink(&data, dir.path().join("link")).expect("symlink");
        let missing = dir.path().join("made/by/hull");
        let mut ro = mount(
            &dir.path().join("link"),
            cri::MountPropagation::PropagationPrivate,
        );
        ro.readonly = true;
        ro.recursive_read_only = true;
        let got = prepare(&[
            ro,
            mount(&missing, cri::MountPropagation::PropagationPrivate),
        ])
        .expect("prepare");
        assert_eq!(
            got[0].source,
            data.canonicalize().expect("canon").display().to_string()
        );
        assert!(got[0].readonly && got[0].recursive_readonly && !got[0].host_submounts);
        assert!(missing.is_dir());
        let mut bad = mount(&data, cri::MountPropagation::PropagationPrivate);
        bad.recursive_read_only = true;
        assert!(matches!(
            prepare(&[bad]),
            Err(HostVolumeError::RecursiveReadOnly { index: 0 })
        ));
        assert!(matches!(
            prepare(&[cri::Mount {
                host_path: "rel".into(),
                ..Default::default()
            }]),
            Err(HostVolumeError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn propagation_needs_a_shared_or_slave_source_mount() {
        use cri::MountPropagation::*;
        let check = |p: &str, prop| check_propagation(0, Path::new(p), prop, INFO);
        check("/srv/shared/x", PropagationBidirectional).expect("shared");
        check("/srv/slave", PropagationHostToContainer).expect("slave is enough");
        check("/srv/x", PropagationPrivate).expect("private needs nothing");
        let err = check("/srv/slave/y", PropagationBidirectional).expect_err("slave only");
        assert!(err.to_string().contains("/srv/slave"), "{err}");
        assert!(
            check("/srv/other", PropagationHostToContainer).is_err(),
            "/srv is private"
        );
        check("/home", PropagationBidirectional).expect("on /, which is shared");
    }
}
