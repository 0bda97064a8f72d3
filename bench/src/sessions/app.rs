//! The app under test, built once per session library and store: `GET /add`
//! reads a list from the session, appends the next number, keeps the last
//! [`MAX_ITEMS`], saves it and answers with the number it appended (so the
//! load generator can tell a reused session from a lost one).
//!
//! Each variant runs in its own process (`remora-bench sessions --serve
//! KIND`), so neither library shares a runtime or an allocator with the
//! other or with the load generator.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::BenchError;

/// The session key holding the list.
const KEY: &str = "items";
/// The list keeps its last this many items, so sessions stay small.
pub const MAX_ITEMS: usize = 20;
/// Idle timeout of every session (both libraries), so whatever a run
/// leaves in Redis expires by itself.
const IDLE: Duration = Duration::from_secs(10 * 60);

/// Which library and which store an app process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppKind {
    /// `remora-session` with its `RedisStore` and a near cache (the
    /// configuration recommended behind a sticky balancer).
    RemoraRedis,
    /// `remora-session` with its `RedisStore`, no near cache (every request
    /// reads Redis).
    RemoraRedisNocache,
    /// `tower-sessions` with `tower-sessions-redis-store` (fred).
    TowerRedis,
    /// `remora-session` with its `MemoryStore`.
    RemoraMemory,
    /// `tower-sessions` with its `MemoryStore`.
    TowerMemory,
}

impl AppKind {
    /// Every variant, in the order they are measured.
    pub const ALL: [AppKind; 5] = [
        AppKind::RemoraRedis,
        AppKind::RemoraRedisNocache,
        AppKind::TowerRedis,
        AppKind::RemoraMemory,
        AppKind::TowerMemory,
    ];

    /// The name used in the table, logs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AppKind::RemoraRedis => "remora-redis",
            AppKind::RemoraRedisNocache => "remora-redis-nocache",
            AppKind::TowerRedis => "tower-redis",
            AppKind::RemoraMemory => "remora-memory",
            AppKind::TowerMemory => "tower-memory",
        }
    }

    /// Whether this variant keeps its sessions in Redis.
    pub fn uses_redis(self) -> bool {
        matches!(
            self,
            AppKind::RemoraRedis | AppKind::RemoraRedisNocache | AppKind::TowerRedis
        )
    }
}

/// How an app process is configured (from the hidden `--serve` options).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Library and store.
    pub kind: AppKind,
    /// Where to listen.
    pub addr: SocketAddr,
    /// Redis URL (Redis variants).
    pub redis: String,
    /// Key prefix for Remora's `RedisStore` (tower-sessions' store has none:
    /// its keys are the bare session IDs).
    pub prefix: String,
    /// Tokio worker threads.
    pub threads: usize,
    /// Connections in tower-sessions' fred pool.
    pub tower_pool: usize,
    /// Connections of Remora's `RedisStore`.
    pub remora_connections: usize,
    /// Whether Remora's `RedisStore` coalesces commands into pipelines.
    pub remora_coalesce: bool,
}

/// The next list after `items` and the number appended.
fn append(mut items: Vec<u64>) -> (Vec<u64>, u64) {
    let next = items.last().map_or(1, |n| n.saturating_add(1));
    items.push(next);
    if items.len() > MAX_ITEMS {
        let extra = items.len() - MAX_ITEMS;
        items.drain(..extra);
    }
    (items, next)
}

async fn add_remora(
    session: remora_session::Session,
) -> Result<String, remora_session::SessionError> {
    let items: Vec<u64> = session.get(KEY).await?.unwrap_or_default();
    let (items, next) = append(items);
    session.insert(KEY, &items).await?;
    Ok(next.to_string())
}

async fn add_tower(session: tower_sessions::Session) -> Result<String, (StatusCode, String)> {
    let fail =
        |e: tower_sessions::session::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let items: Vec<u64> = session.get(KEY).await.map_err(fail)?.unwrap_or_default();
    let (items, next) = append(items);
    session.insert(KEY, &items).await.map_err(fail)?;
    Ok(next.to_string())
}

fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/health", get(|| async { "ok\n" }))
}

fn remora_app(store: impl remora_session::Store) -> Router {
    let layer = remora_session::SessionLayer::new(store)
        // Plain HTTP on loopback; tower-sessions is configured alike.
        .with_secure(false)
        .with_idle_timeout(IDLE);
    routes().route("/add", get(add_remora)).layer(layer)
}

fn tower_app<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    let idle = tower_sessions::cookie::time::Duration::seconds(IDLE.as_secs() as i64);
    let layer = tower_sessions::SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(idle));
    routes().route("/add", get(add_tower)).layer(layer)
}

/// The app's router for `cfg` (connects to Redis for the Redis variants).
pub async fn build(cfg: &AppConfig) -> Result<Router, BenchError> {
    let setup = |what: &str| {
        let what = format!("{} {what} ({})", cfg.kind.name(), cfg.redis);
        move |e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"))
    };
    Ok(match cfg.kind {
        AppKind::RemoraMemory => remora_app(remora_session::MemoryStore::new()),
        AppKind::TowerMemory => tower_app(tower_sessions::MemoryStore::default()),
        AppKind::RemoraRedis | AppKind::RemoraRedisNocache => {
            let mut b = remora_session::store::RedisStore::builder(&cfg.redis)
                .prefix(cfg.prefix.clone())
                .connections(cfg.remora_connections)
                .coalesce(cfg.remora_coalesce);
            if cfg.kind == AppKind::RemoraRedis {
                b = b.near_cache(remora_session::store::NearCache::new(100_000));
            }
            let store = b.connect().await.map_err(|e| setup("connect")(&e))?;
            remora_app(store)
        }
        AppKind::TowerRedis => {
            use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
            let config = Config::from_url(&cfg.redis).map_err(|e| setup("parse URL")(&e))?;
            let pool = Pool::new(config, None, None, None, cfg.tower_pool.max(1))
                .map_err(|e| setup("create pool")(&e))?;
            // The handle is the pool's connection task; it lives as long
            // as the process.
            let _task = pool.init().await.map_err(|e| setup("connect")(&e))?;
            tower_app(tower_sessions_redis_store::RedisStore::new(pool))
        }
    })
}

/// Serves the app until the process is stopped (the benchmark sends SIGTERM).
pub fn serve(cfg: AppConfig) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "start the app's runtime".into(),
            source,
        })?;
    rt.block_on(async {
        let app = build(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(|source| BenchError::Io {
                what: format!("bind {}", cfg.addr),
                source,
            })?;
        eprintln!("{} listening on {}", cfg.kind.name(), cfg.addr);
        axum::serve(listener, app)
            .await
            .map_err(|source| BenchError::Io {
                what: "serve".into(),
                source,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_counts_and_caps() {
        let (items, next) = append(Vec::new());
        assert_eq!((items.as_slice(), next), (&[1][..], 1));
        let full: Vec<u64> = (1..=MAX_ITEMS as u64).collect();
        let (items, next) = append(full);
        assert_eq!(next, MAX_ITEMS as u64 + 1);
        assert_eq!(items.len(), MAX_ITEMS);
        assert_eq!(items.first(), Some(&2));
        assert_eq!(items.last(), Some(&(MAX_ITEMS as u64 + 1)));
    }
}
