//! Per-VM guest state that a VM restored from a template snapshot would otherwise share
//! with every other VM restored from it: the kernel's random pool (refreshed with host
//! entropy, then the CRNG reseeded) and the wall clock (stepped to the host's).
//! `SetupSandbox` applies both; an older hulld sends neither and they are skipped.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])` from <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` = `_IO('R', 0x07)` from <linux/random.h>.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The guest clock is stepped only when it is off by more than this.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(100);

/// Errors from refreshing the guest's state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("Failed to open /dev/urandom")]
    OpenRandom(#[source] std::io::Error),
    #[error("Entropy of {0} bytes does not fit a rand_pool_info")]
    EntropyTooLarge(usize),
    #[error("Failed to add entropy (RNDADDENTROPY)")]
    AddEntropy(#[source] std::io::Error),
    #[error("Failed to reseed the CRNG (RNDRESEEDCRNG)")]
    ReseedCrng(#[source] std::io::Error),
    #[error("Failed to read CLOCK_REALTIME")]
    ReadClock(#[source] std::io::Error),
    #[error("Failed to set CLOCK_REALTIME")]
    SetClock(#[source] std::io::Error),
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` with `data`
/// as `buf`, crediting 8 bits per byte, as u32 words (the struct's alignment).
fn rand_pool_info(data: &[u8]) -> Result<Vec<u32>, VmStateError> {
    let too_large = || VmStateError::EntropyTooLarge(data.len());
    let bits =
        i32::try_from(data.len().checked_mul(8).ok_or_else(too_large)?).map_err(|_| too_large())?;
    let size = i32::try_from(data.len()).map_err(|_| too_large())?;
    let mut words = vec![0u32; 2 + data.len().div_ceil(4)];
    words[0] = u32::from_ne_bytes(bits.to_ne_bytes());
    words[1] = u32::from_ne_bytes(size.to_ne_bytes());
    for (word, chunk) in words[2..].iter_mut().zip(data.chunks(4)) {
        let mut bytes = [0u8; 4];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(bytes);
    }
    Ok(words)
}

/// Mixes `data` into the kernel's input pool, credited as full entropy, then reseeds the
/// CRNG from it, so /dev/urandom and getrandom output from here on depends on `data`.
/// Needs CAP_SYS_ADMIN.
pub fn add_entropy(data: &[u8]) -> Result<(), VmStateError> {
    let mut info = rand_pool_info(data)?;
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(VmStateError::OpenRandom)?;
    // SAFETY: `info` is a rand_pool_info header followed by buf_size bytes of buf, as
    // RNDADDENTROPY reads it, and lives until the call returns.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_mut_ptr()) };
    if rc < 0 {
        return Err(VmStateError::AddEntropy(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc < 0 {
        return Err(VmStateError::ReseedCrng(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How far `guest` is from `host`, when that is more than [`CLOCK_TOLERANCE`]
/// (positive: the guest is behind).
fn clock_skew(guest: Duration, host: Duration) -> Option<i128> {
    let skew = host.as_nanos() as i128 - guest.as_nanos() as i128;
    (skew.unsigned_abs() > CLOCK_TOLERANCE.as_nanos()).then_some(skew)
}

fn to_duration(t: TimeSpec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec()).unwrap_or(0),
        u32::try_from(t.tv_nsec()).unwrap_or(0),
    )
}

/// Steps CLOCK_REALTIME to `host` (since the Unix epoch) when the guest's differs by more
/// than [`CLOCK_TOLERANCE`]; returns whether it did. Needs CAP_SYS_TIME.
pub fn sync_clock(host: Duration) -> Result<bool, VmStateError> {
    let now =
        clock_gettime(ClockId::CLOCK_REALTIME).map_err(|e| VmStateError::ReadClock(e.into()))?;
    let guest = to_duration(now);
    let Some(skew) = clock_skew(guest, host) else {
        tracing::debug!(
            guest_ns = guest.as_nanos(),
            host_ns = host.as_nanos(),
            "guest clock in sync"
        );
        return Ok(false);
    };
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from_duration(host))
        .map_err(|e| VmStateError::SetClock(e.into()))?;
    tracing::info!(
        guest_ns = guest.as_nanos(),
        host_ns = host.as_nanos(),
        skew_ms = skew / 1_000_000,
        "guest clock stepped to the host's"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rand_pool_info_layout() {
        let data: Vec<u8> = (1..=33).collect();
        let info = rand_pool_info(&data).expect("fits");
        assert_eq!(info.len(), 2 + 9);
        assert_eq!(info[0], 33 * 8, "entropy_count in bits");
        assert_eq!(info[1], 33, "buf_size in bytes");
        let bytes: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[..33], &data[..]);
        assert!(bytes[33..].iter().all(|b| *b == 0));
    }

    #[test]
    fn ioctl_numbers_match_linux_random_h() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
        let ioc =
            |dir: u64, nr: u64, size: u64| (dir << 30) | (size << 16) | (u64::from(b'R') << 8) | nr;
        assert_eq!(RNDADDENTROPY, ioc(1, 0x03, 2 * 4));
        assert_eq!(RNDRESEEDCRNG, ioc(0, 0x07, 0));
    }

    #[test]
    fn clock_is_stepped_only_beyond_tolerance() {
        let host = Duration::from_secs(1_700_000_000);
        assert_eq!(clock_skew(host, host), None);
        assert_eq!(clock_skew(host - Duration::from_millis(100), host), None);
        assert_eq!(clock_skew(host + Duration::from_millis(99), host), None);
        let behind = host - Duration::from_secs(3600);
        assert_eq!(clock_skew(behind, host), Some(3600 * 1_000_000_000));
        let ahead = host + Duration::from_millis(101);
        assert_eq!(clock_skew(ahead, host), Some(-101_000_000));
    }

    #[test]
    fn kernel_takes_the_entropy() {
        // Real ioctls (needs root, as the tests here run): the kernel rejects a malformed
        // rand_pool_info with EINVAL. Host RNG bytes, so the host pool only gains.
        let mut data = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("open /dev/urandom"),
            &mut data,
        )
        .expect("read /dev/urandom");
        add_entropy(&data).expect("RNDADDENTROPY + RNDRESEEDCRNG (run the tests as root)");
    }

    #[test]
    fn clock_within_tolerance_is_left_alone() {
        // The host's own clock is in sync with itself: nothing is set (no CAP_SYS_TIME use).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch");
        assert!(!sync_clock(now).expect("read clock"));
    }
}
