//! Extracting one layer archive into its own directory.
//!
//! Whiteouts are converted to overlayfs' format, so the layers can be stacked by an
//! overlay mount: `.wh.<name>` becomes a character device 0/0 named `<name>`, and
//! `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Ownership, modes,
//! xattrs (PAX `SCHILY.xattr.*`), mtimes, hardlinks, symlinks and device nodes are kept.
//! Every entry is resolved with [`Scope`]: no `..`, no writing through symlinks, hardlinks
//! only to files already extracted into this layer. The uncompressed stream is hashed and
//! must match the layer's diff id from the image config; its size and entry count are
//! bounded.
//!
//! End of the stream: like Go's `archive/tar` (which containerd uses), a stream that ends
//! right after the last entry's data, without its padding or the two end-of-archive
//! blocks, is a complete archive; one that ends inside an entry's data, or inside a
//! header, is refused ([`Eof`] tells the two apart).

use std::cell::Cell;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::scoped::{Scope, ScopeError, components};
use crate::content::Digest;
use crate::error::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Bounds applied while extracting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum uncompressed bytes.
    pub max_bytes: u64,
    /// Maximum number of archive entries.
    pub max_entries: u64,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Maps an OCI or Docker layer media type.
    pub fn from_media_type(mt: &str) -> Result<Self> {
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") {
            Ok(Self::Gzip)
        } else if mt.ends_with("+zstd") {
            Ok(Self::Zstd)
        } else if mt.ends_with(".tar") {
            Ok(Self::None)
        } else {
            Err(ImageError::UnsupportedMediaType(mt.to_string()))
        }
    }
}

/// Marks the read error raised at the size limit, wherever the tar reader wraps it.
#[derive(Debug)]
struct SizeExceeded;
impl std::fmt::Display for SizeExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("layer exceeds its size limit")
    }
}
impl std::error::Error for SizeExceeded {}

/// A read error of layer `layer`, or `SizeLimit` when it was the size bound.
fn read_error(layer: &str, max: u64, e: std::io::Error) -> ImageError {
    // io::Error::source() skips the wrapped error itself, so start from get_ref().
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(err) = cur {
        if err.is::<SizeExceeded>() {
            return ImageError::SizeLimit {
                what: format!("layer {layer}"),
                limit: max,
            };
        }
        cur = err.source();
    }
    ImageError::ReadLayer {
        layer: layer.to_string(),
        source: e,
    }
}

/// Decoded chunks in flight between the decoding thread and the extracting one.
const PIPE_CHUNKS: usize = 8;
/// Size of one decoded chunk.
const CHUNK: usize = 256 << 10;

/// The extracting side of the decode pipeline.
struct Pipe {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes handed out so far, and where the stream ended once it has.
    eof: Rc<Eof>,
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => (self.buf, self.pos) = (chunk, 0),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // The decoder finished.
                    if !out.is_empty() {
                        self.eof.ended_at.set(Some(self.eof.read.get()));
                    }
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.eof.read.set(self.eof.read.get() + n as u64);
        Ok(n)
    }
}

/// Where the uncompressed stream ended, to tell a missing tail from a cut entry.
#[derive(Debug, Default)]
struct Eof {
    /// Bytes read from the stream so far.
    read: Cell<u64>,
    /// The stream's length, once a read found its end.
    ended_at: Cell<Option<u64>>,
}

/// Tar's record size: each entry's data is padded to it, and the archive ends with two
/// zero blocks.
const BLOCK: u64 = 512;

impl Eof {
    /// Whether an error of the tar reader after an entry whose data ended at `data_end`
    /// is only the missing padding and end-of-archive blocks: the stream ended after the
    /// whole data and before the next header could begin. A stream cut inside the data
    /// (or inside a later header) is not.
    fn only_tail_missing(&self, data_end: u64) -> bool {
        let padded_end = data_end.div_ceil(BLOCK) * BLOCK;
        self.ended_at
            .get()
            .is_some_and(|end| (data_end..=padded_end).contains(&end))
    }
}

/// Decompresses and hashes on a thread of its own, so a layer's decoding and its file
/// writes run in parallel. Returns the reader and the thread, which yields the hash of
/// the whole uncompressed stream and its size.
fn spawn_decoder(
    mut decoded: Box<dyn Read + Send>,
    max: u64,
    eof: Rc<Eof>,
) -> (Pipe, std::thread::JoinHandle<(Sha256, u64)>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_CHUNKS);
    let handle = std::thread::spawn(move || {
        let (mut hasher, mut count) = (Sha256::new(), 0u64);
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let msg = match decoded.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    count += n as u64;
                    if count > max {
                        Err(std::io::Error::other(SizeExceeded))
                    } else {
                        hasher.update(&chunk[..n]);
                        chunk.truncate(n);
                        Ok(chunk)
                    }
                }
                Err(e) => Err(e),
            };
            let stop = msg.is_err();
            // A closed pipe means the extractor gave up; stop decoding.
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
        (hasher, count)
    });
    (
        Pipe {
            rx,
            buf: Vec::new(),
            pos: 0,
            eof,
        },
        handle,
    )
}

