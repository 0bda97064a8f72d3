//! The near cache of a [`RedisStore`](super::RedisStore): recently used
//! records kept in process memory, dropped when Redis says another client
//! changed them (server-assisted client-side caching: `CLIENT TRACKING ON
//! NOLOOP` over RESP3).
//!
//! Correctness rests on three rules:
//! - an entry is only inserted from a reply that came over a connection
//!   whose tracking is known to be on (its `CLIENT ID` is checked in the same
//!   pipeline), so no change made after the reply can go unannounced;
//! - every shard has a generation, bumped by each invalidation in it; an
//!   insert carries the generation read before its command was sent and is
//!   dropped if an invalidation came in between (the reply may hold the old
//!   value while the invalidation of the new one is already processed);
//! - a lost connection clears the whole cache (its invalidations may be lost).
//!
//! An entry never holds an older version than one it replaces, and every
//! entry is dropped after `max_age` whatever happens.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::record::Record;

/// Shards of the cache (each its own lock).
const SHARDS: usize = 16;

/// Settings of a [`RedisStore`](super::RedisStore)'s near cache (see
/// [`RedisStoreBuilder::near_cache`](super::RedisStoreBuilder::near_cache)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCache {
    /// Most records kept; beyond it an arbitrary entry of the same shard is
    /// evicted.
    pub max_entries: usize,
    /// Longest an entry is used without reading Redis again, whatever
    /// Redis says (a bound on staleness should an invalidation ever be
    /// lost without the connection being seen to drop).
    pub max_age: Duration,
}

impl NearCache {
    /// Default [`NearCache::max_age`].
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

    /// A near cache of at most `max_entries` records, each used for at most
    /// [`NearCache::DEFAULT_MAX_AGE`].
    pub fn new(max_entries: usize) -> Self {
        NearCache {
            max_entries,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }

    /// Sets [`NearCache::max_age`].
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }
}

/// Counters of a near cache, from
/// [`RedisStore::near_cache_stats`](super::RedisStore::near_cache_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearCacheStats {
    /// Loads answered from memory.
    pub hits: u64,
    /// Loads that read Redis.
    pub misses: u64,
    /// Entries dropped because Redis announced a change by another client.
    pub invalidations: u64,
    /// Times the whole cache was dropped (a lost connection, `FLUSHALL`).
    pub flushes: u64,
}

struct Entry {
    record: Record,
    at: Instant,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    generation: u64,
}

