//! Unpacked layers: each layer (keyed by its diff id) is extracted once into
//! `<root>/layers/<hex>/fs`, via a temp dir renamed into place when complete, so a
//! crash never leaves a half-extracted layer that counts as done.
//!
//! Durability: blobs are fsynced, unpacked layers are a cache derived from them. Syncing
//! every extracted file would put a flush of the whole file system on each pull's
//! critical path, so instead [`LayerStore::sync`] runs one `syncfs` in the background
//! after a pull and then marks the layers it covered (`<hex>/synced`). A layer survives
//! a process crash either way (the page cache does); after a reboot (boot id changed)
//! layers without the mark are dropped on open and re-extracted from their blobs when
//! next needed.

mod layer;
mod scoped;
mod spread;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use layer::{Compression, Limits, extract};

use crate::content::Digest;
use crate::error::{ImageError, Result};
use crate::locks::KeyedLocks;

const SYNCED_MARK: &str = "synced";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The set of unpacked layers.
pub struct LayerStore {
    root: PathBuf,
    locks: KeyedLocks,
    seq: AtomicU64,
    /// Serializes background syncs.
    sync_lock: std::sync::Mutex<()>,
}

impl LayerStore {
    /// Opens (creating) `<root>/layers`, dropping half-extracted temp dirs, and after a
    /// reboot the layers that were never synced.
    pub fn open(root: &Path) -> Result<Self> {
        let root = root.join("layers");
        std::fs::create_dir_all(&root).map_err(ImageError::fs("Create layer dir", &root))?;
        spread::mark_topdir(&root);
        let boot_file = root.join(".boot_id");
        let now = std::fs::read_to_string(BOOT_ID).unwrap_or_default();
        let rebooted = std::fs::read_to_string(&boot_file)
            .map(|b| b != now)
            .unwrap_or(true);
        let rd = std::fs::read_dir(&root).map_err(ImageError::fs("List layers", &root))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let stale = name.starts_with("tmp-")
                || (rebooted && !name.starts_with('.') && !p.join(SYNCED_MARK).exists());
            if stale {
                tracing::info!(layer = %name, "dropping unfinished or unsynced layer");
                std::fs::remove_dir_all(&p).map_err(ImageError::fs("Remove stale layer", &p))?;
            }
        }
        std::fs::write(&boot_file, &now).map_err(ImageError::fs("Write boot id", &boot_file))?;
        Ok(Self {
            root,
            locks: KeyedLocks::default(),
            seq: AtomicU64::new(0),
            sync_lock: Default::default(),
        })
    }

    /// The root of the layer store (for fs info).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The extracted tree of a layer, used as an overlay lower dir.
    pub fn fs_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(diff_id.hex()).join("fs")
    }

    /// Whether the layer is fully extracted.
    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.fs_path(diff_id).is_dir()
    }

    /// Extracts the layer unless it is already there; concurrent callers share the work.
    /// Returns whether this call extracted it.
    pub async fn ensure(
        &self,
        diff_id: &Digest,
        blob: PathBuf,
        compression: Compression,
        limits: Limits,
    ) -> Result<bool> {
        if self.contains(diff_id) {
            return Ok(false);
        }
        let _guard = self.locks.lock(diff_id.as_str()).await;
        if self.contains(diff_id) {
            return Ok(false);
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(format!("tmp-{}-{}-{n}", diff_id.hex(), std::process::id()));
        let dst = self.root.join(diff_id.hex());
        let id = diff_id.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            unpack_into(&tmp, &dst, &blob, compression, &id, limits)
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?;
        let bytes = res?;
        tracing::info!(layer = %diff_id, bytes, ms = started.elapsed().as_millis() as u64, "layer unpacked");
        Ok(true)
    }

    /// Flushes the file system and marks every layer present before the flush as synced.
    /// Blocking; run it off the pull's path.
    pub fn sync(&self) -> Result<()> {
        let _one = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        let unsynced: Vec<PathBuf> = self
            .list()?
            .iter()
            .map(|d| self.root.join(d.hex()))
            .filter(|p| !p.join(SYNCED_MARK).exists())
            .collect();
        if unsynced.is_empty() {
            return Ok(());
        }
        let d = std::fs::File::open(&self.root)
            .map_err(ImageError::fs("Open layer dir", &self.root))?;
        nix::unistd::syncfs(&d).map_err(|e| ImageError::fs("Sync layers", &self.root)(e.into()))?;
        for p in unsynced {
            // A layer removed meanwhile is fine.
            let _ = std::fs::write(p.join(SYNCED_MARK), b"");
        }
        Ok(())
    }

    /// Removes an unpacked layer; absent is fine.
    pub fn remove(&self, diff_id: &Digest) -> Result<()> {
        // Not while a sync writes its marks into the dirs.
        let _one = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.root.join(diff_id.hex());
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::fs("Remove layer", &p)(e))
            }
            _ => Ok(()),
        }
    }

    /// Every extracted layer.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd =
            std::fs::read_dir(&self.root).map_err(ImageError::fs("List layers", &self.root))?;
        Ok(rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            })
            .collect())
    }
}

fn unpack_into(
    tmp: &Path,
    dst: &Path,
    blob: &Path,
    c: Compression,
    id: &Digest,
    limits: Limits,
) -> Result<u64> {
    let fs = tmp.join("fs");
    std::fs::create_dir_all(&fs).map_err(ImageError::fs("Create layer temp dir", &fs))?;
    let res = extract(blob, c, &fs, id, limits).and_then(|bytes| {
        std::fs::rename(tmp, dst)
            .map(|()| bytes)
            .map_err(ImageError::fs("Commit layer", dst))
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    res
}
