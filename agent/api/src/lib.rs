//! # hull-agent-api
//!
//! The protocol between hulld (host) and hull-agent (guest PID 1): gRPC over vsock port
//! 1024, served by the agent. On the host the connection goes through the VMM's hybrid-vsock
//! unix socket (`CONNECT <port>\n` / `OK <port>\n`), see [`connect`]. The service
//! (`proto/agent.proto`) carries health/version, sandbox setup (hostname, DNS, interfaces,
//! routes, sysctls), container lifecycle (create from an OCI spec, start, exec, signal, wait,
//! stdio streams, tty resize, remove), stats, OOM events and shutdown.
//!
//! Validation helpers shared by both sides live in [`validate`].
#![forbid(unsafe_code)]

pub mod connect;
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
