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
//! A server connection is a socket and a read buffer: Remora speaks
//! HTTP/1.1 to servers itself ([`wire`]). The request is written and the
//! response head read by the client request's own task, and the response
//! body ([`UpstreamBody`]) is read from the socket by whatever polls it (the
//! task writing to the client), so a request crosses no channel and wakes
//! no other task. An idle server connection holds no buffer.

mod body;
pub mod wire;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Method;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::{BodyError, UpstreamBody};
use wire::WireError;

use crate::forward::{BoxError, ProxyBody};

/// Idle server connections kept per server address and worker thread.
/// An idle connection costs its socket and a few hundred bytes; client
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
/// The first read of a response: enough for a typical head and a small body.
const FIRST_READ: usize = 4096;
/// Request bodies smaller than this, when whole at once, go out in the
/// same write as the head.
const INLINE_BODY: usize = 16 * 1024;

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
    Connect(#[source] io::Error),
    /// The connection failed before any response byte.
    #[error("server failed before responding")]
    Reset(#[source] io::Error),
    /// The server's response could not be understood.
    #[error("invalid response from server")]
    Protocol(#[source] WireError),
    /// The client's request body failed (too large, cut off) while it was
    /// being sent; the server connection is closed.
    #[error("request body failed")]
    Body(#[source] BoxError),
    /// No response head within `server_timeout`.
    #[error("server timed out")]
    Timeout,
}

/// One open connection to a server, between requests.
struct Conn {
    address: Arc<str>,
    stream: TcpStream,
    /// Bytes read from the server and not consumed yet. Empty between
    /// requests; its capacity is released when the connection goes idle.
    read_buf: BytesMut,
    /// Where the request head is written, reused by the next request;
    /// released when the connection goes idle.
    write_buf: Vec<u8>,
    since: Instant,
}

impl Conn {
    /// Whether the connection may carry a request: not too old, and the
    /// server has neither closed it nor sent anything unasked.
    fn usable(&self) -> bool {
        if self.since.elapsed() >= IDLE_TIMEOUT {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Conn>>> = RefCell::new(HashMap::new());
}

/// Returns `conn` to this thread's idle list (closed or surplus ones are dropped).
fn park(mut conn: Conn) {
    if !conn.usable() {
        return;
    }
    conn.read_buf = BytesMut::new();
    conn.write_buf = Vec::new();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(conn.address.clone()).or_default();
        list.retain(Conn::usable);
        if list.len() < MAX_IDLE_PER_SERVER {
            list.push(conn);
        }
    });
}

/// A usable connection to `address` from this thread's idle list.
fn unpark(address: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(address)?;
        let mut found = None;
        // Newest first: the most recently used connection is the likeliest
        // to be still open on the server's side.
        while let Some(c) = list.pop() {
            if c.usable() {
                found = Some(c);
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
    fn put(&self, mut conn: Conn) {
        conn.since = Instant::now();
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

    /// The kept connection, if it goes to `address` and can take a request.
    fn take(&self, address: &str) -> Option<Conn> {
        let c = vacate(&mut self.0.lock())?;
        if &*c.address == address && c.usable() {
            return Some(c);
        }
        park(c);
        None
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(c) = vacate(self.0.get_mut()) {
            park(c);
        }
    }
}

/// Opens a new connection to `address`.
async fn connect(address: &Arc<str>, timeout: Duration) -> Result<Conn, ForwardError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&**address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ForwardError::Connect(e)),
        Err(_) => {
            return Err(ForwardError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        address: address.clone(),
        stream,
        read_buf: BytesMut::new(),
        write_buf: Vec::new(),
        since: Instant::now(),
    })
}

/// A server's answer: its head, and its body streaming from the connection.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: http::StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: http::Version,
    /// Its end-to-end header fields.
    pub fields: wire::RawFields,
    /// Its body.
    pub body: UpstreamBody,
}

/// What [`send`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// Time allowed to open a new connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole exchange up to the response head.
    pub timeout: Duration,
    /// Largest response head (and chunked trailer section).
    pub max_head: usize,
}

/// A request as it goes to a server.
pub struct Outgoing<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its target in origin form (`/path?query`).
    pub target: &'a str,
    /// Writes its header fields, in wire form, leaving out the framing
    /// ones (see [`wire::encode_head`]).
    pub fields: &'a (dyn Fn(&mut Vec<u8>) + Send + Sync),
    /// The client sent a `Content-Length` (so an empty body says 0).
    pub client_length: bool,
    /// Its body.
    pub body: ProxyBody,
}

impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("method", self.method)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Sends `req` to `address` over the client connection's kept connection,
/// an idle one, or a new one, and waits at most `opts.timeout` for the
/// response head. The response body streams from the connection and gives
/// it back to `slot` when it ends.
///
/// With a `watch`, the wait arms no timer of its own: the deadline is set on
/// the watch, and whoever owns it (the client connection's quiet timer)
/// fires it with [`Watch::check`].
pub async fn send(
    slot: &Arc<Slot>,
    address: &Arc<str>,
    req: Outgoing<'_>,
    opts: SendOptions,
    watch: Option<&Watch>,
) -> Result<Answer, ForwardError> {
    let Some(watch) = watch else {
        return match tokio::time::timeout(opts.timeout, send_inner(slot, address, req, opts)).await
        {
            Err(_) => Err(ForwardError::Timeout),
            Ok(r) => r,
        };
    };
    watch.start(Instant::now() + opts.timeout);
    let mut exchange = std::pin::pin!(send_inner(slot, address, req, opts));
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if watch.poll_expired(cx) {
            return Poll::Ready(Err(ForwardError::Timeout));
        }
        Poll::Pending
    })
    .await;
    watch.stop();
    r
}

