//! WebSocket, over HTTP/1.1 (`Upgrade`, RFC 6455) and over HTTP/2
//! (extended `CONNECT`, RFC 8441): the handshake goes to the
//! affinity-chosen server over a fresh HTTP/1.1 connection; once the server
//! has switched protocols, the client's side (its upgraded connection, or
//! its HTTP/2 stream) and the server's connection are spliced with
//! `copy_bidirectional`.
//!
//! A server speaks WebSocket over HTTP/1.1 only, so an HTTP/2 handshake is
//! translated: the server gets `GET` with `Upgrade: websocket` and a fresh
//! `Sec-WebSocket-Key`, Remora checks the server's `Sec-WebSocket-Accept`
//! against it, and the client gets `200` (RFC 8441 section 5) with the
//! server's other fields (subprotocol, extensions, the affinity cookie).

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::affinity::Decision;
use crate::config::Limits;
use crate::fields::ClientFields;
use crate::forward::{self, BoxError, ProxyBody, add_forwarding, local, strip_hop_by_hop};
use crate::pool::Pool;
use crate::proxy::{ConnCtx, RequestInfo, no_server};

/// How a client asks to open a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// HTTP/1.1 `GET` with `Upgrade: websocket`; answered with `101`.
    Upgrade,
    /// HTTP/2 `CONNECT` with `:protocol = websocket` (RFC 8441); answered
    /// with `200`, the stream then carries the WebSocket.
    ExtendedConnect,
}

/// How the request of `version` and `method`, with `fields` and (for
/// HTTP/2) the extended `CONNECT` protocol `protocol`, asks for a
/// WebSocket, if it does.
pub fn handshake(
    version: Version,
    method: &Method,
    protocol: Option<&hyper::ext::Protocol>,
    fields: ClientFields<'_>,
) -> Option<Handshake> {
    if version == Version::HTTP_11
        && fields
            .get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
    {
        return Some(Handshake::Upgrade);
    }
    let extended = version == Version::HTTP_2
        && method == Method::CONNECT
        && protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    extended.then_some(Handshake::ExtendedConnect)
}

