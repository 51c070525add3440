//! # hull-network
//!
//! Pod networking for hull:
//! - [`netns`]: the named network namespace of each pod (`/run/netns/hull-<id>`), and
//!   running code or processes inside it;
//! - [`cni`]: CNI plugin execution per the CNI spec (ADD/DEL/CHECK, `prevResult`
//!   chaining, capabilities through `runtimeConfig`, result cache for DEL after a restart);
//! - [`tap`]: the persistent tap device inside the netns that the VMM opens by name;
//! - [`tc`]: Kata's "tcfilter" model: ingress qdiscs on eth0 and the tap with `u32` +
//!   `mirred egress redirect` filters both ways, so the microVM's NIC sees the pod's traffic;
//! - [`PodNetwork`]: the facade hulld calls (`setup`, `teardown`, `check`, `ready`),
//!   behind the [`PodNetworking`] trait, with [`fake::FakePodNetwork`] for hulld's tests.
//!
//! All `unsafe` code is in `sys.rs`.

pub mod cni;
pub mod fake;
pub mod netlink;
pub mod netns;
mod networking;
mod pod;
mod sys;
pub mod tap;
pub mod tc;

pub use networking::PodNetworking;
pub use pod::{
    POD_IFNAME, PodNetwork, PodNetworkConfig, PodNetworkError, PodNetworkStatus, PodSpec,
    SetupTimings,
};
