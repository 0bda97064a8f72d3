//! Client-held sealed replicas: a session that survives any server.
//!
//! [`Replicas`] plugs into a [`SessionLayer`](crate::SessionLayer) as its
//! [`ReplicaHooks`]. After every save that changed a session it seals the
//! session into a replica and hands it to the client (`Session-Replica`
//! response header, optional cookies, and listeners such as the Bayeux
//! carriage). When a request names a session this server does not know, it
//! restores the session from the replica the request carries, asks a capable
//! client for it (`409` + `Session-Replica-Wanted: 1`), or parks the request
//! until the replica arrives on another request or a Bayeux handshake.
//! The protocol is specified in `docs/replica-protocol.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use remora_seal::Keyring;
//! use remora_session::{SessionLayer, MemoryStore, replica::Replicas};
//!
//! let keys = Keyring::generate(); // in production: Keyring::load(path), shared by every server
//! let replicas = Arc::new(Replicas::new(&keys));
//! let layer = SessionLayer::new(MemoryStore::new()).with_replica_hooks(replicas.clone());
//! ```

mod carriage;
pub mod codec;
pub mod ledger;
mod metrics;
pub mod park;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use remora_seal::{Keyring, Purpose, Sealer};

pub use self::codec::{DEFAULT_MAX_LEN, Rejection, ReplicaCodec, SealError};
pub use self::ledger::{MemoryLedger, ReplayLedger};
use self::metrics::ReplicaMetrics;
use self::park::Park;
use crate::hooks::{ReplicaHooks, UnknownIdOutcome};
use crate::record::{Record, now_ms};
use crate::store::BoxFuture;
use crate::{SessionLayer, StoreError};

/// Request and response header carrying a replica.
pub const REPLICA_HEADER: &str = "session-replica";
/// Response header with the replica's sequence.
pub const SEQ_HEADER: &str = "session-replica-seq";
/// Request header: the client can resend with its replica (value: its seq, or 1).
pub const CAPABLE_HEADER: &str = "session-replica-capable";
/// Response header on the `409`: resend once with the replica.
pub const WANTED_HEADER: &str = "session-replica-wanted";
/// Response header telling the client to drop its replica (the session ended).
pub const DROP_HEADER: &str = "session-replica-drop";
/// Default name of the hint cookie scripts set while they hold a replica.
pub const HELD_COOKIE: &str = "remora_replica_held";

/// How a replica reached the server; the `via` label of `restored_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A `Session-Replica` request header.
    Header,
    /// Replica cookies.
    Cookie,
    /// `ext.session` in a Bayeux handshake.
    Bayeux,
    /// A parked request released by a replica that arrived elsewhere.
    Park,
}

impl Via {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Via::Header => "header",
            Via::Cookie => "cookie",
            Via::Bayeux => "bayeux",
            Via::Park => "park",
        }
    }
}

/// A replica just issued for a session, as given to [`Replicas::subscribe`]
/// listeners (e.g. the Bayeux carriage pushing it on `/service/ext/session`).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The session id the replica is bound to.
    pub session_id: String,
    /// The sealed replica (base64url). `None`: the session ended; drop it.
    pub replica: Option<Arc<str>>,
    /// The replica's sequence (0 when dropped).
    pub seq: u64,
}

type Listener = Arc<dyn Fn(&Issued) + Send + Sync>;

/// Optional cookie carriage: the replica split over numbered `HttpOnly`
/// cookies `NAME.0`, `NAME.1`, … while it fits `max_total` characters.
#[derive(Debug, Clone)]
pub struct CookieCarriage {
    /// Cookie name prefix (default `remora_replica`).
    pub name: String,
    /// Largest replica sent as cookies, in characters (default 7600: two cookies).
    pub max_total: usize,
    /// Characters of replica per cookie (default 3800, under browsers' 4096-byte cookie limit).
    pub per_cookie: usize,
    /// Add `Secure` (default true; switch off only for plain-HTTP development).
    pub secure: bool,
}

