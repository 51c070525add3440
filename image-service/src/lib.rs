//! # hull-image
//!
//! hull's native image service, used by hulld's CRI `ImageService`:
//!
//! - [`ImageService::pull`]: registry client on `oci-client` (auth from the CRI
//!   `AuthConfig`, per-host mirrors in the spirit of containerd's `hosts.toml`, manifest
//!   lists and OCI indexes with platform selection, gzip/zstd/plain layers);
//! - a content-addressed blob store (atomic writes, verified digests, one download per
//!   blob however many pulls want it) and metadata in the shared redb database
//!   (tables prefixed `image_`);
//! - layers unpacked once each into their own dir, whiteouts converted to overlayfs'
//!   format (char 0/0 devices, `trusted.overlay.opaque=y`), hostile entries rejected;
//! - [`ImageService::prepare_rootfs`]: an overlay of the layers plus a per-container
//!   upper/work dir; [`ImageService::remove`], [`ImageService::gc`], [`ImageService::fs_info`].
//!
//! Errors are one [`ImageError`] enum; [`ImageError::code`] gives the [`ErrorKind`] hulld
//! maps to a gRPC status.
// One ioctl (unpack/spread.rs) needs `unsafe`; everything else is safe code.
#![deny(unsafe_code)]

mod config;
pub mod content;
mod error;
pub mod faults;
mod gc;
mod locks;
mod meta;
mod pull;
mod registry;
mod rootfs;
mod service;
pub mod unpack;
mod usage;

pub use config::{AuthConfig, HostConfig, MirrorConfig, PlatformConfig, RegistryConfig};
pub use error::{ErrorKind, ImageError, Result};
pub use gc::GcStats;
pub use meta::{ImageRecord, LayerRecord};
pub use service::{ImageService, normalize};
pub use usage::{FsInfo, FsUsage};
