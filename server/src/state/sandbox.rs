//! The persisted record of a pod sandbox.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::store::Record;
use hull_cri_api::PodSandboxConfig;

/// Where a sandbox is in its life. `Creating` is persisted before any resource is taken,
/// so a crash mid-way leaves a record for recovery to clean up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Ready,
    NotReady,
}

/// A pod sandbox as hulld remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub state: SandboxState,
    /// The pod's config as kubelet sent it (metadata, labels, annotations, resources...).
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
}

impl Record for SandboxRecord {
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("sandboxes");
    fn key(&self) -> &str {
        &self.id
    }
}
