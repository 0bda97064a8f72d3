//! [`RedisStore`]: sessions in Redis (single node or Cluster), expiring
//! natively, with an optional near cache kept coherent by Redis itself.
//!
//! Each session is one string at `{prefix}{id}`: a 64-byte header of four
//! zero-padded 16-digit decimal fields — version, accessed at, idle deadline,
//! absolute deadline (Unix ms) — followed by the record as JSON. A load is
//! one `GET`; a save one Lua compare-and-set on the header's version: the
//! script writes with `SET ... PXAT ... GET` and checks the version of the
//! value it replaced; on a mismatch it puts that value back, with its own
//! expiry, before returning it (a script runs atomically, so nobody sees the
//! refused write). A touch rewrites the two middle header fields in place
//! (`SETRANGE`) and moves the expiry. Every command touches one key, so the
//! store works unchanged on Redis Cluster.
//!
//! On a single node, commands that requests issue on one connection at about
//! the same moment go out as one pipeline (the `batch` module,
//! [`RedisStoreBuilder::coalesce`]).
//!
//! With a near cache ([`RedisStoreBuilder::near_cache`], single node only),
//! loads of sessions this process used recently are answered from memory:
//! the connections use RESP3 with `CLIENT TRACKING ON NOLOOP`, so Redis
//! remembers which keys each connection read and pushes an invalidation
//! when *another* client changes one of them; the entry is then dropped (see
//! the `near` module for the rules that keep this exact). A session always
//! uses the same connection. A write ends the writer's own tracking of a
//! key, so a save is followed, in the same pipeline, by a read of the
//! version (`GETRANGE`), which renews it; the saved record is kept only if
//! that read sees its own version (nobody wrote in between). The touch
//! script reads the key again itself. A request then costs one Redis round
//! trip, the save.

mod batch;
mod near;

pub use batch::CoalescingStats;
pub use near::{NearCache, NearCacheStats};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, IntoConnectionInfo, PushInfo, PushKind, Script, Value};

use super::{BoxFuture, SaveOutcome, Store};
use crate::error::StoreError;
use crate::record::{Record, now_ms};
use batch::Batcher;
use near::Cache;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "remora:session:";
/// Connections [`RedisStore::connect`] opens to a single node. Each is
/// multiplexed; several avoid queueing every request behind one socket.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Width of one header field.
const FIELD: usize = 16;
/// Length of the header before the record's JSON.
const HEADER: usize = 4 * FIELD;

// KEYS[1] the key; ARGV[1] expected version (16 digits), ARGV[2] the new
// value, ARGV[3] its expiry (Unix ms). Writes first and checks after (one
// `SET ... GET` instead of a read and a write: each `redis.call` costs
// about as much as the command it runs): if the value replaced was not
// the expected version, it is put back with its own expiry (from its
// header) before the script returns, so no other client ever sees the
// write. Returns 1 when written, else the stored value ('' for none).
const SAVE: &str = r"
local old = redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3], 'GET')
if not old then
  if ARGV[1] == '0000000000000000' then return 1 end
  redis.call('DEL', KEYS[1])
  return ''
end
if string.sub(old, 1, 16) == ARGV[1] then return 1 end
local i = tonumber(string.sub(old, 33, 48))
local x = tonumber(string.sub(old, 49, 64))
if i and x and math.min(i, x) > 0 then
  redis.call('SET', KEYS[1], old, 'PXAT', string.format('%d', math.min(i, x)))
else
  redis.call('SET', KEYS[1], old, 'KEEPTTL')
end
return old
";

// KEYS[1] the key; ARGV[1] accessed at, ARGV[2] idle deadline (Unix ms),
// ARGV[3] '1' to renew tracking (as in SAVE). A record whose deadline has
// come by ARGV[1] is left alone: Redis keeps a key through the very
// millisecond of its `PEXPIREAT`, when a load already finds it expired, and
// a touch then must not bring it back.
const TOUCH: &str = r"
local h = redis.call('GETRANGE', KEYS[1], 0, 63)
if #h < 64 then return 0 end
local a = math.max(tonumber(string.sub(h, 17, 32)), tonumber(ARGV[1]))
local x = tonumber(string.sub(h, 49, 64))
local old = tonumber(string.sub(h, 33, 48))
if math.min(old, x) <= tonumber(ARGV[1]) then return 0 end
local i = math.min(math.max(old, tonumber(ARGV[2])), x)
redis.call('SETRANGE', KEYS[1], 16, string.format('%016d%016d', a, i))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', i))
if ARGV[3] == '1' then redis.call('STRLEN', KEYS[1]) end
return 1
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// How a [`RedisStore`] connects: see [`RedisStore::builder`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    connections: usize,
    prefix: String,
    near: Option<NearCache>,
    coalesce: bool,
}

