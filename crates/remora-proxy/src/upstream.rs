//! Keep-alive HTTP/1.1 connections to servers.
//!
//! Each client connection keeps the server connection its last request used
//! (its [`Slot`]) and reuses it while requests go to the same server, so a
//! client's requests do not pass through a shared pool (HAProxy keeps server
//! connections private to a client connection in the same way). When the
//! client connection parks or closes, or its next request goes to another
//! server, the connection goes to an idle list of the worker thread, from
//! which any client connection of that thread may take it before a new one
//! is opened.
//!
//! A server connection is one hyper HTTP/1.1 client connection whose I/O
//! runs in its own task on the current worker thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::forward::{BoxError, ProxyBody};
use crate::select::RequestGuard;

/// Idle server connections kept per server address and worker thread.
/// Each costs a hyper connection with its buffers (about 20 KB); client
/// connections that park together (many clients going quiet at once)
/// would otherwise leave one each.
pub const MAX_IDLE_PER_SERVER: usize = 64;
/// An idle server connection unused for this long is closed when next seen.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Server connections kept private by client connections between their
/// requests, in the whole process. Beyond it a connection goes to the
/// thread's idle list at once: many quiet clients (10,000 idle keep-alive
/// connections) then share a few server connections instead of holding
/// one each until they park.
pub const MAX_KEPT: usize = 1024;

/// Server connections currently kept in [`Slot`]s.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Takes the connection out of a slot, counting it out of [`KEPT`].
fn vacate(slot: &mut Option<Conn>) -> Option<Conn> {
    let c = slot.take();
    if c.is_some() {
        KEPT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    c
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The TCP connection could not be made (nothing was sent).
    #[error("connect to server failed")]
    Connect(#[source] std::io::Error),
    /// The connection failed before any response byte.
    #[error("server failed before responding")]
    Reset(#[source] hyper::Error),
    /// No response head within `server_timeout`.
    #[error("server timed out")]
    Timeout,
}

/// One open connection to a server.
struct Conn {
    address: Arc<str>,
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.since.elapsed() < IDLE_TIMEOUT
    }
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Conn>>> = RefCell::new(HashMap::new());
}

/// Returns `conn` to this thread's idle list (closed or surplus ones are dropped).
fn park(conn: Conn) {
    if !conn.usable() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(conn.address.clone()).or_default();
        list.retain(Conn::usable);
        if list.len() < MAX_IDLE_PER_SERVER {
            list.push(conn);
        }
    });
}

/// A ready connection to `address` from this thread's idle list.
fn unpark(address: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(address)?;
        let mut found = None;
        // Newest first: the most recently used connection is the likeliest
        // to be still open on the server's side.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let Some(c) = list.get(i) else { break };
            if !c.usable() {
                list.swap_remove(i);
            } else if c.sender.is_ready() {
                found = Some(list.swap_remove(i));
                break;
            }
        }
        if list.is_empty() {
            idle.remove(address);
        }
        found
    })
}

/// The server connection a client connection keeps between its requests.
#[derive(Default)]
pub struct Slot(parking_lot::Mutex<Option<Conn>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// Moves the kept connection (if any) to the thread's idle list: the
    /// client connection goes idle or away.
    pub fn release(&self) {
        let c = vacate(&mut self.0.lock());
        if let Some(c) = c {
            park(c);
        }
    }

    /// Keeps `conn` for the next request, or parks it when one is kept already.
    fn put(&self, conn: Conn) {
        let mut slot = self.0.lock();
        if slot.is_none() {
            if KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_KEPT {
                *slot = Some(conn);
                return;
            }
            KEPT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(slot);
        park(conn);
    }

    /// The kept connection, if it goes to `address` and can take a request now.
    fn take(&self, address: &str) -> Option<Conn> {
        let mut slot = self.0.lock();
        match vacate(&mut slot) {
            Some(c) if &*c.address == address && c.sender.is_ready() => Some(c),
            Some(c) if &*c.address == address && !c.sender.is_closed() => {
                // Its last response may have ended an instant ago and its
                // task not run since: try again after a yield.
                KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *slot = Some(c);
                None
            }
            Some(c) => {
                drop(slot);
                park(c);
                None
            }
            None => None,
        }
    }

    fn take_after_yield(&self, address: &str) -> Option<Conn> {
        let mut slot = self.0.lock();
        match vacate(&mut slot) {
            Some(c) if &*c.address == address && c.sender.is_ready() => Some(c),
            Some(c) => {
                drop(slot);
                park(c);
                None
            }
            None => None,
        }
    }

    fn holds_busy(&self, address: &str) -> bool {
        self.0
            .lock()
            .as_ref()
            .is_some_and(|c| &*c.address == address && !c.sender.is_ready())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(c) = vacate(self.0.get_mut()) {
            park(c);
        }
    }
}

/// Opens a new connection to `address`; its I/O runs in a task of the
/// current runtime.
async fn connect(address: &Arc<str>, timeout: Duration) -> Result<Conn, ForwardError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&**address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ForwardError::Connect(e)),
        Err(_) => {
            return Err(ForwardError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ForwardError::Reset)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "server connection ended with error");
        }
    });
    sender.ready().await.map_err(ForwardError::Reset)?;
    Ok(Conn {
        address: address.clone(),
        sender,
        since: Instant::now(),
    })
}

