//! One client request, end to end: limits, routing, affinity, selection,
//! forwarding with retries and repin, the response, the access log and
//! metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::affinity::{Decision, OpenedCookie, Outcome};
use crate::conn::{Activity, ClientIo};
use crate::fields::{ClientFields, RequestLines};
use crate::forward::{
    self, ClientInfo, Forwarding, LimitedBody, ProxyBody, append_list, header_bytes, idempotent,
    local, request_host,
};
use crate::metrics::{AffinityLabels, RequestLabels};
use crate::pool::{Pool, Server};
use crate::select::RequestKey;
use crate::serve::Shared;
use crate::upstream::wire::RawFields;
use crate::upstream::{self, ForwardError};
use crate::{route, websocket};
use prometheus_client::metrics::counter::Counter;

/// Facts about one client connection, shared by its requests.
#[derive(Debug)]
pub struct ConnCtx {
    /// The listener address it was accepted on.
    pub listen: SocketAddr,
    /// Client address and TLS flag.
    pub client: ClientInfo,
    /// Its forwarding header values.
    pub forwarding: Forwarding,
    /// Requests in flight on this connection (idle timeout waits for 0).
    pub inflight: Arc<AtomicUsize>,
    /// The client stream's activity stamps (the request-head wait).
    pub activity: Arc<Activity>,
    /// The server-timeout deadline of the request in flight, for HTTP/1.1
    /// (`None` for HTTP/2, whose requests each arm a timer).
    pub watch: Option<upstream::Watch>,
    /// Requests received on this context (its active phase) so far.
    pub answered: AtomicUsize,
    /// Set by the WebSocket handler with its `101`: receives the client
    /// stream once the `101` has been written.
    pub upgrade: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<ClientIo>>>,
    /// The server connection this client connection's requests reuse.
    pub upstream: Arc<upstream::Slot>,
    /// The metric counters its last request counted in.
    pub counters: parking_lot::Mutex<CounterCache>,
    /// The affinity cookie its last request carried, opened, and the pool
    /// whose `Affinity` opened it.
    pub opened_cookie: parking_lot::Mutex<Option<(Arc<Pool>, OpenedCookie)>>,
}

impl ConnCtx {
    /// Whether server responses go to this client with their fields as the
    /// server wrote them ([`RawHead`]): an HTTP/1.1 connection, served by
    /// [`crate::h1`]. HTTP/2 needs them in a map.
    pub fn writes_raw_fields(&self) -> bool {
        self.watch.is_some()
    }

    /// The affinity `Set-Cookie` for the response of server `served` of
    /// `pool` ([`crate::affinity::Affinity::on_response`]). A refresh is
    /// noted in the connection's opened cookie, so a client that ignores it
    /// is not refreshed (resealed) again on its next request.
    pub fn affinity_on_response(
        &self,
        pool: &Arc<Pool>,
        decision: &Decision,
        served: usize,
        resp_fields: &impl crate::affinity::app_cookie::SetCookies,
    ) -> Option<HeaderValue> {
        let now = SystemTime::now();
        let mut memo = self.opened_cookie.lock();
        let mut fresh = OpenedCookie::default();
        let opened = match memo.as_mut() {
            Some((p, opened)) if Arc::ptr_eq(p, pool) => opened,
            _ => &mut fresh,
        };
        pool.affinity
            .on_response_with(decision, served, pool.entries(), resp_fields, now, opened)
    }

    /// A context for a connection accepted on `listen` from `client`, with
    /// nothing in flight, no kept server connection and no cached counters.
    /// `watched`: an HTTP/1.1 connection, whose quiet timer enforces the
    /// server timeout of its one request at a time (see [`upstream::Watch`]).
    pub fn new(
        listen: SocketAddr,
        client: ClientInfo,
        activity: Arc<Activity>,
        watched: bool,
    ) -> ConnCtx {
        ConnCtx {
            activity,
            watch: watched.then(upstream::Watch::default),
            listen,
            forwarding: Forwarding::new(&client),
            client,
            inflight: Arc::new(AtomicUsize::new(0)),
            answered: AtomicUsize::new(0),
            upgrade: parking_lot::Mutex::new(None),
            upstream: Arc::default(),
            counters: parking_lot::Mutex::default(),
            opened_cookie: parking_lot::Mutex::new(None),
        }
    }
}

