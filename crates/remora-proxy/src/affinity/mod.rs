//! Affinity: keeping a client on one server while that server lives, and
//! moving it deterministically (repin) when it does not.
//!
//! One [`Affinity`] per pool. Per request the proxy calls
//! [`Affinity::resolve_with`] (which server, and the outcome to log and
//! count; the client connection's [`OpenedCookie`] spares decrypting the
//! same cookie again; [`Affinity::resolve`] is the same without it),
//! forwards to the first of [`Decision::candidates`] (the rest are
//! retries), calls [`Affinity::repin_after_failure`] if the pinned server
//! refused the connection, and finally [`Affinity::on_response`] with the
//! server that answered to learn pins and get the `Set-Cookie` to add.
//!
//! Modes ([`AffinityMode`]):
//! - `cookie`: Remora's own cookie, a sealed [`cookie::CookieRecord`]
//!   (server name, issue and last-seen times, random client id); stateless
//!   on the proxy side, so every instance sharing the keyring honours it.
//! - `app-cookie`: the application's session cookie, learned from the
//!   server's `Set-Cookie` into a [`table::StickTable`]; the Jetty/Tomcat
//!   route suffix `value.NODE` is honoured when NODE is a server name.
//! - `source-ip`, `header`: a stick table keyed by client IP or by a header
//!   value, or (with `stateless`) the consistent hash of that key alone.
//!
//! Repin target: rendezvous hash ([`crate::select::rendezvous`]) of the
//! stale affinity value (cookie: the client id; tables: the key) over the
//! usable servers, with bounded loads: concurrent requests carrying the same
//! stale value land on the same new server, on every instance.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use remora_seal::Sealer;

use crate::select::hash::{Excluding, ip_key, rendezvous_home, request_cookies};
use crate::select::{
    Availability, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, is_token_byte,
    rendezvous,
};

pub mod app_cookie;
pub mod cookie;
pub mod table;

use cookie::CookieRecord;
use table::{Lookup, StickTable};

/// At most this many application cookies of the configured name are looked
/// at per request.
pub const MAX_APP_COOKIES: usize = 4;

/// Default affinity cookie name.
pub const DEFAULT_COOKIE: &str = "REMORA_AFFINITY";

/// How clients are pinned (config `[pool.affinity] mode`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AffinityMode {
    /// No affinity: every request goes through the selector.
    #[default]
    None,
    /// Remora's sealed cookie (name in [`AffinityConfig::cookie`]).
    Cookie,
    /// The application's cookie `name`, learned from `Set-Cookie`.
    AppCookie {
        /// Cookie name, e.g. `JSESSIONID`.
        name: String,
    },
    /// The client IP.
    SourceIp,
    /// The value of request header `name`.
    Header {
        /// Header name, e.g. `X-User`.
        name: HeaderName,
    },
}

impl AffinityMode {
    /// Builds the mode from config values: `mode` is `none`, `cookie`,
    /// `app-cookie` (needs `app_cookie`), `source-ip` or `header` (needs
    /// `header`).
    pub fn from_config(
        mode: &str,
        app_cookie: Option<&str>,
        header: Option<&str>,
    ) -> Result<Self, AffinityConfigError> {
        Ok(match mode {
            "none" => AffinityMode::None,
            "cookie" => AffinityMode::Cookie,
            "source-ip" => AffinityMode::SourceIp,
            "app-cookie" => {
                let name = app_cookie.ok_or(AffinityConfigError::Missing("app_cookie"))?;
                check_cookie_name(name)?;
                AffinityMode::AppCookie {
                    name: name.to_owned(),
                }
            }
            "header" => {
                let name = header.ok_or(AffinityConfigError::Missing("header"))?;
                AffinityMode::Header {
                    name: HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| AffinityConfigError::BadHeaderName(name.to_owned()))?,
                }
            }
            other => return Err(AffinityConfigError::UnknownMode(other.to_owned())),
        })
    }

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            AffinityMode::None => "none",
            AffinityMode::Cookie => "cookie",
            AffinityMode::AppCookie { .. } => "app-cookie",
            AffinityMode::SourceIp => "source-ip",
            AffinityMode::Header { .. } => "header",
        }
    }
}

