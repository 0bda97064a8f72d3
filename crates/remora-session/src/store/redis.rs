//! [`RedisStore`]: sessions in Redis (single node or Cluster), expiring
//! natively with `PEXPIREAT`.
//!
//! Each session is one hash at `{prefix}{id}` with fields `v` (version), `d`
//! (record JSON), `a` (accessed at), `i` (idle deadline) and `x` (absolute
//! deadline). Save is a Lua compare-and-set on `v`; touch updates `a`/`i`
//! and the key's expiry without rewriting `d`. Every command touches one key,
//! so the store works unchanged on Redis Cluster.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{BoxFuture, SaveOutcome, Store};
use crate::error::StoreError;
use crate::record::{Record, now_ms};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "remora:session:";
/// Connections [`RedisStore::connect`] opens to a single node. Each is
/// multiplexed; several avoid queueing every request behind one socket.
pub const DEFAULT_CONNECTIONS: usize = 4;

const SAVE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v') or '0'
if cur ~= ARGV[1] then
  return redis.call('HGET', KEYS[1], 'd') or ''
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3], 'a', ARGV[4], 'i', ARGV[5], 'x', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
return 1
";

const TOUCH: &str = r"
local f = redis.call('HMGET', KEYS[1], 'a', 'i', 'x')
if not f[1] or not f[2] or not f[3] then return 0 end
local a = math.max(tonumber(f[1]), tonumber(ARGV[1]))
local i = math.min(math.max(tonumber(f[2]), tonumber(ARGV[2])), tonumber(f[3]))
redis.call('HSET', KEYS[1], 'a', string.format('%d', a), 'i', string.format('%d', i))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', i))
return 1
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A store on Redis.
#[derive(Clone)]
pub struct RedisStore {
    conns: std::sync::Arc<[Conn]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    prefix: String,
    save: Script,
    touch: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to a single Redis node (`redis://host:port/db`) through a
    /// [`ConnectionManager`], which reconnects by itself after failures.
    /// Opens [`DEFAULT_CONNECTIONS`] connections, used in turn.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_CONNECTIONS).await
    }

    /// Connects to a single Redis node with `connections` (at least one)
    /// [`ConnectionManager`]s, used in turn.
    pub async fn connect_with(url: &str, connections: usize) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        let cfg = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(std::time::Duration::from_millis(500))
            .set_connection_timeout(Some(std::time::Duration::from_millis(500)));
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let cm = ConnectionManager::new_with_config(client.clone(), cfg.clone())
                .await
                .map_err(StoreError::Redis)?;
            conns.push(Conn::Single(cm));
        }
        Ok(Self::build(conns))
    }

    /// Uses an existing [`ConnectionManager`].
    pub fn with_manager(cm: ConnectionManager) -> Self {
        Self::build(vec![Conn::Single(cm)])
    }

    /// Connects to a Redis Cluster given some of its nodes' URLs.
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
        RedisStore {
            conns: conns.into(),
            next: Default::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            save: Script::new(SAVE),
            touch: Script::new(TOUCH),
        }
    }

    /// Sets the key prefix (default `remora:session:`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, id)
    }

    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conns[i % self.conns.len()].clone()
    }
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

fn parse_loaded(
    v: (Option<String>, Option<u64>, Option<u64>),
) -> Result<Option<Record>, StoreError> {
    let (Some(d), a, i) = v else {
        return Ok(None);
    };
    let mut r = Record::from_json(d.as_bytes()).map_err(StoreError::Codec)?;
    if let Some(a) = a {
        r.accessed_at = r.accessed_at.max(a);
    }
    if let Some(i) = i {
        r.idle_deadline = i;
    }
    Ok((!r.is_expired(now_ms())).then_some(r))
}

impl Store for RedisStore {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            let v: (Option<String>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("d")
                .arg("a")
                .arg("i")
                .query_async(&mut self.conn())
                .await
                .map_err(StoreError::Redis)?;
            parse_loaded(v)
        })
    }

    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(async move {
            let key = self.key(&record.id);
            let json =
                String::from_utf8(record.to_json().map_err(StoreError::Codec)?).unwrap_or_default();
            let mut inv = self.save.key(&key);
            inv.arg(expected_version.to_string())
                .arg(record.version.to_string())
                .arg(json)
                .arg(record.accessed_at)
                .arg(record.idle_deadline)
                .arg(record.absolute_deadline)
                .arg(record.expires_at());
            let v: Value = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(StoreError::Redis)?;
            match v {
                Value::Int(1) => Ok(SaveOutcome::Saved {
                    new_version: record.version,
                }),
                other => {
                    let current = match other {
                        Value::BulkString(b) if !b.is_empty() => {
                            Some(Record::from_json(&b).map_err(StoreError::Codec)?)
                        }
                        _ => None,
                    };
                    // The `d` field does not carry touches; reload for an
                    // accurate idle deadline.
                    let current = match current {
                        Some(_) => self.load(&record.id).await?,
                        None => None,
                    };
                    Ok(SaveOutcome::Conflict { current })
                }
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(StoreError::Redis)
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
            let mut inv = self.touch.key(&key);
            inv.arg(accessed_at).arg(idle_deadline);
            let n: i64 = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(StoreError::Redis)?;
            Ok(n == 1)
        })
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}
