//! [`RedbStore`]: an embedded, on-disk store (survives restarts) on `redb`.
//!
//! Values are `expires_at (8 bytes, big endian Unix ms) | record JSON`, so
//! sweeping reads no JSON. Every operation is one redb transaction run on
//! Tokio's blocking pool; write transactions are serialized by redb, which
//! makes compare-and-set and `take_once` atomic.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BoxFuture, SaveOutcome, Store};
use crate::error::{StoreError, redb_err};
use crate::record::{Attribute, Record, now_ms};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("remora_sessions");

/// A store in a redb database file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

fn encode(r: &Record) -> Result<Vec<u8>, StoreError> {
    let mut v = r.expires_at().to_be_bytes().to_vec();
    serde_json::to_writer(&mut v, r).map_err(StoreError::Codec)?;
    Ok(v)
}

fn expiry(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn decode(v: &[u8]) -> Result<Record, StoreError> {
    Record::from_json(v.get(8..).unwrap_or_default()).map_err(StoreError::Codec)
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(redb_err)?;
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(TABLE).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(StoreError::Join)?
    }

    /// Read-modify-write of one live record in a write transaction. `f` gets
    /// the live record (if any) and returns what to write (`Some`) and the
    /// result.
    async fn update<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(Option<Record>) -> Result<(Option<Record>, T), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let now = now_ms();
            let tx = db.begin_write().map_err(redb_err)?;
            let out = {
                let mut t = tx.open_table(TABLE).map_err(redb_err)?;
                let current = match t.get(id.as_str()).map_err(redb_err)? {
                    Some(v) if expiry(v.value()) > now => Some(decode(v.value())?),
                    _ => None,
                };
                let (write, out) = f(current)?;
                if let Some(rec) = write {
                    t.insert(id.as_str(), encode(&rec)?.as_slice())
                        .map_err(redb_err)?;
                }
                out
            };
            tx.commit().map_err(redb_err)?;
            Ok(out)
        })
        .await
    }
}

impl Store for RedbStore {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.blocking(move |db| {
            let tx = db.begin_read().map_err(redb_err)?;
            let t = tx.open_table(TABLE).map_err(redb_err)?;
            match t.get(id.as_str()).map_err(redb_err)? {
                Some(v) if expiry(v.value()) > now_ms() => Ok(Some(decode(v.value())?)),
                _ => Ok(None),
            }
        }))
    }

    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        let rec = record.clone();
        Box::pin(self.update(&record.id, move |current| {
            if current.as_ref().map_or(0, |c| c.version) == expected_version {
                let new_version = rec.version;
                Ok((Some(rec), SaveOutcome::Saved { new_version }))
            } else {
                Ok((None, SaveOutcome::Conflict { current }))
            }
        }))
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.blocking(move |db| {
            let tx = db.begin_write().map_err(redb_err)?;
            tx.open_table(TABLE)
                .map_err(redb_err)?
                .remove(id.as_str())
                .map_err(redb_err)?;
            tx.commit().map_err(redb_err)
        }))
    }

    fn touch<'a>(
        &'a self,
        id: &'a str,
        accessed_at: u64,
        idle_deadline: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.update(id, move |current| match current {
            Some(mut r) => {
                r.accessed_at = r.accessed_at.max(accessed_at);
                r.idle_deadline = r.idle_deadline.max(idle_deadline).min(r.absolute_deadline);
                Ok((Some(r), true))
            }
            None => Ok((None, false)),
        }))
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.blocking(|db| {
            let now = now_ms();
            let tx = db.begin_write().map_err(redb_err)?;
            let mut n = 0u64;
            {
                let mut t = tx.open_table(TABLE).map_err(redb_err)?;
                t.retain(|_, v| {
                    let keep = expiry(v) > now;
                    if !keep {
                        n += 1;
                    }
                    keep
                })
                .map_err(redb_err)?;
            }
            tx.commit().map_err(redb_err)?;
            Ok(n)
        }))
    }

    fn take_once<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Attribute>, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.update(id, move |current| match current {
            Some(mut r) if r.attributes.get(&key).is_some_and(|a| a.once) => {
                let now = now_ms();
                let taken = r.attributes.remove(&key).filter(|a| !a.is_expired(now));
                r.version += 1;
                Ok((Some(r), taken))
            }
            _ => Ok((None, None)),
        }))
    }
}
