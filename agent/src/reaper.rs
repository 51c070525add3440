//! Child reaping for PID 1. Every orphan in the guest is re-parented to the agent, so one
//! task waits for *any* child on SIGCHLD (`waitpid(-1, WNOHANG)`) and hands exit statuses
//! to whoever watches that pid. Nothing else in the agent may wait for children (no
//! `tokio::process`, no `Child::wait`): processes are spawned with `std::process::Command`
//! and their `Child` handles dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: i32,
    /// The terminating signal, 0 for a normal exit.
    pub signal: i32,
    pub at: SystemTime,
}

/// Exits nobody watched yet are kept (a process can end before its pid is registered),
/// up to this many.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct State {
    watchers: HashMap<i32, watch::Sender<Option<Exit>>>,
    unclaimed: HashMap<i32, Exit>,
    unclaimed_order: VecDeque<i32>,
}

/// Shared handle to the reaper.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    /// Starts the reaping task. Must be called on the runtime before any child is spawned.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Self::default();
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// A receiver that gets the exit of `pid` (at once if it already exited).
    pub fn watch(&self, pid: i32) -> watch::Receiver<Option<Exit>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(exit) = state.unclaimed.remove(&pid) {
            state.unclaimed_order.retain(|p| *p != pid);
            return watch::channel(Some(exit)).1;
        }
        if let Some(tx) = state.watchers.get(&pid) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        state.watchers.insert(pid, tx);
        rx
    }

    fn reap_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, exit(code, 0)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, exit(128 + sig as i32, sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            deliver(&mut state, pid, exit);
        }
    }
}

fn exit(status: i32, signal: i32) -> Exit {
    Exit {
        status,
        signal,
        at: SystemTime::now(),
    }
}

fn deliver(state: &mut State, pid: Pid, exit: Exit) {
    let pid = pid.as_raw();
    tracing::debug!(pid, status = exit.status, "reaped");
    if let Some(tx) = state.watchers.remove(&pid) {
        let _ = tx.send(Some(exit));
        return;
    }
    if state.unclaimed_order.len() >= MAX_UNCLAIMED
        && let Some(old) = state.unclaimed_order.pop_front()
    {
        state.unclaimed.remove(&old);
    }
    state.unclaimed.insert(pid, exit);
    state.unclaimed_order.push_back(pid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_watch_is_kept() {
        let reaper = Reaper::default();
        {
            let mut state = reaper.state.lock().expect("lock");
            deliver(&mut state, Pid::from_raw(42), exit(3, 0));
        }
        let rx = reaper.watch(42);
        assert_eq!(rx.borrow().map(|e| e.status), Some(3));
        // Claimed once: a second watcher waits for a new process with that pid.
        assert!(reaper.watch(42).borrow().is_none());
    }

    #[test]
    fn watcher_gets_exit_and_unclaimed_is_bounded() {
        let reaper = Reaper::default();
        let rx = reaper.watch(7);
        let mut state = reaper.state.lock().expect("lock");
        deliver(&mut state, Pid::from_raw(7), exit(137, 9));
        assert_eq!(rx.borrow().map(|e| (e.status, e.signal)), Some((137, 9)));
        for pid in 100..(100 + MAX_UNCLAIMED as i32 + 10) {
            deliver(&mut state, Pid::from_raw(pid), exit(0, 0));
        }
        assert_eq!(state.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!state.unclaimed.contains_key(&100));
    }
}