impl RedisStoreBuilder {
    /// Connections to open (default [`DEFAULT_CONNECTIONS`], at least 1).
    /// A session always uses the same one.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Key prefix (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keeps recently used records in memory (see [`NearCache`]), kept
    /// coherent by Redis's invalidation pushes. Needs Redis 6 or later.
    pub fn near_cache(mut self, cfg: NearCache) -> Self {
        self.near = Some(cfg);
        self
    }

    /// Whether commands that requests issue on one connection at about the
    /// same moment go to Redis as one pipeline (default `true`): one system
    /// call on each side for many saves, which under load costs far less
    /// CPU than one each, and nothing waits on a timer for it. Off, every
    /// command is written as soon as it is issued.
    pub fn coalesce(mut self, on: bool) -> Self {
        self.coalesce = on;
        self
    }

    /// Connects.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(StoreError::Redis)?;
        let cache = self.near.map(|c| Arc::new(Cache::new(c)));
        if cache.is_some() {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(StoreError::Redis)?;
        let tracked: Arc<[AtomicU64]> = (0..self.connections).map(|_| AtomicU64::new(0)).collect();
        let mut conns = Vec::with_capacity(self.connections);
        for j in 0..self.connections {
            let mut cfg = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_max_delay(std::time::Duration::from_millis(500))
                .set_connection_timeout(Some(std::time::Duration::from_millis(500)));
            if let Some(cache) = &cache {
                let (cache, tracked) = (cache.clone(), tracked.clone());
                cfg = cfg.set_push_sender(move |p: PushInfo| {
                    on_push(&cache, &tracked, j, p);
                    Ok::<(), redis::aio::SendError>(())
                });
            }
            let cm = ConnectionManager::new_with_config(client.clone(), cfg)
                .await
                .map_err(StoreError::Redis)?;
            conns.push(Conn::Single(cm));
        }
        let mut store = RedisStore::build(conns);
        if self.coalesce {
            store.batchers = store
                .conns
                .iter()
                .map(|c| match c {
                    Conn::Single(cm) => Some(Batcher::new(cm.clone())),
                    Conn::Cluster(_) => None,
                })
                .collect();
        }
        store.prefix = self.prefix;
        store.cache = cache;
        store.tracked = tracked;
        Ok(store)
    }
}

/// Handles a RESP3 push on connection `j`: an invalidation (a key this
/// connection read was changed by another client) drops the entry; a lost
/// connection drops everything.
fn on_push(cache: &Cache, tracked: &[AtomicU64], j: usize, p: PushInfo) {
    match p.kind {
        PushKind::Invalidate => match p.data.first() {
            Some(Value::Array(keys)) => {
                for k in keys {
                    if let Value::BulkString(b) = k
                        && let Ok(key) = std::str::from_utf8(b)
                    {
                        cache.invalidate(key);
                    }
                }
            }
            // A nil key list: the whole database was flushed.
            _ => cache.clear(),
        },
        PushKind::Disconnection => {
            tracked[j].store(0, Ordering::SeqCst);
            cache.clear();
            tracing::debug!(connection = j, "redis connection lost; near cache dropped");
        }
        _ => {}
    }
}

