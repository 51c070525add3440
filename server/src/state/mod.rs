//! hulld's state: the metadata store and the typed records it keeps.

pub mod container;
pub mod log_checkpoint;
pub mod sandbox;
pub mod store;

pub use container::{ContainerRecord, ContainerState};
pub use log_checkpoint::{LogCheckpoint, LogCheckpointRecord};
pub use sandbox::{SandboxRecord, SandboxState};
pub use store::{Record, Store, StoreError};

/// Every table hulld itself keeps in the store (created at open).
pub fn tables() -> [redb::TableDefinition<'static, &'static str, &'static [u8]>; 3] {
    [
        SandboxRecord::TABLE,
        ContainerRecord::TABLE,
        LogCheckpointRecord::TABLE,
    ]
}

/// Nanoseconds since the Unix epoch, as the CRI reports timestamps.
pub fn now_nanos() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}