/// The cache itself, keyed by the full Redis key.
pub(super) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    max_age: Duration,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl Cache {
    pub(super) fn new(cfg: NearCache) -> Self {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: cfg.max_entries.div_ceil(SHARDS).max(1),
            max_age: cfg.max_age,
            hasher: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// A live cached record, counting the hit or miss.
    pub(super) fn get(&self, key: &str, now_ms: u64) -> Option<Record> {
        let mut sh = self.shard(key).lock();
        let fresh = match sh.map.get(key) {
            Some(e) if e.at.elapsed() < self.max_age && !e.record.is_expired(now_ms) => {
                Some(e.record.clone())
            }
            Some(_) => {
                sh.map.remove(key);
                None
            }
            None => None,
        };
        drop(sh);
        let counter = if fresh.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fresh
    }

    /// The generation of `key`'s shard, to pass to [`Cache::insert`].
    pub(super) fn generation(&self, key: &str) -> u64 {
        self.shard(key).lock().generation
    }

    /// Keeps `record` under `key` unless an invalidation reached the shard
    /// since `generation` was read, or a newer version is already kept.
    ///
    /// When the insert is refused for the generation, whatever the entry
    /// holds is dropped too: after a save of ours it is older than what
    /// Redis holds, and Redis will not announce our own write.
    pub(super) fn insert(&self, key: &str, generation: u64, record: &Record) {
        let mut sh = self.shard(key).lock();
        if sh.generation != generation {
            sh.map.remove(key);
            return;
        }
        if let Some(e) = sh.map.get(key)
            && e.record.version > record.version
        {
            return;
        }
        if sh.map.len() >= self.per_shard
            && !sh.map.contains_key(key)
            && let Some(victim) = sh.map.keys().next().cloned()
        {
            sh.map.remove(&victim);
        }
        sh.map.insert(
            key.to_owned(),
            Entry {
                record: record.clone(),
                at: Instant::now(),
            },
        );
    }

    /// Applies a touch this process made to the cached copy.
    pub(super) fn touched(&self, key: &str, accessed_at: u64, idle_deadline: u64) {
        if let Some(e) = self.shard(key).lock().map.get_mut(key) {
            let r = &mut e.record;
            r.accessed_at = r.accessed_at.max(accessed_at);
            r.idle_deadline = r.idle_deadline.max(idle_deadline).min(r.absolute_deadline);
        }
    }

    /// Drops `key`'s entry, if any (it may be older than what Redis holds).
    pub(super) fn forget(&self, key: &str) {
        self.shard(key).lock().map.remove(key);
    }

    /// Drops `key` (a change by another client, or a local delete).
    pub(super) fn invalidate(&self, key: &str) {
        let mut sh = self.shard(key).lock();
        sh.generation = sh.generation.wrapping_add(1);
        if sh.map.remove(key).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops everything.
    pub(super) fn clear(&self) {
        for s in self.shards.iter() {
            let mut sh = s.lock();
            sh.generation = sh.generation.wrapping_add(1);
            sh.map.clear();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, version: u64) -> Record {
        let mut r = Record::new(id.into(), crate::record::now_ms(), 60_000, 600_000);
        r.version = version;
        r
    }

    #[test]
    fn an_invalidation_between_read_and_insert_wins() {
        let c = Cache::new(NearCache::new(100));
        let g = c.generation("k");
        c.invalidate("k");
        c.insert("k", g, &rec("k", 6));
        assert!(c.get("k", crate::record::now_ms()).is_none());
        let g = c.generation("k");
        c.insert("k", g, &rec("k", 6));
        assert_eq!(c.get("k", crate::record::now_ms()).unwrap().version, 6);
    }

    #[test]
    fn a_refused_insert_drops_the_older_entry() {
        // Our save of v6 raced an invalidation of another key of the shard:
        // the v5 we held must not survive (Redis will not announce our own
        // write of v6).
        let c = Cache::new(NearCache::new(100));
        let g = c.generation("k");
        c.insert("k", g, &rec("k", 5));
        let g = c.generation("k");
        let other = (0..1000)
            .map(|i| format!("o{i}"))
            .find(|o| std::ptr::eq(c.shard(o), c.shard("k")))
            .unwrap();
        c.invalidate(&other);
        c.insert("k", g, &rec("k", 6));
        assert!(c.get("k", crate::record::now_ms()).is_none());
    }

    #[test]
    fn never_replaces_with_an_older_version() {
        let c = Cache::new(NearCache::new(100));
        let g = c.generation("k");
        c.insert("k", g, &rec("k", 7));
        c.insert("k", g, &rec("k", 6));
        assert_eq!(c.get("k", crate::record::now_ms()).unwrap().version, 7);
    }

    #[test]
    fn bounded_and_aged() {
        let c = Cache::new(NearCache::new(32));
        for i in 0..1000 {
            let k = format!("k{i}");
            let g = c.generation(&k);
            c.insert(&k, g, &rec(&k, 1));
        }
        assert!(c.len() <= 32, "{}", c.len());
        let c = Cache::new(NearCache::new(10).with_max_age(Duration::ZERO));
        let g = c.generation("k");
        c.insert("k", g, &rec("k", 1));
        assert!(c.get("k", crate::record::now_ms()).is_none());
        assert_eq!(c.stats().misses, 1);
    }

    #[test]
    fn clear_drops_all_and_blocks_inflight_inserts() {
        let c = Cache::new(NearCache::new(100));
        let g = c.generation("a");
        c.insert("a", g, &rec("a", 1));
        let g2 = c.generation("b");
        c.clear();
        c.insert("b", g2, &rec("b", 1));
        let now = crate::record::now_ms();
        assert!(c.get("a", now).is_none() && c.get("b", now).is_none());
        assert_eq!(c.stats().flushes, 1);
    }
}
