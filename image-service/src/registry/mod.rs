//! Talking to registries: endpoints from the mirror config, credentials, manifests with
//! platform selection, and blob streams.

mod auth;
mod client;
mod fetch;
pub(crate) mod manifest;
mod token;

pub(crate) use client::{Registry, Session};
