//! # hull-vm
//!
//! The [`Hypervisor`](hypervisor::Hypervisor) abstraction hulld uses to run each pod's
//! microVM, and its backends: `qemu` (QEMU microvm, KVM where the host can boot stock guests,
//! TCG otherwise) and `hull` (hull-vmm, hull's own monitor on rust-vmm crates, the default on
//! hosts with hardware virtualization), plus `host`, which runs a host-isolation pod's
//! containers on the node through hull-agent in host mode instead of a VM. The `hull-vmm`
//! binary lives in this crate too.

pub mod host;
pub mod hull;
pub mod hypervisor;
mod procvm;
pub mod qemu;
pub mod vmm;

/// `err` and its sources on one line (`a: b: c`), for logs and process stderr.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
