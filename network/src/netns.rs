//! Named network namespaces, created the iproute2 way.
//!
//! `create` unshares a fresh network namespace on a short-lived thread and bind-mounts
//! that thread's `/proc/thread-self/ns/net` onto `/run/netns/<name>`, so the namespace
//! lives on without any process in it (and survives a hulld restart) until `delete`
//! unmounts and unlinks the file. `/run/netns` is made a shared mount first, as iproute2
//! does, so the bind mounts propagate into other mount namespaces.
//!
//! Code that must run inside a namespace goes through [`Netns::run`]/[`Netns::run_async`]:
//! a dedicated OS thread joins the namespace, runs the closure and exits. A tokio worker
//! thread is never moved into another namespace. Child processes join it between fork and
//! exec through [`Netns::setns_on_exec`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::sys;

/// Where named network namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Prefix of hull's namespaces: `/run/netns/hull-<sandbox id>`.
pub const NETNS_PREFIX: &str = "hull-";

/// Run dirs already made shared mounts by this process. The lock also serializes that
/// step, which must not run twice at once (two bind mounts would stack).
static PREPARED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Errors of network namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("Invalid network namespace name {0:?}")]
    InvalidName(String),
    #[error("Failed to prepare the netns directory {path}")]
    PrepareRunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Network namespace file {0} already exists")]
    Exists(PathBuf),
    #[error("Failed to create the netns file {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to unshare a new network namespace")]
    Unshare(#[source] io::Error),
    #[error("Failed to bind-mount the new network namespace on {path}")]
    BindMount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to unmount the network namespace {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to remove the network namespace file {path}")]
    RemoveFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to open the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a network namespace mount")]
    NotANetns(PathBuf),
    #[error("Failed to enter the network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to start a thread for the network namespace")]
    SpawnThread(#[source] io::Error),
    #[error("The thread working in the network namespace panicked")]
    ThreadPanicked,
}

/// A named network namespace (a bind-mounted nsfs file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: PathBuf,
}

/// Checks a namespace or sandbox name: non-empty, at most 200 bytes, ASCII letters,
/// digits, `-`, `_` and `.`, and not `.`/`..`.
pub fn validate_name(name: &str) -> Result<(), NetnsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty()
        || name.len() > 200
        || name == "."
        || name == ".."
        || !name.chars().all(ok_char)
    {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    Ok(())
}

impl Netns {
    /// The path hull uses for a sandbox: `/run/netns/hull-<id>`.
    pub fn sandbox_path(sandbox_id: &str) -> Result<PathBuf, NetnsError> {
        validate_name(sandbox_id)?;
        Ok(Path::new(NETNS_RUN_DIR).join(format!("{NETNS_PREFIX}{sandbox_id}")))
    }

    /// Creates `/run/netns/<name>`.
    pub fn create_named(name: &str) -> Result<Self, NetnsError> {
        validate_name(name)?;
        Self::create(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Creates a new network namespace and pins it at `path` (whose parent directory is
    /// made a shared mount point, like iproute2 does for `/run/netns`).
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, NetnsError> {
        let path = path.into();
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| NetnsError::InvalidName(path.display().to_string()))?;
        prepare_run_dir(&dir)?;
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists(path));
            }
            Err(source) => return Err(NetnsError::CreateFile { path, source }),
        }
        let target = path.clone();
        let pinned = std::thread::Builder::new()
            .name("hull-netns-new".into())
            .spawn(move || unshare_and_pin(&target))
            .map_err(NetnsError::SpawnThread)
            .and_then(|t| t.join().map_err(|_| NetnsError::ThreadPanicked)?);
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self { path })
    }

    /// Opens an existing namespace, checking that `path` is an nsfs mount.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, NetnsError> {
        let path = path.into();
        let fs = nix::sys::statfs::statfs(&path).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotANetns(path));
        }
        Ok(Self { path })
    }

    /// The namespace file, e.g. `/run/netns/hull-<id>` (what CNI gets as `CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes a namespace file. Succeeds if it is already gone.
    pub fn delete(path: &Path) -> Result<(), NetnsError> {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(NetnsError::Unmount {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetnsError::RemoveFile {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Opens the namespace file (an fd usable with `setns`).
    pub fn open_fd(&self) -> Result<OwnedFd, NetnsError> {
        File::open(&self.path)
            .map(OwnedFd::from)
            .map_err(|source| NetnsError::Open {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs `f` on a new OS thread that has joined this namespace, and waits for it.
    /// Blocking: from async code use [`Netns::run_async`].
    pub fn run<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.open_fd()?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("hull-netns".into())
            .spawn(move || {
                nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetnsError::Enter {
                        path,
                        source: e.into(),
                    }
                })?;
                drop(fd);
                Ok(f())
            })
            .map_err(NetnsError::SpawnThread)?
            .join()
            .map_err(|_| NetnsError::ThreadPanicked)?
    }

    /// Async form of [`Netns::run`]: the thread is a fresh OS thread, never a tokio worker.
    pub async fn run_async<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.open_fd()?;
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("hull-netns".into())
            .spawn(move || {
                let res = nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::Enter {
                        path,
                        source: e.into(),
                    })
                    .map(|()| {
                        drop(fd);
                        f()
                    });
                let _ = tx.send(res);
            })
            .map_err(NetnsError::SpawnThread)?;
        rx.await.map_err(|_| NetnsError::ThreadPanicked)?
    }

    /// Makes the child of `cmd` start inside this namespace (setns between fork and exec).
    /// Works for `tokio::process::Command` through `as_std_mut()`.
    pub fn setns_on_exec(&self, cmd: &mut std::process::Command) -> Result<(), NetnsError> {
        let fd = self.open_fd()?;
        sys::setns_before_exec(cmd, fd);
        Ok(())
    }
}

/// Runs on a throw-away thread: moves it into a new netns and pins that netns at `path`.
fn unshare_and_pin(path: &Path) -> Result<(), NetnsError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Unshare(e.into()))?;
    let source = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
    nix::mount::mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| NetnsError::BindMount {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Creates `dir` and makes it a shared mount point (bind-mounting it on itself first if
/// it is not a mount point), like iproute2's `netns_add`.
fn prepare_run_dir(dir: &Path) -> Result<(), NetnsError> {
    let mut prepared = PREPARED_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if prepared.iter().any(|d| d == dir) && dir.is_dir() {
        return Ok(());
    }
    make_shared(dir)?;
    prepared.push(dir.to_path_buf());
    Ok(())
}

fn make_shared(dir: &Path) -> Result<(), NetnsError> {
    let err = |e: Errno| NetnsError::PrepareRunDir {
        path: dir.to_path_buf(),
        source: e.into(),
    };
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::PrepareRunDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err)?;
            nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("abc-DEF_0.1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(201)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Netns::sandbox_path("0123abcd").ok(),
            Some(PathBuf::from("/run/netns/hull-0123abcd"))
        );
    }
}
