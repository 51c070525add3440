//! The host's TSC rate, for TCG guests' timekeeping (issue 20, idle CPU).
//!
//! QEMU's TCG (without icount) gives the guest the host's own TSC. Told its rate
//! (`tsc_early_khz=`) and that it is reliable (`tsc=reliable`: no hpet or ACPI PM timer on
//! microvm to check it against), the guest keeps time by its TSC and an idle guest stops
//! ticking (NO_HZ). Without it the guest falls back to the jiffies clocksource, which needs
//! the periodic tick: HZ timer interrupts a second, each waking QEMU's vCPU and main
//! threads. A wrong rate would make the guest's clock run fast or slow, so the rate is
//! measured, and only a constant-rate TSC is used.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the TSC is counted against the monotonic clock.
const MEASURE: Duration = Duration::from_millis(100);

/// The host's TSC rate in kHz, measured once (100 ms); `None` if the TSC does not run at
/// a constant rate (no `constant_tsc` in /proc/cpuinfo) or this is not x86_64.
pub fn host_tsc_khz() -> Option<u32> {
    static KHZ: OnceLock<Option<u32>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let khz = has_constant_tsc(&cpuinfo).then(measure).flatten();
        tracing::info!(?khz, "host TSC rate for TCG guests");
        khz
    })
}

fn has_constant_tsc(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "constant_tsc"))
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u32> {
    // Each end is the TSC read on both sides of the clock read; the smaller of two
    // measurements keeps a preemption inside one from inflating the rate.
    let once = || {
        let (t0, c0) = sample();
        std::thread::sleep(MEASURE);
        let (t1, c1) = sample();
        rate_khz(c1.checked_sub(c0)?, t1.duration_since(t0))
    };
    let (a, b) = (once()?, once()?);
    let (lo, hi) = (a.min(b), a.max(b));
    // Two measurements more than 1% apart: the host was too busy to tell; do without.
    (hi - lo <= hi / 100).then_some(lo)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u32> {
    None
}

#[cfg(target_arch = "x86_64")]
fn sample() -> (Instant, u64) {
    // SAFETY: RDTSC reads a counter; it has no memory effects or preconditions on x86_64.
    let before = unsafe { std::arch::x86_64::_rdtsc() };
    let now = Instant::now();
    // SAFETY: as above.
    let after = unsafe { std::arch::x86_64::_rdtsc() };
    (now, before / 2 + after / 2)
}

/// TSC ticks over a wall-clock span, in kHz (plausible rates only: 100 MHz to 10 GHz).
fn rate_khz(ticks: u64, span: Duration) -> Option<u32> {
    let micros = u64::try_from(span.as_micros()).ok().filter(|m| *m > 0)?;
    let khz = u32::try_from(ticks.checked_mul(1000)? / micros).ok()?;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_flags() {
        assert_eq!(
            rate_khz(230_000_000, Duration::from_millis(100)),
            Some(2_300_000)
        );
        assert_eq!(rate_khz(5, Duration::from_millis(100)), None);
        assert_eq!(rate_khz(1, Duration::ZERO), None);
        assert!(has_constant_tsc(
            "flags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
        ));
        assert!(!has_constant_tsc("flags\t\t: fpu tsc\n"));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_host_rate_is_measured_where_the_tsc_is_constant() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        if has_constant_tsc(&cpuinfo) {
            // Two runs may disagree on a very busy host (then None): not an error.
            if let Some(khz) = host_tsc_khz() {
                assert!((100_000..=10_000_000).contains(&khz), "{khz}");
            }
        } else {
            assert_eq!(host_tsc_khz(), None);
        }
    }
}
