//! Blobs under `<root>/blobs/sha256/<hex>`, written atomically: a temp file under
//! `<root>/tmp`, hashed while written, fsynced, checked against its digest, then renamed.
//! Content whose digest does not match never reaches `blobs/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::Digest;
use crate::error::{ImageError, Result};
use crate::locks::KeyedLocks;

/// The content-addressed blob store.
pub struct ContentStore {
    blobs: PathBuf,
    tmp: PathBuf,
    locks: KeyedLocks,
    fetched: AtomicU64,
    tmp_seq: AtomicU64,
}

impl ContentStore {
    /// Opens (creating) the store under `root`, dropping leftovers of interrupted writes.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs).map_err(ImageError::fs("Create blob dir", &blobs))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(ImageError::fs("Clean temp dir", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(ImageError::fs("Create temp dir", &tmp))?;
        Ok(Self {
            blobs,
            tmp,
            locks: KeyedLocks::default(),
            fetched: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The path of a blob (present or not).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// How many blobs were ingested from a stream since open (for tests and metrics).
    pub fn fetched_count(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Reads a whole blob, refusing more than `limit` bytes.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let meta = std::fs::metadata(&path).map_err(ImageError::fs("Stat blob", &path))?;
        if meta.len() > limit {
            return Err(ImageError::SizeLimit {
                what: digest.to_string(),
                limit,
            });
        }
        std::fs::read(&path).map_err(ImageError::fs("Read blob", &path))
    }

    /// Stores `data` under `digest` after checking it hashes to it.
    pub fn write_bytes(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let actual = Digest::of(data);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.contains(digest) {
            return Ok(());
        }
        let tmp = self.tmp_path(digest);
        let mut f =
            std::fs::File::create(&tmp).map_err(ImageError::fs("Create temp blob", &tmp))?;
        let res = f.write_all(data).and_then(|()| f.sync_all());
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::fs("Write temp blob", &tmp)(e));
        }
        self.commit(&tmp, digest)
    }

    /// Ensures the blob is present: if it is not, runs `open_stream` and writes what it yields.
    /// Concurrent callers for one digest share one download (the others wait, then find it).
    /// `max_size` bounds the blob (its descriptor's size).
    pub async fn ensure<F, Fut, S>(
        &self,
        digest: &Digest,
        max_size: u64,
        open_stream: F,
    ) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<S>>,
        S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        if self.contains(digest) {
            return Ok(false);
        }
        let _guard = self.locks.lock(digest.as_str()).await;
        if self.contains(digest) {
            return Ok(false);
        }
        let stream = open_stream().await?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_path(digest);
        let res = self.write_stream(&tmp, digest, max_size, stream).await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        self.commit(&tmp, digest)?;
        Ok(true)
    }

    async fn write_stream<S>(
        &self,
        tmp: &Path,
        digest: &Digest,
        max: u64,
        mut stream: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let f = tokio::fs::File::create(tmp)
            .await
            .map_err(ImageError::fs("Create temp blob", tmp))?;
        let mut w = tokio::io::BufWriter::with_capacity(1 << 20, f);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ImageError::FetchBlob {
                digest: digest.to_string(),
                source,
            })?;
            written += chunk.len() as u64;
            if written > max {
                return Err(ImageError::SizeLimit {
                    what: digest.to_string(),
                    limit: max,
                });
            }
            hasher.update(&chunk);
            w.write_all(&chunk)
                .await
                .map_err(ImageError::fs("Write temp blob", tmp))?;
        }
        w.flush()
            .await
            .map_err(ImageError::fs("Write temp blob", tmp))?;
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        w.into_inner()
            .sync_all()
            .await
            .map_err(ImageError::fs("Sync temp blob", tmp))
    }

    fn tmp_path(&self, digest: &Digest) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()))
    }

    fn commit(&self, tmp: &Path, digest: &Digest) -> Result<()> {
        let dst = self.path(digest);
        std::fs::rename(tmp, &dst).map_err(ImageError::fs("Commit blob", &dst))?;
        std::fs::File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .map_err(ImageError::fs("Sync blob dir", &self.blobs))
    }

    /// Deletes a blob; absent is fine.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::fs("Remove blob", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob present.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd =
            std::fs::read_dir(&self.blobs).map_err(ImageError::fs("List blobs", &self.blobs))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(ImageError::fs("List blobs", &self.blobs))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{name}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: &[&'static [u8]]) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn ingest_verifies_and_skips_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        let fetched = store
            .ensure(&d, 100, || async { Ok(stream_of(&[b"hello ", b"world"])) })
            .await
            .unwrap();
        assert!(fetched);
        assert_eq!(store.read(&d, 100).unwrap(), b"hello world");
        let again = store
            .ensure(&d, 100, || async { Ok(stream_of(&[b"zzz"])) })
            .await
            .unwrap();
        assert!(!again);
        assert_eq!(store.fetched_count(), 1);
    }

    #[tokio::test]
    async fn mismatch_and_oversize_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"good");
        let err = store
            .ensure(&d, 100, || async { Ok(stream_of(&[b"evil"])) })
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let err = store
            .ensure(&d, 2, || async { Ok(stream_of(&[b"good"])) })
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::SizeLimit { .. }), "{err}");
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(store.write_bytes(&d, b"bad").is_err());
        assert!(!store.contains(&d));
    }
}
