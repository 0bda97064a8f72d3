//! One client connection after accept: PROXY header and TLS, protocol
//! detection, HTTP/2, and HTTP/1.1 with idle parking and WebSocket hand-off.
//!
//! Idle HTTP/1.1 keep-alive connections are *parked*: once a connection has
//! had no request in flight and no bytes moving for `park_after` (see
//! [`Limits`]), or right after its first answer when the client sends
//! nothing more, its HTTP/1.1 state ([`crate::h1`]: its read and write
//! buffers), its context and its kept server connection are dropped and the
//! socket alone waits for the next request, which starts a fresh active
//! phase. Many idle clients then cost well under 1 KB of heap each: the
//! connection's task (its future is `serve`'s, about 400 bytes while
//! parked, in a 512-byte task cell), the socket's reactor entry (256 bytes),
//! the stream's box and its activity stamp.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Limits;
use crate::forward::ClientInfo;
use crate::listener::Accepted;
use crate::proxy::{self, ConnCtx};
use crate::reload::ListenerRt;
use crate::serve::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Any client stream (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection opened (PROXY header, TLS) that speaks HTTP/1.1: what its
/// task keeps for its whole life.
pub(crate) struct Opened {
    /// Its listener (address, limits, TLS), as it was when accepted.
    lst: Arc<ListenerRt>,
    /// Client address (from PROXY protocol when enabled).
    client_addr: SocketAddr,
    /// The client stream, with the bytes read to detect the protocol.
    io: ClientIo,
}

/// Opens an accepted connection (PROXY header, TLS handshake, protocol
/// detection) and serves HTTP/2 to the end. Returns the connection to serve
/// as HTTP/1.1 with [`serve`], if that is what it speaks.
///
/// The returned future is large (rustls, hyper's HTTP/2 connection): the
/// caller boxes it, so that the task of a parked connection does not carry
/// its size.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
) -> Option<Opened> {
    let lst = shared.runtime.load().listeners.get(&listen).cloned()?;
    let limits = &lst.config.limits;
    let (io, alpn_h2, client_addr) = crate::listener::open(&lst, stream, peer).await?;
    let client = ClientInfo {
        addr: client_addr,
        tls: lst.tls.is_some(),
    };
    let mut io = ClientIo {
        prefix: Bytes::new(),
        inner: io,
        activity: Arc::new(Activity::new()),
    };
    let h2 = match alpn_h2 {
        Some(h2) => h2,
        None => match tokio::time::timeout(limits.header_read_timeout, sniff(&mut io)).await {
            Ok(Some(h2)) => h2,
            _ => return None,
        },
    };
    if h2 {
        let ctx = Arc::new(ConnCtx::new(listen, client, io.activity.clone(), false));
        serve_h2(shared, ctx, io, limits).await;
        return None;
    }
    Some(Opened {
        lst,
        client_addr: client.addr,
        io,
    })
}

