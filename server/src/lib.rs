//! # hulld
//!
//! The hull CRI runtime daemon. It serves the Kubernetes CRI `RuntimeService` and
//! `ImageService` (runtime.v1) on a unix socket, keeps its records in an embedded
//! transactional store under `/var/lib/hull`, and runs every pod sandbox as a microVM
//! (see `ARCHITECTURE.md`). `main.rs` is a thin shell around [`daemon`].
#![forbid(unsafe_code)]

pub mod authority;
pub mod cni_check;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod events;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod mounts;
pub mod recover;
pub mod sandbox;
pub mod state;
pub mod streaming;
pub mod unwind;
