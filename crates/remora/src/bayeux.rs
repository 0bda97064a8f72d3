//! `remora bayeux`: a standalone Bayeux server at `/cometd` (long-polling,
//! callback-polling, WebSocket), with `/health`, optional Redis fan-out
//! between nodes and the `ack` extension.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use remora_bayeux::{Bayeux, BayeuxConfig};
use serde::Deserialize;

/// Arguments of `remora bayeux`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Redis URL: fan publishes out to every node using the same Redis.
    #[arg(long)]
    redis: Option<String>,
    /// TOML configuration file (see docs/bayeux.md).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    /// Server options.
    bayeux: BayeuxConfig,
    /// Built-in demonstration services.
    services: Services,
    /// Clustering options.
    cluster: Cluster,
}

/// Built-in services, all off by default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Services {
    /// `/service/echo` answers the sender with the same `id` and `data`.
    echo: bool,
    /// `/service/handshake-ext` answers the sender with the `ext` of its
    /// handshake.
    handshake_ext: bool,
}

/// Clustering options.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Cluster {
    /// Prefix of the Redis pub/sub channel (`{prefix}:bayeux`).
    prefix: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            prefix: "remora".into(),
        }
    }
}

fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Installs the built-in services on `bayeux`.
fn install_services(bayeux: &Bayeux, services: &Services) {
    if services.echo {
        let _ = bayeux.add_listener("/service/echo", |b, p| {
            if let Some(from) = p.from {
                let mut reply = p.message.reply();
                reply.data = p.message.data.clone();
                reply.successful = Some(true);
                let _ = b.deliver(from, reply);
            }
        });
    }
    if services.handshake_ext {
        let _ = bayeux.add_listener("/service/handshake-ext", |b, p| {
            if let Some(from) = p.from {
                let mut reply = p.message.reply();
                reply.data = Some(
                    b.client(from)
                        .and_then(|c| c.handshake_ext)
                        .unwrap_or(serde_json::Value::Null),
                );
                reply.successful = Some(true);
                let _ = b.deliver(from, reply);
            }
        });
    }
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let config = match &args.config {
        Some(p) => match load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("remora bayeux: config {e}");
                return ExitCode::from(2);
            }
        },
        None => FileConfig::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("remora bayeux: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args, config))
}

async fn serve(args: Args, config: FileConfig) -> ExitCode {
    let bayeux = Bayeux::new(config.bayeux);
    install_services(&bayeux, &config.services);
    if let Some(url) = &args.redis
        && let Err(e) = bayeux.join_cluster(url, &config.cluster.prefix).await
    {
        eprintln!("remora bayeux: cannot join the cluster at {url}: {e}");
        return ExitCode::FAILURE;
    }
    let health = bayeux.clone();
    let routes = Router::new().route(
        "/health",
        get(move || {
            let s = health.stats();
            let subscribed = health.cluster_status().map(|r| r.borrow().subscribed);
            async move {
                axum::Json(serde_json::json!({
                    "status": "ok",
                    "clients": s.clients,
                    "published": s.published,
                    "delivered": s.delivered,
                    "dropped": s.dropped,
                    "cluster_dropped": s.cluster_dropped,
                    "cluster_publish_errors": s.cluster_publish_errors,
                    "cluster_outages": s.cluster_outages,
                    "cluster_subscribed": subscribed,
                }))
            }
        }),
    );
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("remora bayeux: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%addr, "remora bayeux listening, Bayeux at /cometd");
    // Bayeux's own HTTP/1.1 loop: held long-polling connects keep no hyper
    // buffers (docs/bayeux.md, "Memory of held connects").
    let served = bayeux
        .serve(listener, routes, shutdown(bayeux.clone()))
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora bayeux: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Ctrl-C or SIGTERM, then removes every Bayeux client so held
/// connects are answered at once (clients re-handshake) and the graceful
/// shutdown does not wait `timeout` for them.
async fn shutdown(bayeux: Bayeux) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    let n = bayeux.remove_all_clients();
    tracing::info!(clients = n, "remora bayeux shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_parses_and_rejects_unknown_keys() {
        let c: FileConfig = toml::from_str(
            "[bayeux]\ntimeout_ms = 500\n[services]\necho = true\n[cluster]\nprefix = \"t\"\n",
        )
        .unwrap();
        assert_eq!(c.bayeux.timeout_ms, 500);
        assert!(c.services.echo);
        assert_eq!(c.cluster.prefix, "t");
        let e = toml::from_str::<FileConfig>("[bayeux]\ntimeout = 1\n").unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }
}
