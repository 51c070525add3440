//! Terminals from a container's own devpts instance.
//!
//! A container mounts a `newinstance` devpts on its /dev/pts. A pty the agent opens from
//! its own /dev/ptmx lives in the agent's instance: the process inside gets a working
//! terminal, but its slave has no name under the container's /dev/pts, so `tty` says "not
//! a tty" and ttyname(3) fails. An exec's terminal therefore comes from the container's
//! ptmx (`/proc/<init pid>/root/dev/pts/ptmx`), as runc's console socket gives it.
//!
//! The container controls that path: what is opened must be a pty multiplexer, and the
//! slave is opened through the master (TIOCGPTPEER), never by a path.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The ptmx of the devpts instance that the process `pid` sees at /dev/pts.
pub fn ptmx_of(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/dev/pts/ptmx"))
}

/// A pty pair from the multiplexer at `ptmx`, sized `size`.
pub fn open(ptmx: &Path, size: Option<&nix::pty::Winsize>) -> io::Result<(OwnedFd, OwnedFd)> {
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(ptmx)?
        .into();
    check_ptmx(&master)?;
    let fd = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer; fd is an open pty master.
    if unsafe { libc::ioctl(fd, libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(ws) = size {
        // SAFETY: TIOCSWINSZ reads one struct winsize through the pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor for the
    // master's slave (Linux 4.13+).
    let slave = unsafe { libc::ioctl(fd, libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// The device 5:2 (/dev/ptmx, devpts' ptmx): anything else the container put there is
/// refused.
fn check_ptmx(fd: &OwnedFd) -> io::Result<()> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if is_char && libc::major(st.st_rdev) == 5 && libc::minor(st.st_rdev) == 2 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a pty multiplexer (5:2)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_a_pair_whose_slave_is_a_terminal_of_that_instance() {
        // The host's own devpts stands in for a container's.
        let ws = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (master, slave) = open(Path::new("/dev/pts/ptmx"), Some(&ws)).expect("open pty");
        let name = nix::unistd::ttyname(&slave).expect("the slave has a name");
        assert!(name.starts_with("/dev/pts/"), "{name:?}");
        let mut got = std::mem::MaybeUninit::<libc::winsize>::uninit();
        // SAFETY: TIOCGWINSZ writes one struct winsize through the pointer.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, got.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: the ioctl succeeded, so it filled the struct.
        let got = unsafe { got.assume_init() };
        assert_eq!((got.ws_row, got.ws_col), (24, 80));
    }

    #[test]
    fn refuses_what_is_not_a_ptmx() {
        let err = open(Path::new("/dev/null"), None).expect_err("/dev/null is no ptmx");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ptmx");
        std::os::unix::fs::symlink("/dev/pts/ptmx", &link).expect("symlink");
        assert!(open(&link, None).is_err(), "a symlink is not followed");
    }
}
