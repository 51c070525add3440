//! Containers in the pod VM: the OCI spec hulld builds for the agent, user lookups in the
//! image, and (with the sandbox API) the container manager and exit watcher.

pub mod etc;
mod exec_sync;
pub mod images;
pub mod manager;
pub mod oci;
pub mod recover;
pub mod runtime;
pub mod spec;
pub mod user;
pub mod view;
pub mod volumes;

pub use spec::{GuestMount, ImageDefaults, SpecInput};
