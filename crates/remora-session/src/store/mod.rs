//! The [`Store`] trait and its implementations.
//!
//! A store keeps [`Record`]s by session ID with compare-and-set on the
//! record's version. Expired records (see [`Record::expires_at`]) are treated
//! as absent by every operation, whether or not they were swept yet.

use std::future::Future;
use std::pin::Pin;

use crate::error::StoreError;
use crate::record::{Attribute, Record};

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{InvalidTableName, PostgresStore};
#[cfg(feature = "redb")]
pub use redb::RedbStore;
#[cfg(feature = "redis")]
pub use redis::{
    CoalescingStats, DEFAULT_CONNECTIONS, NearCache, NearCacheStats, RedisStore, RedisStoreBuilder,
};

/// A boxed, sendable future: what every [`Store`] method returns, so that
/// `Arc<dyn Store>` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Store::save`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveOutcome {
    /// The record was written; it now has this version.
    Saved {
        /// The version now stored (the record's `version`).
        new_version: u64,
    },
    /// The stored version was not the expected one; nothing was written.
    Conflict {
        /// What the store holds now (`None`: nothing, or expired).
        current: Option<Record>,
    },
}

/// How many compare-and-set rounds the default [`Store::take_once`] tries.
pub const TAKE_ONCE_ROUNDS: u32 = 64;

/// A session store. Object safe: hold it as `Arc<dyn Store>`.
///
/// Every call is wrapped in a timeout by the session layer; implementations
/// need not add their own.
pub trait Store: Send + Sync + 'static {
    /// Loads a live (not expired) record.
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>>;

    /// Writes `record` (its `version` is the new version and must be greater
    /// than `expected_version`) if the store holds version
    /// `expected_version` for `record.id` — `0` meaning "holds nothing live".
    /// The record's expiry is [`Record::expires_at`].
    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>>;

    /// Deletes a record (no error if absent).
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records an access without changing data or version: sets
    /// `accessed_at` and `idle_deadline` (never past the absolute deadline).
    /// Returns whether a live record was found.
    fn touch<'a>(
        &'a self,
        id: &'a str,
        accessed_at: u64,
        idle_deadline: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes expired records; returns how many (stores that expire
    /// natively, like Redis, return 0).
    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Atomically removes the once-only attribute `key` and returns it: of
    /// any number of concurrent callers, on any number of processes, exactly
    /// one gets `Some`. Expired attributes are removed and yield `None`.
    ///
    /// The default implementation is a compare-and-set loop over
    /// [`load`](Store::load) and [`save`](Store::save).
    fn take_once<'a>(
        &'a self,
        id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Attribute>, StoreError>> {
        Box::pin(async move {
            for _ in 0..TAKE_ONCE_ROUNDS {
                let Some(mut rec) = self.load(id).await? else {
                    return Ok(None);
                };
                match rec.attributes.get(key) {
                    Some(a) if a.once => {}
                    _ => return Ok(None),
                }
                let expected = rec.version;
                let taken = rec.attributes.remove(key);
                rec.version = expected + 1;
                match self.save(&rec, expected).await? {
                    SaveOutcome::Saved { .. } => {
                        let now = crate::record::now_ms();
                        return Ok(taken.filter(|a| !a.is_expired(now)));
                    }
                    SaveOutcome::Conflict { .. } => continue,
                }
            }
            Err(StoreError::Contention(TAKE_ONCE_ROUNDS))
        })
    }
}

/// Runs [`Store::sweep_expired`] every `every` on a Tokio task until the
/// returned handle is aborted or dropped with the runtime. Failures are
/// logged and retried at the next tick.
pub fn spawn_sweeper(
    store: std::sync::Arc<dyn Store>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.sweep_expired().await {
                Ok(n) => tracing::debug!(swept = n, "expired sessions swept"),
                Err(e) => tracing::warn!(error = %e, "session sweep failed"),
            }
        }
    })
}