/// Serves one accepted connection until the client leaves, the idle
/// timeout, or drain: `opening` (boxed [`start`]) opens it and serves
/// HTTP/2; an HTTP/1.1 connection then alternates active phases
/// ([`crate::h1::serve`], boxed) and parked waits (the socket alone). `accepted` (the
/// connection's counters and permit) is released at the end.
///
/// The returned future is the bulk of the connection's task and stays
/// small in the state where a connection waits for long, parked: one
/// async block (no nested `async fn`, whose arguments would take room
/// twice), holding the client stream, its listener and client address,
/// the drain signal and, while parked, one timer and the drain wait. The
/// opening, HTTP/2 and each active HTTP/1.1 phase are boxed and freed
/// before a connection parks.
// Not `async fn`: it would move its arguments into locals, keeping them
// twice (24 bytes more, measured).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<O>(
    accepted: Accepted,
    opening: Pin<Box<O>>,
) -> impl Future<Output = ()> + Send + 'static
where
    O: Future<Output = Option<Opened>> + Send + 'static,
{
    async move {
        let Some(Opened {
            lst,
            client_addr,
            mut io,
        }) = opening.await
        else {
            return;
        };
        // `accepted.shared()` at each use rather than a local: one pointer
        // fewer kept while parked.
        let mut shutdown = accepted.shared().shutdown_signal();
        let mut eager = true;
        loop {
            // A fresh context per active phase: a parked connection holds none.
            let client = ClientInfo {
                addr: client_addr,
                tls: lst.tls.is_some(),
            };
            let ctx = Arc::new(ConnCtx::new(
                lst.config.listen,
                client,
                io.activity.clone(),
                true,
            ));
            let limits = &lst.config.limits;
            let phase = crate::h1::serve(accepted.shared(), ctx, io, limits, &mut shutdown, eager);
            let Some(back) = Box::pin(phase).await else {
                return;
            };
            eager = false;
            io = back;
            if io.prefix.is_empty() {
                let _parked = Parked::new(&accepted.shared().metrics.parked_connections);
                let wait = lst
                    .config
                    .limits
                    .idle_timeout
                    .saturating_sub(io.activity.idle_for());
                let wake = Park {
                    io: &mut io,
                    sleep: tokio::time::sleep(wait),
                    drain: shutdown.changed(),
                }
                .await;
                match wake {
                    Wake::Request => {}
                    Wake::Gone => return,
                    Wake::Close => {
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

async fn serve_h2(shared: &Arc<Shared>, ctx: Arc<ConnCtx>, io: ClientIo, limits: &Limits) {
    let activity = io.activity.clone();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // WebSocket over HTTP/2 (RFC 8441), see `websocket`.
        .enable_connect_protocol();
    let svc_shared = shared.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| proxy::handle(svc_shared.clone(), svc_ctx.clone(), req, None));
    // Boxed: the opening future ([`start`]) then stays smaller.
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

/// How a parked connection woke.
enum Wake {
    /// The client sent bytes: they are the stream's prefix.
    Request,
    /// The client closed, or an error.
    Gone,
    /// The idle timeout, or drain: close it.
    Close,
}

pin_project_lite::pin_project! {
    /// A parked connection's wait for the client's next bytes, the idle
    /// timeout (`sleep`) or drain (`drain`, the shutdown signal's
    /// `changed()`), holding no buffers.
    ///
    /// Written by hand rather than with `tokio::select!`, whose state is
    /// larger, and reading into a buffer on the stack of `poll` rather than
    /// one kept in the future.
    struct Park<'a, D> {
        io: &'a mut ClientIo,
        #[pin]
        sleep: tokio::time::Sleep,
        #[pin]
        drain: D,
    }
}

impl<D: Future> Future for Park<'_, D> {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let this = self.project();
        let mut small = [0u8; 32];
        let mut buf = ReadBuf::new(&mut small);
        match Pin::new(&mut this.io.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                this.io.activity.touch();
                this.io.activity.begin_head_wait();
                this.io.prefix = Bytes::copy_from_slice(buf.filled());
                return Poll::Ready(Wake::Request);
            }
            Poll::Ready(_) => return Poll::Ready(Wake::Gone),
            Poll::Pending => {}
        }
        if this.sleep.poll(cx).is_ready() || this.drain.poll(cx).is_ready() {
            return Poll::Ready(Wake::Close);
        }
        Poll::Pending
    }
}

/// Counts a connection in the parked gauge while it lives.
struct Parked<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Last time bytes moved on a connection.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    /// Since when (ms after `epoch`) the connection has been waiting for a
    /// complete request head; [`NOT_WAITING`] while a request is in flight.
    head_wait_ms: AtomicU64,
}

/// [`Activity::head_wait_ms`] while a request is in flight.
const NOT_WAITING: u64 = u64::MAX;

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
            head_wait_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The connection starts waiting for a request head (it opened, its
    /// last request ended, or it woke from parking).
    pub fn begin_head_wait(&self) {
        self.head_wait_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A complete request head arrived.
    pub fn head_arrived(&self) {
        self.head_wait_ms.store(NOT_WAITING, Ordering::Relaxed);
    }

    /// How long the connection has been waiting for a complete request
    /// head (`None`: a request is in flight). Counted across active
    /// phases, so a client cannot reset it by pausing.
    pub(crate) fn head_wait(&self) -> Option<Duration> {
        let since = self.head_wait_ms.load(Ordering::Relaxed);
        (since != NOT_WAITING).then(|| Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Time since bytes last moved.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}

/// A client stream: bytes already read (replayed first), the stream, and
/// its activity stamp.
pub struct ClientIo {
    pub(crate) prefix: Bytes,
    inner: Box<dyn Io>,
    pub(crate) activity: Arc<Activity>,
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
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
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.activity.touch(),
            _ => {}
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

/// A client stream over `inner`, for tests.
#[cfg(test)]
pub(crate) fn client_io(inner: tokio::io::DuplexStream) -> ClientIo {
    ClientIo {
        prefix: Bytes::new(),
        inner: Box::new(inner),
        activity: Arc::new(Activity::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Parks `io` with an idle timeout of `idle`, watching `rx` for drain.
    async fn park(
        io: &mut ClientIo,
        idle: Duration,
        rx: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Wake {
        Park {
            io,
            sleep: tokio::time::sleep(idle),
            drain: rx.changed(),
        }
        .await
    }

    #[tokio::test]
    async fn a_parked_connection_wakes_for_bytes_closes_on_timeout_and_drain() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let long = Duration::from_secs(30);

        // The client's next bytes: kept as the stream's prefix.
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(park(&mut io, long, &mut rx).await, Wake::Request));
        assert_eq!(&io.prefix[..], b"GET / HTTP/1.1\r\n");

        // The client leaves.
        drop(peer);
        io.prefix = Bytes::new();
        assert!(matches!(park(&mut io, long, &mut rx).await, Wake::Gone));

        // The idle timeout.
        let (_peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        let begin = std::time::Instant::now();
        let wake = park(&mut io, Duration::from_millis(50), &mut rx).await;
        assert!(matches!(wake, Wake::Close));
        assert!(begin.elapsed() >= Duration::from_millis(50));

        // Drain.
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(true).unwrap();
            tx
        });
        let wake = tokio::time::timeout(Duration::from_secs(5), park(&mut io, long, &mut rx));
        assert!(matches!(wake.await, Ok(Wake::Close)));
        drop(drain.await);
    }
}
