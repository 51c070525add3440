//! Log lines a guest can trigger, rate limited per call site (Firecracker's
//! `logger/rate_limited.rs`): a guest that loops on a bad queue, a full control queue or
//! a device reset must not flood the host's logs (hull-vmm's stderr is a file under `/run`).
//!
//! Each [`warn_limited!`](crate::warn_limited)/[`error_limited!`](crate::error_limited) call site has its own window: at most
//! [`BURST`] lines per [`PERIOD`]; the first line after a quiet spell carries
//! `suppressed = <n>`, the count dropped meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site may log per [`PERIOD`].
pub const BURST: u32 = 10;
/// The window of [`BURST`].
pub const PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// One call site's window.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: Mutex<Window>,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(lines suppressed since the last one)`.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.start.is_none_or(|s| now.duration_since(s) >= PERIOD) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= BURST {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `tracing::warn!`, at most [`BURST`] lines per [`PERIOD`] from this call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::rate_limited::RateLimit =
            $crate::rate_limited::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::error!`, at most [`BURST`] lines per [`PERIOD`] from this call site.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::rate_limited::RateLimit =
            $crate::rate_limited::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            tracing::error!(suppressed, $($arg)+);
        }
    }};
}

/// Counting log lines in unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts the events it sees.
    struct Count(Arc<AtomicU64>);

    impl tracing::Subscriber for Count {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// How many events `f` logged at any level (on this thread).
    pub fn count_events(f: impl FnOnce()) -> u64 {
        let count = Arc::new(AtomicU64::new(0));
        tracing::subscriber::with_default(Count(count.clone()), f);
        count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_period_then_the_count_of_what_was_dropped() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.check_at(t0), Some(0));
        }
        for i in 0..1000u64 {
            assert_eq!(limit.check_at(t0 + Duration::from_millis(i)), None);
        }
        // The next window logs again and says how many lines were dropped.
        assert_eq!(limit.check_at(t0 + PERIOD), Some(1000));
        assert_eq!(limit.check_at(t0 + PERIOD), Some(0));
    }

    #[test]
    fn each_call_site_has_its_own_limit() {
        let logged = test_support::count_events(|| {
            for i in 0..1000 {
                crate::warn_limited!(i, "flooding site");
            }
            for _ in 0..3 {
                crate::error_limited!("another site");
            }
        });
        assert_eq!(
            logged,
            u64::from(BURST) + 3,
            "1000 lines from one site cut to a burst"
        );
    }
}
