//! # hull-vmm-api
//!
//! What hull-vmm and the program that drives it must agree on, and nothing else: the JSON
//! config file a VMM process runs ([`config`], with its validation), the control API's
//! messages ([`control`]), the process exit codes ([`exit`]) and the files of a snapshot
//! directory ([`snapshot`]).
//!
//! Used by `hull-vmm` (vm/vmm, the VMM: it reads the config, answers the API, exits with
//! the codes, writes the snapshots) and by `hull-vm` (vm/, the hull backend: it writes the
//! config, asks for snapshots, reads the exit codes, checks a template's files). It has no
//! KVM, virtio or async dependencies, so the backend (and through it hulld) links none of
//! the VMM's, and the VMM none of hulld's.

#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod exit;
pub mod snapshot;
