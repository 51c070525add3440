//! Where a container's CRI log stood at some moment: what a restarted hulld resumes from.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::store::Record;

/// A consistent snapshot of a container's log writer, taken right after a flush: the log
/// file (by inode) was `log_len` bytes long and held every output byte before the two
/// stream offsets (bytes since the process started). See [`crate::logs::resume`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCheckpoint {
    pub ino: u64,
    pub log_len: u64,
    pub stdout: u64,
    pub stderr: u64,
}

/// The checkpoint of one container, keyed by container id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCheckpointRecord {
    pub id: String,
    pub checkpoint: LogCheckpoint,
}

impl Record for LogCheckpointRecord {
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("log_checkpoints");
    fn key(&self) -> &str {
        &self.id
    }
}
