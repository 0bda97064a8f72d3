//! The [`Session`] handle a handler uses, and the per-session object that
//! concurrent requests in one process share.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{Config, OnStoreFailure, ms};
use crate::error::{SessionError, StoreError};
use crate::hooks::{ReplicaHooks, UnknownIdOutcome};
use crate::metrics::{Metrics, OpLabel};
use crate::record::{Attribute, Change, Record, now_ms};
use crate::store::Store;

/// The attribute key under which the CSRF token is kept.
pub const CSRF_KEY: &str = "remora.csrf";

/// State shared by every request through one [`SessionLayer`](crate::SessionLayer).
pub(crate) struct Ctx {
    pub store: Arc<dyn Store>,
    pub cfg: Config,
    pub metrics: Metrics,
    pub hooks: Option<Arc<dyn ReplicaHooks>>,
    /// In-flight session objects by the ID their requests presented.
    pub registry: Mutex<HashMap<String, Arc<Shared>>>,
    /// Sessions restored outside a request (e.g. from a Bayeux handshake):
    /// the next request that loads one sees `was_restored()`. Bounded.
    pub restored_ids: Mutex<HashMap<String, u64>>,
}

/// Most ids remembered in [`Ctx::restored_ids`].
const MAX_RESTORED_IDS: usize = 10_000;

impl Ctx {
    /// Remembers that `id` was restored outside a request.
    pub fn note_restored(&self, id: &str) {
        let mut ids = self.restored_ids.lock();
        if ids.len() >= MAX_RESTORED_IDS {
            let cutoff = now_ms().saturating_sub(60_000);
            ids.retain(|_, at| *at > cutoff);
            if ids.len() >= MAX_RESTORED_IDS {
                ids.clear();
            }
        }
        ids.insert(id.to_owned(), now_ms());
    }
}

impl Ctx {
    /// Runs a store call with the timeout and metrics.
    pub async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = match tokio::time::timeout(self.cfg.store_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout {
                op,
                millis: ms(self.cfg.store_timeout),
            }),
        };
        self.metrics
            .store_latency
            .get_or_create(&OpLabel { op })
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics
                .store_errors
                .get_or_create(&OpLabel { op })
                .inc();
            tracing::warn!(op, error = %e, "session store operation failed");
        }
        r
    }

    /// Saves a record rebuilt from a replica (if the store holds no live
    /// session under its ID) and returns what the store now holds. Counted
    /// as `restored` when it was written.
    pub async fn restore_record(&self, rec: Record) -> Result<Record, StoreError> {
        self.restore_over(rec, 0).await
    }

    /// [`Ctx::restore_record`] over a stored copy of version `stored`
    /// (0: none), which a newer replica replaces (compare-and-set).
    pub async fn restore_over(&self, mut rec: Record, stored: u64) -> Result<Record, StoreError> {
        let now = now_ms();
        rec.purge_expired_attributes(now);
        rec.slide(now, ms(self.cfg.idle_timeout));
        rec.version = if stored == 0 {
            rec.version.max(1)
        } else {
            rec.version.max(stored) + 1
        };
        match self.call("save", self.store.save(&rec, stored)).await? {
            crate::store::SaveOutcome::Saved { .. } => {
                self.metrics.restored.inc();
                Ok(rec)
            }
            // Restored (or still live) elsewhere: the store's copy wins.
            crate::store::SaveOutcome::Conflict { current: Some(c) } => Ok(c),
            crate::store::SaveOutcome::Conflict { current: None } => Ok(rec),
        }
    }

    /// An empty record without an ID yet (see [`State::ensure_id`]).
    fn placeholder_record(&self) -> Record {
        Record::new(
            String::new(),
            now_ms(),
            ms(self.cfg.idle_timeout),
            ms(self.cfg.absolute_lifetime),
        )
    }

    pub fn fresh_record(&self) -> Record {
        Record::new(
            crate::id::new_id(),
            now_ms(),
            ms(self.cfg.idle_timeout),
            ms(self.cfg.absolute_lifetime),
        )
    }

    /// Finds or creates the shared object for a request presenting `id`.
    pub fn attach(self: &Arc<Self>, id: Option<String>) -> Arc<Shared> {
        let mut reg = self.registry.lock();
        if let Some(id) = &id
            && let Some(s) = reg.get(id)
        {
            s.inflight.fetch_add(1, Ordering::SeqCst);
            return s.clone();
        }
        let s = Arc::new(Shared {
            ctx: self.clone(),
            incoming_id: id.clone(),
            // A presented ID is usually loaded: the random ID a fresh
            // session needs is only drawn if it is not (`State::ensure_id`).
            state: Mutex::new(State::new(match id {
                Some(_) => self.placeholder_record(),
                None => self.fresh_record(),
            })),
            load_lock: tokio::sync::Mutex::new(()),
            load_failures: AtomicUsize::new(0),
            save_lock: tokio::sync::Mutex::new(()),
            inflight: AtomicUsize::new(1),
        });
        if let Some(id) = id {
            reg.insert(id, s.clone());
        }
        s
    }

    /// A request on `s` finished: returns whether it was the last one.
    pub fn detach(&self, s: &Arc<Shared>) -> bool {
        let _reg = self.registry.lock();
        s.inflight.fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// Forgets `s` if no request uses it any more.
    pub fn forget_if_idle(&self, s: &Arc<Shared>) {
        let mut reg = self.registry.lock();
        if s.inflight.load(Ordering::SeqCst) == 0
            && let Some(id) = &s.incoming_id
            && reg.get(id).is_some_and(|x| Arc::ptr_eq(x, s))
        {
            reg.remove(id);
        }
    }
}

