//! The container manager: hulld's containers as records in the store, their log writers
//! and the event feed. The agent-facing lifecycle (create/start/stop/exec) builds on this
//! once a sandbox gives it an agent client and a shared dir.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use hull_cri_api as cri;

use super::images::ContainerImages;
use super::view;
use crate::events::{ContainerEventType, Events};
use crate::logs::resume::{self, Basis, Resume, ResumeError};
use crate::logs::{CheckpointSink, LogConfig, LogError, LogWriter};
use crate::state::{
    ContainerRecord, ContainerState, LogCheckpoint, LogCheckpointRecord, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("Container {} not found", crate::cri::status::quote(.0))]
    NotFound(String),
    #[error(
        "Container id prefix {} matches {count} containers",
        crate::cri::status::quote(prefix)
    )]
    Ambiguous { prefix: String, count: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
}

/// How a container's main process ended, as the agent's WaitProcess reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub oom_killed: bool,
    pub finished_at: i64,
}

/// `info` of a verbose ContainerStatus, shaped like containerd's (`crictl inspect`, and
/// tools that run `jq .info.config` or `jq .info.runtimeSpec`): JSON objects, the CRI
/// config as the client sent it and the OCI spec the agent ran.
pub(crate) fn verbose_info(r: &ContainerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "sandboxID": r.sandbox_id,
        "imageRef": r.image_ref,
        "imageID": r.image_id,
        "logPath": r.log_path,
        "runtimeType": crate::cri::RUNTIME_NAME,
        "config": serde_json::to_value(&r.config).unwrap_or(serde_json::Value::Null),
        "runtimeSpec": r.runtime_spec,
    })
}

/// Every container hulld knows; cheap to share behind an `Arc`.
pub struct ContainerManager {
    store: Store,
    events: Events,
    log_config: LogConfig,
    /// Open log writers and the offsets they started at.
    logs: Mutex<HashMap<String, (LogWriter, Resume)>>,
    images: OnceLock<Arc<dyn ContainerImages>>,
}

impl std::fmt::Debug for ContainerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerManager").finish_non_exhaustive()
    }
}

impl ContainerManager {
    pub fn new(store: Store, events: Events) -> Self {
        Self {
            store,
            events,
            log_config: LogConfig::default(),
            logs: Mutex::new(HashMap::new()),
            images: OnceLock::new(),
        }
    }

    /// Hands the manager the daemon's image service (done once, by whoever opens it).
    pub fn set_images(&self, images: Arc<dyn ContainerImages>) {
        let _ = self.images.set(images);
    }

