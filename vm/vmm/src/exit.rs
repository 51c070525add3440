//! Why hull-vmm stopped, and the process exit code that says so.
//!
//! The first component that decides the VM is over (a vCPU seeing a reset or a triple fault,
//! the API's shutdown, a device failure) records its [`ExitReason`] in the shared
//! [`ExitSignal`] and wakes the event loop; later reasons are ignored.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use hull_vmm_api::exit::ExitReason;

/// Errors from creating the exit signal.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error("Failed to create the exit eventfd")]
    CreateEventFd(#[source] std::io::Error),
}

/// The one place the stop decision is recorded.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> Result<Self, ExitError> {
        Ok(Self {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK).map_err(ExitError::CreateEventFd)?,
        })
    }

    /// Record `reason` if none is recorded yet, and wake whoever waits on [`Self::eventfd`].
    pub fn stop(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            tracing::info!(?reason, code = reason.code(), "VM stopping");
        }
        self.stopping.store(true, Ordering::SeqCst);
        // A full eventfd counter (never reached: one write per stop) is the only failure.
        let _ = self.evt.write(1);
    }

    /// Whether someone asked to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readable once [`Self::stop`] was called.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_fd() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_stopping());
        assert!(s.eventfd().read().is_err()); // nonblocking, nothing yet
        s.stop(ExitReason::GuestCrash);
        s.stop(ExitReason::ApiShutdown);
        assert!(s.is_stopping());
        assert_eq!(s.reason(), Some(ExitReason::GuestCrash));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }
}
