//! Accepting client connections: connection cap, PROXY protocol, TLS,
//! HTTP/1.1 and HTTP/2 (hyper-util auto), header-read and idle timeouts.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::forward::ClientInfo;
use crate::proxy::{self, ConnCtx};
use crate::proxy_protocol::{self, ProxiedAddr};
use crate::serve::Shared;

/// Accepts on `listener` until `stop` turns `true` or the balancer drains.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let max = shared
        .runtime
        .load()
        .listeners
        .get(&addr)
        .map(|l| l.config.limits.max_connections)
        .unwrap_or(1);
    let permits = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    let mut shutdown = shared.shutdown_signal();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.metrics.active_connections.inc();
        // On a worker, the socket moves to that worker's reactor: the
        // connection, its requests and their server connections then stay
        // on one thread.
        let worker = shared.workers.next();
        let socket = match worker {
            Some(_) => stream.into_std().map(Socket::Std),
            None => Ok(Socket::Tokio(stream)),
        };
        let task_shared = shared.clone();
        let task = async move {
            let stream = match socket {
                Ok(Socket::Tokio(s)) => Some(s),
                Ok(Socket::Std(s)) => TcpStream::from_std(s)
                    .map_err(|e| tracing::warn!(error = %e, "cannot register connection"))
                    .ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand off connection");
                    None
                }
            };
            if let Some(stream) = stream {
                serve_connection(&task_shared, stream, peer, addr).await;
            }
            task_shared.metrics.active_connections.dec();
            task_shared.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        };
        match worker {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

enum Socket {
    Tokio(TcpStream),
    Std(std::net::TcpStream),
}

/// Threads, each with a single-threaded runtime, that run client
/// connections (thread per core, like HAProxy's `nbthread`).
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` worker threads (0: none; connections then run on the
    /// caller's runtime).
    pub fn start(n: usize) -> Workers {
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name(format!("remora-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a worker runtime");
                            return;
                        }
                    };
                    if tx.send(rt.handle().clone()).is_err() {
                        return;
                    }
                    rt.block_on(std::future::pending::<()>());
                });
            if spawned.is_err() {
                continue;
            }
            if let Ok(h) = rx.recv() {
                handles.push(h);
            }
        }
        Workers {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// The next worker, round-robin (`None` without workers).
    pub fn next(&self) -> Option<tokio::runtime::Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles.get(i).cloned()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve_connection(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    addr: SocketAddr,
) {
    let Some(lst) = shared.runtime.load().listeners.get(&addr).cloned() else {
        return;
    };
    let limits = lst.config.limits.clone();
    let mut client_addr = peer;
    if lst.config.proxy_protocol {
        match tokio::time::timeout(
            limits.header_read_timeout,
            proxy_protocol::read_header(&mut stream),
        )
        .await
        {
            Ok(Ok(ProxiedAddr::Source(a))) => client_addr = a,
            Ok(Ok(ProxiedAddr::Unknown)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "PROXY header rejected");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY header timeout");
                return;
            }
        }
    }
    let io: Box<dyn Io> = match &lst.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let activity = Arc::new(Activity::new());
    let io = ActivityIo {
        inner: io,
        activity: activity.clone(),
    };
    let ctx = Arc::new(ConnCtx {
        listen: addr,
        client: ClientInfo {
            addr: client_addr,
            tls: lst.tls.is_some(),
        },
        inflight: Arc::new(AtomicUsize::new(0)),
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let svc_shared = shared.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| proxy::handle(svc_shared.clone(), svc_ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);

    let mut shutdown = shared.shutdown_signal();
    let idle = limits.idle_timeout;
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(5)));
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                if ctx.inflight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle {
                    tracing::debug!(%peer, "idle timeout");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Last time bytes moved on a connection.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Wraps a connection's I/O to record activity.
struct ActivityIo {
    inner: Box<dyn Io>,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
