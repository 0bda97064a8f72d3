//! [`Bayeux::serve`]: an HTTP/1.1 server for a standalone Bayeux node that
//! holds long-polling connects cheaply.
//!
//! A long-polling client spends most of its life with a `/meta/connect`
//! held. Served through hyper, each such connection keeps hyper's
//! per-connection state: an 8 KiB read buffer and an 8 KiB write buffer for
//! the life of the connection, plus the connection and service futures.
//! Here each connection is read by a small loop of our own: plain
//! long-polling POSTs to the Bayeux path (HTTP/1.1, `Content-Length`, no
//! `Expect`, no `Upgrade`) are parsed with `httparse` and answered directly,
//! and while a connect is held the connection keeps no buffer at all (the
//! socket is only watched for the peer closing it). Any other request
//! (WebSocket upgrades, callback-polling GETs, other routes, HTTP/1.0,
//! chunked bodies, oversized or malformed heads) hands the connection, with
//! the bytes already read, to hyper serving the axum router for the rest of
//! its life.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::{form_field, handle_http, respond};
use crate::engine::{Bayeux, Transport};
use crate::security::RequestContext;

/// Largest request head read by the own loop; a longer one is handed to
/// hyper (which applies its own limit).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields of a request answered by the own loop.
const MAX_HEADERS: usize = 64;
/// How long a connection may wait for (the rest of) a request head or
/// body, or for the client to take a response, before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A request head as the own loop sees it.
enum Head {
    /// More bytes are needed.
    Partial,
    /// Not for the own loop: hand the connection to hyper.
    HandOff,
    /// A long-polling POST to answer here.
    LongPolling {
        head_len: usize,
        body_len: usize,
        headers: HeaderMap,
        form: bool,
        close: bool,
    },
}

/// Whether `path` (query stripped) is `base` or below it.
fn under(path: &str, base: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}

/// Whether a comma-separated header value lists `token`.
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Classifies the head at the start of `buf` (no await while the parsed
/// header array is alive, so it never sits in a connection's future).
fn parse_head(buf: &[u8], base: &str, max_body: usize) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Head::Partial,
        // Too long, too many fields or malformed: hyper answers it.
        _ => return Head::HandOff,
    };
    if req.method != Some("POST")
        || req.version != Some(1)
        || !req.path.is_some_and(|p| under(p, base))
    {
        return Head::HandOff;
    }
    let mut body_len: Option<usize> = None;
    let mut form = false;
    let mut close = false;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Head::HandOff;
        };
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Head::HandOff;
        };
        if name == header::CONTENT_LENGTH {
            // Digits only (`parse` would take a leading `+`).
            let digits = h.value.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .flatten();
            match (body_len, n) {
                (None, Some(n)) => body_len = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Head::HandOff,
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Head::HandOff;
        } else if name == header::CONTENT_TYPE {
            form = h
                .value
                .get(..33)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"application/x-www-form-urlencoded"));
        } else if name == header::CONNECTION {
            close |= lists(h.value, "close");
        }
        headers.append(name, value);
    }
    match body_len {
        Some(body_len) if body_len <= max_body => Head::LongPolling {
            head_len,
            body_len,
            headers,
            form,
            close,
        },
        // No length (an empty POST) or too large: the router's answers.
        _ => Head::HandOff,
    }
}

/// Reads more bytes into `buf`; `Ok(false)` at end of stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.reserve(1024);
    Ok(stream.read_buf(buf).await? > 0)
}

impl Bayeux {
    /// Serves Bayeux at `/cometd` (as [`Bayeux::router`]) and the `routes`
    /// given beside it on `listener`, until `shutdown` completes; then stops
    /// accepting, closes idle connections, lets every connection finish its
    /// request in progress and returns. Held connects are not released by
    /// this: call [`Bayeux::remove_all_clients`] first to answer them at once.
    ///
    /// Long-polling POSTs are answered by a connection loop of this crate
    /// that keeps no buffers while a connect is held (see `docs/bayeux.md`);
    /// so layers added to `routes` do not see them. Every other request is
    /// served by hyper with the router (and axum's `ConnectInfo<SocketAddr>`
    /// set). Use [`Bayeux::router`] to mount Bayeux behind layers instead.
    pub async fn serve(
        &self,
        listener: TcpListener,
        routes: Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let app = self.router().merge(routes);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a sender: `recv` returns `None` once
        // they all ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept.
                    tracing::warn!(error = %e, "bayeux: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                bayeux: self.clone(),
                app: app.clone(),
                stream,
                peer,
                stop: stop_rx.clone(),
                _alive: alive_tx.clone(),
            };
            tokio::spawn(conn.run());
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drop(alive_tx);
        let _ = alive_rx.recv().await;
        Ok(())
    }
}