/// Sends `req` to `address` over the client connection's kept connection,
/// an idle one, or a new one, and waits at most `timeout` for the response
/// head. The returned [`Checkin`] gives the connection back to `slot`; keep
/// it until the response body has ended (see [`UpstreamBody`]).
pub async fn send(
    slot: &Arc<Slot>,
    address: &Arc<str>,
    req: Request<ProxyBody>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<(Response<Incoming>, Checkin), ForwardError> {
    match tokio::time::timeout(timeout, send_inner(slot, address, req, connect_timeout)).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(r) => r,
    }
}

async fn checkout(
    slot: &Slot,
    address: &Arc<str>,
    connect_timeout: Duration,
) -> Result<(Conn, bool), ForwardError> {
    if let Some(c) = slot.take(address) {
        return Ok((c, false));
    }
    if slot.holds_busy(address) {
        tokio::task::yield_now().await;
        if let Some(c) = slot.take_after_yield(address) {
            return Ok((c, false));
        }
    }
    if let Some(c) = unpark(address) {
        return Ok((c, false));
    }
    Ok((connect(address, connect_timeout).await?, true))
}

async fn send_inner(
    slot: &Arc<Slot>,
    address: &Arc<str>,
    mut req: Request<ProxyBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Checkin), ForwardError> {
    let (mut conn, mut fresh) = checkout(slot, address, connect_timeout).await?;
    loop {
        match conn.sender.try_send_request(req).await {
            Ok(resp) => {
                let checkin = Checkin {
                    slot: slot.clone(),
                    conn: Some(conn),
                };
                return Ok((resp, checkin));
            }
            Err(mut e) => match e.take_message() {
                // A kept-alive connection closed before the request was
                // written: nothing was sent, so it goes on a new connection.
                Some(back) if !fresh => {
                    req = back;
                    conn = connect(address, connect_timeout).await?;
                    fresh = true;
                }
                _ => return Err(ForwardError::Reset(e.into_error())),
            },
        }
    }
}

/// Gives a server connection back to its client connection's [`Slot`] when
/// dropped.
pub struct Checkin {
    slot: Arc<Slot>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkin").finish_non_exhaustive()
    }
}

impl Checkin {
    fn give_back(&mut self) {
        if let Some(mut c) = self.conn.take() {
            c.since = Instant::now();
            self.slot.put(c);
        }
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        self.give_back();
    }
}

pin_project_lite::pin_project! {
    /// A server's response body: holds the server's in-flight request guard
    /// and gives the connection back as soon as the body has ended.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        checkin: Checkin,
        _guard: RequestGuard,
    }
}

impl UpstreamBody {
    /// Wraps `inner`.
    pub fn new(inner: Incoming, checkin: Checkin, guard: RequestGuard) -> Self {
        UpstreamBody {
            inner,
            checkin,
            _guard: guard,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                this.checkin.give_back();
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(|e| Box::new(e) as BoxError))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::ServerStats;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers every request with `ok`; `close`: and closes
    /// each connection after its first answer. Counts accepted connections.
    async fn server(close: bool) -> (Arc<str>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(l.local_addr().expect("addr").to_string());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let head: &[u8] = if close {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if s.write_all(head).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(slot: &Arc<Slot>, addr: &Arc<str>) -> Bytes {
        let req = Request::builder()
            .uri("/")
            .header("host", "t")
            .body(crate::forward::empty())
            .expect("request");
        let (resp, checkin) = send(
            slot,
            addr,
            req,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
        .expect("response");
        let guard = Arc::new(ServerStats::new()).start_request();
        UpstreamBody::new(resp.into_body(), checkin, guard)
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_client_connection_reuses_its_server_connection() {
        let (addr, accepted) = server(false).await;
        let slot = Arc::new(Slot::default());
        for _ in 0..3 {
            assert_eq!(get(&slot, &addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Released (client parked): another client connection of this
        // thread takes the idle connection instead of opening one.
        slot.release();
        let other = Arc::new(Slot::default());
        assert_eq!(get(&other, &addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two client connections at once need two server connections.
        let (a, b) = tokio::join!(get(&slot, &addr), get(&other, &addr));
        assert_eq!((a.as_ref(), b.as_ref()), (&b"ok"[..], &b"ok"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_closed_server_connection_is_replaced() {
        let (addr, accepted) = server(true).await;
        let slot = Arc::new(Slot::default());
        for _ in 0..3 {
            assert_eq!(get(&slot, &addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(l.local_addr().expect("addr").to_string());
        drop(l);
        let slot = Arc::new(Slot::default());
        let req = Request::new(crate::forward::empty());
        let r = send(
            &slot,
            &addr,
            req,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(r, Err(ForwardError::Connect(_))), "{r:?}");
    }
}