    /// The image service, once set.
    pub fn images(&self) -> Option<Arc<dyn ContainerImages>> {
        self.images.get().cloned()
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The record of `id`, which may be a unique prefix (crictl sends short ids).
    pub fn get(&self, id: &str) -> Result<ContainerRecord, ManagerError> {
        if let Some(r) = self.store.get::<ContainerRecord>(id)? {
            return Ok(r);
        }
        let all: Vec<ContainerRecord> = self.store.list()?;
        match view::resolve_prefix(&all, id) {
            Ok(Some(r)) => Ok(r.clone()),
            Ok(None) => Err(ManagerError::NotFound(id.to_owned())),
            Err(count) => Err(ManagerError::Ambiguous {
                prefix: id.to_owned(),
                count,
            }),
        }
    }

    /// Every record.
    pub fn list_records(&self) -> Result<Vec<ContainerRecord>, ManagerError> {
        Ok(self.store.list()?)
    }

    /// ListContainers.
    pub fn list(
        &self,
        filter: Option<&cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, ManagerError> {
        let all: Vec<ContainerRecord> = self.store.list()?;
        let mut out: Vec<cri::Container> = all
            .iter()
            .filter(|r| filter.is_none_or(|f| view::matches(r, f)))
            .map(view::to_container)
            .collect();
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    /// ContainerStatus, with the record and spec details in `info` when `verbose`.
    pub fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, ManagerError> {
        let r = self.get(id)?;
        let mut info = HashMap::new();
        if verbose {
            info.insert("info".to_owned(), verbose_info(&r).to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(view::to_status(&r)),
            info,
        })
    }

    /// Stores a new record (state Created) and announces it.
    pub fn add(&self, record: &ContainerRecord) -> Result<(), ManagerError> {
        self.store.put(record)?;
        self.events.container(
            ContainerEventType::ContainerCreatedEvent,
            view::to_status(record),
            None,
        );
        Ok(())
    }

    /// The container's process started.
    pub fn mark_started(&self, id: &str, started_at: i64) -> Result<ContainerRecord, ManagerError> {
        let r = self
            .store
            .update::<ContainerRecord>(id, |r| {
                r.state = ContainerState::Running;
                r.started_at = started_at;
            })?
            .ok_or_else(|| ManagerError::NotFound(id.to_owned()))?;
        self.events.container(
            ContainerEventType::ContainerStartedEvent,
            view::to_status(&r),
            None,
        );
        Ok(r)
    }

    /// The container's process exited: exit code, reason (`OOMKilled`, `Completed`,
    /// `Error`) and finish time are persisted, and a stopped event goes out. A second
    /// report for an already exited container changes nothing.
    pub fn mark_exited(&self, id: &str, exit: Exit) -> Result<ContainerRecord, ManagerError> {
        self.close(id, exit, exit_reason(exit), "")
    }

    /// The container's pod VM is gone, so its process is too: the container turns
    /// EXITED with [`LOST_EXIT_CODE`], reason [`VM_EXITED_REASON`] and `message` saying
    /// what happened, and a stopped event goes out. Nothing changes for a container that
    /// already exited.
    pub fn mark_lost(&self, id: &str, message: &str) -> Result<ContainerRecord, ManagerError> {
        let exit = Exit {
            exit_code: LOST_EXIT_CODE,
            oom_killed: false,
            finished_at: crate::state::now_nanos(),
        };
        self.close(id, exit, VM_EXITED_REASON, message)
    }

    fn close(
        &self,
        id: &str,
        exit: Exit,
        reason: &str,
        message: &str,
    ) -> Result<ContainerRecord, ManagerError> {
        let mut changed = false;
        let r = self
            .store
            .update::<ContainerRecord>(id, |r| {
                if r.state == ContainerState::Exited {
                    return;
                }
                changed = true;
                r.state = ContainerState::Exited;
                r.exit_code = exit.exit_code;
                r.finished_at = exit.finished_at;
                r.reason = reason.to_owned();
                r.message = message.to_owned();
            })?
            .ok_or_else(|| ManagerError::NotFound(id.to_owned()))?;
        if changed {
            tracing::info!(container = id, exit_code = exit.exit_code, reason = %r.reason, message, "container exited");
            self.events.container(
                ContainerEventType::ContainerStoppedEvent,
                view::to_status(&r),
                None,
            );
        }
        Ok(r)
    }

    /// Replaces the record's Linux resources with `f(old)` (UpdateContainerResources).
    pub fn update_resources(
        &self,
        id: &str,
        f: impl FnOnce(Option<&cri::LinuxContainerResources>) -> cri::LinuxContainerResources,
    ) -> Result<ContainerRecord, ManagerError> {
        self.store
            .update::<ContainerRecord>(id, |r| {
                let linux = r.config.linux.get_or_insert_with(Default::default);
                linux.resources = Some(f(linux.resources.as_ref()));
            })?
            .ok_or_else(|| ManagerError::NotFound(id.to_owned()))
    }

    /// Forgets a container (RemoveContainer after the agent side is gone). Idempotent.
    pub async fn forget(&self, id: &str) -> Result<(), ManagerError> {
        let record = self.store.get::<ContainerRecord>(id)?;
        if let Some(w) = self.take_log(id) {
            w.close().await;
        }
        self.store.delete::<LogCheckpointRecord>(id)?;
        if let Some(r) = record {
            self.store.delete::<ContainerRecord>(id)?;
            self.events.container(
                ContainerEventType::ContainerDeletedEvent,
                view::to_status(&r),
                None,
            );
        }
        Ok(())
    }

    /// The log writer of `id`, opened on first use at the record's log path (both streams
    /// from offset 0: a container about to start).
    pub fn log_writer(&self, record: &ContainerRecord) -> Result<Option<LogWriter>, ManagerError> {
        Ok(self
            .open_log(record, || Ok(Resume::default()))?
            .map(|(w, _)| w))
    }

    /// After a hulld restart: the log writer of a running container, opened where its log
    /// file ends (see [`crate::logs::resume`]), and the offsets to read the agent from.
    pub fn resume_log_writer(
        &self,
        record: &ContainerRecord,
    ) -> Result<Option<(LogWriter, Resume)>, ManagerError> {
        let path = std::path::Path::new(&record.log_path);
        self.open_log(record, || {
            let checkpoint = self
                .store
                .get::<LogCheckpointRecord>(&record.id)?
                .map(|r| r.checkpoint);
            let (at, basis) = resume::resume(path, checkpoint)?;
            match basis {
                Basis::Rotated => tracing::warn!(container = %record.id,
                    "log rotated without a reopen before the restart: lines since the last checkpoint may repeat"),
                _ => tracing::info!(container = %record.id, ?basis, stdout = at.stdout,
                    stderr = at.stderr, "log resumes"),
            }
            Ok(at)
        })
    }

    /// Opens the writer (or returns the open one and its starting point).
    fn open_log(
        &self,
        record: &ContainerRecord,
        resume: impl FnOnce() -> Result<Resume, ManagerError>,
    ) -> Result<Option<(LogWriter, Resume)>, ManagerError> {
        if record.log_path.is_empty() {
            return Ok(None);
        }
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((w, at)) = logs.get(&record.id) {
            return Ok(Some((w.clone(), *at)));
        }
        let at = resume()?;
        let w = LogWriter::open_at(
            std::path::Path::new(&record.log_path),
            self.log_config,
            at,
            Some(self.checkpoint_sink(&record.id)),
        )?;
        logs.insert(record.id.clone(), (w.clone(), at));
        Ok(Some((w, at)))
    }

    /// Stores a writer's checkpoints (failures are logged: a stale checkpoint only makes a
    /// restart count more of the log file).
    fn checkpoint_sink(&self, id: &str) -> CheckpointSink {
        let store = self.store.clone();
        let id = id.to_owned();
        std::sync::Arc::new(move |checkpoint: LogCheckpoint| {
            let record = LogCheckpointRecord {
                id: id.clone(),
                checkpoint,
            };
            if let Err(e) = store.put(&record) {
                tracing::warn!(container = %id, error = %e, "cannot store the log checkpoint");
            }
        })
    }

    fn take_log(&self, id: &str) -> Option<LogWriter> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .map(|(w, _)| w)
    }

    /// ReopenContainerLog: only a running container has a log to reopen (kubelet's rule).
    pub async fn reopen_log(&self, id: &str) -> Result<(), ReopenError> {
        let r = self.get(id).map_err(ReopenError::Manager)?;
        if r.state != ContainerState::Running {
            return Err(ReopenError::NotRunning(r.id));
        }
        let writer = self.log_writer(&r).map_err(ReopenError::Manager)?;
        match writer {
            Some(w) => w.reopen().await.map_err(|e| ReopenError::Manager(e.into())),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    #[error("Container {0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    Manager(ManagerError),
}

/// Exit code of a container whose pod VM died under it (containerd's "unknown exit" code,
/// as when a shim dies).
pub const LOST_EXIT_CODE: i32 = 255;

/// CRI reason of a container whose pod VM died under it.
pub const VM_EXITED_REASON: &str = "PodVMExited";

/// The CRI reason of an exit (containerd's rule).
pub fn exit_reason(exit: Exit) -> &'static str {
    if exit.oom_killed {
        "OOMKilled"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
