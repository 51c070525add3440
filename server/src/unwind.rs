//! The undo list of a multi-step operation (STYLE.md §5, containerd's
//! `defer if retErr != nil` with `util.DeferContext`, in Rust).
//!
//! Each step that took a resource pushes its undo right after it succeeded. On error the
//! caller runs the list in reverse under its own deadline (the request's deadline may be
//! gone); on success it calls [`Unwind::disarm`]. Undo work here is async (CNI DEL, VMM
//! kill), so `Drop` guards cannot do it.
//!
//! The first undo that fails stops the run (containerd's `cleanupErr`): the steps pushed
//! before it (usually bookkeeping: the record, the reserved name) are skipped, so the
//! caller keeps the record NOTREADY for RemovePodSandbox to finish the job.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

type UndoFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// An undo list; runs nothing unless [`Unwind::run`] is called.
pub struct Unwind {
    id: String,
    steps: Vec<(&'static str, UndoFuture)>,
}

impl std::fmt::Debug for Unwind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Unwind")
            .field("id", &self.id)
            .field("steps", &names)
            .finish()
    }
}

/// What running the undo list did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Steps undone, in the order they ran.
    pub undone: Vec<&'static str>,
    /// The step that failed and why; the steps after it did not run.
    pub failed: Option<(&'static str, String)>,
    /// Steps skipped because an earlier undo failed.
    pub skipped: Vec<&'static str>,
}

impl Cleanup {
    pub fn complete(&self) -> bool {
        self.failed.is_none()
    }
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failed {
            None => write!(f, "cleaned up: {}", self.undone.join(", ")),
            Some((step, err)) => write!(
                f,
                "cleanup failed at {step}: {err} (left for RemovePodSandbox: {})",
                self.skipped.join(", ")
            ),
        }
    }
}

impl Unwind {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            steps: Vec::new(),
        }
    }

    /// Adds the undo of a step that just succeeded.
    pub fn push<F>(&mut self, step: &'static str, undo: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.steps.push((step, Box::pin(undo)));
    }

    /// Number of pending undos.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The operation succeeded: forget every undo.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// Runs the undos in reverse, all of them within `deadline`; stops at the first that
    /// fails or times out.
    pub async fn run(mut self, deadline: Duration) -> Cleanup {
        let end = Instant::now() + deadline;
        let mut report = Cleanup::default();
        while let Some((step, undo)) = self.steps.pop() {
            if report.failed.is_some() {
                report.skipped.push(step);
                continue;
            }
            let left = end.saturating_duration_since(Instant::now());
            let t0 = Instant::now();
            match tokio::time::timeout(left, undo).await {
                Ok(Ok(())) => {
                    tracing::info!(sandbox_id = %self.id, step, ms = t0.elapsed().as_millis() as u64, "undone");
                    report.undone.push(step);
                }
                Ok(Err(e)) => {
                    tracing::error!(sandbox_id = %self.id, step, error = %e, "undo failed");
                    report.failed = Some((step, e));
                }
                Err(_) => {
                    tracing::error!(sandbox_id = %self.id, step, "undo timed out");
                    report.failed = Some((step, format!("timed out after {deadline:?}")));
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> Arc<Mutex<Vec<&'static str>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    #[tokio::test]
    async fn runs_in_reverse_and_stops_at_the_first_failure() {
        let log = recorder();
        let mut u = Unwind::new("x");
        for step in ["a", "b", "c", "d"] {
            let log = Arc::clone(&log);
            u.push(step, async move {
                log.lock().unwrap().push(step);
                if step == "c" {
                    Err("boom".into())
                } else {
                    Ok(())
                }
            });
        }
        let report = u.run(Duration::from_secs(5)).await;
        assert_eq!(*log.lock().unwrap(), vec!["d", "c"]);
        assert_eq!(report.undone, vec!["d"]);
        assert_eq!(report.failed, Some(("c", "boom".to_string())));
        assert_eq!(report.skipped, vec!["b", "a"]);
        assert!(!report.complete());
        assert!(report.to_string().contains("cleanup failed at c: boom"));
    }

    #[tokio::test]
    async fn disarm_runs_nothing_and_deadline_bounds_the_run() {
        let log = recorder();
        let mut u = Unwind::new("x");
        let l = Arc::clone(&log);
        u.push("a", async move {
            l.lock().unwrap().push("a");
            Ok(())
        });
        u.disarm();
        assert!(log.lock().unwrap().is_empty());

        let mut u = Unwind::new("y");
        u.push("fast", async { Ok(()) });
        u.push("slow", async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        let t0 = Instant::now();
        let report = u.run(Duration::from_millis(100)).await;
        // The slow step takes 30 s: the bound only tells "cut at the deadline" from "waited
        // for the step", with room for a loaded machine.
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(report.failed.as_ref().map(|f| f.0), Some("slow"));
        assert_eq!(report.skipped, vec!["fast"]);
    }
}
