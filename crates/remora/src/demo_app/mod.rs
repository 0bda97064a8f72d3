//! `remora demo-app`: the shop server behind the demo and the replica tests.
//!
//! An axum app with `remora-session` and replicas on (memory store by
//! default: no shared store, so only replicas carry sessions between
//! servers), serving the shop's JSON API and its page. Paths:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /health` | 200 |
//! | `GET /api/whoami` | `{"server":NAME}` |
//! | `GET /api/cart` | `{"server","items":[{"sku","qty"}],"restored","user","order_token"}` |
//! | `POST /api/cart/items` `{"sku","qty"}` | the cart (adds) |
//! | `DELETE /api/cart/items/{sku}` | the cart |
//! | `POST /api/login` `{"user"}` | cycles the session id; the user expires after 15 minutes |
//! | `POST /api/logout` | ends the session |
//! | `GET /api/csrf` | `{"token"}` |
//! | `POST /api/keepalive` | slides the idle deadline ("stay signed in"); the cart |
//! | `POST /api/checkout` `{"order_token"}` | needs `X-CSRF-Token`; the order token is once-only |
//! | `POST /api/crash` | the process exits at once (code 137), as a crash would |
//! | `POST /api/drain` | asks the balancer to drain this server (pinned clients stay, new ones go elsewhere) |
//! | `POST /api/resume` | puts this server back to `ready` |
//! | `GET /api/cluster` | servers with state, health and pinned clients |

mod admin;
mod assets;
mod shop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use prometheus_client::registry::Registry;
use remora_bayeux::ext::replica::ReplicaCarriage;
use remora_bayeux::{Bayeux, BayeuxConfig};
use remora_seal::Keyring;
use remora_session::replica::{CookieCarriage, Replicas};
use remora_session::store::Store;
use remora_session::{MemoryStore, SessionLayer};

pub use self::shop::{Shop, router};

/// Which store the shop keeps its sessions in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process only: a crash loses it (replicas carry the sessions).
    Memory,
    /// On disk (`--redb-path`), survives a restart of this server.
    Redb,
    /// Shared Redis (`--redis`).
    Redis,
}

/// Arguments of `remora demo-app`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// This server's name (as in the balancer's pool).
    #[arg(long)]
    pub name: String,
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    pub port: u16,
    /// Session store.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreKind,
    /// Redis URL for `--store redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// With `--store redis`: sessions kept in process memory between
    /// requests, dropped when Redis announces a change by another server
    /// (0 = no near cache: every request reads Redis).
    #[arg(long, default_value_t = 10_000)]
    pub redis_near_cache: usize,
    /// Directory for `--store redb`: the file is `NAME.redb` there (default: the temp dir).
    #[arg(long)]
    pub redb_dir: Option<PathBuf>,
    /// Exit when standard input closes (the demo holds it open, so its shops
    /// die with it however it dies).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// Keyring file (one base64url key a line); every shop server must share it.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Turn replicas off (the baseline that shows what is lost without them).
    #[arg(long)]
    pub no_replicas: bool,
    /// Also carry replicas in cookies.
    #[arg(long)]
    pub replica_cookie: bool,
    /// Idle timeout of sessions.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// The balancer's admin API, for `/api/cluster` and `/api/drain`.
    #[arg(long)]
    pub admin: Option<String>,
    /// Bearer token of the balancer's admin API.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// This server's pool in the balancer.
    #[arg(long, default_value = "shop")]
    pub pool: String,
}

/// Runs the shop until killed.
pub fn run(args: Args) -> ExitCode {
    crate::serve::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shop's Prometheus metrics (sessions and replicas).
async fn metrics_text(registry: Arc<Registry>) -> impl axum::response::IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The channel on which the page receives the cluster view.
pub const CLUSTER_CHANNEL: &str = "/demo/cluster";

/// Publishes the balancer's view of the pool on [`CLUSTER_CHANNEL`] when it
/// changes (checked every 500 ms).
async fn publish_cluster(bayeux: Bayeux, admin: Arc<admin::Admin>) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(servers) = admin.servers().await else {
            continue;
        };
        if last.as_ref() != Some(&servers) {
            let _ = bayeux.publish(CLUSTER_CHANNEL, serde_json::json!({ "servers": &servers }));
            last = Some(servers);
        }
    }
}

/// Exits the process when standard input reaches end of file (on a thread
/// of its own: a blocking read).
fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        tracing::info!("standard input closed: the demo is gone; exiting");
        std::process::exit(0);
    });
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.exit_on_stdin_eof {
        exit_on_stdin_eof();
    }
    let keys = match &args.keys {
        Some(p) => Keyring::load(p)?,
        None => {
            tracing::warn!(
                "no --keys: a generated key; other shop servers cannot open this one's replicas"
            );
            Keyring::generate()
        }
    };
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Memory => {
            let s = Arc::new(MemoryStore::new());
            remora_session::store::spawn_sweeper(s.clone(), Duration::from_secs(60));
            s
        }
        StoreKind::Redb => {
            let path = args
                .redb_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .join(format!("{}.redb", args.name));
            let s = Arc::new(remora_session::store::RedbStore::open(&path)?);
            remora_session::store::spawn_sweeper(s.clone(), Duration::from_secs(60));
            s
        }
        StoreKind::Redis => {
            let mut b = remora_session::store::RedisStore::builder(&args.redis)
                .prefix(format!("remora:demo:{}:", args.pool));
            if args.redis_near_cache > 0 {
                b = b.near_cache(remora_session::store::NearCache::new(args.redis_near_cache));
            }
            Arc::new(b.connect().await?)
        }
    };
    let mut registry = Registry::default();
    let mut layer = SessionLayer::from_arc(store)
        .with_secure(false)
        .with_idle_timeout(args.idle_timeout)
        .with_expires_header(true)
        .with_metrics(&mut registry);
    let replicas = if args.no_replicas {
        None
    } else {
        let mut r = Replicas::new(&keys);
        if args.replica_cookie {
            r = r.with_cookie_carriage(CookieCarriage {
                secure: false,
                ..CookieCarriage::default()
            });
        }
        let r = Arc::new(r.with_metrics(&mut registry));
        layer = layer.with_replica_hooks(r.clone());
        Some(r)
    };
    let admin = args.admin.clone().map(|url| {
        Arc::new(admin::Admin::new(
            url,
            args.admin_token.clone().unwrap_or_default(),
            args.pool.clone(),
        ))
    });
    // Bayeux at /cometd: live cluster updates, and the replica carriage.
    let bayeux = Bayeux::new(BayeuxConfig::default());
    if let Some(r) = &replicas {
        ReplicaCarriage::install(&bayeux, r.clone(), layer.clone());
    }
    if let Some(a) = &admin {
        tokio::spawn(publish_cluster(bayeux.clone(), a.clone()));
    }
    let shop = Shop::new(args.name.clone(), admin);
    let registry = Arc::new(registry);
    let app = router(shop, layer).merge(bayeux.router()).route(
        "/metrics",
        axum::routing::get(move || metrics_text(registry.clone())),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(server = %args.name, %addr, "shop listening");
    axum::serve(listener, app).await?;
    Ok(())
}
