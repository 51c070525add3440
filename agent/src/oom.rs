//! OOM kills for the `OomEvents` stream. Each container's `memory.events` is polled, but
//! only while someone is subscribed: an idle pod has no subscriber (hulld reads a
//! container's OOM kill from its cgroup when it exits), and a poll every 500 ms of an idle
//! guest wakes its vCPU and its VMM twice a second for nothing (issue 20, idle CPU).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_agent_api::v1 as pb;
use tokio::sync::broadcast;

/// How often the kill counters are read while someone listens.
pub const OOM_POLL: Duration = Duration::from_millis(500);

/// Each container's id and its `oom_kill` count now.
pub type KillCounts = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// The monitor: a broadcast of OOM events and the poller behind it, running while the
/// broadcast has receivers.
pub struct OomMonitor {
    tx: broadcast::Sender<pb::OomEvent>,
    counts: KillCounts,
    poll: Duration,
    /// Whether the poller runs; taken to start it and, by the poller, to stop.
    running: Arc<Mutex<bool>>,
}

fn lock(m: &Mutex<bool>) -> std::sync::MutexGuard<'_, bool> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OomMonitor {
    pub fn new(counts: KillCounts, poll: Duration) -> Self {
        let (tx, _) = broadcast::channel(64);
        Self {
            tx,
            counts,
            poll,
            running: Arc::new(Mutex::new(false)),
        }
    }

    /// A receiver of the kills from now on; starts the poller if it is not running.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::OomEvent> {
        let mut running = lock(&self.running);
        let rx = self.tx.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(poll(
                self.tx.clone(),
                Arc::clone(&self.counts),
                self.poll,
                Arc::clone(&self.running),
            ));
        }
        rx
    }
}

async fn poll(
    tx: broadcast::Sender<pb::OomEvent>,
    counts: KillCounts,
    every: Duration,
    running: Arc<Mutex<bool>>,
) {
    // Kills from before the subscription are not news.
    let mut seen: std::collections::HashMap<String, u64> = counts().into_iter().collect();
    loop {
        tokio::time::sleep(every).await;
        {
            let mut r = lock(&running);
            if tx.receiver_count() == 0 {
                *r = false;
                return;
            }
        }
        let now = counts();
        seen.retain(|id, _| now.iter().any(|(c, _)| c == id));
        for (id, kills) in now {
            let before = seen.insert(id.clone(), kills).unwrap_or(0);
            if kills > before {
                tracing::warn!(container_id = %id, kills, "OOM kill");
                let _ = tx.send(pb::OomEvent {
                    container_id: id,
                    timestamp_unix_nanos: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as i64)
                        .unwrap_or(0),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn polls_only_while_subscribed_and_reports_new_kills() {
        let reads = Arc::new(AtomicUsize::new(0));
        let kills = Arc::new(AtomicU64::new(3));
        let (r, k) = (Arc::clone(&reads), Arc::clone(&kills));
        let counts: KillCounts = Arc::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            vec![("c1".to_owned(), k.load(Ordering::SeqCst))]
        });
        let monitor = OomMonitor::new(counts, Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 0, "polled with no subscriber");

        let mut rx = monitor.subscribe();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            rx.try_recv().is_err(),
            "kills from before the subscription reported"
        );
        kills.store(4, Ordering::SeqCst);
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("an event");
        assert_eq!(event.container_id, "c1");

        drop(rx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped_at = reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reads.load(Ordering::SeqCst), stopped_at, "still polling");
        assert!(!*lock(&monitor.running));
        // A new subscriber starts it again.
        let _rx = monitor.subscribe();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(reads.load(Ordering::SeqCst) > stopped_at);
    }
}