/// The connection a key always uses (FNV-1a: the same on every call).
fn route(key: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// A store on Redis.
#[derive(Clone)]
pub struct RedisStore {
    conns: Arc<[Conn]>,
    prefix: String,
    save: Script,
    touch: Script,
    cache: Option<Arc<Cache>>,
    /// Per connection: the `CLIENT ID` whose tracking is on, 0 = not known.
    tracked: Arc<[AtomicU64]>,
    /// Per connection: its coalescing queue (empty: coalescing off).
    batchers: Arc<[Option<Arc<Batcher>>]>,
    tracking_setup: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("connections", &self.conns.len())
            .field("near_cache", &self.cache.is_some())
            .field("coalesce", &!self.batchers.is_empty())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to a single Redis node (`redis://host:port/db`) through
    /// [`ConnectionManager`]s, which reconnect by themselves after failures.
    /// Opens [`DEFAULT_CONNECTIONS`] connections, no near cache.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Connects to a single Redis node with `connections` (at least one)
    /// [`ConnectionManager`]s.
    pub async fn connect_with(url: &str, connections: usize) -> Result<Self, StoreError> {
        Self::builder(url).connections(connections).connect().await
    }

    /// A builder for a single node: connections, prefix, near cache.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), remora_session::StoreError> {
    /// use remora_session::store::{NearCache, RedisStore};
    /// let store = RedisStore::builder("redis://127.0.0.1:6379")
    ///     .prefix("shop:session:")
    ///     .near_cache(NearCache::new(100_000))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            connections: DEFAULT_CONNECTIONS,
            prefix: DEFAULT_PREFIX.to_owned(),
            near: None,
            coalesce: true,
        }
    }

    /// Uses an existing [`ConnectionManager`] (no near cache).
    pub fn with_manager(cm: ConnectionManager) -> Self {
        Self::build(vec![Conn::Single(cm)])
    }

    /// Connects to a Redis Cluster given some of its nodes' URLs (no near
    /// cache).
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        let client =
            redis::cluster::ClusterClient::new(nodes.to_vec()).map_err(StoreError::Redis)?;
        let c = client
            .get_async_connection()
            .await
            .map_err(StoreError::Redis)?;
        Ok(Self::build(vec![Conn::Cluster(c)]))
    }

    fn build(conns: Vec<Conn>) -> Self {
        let n = conns.len();
        RedisStore {
            conns: conns.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            save: Script::new(SAVE),
            touch: Script::new(TOUCH),
            cache: None,
            tracked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tracking_setup: Default::default(),
            batchers: Arc::new([]),
        }
    }

    /// Sets the key prefix (default `remora:session:`). Set it before the
    /// store is first used.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What coalescing did (`None` when it is off, or on a Cluster).
    pub fn coalescing_stats(&self) -> Option<CoalescingStats> {
        let mut stats = CoalescingStats::default();
        let mut any = false;
        for b in self.batchers.iter().flatten() {
            b.add_stats(&mut stats);
            any = true;
        }
        any.then_some(stats)
    }

    /// The near cache's counters (`None` without a near cache).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    fn key(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + id.len());
        k.push_str(&self.prefix);
        k.push_str(id);
        k
    }

    /// Makes sure connection `j` tracks our prefix; returns its `CLIENT ID`,
    /// or `None` when tracking could not be turned on (nothing is cached).
    async fn tracking(&self, j: usize) -> Option<u64> {
        let id = self.tracked[j].load(Ordering::SeqCst);
        if id != 0 {
            return Some(id);
        }
        let _g = self.tracking_setup.lock().await;
        let id = self.tracked[j].load(Ordering::SeqCst);
        if id != 0 {
            return Some(id);
        }
        let mut conn = self.conns[j].clone();
        let r: redis::RedisResult<((), u64)> = redis::pipe()
            .cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("NOLOOP")
            .cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(((), id)) => {
                self.tracked[j].store(id, Ordering::SeqCst);
                Some(id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis: could not turn on client tracking; near cache unused for now");
                None
            }
        }
    }

    /// Runs the commands `build` makes on connection `j`, adjacent and in
    /// order in one pipeline (queued with others' when coalescing is on) —
    /// followed by `CLIENT ID` when `with_id` — loading the script the first
    /// command calls (its code: `script`) and, if Redis lost it, building
    /// the commands again and retrying once. Returns the replies in order.
    async fn run(
        &self,
        j: usize,
        build: impl Fn() -> Vec<Cmd>,
        script: Option<&'static str>,
        with_id: bool,
    ) -> Result<(Vec<Value>, Option<u64>), StoreError> {
        let batcher = self.batchers.get(j).and_then(Option::as_ref);
        let mut conn = self.conns[j].clone();
        let r = match batcher {
            Some(b) => b.query(build(), with_id).await,
            None => batch::query_now(&mut conn, build(), with_id).await,
        };
        match (r, script) {
            (Err(e), Some(code)) if e.code() == Some("NOSCRIPT") => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(code)
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(StoreError::Redis)?;
                match batcher {
                    Some(b) => b.query(build(), with_id).await,
                    None => batch::query_now(&mut conn, build(), with_id).await,
                }
                .map_err(StoreError::Redis)
            }
            (r, _) => r.map_err(StoreError::Redis),
        }
    }

    /// Like [`RedisStore::run`] for one command: its reply.
    async fn run_one(
        &self,
        j: usize,
        build: impl Fn() -> Cmd,
        script: Option<&'static str>,
        with_id: bool,
    ) -> Result<(Value, Option<u64>), StoreError> {
        let (mut values, id) = self.run(j, || vec![build()], script, with_id).await?;
        let v = values
            .pop()
            .ok_or(StoreError::Malformed("a command got no reply"))?;
        Ok((v, id))
    }
}