/// Mutable state of a shared session object.
pub(crate) struct State {
    /// Whether the store was consulted (or there was nothing to load).
    pub loaded: bool,
    /// The in-memory record; `record.id` is the current ID.
    pub record: Record,
    /// The version the store holds for `record.id` as far as we know (0:
    /// not stored).
    pub stored_version: u64,
    /// Changes not yet saved, with a sequence number.
    pub changes: BTreeMap<String, (u64, Change)>,
    pub seq: u64,
    /// The ID changed (cycle) or a restored record must be written.
    pub force_save: bool,
    /// Stored IDs to delete at the next flush (cycled or invalidated).
    pub delete_ids: Vec<String>,
    pub invalidated: bool,
    pub was_expired: bool,
    pub restored: bool,
    /// A request that changed data finished without a 5xx.
    pub ok_changes: bool,
}

impl State {
    /// Gives a record that has no ID yet (a presented ID not loaded, or
    /// not found) a fresh random one.
    pub(crate) fn ensure_id(&mut self) {
        if self.record.id.is_empty() {
            self.record.id = crate::id::new_id();
        }
    }

    fn new(record: Record) -> Self {
        State {
            loaded: false,
            record,
            stored_version: 0,
            changes: BTreeMap::new(),
            seq: 0,
            force_save: false,
            delete_ids: Vec::new(),
            invalidated: false,
            was_expired: false,
            restored: false,
            ok_changes: false,
        }
    }

    fn change(&mut self, key: &str, c: Change) {
        self.seq += 1;
        self.changes.insert(key.to_owned(), (self.seq, c));
    }

    pub fn dirty(&self) -> bool {
        !self.changes.is_empty() || self.force_save
    }

    /// Whether the flush has something to write or delete.
    pub fn must_flush(&self) -> bool {
        self.force_save || !self.delete_ids.is_empty()
    }
}

/// The object shared by all concurrent requests on one session in one
/// process.
pub(crate) struct Shared {
    pub ctx: Arc<Ctx>,
    /// The well-formed ID the requests presented (registry key).
    pub incoming_id: Option<String>,
    pub state: Mutex<State>,
    load_lock: tokio::sync::Mutex<()>,
    load_failures: AtomicUsize,
    pub save_lock: tokio::sync::Mutex<()>,
    inflight: AtomicUsize,
}

/// Per-request facts.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub store_error: bool,
    pub modified: bool,
}

