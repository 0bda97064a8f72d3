//! One client connection after accept (and TLS / PROXY header): protocol
//! detection, HTTP/2, and HTTP/1.1 with idle parking and WebSocket hand-off.
//!
//! Idle HTTP/1.1 keep-alive connections are *parked*: once a connection has
//! had no request in flight and no bytes moving for `park_after` (see
//! [`Limits`]), its hyper
//! connection (and its read and write buffers, 16 KiB) is dropped and the
//! socket alone waits for the next request, which starts a fresh hyper
//! connection. Many idle clients then cost a few hundred bytes each.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::Limits;
use crate::proxy::{self, ConnCtx};
use crate::serve::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Any client stream (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves HTTP on `io` until the client leaves, the idle timeout, or drain.
/// `alpn_h2`: TLS negotiated `h2` (`None`: plain TCP, sniff the preface).
pub async fn serve(
    shared: &Arc<Shared>,
    ctx: Arc<ConnCtx>,
    io: Box<dyn Io>,
    alpn_h2: Option<bool>,
    limits: &Limits,
) {
    let activity = Arc::new(Activity::new());
    let mut io = ClientIo {
        prefix: Bytes::new(),
        inner: io,
        activity: activity.clone(),
    };
    let h2 = match alpn_h2 {
        Some(h2) => h2,
        None => match tokio::time::timeout(limits.header_read_timeout, sniff(&mut io)).await {
            Ok(Some(h2)) => h2,
            _ => return,
        },
    };
    if h2 {
        serve_h2(shared, ctx, io, &activity, limits).await;
    } else {
        serve_h1(shared, ctx, io, &activity, limits).await;
    }
}

/// Reads until the bytes are known to be (or not to be) the HTTP/2
/// preface; keeps them as the stream's prefix. `None`: the client left.
async fn sniff(io: &mut ClientIo) -> Option<bool> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    loop {
        let n = io.inner.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        io.activity.touch();
        len += n;
        let h2 = buf[..len] == H2_PREFACE[..len];
        if !h2 || len == H2_PREFACE.len() {
            io.prefix = Bytes::copy_from_slice(&buf[..len]);
            return Some(h2);
        }
    }
}

async fn serve_h2(
    shared: &Arc<Shared>,
    ctx: Arc<ConnCtx>,
    io: ClientIo,
    activity: &Activity,
    limits: &Limits,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let svc_shared = shared.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| proxy::handle(svc_shared.clone(), svc_ctx.clone(), req));
    // Boxed: the connection task's future then stays small (see `serve_h1`).
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), svc));
    let mut shutdown = shared.shutdown_signal();
    let idle = limits.idle_timeout;
    let mut tick = tokio::time::interval(tick_for(idle));
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %ctx.client.addr, error = %e, "h2 connection ended with error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                if ctx.inflight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

fn tick_for(d: Duration) -> Duration {
    (d / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
}

enum H1End {
    /// The client closed, an error, or we closed (idle timeout, drain).
    Closed,
    /// Parked: wait for the next request without a hyper connection.
    Park,
}

async fn serve_h1(
    shared: &Arc<Shared>,
    ctx: Arc<ConnCtx>,
    mut io: ClientIo,
    activity: &Activity,
    limits: &Limits,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut shutdown = shared.shutdown_signal();
    let idle = limits.idle_timeout;
    loop {
        let svc_shared = shared.clone();
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req| {
            Box::pin(proxy::handle(svc_shared.clone(), svc_ctx.clone(), req))
        });
        // Boxed, so that a parked connection's task does not keep room for
        // hyper's connection state: a task's future is as large as its
        // largest state.
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), svc));
        let park_after = limits.park_after;
        let mut tick = tokio::time::interval(tick_for(idle.min(park_after)));
        let mut closing = false;
        let mut parking = false;
        let end = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                    break match r {
                        Err(e) => {
                            tracing::debug!(client = %ctx.client.addr, error = %e, "connection ended with error");
                            H1End::Closed
                        }
                        Ok(()) if parking && !closing => H1End::Park,
                        Ok(()) => H1End::Closed,
                    };
                }
                _ = shutdown.changed(), if !closing => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    closing = true;
                }
                _ = tick.tick(), if !closing && !parking => {
                    if ctx.inflight.load(Ordering::Relaxed) == 0 {
                        let quiet = activity.idle_for();
                        if quiet >= idle {
                            Pin::new(&mut *conn).graceful_shutdown();
                            closing = true;
                        } else if quiet >= park_after {
                            Pin::new(&mut *conn).graceful_shutdown();
                            parking = true;
                        }
                    }
                }
            }
        };
        let parts = (*conn).into_parts();
        let mut back = parts.io.into_inner();
        back.prepend(parts.read_buf);
        // A WebSocket handler that answered 101 takes the stream.
        if let Some(tx) = ctx.upgrade.lock().take() {
            let _ = tx.send(back);
            return;
        }
        match end {
            H1End::Closed => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut back).await;
                return;
            }
            H1End::Park => {
                // A parked connection holds no server connection and no labels.
                ctx.upstream.release();
                *ctx.counters.lock() = crate::proxy::CounterCache::default();
            }
        }
        io = back;
        if io.prefix.is_empty() {
            // Parked: wait for bytes (or the idle timeout, or drain) with no buffers held.
            let wait = idle.saturating_sub(activity.idle_for());
            let mut small = [0u8; 64];
            tokio::select! {
                r = io.inner.read(&mut small) => match r {
                    Ok(n) if n > 0 => {
                        io.activity.touch();
                        io.prefix = Bytes::copy_from_slice(&small[..n]);
                    }
                    _ => return,
                },
                _ = tokio::time::sleep(wait) => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    return;
                }
                _ = shutdown.changed() => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Last time bytes moved on a connection.
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Now.
    pub fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since bytes last moved.
    pub fn idle_for(&self) -> Duration {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A client stream: bytes already read (replayed first), the stream, and
/// its activity stamp.
pub struct ClientIo {
    prefix: Bytes,
    inner: Box<dyn Io>,
    activity: Arc<Activity>,
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl ClientIo {
    fn prepend(&mut self, mut more: Bytes) {
        if more.is_empty() {
            return;
        }
        if !self.prefix.is_empty() {
            let mut v = more.to_vec();
            v.extend_from_slice(&self.prefix);
            more = Bytes::from(v);
        }
        self.prefix = more;
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for ClientIo {
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
