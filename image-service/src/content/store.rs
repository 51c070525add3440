//! Blobs under `<root>/blobs/sha256/<hex>`, written atomically: a temp file under
//! `<root>/tmp`, hashed while written, fsynced, checked against its digest, then renamed
//! (downloads: see `ingest`). Content whose digest does not match never reaches `blobs/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Digest;
use crate::error::{ImageError, Result};
use crate::locks::KeyedLocks;

/// The content-addressed blob store.
pub struct ContentStore {
    blobs: PathBuf,
    tmp: PathBuf,
    pub(super) locks: KeyedLocks,
    pub(super) fetched: AtomicU64,
    tmp_seq: AtomicU64,
}

/// Partial downloads older than this are dropped on open instead of resumed.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl ContentStore {
    /// Opens (creating) the store under `root`, dropping leftovers of interrupted writes
    /// except recent partial downloads, which later pulls resume.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs).map_err(ImageError::fs("Create blob dir", &blobs))?;
        std::fs::create_dir_all(&tmp).map_err(ImageError::fs("Create temp dir", &tmp))?;
        clean_tmp(&tmp)?;
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

    /// Where a download of `digest` is written (and kept if it breaks, to resume).
    pub(super) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.tmp.join(format!("{}.partial", digest.hex()))
    }

    fn tmp_path(&self, digest: &Digest) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()))
    }

    pub(super) fn commit(&self, tmp: &Path, digest: &Digest) -> Result<()> {
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

/// Removes everything in the temp dir but partial downloads younger than a day.
fn clean_tmp(tmp: &Path) -> Result<()> {
    let rd = std::fs::read_dir(tmp).map_err(ImageError::fs("List temp dir", tmp))?;
    for e in rd.flatten() {
        let p = e.path();
        let keep = p.extension().is_some_and(|x| x == "partial")
            && e.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age < PARTIAL_MAX_AGE)
            });
        if keep {
            continue;
        }
        let res = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        res.map_err(ImageError::fs("Clean temp dir", &p))?;
    }
    Ok(())
}
