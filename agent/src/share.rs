//! The pod's virtio-fs share (tag [`SHARE_TAG`]) at [`SHARE_MOUNT`].
//!
//! It is mounted by `SetupSandbox`, not at boot: a VM template is a snapshot of a guest that
//! booted to agent-ready, and a FUSE session opened then would be carried into every VM
//! restored from it, talking to a virtiofsd that never saw its `FUSE_INIT`. Mounting is
//! idempotent (an existing mount at [`SHARE_MOUNT`] in /proc/self/mountinfo is kept), so
//! `CreateContainer` can make sure of it too. A VM without a virtio-fs device is normal,
//! as it was when the share was mounted at boot: logged, not an error.

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// The virtio-fs tag of the pod's shared dir (set by the VMM backends).
pub const SHARE_TAG: &str = "hullshare";

/// Where the share is mounted in the guest.
pub const SHARE_MOUNT: &str = hull_agent_api::GUEST_SHARED_DIR;

/// Errors from mounting the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("Failed to read /proc/self/mountinfo")]
    ReadMountinfo(#[source] std::io::Error),
    #[error("Failed to create {SHARE_MOUNT}")]
    CreateMountPoint(#[source] std::io::Error),
    #[error("Failed to mount virtio-fs {SHARE_TAG} on {SHARE_MOUNT}")]
    Mount(#[source] std::io::Error),
}

/// What [`ensure_mounted`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareState {
    /// Something was already mounted at [`SHARE_MOUNT`].
    AlreadyMounted,
    /// Mounted now.
    Mounted,
    /// The VM has no virtio-fs device with the tag (or the kernel no virtio-fs).
    Absent,
}

/// Whether `mountinfo` (the text of /proc/self/mountinfo) has a mount at `path`.
pub fn is_mounted(mountinfo: &str, path: &str) -> bool {
    hull_agent_api::mountinfo::mount_points(mountinfo).any(|point| point == path)
}

/// Serializes [`ensure_mounted`], so concurrent calls cannot both mount (and stack) it.
static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Mounts the share unless something is mounted at [`SHARE_MOUNT`] already.
pub fn ensure_mounted() -> Result<ShareState, ShareError> {
    let _guard = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(ShareError::ReadMountinfo)?;
    if is_mounted(&mountinfo, SHARE_MOUNT) {
        tracing::debug!(path = SHARE_MOUNT, "virtio-fs share already mounted");
        return Ok(ShareState::AlreadyMounted);
    }
    std::fs::create_dir_all(SHARE_MOUNT).map_err(ShareError::CreateMountPoint)?;
    match mount(
        Some(SHARE_TAG),
        SHARE_MOUNT,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        Ok(()) => {
            tracing::info!(
                tag = SHARE_TAG,
                path = SHARE_MOUNT,
                "virtio-fs share mounted"
            );
            Ok(ShareState::Mounted)
        }
        // No device with the tag (EINVAL), or no virtio-fs in the kernel (ENODEV, ENOENT).
        Err(e @ (Errno::EINVAL | Errno::ENODEV | Errno::ENOENT)) => {
            tracing::info!(tag = SHARE_TAG, error = %e, "no virtio-fs share in this VM");
            Ok(ShareState::Absent)
        }
        Err(e) => Err(ShareError::Mount(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - tmpfs tmpfs rw,mode=755
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 22 0:29 / /run/hull/shared rw,nosuid,nodev,relatime - virtiofs hullshare rw
32 22 0:30 / /mnt/with\\040space rw,relatime - tmpfs tmpfs rw
";

    #[test]
    fn finds_mount_points_in_mountinfo() {
        assert!(is_mounted(MOUNTINFO, SHARE_MOUNT));
        assert!(is_mounted(MOUNTINFO, "/proc"));
        assert!(is_mounted(MOUNTINFO, "/mnt/with space"));
        assert!(!is_mounted(MOUNTINFO, "/run/hull"));
        assert!(!is_mounted(MOUNTINFO, "/run/hull/shared/x"));
        assert!(!is_mounted("", SHARE_MOUNT));
        let without = MOUNTINFO.replace("/run/hull/shared", "/run/other");
        assert!(!is_mounted(&without, SHARE_MOUNT));
    }

    #[test]
    fn an_escaped_mount_point_is_found() {
        let line = "36 25 0:31 / /run/a\\040b rw - tmpfs tmpfs rw\n";
        assert!(is_mounted(line, "/run/a b"));
    }

    #[test]
    fn reads_this_process_mountinfo() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(is_mounted(&mountinfo, "/"));
        assert!(is_mounted(&mountinfo, "/proc"));
    }
}
