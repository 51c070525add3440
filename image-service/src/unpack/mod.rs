//! Unpacked layers: each layer (keyed by its diff id) is extracted once into
//! `<root>/layers/<hex>/fs`, via a temp dir renamed into place when complete, so a
//! crash never leaves a half-extracted layer that counts as done.

mod layer;
mod scoped;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use layer::{Compression, Limits, extract};

use crate::content::Digest;
use crate::error::{ImageError, Result};
use crate::locks::KeyedLocks;

/// The set of unpacked layers.
pub struct LayerStore {
    root: PathBuf,
    locks: KeyedLocks,
    seq: AtomicU64,
}

impl LayerStore {
    /// Opens (creating) `<root>/layers`, dropping half-extracted temp dirs.
    pub fn open(root: &Path) -> Result<Self> {
        let root = root.join("layers");
        std::fs::create_dir_all(&root).map_err(ImageError::fs("Create layer dir", &root))?;
        let rd = std::fs::read_dir(&root).map_err(ImageError::fs("List layers", &root))?;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(ImageError::fs("Remove stale layer", &p))?;
            }
        }
        Ok(Self {
            root,
            locks: KeyedLocks::default(),
            seq: AtomicU64::new(0),
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

    /// Removes an unpacked layer; absent is fine.
    pub fn remove(&self, diff_id: &Digest) -> Result<()> {
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
        // Flush the extracted files before the rename makes the layer count as done.
        let d = std::fs::File::open(&fs).map_err(ImageError::fs("Open layer dir", &fs))?;
        nix::unistd::syncfs(&d).map_err(|e| ImageError::fs("Sync layer", &fs)(e.into()))?;
        std::fs::rename(tmp, dst).map_err(ImageError::fs("Commit layer", dst))?;
        Ok(bytes)
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    res
}