/// A deadline for a response head, enforced by someone else's timer: a
/// client connection's requests come one at a time, and its quiet timer
/// already wakes while a request is in flight, so a request needs no timer
/// of its own (one per request costs more than the rest of the wait).
#[derive(Debug, Default)]
pub struct Watch(parking_lot::Mutex<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    deadline: Option<Instant>,
    expired: bool,
    waker: Option<Waker>,
}

impl Watch {
    fn start(&self, deadline: Instant) {
        let mut s = self.0.lock();
        s.deadline = Some(deadline);
        s.expired = false;
    }

    fn stop(&self) {
        let mut s = self.0.lock();
        s.deadline = None;
        s.expired = false;
        s.waker = None;
    }

    /// Whether the deadline has been fired; if not, `cx` is woken when it is.
    fn poll_expired(&self, cx: &Context<'_>) -> bool {
        let mut s = self.0.lock();
        if s.expired {
            return true;
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        false
    }

    /// Fires the deadline if it has passed at `now` (waking the request);
    /// returns the deadline still pending, if any.
    pub fn check(&self, now: Instant) -> Option<Instant> {
        let mut s = self.0.lock();
        match s.deadline {
            Some(d) if d <= now => {
                s.deadline = None;
                s.expired = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
                None
            }
            d => d,
        }
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
    if let Some(c) = unpark(address) {
        return Ok((c, false));
    }
    Ok((connect(address, connect_timeout).await?, true))
}

/// How one exchange on one connection failed.
enum Failure {
    /// The server closed or reset a reused connection before answering
    /// anything; `replayable`: nothing of the request is lost by sending it
    /// again (its head alone, or the whole of it, was written).
    Stale { error: io::Error, replayable: bool },
    /// Any other failure.
    Fatal(ForwardError),
}

async fn send_inner(
    slot: &Arc<Slot>,
    address: &Arc<str>,
    req: Outgoing<'_>,
    opts: SendOptions,
) -> Result<Answer, ForwardError> {
    let mut body = req.body;
    // A body that is whole at once (a replayed or small one) goes in the
    // head's write, and can be written again on a new connection.
    let length = body.size_hint().exact();
    let mut whole: Option<bytes::Bytes> = None;
    if body.is_end_stream() {
        whole = Some(bytes::Bytes::new());
    } else if length.is_some_and(|n| n as usize <= INLINE_BODY)
        && let Some(frame) = futures_util::FutureExt::now_or_never(body.frame())
    {
        match frame {
            Some(Ok(f)) if body.is_end_stream() => match f.into_data() {
                Ok(d) => whole = Some(d),
                Err(_) => {
                    return Err(ForwardError::Body(
                        "unexpected trailers in a request body".into(),
                    ));
                }
            },
            Some(Ok(f)) => {
                // More to come: keep the frame in front of the rest.
                body = prepend(f, body);
            }
            Some(Err(e)) => return Err(ForwardError::Body(e)),
            None => whole = Some(bytes::Bytes::new()),
        }
    }
    let length = match &whole {
        Some(d) => Some(d.len() as u64),
        None => length,
    };
    let mut body = if whole.is_some() { None } else { Some(body) };

    let (mut conn, mut fresh) = checkout(slot, address, opts.connect_timeout).await?;
    let mut head = std::mem::take(&mut conn.write_buf);
    head.clear();
    wire::encode_head(
        &mut head,
        req.method,
        req.target,
        |out| (req.fields)(out),
        length,
        req.client_length,
    );
    if let Some(d) = &whole {
        head.extend_from_slice(d);
    }
    loop {
        match exchange(
            &mut conn,
            &head,
            body.as_mut(),
            length.is_none(),
            req.method,
            opts.max_head,
        )
        .await
        {
            Ok((h, complete)) => {
                conn.write_buf = head;
                return Ok(Answer {
                    status: h.status,
                    version: h.version,
                    fields: h.fields,
                    body: UpstreamBody::new(
                        conn,
                        slot.clone(),
                        h.framing,
                        h.keep_alive && complete,
                        opts.max_head,
                    ),
                });
            }
            // A kept-alive connection the server had closed: the request
            // goes again on a new connection when nothing of it is lost.
            Err(Failure::Stale {
                replayable: true, ..
            }) if !fresh => {
                conn = connect(address, opts.connect_timeout).await?;
                fresh = true;
            }
            Err(Failure::Stale { error, .. }) => return Err(ForwardError::Reset(error)),
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
}

/// A body whose first frame was already taken.
fn prepend(first: Frame<bytes::Bytes>, rest: ProxyBody) -> ProxyBody {
    let first = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(first)));
    let rest = http_body_util::BodyStream::new(rest);
    http_body_util::StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed()
}

/// Writes the request on `conn` and reads the response head. `head` holds
/// the request head (and the whole body when `body` is `None`); `chunked`:
/// `body` goes in the chunked coding.
async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    body: Option<&mut ProxyBody>,
    chunked: bool,
    method: &Method,
    max_head: usize,
) -> Result<(wire::Head, bool), Failure> {
    // The head: the server cannot answer before it has it. A write that
    // fails found the connection closed: nothing was taken in.
    if let Err(error) = conn.stream.write_all(head).await {
        return Err(Failure::Stale {
            error,
            replayable: true,
        });
    }
    // Written whole and then no answer at all: the server may have acted
    // on it, so only an idempotent request without a streamed body goes
    // again (RFC 9110 section 9.2.2).
    let replayable = body.is_none() && crate::forward::idempotent(method);
    let mut answered = false;
    if let Some(body) = body {
        answered = send_body(conn, body, chunked).await?;
    }
    let complete = !answered;
    // The response head.
    loop {
        if !conn.read_buf.is_empty() || answered {
            match wire::parse_head(&mut conn.read_buf, method, max_head) {
                Ok(Some(h)) => return Ok((h, complete)),
                Ok(None) => {}
                Err(e) => return Err(Failure::Fatal(ForwardError::Protocol(e))),
            }
        }
        let had = conn.read_buf.len();
        conn.read_buf.reserve(FIRST_READ);
        match conn.stream.read_buf(&mut conn.read_buf).await {
            Ok(0) if had == 0 && !answered => {
                let error =
                    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection");
                return Err(Failure::Stale { error, replayable });
            }
            Ok(0) => {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection mid-head",
                );
                return Err(Failure::Fatal(ForwardError::Reset(error)));
            }
            Ok(_) => answered = true,
            Err(error) if had == 0 && !answered => {
                return Err(Failure::Stale { error, replayable });
            }
            Err(e) => return Err(Failure::Fatal(ForwardError::Reset(e))),
        }
    }
}

