//! Running the balancer: listeners, admin, health checks, signals, reload,
//! graceful drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::listener::Workers;
use crate::metrics::Metrics;
use crate::reload::{ReloadError, Runtime};
use crate::{admin, health, listener};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be applied.
    #[error(transparent)]
    Reload(#[from] ReloadError),
    /// The admin address could not be bound.
    #[error("cannot listen on {addr} (admin)")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

struct ListenerTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// State shared by every task of a running balancer.
pub struct Shared {
    /// The current snapshot.
    pub runtime: ArcSwap<Runtime>,
    /// Metrics.
    pub metrics: Metrics,
    /// Time allowed to connect to a server.
    pub connect_timeout: Duration,
    /// Threads that run client connections.
    pub workers: Workers,
    /// The configuration file (reloads re-read it).
    pub config_path: PathBuf,
    /// Open client connections.
    pub connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
    reload_lock: tokio::sync::Mutex<()>,
    listeners: Mutex<HashMap<SocketAddr, ListenerTask>>,
    health: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// A receiver that turns `true` when the balancer starts draining.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Re-reads the configuration file and applies it. On error the old
    /// configuration stays in force.
    pub async fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let _serial = self.reload_lock.lock().await;
        let config = Config::load(&self.config_path)?;
        let old = self.runtime.load_full();
        if old.config.admin.as_ref().map(|a| a.listen) != config.admin.as_ref().map(|a| a.listen) {
            return Err(ReloadError::NeedsRestart("[admin] listen"));
        }
        let rt = Arc::new(Runtime::build(config, Some(&old))?);
        // Bind new addresses before anything changes, so a failure keeps the old config.
        let mut fresh = Vec::new();
        {
            let running = self.listeners.lock();
            for addr in rt.listeners.keys() {
                if !running.contains_key(addr) {
                    let std = std::net::TcpListener::bind(addr)
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .map_err(|source| ReloadError::Bind {
                            addr: *addr,
                            source,
                        })?;
                    fresh.push((*addr, std));
                }
            }
        }
        self.runtime.store(rt.clone());
        for (addr, std) in fresh {
            match TcpListener::from_std(std) {
                Ok(l) => self.start_listener(addr, l),
                Err(e) => tracing::error!(%addr, error = %e, "cannot start listener"),
            }
        }
        let mut running = self.listeners.lock();
        let gone: Vec<SocketAddr> = running
            .keys()
            .filter(|a| !rt.listeners.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(t) = running.remove(&addr) {
                let _ = t.stop.send(true);
                tracing::info!(%addr, "listener closed by reload");
            }
        }
        drop(running);
        self.restart_health(&rt);
        tracing::info!(path = %self.config_path.display(), "configuration reloaded");
        Ok(())
    }

    fn start_listener(self: &Arc<Self>, addr: SocketAddr, l: TcpListener) {
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(listener::accept_loop(self.clone(), l, addr, stop_rx));
        tracing::info!(%addr, "listening");
        self.listeners
            .lock()
            .insert(addr, ListenerTask { stop, handle });
    }

    fn restart_health(self: &Arc<Self>, rt: &Arc<Runtime>) {
        let mut tasks = self.health.lock();
        for t in tasks.drain(..) {
            t.abort();
        }
        for pool in rt.pools.values() {
            for server in &pool.servers {
                tasks.push(tokio::spawn(health::run(
                    self.clone(),
                    pool.clone(),
                    server.clone(),
                )));
            }
        }
    }
}

/// Runs the balancer until SIGTERM/SIGINT and a graceful drain, with one
/// worker thread per CPU for client connections.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_with_workers(config, n).await
}

/// [`run`] with `workers` threads for client connections (0: run them on
/// the caller's runtime).
pub async fn run_with_workers(config: Config, workers: usize) -> Result<(), ServeError> {
    let config_path = config.path.clone();
    let connect_timeout = config.limits.connect_timeout;
    let admin_cfg = config.admin.clone();
    let rt = Arc::new(Runtime::build(config, None)?);
    if rt.config.keys.is_none() {
        tracing::warn!(
            "no [keys] file: generated a sealing key for this process only; several instances \
             (or a restart) need a shared keyring for affinity cookies to stay valid"
        );
    }
    let (shutdown, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        runtime: ArcSwap::new(rt.clone()),
        metrics: Metrics::new(),
        connect_timeout,
        workers: Workers::start(workers),
        config_path,
        connections: AtomicUsize::new(0),
        shutdown,
        reload_lock: tokio::sync::Mutex::new(()),
        listeners: Mutex::new(HashMap::new()),
        health: Mutex::new(Vec::new()),
    });

    let mut bound = Vec::new();
    for addr in rt.listeners.keys() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ReloadError::Bind {
                addr: *addr,
                source,
            })?;
        bound.push((*addr, l));
    }
    let admin_task = match admin_cfg {
        Some(a) => {
            let l = TcpListener::bind(a.listen)
                .await
                .map_err(|source| ServeError::AdminBind {
                    addr: a.listen,
                    source,
                })?;
            tracing::info!(addr = %a.listen, "admin listening");
            Some(tokio::spawn(admin::serve(shared.clone(), l)))
        }
        None => None,
    };
    for (addr, l) in bound {
        shared.start_listener(addr, l);
    }
    shared.restart_health(&rt);
    health::initial_report(&rt).await;

    wait_for_signals(&shared).await?;

    // Drain: stop accepting, let in-flight requests finish.
    let deadline = shared.runtime.load().config.limits.drain_timeout;
    tracing::info!(timeout = ?deadline, "draining");
    let _ = shared.shutdown.send(true);
    for (_, t) in shared.listeners.lock().drain() {
        let _ = t.stop.send(true);
        drop(t.handle);
    }
    let start = Instant::now();
    while shared.connections.load(Ordering::Relaxed) > 0 && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.connections.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(connections = left, "drain deadline reached; closing");
    } else {
        tracing::info!("drained");
    }
    if let Some(t) = admin_task {
        t.abort();
    }
    for t in shared.health.lock().drain(..) {
        t.abort();
    }
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(shared: &Arc<Shared>) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()); }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                if let Err(e) = shared.reload().await {
                    tracing::error!(error = %crate::admin::error_chain(&e), "reload failed; old configuration kept");
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_shared: &Arc<Shared>) -> Result<(), ServeError> {
    tokio::signal::ctrl_c().await.map_err(ServeError::Signals)
}
