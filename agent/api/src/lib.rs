//! # hull-agent-api
//!
//! The protocol between hulld (host) and hull-agent (guest PID 1): gRPC over vsock port
//! 1024, served by the agent. On the host the connection goes through the VMM's hybrid-vsock
//! unix socket (`CONNECT <port>\n` / `OK <port>\n`), see [`mod@connect`]. The service
//! (`proto/agent.proto`) carries health/version, sandbox setup (hostname, DNS, interfaces,
//! routes, sysctls, and what a VM restored from a template must not share with it: host
//! entropy, the host's wall clock; the agent also mounts the virtio-fs share then),
//! container lifecycle (create from an OCI spec, start, exec, signal, wait,
//! stdio streams, tty resize, remove), stats, OOM events and shutdown.
//!
//! Validation helpers shared by both sides live in [`validate`], mountinfo parsing in
//! [`mountinfo`]. For host-isolation pods the same API is served by hull-agent in host mode
//! on a plain unix socket (same handshake), launched with a [`host::HostModeConfig`].
#![forbid(unsafe_code)]

pub mod connect;
pub mod host;
pub mod mountinfo;
pub mod validate;

/// Generated protobuf messages and the tonic client/server for `hull.agent.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hull.agent.v1");
}

pub use connect::{ConnectError, connect, connect_stream};
pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// The vsock port hull-agent serves on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Where the agent mounts the pod's virtio-fs share (tag `hullshare`) in the guest: a host
/// path `<shared_dir>/x` is `GUEST_SHARED_DIR/x` in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/hull/shared";

/// What the agent prints on the console once it listens on [`AGENT_VSOCK_PORT`]; VMM
/// backends wait for it before the first vsock connect (`hull_vm::hypervisor::AGENT_READY_MARKER`).
pub const READY_MARKER: &str = "hull-agent: ready";

/// This crate's (and so the protocol's) version, reported by the agent's `Health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Linux capability names by number (Linux 6.1: 0..=40): what hulld may put in an OCI
/// spec and what the agent knows how to apply.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];