/// An affinity setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AffinityConfigError {
    /// Unknown `mode`.
    #[error("unknown affinity mode {0:?} (expected none, cookie, app-cookie, source-ip or header)")]
    UnknownMode(String),
    /// A mode needs an option that is missing.
    #[error("affinity mode needs option `{0}`")]
    Missing(&'static str),
    /// A cookie name that is empty or not an RFC 6265 token.
    #[error("invalid cookie name {0:?}")]
    BadCookieName(String),
    /// An invalid header name.
    #[error("invalid header name {0:?}")]
    BadHeaderName(String),
    /// `table_size` is 0 for a mode that needs a table.
    #[error("affinity table_size must be at least 1")]
    ZeroTableSize,
}

fn check_cookie_name(name: &str) -> Result<(), AffinityConfigError> {
    if name.is_empty() || name.len() > 128 || !name.bytes().all(is_token_byte) {
        return Err(AffinityConfigError::BadCookieName(name.to_owned()));
    }
    Ok(())
}

/// Affinity settings of one pool (built by the proxy from `[pool.affinity]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityConfig {
    /// Pool name: bound into the cookie seal, so pools do not share pins.
    pub pool: String,
    /// The mode.
    pub mode: AffinityMode,
    /// Cookie name for mode `cookie` (default [`DEFAULT_COOKIE`]).
    pub cookie: String,
    /// Cookie: longest time since the last refresh (default none).
    pub max_idle: Option<Duration>,
    /// Cookie: longest time since the pin was issued (default none).
    pub max_life: Option<Duration>,
    /// 503 instead of repin when the pinned server is gone (default false).
    pub strict: bool,
    /// Stick-table entries expire after this idle time (default 30 min).
    pub ttl: Duration,
    /// Stick-table capacity in entries, LRU beyond (default 100 000).
    pub table_size: usize,
    /// `source-ip`/`header`: no table, consistent hash of the key only.
    pub stateless: bool,
    /// Always mark the cookie `Secure` (it is also marked on TLS requests).
    pub secure_cookie: bool,
    /// A cookie is re-issued with a new last-seen time at most this often
    /// (default 60 s).
    pub refresh_interval: Duration,
    /// Bounded loads for the repin target, percent (default 150, 0 = off).
    pub repin_balance_factor: u32,
    /// Cookie: the affinity cookie also goes to the servers (default
    /// false: [`Affinity::hidden_cookie`] keeps it from them).
    pub forward_cookie: bool,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            pool: String::new(),
            mode: AffinityMode::None,
            cookie: DEFAULT_COOKIE.to_owned(),
            max_idle: None,
            max_life: None,
            strict: false,
            ttl: Duration::from_secs(30 * 60),
            table_size: 100_000,
            stateless: false,
            secure_cookie: false,
            refresh_interval: Duration::from_secs(60),
            repin_balance_factor: 150,
            forward_cookie: false,
        }
    }
}

impl AffinityConfig {
    /// A default config for `pool` in `mode`.
    pub fn new(pool: impl Into<String>, mode: AffinityMode) -> Self {
        Self {
            pool: pool.into(),
            mode,
            ..Self::default()
        }
    }

    /// Checks names and sizes.
    pub fn validate(&self) -> Result<(), AffinityConfigError> {
        check_cookie_name(&self.cookie)?;
        if let AffinityMode::AppCookie { name } = &self.mode {
            check_cookie_name(name)?;
        }
        if self.table_size == 0 && self.uses_table() {
            return Err(AffinityConfigError::ZeroTableSize);
        }
        Ok(())
    }

