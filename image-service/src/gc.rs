//! RemoveImage, garbage collection of unreferenced blobs and layers, container rootfs
//! setup/teardown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::content::Digest;
use crate::error::{ImageError, Result};
use crate::rootfs;
use crate::service::{ImageService, Inner};

/// What a GC pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs removed.
    pub blobs: usize,
    /// Unpacked layers removed.
    pub layers: usize,
}

impl ImageService {
    /// RemoveImage. `name` is an id, a tag or a digest reference; the image it names goes
    /// with all its tags and digests, as containerd does (crictl warns "Removing this
    /// image will delete all of the following tags"), unless `in_use` says a container
    /// uses it (given the image id), which is `FailedPrecondition`. An unknown image is
    /// success (the call is idempotent). Unreferenced content is collected afterwards.
    pub async fn remove(&self, name: &str, in_use: &(dyn Fn(&str) -> bool + Sync)) -> Result<()> {
        let _w = self.inner.gc_lock.write().await;
        let Some(rec) = self.find(name)? else {
            tracing::info!(image = name, "remove: image already gone");
            return Ok(());
        };
        if in_use(&rec.id) {
            return Err(ImageError::InUse(rec.id));
        }
        self.inner.meta.delete(&rec.id)?;
        tracing::info!(image = %rec.id, tags = ?rec.repo_tags, "image removed");
        let stats = run_blocking(self.inner.clone(), collect).await?;
        tracing::info!(?stats, "garbage collected");
        Ok(())
    }

    /// Deletes blobs and unpacked layers no image references.
    pub async fn gc(&self) -> Result<GcStats> {
        let _w = self.inner.gc_lock.write().await;
        run_blocking(self.inner.clone(), collect).await
    }

    /// Mounts the rootfs of a new container at `target`: the image's layers under a fresh
    /// upper/work dir of its own.
    pub async fn prepare_rootfs(
        &self,
        image: &str,
        container_id: &str,
        target: &Path,
    ) -> Result<()> {
        rootfs::validate_container_id(container_id)?;
        let rec = self.get(image)?;
        self.ensure_unpacked(&rec).await?;
        let mut lowers = Vec::with_capacity(rec.layers.len().max(1));
        for l in rec.layers.iter().rev() {
            let p = self.inner.layers.fs_path(&Digest::parse(&l.diff_id)?);
            if !p.is_dir() {
                return Err(ImageError::Fs {
                    op: "Find unpacked layer (pull the image again)",
                    path: p,
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            lowers.push(p);
        }
        if lowers.is_empty() {
            let empty = self.inner.root.join("empty");
            std::fs::create_dir_all(&empty)
                .map_err(ImageError::fs("Create empty layer", &empty))?;
            lowers.push(empty);
        }
        let cdir = rootfs::container_dir(&self.inner.containers, container_id);
        let target = target.to_path_buf();
        let res = tokio::task::spawn_blocking(move || {
            let r = rootfs::mount_overlay(&lowers, &cdir, &target);
            if r.is_err() {
                let _ = std::fs::remove_dir_all(&cdir);
            }
            r
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?;
        tracing::info!(container_id, image = %rec.id, ok = res.is_ok(), "rootfs prepared");
        res
    }

    /// Unmounts a container's rootfs and deletes its writable layer. Idempotent.
    pub async fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<()> {
        rootfs::validate_container_id(container_id)?;
        let cdir = rootfs::container_dir(&self.inner.containers, container_id);
        let target = target.to_path_buf();
        tokio::task::spawn_blocking(move || {
            rootfs::unmount(&target)?;
            match std::fs::remove_dir_all(&cdir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ImageError::fs("Remove writable layer", &cdir)(e))
                }
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
    }

    /// The ids of every container with a writable-layer dir.
    pub fn container_ids(&self) -> Result<Vec<String>> {
        let dir = &self.inner.containers;
        let rd = std::fs::read_dir(dir).map_err(ImageError::fs("List container dirs", dir))?;
        Ok(rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// The writable-layer dir of a container (its `upper` holds the container's changes).
    pub fn container_dir(&self, container_id: &str) -> Result<PathBuf> {
        rootfs::validate_container_id(container_id)?;
        Ok(rootfs::container_dir(&self.inner.containers, container_id))
    }
}

async fn run_blocking<T: Send + 'static>(
    inner: Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
}

fn collect(inner: &Inner) -> Result<GcStats> {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for rec in inner.meta.all()? {
        blobs.insert(rec.id.clone());
        blobs.insert(rec.manifest_digest.clone());
        for d in &rec.repo_digests {
            if let Some((_, digest)) = d.rsplit_once('@') {
                blobs.insert(digest.to_string());
            }
        }
        for l in &rec.layers {
            blobs.insert(l.digest.clone());
            layers.insert(l.diff_id.clone());
        }
    }
    let mut stats = GcStats::default();
    for d in inner.content.list()? {
        if !blobs.contains(d.as_str()) {
            inner.content.remove(&d)?;
            stats.blobs += 1;
        }
    }
    for d in inner.layers.list()? {
        if !layers.contains(d.as_str()) {
            inner.layers.remove(&d)?;
            stats.layers += 1;
        }
    }
    Ok(stats)
}
