//! Durable host state: with `[state] dir` in the pipeline file, every plugin's `state` keys are
//! written through to an embedded store (redb, one file `state.redb`, each write its own
//! committed, fsynced transaction) and read back when the pipeline starts, so a source that
//! keeps its position there resumes after a restart, even after `kill -9`.
//!
//! Keys are scoped by pipeline and plugin. Keys that start with `run:` are not written: they
//! live for one run (e.g. file-sink's "already opened in this run" marker).
//!
//! It imports nothing of Patchbay's; `contract::PluginState` calls it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Keys with this prefix stay in memory for the run.
pub const RUN_ONLY: &str = "run:";

/// The open store of one `patchbay` process.
#[derive(Debug)]
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

/// `pipeline`, `plugin` and `key` as one store key (NUL cannot appear in a TOML name).
fn full_key(scope: &str, key: &str) -> String {
    format!("{scope}\0{key}")
}

impl StateStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "[state] dir `{}`: cannot create it: {e}; give a writable directory",
                dir.display()
            )
        })?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => format!(
                "[state] dir `{}`: another patchbay process uses this state store; give each \
                 process its own [state] dir",
                dir.display()
            ),
            e => format!(
                "[state] dir `{}`: cannot open `{}`: {e}",
                dir.display(),
                path.display()
            ),
        })?;
        Ok(StateStore { db, path })
    }

    /// The scope of one plugin in one pipeline.
    pub fn scope(pipeline: &str, plugin: &str) -> String {
        format!("{pipeline}\0{plugin}")
    }

    /// Every key of `scope`, as last written.
    pub fn load(&self, scope: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let fail = |e: &dyn std::fmt::Display| format!("reading `{}`: {e}", self.path.display());
        let read = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = match read.open_table(TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(fail(&e)),
        };
        let from = full_key(scope, "");
        let to = format!("{scope}\u{1}");
        let mut out = BTreeMap::new();
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(|e| fail(&e))?
        {
            let (key, value) = entry.map_err(|e| fail(&e))?;
            if let Some(name) = key.value().strip_prefix(from.as_str()) {
                out.insert(name.to_owned(), value.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Write (`Some`) or remove (`None`) one key, durably, before returning.
    pub fn put(&self, scope: &str, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("writing `{}`: {e}", self.path.display());
        let write = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = write.open_table(TABLE).map_err(|e| fail(&e))?;
            let full = full_key(scope, key);
            match value {
                Some(value) => {
                    table.insert(full.as_str(), value).map_err(|e| fail(&e))?;
                }
                None => {
                    table.remove(full.as_str()).map_err(|e| fail(&e))?;
                }
            }
        }
        write.commit().map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopening_and_stay_in_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateStore::scope("p", "a");
        let b = StateStore::scope("p", "ab");
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.put(&a, "pos", Some(b"41")).unwrap();
            store.put(&a, "pos", Some(b"42")).unwrap();
            store.put(&a, "gone", Some(b"x")).unwrap();
            store.put(&a, "gone", None).unwrap();
            store.put(&b, "pos", Some(b"7")).unwrap();
            // A second process is refused, with what to do.
            let second = StateStore::open(dir.path()).unwrap_err();
            assert!(
                second.contains("another patchbay process uses this state store"),
                "{second}"
            );
        }
        let store = StateStore::open(dir.path()).unwrap();
        let loaded = store.load(&a).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.get("pos").map(Vec::as_slice), Some(&b"42"[..]));
        assert_eq!(store.load(&b).unwrap().len(), 1);
        assert!(store.load(&StateStore::scope("q", "a")).unwrap().is_empty());
    }
}
