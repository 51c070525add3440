//! The metadata store: typed records in an embedded transactional database (redb).
//!
//! One file, `<root_dir>/metadata.redb`, holds every record hulld must not lose across a
//! restart: sandboxes, containers, and (through [`Store::database`]) the image service's
//! own tables. Records are JSON values keyed by id, one table per record type. The store
//! carries a schema version: a store written by a newer hulld is refused rather than
//! misread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The layout version of this store. Bump it when records change incompatibly and add
/// a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const META: TableDefinition<'static, &'static str, u32> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// A typed record kept in its own table, keyed by its id.
pub trait Record: Serialize + DeserializeOwned {
    /// The table holding every record of this type.
    const TABLE: Table;
    /// The record's key (its id).
    fn key(&self) -> &str;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot create the metadata dir {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot open the metadata store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("Metadata store {path} has schema version {found}; this hulld knows {SCHEMA_VERSION}")]
    SchemaVersion { path: PathBuf, found: u32 },
    #[error("Metadata store transaction failed")]
    Db(#[from] redb::Error),
    #[error("Record {key} in table {table} is not valid")]
    Decode {
        table: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Record {key} cannot be encoded")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// Handle on the metadata store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and checks its schema version. `tables`
    /// are created if missing, so reads never meet an absent table.
    pub fn open(path: &Path, tables: &[Table]) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = meta.get(SCHEMA_KEY).map_err(db_err)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::SchemaVersion {
                        path: path.to_owned(),
                        found,
                    });
                }
            }
            for table in tables {
                txn.open_table(*table).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The underlying database, for crates that keep their own tables in it.
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let v = meta.get(SCHEMA_KEY).map_err(db_err)?.map(|v| v.value());
        Ok(v.unwrap_or(0))
    }

    /// Inserts or replaces a record, durably.
    pub fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            key: record.key().to_owned(),
            source,
        })?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(R::TABLE).map_err(db_err)?;
            table
                .insert(record.key(), bytes.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// The record with this key, if any.
    pub fn get<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(R::TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let Some(value) = table.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        decode::<R>(key, value.value()).map(Some)
    }

    /// Removes a record; returns whether it existed.
    pub fn delete<R: Record>(&self, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = txn.open_table(R::TABLE).map_err(db_err)?;
            table.remove(key).map_err(db_err)?.is_some()
        };
        txn.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Every record of a type, in key order.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(R::TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode::<R>(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Reads, changes and writes back one record in a single transaction. Returns the
    /// new record, or `None` (and changes nothing) if there is no record with this key.
    pub fn update<R: Record>(
        &self,
        key: &str,
        change: impl FnOnce(&mut R),
    ) -> Result<Option<R>, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let updated = {
            let mut table = txn.open_table(R::TABLE).map_err(db_err)?;
            let current = match table.get(key).map_err(db_err)? {
                Some(v) => Some(decode::<R>(key, v.value())?),
                None => None,
            };
            match current {
                Some(mut record) => {
                    change(&mut record);
                    let bytes =
                        serde_json::to_vec(&record).map_err(|source| StoreError::Encode {
                            key: key.to_owned(),
                            source,
                        })?;
                    table.insert(key, bytes.as_slice()).map_err(db_err)?;
                    Some(record)
                }
                None => None,
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(updated)
    }
}

fn decode<R: Record>(key: &str, bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table: R::TABLE.to_string(),
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: String,
        n: u32,
    }

    impl Record for Thing {
        const TABLE: Table = TableDefinition::new("things");
        fn key(&self) -> &str {
            &self.id
        }
    }

    fn thing(id: &str, n: u32) -> Thing {
        Thing { id: id.into(), n }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/meta.redb");
        {
            let store = Store::open(&path, &[Thing::TABLE]).unwrap();
            store.put(&thing("a", 1)).unwrap();
            store.put(&thing("b", 2)).unwrap();
            assert!(store.delete::<Thing>("b").unwrap());
            assert!(!store.delete::<Thing>("b").unwrap());
        }
        let store = Store::open(&path, &[Thing::TABLE]).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.get::<Thing>("a").unwrap(), Some(thing("a", 1)));
        assert_eq!(store.get::<Thing>("b").unwrap(), None);
        assert_eq!(store.list::<Thing>().unwrap(), vec![thing("a", 1)]);
    }

    #[test]
    fn update_changes_in_place_and_ignores_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb"), &[Thing::TABLE]).unwrap();
        store.put(&thing("a", 1)).unwrap();
        let new = store.update::<Thing>("a", |t| t.n = 7).unwrap();
        assert_eq!(new, Some(thing("a", 7)));
        assert_eq!(store.get::<Thing>("a").unwrap(), Some(thing("a", 7)));
        assert_eq!(store.update::<Thing>("zz", |t| t.n = 9).unwrap(), None);
        assert_eq!(store.list::<Thing>().unwrap().len(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path, &[]).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaVersion { found, .. } if found == SCHEMA_VERSION + 1)
        );
    }

    #[test]
    fn corrupt_record_is_a_decode_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb"), &[Thing::TABLE]).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(Thing::TABLE)
            .unwrap()
            .insert("bad", b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(
            store.get::<Thing>("bad"),
            Err(StoreError::Decode { .. })
        ));
    }
}