    fn uses_table(&self) -> bool {
        match self.mode {
            AffinityMode::None => false,
            AffinityMode::Cookie | AffinityMode::AppCookie { .. } => true,
            AffinityMode::SourceIp | AffinityMode::Header { .. } => !self.stateless,
        }
    }
}

/// Why a client was moved off its pinned server (metric label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepinReason {
    /// The server failed health checks or was ejected.
    Down,
    /// The server is in maintenance.
    Maintenance,
    /// The server is no longer in the pool (reload).
    Removed,
    /// The server refused the connection before health checks noticed.
    ConnectFailed,
}

impl RepinReason {
    /// The label: `down`, `maintenance`, `removed`, `connect_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RepinReason::Down => "down",
            RepinReason::Maintenance => "maintenance",
            RepinReason::Removed => "removed",
            RepinReason::ConnectFailed => "connect_failed",
        }
    }
}

impl fmt::Display for RepinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The affinity outcome of a request, for logs and
/// `remora_affinity_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The client was not pinned (no cookie, unknown key): new pin.
    New,
    /// The client went to its pinned server (also when it drains).
    Hit,
    /// The pinned server is gone: moved (or refused with `strict`).
    Repin(RepinReason),
    /// The pin was too old (`max_idle`, `max_life`, table TTL): new pin.
    Expired,
    /// The cookie did not open (tampered, wrong key, garbage): new pin.
    Invalid,
}

