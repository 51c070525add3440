//! Paths inside a container's rootfs on the host, resolved the way the container will see
//! them: `openat2` with `RESOLVE_IN_ROOT` from a file descriptor of the rootfs, so that an
//! absolute symlink or a `..` stays inside the rootfs (`/data -> /etc` is the rootfs's
//! `/etc`), whoever planted it: the image, or a guest racing hulld (the rootfs overlay is
//! writable from the guest while hulld makes mount points in it). Nothing here crosses a
//! mount (`RESOLVE_NO_XDEV`) or follows a magic link, new entries are made one name at a
//! time relative to a directory already resolved (`mkdirat`, `openat(O_CREAT|O_EXCL|
//! O_NOFOLLOW)`), and files are read only when `fstat` says they are regular and small.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

/// A container's rootfs, opened without following a symlink at its own path.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
}

impl RootDir {
    /// Opens `path` (a directory hulld made, in its host-private staging tree).
    pub fn open(path: &Path) -> Result<Self, Errno> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        Ok(Self {
            fd: open(path, flags, Mode::empty())?,
        })
    }

    /// Resolves `rel` (relative to the rootfs; a leading `/` is the rootfs's) inside it.
    fn resolve(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let rel = relative(rel);
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        openat2(&self.fd, &rel, how)
    }

    /// Whether `rel` exists in the rootfs (a dangling symlink does not).
    pub fn exists(&self, rel: &Path) -> bool {
        self.resolve(rel, OFlag::O_PATH).is_ok()
    }

    /// Creates the directory `rel` and its missing parents inside the rootfs (mode 0755);
    /// an existing one (through symlinks inside the rootfs) is fine.
    pub fn mkdir_all(&self, rel: &Path) -> Result<(), Errno> {
        self.mkdir_all_fd(&relative(rel)).map(drop)
    }

    fn mkdir_all_fd(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let dir = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let mut cur = self.resolve(Path::new("."), dir)?;
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(name) = c else {
                continue;
            };
            prefix.push(name);
            cur = match self.resolve(&prefix, dir) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&cur, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    self.resolve(&prefix, dir)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Creates the empty file `rel` (and its missing parent dirs) inside the rootfs; an
    /// existing entry of that name is left alone.
    pub fn create_file(&self, rel: &Path) -> Result<(), Errno> {
        let rel = relative(rel);
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Errno::EINVAL);
        };
        let dir = self.mkdir_all_fd(parent)?;
        let flags = OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_WRONLY
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY;
        match openat(&dir, name, flags, Mode::from_bits_truncate(0o644)) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The content of the regular file `rel` in the rootfs if it is at most `max` bytes;
    /// `None` for a missing, special (FIFO, device) or larger file.
    pub fn read_small(&self, rel: &Path, max: u64) -> Option<Vec<u8>> {
        let path_fd = self.resolve(rel, OFlag::O_PATH).ok()?;
        let st = fstat(&path_fd).ok()?;
        let size = u64::try_from(st.st_size).ok()?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG
            || size > max
        {
            return None;
        }
        // Reopening the O_PATH descriptor through its magic link opens that very inode.
        let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
        let fd = open(
            proc_path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .ok()?;
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(max)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    }
}

/// `rel` without its leading `/` (an absolute container path is relative to the rootfs).
fn relative(rel: &Path) -> PathBuf {
    let p: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A rootfs with `/data -> /etc`, `/up -> ../../../..<outside>` and `/abs -> <outside>`
    /// next to a dir `outside` standing for the host.
    fn rootfs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("rootfs"), tmp.path().join("host"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink("/etc", root.join("data")).unwrap();
        let up = format!("../../../../../../../../..{}", outside.display());
        symlink(up, root.join("up")).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        (tmp, root, outside)
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let (_tmp, root, outside) = rootfs();
        let r = RootDir::open(&root).unwrap();
        r.create_file(Path::new("/data/nologin")).unwrap();
        assert!(root.join("etc/nologin").is_file());
        // Dangling inside the rootfs: refused, and nothing made outside it.
        assert_eq!(r.mkdir_all(Path::new("/up/a/b")), Err(Errno::ENOENT));
        let inside = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        r.mkdir_all(Path::new("/up/a/b")).unwrap();
        r.mkdir_all(Path::new("abs/c")).unwrap();
        r.create_file(Path::new("/abs/d/file")).unwrap();
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "the host dir"
        );
        assert!(inside.join("a/b").is_dir() && inside.join("c").is_dir());
        assert!(inside.join("d/file").is_file());
        assert!(r.exists(Path::new("/data/nologin")));
        assert!(!r.exists(Path::new("/data/missing")));
        r.mkdir_all(Path::new("/etc")).unwrap();
        r.create_file(Path::new("/etc/nologin")).unwrap();
    }

    #[test]
    fn reads_only_small_regular_files_inside_the_rootfs() {
        let (_tmp, root, outside) = rootfs();
        std::fs::write(outside.join("passwd"), "host:x:1:1::/:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/passwd"), "img:x:2:2::/:/bin/sh\n").unwrap();
        symlink("/abs/passwd", root.join("etc/link")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let r = RootDir::open(&root).unwrap();
        let read = |p: &str| {
            r.read_small(Path::new(p), 64)
                .map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(
            read("/data/passwd").as_deref(),
            Some("img:x:2:2::/:/bin/sh\n")
        );
        assert_eq!(
            read("/abs/passwd"),
            None,
            "the host's file is not the rootfs's"
        );
        assert_eq!(read("/etc/link"), None);
        assert_eq!(read("/etc/fifo"), None, "a FIFO would block the reader");
        assert_eq!(
            r.read_small(Path::new("/etc/passwd"), 4),
            None,
            "over the cap"
        );
        assert!(
            RootDir::open(&root.join("data")).is_err(),
            "the rootfs itself is no link"
        );
    }
}
