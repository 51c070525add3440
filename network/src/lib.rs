//! # hull-network
//!
//! Pod networking for hull. It will own the named network namespace of each pod
//! (`/run/netns/hull-<id>`), CNI plugin execution per the CNI spec (ADD/DEL/CHECK, result
//! cache for DEL after a restart), the tap device inside the netns, and Kata's "tcfilter"
//! model: ingress qdiscs on eth0 and tap0 with `u32` + `mirred egress redirect` filters both
//! ways, so the microVM's NIC sees the pod's traffic.
