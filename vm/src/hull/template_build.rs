//! The template manager: finds the template a pod VM can be restored from, or creates it
//! (boot a template VM to agent-ready, snapshot it, publish it atomically), once per key
//! at a time; a failure is remembered for [`FAILURE_BACKOFF`] so pods meanwhile boot cold
//! instead of each retrying a template boot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::probe::request_snapshot;
use super::template::{
    COMPLETE_MARKER, Marker, SNAPSHOT_FILES, TemplatePaths, inputs, template_key,
    template_vmm_config,
};
use super::{EXIT_SNAPSHOTTED, HullConfig, error_chain};
use crate::hypervisor::{HypervisorError, VmConfig, VmExit};
use crate::procvm::{Spawn, VmProcs};
use crate::qemu::argv;
use crate::qemu::procs::{log_tail, wait_agent_marker, wait_for_socket};

/// The counter of template lookups (hulld's metrics endpoint shows it).
const TEMPLATE_LOOKUPS: &str = "hull_vm_template_lookups_total";
/// How long pods boot cold after a template for their key failed.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(10 * 60);
/// How long a template VM may take to reach agent-ready.
const TEMPLATE_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long hull-vmm may take to write the snapshot and exit.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the template's processes get to exit on SIGTERM.
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// Errors of one template creation (each logged, then the pod boots cold).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("Failed to prepare {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to start the template's virtiofsd")]
    Virtiofsd(#[source] HypervisorError),
    #[error("Failed to start the template's hull-vmm")]
    Vmm(#[source] HypervisorError),
    #[error("The template guest did not reach agent-ready")]
    Boot(#[source] HypervisorError),
    #[error("The snapshot request failed: {0}")]
    Snapshot(String),
    #[error("hull-vmm did not finish the snapshot: {0}")]
    SnapshotExit(String),
    #[error("Failed to publish the template at {path}")]
    Publish {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a pod VM is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The kernel boots (templates off, or no template could be had).
    Cold,
    /// Restored from the template at `dir`; `created` is how long creating it took when
    /// this start created it (`None`: it was there).
    Restored {
        key: String,
        dir: PathBuf,
        created: Option<Duration>,
    },
}

/// Templates of one backend: a lock per key and the keys that failed recently.
#[derive(Debug, Default)]
pub struct Templates {
    locks: SyncMutex<HashMap<String, Arc<Mutex<()>>>>,
    failed: SyncMutex<HashMap<String, Instant>>,
}

impl Templates {
    /// The template for `config`, creating it if needed; [`Boot::Cold`] when there is none.
    pub async fn prepare(&self, config: &VmConfig, programs: &HullConfig) -> Boot {
        let key = match template_key(config, &programs.vmm) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(error = %e, "VM template: cannot compute its key; cold boot");
                return Boot::Cold;
            }
        };
        let paths = TemplatePaths::new(&config.run_dir, &key);
        if paths.is_complete() {
            tracing::info!(key, "VM template hit");
            metrics::counter!(TEMPLATE_LOOKUPS, "result" => "hit").increment(1);
            return restored(paths, None);
        }
        if self.failed_recently(&key) {
            tracing::info!(key, "VM template failed recently; cold boot");
            return Boot::Cold;
        }
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        if paths.is_complete() {
            tracing::info!(key, "VM template hit (created by another pod meanwhile)");
            metrics::counter!(TEMPLATE_LOOKUPS, "result" => "hit").increment(1);
            return restored(paths, None);
        }
        if self.failed_recently(&key) {
            return Boot::Cold;
        }
        tracing::info!(key, dir = %paths.dir.display(), "VM template miss: creating it");
        metrics::counter!(TEMPLATE_LOOKUPS, "result" => "miss").increment(1);
        if let Some(root) = paths.dir.parent() {
            collect_garbage(root, &key);
        }
        let t0 = Instant::now();
        match create(config, programs, &paths).await {
            Ok(()) => {
                let elapsed = t0.elapsed();
                tracing::info!(
                    key,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "VM template created"
                );
                restored(paths, Some(elapsed))
            }
            Err(e) => {
                tracing::warn!(
                    key,
                    error = %error_chain(&e),
                    retry_after_s = FAILURE_BACKOFF.as_secs(),
                    "VM template creation failed; cold boot"
                );
                self.remember_failure(&key);
                Boot::Cold
            }
        }
    }

    /// Pods of `key` boot cold for the next [`FAILURE_BACKOFF`].
    pub fn remember_failure(&self, key: &str) {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.insert(key.to_owned(), Instant::now());
    }

    fn failed_recently(&self, key: &str) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.retain(|_, at| at.elapsed() < FAILURE_BACKOFF);
        failed.contains_key(key)
    }

    fn lock_for(&self, key: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.entry(key.to_owned()).or_default().clone()
    }
}

