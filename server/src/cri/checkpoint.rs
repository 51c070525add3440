//! CheckpointContainer (kubelet's forensic container checkpointing, `POST
//! /checkpoint/{ns}/{pod}/{container}`): what hull does with it, per backend.
//!
//! A hull checkpoint would be a snapshot of the pod's VM (hull already snapshots VMs for
//! its templates), not CRIU's dump of the container's processes. Neither backend can take
//! one of a running pod today, so the call validates the request, proves the location
//! writable (and leaves nothing there), then refuses with a code that names why:
//!
//! - **QEMU** (`FAILED_PRECONDITION`): QEMU 7.2 refuses to migrate or save a VM with a
//!   vhost-user-fs or vhost-user-vsock device (both are marked non-migratable, and QEMU
//!   asks vhost-user backends for `VHOST_USER_PROTOCOL_F_LOG_SHMFD`, which virtiofsd and
//!   vhost-device-vsock lack). Every hull pod has both: the share and the agent's vsock.
//!   Checked on this host: `migrate` answers "State blocked by non-migratable device
//!   'virtio-mmio@.../vhost-user-vsock'".
//! - **hull-vmm** (`UNIMPLEMENTED`): its snapshot (`{"op":"snapshot"}`) stops the VM and is
//!   made for templates, whose guest has nothing open on the share. A pod's containers
//!   run from the virtio-fs share: the guest's FUSE state (node ids, open handles) lives
//!   on in guest memory while virtiofsd's side of it is not in the snapshot, so a VM
//!   restored with a new virtiofsd would find its rootfs gone. Restoring needs virtiofsd's
//!   state migrated with the VM (vhost-user device state, `--migration-mode`), or the
//!   guest's FUSE mounts re-established; neither exists yet.
//!
//! What a VM snapshot would capture that CRIU does not: the guest kernel with every
//! process of the pod, their sockets (TCP connections included), pipes, ptys, timers,
//! inotify watches, namespaces and cgroups, in-kernel state CRIU cannot dump (io_uring,
//! some netlink and BPF objects, devices); it needs no kernel support in the container.
//! What CRIU captures that it does not: one container alone, without its siblings or the
//! guest kernel, in an archive small enough to ship (a VM snapshot holds all guest RAM),
//! restorable into a different pod and another kernel. What a restore must redo (the
//! template restore already does it in the agent's SetupSandbox): the pod's network
//! identity (its MAC, IPs and routes in the new pod's network), the wall clock (stepped
//! to the host's), and the CRNG (reseeded with host entropy, or two restores of one
//! snapshot share random streams), plus anything derived from them (TCP timestamps,
//! UUIDs made before the snapshot).

use std::path::{Path, PathBuf};

use hull_cri_api as cri;

use super::CriService;
use super::status::CriError;
use crate::state::ContainerState;

/// Why QEMU pods cannot be checkpointed (see the module doc).
const QEMU_REFUSAL: &str = "checkpoints are VM snapshots, and QEMU cannot save this pod's VM: \
its vhost-user-fs (the pod share) and vhost-user-vsock (the agent's channel) devices are \
non-migratable in QEMU 7.2 and their backends lack VHOST_USER_PROTOCOL_F_LOG_SHMFD";

/// Why hull-vmm pods cannot be checkpointed yet (see the module doc).
const HULL_REFUSAL: &str = "hull-vmm snapshots a VM only as a template (it stops the VM), and \
a restored VM cannot resume the pod's virtio-fs share: virtiofsd's state is not in the \
snapshot";

impl CriService {
    pub(crate) async fn do_checkpoint_container(
        &self,
        req: cri::CheckpointContainerRequest,
    ) -> Result<cri::CheckpointContainerResponse, CriError> {
        let location = checked_location(&req.location)?;
        let span = tracing::info_span!("checkpoint_container", container_id = %req.container_id);
        let _enter = span.enter();
        if req.container_id.is_empty() {
            return Err(CriError::InvalidArgument(
                "container_id must not be empty".into(),
            ));
        }
        let r = self
            .daemon
            .containers
            .get(&req.container_id)
            .map_err(super::container::manager_error)?;
        if r.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}: only a running container can be checkpointed",
                r.id, r.state
            )));
        }
        let sb = self.daemon.sandboxes.get(&r.sandbox_id).ok_or_else(|| {
            CriError::NotFound(format!(
                "pod sandbox {} of container {} is gone",
                r.sandbox_id, r.id
            ))
        })?;
        probe_writable(&location)?;
        let backend = sb.record().resources.backend;
        tracing::info!(pod_id = %r.sandbox_id, ?backend, location = %location.display(), "CheckpointContainer refused");
        match backend {
            Some(hull_vm::hypervisor::Backend::Hull) => Err(CriError::Unimplemented {
                rpc: "CheckpointContainer",
                why: HULL_REFUSAL,
            }),
            _ => Err(CriError::FailedPrecondition(format!(
                "cannot checkpoint container {}: {QEMU_REFUSAL}",
                r.id
            ))),
        }
    }
}

/// The archive's path: absolute, with a file name, not an existing directory.
fn checked_location(location: &str) -> Result<PathBuf, CriError> {
    let path = Path::new(location);
    if location.is_empty() || !path.is_absolute() || path.file_name().is_none() {
        return Err(CriError::InvalidArgument(format!(
            "checkpoint location {} must be an absolute file path",
            super::status::quote(location)
        )));
    }
    if path.is_dir() {
        return Err(CriError::InvalidArgument(format!(
            "checkpoint location {} is a directory",
            super::status::quote(location)
        )));
    }
    Ok(path.to_owned())
}

/// Proves that an archive can be written next to `location` (creates and removes a
/// probe file), so that a bad location fails first and clearly, whatever comes next.
fn probe_writable(location: &Path) -> Result<(), CriError> {
    let mut probe = location.as_os_str().to_owned();
    probe.push(format!(".hull-probe-{}", std::process::id()));
    let probe = PathBuf::from(probe);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match created {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(CriError::FailedPrecondition(format!(
            "cannot write the checkpoint archive at {}: {e}",
            super::status::quote(&location.to_string_lossy())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_must_be_an_absolute_file_path() {
        for bad in ["", "relative.tar", "/"] {
            assert!(
                matches!(checked_location(bad), Err(CriError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        assert!(matches!(
            checked_location(&d),
            Err(CriError::InvalidArgument(_))
        ));
        assert!(checked_location(&format!("{d}/c.tar")).is_ok());
    }

    #[test]
    fn probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        probe_writable(&dir.path().join("c.tar")).expect("writable");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
        let missing = dir.path().join("no/such/dir/c.tar");
        assert!(matches!(
            probe_writable(&missing),
            Err(CriError::FailedPrecondition(m)) if m.contains("No such file")
        ));
        assert!(matches!(
            probe_writable(Path::new("/proc/hull-c.tar")),
            Err(CriError::FailedPrecondition(_))
        ));
    }
}
