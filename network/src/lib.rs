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
//!
//! ## Restarts and crashes
//! Everything is found again by name: the netns file `/run/netns/hull-<id>`, `tap0` and
//! the tc qdiscs inside it, and the CNI cache `<cache_dir>/<id>.json` (written before the
//! first plugin runs, completed with the result after ADD). So `teardown(id)` works after
//! a hulld restart, after a crash at any point of `setup`, and when nothing exists.
//! If CNI DEL itself fails, teardown stops before deleting the netns and keeps the cache,
//! so a retry can finish; if the cached config can never succeed (an operator fixed a
//! broken config), deleting `<cache_dir>/<id>.json` makes DEL use the current config.
//!
//! ## Running the VMM
//! Start it inside the netns with [`netns::Netns::setns_on_exec`] (e.g.
//! `Netns::open(&status.netns)?.setns_on_exec(cmd.as_std_mut())?`); it opens
//! [`PodNetworkStatus::tap`] by name (QEMU: `-netdev tap,id=n0,ifname=tap0,script=no,
//! downscript=no` and `-device virtio-net-device,netdev=n0,mac=<status.mac>`), and the
//! guest gets `status.mac`, `status.mtu`, `status.ips`, `status.routes`.

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
    POD_IFNAME, PodNetwork, PodNetworkConfig, PodNetworkError, PodNetworkStatus, PodNic, PodSpec,
    SetupTimings,
};
