//! Test-only pause points, for crash tests: `HULL_PAUSE_AT=<point>[,<point>...]` in a
//! process's environment makes it stop for good at those named points of a long
//! operation (after writing the point's name to the file `HULL_PAUSE_MARKER` names), so a
//! test can `kill -9` it exactly there and check what a restart makes of the half-done
//! work. Unset (always, outside tests), a point costs one cached environment lookup.
//!
//! Always compiled in rather than behind a cargo feature: the integration tests run the
//! very `hulld` binary that ships (a feature would need a second build of hulld and its
//! dependencies in `cargo test`), and an environment variable cannot be set by a config
//! file or a CRI client by mistake. hulld uses these too (RunPodSandbox, CreateContainer);
//! the points are listed where they are placed (`grep pause_at`).

use std::sync::OnceLock;
use std::time::Duration;

/// The variable naming the points to pause at.
pub const PAUSE_AT_ENV: &str = "HULL_PAUSE_AT";
/// The variable naming the file a paused process writes the point's name to.
pub const PAUSE_MARKER_ENV: &str = "HULL_PAUSE_MARKER";

fn armed_points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(PAUSE_AT_ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether `point` is armed (so a caller can make its state observable first).
pub fn armed(point: &str) -> bool {
    armed_points().iter().any(|p| p == point)
}

/// If `point` is armed: logs it, writes the marker and never returns (the test kills the
/// process). Otherwise returns at once.
pub async fn pause_at(point: &str) {
    if !armed(point) {
        return;
    }
    announce(point);
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn announce(point: &str) {
    tracing::warn!(point, "paused at a test pause point ({PAUSE_AT_ENV})");
    if let Some(marker) = std::env::var_os(PAUSE_MARKER_ENV) {
        let _ = std::fs::write(marker, point);
    }
}
