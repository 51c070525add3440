//! # hull-vm
//!
//! The [`Hypervisor`](hypervisor::Hypervisor) abstraction hulld uses to run each pod's
//! microVM, and its backends, which drive VMM processes: `qemu` (QEMU microvm, KVM where the
//! host can boot stock guests, TCG otherwise) and `hull` (hull-vmm, hull's own monitor, the
//! default on hosts with hardware virtualization, with its VM templates), plus `host`, which
//! runs a host-isolation pod's containers on the node through hull-agent in host mode
//! instead of a VM. Used by hulld (server/) and by this crate's examples and tests.
//!
//! The VMM itself is another crate, `hull-vmm` (vm/vmm), run as a program: this crate speaks
//! to it only through what `hull-vmm-api` (vm/vmm-api) defines (the config file it writes,
//! the control API's messages, the exit codes, a snapshot's files), so neither this crate nor
//! hulld links KVM or virtio code.

pub mod host;
pub mod hull;
pub mod hypervisor;
mod procvm;
pub mod qemu;

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