/// Extracts `blob` into the existing empty dir `dest`; returns the uncompressed size.
pub fn extract(
    blob: &Path,
    compression: Compression,
    dest: &Path,
    diff_id: &Digest,
    limits: Limits,
) -> Result<u64> {
    let layer = diff_id.to_string();
    let file = std::fs::File::open(blob).map_err(ImageError::fs("Open layer blob", blob))?;
    let file = std::io::BufReader::with_capacity(256 << 10, file);
    let decoded: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(
            |source| ImageError::ReadLayer {
                layer: layer.clone(),
                source,
            },
        )?),
    };
    let max = limits.max_bytes;
    let eof = Rc::new(Eof::default());
    let (mut reader, decoder) = spawn_decoder(decoded, max, Rc::clone(&eof));
    let mut ex = Extractor {
        layer: &layer,
        max,
        scope: Scope::new(dest),
        dirs: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive.entries().map_err(|e| read_error(&layer, max, e))?;
        let mut n = 0u64;
        // Where the data of the last entry ends in the stream.
        let mut data_end = 0u64;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) if n > 0 && eof.only_tail_missing(data_end) => {
                    tracing::debug!(
                        layer,
                        data_end,
                        "layer ends without tar padding or end-of-archive blocks"
                    );
                    break;
                }
                Err(e) => return Err(read_error(&layer, max, e)),
            };
            data_end = entry.raw_file_position().saturating_add(entry.size());
            n += 1;
            if n > limits.max_entries {
                return Err(ImageError::SizeLimit {
                    what: format!("entries of layer {layer}"),
                    limit: limits.max_entries,
                });
            }
            ex.entry(entry)?;
        }
    }
    // Trailing padding after the end-of-archive blocks still counts for the diff id.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| read_error(&layer, max, e))?;
    drop(reader);
    let (hasher, count) = decoder
        .join()
        .map_err(|_| ImageError::Task(format!("decoder of layer {layer} panicked")))?;
    let actual = Digest::from_hasher(hasher);
    if &actual != diff_id {
        return Err(ImageError::DigestMismatch {
            expected: layer,
            actual: actual.to_string(),
        });
    }
    ex.finish_dirs()?;
    Ok(count)
}

/// A numeric header field as Go's `archive/tar` reads it: a field of only NULs and spaces
/// is 0 (the tar crate refuses it; found by the property tests).
fn numeric(field: &[u8], parsed: std::io::Result<u64>) -> std::io::Result<u64> {
    match parsed {
        Err(_) if field.iter().all(|b| matches!(b, 0 | b' ')) => Ok(0),
        other => other,
    }
}

struct Extractor<'a> {
    layer: &'a str,
    max: u64,
    scope: Scope,
    /// Directories whose mtime is set last (adding children changes it).
    dirs: Vec<(PathBuf, filetime::FileTime)>,
}

