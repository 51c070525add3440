//! Downloading a blob into the store: streamed into `<tmp>/<hex>.partial`, hashed while
//! written, fsynced, checked against its digest, then renamed into `blobs/`.
//!
//! A download that breaks midway keeps its partial file; the next attempt (a retry
//! within the same pull, or a later pull, also after a restart) asks the registry for the
//! rest with an HTTP `Range` request, re-hashing the bytes it already has first. If the
//! registry answers with the whole blob instead, the partial file is overwritten. Only
//! the final digest check decides what counts, so a resumed blob is as verified as one
//! fetched in one go; a mismatch or an oversized blob deletes the partial file.

use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{ContentStore, Digest};
use crate::error::{ImageError, Result};

/// Attempts per blob within one `ensure` call (the first one and its resumptions).
const MAX_ATTEMPTS: u32 = 4;

/// A blob's byte stream, starting at `offset` (0: the whole blob).
pub struct BlobStream<S> {
    /// The bytes from `offset` on.
    pub stream: S,
    /// Where the stream starts in the blob.
    pub offset: u64,
}

/// How one download attempt ended, when it did not complete the blob.
enum Failed {
    /// The stream broke; the partial file holds what arrived (resumable).
    Interrupted(ImageError),
    /// Anything else; the partial file is useless.
    Fatal(ImageError),
}

impl ContentStore {
    /// Ensures the blob is present: if it is not, downloads it with `open_stream`, which
    /// is given the offset to start at (bytes already on disk from an interrupted try)
    /// and says where the stream it opened really starts. Concurrent callers for one
    /// digest share one download (the others wait, then find it). `max_size` bounds the
    /// blob (its descriptor's size). Returns whether this call downloaded it.
    pub async fn ensure<F, Fut, S>(
        &self,
        digest: &Digest,
        max_size: u64,
        mut open_stream: F,
    ) -> Result<bool>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<BlobStream<S>>>,
        S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        if self.contains(digest) {
            return Ok(false);
        }
        let _guard = self.locks.lock(digest.as_str()).await;
        if self.contains(digest) {
            return Ok(false);
        }
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let partial = self.partial_path(digest);
        let mut attempt = 1;
        loop {
            let have = partial_len(&partial, max_size).await;
            let res = match open_stream(have).await {
                Ok(s) if s.offset == 0 || s.offset == have => {
                    if s.offset > 0 {
                        tracing::info!(blob = %digest, offset = s.offset, "resuming download");
                    }
                    download(&partial, digest, max_size, s).await
                }
                Ok(s) => Err(Failed::Fatal(ImageError::FetchBlob {
                    digest: digest.to_string(),
                    source: std::io::Error::other(format!(
                        "asked for bytes from {have}, got a stream from {}",
                        s.offset
                    )),
                })),
                // Nothing was written; what is on disk stays resumable.
                Err(e) => return Err(e),
            };
            match res {
                Ok(()) => break,
                Err(Failed::Interrupted(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(blob = %digest, attempt, error = %e, "download interrupted, resuming");
                    attempt += 1;
                }
                Err(Failed::Interrupted(e)) => return Err(e),
                Err(Failed::Fatal(e)) => {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(e);
                }
            }
        }
        self.commit(&partial, digest)?;
        Ok(true)
    }
}

/// The length of a partial download worth resuming (0 if none, or if it cannot be a
/// prefix of the blob).
async fn partial_len(partial: &Path, max: u64) -> u64 {
    match tokio::fs::metadata(partial).await {
        Ok(m) if m.is_file() && m.len() < max => m.len(),
        _ => 0,
    }
}

/// One download attempt: the partial file is reopened at `s.offset` (its first bytes
/// re-hashed) and the stream appended to it, hashed as it is written.
async fn download<S>(
    partial: &Path,
    digest: &Digest,
    max: u64,
    s: BlobStream<S>,
) -> std::result::Result<(), Failed>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    let (file, mut hasher) = reopen(partial, s.offset)
        .await
        .map_err(fatal("Open temp blob", partial))?;
    let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut written = s.offset;
    let mut stream = s.stream;
    let mut broken = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(source) => {
                broken = Some(source);
                break;
            }
        };
        written += chunk.len() as u64;
        if written > max {
            return Err(Failed::Fatal(ImageError::SizeLimit {
                what: digest.to_string(),
                limit: max,
            }));
        }
        hasher.update(&chunk);
        w.write_all(&chunk)
            .await
            .map_err(fatal("Write temp blob", partial))?;
        if crate::faults::armed("pull.blob_partial") {
            w.flush().await.map_err(fatal("Write temp blob", partial))?;
            crate::faults::pause_at("pull.blob_partial").await;
        }
    }
    w.flush().await.map_err(fatal("Write temp blob", partial))?;
    // A stream that broke after the last byte (a client-side check failing at the end)
    // still delivered the blob; the digest decides.
    if let Some(source) = broken
        && written < max
    {
        return Err(Failed::Interrupted(ImageError::FetchBlob {
            digest: digest.to_string(),
            source,
        }));
    }
    let actual = Digest::from_hasher(hasher);
    if &actual != digest {
        return Err(Failed::Fatal(ImageError::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        }));
    }
    w.into_inner()
        .sync_all()
        .await
        .map_err(fatal("Sync temp blob", partial))
}

