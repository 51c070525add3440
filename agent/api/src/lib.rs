//! # hull-agent-api
//!
//! The protocol between hulld (host) and hull-agent (guest PID 1): gRPC over vsock port
//! 1024, served by the agent. On the host the connection goes through the VMM's hybrid-vsock
//! unix socket (`CONNECT <port>\n` / `OK <port>\n`). It will carry health/version, sandbox
//! setup (hostname, DNS, interfaces, routes, sysctls), container lifecycle (create, start,
//! exec, signal, wait, stdio streams, tty resize, remove), stats, OOM events and shutdown.
#![forbid(unsafe_code)]