impl Default for CookieCarriage {
    fn default() -> Self {
        Self {
            name: "remora_replica".into(),
            max_total: 7600,
            per_cookie: 3800,
            secure: true,
        }
    }
}

/// Client-held replicas for a [`SessionLayer`]. See the module docs.
pub struct Replicas {
    codec: ReplicaCodec,
    restore_grace: Duration,
    held_cookie: Option<String>,
    cookie: Option<CookieCarriage>,
    ledger: Option<Arc<dyn ReplayLedger>>,
    ledger_ttl: Duration,
    park: Park,
    metrics: ReplicaMetrics,
    listeners: RwLock<Vec<Listener>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("codec", &self.codec)
            .field("restore_grace", &self.restore_grace)
            .field("cookie", &self.cookie)
            .field("strict", &self.ledger.is_some())
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Replicas sealed with `keys` (the first key seals, all open), with
    /// defaults: 96 KiB limit, 2 s restore grace, 1024 parked requests at
    /// most, header and Bayeux carriage, no cookies, no ledger.
    pub fn new(keys: &Keyring) -> Self {
        Self {
            codec: ReplicaCodec::new(Sealer::new(keys, Purpose::Replica), DEFAULT_MAX_LEN),
            restore_grace: Duration::from_secs(2),
            held_cookie: Some(HELD_COOKIE.into()),
            cookie: None,
            ledger: None,
            ledger_ttl: Duration::from_secs(24 * 3600),
            park: Park::new(1024),
            metrics: ReplicaMetrics::default(),
            listeners: RwLock::new(Vec::new()),
        }
    }

    /// Longest replica sealed or accepted, in base64url characters (default 96 KiB).
    /// A session whose replica would be longer gets none (counted, logged).
    pub fn with_max_len(mut self, chars: usize) -> Self {
        self.codec = self.codec.with_max_len(chars);
        self
    }

    /// How long a request for an unknown session waits for its replica
    /// (default 2 s; zero disables parking).
    pub fn with_restore_grace(mut self, grace: Duration) -> Self {
        self.restore_grace = grace;
        self
    }

    /// At most this many requests wait at once (default 1024); beyond, a
    /// request goes on with a fresh session at once.
    pub fn with_max_parked(mut self, n: usize) -> Self {
        self.park = Park::new(n);
        self
    }

    /// Name of the hint cookie that makes a plain request park (default
    /// `remora_replica_held`); `None`: park every request for an unknown
    /// session (costs `restore_grace` on every expired-session visit).
    pub fn with_held_cookie(mut self, name: Option<String>) -> Self {
        self.held_cookie = name;
        self
    }

    /// Also carry replicas in cookies (for clients without scripts).
    pub fn with_cookie_carriage(mut self, cookie: CookieCarriage) -> Self {
        self.cookie = Some(cookie);
        self
    }

    /// Strict replay protection: refuse any replica older than the newest
    /// one issued for its session, as recorded in `ledger` (shared by all
    /// servers, e.g. [`ledger::RedisLedger`]). `ttl`: how long an entry is
    /// kept (use the session's absolute lifetime).
    pub fn with_ledger(mut self, ledger: Arc<dyn ReplayLedger>, ttl: Duration) -> Self {
        self.ledger = Some(ledger);
        self.ledger_ttl = ttl;
        self
    }