fn restored(paths: TemplatePaths, created: Option<Duration>) -> Boot {
    Boot::Restored {
        key: paths.key,
        dir: paths.dir,
        created,
    }
}

fn dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Dir {
        path: path.to_owned(),
        source,
    }
}

/// Creates the template at `paths.dir`: build dir, template VM, snapshot, publish. The
/// build dir and every process of the template VM are gone afterwards, success or not.
pub async fn create(
    config: &VmConfig,
    programs: &HullConfig,
    paths: &TemplatePaths,
) -> Result<(), TemplateError> {
    let _ = std::fs::remove_dir_all(&paths.build);
    if paths.dir.exists() {
        // Not complete (or we would not be here): a leftover, never a template.
        std::fs::remove_dir_all(&paths.dir).map_err(dir_error(&paths.dir))?;
    }
    std::fs::create_dir_all(&paths.snapshot).map_err(dir_error(&paths.snapshot))?;
    std::fs::create_dir_all(&paths.share).map_err(dir_error(&paths.share))?;
    let mut procs = TemplateProcs::default();
    let mut result = boot_and_snapshot(config, programs, paths, &mut procs).await;
    procs.cleanup().await;
    if result.is_ok() {
        result = publish(paths, config, programs);
    }
    let _ = std::fs::remove_dir_all(&paths.build);
    result
}

/// The processes of a template VM: virtiofsd when its pods have a share, then hull-vmm.
struct TemplateProcs(VmProcs);

impl Default for TemplateProcs {
    fn default() -> Self {
        // Exit 7 (snapshot written) is how a template VM is meant to end.
        Self(VmProcs::new(|status| match status.code() {
            Some(EXIT_SNAPSHOTTED) => VmExit::Shutdown,
            _ => super::exit_of(status),
        }))
    }
}

/// A template creation that is dropped half-way (the pod start or hulld's warm-up task
/// cancelled, hulld shutting down) must not leave its VM running: nothing would ever ask it
/// for a snapshot. [`TemplateProcs::cleanup`] has already stopped them on every other path.
impl Drop for TemplateProcs {
    fn drop(&mut self) {
        self.0.kill_now();
    }
}

impl TemplateProcs {
    async fn cleanup(&self) {
        if let Err(e) = self.0.stop(CLEANUP_GRACE, &[]).await {
            tracing::warn!(error = %e, "template process cleanup failed");
        }
    }
}

async fn boot_and_snapshot(
    config: &VmConfig,
    programs: &HullConfig,
    paths: &TemplatePaths,
    procs: &mut TemplateProcs,
) -> Result<(), TemplateError> {
    let files = paths.run_files();
    if config.shared_dir.is_some() {
        let fs_files = argv::RunFiles::new(&paths.build);
        let virtiofsd = argv::virtiofsd(&fs_files, &programs.virtiofsd, &paths.share);
        procs
            .0
            .start_helpers(&[virtiofsd])
            .await
            .map_err(TemplateError::Virtiofsd)?;
    }
    let json = serde_json::to_vec_pretty(&template_vmm_config(config, paths))
        .map_err(|e| TemplateError::Vmm(HypervisorError::InvalidConfig(e.to_string())))?;
    std::fs::write(&files.vmm_config, json).map_err(dir_error(&files.vmm_config))?;
    let mut args = vec!["--config".into(), files.vmm_config.clone().into_os_string()];
    if programs.jail {
        // The jailed template VM writes its snapshot as its own uid.
        super::jail::give_dir(&config.id, &paths.snapshot).map_err(dir_error(&paths.snapshot))?;
        args.extend(super::jail::args(
            &config.id,
            &paths.build,
            &[&paths.snapshot],
        ));
    }
    let spawn = Spawn {
        what: "hull-vmm",
        program: &programs.vmm,
        args,
        log: &files.vmm_log,
        pid_file: &files.vmm_pid,
    };
    let vmm = procs
        .0
        .spawn_vmm(&spawn, None)
        .map_err(TemplateError::Vmm)?;
    wait_for_socket(&files.api_socket, vmm, &files.vmm_log)
        .await
        .map_err(TemplateError::Vmm)?;
    let deadline = Instant::now() + TEMPLATE_BOOT_TIMEOUT;
    wait_agent_marker(&files.console_log, Some(vmm), &files.vmm_log, deadline)
        .await
        .map_err(TemplateError::Boot)?;
    tracing::info!(key = paths.key, "template guest ready; snapshotting");
    request_snapshot(&files.api_socket, &paths.snapshot)
        .await
        .map_err(TemplateError::Snapshot)?;
    if !vmm.wait_exit(SNAPSHOT_TIMEOUT).await {
        return Err(TemplateError::SnapshotExit(format!(
            "still running after {SNAPSHOT_TIMEOUT:?}"
        )));
    }
    match vmm.status().and_then(|s| s.code()) {
        Some(EXIT_SNAPSHOTTED) => {}
        code => {
            return Err(TemplateError::SnapshotExit(format!(
                "exit code {code:?} (want {EXIT_SNAPSHOTTED}): {}",
                log_tail(&files.vmm_log)
            )));
        }
    }
    for f in SNAPSHOT_FILES {
        if !paths.snapshot.join(f).is_file() {
            return Err(TemplateError::SnapshotExit(format!("no {f} written")));
        }
    }
    Ok(())
}

