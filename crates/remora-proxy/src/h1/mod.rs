//! Remora's own HTTP/1.1 server side for client connections (RFC 9112).
//!
//! One active phase of an HTTP/1.1 client connection (see [`crate::conn`]):
//! read a request head ([`head`]), hand the request to [`proxy::handle`]
//! with a body the connection reads from the socket only as the request's
//! forwarding asks for it ([`ClientBody`]), write the response
//! ([`response`]), and wait for the next head, until the connection closes
//! or goes quiet and parks.
//!
//! The whole exchange runs in the connection's own task and writes the
//! response head and a small body with one write: no dispatcher, no boxed
//! service future, no channel between the socket and the request. HTTP/2
//! connections are served by hyper.
//!
//! What clients get:
//! - requests one at a time, pipelined ones answered in order;
//! - a head larger than `max_header_bytes` (or with more than 100 fields):
//!   `431`; a head that does not parse: `400`; an HTTP version other than
//!   1.0 and 1.1: `505`; each closes the connection;
//! - bodies by `Content-Length` or chunked (trailers forwarded); both at
//!   once, a transfer coding that is not chunked last, or one on HTTP/1.0:
//!   refused (`400`, or `501` for a coding Remora does not decode), so a
//!   body's end is never ambiguous;
//! - `100 Continue` when the request is forwarded and its body is first
//!   read, never when Remora answers first (the connection then closes, as
//!   it does whenever a request body is left unread);
//! - responses framed by their length, chunked for HTTP/1.1 clients when it
//!   is unknown, or by closing for HTTP/1.0 clients; `Date` added when
//!   missing; `Connection: close` when the connection closes after it.

mod body;
pub mod head;
pub mod response;

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;

pub use body::{ClientBody, ClientBodyError};
use body::{Feed, FeedEnd};
use head::RequestHead;
use response::{Fields, Framing, Plan};

use crate::config::Limits;
use crate::conn::ClientIo;
use crate::proxy::{self, ConnCtx, ResponseBody};
use crate::serve::Shared;
use crate::upstream::wire::{chunk_header, write_fields};

/// Body bytes up to this many are copied beside the head (or the chunk
/// header) so that they go out in one write; larger ones are written on
/// their own.
const COPY_BELOW: usize = 16 * 1024;
/// The read buffer grows by this much when it runs low.
const READ_CHUNK: usize = 4096;

/// How waiting for the next request head ended.
// Moved once per request: boxing the head would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request.
    Head(RequestHead),
    /// Quiet for `park_after` (or answered, when eager): park the stream.
    Park,
    /// The client left or went quiet for `idle_timeout`, drain, or a
    /// slow head: close.
    Close,
    /// A head that cannot be served: answer and close.
    Refuse(head::HeadError),
}

