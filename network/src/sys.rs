//! Raw system calls for hull-network: the TUN/TAP ioctls and the `setns` hook that runs in
//! a forked child before `exec`. Every `unsafe` block of the crate lives here.
//!
//! Safe wrappers from `nix` are used for the rest (`unshare`, `setns` on a thread, `mount`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Path of the TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// `struct ifreq` as used by `TUNSETIFF`: the name, the flags, and padding up to the
/// kernel's 40-byte size (the union's largest member is `struct ifmap`, 24 bytes).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<IfReqFlags> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: libc::c_short::try_from(flags)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

/// Opens `/dev/net/tun` and attaches the returned fd to the tap `name` (creating it if it
/// does not exist) in the network namespace of the calling thread.
/// `vnet_hdr` adds `IFF_VNET_HDR` (a virtio-net header before each frame).
pub fn open_tap(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    let req = ifreq(name, flags)?;
    // SAFETY: `file` is an open /dev/net/tun fd and `req` is a live, properly sized and
    // NUL-terminated `struct ifreq` (checked in `ifreq`); TUNSETIFF only reads/writes it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req as *const IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Marks the tap behind `fd` persistent (it outlives the fd) or not.
pub fn set_tap_persist(fd: &OwnedFd, persist: bool) -> io::Result<()> {
    let arg = libc::c_ulong::from(persist);
    // SAFETY: `fd` is a TUN fd attached with TUNSETIFF; TUNSETPERSIST takes its argument
    // by value and touches no memory of ours.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child join the network namespace `ns` between `fork` and `exec`.
/// The fd is moved into the hook, so it lives as long as `cmd`; it is `O_CLOEXEC`, so the
/// program never sees it.
pub fn setns_before_exec(cmd: &mut Command, ns: OwnedFd) {
    let hook = move || -> io::Result<()> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    };
    // SAFETY: the hook runs in the forked child before exec. It makes one system call
    // (setns) and allocates nothing, so it is async-signal-safe; the fd it uses is owned
    // by the hook and therefore open in the child.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_rejects_long_or_bad_names() {
        assert!(ifreq("tap0", libc::IFF_TAP).is_ok());
        assert!(ifreq("0123456789abcdef", libc::IFF_TAP).is_err());
        assert!(ifreq("a\0b", libc::IFF_TAP).is_err());
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