/// The counters a connection's last request used: its next request almost
/// always counts in the same ones, found then without building label strings.
#[derive(Debug, Default)]
pub struct CounterCache {
    requests: Option<(RequestLabels, Counter)>,
    affinity: Option<(AffinityLabels, Counter)>,
}

impl CounterCache {
    fn count_request(&mut self, m: &crate::metrics::Metrics, pool: &str, server: &str, code: u16) {
        if let Some((l, c)) = &self.requests
            && l.code == code
            && l.pool == pool
            && l.server == server
        {
            c.inc();
            return;
        }
        let labels = RequestLabels {
            pool: pool.to_string(),
            server: server.to_string(),
            code,
        };
        let c = m.requests.get_or_create(&labels).clone();
        c.inc();
        self.requests = Some((labels, c));
    }

    fn count_affinity(
        &mut self,
        m: &crate::metrics::Metrics,
        pool: &str,
        outcome: &str,
        reason: &str,
    ) {
        if let Some((l, c)) = &self.affinity
            && l.outcome == outcome
            && l.reason == reason
            && l.pool == pool
        {
            c.inc();
            return;
        }
        let labels = AffinityLabels {
            pool: pool.to_string(),
            outcome: outcome.to_string(),
            reason: reason.to_string(),
        };
        let c = m.affinity.get_or_create(&labels).clone();
        c.inc();
        self.affinity = Some((labels, c));
    }
}

/// A request in flight on its connection; the last one to end starts the
/// wait for the next request head.
struct InflightGuard(Arc<ConnCtx>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.activity.begin_head_wait();
        }
    }
}

/// What the access log and metrics need to know about a request.
#[derive(Debug, Default)]
pub struct RequestInfo {
    /// The pool it was routed to (`None` before routing).
    pub pool: Option<Arc<Pool>>,
    /// Server that answered (or was last tried).
    pub server: Option<Arc<Server>>,
    /// Affinity outcome.
    pub outcome: Option<Outcome>,
    /// Retries performed.
    pub retries: u32,
}

impl RequestInfo {
    /// The pool's name, `-` before routing.
    pub fn pool_name(&self) -> &str {
        self.pool.as_deref().map_or("-", Pool::name)
    }

    /// The server's name, `-` before one was chosen.
    pub fn server_name(&self) -> &str {
        self.server.as_deref().map_or("-", Server::name)
    }
}

/// What a client's request body may be: hyper's (HTTP/2) or Remora's own
/// HTTP/1.1 connection's ([`crate::h1`]).
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<forward::BoxError>> + Send + Sync + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<forward::BoxError>> + Send + Sync + 'static
{
}