/// Serves requests on `io` until the connection closes (`None`) or goes
/// quiet for `park_after` (the stream comes back, to be parked).
///
/// `eager` (the connection's first phase): park as soon as a request has
/// been answered and the client has sent nothing more, without waiting for
/// `park_after`. Many clients open a connection, send one request and then
/// stay silent (a burst of new visitors, a browser's spare connections);
/// parking them at once keeps their buffers from piling up. A client that
/// keeps sending pays one park and wake, then gets `park_after`.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    ctx: Arc<ConnCtx>,
    mut io: ClientIo,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
    eager: bool,
) -> Option<ClientIo> {
    let prefix = std::mem::take(&mut io.prefix);
    let mut buf = BytesMut::with_capacity(prefix.len().max(READ_CHUNK));
    buf.extend_from_slice(&prefix);
    drop(prefix);
    let mut out: Vec<u8> = Vec::new();
    // Drain: one wait for the whole phase (registered once, not once per
    // request), polled while waiting for a head and while a request is in
    // flight; `closing` once it fired.
    let mut closing = *shutdown.borrow();
    let mut drain = pin!(shutdown.changed());
    // One timer for the whole phase, re-armed only when it fires: the
    // moment the connection would have been quiet for `park_after`, a slow
    // head's deadline, and while a request is in flight the server timeout
    // (`ctx.watch`).
    let mut timer = pin!(tokio::time::sleep(
        limits.park_after.min(limits.idle_timeout)
    ));
    loop {
        let waited = next_head(
            &ctx,
            &mut io,
            &mut buf,
            limits,
            drain.as_mut(),
            timer.as_mut(),
            eager,
            &mut closing,
        )
        .await;
        let head = match waited {
            Next::Head(h) => h,
            Next::Park => {
                // A parked connection holds no server connection.
                ctx.upstream.release();
                return Some(io);
            }
            Next::Close => {
                let _ = io.shutdown().await;
                return None;
            }
            Next::Refuse(e) => {
                tracing::debug!(client = %ctx.client.addr, error = %e, "request head refused");
                out.clear();
                let status = e.status();
                let text = format!("{}\n", status.canonical_reason().unwrap_or("bad request"));
                response::refusal(&mut out, status, &text.to_ascii_lowercase());
                let _ = io.write_all(&out).await;
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                return None;
            }
        };
        let RequestHead {
            request,
            fields,
            body,
            keep_alive,
            expect_continue,
        } = head;
        let head_request = request.method() == Method::HEAD;
        let version = request.version();
        let (client_body, mut feed) = ClientBody::new(body, expect_continue);
        let handler = proxy::handle(
            shared.clone(),
            ctx.clone(),
            request.map(|()| client_body),
            Some(fields),
        );
        let resp = in_flight(
            handler,
            &ctx,
            &mut io,
            &mut buf,
            feed.as_mut(),
            limits,
            drain.as_mut(),
            timer.as_mut(),
            &mut closing,
        )
        .await;
        // A body left unread leaves the connection unusable.
        let body_read = feed.is_none_or(|f| f.ended() == Some(FeedEnd::Complete));
        let (parts, mut rbody) = resp.into_parts();
        let raw = rbody.take_raw();
        let fields = match &raw {
            Some(raw) => Fields::Raw(raw),
            None => Fields::Map(&parts.headers),
        };
        let plan = Plan::new(
            parts.status,
            fields.declared_length(),
            &rbody.size_hint(),
            head_request,
            version,
            keep_alive && body_read && !closing,
        );
        out.clear();
        response::encode(&mut out, parts.status, fields, plan, version);
        drop((parts, raw));
        let written = write_response(&mut io, &mut out, rbody, plan.framing).await;
        if out.capacity() > COPY_BELOW * 2 {
            out = Vec::new();
        }
        if !written {
            return None;
        }
        // A WebSocket handler that answered 101 takes the stream, with
        // whatever the client sent after its request.
        if let Some(tx) = ctx.upgrade.lock().take() {
            io.prefix = buf.freeze();
            let _ = tx.send(io);
            return None;
        }
        if !plan.keep_alive {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

/// Waits for the next request head in `buf`, reading `io`.
#[allow(clippy::too_many_arguments)]
async fn next_head<D: Future>(
    ctx: &ConnCtx,
    io: &mut ClientIo,
    buf: &mut BytesMut,
    limits: &Limits,
    mut drain: Pin<&mut D>,
    mut timer: Pin<&mut Sleep>,
    eager: bool,
    closing: &mut bool,
) -> Next {
    let activity = io.activity.clone();
    let park_after = limits.park_after.min(limits.idle_timeout);
    let head_limit = limits.header_read_timeout;
    loop {
        head::skip_empty_lines(buf);
        if !buf.is_empty() {
            match head::parse(buf, limits.max_header_bytes) {
                Ok(Some(h)) => return Next::Head(h),
                Ok(None) => {}
                Err(e) => return Next::Refuse(e),
            }
        }
        if *closing {
            return Next::Close;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        if eager && buf.is_empty() && ctx.answered.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            // Answered, and the client is silent: park now.
            match io.read_buf(buf).now_or_never() {
                None => return Next::Park,
                Some(Ok(0) | Err(_)) => return Next::Close,
                Some(Ok(_)) => continue,
            }
        }
        tokio::select! {
            r = io.read_buf(buf) => match r {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            },
            _ = drain.as_mut() => {
                *closing = true;
                return Next::Close;
            }
            () = timer.as_mut() => {
                let quiet = activity.idle_for();
                let head_wait = activity.head_wait();
                if head_wait.is_some_and(|w| w >= head_limit)
                    && (quiet < park_after || !buf.is_empty())
                {
                    // Bytes keep trickling and no complete head: slowloris.
                    tracing::debug!(client = %ctx.client.addr, "request head not complete within header_read_timeout");
                    return Next::Close;
                }
                if buf.is_empty() && quiet >= limits.idle_timeout {
                    return Next::Close;
                }
                if buf.is_empty() && quiet >= park_after {
                    return Next::Park;
                }
                let mut wait = park_after.saturating_sub(quiet);
                if let Some(w) = head_wait {
                    wait = wait.min(head_limit.saturating_sub(w));
                }
                rearm(timer.as_mut(), wait);
            }
        }
    }
}

/// Runs `handler` (the request) to its response, feeding it the request
/// body as it asks, firing the server timeout from the timer, and noting
/// drain.
#[allow(clippy::too_many_arguments)]
async fn in_flight<F, D: Future>(
    handler: F,
    ctx: &ConnCtx,
    io: &mut ClientIo,
    buf: &mut BytesMut,
    mut feed: Option<&mut Feed>,
    limits: &Limits,
    mut drain: Pin<&mut D>,
    mut timer: Pin<&mut Sleep>,
    closing: &mut bool,
) -> Response<ResponseBody>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    let mut handler = pin!(handler);
    let busy_wait = limits
        .park_after
        .min(limits.idle_timeout)
        .min(limits.server_timeout / 8)
        .max(Duration::from_millis(1));
    let max_trailers = limits.max_header_bytes;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(r) = handler.as_mut().poll(cx) {
                let Ok(resp) = r;
                return Poll::Ready(resp);
            }
            // A step of the body handed over: its reader goes on at once.
            let fed = match feed.as_deref_mut() {
                Some(f) => f.poll(cx, io, buf, max_trailers).is_ready(),
                None => false,
            };
            if !fed {
                break;
            }
        }
        if !*closing && drain.as_mut().poll(cx).is_ready() {
            *closing = true;
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let mut wait = busy_wait;
            if let Some(deadline) = ctx.watch.as_ref().and_then(|w| w.check(now)) {
                wait = wait.min(deadline.saturating_duration_since(now));
            }
            rearm(timer.as_mut(), wait);
        }
        Poll::Pending
    })
    .await
}

