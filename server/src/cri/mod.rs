//! The CRI services (runtime.v1) that hulld serves.

mod checkpoint;
mod container;
mod image;
mod metrics;
pub mod rpc_log;
pub mod rpc_span;
mod runtime;
mod runtime_info;
mod sandbox;
pub mod status;
pub mod validate;

use std::sync::Arc;

use crate::daemon::Daemon;

pub use runtime_info::RUNTIME_NAME;

/// Implements both CRI services over the daemon's shared state; cheap to clone.
#[derive(Clone)]
pub struct CriService {
    pub(crate) daemon: Arc<Daemon>,
}

impl CriService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }
}
