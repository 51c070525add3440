//! ImageFsInfo: bytes (allocated blocks) and inodes used by images and by container
//! writable layers. Hardlinked inodes count once; other file systems mounted below are
//! not entered.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};
use crate::service::ImageService;

/// Usage of one file system area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory reported as the CRI `FilesystemIdentifier.mountpoint`.
    pub mountpoint: PathBuf,
    /// Bytes allocated (st_blocks × 512).
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

/// The CRI ImageFsInfo numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Unix time of the measurement, in nanoseconds.
    pub timestamp_nanos: i64,
    /// Blobs and unpacked layers.
    pub images: FsUsage,
    /// Container writable layers.
    pub containers: FsUsage,
}

impl ImageService {
    /// Measures the image and container areas.
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let root = self.inner.root.clone();
        let containers = self.inner.containers.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut images = FsUsage {
                mountpoint: root.clone(),
                used_bytes: 0,
                inodes_used: 0,
            };
            for sub in ["blobs", "layers"] {
                walk(&root.join(sub), &mut images, &mut seen)?;
            }
            let mut cont = FsUsage {
                mountpoint: containers.clone(),
                used_bytes: 0,
                inodes_used: 0,
            };
            walk(&containers, &mut cont, &mut seen)?;
            let timestamp_nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            Ok(FsInfo {
                timestamp_nanos,
                images,
                containers: cont,
            })
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
    }
}

fn walk(top: &Path, usage: &mut FsUsage, seen: &mut HashSet<(u64, u64)>) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(top) else {
        return Ok(());
    };
    let dev = meta.dev();
    let mut stack = vec![top.to_path_buf()];
    add(&meta, usage, seen);
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::fs("Measure dir", &dir)(e)),
        };
        for entry in rd.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            add(&m, usage, seen);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

fn add(m: &std::fs::Metadata, usage: &mut FsUsage, seen: &mut HashSet<(u64, u64)>) {
    if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
        return;
    }
    usage.used_bytes += m.blocks() * 512;
    usage.inodes_used += 1;
}
