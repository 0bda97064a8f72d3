//! WebSocket (HTTP/1.1 `Upgrade`): the handshake goes to the
//! affinity-chosen server over a fresh connection; after `101` both sides
//! are upgraded and spliced with `copy_bidirectional`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::affinity::Decision;
use crate::config::Limits;
use crate::fields::ClientFields;
use crate::forward::{self, BoxError, ProxyBody, add_forwarding, local, strip_hop_by_hop};
use crate::pool::Pool;
use crate::proxy::{ConnCtx, RequestInfo, no_server};

/// Whether a request of `version` with `fields` asks for a WebSocket
/// upgrade.
pub fn is_upgrade(version: Version, fields: ClientFields<'_>) -> bool {
    version == Version::HTTP_11
        && fields
            .get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
}

/// Proxies a WebSocket handshake and, on `101`, splices the two connections.
#[allow(clippy::too_many_arguments)]
pub async fn proxy<B>(
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    mut decision: Decision,
    req: Request<B>,
    host: Option<String>,
    info: &mut RequestInfo,
    limits: &Limits,
) -> Response<ProxyBody> {
    let (mut parts, _) = req.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(
        &mut parts.headers,
        &ctx.forwarding,
        parts.version,
        host.as_deref(),
    );
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
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
    let set_cookie = pool.affinity.on_response(
        &decision,
        server.index,
        pool.entries(),
        resp.headers(),
        SystemTime::now(),
    );
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rp, body) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        if let Some(c) = set_cookie {
            rp.headers.append(header::SET_COOKIE, c);
        }
        return Response::from_parts(rp, body.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    let server_upgrade = hyper::upgrade::on(&mut resp);
    // The client stream comes back from the connection loop once it has
    // written the 101 (see `h1`).
    let (tx, client_stream) = tokio::sync::oneshot::channel();
    *ctx.upgrade.lock() = Some(tx);
    let tunnel_guard = server.live.stats.open_connection();
    tokio::spawn(async move {
        let _guard = tunnel_guard;
        let (mut c, s) = match tokio::join!(client_stream, server_upgrade) {
            (Ok(c), Ok(s)) => (c, s),
            _ => return,
        };
        let mut s = TokioIo::new(s);
        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
    });
    let (mut rp, _) = resp.into_parts();
    if let Some(c) = set_cookie {
        rp.headers.append(header::SET_COOKIE, c);
    }
    Response::from_parts(rp, forward::empty())
}
