//! hull-vmm: hull's own microVM monitor on the rust-vmm crates (KVM only, x86_64).
//!
//! Layout follows Firecracker's `vstate/` + `devices/` split: thin owners of KVM fds
//! ([`kvm`], [`vcpu`], [`memory`]), boot-time CPU state ([`regs`]) and guest data ([`boot`],
//! [`layout`]), devices on two buses ([`devices`]), and [`builder`], a flat recipe that
//! assembles a VM from a [`config::VmmConfig`]. The `hull-vmm` binary is a thin shell around
//! [`builder::build`] and [`event_loop`].

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
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
