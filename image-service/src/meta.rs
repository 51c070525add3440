//! Image metadata in the shared redb database, table `image_records`: image id (config
//! digest) → JSON [`ImageRecord`].

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("image_records");

/// What hull knows about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id: the digest of its config.
    pub id: String,
    /// `name:tag` references, fully qualified (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `name@sha256:...` references (the digest of what the tag pointed to: manifest or index).
    pub repo_digests: Vec<String>,
    /// Compressed size: config plus layer blobs.
    pub size: u64,
    /// Numeric user of the config's `User`, when it is numeric.
    pub uid: Option<i64>,
    /// User name of the config's `User`, when it is not numeric.
    pub username: String,
    /// Pinned images are never garbage collected by kubelet.
    pub pinned: bool,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Digest of the platform-specific manifest.
    pub manifest_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// When the image was last pulled, unix seconds.
    pub pulled_at: u64,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob.
    pub digest: String,
    /// Digest of the uncompressed tar (the unpacked dir's key).
    pub diff_id: String,
    /// Media type of the blob.
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
}

pub(crate) struct MetaStore {
    db: Arc<redb::Database>,
}

fn e(op: &'static str) -> impl FnOnce(String) -> ImageError {
    ImageError::meta(op)
}

impl MetaStore {
    pub(crate) fn open(db: Arc<redb::Database>) -> Result<Self> {
        let txn = db
            .begin_write()
            .map_err(|x| e("Begin write")(x.to_string()))?;
        txn.open_table(IMAGES)
            .map_err(|x| e("Create table")(x.to_string()))?;
        txn.commit().map_err(|x| e("Commit")(x.to_string()))?;
        Ok(Self { db })
    }

    pub(crate) fn all(&self) -> Result<Vec<ImageRecord>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|x| e("Begin read")(x.to_string()))?;
        let table = txn
            .open_table(IMAGES)
            .map_err(|x| e("Open table")(x.to_string()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|x| e("Iterate")(x.to_string()))? {
            let (_, v) = row.map_err(|x| e("Read row")(x.to_string()))?;
            out.push(
                serde_json::from_str(v.value()).map_err(|x| e("Decode record")(x.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Stores `rec`, merging with an existing record of the same id, and moves its tags
    /// away from any other image (which keeps existing, untagged).
    pub(crate) fn upsert(&self, mut rec: ImageRecord) -> Result<ImageRecord> {
        let txn = self
            .db
            .begin_write()
            .map_err(|x| e("Begin write")(x.to_string()))?;
        {
            let mut table = txn
                .open_table(IMAGES)
                .map_err(|x| e("Open table")(x.to_string()))?;
            let mut changed = Vec::new();
            for row in table.iter().map_err(|x| e("Iterate")(x.to_string()))? {
                let (_, v) = row.map_err(|x| e("Read row")(x.to_string()))?;
                let mut other: ImageRecord = serde_json::from_str(v.value())
                    .map_err(|x| e("Decode record")(x.to_string()))?;
                if other.id == rec.id {
                    merge(&mut rec, &other);
                    continue;
                }
                let before = other.repo_tags.len();
                other.repo_tags.retain(|t| !rec.repo_tags.contains(t));
                if other.repo_tags.len() != before {
                    changed.push(other);
                }
            }
            for other in changed.iter().chain(std::iter::once(&rec)) {
                let json =
                    serde_json::to_string(other).map_err(|x| e("Encode record")(x.to_string()))?;
                table
                    .insert(other.id.as_str(), json.as_str())
                    .map_err(|x| e("Insert")(x.to_string()))?;
            }
        }
        txn.commit().map_err(|x| e("Commit")(x.to_string()))?;
        Ok(rec)
    }

    /// Replaces a record as is.
    pub(crate) fn put(&self, rec: &ImageRecord) -> Result<()> {
        let json = serde_json::to_string(rec).map_err(|x| e("Encode record")(x.to_string()))?;
        let txn = self
            .db
            .begin_write()
            .map_err(|x| e("Begin write")(x.to_string()))?;
        {
            let mut table = txn
                .open_table(IMAGES)
                .map_err(|x| e("Open table")(x.to_string()))?;
            table
                .insert(rec.id.as_str(), json.as_str())
                .map_err(|x| e("Insert")(x.to_string()))?;
        }
        txn.commit().map_err(|x| e("Commit")(x.to_string()))
    }

    pub(crate) fn delete(&self, id: &str) -> Result<()> {
        let txn = self
            .db
            .begin_write()
            .map_err(|x| e("Begin write")(x.to_string()))?;
        {
            let mut table = txn
                .open_table(IMAGES)
                .map_err(|x| e("Open table")(x.to_string()))?;
            table.remove(id).map_err(|x| e("Remove")(x.to_string()))?;
        }
        txn.commit().map_err(|x| e("Commit")(x.to_string()))
    }
}

fn merge(rec: &mut ImageRecord, old: &ImageRecord) {
    for t in &old.repo_tags {
        if !rec.repo_tags.contains(t) {
            rec.repo_tags.push(t.clone());
        }
    }
    for d in &old.repo_digests {
        if !rec.repo_digests.contains(d) {
            rec.repo_digests.push(d.clone());
        }
    }
    rec.pinned |= old.pinned;
}