fn rearm(timer: Pin<&mut Sleep>, wait: Duration) {
    timer.reset(tokio::time::Instant::now() + wait.max(Duration::from_millis(1)));
}

/// Writes the response body after the head in `out`, framed as
/// `framing` says. `false`: the connection failed, or the body did
/// (the client got a cut response and the connection must close).
async fn write_response(
    io: &mut ClientIo,
    out: &mut Vec<u8>,
    mut body: ResponseBody,
    framing: Framing,
) -> bool {
    let mut sent: u64 = 0;
    let mut trailers = None;
    loop {
        if framing == Framing::None || body.is_end_stream() {
            break;
        }
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                // Nothing more yet: what is ready goes out first.
                if !out.is_empty() {
                    if io.write_all(out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
                if io.flush().await.is_err() {
                    return false;
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                let _ = io.write_all(out).await;
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Framing::Length(n) = framing
            && sent > n
        {
            tracing::debug!(length = n, "response body longer than its Content-Length");
            let _ = io.write_all(out).await;
            return false;
        }
        if framing == Framing::Chunked {
            chunk_header(out, data.len());
        }
        if out.len() + data.len() <= COPY_BELOW {
            out.extend_from_slice(&data);
        } else if write_two(io, out, data).await.is_err() {
            return false;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    let complete = match framing {
        Framing::Length(n) => sent == n,
        _ => true,
    };
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            write_fields(out, t);
        }
        out.extend_from_slice(b"\r\n");
    }
    drop(body);
    let ok = io.write_all(out).await.is_ok() && io.flush().await.is_ok();
    out.clear();
    if !complete {
        tracing::debug!("response body shorter than its Content-Length");
    }
    ok && complete
}

/// Writes `first` then `second`, gathered when the stream can, and leaves
/// `first` empty.
async fn write_two(io: &mut ClientIo, first: &mut Vec<u8>, second: Bytes) -> std::io::Result<()> {
    let (mut a, mut b) = (&first[..], &second[..]);
    while !a.is_empty() {
        let n = io
            .write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.write_all(b).await?;
    first.clear();
    Ok(())
}