impl Outcome {
    /// `new`, `hit`, `repin`, `expired` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Hit => "hit",
            Outcome::Repin(_) => "repin",
            Outcome::Expired => "expired",
            Outcome::Invalid => "invalid",
        }
    }

    /// The repin reason, for `Repin`.
    pub fn reason(self) -> Option<RepinReason> {
        match self {
            Outcome::Repin(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the request carried, kept for the response.
#[derive(Clone, Debug, Default)]
enum Pin {
    /// Nothing to remember.
    #[default]
    None,
    /// Cookie mode; the record that opened (if any, and not expired).
    Cookie(Option<CookieRecord>),
    /// Table and stateless modes: the key.
    Key(Vec<u8>),
}

/// The affinity decision for one request.
#[derive(Clone, Debug)]
pub struct Decision {
    candidates: Fallbacks,
    outcome: Option<Outcome>,
    refused: bool,
    pinned: Option<usize>,
    secure: bool,
    pin: Pin,
}

impl Decision {
    fn new(candidates: Fallbacks, outcome: Option<Outcome>, pin: Pin, secure: bool) -> Self {
        Self {
            candidates,
            outcome,
            refused: false,
            pinned: None,
            secure,
            pin,
        }
    }

    /// Servers to try, in order (first is the choice). Empty: answer 503.
    pub fn candidates(&self) -> &Fallbacks {
        &self.candidates
    }

    /// The chosen server.
    pub fn server(&self) -> Option<usize> {
        self.candidates.first()
    }

    /// The outcome to log and count; `None` when the pool has no affinity
    /// or the request carries no key for it (header mode without header).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// `strict` affinity and the pinned server is gone: answer 503.
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// The server the request was pinned to (in the current snapshot),
    /// whether or not it can take it.
    pub fn pinned_server(&self) -> Option<usize> {
        self.pinned
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The affinity cookie value a client connection sent last, and what it
/// opened to. A connection's requests almost always carry the same value,
/// which then costs a comparison instead of a decryption. Valid for the one
/// [`Affinity`] it was filled by (its key and pool): the caller keeps it
/// with that `Affinity`.
#[derive(Debug, Default)]
pub struct OpenedCookie(Option<(Box<str>, CookieRecord)>);

impl OpenedCookie {
    /// The record `value` opened to, if it is the remembered value.
    fn get(&self, value: &str) -> Option<&CookieRecord> {
        match &self.0 {
            Some((v, r)) if **v == *value => Some(r),
            _ => None,
        }
    }

    /// Notes that the remembered record was refreshed to `refreshed` (same
    /// client id and server, a later last-seen time): the same value again
    /// on this connection counts as seen then. A client that ignores the
    /// refreshed `Set-Cookie` (an API client or a load tool with a fixed
    /// `Cookie`) is then refreshed once per `refresh_interval`, not on
    /// every request, and is not expired by `max_idle` while it keeps
    /// using the connection.
    fn note_refresh(&mut self, refreshed: &CookieRecord) {
        if let Some((_, r)) = &mut self.0
            && r.id == refreshed.id
            && r.server == refreshed.server
        {
            r.last_seen = r.last_seen.max(refreshed.last_seen);
        }
    }
}

/// Affinity of one pool: config, sealer (`Purpose::Affinity`) and stick
/// table. Shared by all requests (`Arc`); rebuilt on reload, then
/// [`Affinity::carry_over`] keeps the pins.
pub struct Affinity {
    cfg: AffinityConfig,
    sealer: Arc<Sealer>,
    aad: Vec<u8>,
    /// Stick table (app-cookie, source-ip, header) or, in cookie mode, the
    /// recently seen clients (cookie id -> server) for `pinned_counts`.
    table: StickTable,
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("cfg", &self.cfg)
            .field("table", &self.table)
            .finish()
    }
}

impl Affinity {
    /// Affinity for one pool. `sealer` must be for `Purpose::Affinity` and
    /// shared by every instance that should honour the same cookies.
    pub fn new(cfg: AffinityConfig, sealer: Arc<Sealer>) -> Result<Self, AffinityConfigError> {
        cfg.validate()?;
        let ttl = match cfg.mode {
            // Cookie ids are touched once per refresh interval.
            AffinityMode::Cookie => cfg
                .max_idle
                .unwrap_or(cfg.ttl)
                .max(cfg.refresh_interval * 2),
            _ => cfg.ttl,
        };
        let size = if cfg.uses_table() { cfg.table_size } else { 0 };
        let aad = cookie::aad(&cfg.cookie, &cfg.pool);
        Ok(Self {
            table: StickTable::new(size, ttl.as_secs().max(1)),
            cfg,
            sealer,
            aad,
        })
    }

    /// The config.
    pub fn config(&self) -> &AffinityConfig {
        &self.cfg
    }

    /// The cookie Remora takes out of requests on their way to a server:
    /// its own affinity cookie (mode `cookie`), unless `forward_cookie`.
    pub fn hidden_cookie(&self) -> Option<&str> {
        (self.cfg.mode == AffinityMode::Cookie && !self.cfg.forward_cookie)
            .then_some(self.cfg.cookie.as_str())
    }

    /// Decides the servers for a request. With no affinity (or no key in
    /// the request), the selector decides. A client pinned to a server that
    /// takes pinned traffic (ready, drain, full) is a `hit` with that server
    /// alone (should it refuse the connection, [`Affinity::repin_after_failure`]
    /// gives the deterministic repin target); a pinned server that
    /// is down, in maintenance or removed gives `repin` (or, with `strict`,
    /// a refused decision).
    pub fn resolve(
        &self,
        req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
        selector: &dyn Selector,
        now: SystemTime,
    ) -> Decision {
        self.resolve_with(
            req,
            servers,
            elig,
            selector,
            now,
            &mut OpenedCookie::default(),
        )
    }

    /// [`Affinity::resolve`] for a request of a client connection whose
    /// earlier requests' cookie `opened` remembers (for this `Affinity`
    /// only): the same cookie value again is not decrypted again. Expiry is
    /// still checked on every request.
    pub fn resolve_with(
        &self,
        req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
        selector: &dyn Selector,
        now: SystemTime,
        opened: &mut OpenedCookie,
    ) -> Decision {
        let now = unix_secs(now);
        let secure = req.tls;
        let select = |outcome: Option<Outcome>, pin: Pin| {
            Decision::new(selector.select(req, servers, elig), outcome, pin, secure)
        };
        match &self.cfg.mode {
            AffinityMode::None => select(None, Pin::None),
            AffinityMode::Cookie => {
                let mut seen = false;
                let mut record = None;
                for value in request_cookies(req.fields, &self.cfg.cookie) {
                    seen = true;
                    if let Some(r) = opened.get(value) {
                        record = Some(r.clone());
                        break;
                    }
                    if let Ok(r) = CookieRecord::open(&self.sealer, value, &self.aad) {
                        opened.0 = Some((value.into(), r.clone()));
                        record = Some(r);
                        break;
                    }
                }
                match record {
                    None if seen => select(Some(Outcome::Invalid), Pin::Cookie(None)),
                    None => select(Some(Outcome::New), Pin::Cookie(None)),
                    Some(r) if self.cookie_expired(&r, now) => {
                        select(Some(Outcome::Expired), Pin::Cookie(None))
                    }
                    Some(r) => {
                        let key = r.id.to_be_bytes();
                        let target = servers.iter().position(|s| *s.name == *r.server);
                        self.pinned(target, &key, servers, elig, Pin::Cookie(Some(r)), secure)
                    }
                }
            }
            AffinityMode::SourceIp => {
                self.keyed(ip_key(req.client_ip), req, servers, elig, selector, now)
            }
            AffinityMode::Header { name } => match req.fields.get(name.as_str()) {
                Some(v) => self.keyed(v.to_vec(), req, servers, elig, selector, now),
                None => select(None, Pin::None),
            },
            AffinityMode::AppCookie { name } => {
                // Several cookies of that name (other paths) may be sent:
                // the first one the table knows wins, then a route suffix.
                let values: Vec<&str> = request_cookies(req.fields, name)
                    .filter(|v| !v.is_empty() && v.len() <= app_cookie::MAX_APP_COOKIE_VALUE)
                    .take(MAX_APP_COOKIES)
                    .collect();
                let Some(first) = values.first() else {
                    return select(Some(Outcome::New), Pin::None);
                };
                let mut expired = false;
                for value in &values {
                    match self.table.get(value.as_bytes(), now) {
                        Lookup::Found(server) => {
                            let target = servers.iter().position(|s| s.name == server);
                            let key = value.as_bytes().to_vec();
                            return self.pinned(
                                target,
                                &key.clone(),
                                servers,
                                elig,
                                Pin::Key(key),
                                secure,
                            );
                        }
                        Lookup::Expired(_) => expired = true,
                        Lookup::Missing => {}
                    }
                }
                for value in &values {
                    let node = app_cookie::route_suffix(value);
                    if let Some(i) = servers.iter().position(|s| Some(&*s.name) == node) {
                        let key = value.as_bytes().to_vec();
                        return self.pinned(
                            Some(i),
                            &key.clone(),
                            servers,
                            elig,
                            Pin::Key(key),
                            secure,
                        );
                    }
                }
                let outcome = if expired {
                    Outcome::Expired
                } else {
                    Outcome::New
                };
                select(Some(outcome), Pin::Key(first.as_bytes().to_vec()))
            }
        }
    }

    fn cookie_expired(&self, r: &CookieRecord, now: u64) -> bool {
        let over = |since: u64, limit: Option<Duration>| {
            limit.is_some_and(|l| now.saturating_sub(since) > l.as_secs())
        };
        over(r.issued, self.cfg.max_life) || over(r.last_seen, self.cfg.max_idle)
    }

    /// Source-ip and header modes.
    fn keyed(
        &self,
        key: Vec<u8>,
        req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
        selector: &dyn Selector,
        now: u64,
    ) -> Decision {
        if self.cfg.stateless {
            let home = rendezvous_home(&key, servers);
            return self.pinned(home, &key.clone(), servers, elig, Pin::Key(key), req.tls);
        }
        match self.table.get(&key, now) {
            Lookup::Found(server) => {
                let target = servers.iter().position(|s| s.name == server);
                self.pinned(target, &key.clone(), servers, elig, Pin::Key(key), req.tls)
            }
            Lookup::Expired(_) => Decision::new(
                selector.select(req, servers, elig),
                Some(Outcome::Expired),
                Pin::Key(key),
                req.tls,
            ),
            Lookup::Missing => Decision::new(
                selector.select(req, servers, elig),
                Some(Outcome::New),
                Pin::Key(key),
                req.tls,
            ),
        }
    }

    /// A request pinned to `target` (None: no such server any more).
    fn pinned(
        &self,
        target: Option<usize>,
        key: &[u8],
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
        pin: Pin,
        secure: bool,
    ) -> Decision {
        let Some(i) = target else {
            return self.repin(RepinReason::Removed, None, key, servers, elig, pin, secure);
        };
        match elig.availability(i) {
            a if a.takes_pinned() => {
                // The pinned server only: if it refuses the connection,
                // `repin_after_failure` computes the repin target then,
                // so a hit does not pay for fallbacks it almost never uses.
                let mut candidates = Fallbacks::new();
                candidates.push(i);
                let mut d = Decision::new(candidates, Some(Outcome::Hit), pin, secure);
                d.pinned = Some(i);
                d
            }
            Availability::Maintenance => self.repin(
                RepinReason::Maintenance,
                Some(i),
                key,
                servers,
                elig,
                pin,
                secure,
            ),
            _ => self.repin(RepinReason::Down, Some(i), key, servers, elig, pin, secure),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn repin(
        &self,
        reason: RepinReason,
        pinned: Option<usize>,
        key: &[u8],
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
        pin: Pin,
        secure: bool,
    ) -> Decision {
        let outcome = Some(Outcome::Repin(reason));
        let mut d = if self.cfg.strict {
            let mut d = Decision::new(Fallbacks::new(), outcome, pin, secure);
            d.refused = true;
            d
        } else {
            let excl = Excluding {
                inner: elig,
                index: pinned.unwrap_or(usize::MAX),
            };
            let candidates = rendezvous(key, servers, &excl, self.cfg.repin_balance_factor);
            Decision::new(candidates, outcome, pin, secure)
        };
        d.pinned = pinned;
        d
    }

    /// The server `failed` refused the connection (before health checks
    /// noticed). If it was the pinned server, this gives the deterministic
    /// repin target (`repin`, reason `connect_failed`; refused with
    /// `strict`); otherwise the same decision without `failed`.
    pub fn repin_after_failure(
        &self,
        decision: &Decision,
        failed: usize,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Decision {
        let key = match &decision.pin {
            Pin::Cookie(Some(r)) => Some(r.id.to_be_bytes().to_vec()),
            Pin::Key(k) => Some(k.clone()),
            _ => None,
        };
        match key {
            Some(key) if decision.pinned == Some(failed) && !decision.refused => self.repin(
                RepinReason::ConnectFailed,
                Some(failed),
                &key,
                servers,
                elig,
                decision.pin.clone(),
                decision.secure,
            ),
            _ => {
                let mut d = decision.clone();
                d.candidates = decision.candidates.without(failed);
                d
            }
        }
    }

    /// After the response of server `served`: learns pins (tables,
    /// application `Set-Cookie`) and returns the affinity `Set-Cookie` to
    /// add (cookie mode: a new pin, a repin, or a refresh of a cookie whose
    /// last-seen time is older than `refresh_interval`).
    pub fn on_response(
        &self,
        decision: &Decision,
        served: usize,
        servers: &[ServerEntry],
        resp_headers: &impl app_cookie::SetCookies,
        now: SystemTime,
    ) -> Option<HeaderValue> {
        self.on_response_with(
            decision,
            served,
            servers,
            resp_headers,
            now,
            &mut OpenedCookie::default(),
        )
    }

    /// [`Affinity::on_response`] for a request resolved with
    /// [`Affinity::resolve_with`] and the same `opened`: a refresh is noted
    /// there, so the same cookie value again on this connection is not
    /// refreshed again before `refresh_interval` has passed.
    pub fn on_response_with(
        &self,
        decision: &Decision,
        served: usize,
        servers: &[ServerEntry],
        resp_headers: &impl app_cookie::SetCookies,
        now: SystemTime,
        opened: &mut OpenedCookie,
    ) -> Option<HeaderValue> {
        if decision.refused {
            return None;
        }
        let name = &servers.get(served)?.name;
        let now = unix_secs(now);
        let same_pin = decision.outcome == Some(Outcome::Hit) && decision.pinned == Some(served);
        match (&self.cfg.mode, &decision.pin) {
            (AffinityMode::Cookie, Pin::Cookie(old)) => {
                let record = match old {
                    Some(r) if same_pin && *r.server == **name => {
                        if now.saturating_sub(r.last_seen) < self.cfg.refresh_interval.as_secs() {
                            return None;
                        }
                        let refreshed = CookieRecord {
                            last_seen: now,
                            ..r.clone()
                        };
                        opened.note_refresh(&refreshed);
                        refreshed
                    }
                    _ => CookieRecord {
                        id: old.as_ref().map_or_else(rand::random, |r| r.id),
                        issued: now,
                        last_seen: now,
                        server: Arc::clone(name),
                    },
                };
                self.table
                    .insert(&record.id.to_be_bytes(), Arc::clone(name), now);
                let max_age = self.cfg.max_life.map(|l| {
                    l.as_secs()
                        .saturating_sub(now.saturating_sub(record.issued))
                });
                let value = record.seal(&self.sealer, &self.aad);
                cookie::set_cookie(
                    &self.cfg.cookie,
                    &value,
                    self.cfg.secure_cookie || decision.secure,
                    max_age,
                )
            }
            (AffinityMode::AppCookie { name: cookie_name }, pin) => {
                // A value we did not know (or a repin): remember where it went.
                if let Pin::Key(key) = pin
                    && !same_pin
                {
                    self.table.insert(key, Arc::clone(name), now);
                }
                for learned in app_cookie::learn(resp_headers, cookie_name) {
                    if learned.deleted {
                        self.table.remove(learned.value.as_bytes());
                    } else {
                        self.table
                            .insert(learned.value.as_bytes(), Arc::clone(name), now);
                    }
                }
                None
            }
            (AffinityMode::SourceIp | AffinityMode::Header { .. }, Pin::Key(key)) => {
                if !self.cfg.stateless && !same_pin {
                    self.table.insert(key, Arc::clone(name), now);
                }
                None
            }
            _ => None,
        }
    }

    /// Pinned clients per server, in `servers` order. Table modes: live
    /// stick-table entries naming the server. Cookie mode: distinct cookie
    /// ids issued or refreshed within `max_idle` (or `ttl`), at most
    /// `table_size` of them (the cookies themselves are stateless). Stateless
    /// modes: zeros. Drops expired entries.
    pub fn pinned_counts(&self, servers: &[ServerEntry], now: SystemTime) -> Vec<u64> {
        let counts = self.table.counts(unix_secs(now));
        servers
            .iter()
            .map(|s| counts.get(&s.name).copied().unwrap_or(0))
            .collect()
    }

    /// After a reload: takes over the pins of the previous `Affinity` of the
    /// same pool when the mode is the same. Pins naming servers that are gone
    /// are kept: they repin (reason `removed`) on their next request.
    pub fn carry_over(&self, previous: &Affinity, now: SystemTime) {
        if std::mem::discriminant(&self.cfg.mode) == std::mem::discriminant(&previous.cfg.mode) {
            self.table.copy_from(&previous.table, unix_secs(now));
        }
    }
}

#[cfg(test)]
mod tests;