/// The stored form of a record: header, then JSON.
fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(HEADER + 256);
    for v in [
        record.version,
        record.accessed_at,
        record.idle_deadline,
        record.absolute_deadline,
    ] {
        out.extend_from_slice(&padded(v)?);
    }
    serde_json::to_writer(&mut out, record).map_err(StoreError::Codec)?;
    Ok(out)
}

/// `v` as one header field: 16 zero-padded decimal digits. (Written by
/// hand: formatting with `{:016}` costs more than the rest of the header.)
fn padded(mut v: u64) -> Result<[u8; FIELD], StoreError> {
    let mut out = [b'0'; FIELD];
    for d in out.iter_mut().rev() {
        if v == 0 {
            break;
        }
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    if v != 0 {
        return Err(StoreError::Malformed(
            "a header field does not fit 16 digits",
        ));
    }
    Ok(out)
}

fn field(h: &[u8], i: usize) -> Result<u64, StoreError> {
    std::str::from_utf8(&h[i * FIELD..(i + 1) * FIELD])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(StoreError::Malformed("header field is not a number"))
}

/// Parses a stored value; `None` if it is expired.
fn decode(bytes: &[u8]) -> Result<Option<Record>, StoreError> {
    if bytes.len() < HEADER {
        return Err(StoreError::Malformed("shorter than its header"));
    }
    let mut r = Record::from_json(&bytes[HEADER..]).map_err(StoreError::Codec)?;
    r.version = field(bytes, 0)?;
    r.accessed_at = field(bytes, 1)?;
    r.idle_deadline = field(bytes, 2)?;
    r.absolute_deadline = field(bytes, 3)?;
    Ok((!r.is_expired(now_ms())).then_some(r))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Store for RedisStore {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            let j = route(&key, self.conns.len());
            let get = || {
                let mut get = redis::cmd("GET");
                get.arg(&key);
                get
            };
            let Some(cache) = &self.cache else {
                let (v, _) = self.run_one(j, get, None, false).await?;
                return match v {
                    Value::BulkString(b) => decode(&b),
                    _ => Ok(None),
                };
            };
            if let Some(r) = cache.get(&key, now_ms()) {
                return Ok(Some(r));
            }
            let tracked = self.tracking(j).await;
            let generation = cache.generation(&key);
            let (v, client) = self.run_one(j, get, None, tracked.is_some()).await?;
            let rec = match v {
                Value::BulkString(b) => decode(&b)?,
                _ => None,
            };
            if let Some(r) = &rec {
                self.keep(j, &key, generation, tracked, client, r);
            }
            Ok(rec)
        })
    }

    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(async move {
            let key = self.key(&record.id);
            let j = route(&key, self.conns.len());
            let value = encode(record)?;
            let tracked = match &self.cache {
                Some(_) => self.tracking(j).await,
                None => None,
            };
            let generation = self.cache.as_ref().map(|c| c.generation(&key));
            let expected = padded(expected_version)?;
            let build = || {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.save.get_hash())
                    .arg(1)
                    .arg(&key)
                    .arg(&expected[..])
                    .arg(&value)
                    .arg(record.expires_at());
                let mut cmds = vec![cmd];
                if tracked.is_some() {
                    // A write ends the writer's own tracking of the key;
                    // this read renews it. Another save in between would
                    // change the version, so the record is kept only if
                    // this read sees its own version.
                    let mut read = redis::cmd("GETRANGE");
                    read.arg(&key).arg(0).arg(FIELD - 1);
                    cmds.push(read);
                }
                cmds
            };
            let (mut replies, client) = self.run(j, build, Some(SAVE), tracked.is_some()).await?;
            let seen = if tracked.is_some() {
                replies.pop()
            } else {
                None
            };
            let v = replies
                .pop()
                .ok_or(StoreError::Malformed("a save got no reply"))?;
            match v {
                Value::Int(1) => {
                    if let Some(g) = generation {
                        let mine = matches!(&seen, Some(Value::BulkString(b))
                            if padded(record.version).is_ok_and(|v| b.as_slice() == v));
                        if mine {
                            self.keep(j, &key, g, tracked, client, record);
                        } else if let Some(c) = &self.cache {
                            c.invalidate(&key);
                        }
                    }
                    Ok(SaveOutcome::Saved {
                        new_version: record.version,
                    })
                }
                other => {
                    if let Some(c) = &self.cache {
                        c.invalidate(&key);
                    }
                    let current = match other {
                        Value::BulkString(b) if !b.is_empty() => decode(&b)?,
                        _ => None,
                    };
                    Ok(SaveOutcome::Conflict { current })
                }
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            let j = route(&key, self.conns.len());
            if let Some(c) = &self.cache {
                c.invalidate(&key);
            }
            let del = || {
                let mut del = redis::cmd("DEL");
                del.arg(&key);
                del
            };
            let r = self.run_one(j, del, None, false).await.map(|_| ());
            if let Some(c) = &self.cache {
                c.invalidate(&key);
            }
            r
        })
    }

    fn touch<'a>(
        &'a self,
        id: &'a str,
        accessed_at: u64,
        idle_deadline: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            let j = route(&key, self.conns.len());
            let tracked = match &self.cache {
                Some(_) => self.tracking(j).await,
                None => None,
            };
            let cmd = || {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.touch.get_hash())
                    .arg(1)
                    .arg(&key)
                    .arg(accessed_at)
                    .arg(idle_deadline)
                    .arg(if tracked.is_some() { "1" } else { "0" });
                cmd
            };
            let (v, _) = self.run_one(j, cmd, Some(TOUCH), false).await?;
            let touched = matches!(v, Value::Int(1));
            if let Some(c) = &self.cache {
                if touched {
                    c.touched(&key, accessed_at, idle_deadline);
                } else {
                    c.invalidate(&key);
                }
            }
            Ok(touched)
        })
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

