//! [`ImageService`]: the facade hulld's CRI ImageService calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::RegistryConfig;
use crate::content::{ContentStore, Digest};
use crate::error::{ImageError, Result};
use crate::meta::{ImageRecord, MetaStore};
use crate::registry::Registry;
use crate::rootfs;
use crate::unpack::LayerStore;

/// The image service: registry client, content store, unpacked layers, metadata and
/// container rootfs. Cheap to clone.
#[derive(Clone)]
pub struct ImageService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub root: PathBuf,
    pub content: ContentStore,
    pub layers: LayerStore,
    pub meta: MetaStore,
    pub registry: Registry,
    pub containers: PathBuf,
    /// Pulls hold it shared; removal and GC hold it exclusively, so GC never deletes
    /// the blobs of a pull in flight.
    pub gc_lock: tokio::sync::RwLock<()>,
}

impl ImageService {
    /// Opens the service under `root` (e.g. `/var/lib/hull/images`), with its tables in `db`.
    /// Leftovers of interrupted writes and unpacks are removed.
    pub fn open(root: &Path, db: Arc<redb::Database>, registry: RegistryConfig) -> Result<Self> {
        let containers = root.join("containers");
        // Layers keep images' setuid programs and device nodes, and containers' upper dirs
        // hold whatever the guest wrote: none of it within a host user's reach.
        for dir in [root, &root.join("layers"), &containers] {
            rootfs::private_dir(dir)?;
        }
        let inner = Inner {
            root: root.to_path_buf(),
            content: ContentStore::open(root)?,
            layers: LayerStore::open(root)?,
            meta: MetaStore::open(db)?,
            registry: Registry::new(registry)?,
            containers,
            gc_lock: tokio::sync::RwLock::new(()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The root dir given to [`ImageService::open`].
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How many blobs were downloaded since open (each blob once, however many pulls).
    pub fn blobs_fetched(&self) -> u64 {
        self.inner.content.fetched_count()
    }

    /// Every image, or only the one `filter` names (by id, tag or digest reference).
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>> {
        match filter.filter(|f| !f.is_empty()) {
            Some(f) => Ok(self.find(f)?.into_iter().collect()),
            None => self.inner.meta.all(),
        }
    }

    /// The image `name` refers to (id, id prefix, `name:tag` or `name@digest`), if known.
    pub fn find(&self, name: &str) -> Result<Option<ImageRecord>> {
        let all = self.inner.meta.all()?;
        let name = name.trim();
        if let Ok(d) = Digest::parse(name) {
            return Ok(all.into_iter().find(|r| r.id == d.as_str()));
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let id = format!("sha256:{name}");
            return Ok(all.into_iter().find(|r| r.id == id));
        }
        if let Ok(normal) = normalize(name)
            && let Some(r) = all
                .iter()
                .find(|r| r.repo_tags.contains(&normal) || r.repo_digests.contains(&normal))
        {
            return Ok(Some(r.clone()));
        }
        // A unique id prefix, like `docker images` shows.
        if name.len() >= 12 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = all
                .into_iter()
                .filter(|r| r.id["sha256:".len()..].starts_with(name));
            if let (Some(r), None) = (hits.next(), hits.next()) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Like [`ImageService::find`], but unknown is a `NotFound` error.
    pub fn get(&self, name: &str) -> Result<ImageRecord> {
        self.find(name)?
            .ok_or_else(|| ImageError::ImageNotFound(name.to_string()))
    }

    /// Marks an image pinned (kubelet never garbage collects it), e.g. the sandbox image.
    pub fn set_pinned(&self, name: &str, pinned: bool) -> Result<()> {
        let mut rec = self.get(name)?;
        rec.pinned = pinned;
        self.inner.meta.put(&rec)
    }

    /// The CRI verbose `info` map: `info` → JSON with the config, manifest digest and layers.
    pub fn verbose_info(&self, rec: &ImageRecord) -> Result<BTreeMap<String, String>> {
        let id = Digest::parse(&rec.id)?;
        let max = self.inner.registry.config().max_manifest_bytes;
        let config: serde_json::Value = serde_json::from_slice(&self.inner.content.read(&id, max)?)
            .map_err(|e| ImageError::ParseManifest {
                digest: rec.id.clone(),
                reason: e.to_string(),
            })?;
        let layers: Vec<_> = rec
            .layers
            .iter()
            .map(|l| {
                let unpacked = Digest::parse(&l.diff_id).map(|d| self.inner.layers.fs_path(&d)).ok();
                serde_json::json!({
                    "digest": l.digest, "diffID": l.diff_id, "mediaType": l.media_type, "size": l.size,
                    "unpacked": unpacked,
                })
            })
            .collect();
        let info = serde_json::json!({
            "id": rec.id, "manifestDigest": rec.manifest_digest, "imageSpec": config, "layers": layers,
            "pinned": rec.pinned, "pulledAt": rec.pulled_at,
        });
        Ok(BTreeMap::from([("info".to_string(), info.to_string())]))
    }
}

/// The fully qualified form of a reference, as stored in RepoTags/RepoDigests:
/// `docker.io/library/busybox:latest`, `registry.k8s.io/pause@sha256:...`.
pub fn normalize(name: &str) -> Result<String> {
    let r = parse_reference(name)?;
    Ok(match (r.tag(), r.digest()) {
        (_, Some(d)) => format!("{}/{}@{}", r.registry(), r.repository(), d),
        (t, None) => format!(
            "{}/{}:{}",
            r.registry(),
            r.repository(),
            t.unwrap_or("latest")
        ),
    })
}

pub(crate) fn parse_reference(name: &str) -> Result<oci_client::Reference> {
    let bad = |reason: String| ImageError::ParseReference {
        reference: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty".into()));
    }
    let r: oci_client::Reference = name
        .parse()
        .map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
    if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("repository names must be lowercase".into()));
    }
    if let Some(d) = r.digest() {
        Digest::parse(d).map_err(|_| bad(format!("unsupported digest {d}")))?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// hulld's tonic handlers await these futures, so they must be `Send`.
    #[test]
    fn futures_are_send() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("m.redb")).unwrap();
        let svc = ImageService::open(dir.path(), Arc::new(db), RegistryConfig::default()).unwrap();
        assert_send(&svc.pull("busybox", None));
        assert_send(&svc.remove("busybox", &|_| false));
        assert_send(&svc.prepare_rootfs("busybox", "c", dir.path()));
        assert_send(&svc.fs_info());
        assert_send(&svc.gc());
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("registry.k8s.io/pause:3.10").unwrap(),
            "registry.k8s.io/pause:3.10"
        );
        let d = Digest::of(b"x");
        assert_eq!(
            normalize(&format!("127.0.0.1:5000/a/b@{d}")).unwrap(),
            format!("127.0.0.1:5000/a/b@{d}")
        );
        for bad in ["", "UPPER/case", "a@sha256:short", "a:b:c"] {
            assert_eq!(
                normalize(bad).unwrap_err().code(),
                crate::ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }
}
