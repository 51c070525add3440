//! The control API's messages: one JSON request per connection on hull-vmm's API socket,
//! one line each way. hull-vmm answers them (`hull_vmm::api`); the hull backend sends
//! `snapshot` when it makes a VM template, and tools (the nested bench) read `metrics`.
//! A request that needs no data back is answered `{"ok":true}`, a refused or unknown one
//! `{"error":"..."}`.

use std::path::PathBuf;

/// Longest request line hull-vmm reads.
pub const MAX_REQUEST_BYTES: u64 = 4096;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Metrics,
    Shutdown,
    /// Stop the VM and save it into `dir` (an existing, empty directory; absolute path) as
    /// a template; hull-vmm exits with [`ExitReason::Snapshotted`](crate::exit::ExitReason)
    /// once the snapshot is written.
    Snapshot {
        dir: PathBuf,
    },
}

/// Answer to `status`.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatusReply {
    pub id: String,
    pub state: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub vcpus: usize,
    pub memory_mib: u64,
}

/// Answer to `metrics`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MetricsReply {
    pub exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub unhandled: u64,
    /// Resident memory of the whole process.
    pub rss_kb: u64,
    /// Resident guest RAM (the memfd mapping).
    pub guest_ram_rss_kb: u64,
    /// Everything else: the VMM's own overhead.
    pub vmm_rss_kb: u64,
    /// virtio-net frames, drops and refused descriptor chains (absent without a NIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetStats>,
}

/// A snapshot of the virtio-net counters (reported by `metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Tap frames larger than the guest's buffer.
    pub rx_dropped: u64,
    /// Guest frames the tap refused (link down), or sent while the device has no tap.
    pub tx_dropped: u64,
    /// Malformed descriptor chains.
    pub rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_wire_form_hull_vmm_reads() {
        let snap = Request::Snapshot {
            dir: "/run/t/snap".into(),
        };
        let line = serde_json::to_string(&snap).expect("serialize");
        assert_eq!(line, r#"{"op":"snapshot","dir":"/run/t/snap"}"#);
        let back: Request = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, snap);
        let status: Request = serde_json::from_str(r#"{"op":"status"}"#).expect("parse");
        assert_eq!(status, Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }
}