/// One accepted connection.
struct Connection {
    bayeux: Bayeux,
    app: Router,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

/// What ended a wait for request bytes.
enum Wait {
    Head(Head),
    Closed,
}

impl Connection {
    async fn run(mut self) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let head = match self.next_head(&mut buf).await {
                Wait::Head(h) => h,
                Wait::Closed => return,
            };
            let Head::LongPolling {
                head_len,
                body_len,
                headers,
                form,
                close,
            } = head
            else {
                // Boxed: hyper's connection state is large and must not
                // size every connection's future.
                return Box::pin(self.hand_off(buf)).await;
            };
            buf.drain(..head_len);
            while buf.len() < body_len {
                match tokio::time::timeout(IDLE_TIMEOUT, read_more(&mut self.stream, &mut buf))
                    .await
                {
                    Ok(Ok(true)) => {}
                    _ => return,
                }
            }
            let rest = buf.split_off(body_len);
            let body = std::mem::replace(&mut buf, rest);
            let body = if form {
                // Some clients (curl -d) label a JSON body as a form.
                form_field(&body, "message").unwrap_or(body)
            } else {
                body
            };
            let Some(response) = self.answer(headers, body, &mut buf).await else {
                return;
            };
            let close = close || *self.stop.borrow();
            // A client that stops reading is given up like an idle one.
            let written = tokio::time::timeout(
                IDLE_TIMEOUT,
                write_response(&mut self.stream, response, close),
            )
            .await;
            if !matches!(written, Ok(Ok(()))) || close {
                let _ = self.stream.shutdown().await;
                return;
            }
        }
    }

    /// Waits for a complete request head (or the hand-off decision) in
    /// `buf`, reading as needed; `Closed` at end of stream, on error, after
    /// [`IDLE_TIMEOUT`], or at shutdown while no request has started.
    async fn next_head(&mut self, buf: &mut Vec<u8>) -> Wait {
        loop {
            if !buf.is_empty() {
                let max_body = self.bayeux.config().max_request_bytes;
                match parse_head(buf, crate::transport::DEFAULT_PATH, max_body) {
                    Head::Partial => {}
                    h => return Wait::Head(h),
                }
            } else if *self.stop.borrow() {
                return Wait::Closed;
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE_TIMEOUT, read_more(&mut self.stream, buf)) => r,
                _ = self.stop.changed(), if idle => return Wait::Closed,
            };
            match read {
                Ok(Ok(true)) => {}
                _ => return Wait::Closed,
            }
        }
    }

    /// Runs a long-polling request. While a connect is held, `buf` gets
    /// whatever the client sends next (up to a head's worth), and the
    /// request is abandoned (`None`) if the client closes the connection.
    async fn answer(
        &mut self,
        headers: HeaderMap,
        body: Vec<u8>,
        buf: &mut Vec<u8>,
    ) -> Option<Response> {
        let mut extensions = http::Extensions::new();
        extensions.insert(ConnectInfo(self.peer));
        let ctx = RequestContext {
            headers,
            extensions,
            remote: Some(self.peer),
        };
        if buf.is_empty() {
            // Nothing pipelined: hold no buffer while the connect is held.
            *buf = Vec::new();
        }
        let work = handle_http(&self.bayeux, &ctx, body, Transport::LongPolling);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => {
                    return Some(match r {
                        Ok((json, cookie)) => respond(json, "application/json;charset=UTF-8", cookie),
                        Err(r) => r,
                    });
                }
                ready = self.stream.readable(), if buf.len() < MAX_HEAD_BYTES => {
                    if ready.is_err() {
                        return None;
                    }
                    buf.reserve(512);
                    match self.stream.try_read_buf(buf) {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// Serves the rest of the connection with hyper and the router, the
    /// bytes already read first.
    async fn hand_off(self, buf: Vec<u8>) {
        let Connection {
            app,
            stream,
            peer,
            mut stop,
            ..
        } = self;
        let io = TokioIo::new(Rewind {
            prefix: Bytes::from(buf),
            stream,
        });
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    Ok::<_, Infallible>(
                        app.oneshot(req.map(Body::new))
                            .await
                            .unwrap_or_else(|e| match e {}),
                    )
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let stopping = *stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "bayeux: connection ended");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {}
        }
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "bayeux: connection ended");
        }
    }
}

/// Bodies up to this size are copied behind the head; larger ones are
/// written from their own buffer beside it (one vectored write).
const COPY_BODY_BYTES: usize = 2048;

/// Writes `response` as HTTP/1.1 with a `Content-Length` (and `Connection:
/// close` when `close`), in one write.
async fn write_response(stream: &mut TcpStream, response: Response, close: bool) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(io::Error::other)?;
    let copied = if body.len() <= COPY_BODY_BYTES {
        body.len()
    } else {
        0
    };
    let mut out = Vec::with_capacity(256 + copied);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if copied == body.len() {
        out.extend_from_slice(&body);
        return stream.write_all(&out).await;
    }
    let mut both = Bytes::from(out).chain(body);
    stream.write_all_buf(&mut both).await
}

/// A stream that first yields `prefix`, then reads from `stream`.
struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(req: &str) -> &'static str {
        match parse_head(req.as_bytes(), "/cometd", 1000) {
            Head::Partial => "partial",
            Head::HandOff => "hand-off",
            Head::LongPolling { .. } => "long-polling",
        }
    }

    #[test]
    fn heads_are_classified() {
        let lp = "POST /cometd/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(classify(lp), "long-polling");
        assert_eq!(
            classify("POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Le"),
            "partial"
        );
        for other in [
            "GET /cometd HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /cometd HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /cometdx HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: 1001\r\n\r\n",
            "POST /cometd HTTP/1.1\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /cometd HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "P\x00ST / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(classify(other), "hand-off", "{other:?}");
        }
        let long = format!("POST /cometd HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(classify(&long), "hand-off");
    }

    #[test]
    fn head_fields() {
        let req = "POST /cometd?x=1 HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded; charset=UTF-8\r\nConnection: keep-alive, Close\r\nCookie: a=b\r\nContent-Length: 3\r\n\r\nabc";
        let Head::LongPolling {
            head_len,
            body_len,
            headers,
            form,
            close,
        } = parse_head(req.as_bytes(), "/cometd", 10)
        else {
            panic!("not long-polling");
        };
        assert_eq!(
            (head_len, body_len, form, close),
            (req.len() - 3, 3, true, true)
        );
        assert_eq!(headers.get("cookie").unwrap(), "a=b");
        assert!(under("/cometd/", "/cometd"));
        assert!(!under("/", "/cometd"));
    }
}