    /// Registers the replica metrics on `registry` (prefix `remora_session`).
    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        self.metrics.register(registry);
        self
    }

    /// Calls `listener` for every replica issued (and every session ended),
    /// e.g. to push it to the session's Bayeux clients.
    pub fn subscribe(&self, listener: impl Fn(&Issued) + Send + Sync + 'static) {
        self.listeners.write().push(Arc::new(listener));
    }

    /// The codec (to seal or open outside a request, e.g. in tests).
    pub fn codec(&self) -> &ReplicaCodec {
        &self.codec
    }

    /// Sessions restored so far through `via`.
    pub fn restored_count(&self, via: Via) -> u64 {
        self.metrics.restored_count(via)
    }

    /// Replicas refused so far for `reason`.
    pub fn rejected_count(&self, reason: Rejection) -> u64 {
        self.metrics.rejected_count(reason)
    }

    /// How many requests are parked now.
    pub fn parked(&self) -> usize {
        self.park.waiting()
    }

    /// Opens `replica` for `session_id` and applies strict mode; counts a
    /// rejection. Does not touch the store.
    pub async fn open(&self, replica: &str, session_id: &str) -> Result<Record, Rejection> {
        let result = match self.codec.open(replica, session_id, now_ms()) {
            Ok(rec) => self.check_ledger(rec).await,
            Err(e) => Err(e),
        };
        if let Err(r) = &result {
            self.metrics.rejected(*r);
            tracing::info!(
                reason = r.label(),
                "replica rejected; the request goes on with a fresh session"
            );
        }
        result
    }

    /// Restores the session `session_id` into `layer`'s store from a replica
    /// that arrived outside an HTTP request's session handling (the Bayeux
    /// handshake's `ext.session`), and releases requests parked for it.
    /// Returns whether the session is now known.
    pub async fn restore(
        &self,
        layer: &SessionLayer,
        session_id: &str,
        replica: &str,
        via: Via,
    ) -> Result<bool, StoreError> {
        let Ok(rec) = self.open(replica, session_id).await else {
            return Ok(false);
        };
        match layer.restore(rec).await? {
            Some(adopted) => {
                self.metrics.restored(via);
                tracing::info!(via = via.label(), "session restored from replica");
                self.park.release(adopted);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn check_ledger(&self, rec: Record) -> Result<Record, Rejection> {
        let Some(ledger) = &self.ledger else {
            return Ok(rec);
        };
        match ledger.newest(&rec.id).await {
            Ok(Some(newest)) if rec.replica_seq < newest => Err(Rejection::Stale),
            Ok(_) => Ok(rec),
            Err(e) => {
                // Strict mode never restores what it cannot check.
                tracing::warn!(error = %e, "replay ledger unavailable; replica refused");
                Err(Rejection::Stale)
            }
        }
    }

    fn notify(&self, issued: &Issued) {
        let listeners = self.listeners.read().clone();
        for l in listeners {
            l(issued);
        }
    }

    fn wanted() -> http::Response<Body> {
        let mut r = http::Response::new(Body::from(
            "session replica wanted: resend this request with its Session-Replica header\n",
        ));
        *r.status_mut() = StatusCode::CONFLICT;
        r.headers_mut()
            .insert(WANTED_HEADER, HeaderValue::from_static("1"));
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r
    }
}

impl ReplicaHooks for Replicas {
    fn on_request(&self, headers: &HeaderMap, id: &str) {
        // A replica arriving while another request on the same session is
        // parked: release that one directly (it holds the session's load).
        if !self.park.is_waiting_for(id) {
            return;
        }
        if let Some(text) = carriage::header_replica(headers)
            && let Ok(rec) = self.codec.open(text, id, now_ms())
        {
            self.park.release(rec);
        }
    }

    fn on_unknown_id<'a>(
        &'a self,
        parts: &'a Parts,
        id: &'a str,
    ) -> BoxFuture<'a, UnknownIdOutcome> {
        Box::pin(async move {
            let headers = &parts.headers;
            if let Some(text) = carriage::header_replica(headers) {
                return match self.open(text, id).await {
                    Ok(rec) => {
                        self.metrics.restored(Via::Header);
                        self.park.release(rec.clone());
                        UnknownIdOutcome::Restore(rec)
                    }
                    Err(_) => UnknownIdOutcome::Fresh,
                };
            }
            if let Some(cookie) = &self.cookie
                && let Some(text) =
                    carriage::cookie_replica(headers, &cookie.name, self.codec.max_len())
            {
                return match self.open(&text, id).await {
                    Ok(rec) => {
                        self.metrics.restored(Via::Cookie);
                        self.park.release(rec.clone());
                        UnknownIdOutcome::Restore(rec)
                    }
                    Err(_) => UnknownIdOutcome::Fresh,
                };
            }
            if headers.contains_key(CAPABLE_HEADER) {
                self.metrics.asked.inc();
                return UnknownIdOutcome::Respond(Self::wanted());
            }
            let hinted = match &self.held_cookie {
                Some(name) => crate::config::cookie_value(headers, name).is_some(),
                None => true,
            };
            if hinted && !self.restore_grace.is_zero() {
                self.metrics.parked.inc();
                if let Some(rec) = self.park.wait(id, self.restore_grace).await {
                    self.metrics.restored(Via::Park);
                    return UnknownIdOutcome::Restore((*rec).clone());
                }
                self.metrics.park_timeouts.inc();
                tracing::info!(
                    "parked request saw no replica within the restore grace; fresh session"
                );
            }
            UnknownIdOutcome::Fresh
        })
    }

    fn on_known_id<'a>(
        &'a self,
        parts: &'a Parts,
        stored: &'a Record,
    ) -> BoxFuture<'a, Option<UnknownIdOutcome>> {
        Box::pin(async move {
            let headers = &parts.headers;
            // The client presents a replica: it replaces this copy only if newer.
            if let Some(text) = carriage::header_replica(headers) {
                if let Ok(rec) = self.codec.open(text, &stored.id, now_ms())
                    && rec.replica_seq > stored.replica_seq
                    && self.check_ledger(rec.clone()).await.is_ok()
                {
                    self.metrics.restored(Via::Header);
                    return Some(UnknownIdOutcome::Restore(rec));
                }
                return None;
            }
            // The client holds a newer replica than this copy (this server's
            // store kept an old one while the client lived elsewhere): ask.
            let held = headers
                .get(CAPABLE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if held.is_some_and(|seq| seq > stored.replica_seq) {
                self.metrics.asked.inc();
                return Some(UnknownIdOutcome::Respond(Self::wanted()));
            }
            None
        })
    }

    fn on_saved(&self, record: &Record, headers: &mut HeaderMap) {
        let text = match self.codec.seal(record) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.seal_failures.inc();
                tracing::warn!(error = %e, "no replica for this session");
                return;
            }
        };
        self.metrics.issued.inc();
        self.metrics.size.observe(text.len() as f64);
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.insert(REPLICA_HEADER, v);
            headers.insert(SEQ_HEADER, HeaderValue::from(record.replica_seq));
        }
        if let Some(cookie) = &self.cookie {
            let max_age = record.absolute_deadline.saturating_sub(now_ms()) / 1000;
            carriage::set_replica_cookies(headers, cookie, &text, max_age);
        }
        if let Some(ledger) = &self.ledger
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (ledger, id, seq, ttl) = (
                ledger.clone(),
                record.id.clone(),
                record.replica_seq,
                self.ledger_ttl,
            );
            rt.spawn(async move {
                if let Err(e) = ledger.record(&id, seq, ttl).await {
                    tracing::warn!(error = %e, "replay ledger not updated");
                }
            });
        }
        self.notify(&Issued {
            session_id: record.id.clone(),
            replica: Some(text.into()),
            seq: record.replica_seq,
        });
    }

    fn on_invalidated(&self, id: &str, headers: &mut HeaderMap) {
        self.park.forget(id);
        headers.insert(DROP_HEADER, HeaderValue::from_static("1"));
        if let Some(cookie) = &self.cookie {
            carriage::set_replica_cookies(headers, cookie, "", 0);
        }
        if let Some(name) = &self.held_cookie
            && let Ok(v) =
                HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0; SameSite=Lax"))
        {
            headers.append(http::header::SET_COOKIE, v);
        }
        if let Some(ledger) = &self.ledger
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (ledger, id, ttl) = (ledger.clone(), id.to_owned(), self.ledger_ttl);
            rt.spawn(async move {
                if let Err(e) = ledger.record(&id, ledger::TOMBSTONE, ttl).await {
                    tracing::warn!(error = %e, "replay ledger tombstone not written");
                }
            });
        }
        self.notify(&Issued {
            session_id: id.to_owned(),
            replica: None,
            seq: 0,
        });
    }
}