impl Extractor<'_> {
    fn unsafe_entry(&self, raw: &[u8], reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            reason: reason.to_string(),
        }
    }

    fn scope_err(&self, raw: &[u8], e: ScopeError) -> ImageError {
        match e {
            ScopeError::Unsafe(reason) => self.unsafe_entry(raw, reason),
            ScopeError::Io(op, path, source) => ImageError::Fs { op, path, source },
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let comps = components(&raw).map_err(|r| self.unsafe_entry(&raw, r))?;
        let kind = entry.header().entry_type();
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the layer root itself
        };
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let parent = self
            .scope
            .ensure_dirs(parents)
            .map_err(|e| self.scope_err(&raw, e))?;
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&raw, &parent, name_bytes);
        }
        let path = parent.join(name);
        let h = entry.header();
        let old = h.as_old();
        let mode = numeric(&old.mode, h.mode().map(u64::from)).map_err(|e| self.read_err(e))?;
        let mode = (mode & 0o7777) as u32;
        let uid = numeric(&old.uid, h.uid()).map_err(|e| self.read_err(e))?;
        let gid = numeric(&old.gid, h.gid()).map_err(|e| self.read_err(e))?;
        let mtime = filetime::FileTime::from_unix_time(h.mtime().unwrap_or(0) as i64, 0);
        if kind != EntryType::Directory {
            self.clear(&path)?;
        }
        match kind {
            EntryType::Directory => self.dir(&path, mtime)?,
            EntryType::Regular | EntryType::Continuous => self.file(&path, &mut entry)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without target"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(ImageError::fs("Create symlink", &path))?;
            }
            EntryType::Link => return self.hardlink(&raw, &path, &entry),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.node(&path, &entry, kind, mode)?
            }
            other => {
                tracing::debug!(layer = self.layer, entry = %String::from_utf8_lossy(&raw), ?other, "skipping entry type");
                return Ok(());
            }
        }
        self.metadata(&path, kind, uid, gid, mode, mtime, &mut entry)
    }

    fn read_err(&self, source: std::io::Error) -> ImageError {
        read_error(self.layer, self.max, source)
    }

    /// Removes whatever non-directory (or directory, when replaced by a non-directory)
    /// sits at `path`, as a later archive entry overrides an earlier one.
    fn clear(&mut self, path: &Path) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_dir() => {
                self.scope.forget(path);
                std::fs::remove_dir_all(path).map_err(ImageError::fs("Replace directory", path))
            }
            Ok(_) => std::fs::remove_file(path).map_err(ImageError::fs("Replace file", path)),
            Err(_) => Ok(()),
        }
    }

    fn dir(&mut self, path: &Path, mtime: filetime::FileTime) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(path).map_err(ImageError::fs("Replace file", path))?;
                std::fs::create_dir(path).map_err(ImageError::fs("Create directory", path))?;
            }
            Err(_) => {
                std::fs::create_dir(path).map_err(ImageError::fs("Create directory", path))?
            }
        }
        self.dirs.push((path.to_path_buf(), mtime));
        Ok(())
    }

    fn file<R: Read>(&self, path: &Path, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ImageError::fs("Create file", path))?;
        std::io::copy(entry, &mut f).map_err(|e| self.read_err(e))?;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        raw: &[u8],
        path: &Path,
        entry: &tar::Entry<'_, R>,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(raw, "hardlink without target"))?;
        let comps = components(&target).map_err(|r| self.unsafe_entry(raw, r))?;
        let src = self
            .scope
            .existing(&comps)
            .map_err(|e| self.scope_err(raw, e))?;
        std::fs::hard_link(&src, path).map_err(ImageError::fs("Create hardlink", path))
    }

    fn node<R: Read>(
        &self,
        path: &Path,
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        mode: u32,
    ) -> Result<()> {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        mknod(
            path,
            sflag,
            Mode::from_bits_truncate(mode),
            makedev(major.into(), minor.into()),
        )
        .map_err(|e| ImageError::fs("Create device node", path)(e.into()))
    }

    fn whiteout(&mut self, raw: &[u8], parent: &Path, name: &[u8]) -> Result<()> {
        if name == OPAQUE_WHITEOUT.as_bytes() {
            return xattr::set(parent, OPAQUE_XATTR, b"y")
                .map_err(ImageError::fs("Mark opaque directory", parent));
        }
        let real = &name[WHITEOUT_PREFIX.len()..];
        if real.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk etc.)
        }
        if matches!(real, b"" | b"." | b"..") {
            return Err(self.unsafe_entry(raw, "bad whiteout name"));
        }
        let path = parent.join(OsStr::from_bytes(real));
        if std::fs::symlink_metadata(&path).is_ok() {
            // A whiteout hides lower layers only; this layer's own entry wins.
            return Ok(());
        }
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| ImageError::fs("Create whiteout", &path)(e.into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn metadata<R: Read>(
        &self,
        path: &Path,
        kind: EntryType,
        uid: u64,
        gid: u64,
        mode: u32,
        mtime: filetime::FileTime,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let uid = u32::try_from(uid).ok();
        let gid = u32::try_from(gid).ok();
        std::os::unix::fs::lchown(path, uid, gid).map_err(ImageError::fs("Set owner", path))?;
        if kind == EntryType::Symlink {
            return filetime::set_symlink_file_times(path, mtime, mtime)
                .map_err(ImageError::fs("Set times", path));
        }
        // After chown, which clears setuid/setgid bits.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(ImageError::fs("Set mode", path))?;
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattr::set(path, OsStr::from_bytes(name), ext.value_bytes())
                        .map_err(ImageError::fs("Set xattr", path))?;
                }
            }
        }
        if kind != EntryType::Directory {
            filetime::set_symlink_file_times(path, mtime, mtime)
                .map_err(ImageError::fs("Set times", path))?;
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        for (path, mtime) in self.dirs.iter().rev() {
            filetime::set_symlink_file_times(path, *mtime, *mtime)
                .map_err(ImageError::fs("Set times", path))?;
        }
        let _ = self.scope.root();
        Ok(())
    }
}
