//! The persisted record of a container.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::store::Record;
use hull_cri_api::ContainerConfig;

/// The CRI container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container as hulld remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub state: ContainerState,
    pub config: ContainerConfig,
    /// The image reference as asked for, and the resolved image id.
    pub image_ref: String,
    pub image_id: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Absolute path of the CRI log file (sandbox log dir + container log path).
    pub log_path: String,
    /// The OCI spec hulld sent the agent (shown by a verbose ContainerStatus as
    /// `runtimeSpec`, as containerd does); absent in records of older hullds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_spec: Option<serde_json::Value>,
}

impl Record for ContainerRecord {
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("containers");
    fn key(&self) -> &str {
        &self.id
    }
}
