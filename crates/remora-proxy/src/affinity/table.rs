//! The stick table: key -> server name, with idle TTL and LRU eviction.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::Arc;

use parking_lot::Mutex;
use siphasher::sip128::{Hasher128 as _, SipHasher13 as Sip128};

/// Keys longer than this are stored as a 128-bit hash of themselves.
pub const MAX_STORED_KEY: usize = 64;
const SHARDS: usize = 16;
const NIL: usize = usize::MAX;

/// A bounded, sharded map from an affinity key (client IP, header value,
/// application cookie value, cookie id) to a server name. Entries expire
/// `ttl` seconds after their last use; when a shard is full, its least
/// recently used entry is evicted. Memory is bounded by `capacity` entries
/// of at most [`MAX_STORED_KEY`] + 17 key bytes plus the shared name.
pub struct StickTable {
    shards: Vec<Mutex<Shard>>,
    capacity: usize,
    ttl_secs: u64,
    hash_keys: (u64, u64),
}

impl std::fmt::Debug for StickTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickTable")
            .field("capacity", &self.capacity)
            .field("ttl_secs", &self.ttl_secs)
            .field("len", &self.len())
            .finish()
    }
}

/// One entry as returned by [`StickTable::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not in the table.
    Missing,
    /// Was in the table but idle longer than the TTL (now removed).
    Expired(Arc<str>),
    /// Live entry (its TTL was refreshed).
    Found(Arc<str>),
}

struct Node {
    key: Box<[u8]>,
    server: Arc<str>,
    expires: u64,
    prev: usize,
    next: usize,
}

/// An LRU list over a slab: `head` most recent, `tail` least recent.
struct Shard {
    map: HashMap<Box<[u8]>, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[i].prev = NIL;
        self.nodes[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn remove_index(&mut self, i: usize) {
        self.unlink(i);
        let key = std::mem::take(&mut self.nodes[i].key);
        self.map.remove(&key);
        self.free.push(i);
    }

    fn get(&mut self, key: &[u8], now: u64, ttl: u64) -> Lookup {
        let Some(&i) = self.map.get(key) else {
            return Lookup::Missing;
        };
        if self.nodes[i].expires <= now {
            let server = Arc::clone(&self.nodes[i].server);
            self.remove_index(i);
            return Lookup::Expired(server);
        }
        self.nodes[i].expires = now.saturating_add(ttl);
        self.unlink(i);
        self.push_front(i);
        Lookup::Found(Arc::clone(&self.nodes[i].server))
    }

    fn insert(&mut self, key: &[u8], server: Arc<str>, expires: u64) {
        if let Some(&i) = self.map.get(key) {
            self.nodes[i].server = server;
            self.nodes[i].expires = expires;
            self.unlink(i);
            self.push_front(i);
            return;
        }
        if self.capacity == 0 {
            return;
        }
        while self.map.len() >= self.capacity && self.tail != NIL {
            let t = self.tail;
            self.remove_index(t);
        }
        let node = Node {
            key: key.into(),
            server,
            expires,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.map.insert(key.into(), i);
        self.push_front(i);
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(&i) = self.map.get(key) {
            self.remove_index(i);
        }
    }

    /// Live entries from most to least recent; removes expired ones.
    fn live(&mut self, now: u64) -> Vec<(Box<[u8]>, Arc<str>, u64)> {
        let mut out = Vec::with_capacity(self.map.len());
        let mut expired = Vec::new();
        let mut i = self.head;
        while i != NIL {
            let n = &self.nodes[i];
            if n.expires <= now {
                expired.push(i);
            } else {
                out.push((n.key.clone(), Arc::clone(&n.server), n.expires));
            }
            i = n.next;
        }
        for i in expired {
            self.remove_index(i);
        }
        out
    }
}

impl StickTable {
    /// A table of at most `capacity` entries (spread over shards) whose
    /// entries live `ttl_secs` after their last use.
    pub fn new(capacity: usize, ttl_secs: u64) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        // Shard choice keyed per table so clients cannot aim at one shard.
        let (k0, k1) = (rand::random::<u64>(), rand::random::<u64>());
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            capacity,
            ttl_secs,
            hash_keys: (k0, k1),
        }
    }

