//! The trait hulld programs against, so its RunPodSandbox unwinding can be tested with
//! [`crate::fake::FakePodNetwork`] instead of real namespaces and plugins.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::cni::NotReady;
use crate::{PodNetwork, PodNetworkError, PodNetworkStatus, PodSpec};

/// Pod network operations (see [`PodNetwork`] for the real one).
#[async_trait]
pub trait PodNetworking: Send + Sync + std::fmt::Debug {
    /// Whether a usable CNI network exists (CRI `NetworkReady`).
    fn ready(&self) -> Result<(), NotReady>;
    /// The netns path a sandbox gets.
    fn netns_path(&self, sandbox_id: &str) -> Result<PathBuf, PodNetworkError>;
    /// Creates the pod network; undoes its own steps on error.
    async fn setup(&self, spec: &PodSpec) -> Result<PodNetworkStatus, PodNetworkError>;
    /// Verifies the pod network.
    async fn check(&self, sandbox_id: &str) -> Result<(), PodNetworkError>;
    /// Removes the pod network; idempotent, works from the cache after a restart.
    async fn teardown(&self, sandbox_id: &str) -> Result<(), PodNetworkError>;
    /// The sandbox ids whose CNI attachment was not deleted yet (see
    /// [`PodNetwork::attachments`]).
    fn attachments(&self) -> Vec<String>;
}

#[async_trait]
impl PodNetworking for PodNetwork {
    fn ready(&self) -> Result<(), NotReady> {
        PodNetwork::ready(self)
    }
    fn netns_path(&self, sandbox_id: &str) -> Result<PathBuf, PodNetworkError> {
        PodNetwork::netns_path(self, sandbox_id)
    }
    async fn setup(&self, spec: &PodSpec) -> Result<PodNetworkStatus, PodNetworkError> {
        PodNetwork::setup(self, spec).await
    }
    async fn check(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        PodNetwork::check(self, sandbox_id).await
    }
    async fn teardown(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        PodNetwork::teardown(self, sandbox_id).await
    }
    fn attachments(&self) -> Vec<String> {
        PodNetwork::attachments(self)
    }
}
