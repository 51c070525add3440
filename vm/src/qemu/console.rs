//! The guest console of a QEMU VM, capped.
//!
//! QEMU's `-serial file:` writes whatever the guest prints to a file under `/run`, without
//! a limit: a guest printing without end fills the host's tmpfs. So the serial port is a
//! unix socket chardev that QEMU listens on (`server=on,wait=on`: the guest starts only
//! once hulld is connected, so no boot output is lost), and a small pump thread in hulld
//! copies it to `console.log` up to [`MAX_CONSOLE_BYTES`] (hull-vmm's cap), then notes the
//! cut and disconnects. A disconnected socket chardev drops the guest's output rather than
//! blocking it, as it does while hulld is down; a restarted hulld reconnects
//! ([`ConsolePump::attach`]) and appends while the file is under the cap.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::hypervisor::HypervisorError;

/// Bytes of console output kept per VM (as hull-vmm's serial device keeps).
pub const MAX_CONSOLE_BYTES: u64 = 64 << 20;

/// The line written when the cap is reached.
pub const FULL_NOTE: &str = "\n[hull: console log full; further guest output dropped]\n";

/// A thread copying the console socket into the console log.
pub struct ConsolePump {
    /// Shut down on drop, which ends the thread.
    stream: UnixStream,
}

impl ConsolePump {
    /// Connects to QEMU's console socket and starts copying into `log` (appending).
    pub fn start(socket: &Path, log: &Path, cap: u64) -> Result<Self, HypervisorError> {
        let io = |what: &str, path: &Path| {
            let what = format!("{what} {}", path.display());
            move |source| HypervisorError::Io { what, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io("console log", log))?;
        let used = file.metadata().map_err(io("console log", log))?.len();
        let stream = connect(socket).map_err(io("console socket", socket))?;
        let reader = stream.try_clone().map_err(io("console socket", socket))?;
        let left = cap.saturating_sub(used);
        if left == 0 {
            // Already full (a restarted hulld): stay disconnected, QEMU drops the output.
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(Self { stream });
        }
        let log = log.to_owned();
        std::thread::Builder::new()
            .name("console".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || pump(reader, &mut file, left, &log))
            .map_err(io("console thread for", socket))?;
        Ok(Self { stream })
    }

    /// [`Self::start`] for a running VM found again: a missing socket (a VM started by an
    /// older hulld, with a file console) is no error.
    pub fn attach(socket: &Path, log: &Path, cap: u64) -> Option<Self> {
        if !socket.exists() {
            return None;
        }
        match Self::start(socket, log, cap) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-attach to the guest console");
                None
            }
        }
    }
}

/// How long QEMU may take from binding the console socket to listening on it.
const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to `socket`, retrying while it exists but refuses (bound, not listening yet).
fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + LISTEN_WAIT;
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

impl Drop for ConsolePump {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Copies `from` into `to` until EOF or `left` bytes, then notes the cut and disconnects
/// QEMU's chardev.
fn pump(mut from: UnixStream, to: &mut File, mut left: u64, log: &Path) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let keep = usize::try_from(left).unwrap_or(usize::MAX).min(n);
        if let Err(e) = to.write_all(&buf[..keep]) {
            tracing::warn!(log = %log.display(), error = %e, "cannot write the console log");
            return;
        }
        left -= keep as u64;
        if left == 0 {
            let _ = to.write_all(FULL_NOTE.as_bytes());
            tracing::warn!(log = %log.display(), "guest console log is full; dropping further output");
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn copies_up_to_the_cap_then_disconnects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"before restart\n").expect("seed");
        let listener = UnixListener::bind(&sock).expect("bind");
        let pump = ConsolePump::start(&sock, &log, 1 << 20).expect("start");
        let (mut guest, _) = listener.accept().expect("accept");
        // A flood: 8 MiB into a 1 MiB cap; the pump disconnects, so writes start failing.
        let block = vec![b'x'; 64 * 1024];
        let mut written = 0u64;
        while written < 8 << 20 && guest.write_all(&block).is_ok() {
            written += block.len() as u64;
        }
        assert!(written < 8 << 20, "the pump disconnected at the cap");
        drop(pump);
        let len = std::fs::metadata(&log).expect("log").len();
        assert_eq!(
            len,
            (1 << 20) + FULL_NOTE.len() as u64,
            "the cap counts what was there"
        );
        // Full: a re-attach stays disconnected.
        let again = ConsolePump::attach(&sock, &log, 1 << 20).expect("attach");
        let (mut guest, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        assert_eq!(guest.read(&mut byte).expect("read"), 0, "shut down at once");
        drop(again);
        assert!(ConsolePump::attach(&dir.path().join("none"), &log, 1).is_none());
    }
}
