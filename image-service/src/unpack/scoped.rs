//! Paths of archive entries, resolved without leaving the layer dir.
//!
//! An entry path is split into components; `..` is rejected outright, `.` and empty
//! components are dropped, a leading `/` is ignored (archive paths are relative to the
//! layer root). While extracting, no symlink is ever followed: every existing parent
//! component must be a real directory (`lstat`), so an entry like `a/passwd` after
//! `a -> /etc` is rejected instead of writing through the link.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// Splits a raw archive path into safe components, or says why it is unsafe.
pub(crate) fn components(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            _ => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Resolves parents inside one layer dir, remembering the dirs already checked.
pub(crate) struct Scope {
    root: PathBuf,
    known_dirs: HashSet<PathBuf>,
}

impl Scope {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            known_dirs: HashSet::new(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Makes sure every component of `parents` is a real directory (created 0755 when
    /// missing, never a symlink), and returns the full path of the parent.
    pub(crate) fn ensure_dirs(&mut self, parents: &[&OsStr]) -> Result<PathBuf, ScopeError> {
        let mut p = self.root.clone();
        for c in parents {
            p.push(c);
            if self.known_dirs.contains(&p) {
                continue;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ScopeError::Unsafe("a parent is a symlink"));
                }
                Ok(_) => return Err(ScopeError::Unsafe("a parent is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&p)
                        .map_err(|e| ScopeError::Io("Create parent dir", p.clone(), e))?;
                }
                Err(e) => return Err(ScopeError::Io("Stat parent dir", p.clone(), e)),
            }
            self.known_dirs.insert(p.clone());
        }
        Ok(p)
    }

    /// Resolves an existing path (a hardlink source) without following symlinks on the
    /// way; the last component itself may be anything but a directory.
    pub(crate) fn existing(&mut self, comps: &[&OsStr]) -> Result<PathBuf, ScopeError> {
        let Some((last, parents)) = comps.split_last() else {
            return Err(ScopeError::Unsafe("hardlink to the layer root"));
        };
        let mut p = self.root.clone();
        for c in parents {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(ScopeError::Unsafe(
                        "hardlink target goes through a non-directory",
                    ));
                }
                Err(_) => return Err(ScopeError::Unsafe("hardlink target is not in this layer")),
            }
        }
        p.push(last);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => Err(ScopeError::Unsafe("hardlink to a directory")),
            Ok(_) => Ok(p),
            Err(_) => Err(ScopeError::Unsafe("hardlink target is not in this layer")),
        }
    }

    /// Forgets `path` and everything under it (it is being replaced).
    pub(crate) fn forget(&mut self, path: &Path) {
        if self.known_dirs.remove(path) {
            self.known_dirs.retain(|p| !p.starts_with(path));
        }
    }
}

/// Why a path could not be resolved.
#[derive(Debug)]
pub(crate) enum ScopeError {
    Unsafe(&'static str),
    Io(&'static str, PathBuf, std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_dotdot() {
        assert_eq!(components(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert_eq!(components(b"/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn parents_through_symlink_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a")).unwrap();
        let mut s = Scope::new(dir.path());
        assert!(matches!(
            s.ensure_dirs(&[OsStr::new("a")]),
            Err(ScopeError::Unsafe(_))
        ));
        let p = s.ensure_dirs(&[OsStr::new("b"), OsStr::new("c")]).unwrap();
        assert!(p.is_dir());
        assert!(matches!(
            s.existing(&[OsStr::new("a"), OsStr::new("passwd")]),
            Err(ScopeError::Unsafe(_))
        ));
        assert!(matches!(
            s.existing(&[OsStr::new("nope")]),
            Err(ScopeError::Unsafe(_))
        ));
    }
}
