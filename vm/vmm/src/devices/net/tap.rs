//! Opening the pod's tap device by name in the current network namespace.
//!
//! hull-network creates `tap0` (`IFF_TAP | IFF_NO_PI`, persistent) and hull-vmm, started in
//! the same netns, attaches to it with `TUNSETIFF`. No `IFF_VNET_HDR` and no offloads: the
//! tap carries plain Ethernet frames, the host kernel finishes checksums before handing
//! frames to the tap, and the device adds/strips the virtio-net header itself.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, the flags, padding to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct ifreq` as `SIOCGIFMTU` fills it: the name, the MTU, padding to 40 bytes.
#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

/// Errors from opening the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Tap name {0:?} is empty, too long or contains NUL")]
    Name(String),
    #[error("No interface {0} in this network namespace")]
    Missing(String, #[source] nix::Error),
    #[error("Failed to read the MTU of {name}")]
    Mtu {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("Failed to attach to tap {name} (TUNSETIFF)")]
    Attach {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Attach to the existing tap `name`; the fd is non-blocking. A missing interface is an
/// error (`TUNSETIFF` would otherwise create a fresh tap nothing is connected to).
pub fn open_tap(name: &str) -> Result<File, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::Name(name.to_string()));
    }
    nix::net::if_::if_nametoindex(name).map_err(|e| TapError::Missing(name.to_string(), e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `file` is an open /dev/net/tun fd; TUNSETIFF reads (and may write back) one
    // `struct ifreq`, and `req` is a live, NUL-terminated, 40-byte `repr(C)` value of that layout.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(TapError::Attach {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// The MTU of interface `name` in the current network namespace (`SIOCGIFMTU`).
pub fn interface_mtu(name: &str) -> Result<u32, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::Name(name.to_string()));
    }
    let fail = |source| TapError::Mtu {
        name: name.to_string(),
        source,
    };
    let sock = std::os::unix::net::UnixDatagram::unbound().map_err(fail)?;
    let mut req = IfReqMtu {
        name: [0; libc::IFNAMSIZ],
        mtu: 0,
        _pad: [0; 20],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `sock` is an open socket; SIOCGIFMTU reads the NUL-terminated name from and
    // writes the MTU into one `struct ifreq`, and `req` is a live 40-byte `repr(C)` value of
    // that layout.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFMTU,
            &mut req as *mut IfReqMtu,
        )
    };
    if rc < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    u32::try_from(req.mtu).map_err(|_| fail(std::io::Error::from(std::io::ErrorKind::InvalidData)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<IfReqMtu>(), 40);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "0123456789abcdef", "a\0b"] {
            assert!(matches!(open_tap(name), Err(TapError::Name(_))), "{name:?}");
        }
    }

    #[test]
    fn loopback_mtu() {
        assert_eq!(interface_mtu("lo").unwrap(), 65536);
        assert!(matches!(
            interface_mtu("hullnoif0"),
            Err(TapError::Mtu { .. })
        ));
    }

    #[test]
    fn a_missing_tap_is_not_created() {
        assert!(matches!(open_tap("hullnotap0"), Err(TapError::Missing(..))));
    }
}
