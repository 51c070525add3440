//! The per-sandbox cache: the network configuration, arguments and result of the last
//! ADD, so DEL and CHECK use exactly what ADD used, even after hulld restarts or the conf
//! dir changes. Written before ADD starts (without result) so a crash mid-ADD still
//! leaves what DEL needs; files are replaced atomically (write + rename).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `kind` of hull's cache files.
pub const CACHE_KIND: &str = "hull.cni-cache.v1";

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Failed to write the CNI cache {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to read the CNI cache {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Corrupt CNI cache {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Failed to remove the CNI cache {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One attachment's cached state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub if_name: String,
    pub network_name: String,
    /// The conflist as loaded for ADD.
    pub config: Value,
    pub cni_args: String,
    pub capability_args: BTreeMap<String, Value>,
    /// The final ADD result; `None` while ADD runs or after it failed.
    pub result: Option<Value>,
}

/// A directory of cache files, one per container id.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of `container_id` (checked by the caller to be a plain name).
    pub fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.json"))
    }

    /// Writes `entry` atomically.
    pub fn store(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        let path = self.path(&entry.container_id);
        let werr = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(werr)?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| werr(io::Error::other(e)))?;
        let tmp = self.dir.join(format!(".{}.tmp", entry.container_id));
        std::fs::write(&tmp, bytes).map_err(werr)?;
        std::fs::rename(&tmp, &path).map_err(werr)
    }

    /// Loads the entry of `container_id`, `None` if there is none.
    pub fn load(&self, container_id: &str) -> Result<Option<CacheEntry>, CacheError> {
        let path = self.path(container_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CacheError::Parse { path, source })
    }

    /// The container ids that have an entry, in no particular order (a missing dir has
    /// none).
    pub fn ids(&self) -> Result<Vec<String>, CacheError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        Ok(rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                (!id.is_empty() && !id.starts_with('.')).then(|| id.to_owned())
            })
            .collect())
    }

    /// Removes the entry; succeeds if there is none.
    pub fn remove(&self, container_id: &str) -> Result<(), CacheError> {
        remove_if_exists(&self.path(container_id))
    }
}

fn remove_if_exists(path: &Path) -> Result<(), CacheError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CacheError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_remove() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = Cache::new(dir.path().join("cni"));
        assert_eq!(cache.load("abc")?, None);
        let entry = CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: "abc".into(),
            netns: "/run/netns/hull-abc".into(),
            if_name: "eth0".into(),
            network_name: "net".into(),
            config: serde_json::json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bridge"}]}),
            cni_args: "IgnoreUnknown=1".into(),
            capability_args: BTreeMap::new(),
            result: None,
        };
        assert_eq!(cache.ids()?, Vec::<String>::new());
        cache.store(&entry)?;
        assert_eq!(cache.load("abc")?, Some(entry));
        assert_eq!(cache.ids()?, vec!["abc".to_owned()]);
        cache.remove("abc")?;
        cache.remove("abc")?;
        assert_eq!(cache.load("abc")?, None);
        std::fs::write(cache.path("bad"), "{")?;
        assert!(matches!(cache.load("bad"), Err(CacheError::Parse { .. })));
        Ok(())
    }
}