/// Streams the request body. Returns `true` when the server started its
/// final answer before the body was all sent (the rest of the body is not
/// sent, and the connection is not reused); interim `1xx` answers are
/// skipped.
async fn send_body(conn: &mut Conn, body: &mut ProxyBody, chunked: bool) -> Result<bool, Failure> {
    let Conn {
        stream, read_buf, ..
    } = conn;
    let stream: &TcpStream = stream;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            early = server_spoke(stream, read_buf) => return early.map(|()| true).map_err(reset),
        };
        out.clear();
        let mut end = false;
        match frame {
            None => {
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                end = true;
            }
            Some(Err(e)) => return Err(Failure::Fatal(ForwardError::Body(e))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if d.is_empty() => continue,
                Ok(d) => {
                    if chunked {
                        wire::chunk_header(&mut out, d.len());
                        out.extend_from_slice(&d);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(&d);
                    }
                }
                // Trailers of a chunked upload are not forwarded.
                Err(_) => continue,
            },
        }
        let mut written = 0;
        while written < out.len() {
            tokio::select! {
                biased;
                r = write_some(stream, &out[written..]) => match r {
                    Ok(n) => written += n,
                    // The server may have answered and closed: read it.
                    Err(e) => return match server_spoke(stream, read_buf).await {
                        Ok(()) => Ok(true),
                        Err(_) => Err(reset(e)),
                    },
                },
                early = server_spoke(stream, read_buf) => return early.map(|()| true).map_err(reset),
            }
        }
        if end {
            return Ok(false);
        }
    }
}