/// A handle on the request's session. Cheap to clone; every clone in one
/// request — and every request on the same session in this process at the
/// same time — sees the same data.
///
/// Data methods are `async` because the session is loaded lazily, on first
/// use: a request that never touches it never reads the store.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) local: Arc<Mutex<Local>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Shared {
    /// Loads the session once; with `hook`, an unknown ID is offered to it.
    pub(crate) async fn load(
        &self,
        local: &Mutex<Local>,
        hook: Option<(&dyn ReplicaHooks, &http::request::Parts)>,
    ) -> Result<Option<http::Response<axum::body::Body>>, SessionError> {
        if self.state.lock().loaded {
            return Ok(None);
        }
        let failures_before = self.load_failures.load(Ordering::SeqCst);
        let _g = self.load_lock.lock().await;
        if self.state.lock().loaded {
            return Ok(None);
        }
        let ctx = &self.ctx;
        if self.load_failures.load(Ordering::SeqCst) != failures_before {
            // The load we waited for failed: fail fast instead of queueing
            // another full store timeout behind it.
            local.lock().store_error = true;
            return Err(SessionError::Store(StoreError::Unavailable));
        }
        let Some(id) = self.incoming_id.as_deref() else {
            self.state.lock().loaded = true;
            return Ok(None);
        };
        match ctx.call("load", ctx.store.load(id)).await {
            Ok(Some(mut rec)) => {
                rec.purge_expired_attributes(now_ms());
                ctx.metrics.loaded.inc();
                if ctx.restored_ids.lock().remove(id).is_some() {
                    self.state.lock().restored = true;
                }
                if let Some((h, parts)) = hook {
                    match h.on_known_id(parts, &rec).await {
                        Some(UnknownIdOutcome::Respond(r)) => return Ok(Some(r)),
                        Some(UnknownIdOutcome::Restore(newer))
                            if newer.id == id
                                && newer.replica_seq > rec.replica_seq
                                && !newer.is_expired(now_ms()) =>
                        {
                            tracing::info!(
                                "a newer replica replaces this server's older copy of the session"
                            );
                            self.restore_as(local, newer, rec.version).await?;
                            return Ok(None);
                        }
                        _ => {}
                    }
                }
                let mut st = self.state.lock();
                st.stored_version = rec.version;
                st.record = rec;
                st.loaded = true;
                Ok(None)
            }
            Ok(None) => {
                if let Some((h, parts)) = hook {
                    match h.on_unknown_id(parts, id).await {
                        UnknownIdOutcome::Respond(r) => return Ok(Some(r)),
                        UnknownIdOutcome::Restore(rec) => {
                            if rec.id == id && !rec.is_expired(now_ms()) {
                                self.restore(local, rec).await?;
                                return Ok(None);
                            }
                            tracing::debug!(
                                "replica hook returned a record for another or expired session; ignored"
                            );
                        }
                        UnknownIdOutcome::Fresh => {}
                    }
                }
                tracing::debug!("unknown or expired session id; starting a fresh session");
                ctx.metrics.expired.inc();
                let mut st = self.state.lock();
                st.ensure_id();
                st.was_expired = true;
                st.loaded = true;
                Ok(None)
            }
            Err(e) => {
                self.load_failures.fetch_add(1, Ordering::SeqCst);
                local.lock().store_error = true;
                match ctx.cfg.on_store_failure {
                    OnStoreFailure::FreshSession => {
                        let mut st = self.state.lock();
                        st.ensure_id();
                        st.loaded = true;
                        Ok(None)
                    }
                    OnStoreFailure::Unavailable { .. } => Err(SessionError::Store(e)),
                }
            }
        }
    }

    /// Writes a restored record to the store and adopts it.
    async fn restore(&self, local: &Mutex<Local>, rec: Record) -> Result<(), SessionError> {
        self.restore_as(local, rec, 0).await
    }

    /// Writes a restored record over stored version `stored` (0: none) and adopts it.
    async fn restore_as(
        &self,
        local: &Mutex<Local>,
        rec: Record,
        stored: u64,
    ) -> Result<(), SessionError> {
        let adopted = match self.ctx.restore_over(rec, stored).await {
            Ok(r) => r,
            Err(e) => {
                local.lock().store_error = true;
                return Err(SessionError::Store(e));
            }
        };
        let mut st = self.state.lock();
        st.stored_version = adopted.version;
        st.record = adopted;
        st.restored = true;
        st.loaded = true;
        Ok(())
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Session {
            shared,
            local: Arc::new(Mutex::new(Local::default())),
        }
    }

    async fn loaded(&self) -> Result<(), SessionError> {
        self.shared.load(&self.local, None).await.map(|_| ())
    }

    /// The session ID. For a session that does not exist yet this is the ID
    /// it will get if data is inserted during this request.
    pub fn id(&self) -> String {
        let mut st = self.shared.state.lock();
        st.ensure_id();
        st.record.id.clone()
    }

    /// Whether this session object has unsaved changes.
    pub fn is_modified(&self) -> bool {
        self.shared.state.lock().dirty()
    }

    /// The value of `key`, if present, not expired, and of type `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.loaded().await?;
        let st = self.shared.state.lock();
        match st.record.attributes.get(key) {
            Some(a) if !a.is_expired(now_ms()) => a.decode().map(Some).map_err(SessionError::Value),
            _ => Ok(None),
        }
    }

    /// Every live attribute key.
    pub async fn keys(&self) -> Result<Vec<String>, SessionError> {
        self.loaded().await?;
        let now = now_ms();
        let st = self.shared.state.lock();
        Ok(st
            .record
            .attributes
            .iter()
            .filter(|(_, a)| !a.is_expired(now))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: impl Serialize,
        ttl: Option<Duration>,
        once: bool,
        server_only: bool,
    ) -> Result<(), SessionError> {
        self.loaded().await?;
        let value = serde_json::value::to_raw_value(&value).map_err(SessionError::Value)?;
        let attr = Attribute {
            value,
            expires_at: ttl.map(|t| now_ms().saturating_add(ms(t))),
            once,
            server_only,
        };
        let limit = self.shared.ctx.cfg.size_limit;
        let mut st = self.shared.state.lock();
        // Try it in place; put the old value back if it does not fit.
        let old = st.record.attributes.insert(key.to_owned(), attr.clone());
        let size = st.record.encoded_len();
        if size > limit {
            match old {
                Some(a) => st.record.attributes.insert(key.to_owned(), a),
                None => st.record.attributes.remove(key),
            };
            return Err(SessionError::TooLarge { size, limit });
        }
        st.change(key, Change::Set(attr));
        drop(st);
        self.local.lock().modified = true;
        Ok(())
    }

    /// Sets `key` to `value`. Fails with [`SessionError::TooLarge`] if the
    /// session would exceed the size limit.
    pub async fn insert(&self, key: &str, value: impl Serialize) -> Result<(), SessionError> {
        self.put(key, value, None, false, false).await
    }

    /// Sets `key` to `value` for at most `ttl` (per-attribute expiry; the
    /// session itself lives on).
    pub async fn insert_with_ttl(
        &self,
        key: &str,
        value: impl Serialize,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        self.put(key, value, Some(ttl), false, false).await
    }

    /// Sets a server-only attribute: stored, never put in a replica.
    pub async fn insert_server_only(
        &self,
        key: &str,
        value: impl Serialize,
    ) -> Result<(), SessionError> {
        self.put(key, value, None, false, true).await
    }

    /// Sets a once-only value: [`take_once`](Session::take_once) returns it
    /// exactly once, across concurrent requests and processes. Never put in
    /// a replica.
    pub async fn insert_once(&self, key: &str, value: impl Serialize) -> Result<(), SessionError> {
        self.put(key, value, None, true, false).await
    }

    /// Removes `key`; returns whether it was present.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        self.loaded().await?;
        let mut st = self.shared.state.lock();
        let was = st.record.attributes.remove(key).is_some();
        if was {
            st.change(key, Change::Removed);
            drop(st);
            self.local.lock().modified = true;
        }
        Ok(was)
    }

    /// Takes the once-only value `key`: of all concurrent callers, in this
    /// process or any other sharing the store, exactly one gets `Some`.
    pub async fn take_once<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        self.loaded().await?;
        let (id, via_store) = {
            let mut st = self.shared.state.lock();
            let is_once = st.record.attributes.get(key).is_some_and(|a| a.once);
            if !is_once {
                return Ok(None);
            }
            let pending = matches!(st.changes.get(key), Some((_, Change::Set(_))));
            if pending || st.stored_version == 0 {
                // Not in the store yet: this object is the only holder.
                let a = st.record.attributes.remove(key);
                st.change(key, Change::Removed);
                drop(st);
                self.local.lock().modified = true;
                let now = now_ms();
                return match a.filter(|a| !a.is_expired(now)) {
                    Some(a) => a.decode().map(Some).map_err(SessionError::Value),
                    None => Ok(None),
                };
            }
            (st.record.id.clone(), true)
        };
        debug_assert!(via_store);
        let ctx = &self.shared.ctx;
        let taken = match ctx.call("take_once", ctx.store.take_once(&id, key)).await {
            Ok(t) => t,
            Err(e) => {
                self.local.lock().store_error = true;
                return Err(SessionError::Store(e));
            }
        };
        {
            let mut st = self.shared.state.lock();
            if !matches!(st.changes.get(key), Some((_, Change::Set(_)))) {
                st.record.attributes.remove(key);
            }
        }
        match taken {
            Some(a) => a.decode().map(Some).map_err(SessionError::Value),
            None => Ok(None),
        }
    }

    /// Gives the session a new ID, keeping its data (call it on login,
    /// against session fixation). The old ID is deleted from the store.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.loaded().await?;
        let mut st = self.shared.state.lock();
        if st.stored_version > 0 {
            let old = st.record.id.clone();
            st.delete_ids.push(old);
        }
        st.record.id = crate::id::new_id();
        st.stored_version = 0;
        st.force_save = true;
        drop(st);
        self.local.lock().modified = true;
        Ok(())
    }

    /// Slides the idle deadline now, whatever the save period (which
    /// otherwise throttles idle refreshes): for a "stay signed in" button.
    /// Saves the session at the end of the request; does nothing for a
    /// session that is not stored.
    pub async fn keep_alive(&self) -> Result<(), SessionError> {
        self.loaded().await?;
        let mut st = self.shared.state.lock();
        if st.stored_version == 0 {
            return Ok(());
        }
        st.force_save = true;
        drop(st);
        self.local.lock().modified = true;
        Ok(())
    }

    /// Ends the session: deletes it from the store and expires the cookie.
    /// Data inserted afterwards in the same request goes into a new session
    /// with a new ID.
    pub async fn invalidate(&self) -> Result<(), SessionError> {
        self.loaded().await?;
        let fresh = self.shared.ctx.fresh_record();
        let mut st = self.shared.state.lock();
        if st.stored_version > 0 {
            let old = st.record.id.clone();
            st.delete_ids.push(old);
        }
        st.record = fresh;
        st.stored_version = 0;
        st.changes.clear();
        st.force_save = false;
        st.invalidated = true;
        drop(st);
        self.local.lock().modified = true;
        Ok(())
    }

    /// Time left before the session ends if unused (the earlier of idle and
    /// absolute deadline); `None` if the session does not exist in the store.
    pub async fn expires_in(&self) -> Result<Option<Duration>, SessionError> {
        self.loaded().await?;
        let st = self.shared.state.lock();
        if st.stored_version == 0 {
            return Ok(None);
        }
        Ok(Some(Duration::from_millis(
            st.record.expires_at().saturating_sub(now_ms()),
        )))
    }

    /// Whether this request presented a session ID that had expired (or was
    /// unknown): lets the app say "your session timed out".
    pub async fn was_expired(&self) -> Result<bool, SessionError> {
        self.loaded().await?;
        Ok(self.shared.state.lock().was_expired)
    }

    /// Whether this session was restored from a replica in this process:
    /// by this request (or a concurrent one on the same session), or
    /// outside any request (a Bayeux handshake's `ext.session`) just before
    /// this request was the first to load it.
    pub async fn was_restored(&self) -> Result<bool, SessionError> {
        self.loaded().await?;
        Ok(self.shared.state.lock().restored)
    }

    /// The session's CSRF synchronizer token, created on first use (which
    /// modifies the session). Kept under the key [`CSRF_KEY`].
    pub async fn csrf_token(&self) -> Result<String, SessionError> {
        if let Some(t) = self.get::<String>(CSRF_KEY).await? {
            return Ok(t);
        }
        let t = crate::id::new_token();
        self.insert(CSRF_KEY, &t).await?;
        Ok(t)
    }

    /// A copy of the in-memory record (after loading), e.g. for diagnostics
    /// or to build a replica outside a save.
    pub async fn record(&self) -> Result<Record, SessionError> {
        self.loaded().await?;
        Ok(self.shared.state.lock().record.clone())
    }
}