/// Marks the snapshot complete and renames it into place (atomic: a reader sees no
/// template or a whole one). Losing a race to another creator is fine.
fn publish(
    paths: &TemplatePaths,
    config: &VmConfig,
    programs: &HullConfig,
) -> Result<(), TemplateError> {
    let marker = paths.snapshot.join(COMPLETE_MARKER);
    let publish_err = |source| TemplateError::Publish {
        path: marker.clone(),
        source,
    };
    let content = Marker {
        key: paths.key.clone(),
        inputs: inputs(config, &programs.vmm).map_err(publish_err)?,
    };
    let json = serde_json::to_vec(&content).map_err(|e| publish_err(e.into()))?;
    std::fs::write(&marker, json).map_err(publish_err)?;
    match std::fs::rename(&paths.snapshot, &paths.dir) {
        Ok(()) => Ok(()),
        Err(_) if paths.is_complete() => Ok(()),
        Err(source) => Err(TemplateError::Publish {
            path: paths.dir.clone(),
            source,
        }),
    }
}

/// Removes from the templates dir `root` what can never be used again: templates (other
/// than `keep`) whose hull-vmm, kernel or initramfs changed, dirs that are no template,
/// and build dirs of processes that are gone. Guest RAM of templates under /run is RAM.
pub fn collect_garbage(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let garbage = match name.strip_prefix(".build-") {
            Some(rest) => !build_owner_alive(rest),
            None if name == keep => false,
            None => std::fs::read(path.join(COMPLETE_MARKER))
                .ok()
                .and_then(|m| serde_json::from_slice::<Marker>(&m).ok())
                .is_none_or(|m| m.is_outdated()),
        };
        if garbage {
            tracing::info!(dir = %path.display(), "removing an unusable VM template");
            metrics::counter!("hull_leftovers_cleaned_total", "kind" => "vm_template").increment(1);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove it");
            }
        }
    }
}

/// Whether the process that named a build dir `<key>-<pid>` still runs.
fn build_owner_alive(key_pid: &str) -> bool {
    let pid = key_pid
        .rsplit('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod gc_tests {
    use super::*;
    use crate::hull::template::{FileId, TEMPLATES_DIR};

    #[test]
    fn only_what_can_never_be_used_again_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join(TEMPLATES_DIR);
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, "k1").expect("kernel");
        let template = |name: &str, marker: Option<&Marker>| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            if let Some(m) = marker {
                let json = serde_json::to_vec(m).expect("json");
                std::fs::write(d.join(COMPLETE_MARKER), json).expect("marker");
            }
            d
        };
        let current = Marker {
            key: "cur".into(),
            inputs: vec![FileId::of(&kernel).expect("id")],
        };
        let mut old_id = FileId::of(&kernel).expect("id");
        old_id.len += 1;
        let old = Marker {
            key: "old".into(),
            inputs: vec![old_id],
        };
        let kept = template("cur", Some(&current));
        let other_kind = template("other", Some(&current));
        let outdated = template("old", Some(&old));
        let unmarked = template("junk", None);
        let mine = template(&format!(".build-k-{}", std::process::id()), None);
        let dead = template(".build-k-999999999", None);
        let keep = template("new", None);
        collect_garbage(&root, "new");
        assert!(
            kept.exists() && other_kind.exists(),
            "usable templates stay"
        );
        assert!(mine.exists(), "a live process's build stays");
        assert!(keep.exists(), "the one being made stays");
        assert!(!outdated.exists() && !unmarked.exists() && !dead.exists());
        // A rebuilt kernel makes the current one garbage too.
        std::fs::write(&kernel, "k2 rebuilt").expect("kernel");
        collect_garbage(&root, "new");
        assert!(!kept.exists() && !other_kind.exists());
    }
}
