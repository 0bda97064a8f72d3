//! [`SessionLayer`] and its service: cookie in, lazy load, save or touch
//! when the last concurrent request on the session finishes, cookie out.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{Config, OnStoreFailure, SameSite, cookie_value};
use crate::error::StoreError;
use crate::flush::finish;
use crate::hooks::ReplicaHooks;
use crate::metrics::Metrics;
use crate::record::{Record, now_ms};
use crate::session::{Ctx, Session};
use crate::store::{BoxFuture, Store};

/// Tower layer adding server-side sessions. See `docs/sessions.md`.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use remora_session::{Session, SessionLayer, store::MemoryStore};
///
/// async fn count(session: Session) -> Result<String, remora_session::SessionError> {
///     let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
///     session.insert("n", n).await?;
///     Ok(n.to_string())
/// }
/// let app: Router = Router::new()
///     .route("/", get(count))
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    cfg: Config,
    store: Arc<dyn Store>,
    metrics: Metrics,
    hooks: Option<Arc<dyn ReplicaHooks>>,
    ctx: Arc<Mutex<Option<Arc<Ctx>>>>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer on `store` with secure defaults.
    pub fn new(store: impl Store) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A layer on a shared store.
    pub fn from_arc(store: Arc<dyn Store>) -> Self {
        SessionLayer {
            cfg: Config::default(),
            store,
            metrics: Metrics::default(),
            hooks: None,
            ctx: Arc::new(Mutex::new(None)),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.cfg);
        self.ctx = Arc::new(Mutex::new(None));
        self
    }

    /// Cookie name (default `remora_session`).
    pub fn with_cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|c| c.cookie_name = name)
    }

    /// Prefix the cookie name with `__Host-` (forces `Secure`, `Path=/`, no
    /// `Domain`). Default off.
    pub fn with_host_prefix(self, on: bool) -> Self {
        self.with(|c| c.host_prefix = on)
    }

    /// `Secure` cookie attribute (default `true`). Set `false` only for
    /// plain-HTTP development.
    pub fn with_secure(self, secure: bool) -> Self {
        self.with(|c| c.secure = secure)
    }

    /// `SameSite` cookie attribute (default `Lax`).
    pub fn with_same_site(self, same_site: SameSite) -> Self {
        self.with(|c| c.same_site = same_site)
    }

    /// Cookie `Path` (default `/`).
    pub fn with_cookie_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.with(|c| c.cookie_path = path)
    }

    /// Cookie `Domain` (default none: host-only).
    pub fn with_cookie_domain(self, domain: impl Into<String>) -> Self {
        let d = domain.into();
        self.with(|c| c.cookie_domain = Some(d))
    }

    /// Sliding idle timeout (default 30 min).
    pub fn with_idle_timeout(self, d: Duration) -> Self {
        self.with(|c| c.idle_timeout = d)
    }

    /// Absolute lifetime from creation (default 12 h).
    pub fn with_absolute_lifetime(self, d: Duration) -> Self {
        self.with(|c| c.absolute_lifetime = d)
    }

    /// Minimum time between two idle refreshes of an unchanged session
    /// (default 60 s).
    pub fn with_save_period(self, d: Duration) -> Self {
        self.with(|c| c.save_period = d)
    }

    /// Maximum serialized session size in bytes (default 65536).
    pub fn with_size_limit(self, bytes: usize) -> Self {
        self.with(|c| c.size_limit = bytes)
    }

    /// Timeout of every store call (default 500 ms).
    pub fn with_store_timeout(self, d: Duration) -> Self {
        self.with(|c| c.store_timeout = d)
    }

    /// What to do when the store fails (default `503` + `Retry-After: 1`).
    pub fn with_on_store_failure(self, p: OnStoreFailure) -> Self {
        self.with(|c| c.on_store_failure = p)
    }

    /// Add a `Session-Expires` header (seconds left) to responses of
    /// requests that used an existing session (default off).
    pub fn with_expires_header(self, on: bool) -> Self {
        self.with(|c| c.expires_header = on)
    }

    /// Save changes even when the response is a 5xx (default off).
    pub fn with_save_on_server_error(self, on: bool) -> Self {
        self.with(|c| c.save_on_server_error = on)
    }

    /// How many merge-and-retry rounds a save makes on version conflicts
    /// before failing (default 8).
    pub fn with_merge_retries(self, n: u32) -> Self {
        self.with(|c| c.merge_retries = n)
    }

    /// Registers the layer's metrics on `registry` (prefix `remora_session`).
    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        self.metrics.register(registry);
        self
    }

    /// Plugs in replica hooks (default none).
    pub fn with_replica_hooks(mut self, hooks: Arc<dyn ReplicaHooks>) -> Self {
        self.hooks = Some(hooks);
        self.ctx = Arc::new(Mutex::new(None));
        self
    }

    /// Restores a session from a record opened from a replica (e.g. one that
    /// arrived in a Bayeux handshake rather than on an HTTP request): saves
    /// it if the store holds no live session under its ID, and returns what
    /// the store holds now. Expired records are refused (`Ok(None)`).
    /// Counted as `restored`; uses the store timeout.
    pub async fn restore(&self, record: Record) -> Result<Option<Record>, StoreError> {
        if record.is_expired(now_ms()) || !crate::id::is_well_formed(&record.id) {
            return Ok(None);
        }
        let ctx = self.ctx();
        let adopted = ctx.restore_record(record).await?;
        ctx.note_restored(&adopted.id);
        Ok(Some(adopted))
    }

    /// The name of the session cookie as sent (with any `__Host-` prefix).
    pub fn cookie_name(&self) -> String {
        self.cfg.full_cookie_name()
    }

    /// The store this layer uses.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn ctx(&self) -> Arc<Ctx> {
        self.ctx
            .lock()
            .get_or_insert_with(|| {
                Arc::new(Ctx {
                    store: self.store.clone(),
                    cfg: self.cfg.clone(),
                    metrics: self.metrics.clone(),
                    hooks: self.hooks.clone(),
                    registry: Mutex::new(HashMap::new()),
                    restored_ids: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            ctx: self.ctx(),
        }
    }
}

/// The service built by [`SessionLayer`].
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    ctx: Arc<Ctx>,
}

