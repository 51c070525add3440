//! Why hull-vmm stopped: its process exit status, which the hull backend reads (a shutdown it
//! asked for, a snapshot written) and hull-vmm's `ExitSignal` records.

/// Why the VM stopped. [`ExitReason::code`] is hull-vmm's process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest rebooted or powered off (i8042 reset, KVM system event). Exit code 0.
    GuestShutdown,
    /// The VMM could not be set up from its config (bad path, bad size). Exit code 1.
    ConfigError,
    /// KVM or host resources failed while building the VM. Exit code 2.
    SetupError,
    /// The guest crashed: triple fault, failed VM entry, KVM internal error. Exit code 3.
    GuestCrash,
    /// A vCPU or device thread hit a host-side error while running. Exit code 4.
    VmmError,
    /// Stopped by a `shutdown` request on the control API (or SIGTERM). Exit code 5.
    ApiShutdown,
    /// Every vCPU executed HLT with interrupts off (no in-kernel irqchip to wake it). Exit 6.
    AllVcpusHalted,
    /// Stopped by a `snapshot` request; the snapshot was written. Exit code 7 (a failed
    /// snapshot exits with [`ExitReason::VmmError`]).
    Snapshotted,
}

impl ExitReason {
    /// The process exit status for this reason.
    pub const fn code(self) -> i32 {
        match self {
            ExitReason::GuestShutdown => 0,
            ExitReason::ConfigError => 1,
            ExitReason::SetupError => 2,
            ExitReason::GuestCrash => 3,
            ExitReason::VmmError => 4,
            ExitReason::ApiShutdown => 5,
            ExitReason::AllVcpusHalted => 6,
            ExitReason::Snapshotted => 7,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            ExitReason::GuestShutdown,
            ExitReason::ConfigError,
            ExitReason::SetupError,
            ExitReason::GuestCrash,
            ExitReason::VmmError,
            ExitReason::ApiShutdown,
            ExitReason::AllVcpusHalted,
        ];
        let mut codes: Vec<_> = all.iter().map(|r| r.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(ExitReason::GuestShutdown.code(), 0);
    }
}
