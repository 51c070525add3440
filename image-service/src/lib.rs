//! # hull-image
//!
//! hull's native image service, used by hulld's CRI `ImageService`. It will own the registry
//! client (auth from the CRI `AuthConfig`, per-host mirrors in the spirit of containerd's
//! `hosts.toml`, manifest lists and OCI indexes with platform selection), the
//! content-addressed blob store under `/var/lib/hull` (atomic writes, verified digests,
//! shared concurrent downloads), layer unpacking (gzip/zstd/plain, OCI whiteouts, rejecting
//! entries that would escape the layer dir), the overlay rootfs of each container and image
//! garbage collection.
#![forbid(unsafe_code)]