    /// Configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Idle TTL in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The stored form of `key`: itself when short, else `#` + its 128-bit
    /// SipHash-1-3 under the fixed Remora key (stable across tables, so
    /// reloads carry long keys over too).
    fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        if key.len() <= MAX_STORED_KEY {
            return key.to_vec();
        }
        let mut h =
            Sip128::new_with_keys(crate::select::hash::HASH_K0, crate::select::hash::HASH_K1);
        h.write(key);
        let mut out = Vec::with_capacity(17);
        out.push(b'#');
        out.extend_from_slice(&h.finish128().as_bytes());
        out
    }

    fn shard(&self, stored: &[u8]) -> &Mutex<Shard> {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.hash_keys.1, self.hash_keys.0);
        h.write(stored);
        &self.shards[(h.finish() % SHARDS as u64) as usize]
    }

    /// Looks `key` up at `now` (Unix seconds); a live entry's TTL restarts.
    pub fn get(&self, key: &[u8], now: u64) -> Lookup {
        let k = self.stored_key(key);
        self.shard(&k).lock().get(&k, now, self.ttl_secs)
    }

    /// Pins `key` to `server` from `now` (Unix seconds) for the TTL.
    pub fn insert(&self, key: &[u8], server: Arc<str>, now: u64) {
        let k = self.stored_key(key);
        self.shard(&k)
            .lock()
            .insert(&k, server, now.saturating_add(self.ttl_secs));
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &[u8]) {
        let k = self.stored_key(key);
        self.shard(&k).lock().remove(&k);
    }

    /// Entries currently stored (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// No entry stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live entries per server name at `now`; drops expired entries.
    pub fn counts(&self, now: u64) -> HashMap<Arc<str>, u64> {
        let mut out: HashMap<Arc<str>, u64> = HashMap::new();
        for shard in &self.shards {
            for (_, server, _) in shard.lock().live(now) {
                *out.entry(server).or_default() += 1;
            }
        }
        out
    }

    /// Copies the live entries of `previous`, keeping their expiry.
    pub fn copy_from(&self, previous: &StickTable, now: u64) {
        if std::ptr::eq(self, previous) {
            return;
        }
        for shard in &previous.shards {
            let live = shard.lock().live(now);
            // Oldest first so the most recent stay most recent here.
            for (key, server, expires) in live.into_iter().rev() {
                self.shard(&key).lock().insert(&key, server, expires);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ttl_refreshes_on_use_and_expires_when_idle() {
        let t = StickTable::new(100, 10);
        t.insert(b"k", "b1".into(), 1000);
        assert_eq!(t.get(b"k", 1009), Lookup::Found("b1".into()));
        // Used at 1009: lives until 1019.
        assert_eq!(t.get(b"k", 1018), Lookup::Found("b1".into()));
        assert_eq!(t.get(b"k", 1040), Lookup::Expired("b1".into()));
        assert_eq!(t.get(b"k", 1040), Lookup::Missing);
    }

    #[test]
    fn lru_evicts_least_recent_and_size_is_bounded() {
        let t = StickTable::new(SHARDS * 2, 1000);
        for i in 0..10_000u32 {
            t.insert(&i.to_be_bytes(), "b".into(), 1);
        }
        assert!(t.len() <= SHARDS * 2, "len {}", t.len());
        // A key used constantly survives a flood in its shard.
        let t = StickTable::new(SHARDS * 4, 1000);
        t.insert(b"hot", "h".into(), 1);
        for i in 0..5_000u32 {
            t.insert(&i.to_be_bytes(), "b".into(), 1);
            assert_eq!(t.get(b"hot", 2), Lookup::Found("h".into()));
        }
    }

    #[test]
    fn long_keys_are_hashed_and_counts_work() {
        let t = StickTable::new(100, 10);
        let long = vec![b'x'; 10_000];
        t.insert(&long, "b2".into(), 5);
        assert_eq!(t.get(&long, 6), Lookup::Found("b2".into()));
        t.insert(b"short", "b1".into(), 5);
        let c = t.counts(6);
        assert_eq!(c.get("b1"), Some(&1));
        assert_eq!(c.get("b2"), Some(&1));
        assert!(t.counts(100).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn copy_from_keeps_live_short_entries() {
        let a = StickTable::new(100, 10);
        a.insert(b"1.2.3.4", "b1".into(), 5);
        let b = StickTable::new(100, 10);
        b.copy_from(&a, 6);
        assert_eq!(b.get(b"1.2.3.4", 7), Lookup::Found("b1".into()));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(ops in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100), 0u64..50), 0..300)) {
            let t = StickTable::new(20, 5);
            for (op, key, now) in ops {
                match op % 4 {
                    0 | 1 => t.insert(&key, "s".into(), now),
                    2 => { let _ = t.get(&key, now); }
                    _ => t.remove(&key),
                }
                prop_assert!(t.len() <= 20 + SHARDS);
            }
            let _ = t.counts(25);
        }
    }
}