impl<S> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

/// Ends a request's use of a shared session object, even if the request's
/// future is dropped (the pending save then runs on a spawned task).
struct Guard {
    session: Option<Session>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let mut headers = HeaderMap::new();
                if let Err(e) = finish(&s, false, &mut headers).await {
                    tracing::error!(error = %e, "saving the session of an abandoned request failed");
                }
            });
        }
    }
}

fn unavailable(cfg: &Config) -> Response<Body> {
    let retry = match cfg.on_store_failure {
        OnStoreFailure::Unavailable { retry_after } => retry_after.as_secs().max(1),
        OnStoreFailure::FreshSession => 1,
    };
    let mut r = Response::new(Body::from("session store unavailable\n"));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let cookie_name = ctx.cfg.full_cookie_name();
            let presented = cookie_value(req.headers(), &cookie_name);
            let valid = match presented {
                Some(v) if crate::id::is_well_formed(&v) => Some(v),
                Some(_) => {
                    ctx.metrics.malformed_ids.inc();
                    tracing::debug!("malformed session id; starting a fresh session");
                    None
                }
                None => None,
            };
            let had_cookie = presented_some(&req, &cookie_name);
            if let (Some(h), Some(id)) = (&ctx.hooks, &valid) {
                h.on_request(req.headers(), id);
            }
            let shared = ctx.attach(valid.clone());
            let session = Session::new(shared);
            let mut guard = Guard {
                session: Some(session.clone()),
            };

            let mut req = req;
            if let (Some(h), Some(_)) = (ctx.hooks.clone(), &valid) {
                let (parts, body) = req.into_parts();
                match session
                    .shared
                    .load(&session.local, Some((&*h, &parts)))
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(resp)) => {
                        guard.session = None;
                        let mut scratch = HeaderMap::new();
                        let _ = finish(&session, false, &mut scratch).await;
                        return Ok(resp);
                    }
                    Err(_) => {
                        guard.session = None;
                        let mut scratch = HeaderMap::new();
                        let _ = finish(&session, true, &mut scratch).await;
                        return Ok(unavailable(&ctx.cfg));
                    }
                }
                req = Request::from_parts(parts, body);
            }

            req.extensions_mut().insert(session.clone());
            let resp = inner.call(req).await?;
            guard.session = None;
            let server_error = resp.status().is_server_error();
            let mut resp = resp.map(Body::new);

            let mut headers = HeaderMap::new();
            let saved = finish(&session, server_error, &mut headers).await;
            let store_error = session.local.lock().store_error;
            let fail_load = store_error
                && matches!(ctx.cfg.on_store_failure, OnStoreFailure::Unavailable { .. });
            if saved.is_err() || fail_load {
                return Ok(unavailable(&ctx.cfg));
            }
            // Cookie: present the current ID if the session is stored under
            // an ID the client does not have; remove a stale cookie.
            let st = session.shared.state.lock();
            let now = now_ms();
            let stored = st.stored_version > 0;
            if stored && valid.as_deref() != Some(st.record.id.as_str()) {
                let max_age = st.record.absolute_deadline.saturating_sub(now) / 1000;
                if let Ok(v) = HeaderValue::from_str(&ctx.cfg.set_cookie(&st.record.id, max_age)) {
                    headers.append(header::SET_COOKIE, v);
                }
            } else if !stored && had_cookie && st.loaded {
                if let Ok(v) = HeaderValue::from_str(&ctx.cfg.remove_cookie()) {
                    headers.append(header::SET_COOKIE, v);
                }
            }
            if ctx.cfg.expires_header && stored && st.loaded {
                let secs = st.record.expires_at().saturating_sub(now) / 1000;
                headers.insert("session-expires", HeaderValue::from(secs));
            }
            drop(st);
            for (k, v) in headers.iter() {
                resp.headers_mut().append(k.clone(), v.clone());
            }
            Ok(resp)
        })
    }
}

fn presented_some<B>(req: &Request<B>, name: &str) -> bool {
    cookie_value(req.headers(), name).is_some()
}
