//! PullImage: resolve → store manifests → config → layers (download and unpack, a few at
//! once, each blob and layer once however many pulls ask) → record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use tracing::Instrument as _;

use crate::config::AuthConfig;
use crate::content::{BlobStream, Digest};
use crate::error::{ImageError, Result};
use crate::meta::{ImageRecord, LayerRecord};
use crate::registry::Session;
use crate::registry::manifest::{self, Descriptor};
use crate::service::{ImageService, parse_reference};
use crate::unpack::{Compression, Limits};

/// How long after a pull its new layers are flushed to disk.
const SYNC_DELAY: Duration = Duration::from_secs(5);

/// How often a running pull logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    layers_done: AtomicU64,
}

/// Aborts the progress logger when the pull ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ImageService {
    /// Pulls `image` (tag or digest reference), unpacks its layers and records it.
    /// Returns the record; its `id` is the CRI image ref.
    pub async fn pull(&self, image: &str, auth: Option<&AuthConfig>) -> Result<ImageRecord> {
        let reference = parse_reference(image)?;
        let span = tracing::info_span!("pull_image", image = %reference.whole());
        let started = Instant::now();
        let res = self.pull_inner(reference, auth).instrument(span).await;
        // hulld's metrics endpoint shows these (a no-op without a metrics recorder).
        let result = if res.is_ok() { "ok" } else { "error" };
        metrics::counter!("hull_image_pulls_total", "result" => result).increment(1);
        if res.is_ok() {
            metrics::histogram!("hull_image_pull_duration_seconds").record(started.elapsed());
        }
        res
    }

    async fn pull_inner(
        &self,
        reference: oci_client::Reference,
        auth: Option<&AuthConfig>,
    ) -> Result<ImageRecord> {
        let started = Instant::now();
        let _gc = self.inner.gc_lock.read().await;
        let resolved = self.inner.registry.resolve(&reference, auth).await?;
        let resolve_ms = started.elapsed().as_millis() as u64;
        tracing::info!(endpoint = %resolved.session.host, manifest = %resolved.manifest_digest, ms = resolve_ms, "resolved");
        for (d, b) in &resolved.documents {
            self.inner.content.write_bytes(d, b)?;
        }
        let m = &resolved.manifest;
        let max_doc = self.inner.registry.config().max_manifest_bytes;
        let config_digest = Digest::parse(&m.config.digest)?;
        let config_size = desc_size(&m.config, max_doc)?;
        let session = &resolved.session;
        self.inner
            .content
            .ensure(&config_digest, config_size, |offset| {
                session.blob(&config_digest, &m.config.media_type, config_size, offset)
            })
            .await?;
        let config = manifest::parse_config(
            &config_digest,
            &self.inner.content.read(&config_digest, max_doc)?,
        )?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(ImageError::ParseManifest {
                digest: config_digest.to_string(),
                reason: format!(
                    "{} diff ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    m.layers.len()
                ),
            });
        }
        let progress = Arc::new(Progress::default());
        let _logger = AbortOnDrop(tokio::spawn(log_progress(progress.clone(), m.layers.len())));
        let mut layers = Vec::with_capacity(m.layers.len());
        for (l, diff) in m.layers.iter().zip(&config.rootfs.diff_ids) {
            layers.push(LayerRecord {
                digest: Digest::parse(&l.digest)?.to_string(),
                diff_id: Digest::parse(diff)?.to_string(),
                media_type: l.media_type.clone(),
                size: desc_size(l, u64::MAX)?,
            });
        }
        let n = self.inner.registry.config().max_concurrent_layers;
        // Blobs first, then layers: each blob's fsync then only waits for its own data,
        // not for what concurrent unpacks wrote meanwhile (ext4 data=ordered commits
        // flush all of it). Jobs are collected first: a `map` closure borrowing here would
        // make the pull future not `Send` for every lifetime, which tonic handlers need.
        let fetches: Vec<_> = layers
            .iter()
            .map(|l| self.fetch_blob(session, l, &progress))
            .collect();
        let fetch_started = Instant::now();
        futures::stream::iter(fetches)
            .buffer_unordered(n)
            .try_collect::<Vec<()>>()
            .await?;
        let fetch_ms = fetch_started.elapsed().as_millis() as u64;
        crate::faults::pause_at("pull.blobs_fetched").await;
        let unpack_started = Instant::now();
        let unpacks: Vec<_> = layers
            .iter()
            .map(|l| self.unpack_layer(l, &progress))
            .collect();
        futures::stream::iter(unpacks)
            .buffer_unordered(n)
            .try_collect::<Vec<()>>()
            .await?;
        let unpack_ms = unpack_started.elapsed().as_millis() as u64;
        crate::faults::pause_at("pull.unpacked").await;
        let (uid, username) =
            manifest::user_of(config.config.and_then(|c| c.user).as_deref().unwrap_or(""));
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        let repo_tags = match (reference.tag(), reference.digest()) {
            (_, Some(_)) => vec![],
            (t, None) => vec![format!("{repo}:{}", t.unwrap_or("latest"))],
        };
        let rec = ImageRecord {
            id: config_digest.to_string(),
            repo_tags,
            repo_digests: vec![format!("{repo}@{}", resolved.top_digest)],
            size: config_size + layers.iter().map(|l| l.size).sum::<u64>(),
            uid,
            username,
            pinned: false,
            annotations: m.annotations.clone(),
            manifest_digest: resolved.manifest_digest.to_string(),
            layers,
            pulled_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let rec = self.inner.meta.upsert(rec)?;
        metrics::counter!("hull_image_pull_bytes_total")
            .increment(progress.bytes.load(Ordering::Relaxed));
        self.sync_layers_in_background();
        tracing::info!(
            id = %rec.id,
            layers = rec.layers.len(),
            bytes = progress.bytes.load(Ordering::Relaxed),
            resolve_ms,
            fetch_ms,
            unpack_ms,
            ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(rec)
    }

    /// Flushes new layers off the pull's path (see `unpack` for why), a little later, so
    /// that a burst of pulls (kubelet pulling a pod's images) is not slowed by flushes of
    /// the whole file system in between; flushes scheduled meanwhile find nothing to do.
    fn sync_layers_in_background(&self) {
        // Weak: a closed service (and its database) is not kept alive by a pending flush.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(SYNC_DELAY).await;
            let Some(inner) = weak.upgrade() else { return };
            let res = tokio::task::spawn_blocking(move || inner.layers.sync()).await;
            if let Ok(Err(e)) = res {
                tracing::warn!(error = %e, "syncing unpacked layers failed");
            }
        });
    }

    /// Flushes unpacked layers to disk now and marks them synced (the same as the
    /// background flush after each pull, but waited for). For shutdown and benchmarks.
    pub async fn sync(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.layers.sync())
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
    }

    /// Makes sure every layer of `rec` is unpacked, re-extracting from the stored blobs
    /// what a reboot dropped. The blobs must be present.
    pub(crate) async fn ensure_unpacked(&self, rec: &ImageRecord) -> Result<()> {
        let cfg = self.inner.registry.config();
        let limits = Limits {
            max_bytes: cfg.max_layer_bytes,
            max_entries: cfg.max_layer_entries,
        };
        for l in &rec.layers {
            let digest = Digest::parse(&l.digest)?;
            let diff_id = Digest::parse(&l.diff_id)?;
            if self.inner.layers.contains(&diff_id) {
                continue;
            }
            if !self.inner.content.contains(&digest) {
                return Err(ImageError::ImageNotFound(format!(
                    "{} (layer blob {digest} missing; pull it again)",
                    rec.id
                )));
            }
            let compression = Compression::from_media_type(&l.media_type)?;
            self.inner
                .layers
                .ensure(
                    &diff_id,
                    self.inner.content.path(&digest),
                    compression,
                    limits,
                )
                .await?;
        }
        self.sync_layers_in_background();
        Ok(())
    }

    /// Downloads one layer blob (once, however many pulls want it).
    async fn fetch_blob(
        &self,
        session: &Session,
        l: &LayerRecord,
        progress: &Progress,
    ) -> Result<()> {
        let digest = Digest::parse(&l.digest)?;
        let d = &digest;
        let fetched = self
            .inner
            .content
            .ensure(d, l.size, |offset| async move {
                let s = session.blob(d, &l.media_type, l.size, offset).await?;
                Ok(BlobStream {
                    stream: s.stream.inspect_ok(|b| {
                        progress.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }),
                    offset: s.offset,
                })
            })
            .await?;
        tracing::debug!(layer = %digest, fetched, "blob present");
        Ok(())
    }

    /// Unpacks one layer from its stored blob (once, however many pulls want it).
    async fn unpack_layer(&self, l: &LayerRecord, progress: &Progress) -> Result<()> {
        let digest = Digest::parse(&l.digest)?;
        let diff_id = Digest::parse(&l.diff_id)?;
        let compression = Compression::from_media_type(&l.media_type)?;
        let cfg = self.inner.registry.config();
        let limits = Limits {
            max_bytes: cfg.max_layer_bytes,
            max_entries: cfg.max_layer_entries,
        };
        let blob = self.inner.content.path(&digest);
        self.inner
            .layers
            .ensure(&diff_id, blob, compression, limits)
            .await?;
        progress.layers_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn desc_size(d: &Descriptor, max: u64) -> Result<u64> {
    let size = u64::try_from(d.size).map_err(|_| ImageError::ParseManifest {
        digest: d.digest.clone(),
        reason: "negative size".into(),
    })?;
    if size > max {
        return Err(ImageError::SizeLimit {
            what: d.digest.clone(),
            limit: max,
        });
    }
    Ok(size)
}

async fn log_progress(p: Arc<Progress>, total: usize) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        tracing::info!(
            bytes = p.bytes.load(Ordering::Relaxed),
            layers_done = p.layers_done.load(Ordering::Relaxed),
            layers = total,
            "pull in progress"
        );
    }
}