fn fatal<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Failed + 'a {
    move |e| Failed::Fatal(ImageError::fs(op, path)(e))
}

/// Opens the partial file for writing at `offset`, with a hasher fed its first
/// `offset` bytes (a fresh, empty file when `offset` is 0).
async fn reopen(partial: &Path, offset: u64) -> std::io::Result<(tokio::fs::File, Sha256)> {
    let mut hasher = Sha256::new();
    if offset == 0 {
        return Ok((tokio::fs::File::create(partial).await?, hasher));
    }
    let mut f = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = offset;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "partial blob shrank",
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    f.set_len(offset).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok((f, hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunks = Vec<std::io::Result<Bytes>>;

    fn whole(
        parts: &[&'static [u8]],
    ) -> Result<BlobStream<futures::stream::Iter<std::vec::IntoIter<std::io::Result<Bytes>>>>> {
        let v: Chunks = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Ok(BlobStream {
            stream: futures::stream::iter(v),
            offset: 0,
        })
    }

    #[tokio::test]
    async fn ingest_verifies_and_skips_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        let fetched = store
            .ensure(&d, 11, |_| async { whole(&[b"hello ", b"world"]) })
            .await
            .unwrap();
        assert!(fetched);
        assert_eq!(store.read(&d, 100).unwrap(), b"hello world");
        let again = store
            .ensure(&d, 11, |_| async { whole(&[b"zzz"]) })
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
            .ensure(&d, 4, |_| async { whole(&[b"evil"]) })
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let err = store
            .ensure(&d, 2, |_| async { whole(&[b"good"]) })
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

    /// The first stream breaks after "hello "; the retry must ask for the rest only.
    #[tokio::test]
    async fn broken_download_resumes_from_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        let offsets = std::sync::Mutex::new(Vec::new());
        let fetched = store
            .ensure(&d, 11, |offset| {
                offsets.lock().unwrap().push(offset);
                async move {
                    let v: Chunks = if offset == 0 {
                        vec![
                            Ok(Bytes::from_static(b"hello ")),
                            Err(std::io::Error::other("reset")),
                        ]
                    } else {
                        vec![Ok(Bytes::copy_from_slice(
                            &b"hello world"[offset as usize..],
                        ))]
                    };
                    Ok(BlobStream {
                        stream: futures::stream::iter(v),
                        offset,
                    })
                }
            })
            .await
            .unwrap();
        assert!(fetched);
        assert_eq!(*offsets.lock().unwrap(), [0, 6]);
        assert_eq!(store.read(&d, 100).unwrap(), b"hello world");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    /// A download that keeps breaking leaves its partial file for a later pull (also
    /// after a restart), which resumes it; a registry that ignores the range restarts it.
    #[tokio::test]
    async fn partial_file_survives_for_a_later_pull() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        let broken = |offset: u64| async move {
            let v: Chunks = vec![
                Ok(Bytes::copy_from_slice(
                    &b"hello world"[offset as usize..offset as usize + 1],
                )),
                Err(std::io::Error::other("reset")),
            ];
            Ok(BlobStream {
                stream: futures::stream::iter(v),
                offset,
            })
        };
        let err = store.ensure(&d, 11, broken).await.unwrap_err();
        assert!(matches!(err, ImageError::FetchBlob { .. }), "{err}");
        assert!(!store.contains(&d));
        let partial = store.partial_path(&d);
        assert_eq!(
            std::fs::read(&partial).unwrap(),
            b"hell",
            "4 attempts, 1 byte each"
        );

        let store = ContentStore::open(dir.path()).unwrap();
        assert!(partial.exists(), "kept across reopen");
        let seen = std::sync::Mutex::new(None);
        store
            .ensure(&d, 11, |offset| {
                *seen.lock().unwrap() = Some(offset);
                async { whole(&[b"hello world"]) } // the whole blob, not the range
            })
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(4));
        assert_eq!(store.read(&d, 100).unwrap(), b"hello world");
        assert!(!partial.exists());
    }
}
