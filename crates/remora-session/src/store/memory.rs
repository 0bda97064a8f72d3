//! [`MemoryStore`]: records in a hash map in this process.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BoxFuture, SaveOutcome, Store};
use crate::error::StoreError;
use crate::record::{Attribute, Record, now_ms};

/// A store in process memory. Cheap to clone (clones share the map); lost on
/// restart. Expired records are dropped by [`Store::sweep_expired`].
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<HashMap<String, Record>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live<'m>(
        map: &'m mut HashMap<String, Record>,
        id: &str,
        now: u64,
    ) -> Option<&'m mut Record> {
        if map.get(id).is_some_and(|r| r.is_expired(now)) {
            map.remove(id);
        }
        map.get_mut(id)
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        let now = now_ms();
        let r = Self::live(&mut self.map.lock(), id, now).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        let now = now_ms();
        let mut map = self.map.lock();
        let current_version = Self::live(&mut map, &record.id, now).map(|r| r.version);
        let out = if current_version.unwrap_or(0) == expected_version {
            map.insert(record.id.clone(), record.clone());
            SaveOutcome::Saved {
                new_version: record.version,
            }
        } else {
            SaveOutcome::Conflict {
                current: map.get(&record.id).cloned(),
            }
        };
        drop(map);
        Box::pin(async move { Ok(out) })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.map.lock().remove(id);
        Box::pin(async { Ok(()) })
    }

    fn touch<'a>(
        &'a self,
        id: &'a str,
        accessed_at: u64,
        idle_deadline: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = now_ms();
        let found = match Self::live(&mut self.map.lock(), id, now) {
            Some(r) => {
                r.accessed_at = r.accessed_at.max(accessed_at);
                r.idle_deadline = r.idle_deadline.max(idle_deadline).min(r.absolute_deadline);
                true
            }
            None => false,
        };
        Box::pin(async move { Ok(found) })
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = now_ms();
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|_, r| !r.is_expired(now));
        let n = (before - map.len()) as u64;
        drop(map);
        Box::pin(async move { Ok(n) })
    }

    fn take_once<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Attribute>, StoreError>> {
        let now = now_ms();
        let mut map = self.map.lock();
        let out = match Self::live(&mut map, id, now) {
            Some(r) if r.attributes.get(key).is_some_and(|a| a.once) => {
                r.version += 1;
                r.attributes.remove(key).filter(|a| !a.is_expired(now))
            }
            _ => None,
        };
        drop(map);
        Box::pin(async move { Ok(out) })
    }
}