fn reset(e: io::Error) -> Failure {
    Failure::Fatal(ForwardError::Reset(e))
}

/// Writes some of `data` once the socket can take it.
async fn write_some(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Completes when the server has sent (the start of) a final response
/// head, interim `1xx` answers skipped; an error when it closed the
/// connection.
async fn server_spoke(stream: &TcpStream, read_buf: &mut BytesMut) -> io::Result<()> {
    loop {
        stream.readable().await?;
        read_buf.reserve(FIRST_READ);
        match stream.try_read_buf(read_buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            Ok(_) => {
                if skip_interim(read_buf) {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes complete interim (`1xx` but `101`) responses from the front of
/// `buf`; `true` when what is left is (the start of) a final response.
fn skip_interim(buf: &mut BytesMut) -> bool {
    loop {
        if buf.len() < 12 {
            // Not enough to tell: "HTTP/1.1 1xx".
            return !buf.is_empty() && !b"HTTP/1.1 1".starts_with(&buf[..buf.len().min(10)]);
        }
        let interim = buf[9] == b'1' && &buf[9..12] != b"101";
        if !interim {
            return true;
        }
        let mut headers = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                bytes::Buf::advance(buf, n);
            }
            Ok(httparse::Status::Partial) => return false,
            // Let the head parser report it.
            Err(_) => return true,
        }
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

    fn opts() -> SendOptions {
        SendOptions {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_head: 64 * 1024,
        }
    }

    fn host_field(out: &mut Vec<u8>) {
        wire::write_field(out, b"host", b"t");
    }

    fn request(method: &'static Method, body: ProxyBody) -> Outgoing<'static> {
        Outgoing {
            method,
            target: "/p",
            fields: &host_field,
            client_length: false,
            body,
        }
    }

    /// A GET's response (head read, body not yet).
    async fn get_response(slot: &Arc<Slot>, addr: &Arc<str>) -> Answer {
        let req = request(&Method::GET, crate::forward::empty());
        send(slot, addr, req, opts(), None).await.expect("response")
    }

    async fn get(slot: &Arc<Slot>, addr: &Arc<str>) -> bytes::Bytes {
        let resp = get_response(slot, addr).await;
        let guard = Arc::new(ServerStats::new()).start_request();
        resp.body
            .with_guard(guard)
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
        let req = request(&Method::GET, crate::forward::empty());
        let r = send(&slot, &addr, req, opts(), None).await;
        assert!(matches!(r, Err(ForwardError::Connect(_))), "{r:?}");
    }

    /// A server that reads one request head (and `body` more bytes when
    /// given), answers `reply` and closes the connection; sends what it
    /// read on `seen`.
    async fn scripted(
        reply: &'static [u8],
        read_body: Option<usize>,
    ) -> (Arc<str>, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(l.local_addr().expect("addr").to_string());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                    };
                    if let Some(more) = read_body {
                        while buf.len() < head_end + more {
                            let Ok(n) = s.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                    let _ = tx.send(buf);
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn chunked_responses_stream_with_their_trailers() {
        let (addr, _) = scripted(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
            None,
        )
        .await;
        let slot = Arc::new(Slot::default());
        let resp = get_response(&slot, &addr).await;
        let collected = resp.body.collect().await.expect("body");
        assert_eq!(
            collected
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .expect("trailer"),
            "11"
        );
        assert_eq!(collected.to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection_and_is_not_reused() {
        let (addr, _) = scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", None).await;
        let slot = Arc::new(Slot::default());
        let resp = get_response(&slot, &addr).await;
        let body = resp.body.collect().await.expect("body").to_bytes();
        assert_eq!(body, "until the end");
        assert!(
            slot.0.lock().is_none(),
            "a close-delimited connection was kept"
        );
    }

    #[tokio::test]
    async fn a_streamed_request_body_goes_chunked() {
        let (addr, mut seen) = scripted(
            b"HTTP/1.1 204 No Content\r\n\r\n",
            Some(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".len()),
        )
        .await;
        let frames = futures_util::stream::iter(
            [&b"abc"[..], b"", b"de"]
                .map(|d| Ok::<_, BoxError>(Frame::data(bytes::Bytes::from_static(d)))),
        );
        let body = http_body_util::StreamBody::new(frames).boxed();
        let slot = Arc::new(Slot::default());
        let resp = send(&slot, &addr, request(&Method::POST, body), opts(), None)
            .await
            .expect("response");
        assert_eq!(resp.status, http::StatusCode::NO_CONTENT);
        let got = String::from_utf8(seen.recv().await.expect("request")).expect("utf-8");
        assert!(got.starts_with("POST /p HTTP/1.1\r\nhost: t\r\n"), "{got}");
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn an_early_answer_stops_the_upload() {
        // The server reads the head only, answers 413 and closes while the
        // client's body is still coming (it never ends).
        let (addr, _) = scripted(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
            None,
        )
        .await;
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
        let slot = Arc::new(Slot::default());
        let resp = send(&slot, &addr, request(&Method::POST, body), opts(), None)
            .await
            .expect("response");
        assert_eq!(resp.status, http::StatusCode::PAYLOAD_TOO_LARGE);
        let body = resp.body.collect().await.expect("body").to_bytes();
        assert_eq!(body, "big!");
        assert!(slot.0.lock().is_none());
    }

    /// A stream of what `rx` receives.
    fn tokio_stream_from<T: Send + 'static>(
        rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
    }

    #[tokio::test]
    async fn bad_answers_are_errors_not_hangs() {
        let slot = Arc::new(Slot::default());
        let get = || request(&Method::GET, crate::forward::empty());
        // A head larger than allowed.
        let big: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let (addr, _) = scripted(big, None).await;
        let r = send(&slot, &addr, get(), opts(), None).await;
        assert!(
            matches!(r, Err(ForwardError::Protocol(WireError::HeadTooLarge(_)))),
            "{r:?}"
        );
        // Not HTTP.
        let (addr, _) = scripted(b"SSH-2.0-OpenSSH\r\n\r\n", None).await;
        let r = send(&slot, &addr, get(), opts(), None).await;
        assert!(
            matches!(r, Err(ForwardError::Protocol(WireError::Head(_)))),
            "{r:?}"
        );
        // Closed with no answer on a new connection.
        let (addr, _) = scripted(b"", None).await;
        let r = send(&slot, &addr, get(), opts(), None).await;
        assert!(matches!(r, Err(ForwardError::Reset(_))), "{r:?}");
        // A body cut short.
        let (addr, _) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", None).await;
        let resp = send(&slot, &addr, get(), opts(), None).await.expect("head");
        let err = resp.body.collect().await.expect_err("truncated body");
        assert!(
            err.to_string().contains("before the end of the body"),
            "{err}"
        );
        // Nothing at all, within the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(l.local_addr().expect("addr").to_string());
        let mut quick = opts();
        quick.timeout = Duration::from_millis(200);
        let r = send(&slot, &addr, get(), quick, None).await;
        assert!(matches!(r, Err(ForwardError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn a_watched_deadline_ends_the_wait_when_its_owner_fires_it() {
        // A server that never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(l.local_addr().expect("addr").to_string());
        let slot = Arc::new(Slot::default());
        let watch = Watch::default();
        let owner = async {
            // Nothing fires before the deadline...
            tokio::task::yield_now().await;
            assert!(watch.check(Instant::now()).is_some(), "deadline pending");
            // ...and the owner's timer, come the deadline, ends the wait.
            assert!(
                watch
                    .check(Instant::now() + Duration::from_secs(3600))
                    .is_none()
            );
        };
        let req = request(&Method::GET, crate::forward::empty());
        // Its own timeout is an hour away: only the watch can end it.
        let mut long = opts();
        long.timeout = Duration::from_secs(3600);
        let both = async { tokio::join!(send(&slot, &addr, req, long, Some(&watch)), owner) };
        let (r, ()) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("the watch ended the wait");
        assert!(matches!(r, Err(ForwardError::Timeout)), "{r:?}");
        // Stopped: the next request starts clean.
        assert!(
            watch
                .check(Instant::now() + Duration::from_secs(3600))
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced_for_a_get() {
        // Keep-alive answers, but the server closes each connection right
        // after its answer (without saying so).
        let (addr, mut seen) =
            scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
        let slot = Arc::new(Slot::default());
        for _ in 0..3 {
            assert_eq!(get(&slot, &addr).await, "ok");
            seen.recv().await.expect("request seen");
        }
    }
}