/// RFC 6455 section 4.2.2: the `Sec-WebSocket-Accept` a server must answer
/// to `key`.
pub fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn fresh_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// Proxies a WebSocket handshake and, once the server switches protocols,
/// splices the two sides.
#[allow(clippy::too_many_arguments)]
pub async fn proxy<B>(
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    mut decision: Decision,
    mut req: Request<B>,
    handshake: Handshake,
    host: Option<String>,
    info: &mut RequestInfo,
    limits: &Limits,
) -> Response<ProxyBody> {
    // An HTTP/2 stream is handed over by hyper once the `200` is sent.
    let client_stream = match handshake {
        Handshake::ExtendedConnect => Some(hyper::upgrade::on(&mut req)),
        Handshake::Upgrade => None,
    };
    let (mut parts, _) = req.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    forward::join_cookies(&mut parts.headers, pool.affinity.hidden_cookie());
    add_forwarding(
        &mut parts.headers,
        &ctx.forwarding,
        parts.version,
        host.as_deref(),
    );
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let mut key = None;
    match handshake {
        Handshake::Upgrade => {
            if let Some(u) = upgrade {
                parts.headers.insert(header::UPGRADE, u);
            }
        }
        Handshake::ExtendedConnect => {
            parts.method = Method::GET;
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let fresh = fresh_key();
            if let Ok(v) = HeaderValue::from_str(&fresh) {
                parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
            }
            key = Some(fresh);
            if !parts.headers.contains_key(header::HOST)
                && let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
            {
                parts.headers.insert(header::HOST, v);
            }
        }
    }

    // Connect, repinning if the pinned server refuses.
    let mut attempts = pool.config.retries.saturating_add(1);
    let (server, stream) = loop {
        let Some(server) = decision.server().and_then(|i| pool.servers.get(i)).cloned() else {
            return no_server("no server available\n");
        };
        info.server = Some(server.clone());
        match tokio::time::timeout(
            limits.connect_timeout,
            TcpStream::connect(&server.config.address),
        )
        .await
        {
            Ok(Ok(s)) => break (server, s),
            _ => {
                let h = &pool.config.health;
                server.record_failure(h.passive_fall, h.passive_backoff);
                attempts -= 1;
                if attempts == 0 {
                    return local(StatusCode::BAD_GATEWAY, "bad gateway\n");
                }
                info.retries += 1;
                decision = pool.affinity.repin_after_failure(
                    &decision,
                    server.index,
                    pool.entries(),
                    &**pool,
                );
                info.outcome = decision.outcome();
                if decision.is_refused() {
                    return no_server("pinned server unavailable (strict affinity)\n");
                }
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(_) => return local(StatusCode::BAD_GATEWAY, "bad gateway\n"),
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut up = Request::new(forward::empty());
    *up.method_mut() = parts.method.clone();
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = parts.headers;
    match pq.parse() {
        Ok(u) => *up.uri_mut() = u,
        Err(_) => return local(StatusCode::BAD_REQUEST, "bad request target\n"),
    }
    let t0 = Instant::now();
    let mut resp = match tokio::time::timeout(limits.server_timeout, sender.send_request(up)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return local(StatusCode::BAD_GATEWAY, "bad gateway\n"),
        Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "server timeout\n"),
    };
    server.live.stats.observe_latency(t0.elapsed());
    server.record_success();
    let set_cookie = ctx.affinity_on_response(pool, &decision, server.index, resp.headers());
    if key.is_some() && resp.status().is_success() {
        // A 2xx would tell an HTTP/2 client that the tunnel is open.
        tracing::debug!(server = %server.name(), status = %resp.status(), "WebSocket server did not switch protocols");
        return local(
            StatusCode::BAD_GATEWAY,
            "server did not switch to WebSocket\n",
        );
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rp, body) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        if let Some(c) = set_cookie {
            rp.headers.append(header::SET_COOKIE, c);
        }
        return Response::from_parts(rp, body.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    if let Some(key) = &key {
        let accept = resp.headers().get(header::SEC_WEBSOCKET_ACCEPT);
        if accept.is_none_or(|a| a.as_bytes() != accept_for(key.as_bytes()).as_bytes()) {
            tracing::debug!(server = %server.name(), "WebSocket server answered a wrong Sec-WebSocket-Accept");
            return local(StatusCode::BAD_GATEWAY, "bad gateway\n");
        }
    }
    let server_upgrade = hyper::upgrade::on(&mut resp);
    let tunnel_guard = server.live.stats.open_connection();
    let (mut rp, _) = resp.into_parts();
    if let Some(c) = set_cookie {
        rp.headers.append(header::SET_COOKIE, c);
    }
    match client_stream {
        None => {
            // The client stream comes back from the connection loop once
            // it has written the 101 (see `h1`).
            let (tx, client_stream) = tokio::sync::oneshot::channel();
            *ctx.upgrade.lock() = Some(tx);
            tokio::spawn(splice(client_stream, server_upgrade, tunnel_guard));
        }
        Some(client_stream) => {
            let client_stream = async { client_stream.await.map(TokioIo::new) };
            tokio::spawn(splice(client_stream, server_upgrade, tunnel_guard));
            // RFC 8441 section 5: `200`, no `Upgrade`, no accept key.
            rp.status = StatusCode::OK;
            strip_hop_by_hop(&mut rp.headers);
            rp.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
    Response::from_parts(rp, forward::empty())
}

/// Once both sides have switched protocols, copies between them until
/// either ends; `_guard` counts the tunnel as the server's connection.
async fn splice<C, E, G>(
    client: impl Future<Output = Result<C, E>>,
    server: hyper::upgrade::OnUpgrade,
    _guard: G,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let (Ok(mut c), Ok(s)) = tokio::join!(client, server) {
        let mut s = TokioIo::new(s);
        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s() {
        // The worked example of RFC 6455 section 1.3.
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshakes_are_told_apart() {
        let map = http::HeaderMap::new();
        let mut upgrade = http::HeaderMap::new();
        upgrade.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        let ws = hyper::ext::Protocol::from_static("websocket");
        let other = hyper::ext::Protocol::from_static("connect-udp");
        let fields = |m| ClientFields::new(None, m);
        assert_eq!(
            handshake(Version::HTTP_11, &Method::GET, None, fields(&upgrade)),
            Some(Handshake::Upgrade)
        );
        assert_eq!(
            handshake(Version::HTTP_11, &Method::GET, None, fields(&map)),
            None
        );
        assert_eq!(
            handshake(Version::HTTP_2, &Method::CONNECT, Some(&ws), fields(&map)),
            Some(Handshake::ExtendedConnect)
        );
        assert_eq!(
            handshake(
                Version::HTTP_2,
                &Method::CONNECT,
                Some(&other),
                fields(&map)
            ),
            None
        );
        assert_eq!(
            handshake(Version::HTTP_2, &Method::CONNECT, None, fields(&map)),
            None
        );
        // HTTP/2 has no Upgrade (RFC 9113 section 8.6).
        assert_eq!(
            handshake(Version::HTTP_2, &Method::GET, None, fields(&upgrade)),
            None
        );
    }
}