impl RedisStore {
    /// Caches `record` if the reply came over the connection whose tracking
    /// is on; otherwise drops what is cached for `key` (and, if the
    /// connection changed, everything read over the old one).
    fn keep(
        &self,
        j: usize,
        key: &str,
        generation: u64,
        tracked: Option<u64>,
        client: Option<u64>,
        record: &Record,
    ) {
        let Some(cache) = &self.cache else { return };
        match (tracked, client) {
            (Some(t), Some(c)) if t == c => cache.insert(key, generation, record),
            (Some(t), Some(_)) => {
                // The connection was replaced: what was read over the old
                // one is no longer tracked.
                let _ = self.tracked[j].compare_exchange(t, 0, Ordering::SeqCst, Ordering::SeqCst);
                cache.clear();
            }
            // Tracking is off for now: nothing new is kept, and what was
            // kept may be older than this reply.
            _ => cache.forget(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_and_rejects_garbage() {
        let mut r = Record::new("abc".into(), now_ms(), 60_000, 600_000);
        r.version = 42;
        let b = encode(&r).unwrap();
        assert_eq!(&b[..FIELD], b"0000000000000042");
        assert_eq!(decode(&b).unwrap(), Some(r.clone()));
        assert!(matches!(decode(b"short"), Err(StoreError::Malformed(_))));
        let mut bad = b.clone();
        bad[3] = b'x';
        assert!(matches!(decode(&bad), Err(StoreError::Malformed(_))));
        let mut past = r;
        past.idle_deadline = 1;
        assert_eq!(decode(&encode(&past).unwrap()).unwrap(), None);
    }

    #[test]
    fn header_fields_are_sixteen_padded_digits() {
        for v in [0, 1, 9, 10, 42, 1_800_000_000_000, 9_999_999_999_999_999] {
            let f = padded(v).unwrap();
            assert_eq!(std::str::from_utf8(&f).unwrap(), format!("{v:016}"));
        }
        assert!(padded(10_000_000_000_000_000).is_err());
        assert!(padded(u64::MAX).is_err());
    }

    #[test]
    fn route_is_stable_and_in_range() {
        for n in 1..6 {
            for k in ["a", "remora:session:xyz", ""] {
                assert!(route(k, n) < n);
                assert_eq!(route(k, n), route(k, n));
            }
        }
    }
}
