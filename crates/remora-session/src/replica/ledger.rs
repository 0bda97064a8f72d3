//! The replay ledger for strict mode: session id -> highest replica sequence
//! issued. A replica older than the ledger's entry is refused as `stale`, so
//! only the newest replica of a session can restore it; an invalidated
//! session's entry is a tombstone that refuses every replica.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::StoreError;
use crate::store::BoxFuture;

/// The sequence written when a session is invalidated: no replica is newer.
pub const TOMBSTONE: u64 = u64::MAX;

/// Where strict mode keeps the newest sequence per session. Implementations
/// must be shared by every server that may restore the session.
pub trait ReplayLedger: Send + Sync + 'static {
    /// Records that a replica with `seq` was issued for `id` (keeps the
    /// maximum); the entry may be forgotten after `ttl`.
    fn record<'a>(
        &'a self,
        id: &'a str,
        seq: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The highest sequence recorded for `id`, if any.
    fn newest<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
}

/// A ledger in this process's memory: for tests and single-process use only
/// (other servers cannot see it). Bounded: the oldest entries are dropped
/// beyond `max_entries`.
#[derive(Debug)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<String, (u64, Instant)>>,
    max_entries: usize,
}

impl MemoryLedger {
    /// A memory ledger holding at most `max_entries` sessions.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_entries,
        }
    }
}

impl ReplayLedger for MemoryLedger {
    fn record<'a>(
        &'a self,
        id: &'a str,
        seq: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut e = self.entries.lock();
            let now = Instant::now();
            if e.len() >= self.max_entries && !e.contains_key(id) {
                e.retain(|_, (_, until)| *until > now);
                if e.len() >= self.max_entries
                    && let Some(k) = e
                        .iter()
                        .min_by_key(|(_, (_, until))| *until)
                        .map(|(k, _)| k.clone())
                {
                    e.remove(&k);
                }
            }
            let slot = e.entry(id.to_owned()).or_insert((0, now));
            slot.0 = slot.0.max(seq);
            slot.1 = now + ttl;
            Ok(())
        })
    }

    fn newest<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let e = self.entries.lock();
            Ok(e.get(id)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(s, _)| *s))
        })
    }
}

#[cfg(feature = "redis")]
pub use self::redis_ledger::RedisLedger;

#[cfg(feature = "redis")]
mod redis_ledger {
    use super::*;
    use redis::aio::ConnectionManager;

    const RECORD: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if seq > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

    /// A ledger in Redis: one string key per session (`PREFIX` + id) holding
    /// the highest sequence, with the session's lifetime as expiry. Updated
    /// with a Lua script so the maximum is kept under concurrency.
    #[derive(Clone)]
    pub struct RedisLedger {
        conn: ConnectionManager,
        prefix: String,
        script: redis::Script,
    }

    impl std::fmt::Debug for RedisLedger {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisLedger")
                .field("prefix", &self.prefix)
                .finish()
        }
    }

    impl RedisLedger {
        /// A ledger on `conn` with keys `prefix` + session id.
        pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
            Self {
                conn,
                prefix: prefix.into(),
                script: redis::Script::new(RECORD),
            }
        }
    }

    impl ReplayLedger for RedisLedger {
        fn record<'a>(
            &'a self,
            id: &'a str,
            seq: u64,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                let mut conn = self.conn.clone();
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                // Lua numbers are doubles: store the tombstone as 2^53.
                let seq = seq.min(1 << 53);
                let _: i64 = self
                    .script
                    .key(format!("{}{}", self.prefix, id))
                    .arg(seq)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(StoreError::Redis)?;
                Ok(())
            })
        }

        fn newest<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
            Box::pin(async move {
                let mut conn = self.conn.clone();
                let v: Option<u64> = redis::cmd("GET")
                    .arg(format!("{}{}", self.prefix, id))
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::Redis)?;
                Ok(v.map(|s| if s >= 1 << 53 { TOMBSTONE } else { s }))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_ledger_keeps_the_maximum_and_is_bounded() {
        let l = MemoryLedger::new(2);
        let ttl = Duration::from_secs(60);
        l.record("a", 5, ttl).await.unwrap();
        l.record("a", 3, ttl).await.unwrap();
        assert_eq!(l.newest("a").await.unwrap(), Some(5));
        l.record("b", 1, ttl).await.unwrap();
        l.record("c", 1, ttl).await.unwrap();
        assert_eq!(l.entries.lock().len(), 2);
        assert_eq!(l.newest("zzz").await.unwrap(), None);
    }
}
