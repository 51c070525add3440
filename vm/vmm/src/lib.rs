//! # hull-vmm
//!
//! hull's own microVM monitor on the rust-vmm crates (KVM only, x86_64): one process per pod
//! VM, started by the hull backend of `hull-vm` (vm/) with a config file, driven through its
//! control API socket and judged by its exit code. What the two agree on (the config, the
//! API's messages, the exit codes, a snapshot's files) is in `hull-vmm-api` (vm/vmm-api);
//! this crate owns everything else: KVM setup, guest memory, vCPUs, the devices, snapshots,
//! seccomp and the API server. Users: the `hull-vmm` binary (`src/main.rs`, a thin shell
//! around [`builder::build`] and [`event_loop`]) and this crate's tests. hulld never links
//! it, and it links no async runtime: every thread here is a plain OS thread with its own
//! seccomp allow-list.
//!
//! Layout follows Firecracker's `vstate/` + `devices/` split: thin owners of KVM fds
//! ([`kvm`], [`vcpu`], [`memory`]), boot-time CPU state ([`regs`]) and guest data ([`boot`],
//! [`layout`]), devices on two buses ([`devices`]), and [`builder`], a flat recipe that
//! assembles a VM from a `hull_vmm_api::config::VmmConfig`.
//!
//! The devices are a module tree here, not a crate of their own (as Cloud Hypervisor's
//! `virtio-devices` is): they are built on this crate's guest memory ([`memory`]), its stop
//! signal ([`exit::ExitSignal`]) and its per-thread-kind seccomp filters ([`seccomp`], which
//! [`devices::virtio::spawn_device_thread`] installs), so a devices crate would have to take
//! those along or add a third crate for them, and nothing outside hull-vmm uses a device.
//! The split that pays, KVM and virtio code out of hulld's graph, is the one between this
//! crate and `hull-vm`.

pub mod api;
pub mod boot;
pub mod builder;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod jail;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod rate_limited;
pub mod regs;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;

/// `err` and its sources on one line (`a: b: c`), for logs and stderr. (hull-vm has the same
/// helper; a crate for one function would be a dependency both sides take for nothing.)
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