/// Handles one request (the service function of a client connection).
/// `lines`: its fields as an HTTP/1.1 head carried them (the request's
/// map is then empty); `None`: they are in the request's map.
pub async fn handle<B>(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    req: Request<B>,
    lines: Option<RequestLines>,
) -> Result<Response<ResponseBody>, Infallible>
where
    B: RequestBody,
{
    ctx.inflight.fetch_add(1, Ordering::Relaxed);
    ctx.answered.fetch_add(1, Ordering::Relaxed);
    ctx.activity.head_arrived();
    let guard = InflightGuard(ctx.clone());
    let start = Instant::now();
    let method = req.method().clone();
    let path: Option<String> = tracing::enabled!(target: "remora::access", tracing::Level::INFO)
        .then(|| req.uri().path().chars().take(256).collect());
    let mut info = RequestInfo::default();
    let Reply { resp, raw } = proxy(&shared, &ctx, req, lines, &mut info).await;
    let status = resp.status();
    let elapsed = start.elapsed();
    let server = info.server_name();
    let m = &shared.metrics;
    let mut counters = ctx.counters.lock();
    counters.count_request(m, info.pool_name(), server, status.as_u16());
    m.duration.observe(elapsed.as_secs_f64());
    let (outcome, reason) = match info.outcome {
        Some(o) => (o.as_str(), o.reason().map(|r| r.as_str()).unwrap_or("")),
        None => ("none", ""),
    };
    if info.outcome.is_some() {
        counters.count_affinity(m, info.pool_name(), outcome, reason);
    }
    drop(counters);
    tracing::info!(
        target: "remora::access",
        client = %ctx.client.addr,
        %method,
        path = path.as_deref().unwrap_or(""),
        pool = %info.pool_name(),
        server,
        affinity = outcome,
        reason,
        status = status.as_u16(),
        retries = info.retries,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(resp.map(move |inner| ResponseBody {
        inner,
        raw,
        _guard: guard,
    }))
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight on the
    /// client connection until the body is done.
    pub struct ResponseBody {
        #[pin]
        inner: ProxyBody,
        raw: Option<RawHead>,
        _guard: InflightGuard,
    }
}

impl ResponseBody {
    /// The server's fields as they came, for a client on HTTP/1.1, when
    /// the response is a server's (the response's `HeaderMap` is then
    /// empty).
    pub fn take_raw(&mut self) -> Option<RawHead> {
        self.raw.take()
    }
}

/// A server's response head as an HTTP/1.1 client gets it: the server's
/// end-to-end fields as they came, then `Via` and the affinity cookie.
#[derive(Debug)]
pub struct RawHead {
    /// The server's end-to-end fields.
    pub fields: RawFields,
    /// The affinity cookie to set, if any.
    pub set_cookie: Option<HeaderValue>,
}

/// The `Via` entry Remora adds to responses.
pub const VIA: &str = "1.1 remora";

/// What [`proxy`] answers: a response, and for an HTTP/1.1 client the
/// server's head as it came ([`RawHead`]; the response's map is empty).
struct Reply {
    resp: Response<ProxyBody>,
    raw: Option<RawHead>,
}

impl From<Response<ProxyBody>> for Reply {
    fn from(resp: Response<ProxyBody>) -> Self {
        Reply { resp, raw: None }
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = forward::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, forward::BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// 503 with `Retry-After` when no server can take the request.
pub fn no_server(reason: &str) -> Response<ProxyBody> {
    let mut r = local(StatusCode::SERVICE_UNAVAILABLE, reason);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn content_length(fields: ClientFields<'_>) -> Option<u64> {
    std::str::from_utf8(fields.get("content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn proxy<B: RequestBody>(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    mut req: Request<B>,
    lines: Option<RequestLines>,
    info: &mut RequestInfo,
) -> Reply {
    let rt = shared.runtime.load_full();
    let Some(lst) = rt.listeners.get(&ctx.listen).cloned() else {
        return no_server("listener closed\n").into();
    };
    let limits = &lst.config.limits;
    // An HTTP/1.1 head was held to the limit as it was read.
    if lines.is_none() && header_bytes(req.headers(), req.uri()) > limits.max_header_bytes {
        return local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        )
        .into();
    }
    let fields = ClientFields::new(lines.as_ref(), req.headers());
    let declared = content_length(fields);
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into();
    }
    let handshake = websocket::handshake(
        req.version(),
        req.method(),
        req.extensions().get::<hyper::ext::Protocol>(),
        fields,
    );
    if req.method() == http::Method::CONNECT && handshake.is_none() {
        return local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n").into();
    }
    let host = request_host(fields, req.uri());
    let pool_name = route::pool_for(&lst.config, host.as_deref(), req.uri().path());
    let Some(pool) = rt.pools.get(pool_name).cloned() else {
        return no_server("no such pool\n").into();
    };
    info.pool = Some(pool.clone());
    let key = RequestKey::new(ctx.client.addr.ip(), fields, req.uri()).with_tls(ctx.client.tls);
    let decision = {
        let mut memo = ctx.opened_cookie.lock();
        if !memo.as_ref().is_some_and(|(p, _)| Arc::ptr_eq(p, &pool)) {
            *memo = None;
        }
        let (_, opened) = memo.get_or_insert_with(|| (pool.clone(), OpenedCookie::default()));
        pool.affinity.resolve_with(
            &key,
            pool.entries(),
            &*pool,
            pool.selector(),
            SystemTime::now(),
            opened,
        )
    };
    info.outcome = decision.outcome();
    if decision.is_refused() {
        return no_server("pinned server unavailable (strict affinity)\n").into();
    }
    if decision.candidates().is_empty() {
        return no_server("no server available\n").into();
    }
    if let Some(handshake) = handshake {
        // The handshake goes through hyper's client, which wants a map.
        if let Some(l) = &lines {
            match l.to_header_map() {
                Ok(map) => *req.headers_mut() = map,
                Err(_) => return local(StatusCode::BAD_REQUEST, "invalid header field\n").into(),
            }
        }
        return websocket::proxy(ctx, &pool, decision, req, handshake, host, info, limits)
            .await
            .into();
    }
    let request = Incoming {
        req,
        lines,
        declared,
        host,
    };
    forward_with_retries(shared, ctx, &pool, decision, request, info, limits).await
}

/// A request on its way to a server, with what [`proxy`] found out about it.
struct Incoming<B> {
    req: Request<B>,
    /// Its fields as an HTTP/1.1 head carried them (`None`: in `req`).
    lines: Option<RequestLines>,
    /// Its `Content-Length`.
    declared: Option<u64>,
    /// The authority it asked for.
    host: Option<String>,
}

async fn forward_with_retries<B: RequestBody>(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    pool: &Arc<Pool>,
    mut decision: Decision,
    request: Incoming<B>,
    info: &mut RequestInfo,
    limits: &crate::config::Limits,
) -> Reply {
    let Incoming {
        req,
        lines,
        declared,
        host,
    } = request;
    let (parts, body) = req.into_parts();
    let client_fields = ClientFields::new(lines.as_ref(), &parts.headers);
    let body_empty = body.is_end_stream();
    let retry_any = idempotent(&parts.method) && body_empty;
    let client_version = parts.version;
    let client_length = client_fields.contains("content-length");
    let Some(target) = forward::origin_target(&parts.uri) else {
        return local(StatusCode::BAD_REQUEST, "bad request target\n").into();
    };
    // Raised by the body when it grows past `max_body_bytes` (no body, no flag).
    let exceeded: Option<Arc<AtomicBool>> = (!body_empty).then(Arc::default);
    let too_large = || exceeded.as_ref().is_some_and(|e| e.load(Ordering::Relaxed));
    let mut body: Option<ProxyBody> = exceeded
        .as_ref()
        .map(|flag| LimitedBody::new(body, limits.max_body_bytes, flag.clone()).boxed());
    // A small body of known length is kept in memory, so that a server that
    // refuses the connection (nothing was sent) does not fail the request:
    // it goes to the repin target like a request without a body.
    let mut replay: Option<bytes::Bytes> = None;
    if pool.config.retries > 0
        && declared.is_some_and(|n| n > 0 && n <= limits.replay_body_bytes)
        && let Some(b) = body.take()
    {
        match tokio::time::timeout(limits.header_read_timeout, b.collect()).await {
            Ok(Ok(collected)) => replay = Some(collected.to_bytes()),
            Ok(Err(_)) if too_large() => {
                return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into();
            }
            Ok(Err(_)) => {
                return local(StatusCode::BAD_REQUEST, "request body ended early\n").into();
            }
            Err(_) => {
                return local(StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into();
            }
        }
    }
    let health = &pool.config.health;
    let max_attempts = pool.config.retries.saturating_add(1);
    let mut attempt = 0u32;
    loop {
        let Some(server) = decision.server().and_then(|i| pool.servers.get(i)).cloned() else {
            return no_server("no server available\n").into();
        };
        info.server = Some(server.clone());
        let next = match &replay {
            Some(b) => forward::full(b.clone()),
            None => body.take().unwrap_or_else(forward::empty),
        };
        // The client's fields go out as they are written: hop-by-hop ones
        // left out and this hop's forwarding fields merged in, without
        // changing (or copying) the client's header map.
        let server_address: &str = &server.address;
        let hidden_cookie = pool.affinity.hidden_cookie();
        let fields = |out: &mut Vec<u8>| {
            forward::write_request_fields(
                out,
                client_fields,
                &ctx.forwarding,
                client_version,
                host.as_deref(),
                server_address,
                hidden_cookie,
            );
        };
        let up = upstream::Outgoing {
            method: &parts.method,
            target,
            fields: &fields,
            client_length,
            body: next,
        };
        let guard = server.begin();
        let t0 = Instant::now();
        let opts = upstream::SendOptions {
            connect_timeout: shared.connect_timeout,
            timeout: limits.server_timeout,
            max_head: limits.max_response_header_bytes,
        };
        match upstream::send(&ctx.upstream, &server.address, up, opts, ctx.watch.as_ref()).await {
            Ok(answer) => {
                server.live.stats.observe_latency(t0.elapsed());
                if answer.status.is_server_error() {
                    if server.record_failure(health.passive_fall, health.passive_backoff) {
                        tracing::warn!(
                            pool = pool.name(),
                            server = server.name(),
                            "server DOWN (passive: consecutive 5xx)"
                        );
                    }
                } else {
                    server.record_success();
                }
                let set_cookie =
                    ctx.affinity_on_response(pool, &decision, server.index, &answer.fields);
                let body = answer.body.with_guard(guard).boxed();
                let mut resp = Response::new(body);
                *resp.status_mut() = answer.status;
                *resp.version_mut() = answer.version;
                if ctx.writes_raw_fields() {
                    // Written as they came, with this hop's fields added
                    // then ([`crate::h1`]).
                    let raw = RawHead {
                        fields: answer.fields,
                        set_cookie,
                    };
                    return Reply {
                        resp,
                        raw: Some(raw),
                    };
                }
                // Hop-by-hop fields were left out when the head was read.
                let headers = resp.headers_mut();
                *headers = answer.fields.to_header_map();
                append_list(headers, header::VIA, HeaderValue::from_static(VIA));
                if let Some(c) = set_cookie {
                    headers.append(header::SET_COOKIE, c);
                }
                return resp.into();
            }
            Err(e) => {
                drop(guard);
                if too_large() {
                    return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into();
                }
                if let ForwardError::Body(e) = &e {
                    tracing::debug!(pool = pool.name(), server = server.name(), error = %e, "request body failed");
                    return local(StatusCode::BAD_REQUEST, "request body ended early\n").into();
                }
                if matches!(e, ForwardError::Timeout) {
                    tracing::warn!(pool = pool.name(), server = server.name(), "server timeout");
                    return local(StatusCode::GATEWAY_TIMEOUT, "server timeout\n").into();
                }
                let connect = matches!(e, ForwardError::Connect(_));
                if server.record_failure(health.passive_fall, health.passive_backoff) {
                    tracing::warn!(pool = pool.name(), server = server.name(), error = %crate::admin::error_chain(&e), "server DOWN (passive: consecutive errors)");
                }
                attempt += 1;
                let can_retry = attempt < max_attempts
                    && (retry_any || (connect && (body_empty || replay.is_some())));
                tracing::debug!(pool = pool.name(), server = server.name(), error = %crate::admin::error_chain(&e), can_retry, "forward failed");
                if !can_retry {
                    return if connect {
                        no_server("no server reachable\n").into()
                    } else {
                        local(StatusCode::BAD_GATEWAY, "bad gateway\n").into()
                    };
                }
                shared
                    .metrics
                    .retries
                    .get_or_create(&crate::metrics::PoolLabels {
                        pool: pool.name().to_string(),
                    })
                    .inc();
                info.retries += 1;
                decision = pool.affinity.repin_after_failure(
                    &decision,
                    server.index,
                    pool.entries(),
                    &**pool,
                );
                info.outcome = decision.outcome();
                if decision.is_refused() {
                    return no_server("pinned server unavailable (strict affinity)\n").into();
                }
            }
        }
    }
}
