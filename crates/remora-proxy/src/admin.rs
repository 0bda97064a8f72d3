//! The admin listener: server list, server state, reload, metrics.
//!
//! Every route needs `Authorization: Bearer TOKEN` (compared in constant
//! time), except `GET /metrics` when `public_metrics = true`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::config::ServerState;
use crate::forward::{ProxyBody, full, local};
use crate::serve::Shared;

/// Formats an error with its sources: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Serves the admin API on `listener` forever.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let rt = shared.runtime.load();
    let Some(admin) = &rt.config.admin else {
        return false;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(admin.token.as_bytes()).into()
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<ProxyBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let public_metrics = shared
        .runtime
        .load()
        .config
        .admin
        .as_ref()
        .is_some_and(|a| a.public_metrics);
    if req.method() == Method::GET && path == "/metrics" {
        if !public_metrics && !authorized(shared, &req) {
            return unauthorized();
        }
        refresh_gauges(shared);
        let mut r = local(StatusCode::OK, &shared.metrics.encode());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        return r;
    }
    if !authorized(shared, &req) {
        return unauthorized();
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["api", "servers"]) => json(StatusCode::OK, &servers(shared)),
        (Method::PUT, ["api", "pools", pool, "servers", server, "state"]) => {
            let (pool, server) = (pool.to_string(), server.to_string());
            set_state(shared, &pool, &server, req).await
        }
        (Method::POST, ["api", "reload"]) => match shared.reload().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true })),
            Err(e) => error(StatusCode::BAD_REQUEST, &error_chain(&e)),
        },
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn unauthorized() -> Response<ProxyBody> {
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

#[derive(Serialize)]
struct ServerView {
    name: String,
    address: String,
    state: &'static str,
    healthy: bool,
    weight: u32,
    effective_weight: u32,
    backup: bool,
    active_connections: usize,
    pinned_clients: u64,
}

#[derive(Serialize)]
struct PoolView {
    name: String,
    algorithm: crate::config::Algorithm,
    servers: Vec<ServerView>,
}

fn servers(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let pools: Vec<PoolView> = rt
        .config
        .pools
        .iter()
        .filter_map(|pc| rt.pools.get(&pc.name))
        .map(|p| (p, p.pinned_counts()))
        .map(|(p, pinned)| PoolView {
            name: p.name().to_string(),
            algorithm: p.config.algorithm,
            servers: p
                .servers
                .iter()
                .map(|s| ServerView {
                    name: s.name().to_string(),
                    address: s.config.address.clone(),
                    state: s.state().as_str(),
                    healthy: s.healthy(),
                    weight: s.config.weight,
                    effective_weight: s.effective_weight(),
                    backup: s.config.backup,
                    active_connections: s.active(),
                    pinned_clients: pinned.get(s.index).copied().unwrap_or(0),
                })
                .collect(),
        })
        .collect();
    serde_json::json!({ "pools": pools })
}

fn refresh_gauges(shared: &Shared) {
    let rt = shared.runtime.load();
    for p in rt.pools.values() {
        let pinned = p.pinned_counts();
        for s in &p.servers {
            let labels = crate::metrics::ServerLabels {
                pool: p.name().to_string(),
                server: s.name().to_string(),
            };
            shared
                .metrics
                .server_up
                .get_or_create(&labels)
                .set(i64::from(s.serves_pinned()));
            shared
                .metrics
                .server_active
                .get_or_create(&labels)
                .set(i64::try_from(s.active()).unwrap_or(i64::MAX));
            shared
                .metrics
                .pinned
                .get_or_create(&labels)
                .set(i64::try_from(pinned.get(s.index).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: ServerState,
}

async fn set_state(
    shared: &Shared,
    pool: &str,
    server: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let parsed: StateBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"state\":\"ready|drain|maintenance\"}}: {e}"),
            );
        }
    };
    let rt = shared.runtime.load();
    let Some(p) = rt.pools.get(pool) else {
        return error(StatusCode::NOT_FOUND, "no such pool");
    };
    let Some(s) = p.server(server) else {
        return error(StatusCode::NOT_FOUND, "no such server");
    };
    let old = s.state();
    s.set_state(parsed.state);
    tracing::info!(
        pool,
        server,
        from = old.as_str(),
        to = parsed.state.as_str(),
        "server state changed by admin API"
    );
    json(
        StatusCode::OK,
        &serde_json::json!({ "pool": pool, "server": server, "state": parsed.state.as_str() }),
    )
}
