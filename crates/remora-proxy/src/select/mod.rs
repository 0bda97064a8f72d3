//! Server selection: one [`Selector`] trait, one type per algorithm.
//!
//! A selector is built immutably from a snapshot of the pool's servers
//! ([`build`]) and can be swapped atomically (`ArcSwap<Box<dyn Selector>>`) on
//! reload. It never owns health or state: every call receives an
//! [`Eligibility`] view that says which servers may take new traffic right
//! now and with which effective weight (slow start).
//!
//! Rules shared by every algorithm:
//! - only servers that are [`Eligibility::usable`] are returned;
//! - backup servers are returned only when no non-backup server is usable;
//! - the answer is a bounded, duplicate-free, preference-ordered
//!   [`Fallbacks`] list: the first entry is the choice, the rest are where a
//!   retry should go.
//!
//! The hash algorithm and the affinity repin use a fixed, documented hash
//! (see [`hash`]) so every Remora instance picks the same server for the
//! same key.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::fields::ClientFields;
use http::HeaderName;

pub mod hash;
mod least_conn;
mod least_time;
mod p2c;
mod random;
mod round_robin;
mod stats;
mod weighted;

pub use hash::{HashSelector, MAGLEV_TABLE_SIZE, rendezvous};
pub use least_conn::LeastConnections;
pub use least_time::LeastResponseTime;
pub use p2c::PowerOfTwoChoices;
pub use random::RandomSelector;
pub use round_robin::RoundRobin;
pub use stats::{ConnectionGuard, DEFAULT_EWMA_DECAY, RequestGuard, ServerStats};
pub use weighted::SmoothWeightedRoundRobin;

/// The most candidates a [`Fallbacks`] list holds (the choice plus retries).
pub const MAX_CANDIDATES: usize = 8;

/// Operator-set state of a server (admin API `PUT .../state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Takes new and pinned traffic.
    #[default]
    Ready,
    /// Takes no new affinity; clients pinned to it are still served.
    Drain,
    /// Takes nothing.
    Maintenance,
}

impl ServerState {
    /// The lower-case name used in config, the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server state name that is not `ready`, `drain` or `maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown server state {0:?} (expected ready, drain or maintenance)")]
pub struct UnknownServerState(pub String);

impl FromStr for ServerState {
    type Err = UnknownServerState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(ServerState::Ready),
            "drain" => Ok(ServerState::Drain),
            "maintenance" => Ok(ServerState::Maintenance),
            other => Err(UnknownServerState(other.to_owned())),
        }
    }
}

/// Whether a server may take traffic right now: the combination of health,
/// [`ServerState`] and `max_connections`, computed by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Healthy and `ready`: new and pinned traffic.
    Ready,
    /// Healthy and draining: pinned traffic only.
    Drain,
    /// Healthy and `ready` but at `max_connections`: no new traffic; clients
    /// already pinned to it are still sent to it (affinity wins over the cap).
    Full,
    /// Operator maintenance: nothing.
    Maintenance,
    /// Failed health checks or passively ejected: nothing.
    Down,
}

impl Availability {
    /// May take a client that is not pinned to it.
    pub fn takes_new(self) -> bool {
        self == Availability::Ready
    }

    /// May take a client that is pinned to it.
    pub fn takes_pinned(self) -> bool {
        matches!(
            self,
            Availability::Ready | Availability::Drain | Availability::Full
        )
    }

    /// Combines health, operator state and the connection cap.
    pub fn from_parts(healthy: bool, state: ServerState, full: bool) -> Self {
        match (state, healthy) {
            (ServerState::Maintenance, _) => Availability::Maintenance,
            (_, false) => Availability::Down,
            (ServerState::Drain, true) => Availability::Drain,
            (ServerState::Ready, true) if full => Availability::Full,
            (ServerState::Ready, true) => Availability::Ready,
        }
    }
}

/// One server as selectors see it in an immutable snapshot.
#[derive(Clone, Debug)]
pub struct ServerEntry {
    /// Unique name in the pool (config `name`); what affinity remembers.
    pub name: Arc<str>,
    /// Configured weight.
    pub weight: u32,
    /// Used only when no non-backup server is usable.
    pub backup: bool,
    /// Live counters shared with the forwarder.
    pub stats: Arc<ServerStats>,
}

impl ServerEntry {
    /// A server with fresh stats.
    pub fn new(name: impl Into<Arc<str>>, weight: u32, backup: bool) -> Self {
        Self {
            name: name.into(),
            weight,
            backup,
            stats: Arc::new(ServerStats::new()),
        }
    }
}

/// What a selector needs to know about each server right now. Indices are
/// positions in the `servers` slice given to the same call; an index out of
/// range must answer [`Availability::Down`].
pub trait Eligibility {
    /// Health, state and cap of server `index`.
    fn availability(&self, index: usize) -> Availability;

    /// Weight now (configured weight, scaled during slow start). Weighted
    /// algorithms treat 0 as 1 for a usable server.
    fn effective_weight(&self, index: usize) -> u32;

    /// May take new traffic (shortcut for `availability(index).takes_new()`).
    fn usable(&self, index: usize) -> bool {
        self.availability(index).takes_new()
    }
}

/// A plain [`Eligibility`]: one availability and one weight per server.
/// Useful for tests and for callers that compute a snapshot per request.
#[derive(Clone, Debug, Default)]
pub struct EligibilityTable {
    /// Availability per server index.
    pub availability: Vec<Availability>,
    /// Effective weight per server index.
    pub weights: Vec<u32>,
}

impl EligibilityTable {
    /// Every server ready, at its configured weight.
    pub fn all_ready(servers: &[ServerEntry]) -> Self {
        Self {
            availability: vec![Availability::Ready; servers.len()],
            weights: servers.iter().map(|s| s.weight).collect(),
        }
    }

    /// Sets the availability of one server (ignored when out of range).
    pub fn set(&mut self, index: usize, availability: Availability) -> &mut Self {
        if let Some(a) = self.availability.get_mut(index) {
            *a = availability;
        }
        self
    }
}

impl Eligibility for EligibilityTable {
    fn availability(&self, index: usize) -> Availability {
        self.availability
            .get(index)
            .copied()
            .unwrap_or(Availability::Down)
    }

    fn effective_weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(0)
    }
}

/// What a request offers for hashing and affinity.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// Client address (after PROXY protocol, if any).
    pub client_ip: IpAddr,
    /// Request fields.
    pub fields: ClientFields<'a>,
    /// Request URI.
    pub uri: &'a http::Uri,
    /// The request came over TLS (affinity cookies get `Secure`).
    pub tls: bool,
}

impl<'a> RequestKey<'a> {
    /// A key for a plain-text request.
    pub fn new(client_ip: IpAddr, fields: ClientFields<'a>, uri: &'a http::Uri) -> Self {
        Self {
            client_ip,
            fields,
            uri,
            tls: false,
        }
    }

    /// Sets the TLS flag.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

/// Preference-ordered candidate servers: the first is the choice, the rest
/// are fallbacks for retries. At most [`MAX_CANDIDATES`], no duplicates, no
/// allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fallbacks {
    items: [usize; MAX_CANDIDATES],
    len: usize,
}

impl Default for Fallbacks {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Fallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Fallbacks {
    /// An empty list (no server can take the request: answer 503).
    pub const fn new() -> Self {
        Self {
            items: [0; MAX_CANDIDATES],
            len: 0,
        }
    }

    /// Appends `index` unless it is already present or the list is full.
    /// Returns whether it was added.
    pub fn push(&mut self, index: usize) -> bool {
        if self.len >= MAX_CANDIDATES || self.contains(index) {
            return false;
        }
        self.items[self.len] = index;
        self.len += 1;
        true
    }

    /// The choice, if any.
    pub fn first(&self) -> Option<usize> {
        self.as_slice().first().copied()
    }

    /// All candidates in preference order.
    pub fn as_slice(&self) -> &[usize] {
        &self.items[..self.len]
    }

    /// Iterates the candidates in preference order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.as_slice().iter().copied()
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No candidate at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `index` is a candidate.
    pub fn contains(&self, index: usize) -> bool {
        self.as_slice().contains(&index)
    }

    /// The same list without `index` (e.g. after it refused a connection).
    pub fn without(&self, index: usize) -> Self {
        let mut out = Self::new();
        for i in self.iter().filter(|&i| i != index) {
            out.push(i);
        }
        out
    }
}

impl IntoIterator for Fallbacks {
    type Item = usize;
    type IntoIter = std::iter::Take<std::array::IntoIter<usize, MAX_CANDIDATES>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().take(self.len)
    }
}

/// Where the hash algorithm takes its key from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP (IPv4-mapped IPv6 counts as IPv4).
    SourceIp,
    /// The first value of a request header; missing: the client IP.
    Header(HeaderName),
    /// The value of a request cookie; missing: the client IP.
    Cookie(String),
    /// Path and query of the request URI.
    Uri,
}

/// A `hash_key` config value that is not `source-ip`, `header:NAME`,
/// `cookie:NAME` or `uri`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectConfigError {
    /// Unknown hash key form.
    #[error("unknown hash_key {0:?} (expected source-ip, header:NAME, cookie:NAME or uri)")]
    UnknownHashKey(String),
    /// `header:NAME` with an invalid header name.
    #[error("invalid header name in hash_key {0:?}")]
    BadHeaderName(String),
    /// `cookie:NAME` with an empty or invalid cookie name.
    #[error("invalid cookie name in hash_key {0:?}")]
    BadCookieName(String),
    /// Unknown algorithm name.
    #[error(
        "unknown algorithm {0:?} (expected round-robin, weighted-round-robin, least-connections, p2c, least-response-time, random or hash)"
    )]
    UnknownAlgorithm(String),
}

impl FromStr for HashKey {
    type Err = SelectConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source-ip" => return Ok(HashKey::SourceIp),
            "uri" => return Ok(HashKey::Uri),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| SelectConfigError::BadHeaderName(s.to_owned()));
        }
        if let Some(name) = s.strip_prefix("cookie:") {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(SelectConfigError::BadCookieName(s.to_owned()));
            }
            return Ok(HashKey::Cookie(name.to_owned()));
        }
        Err(SelectConfigError::UnknownHashKey(s.to_owned()))
    }
}

/// RFC 7230 `tchar`: what a cookie or header name may contain.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A selection algorithm (config `algorithm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `round-robin`: each usable server in turn, weights ignored.
    RoundRobin,
    /// `weighted-round-robin`: nginx's smooth weighted round-robin.
    WeightedRoundRobin,
    /// `least-connections`: fewest active requests per unit of weight.
    LeastConnections,
    /// `p2c`: power of two random choices, fewer active requests wins.
    P2c,
    /// `least-response-time`: lowest peak-EWMA latency x (active + 1) / weight.
    LeastResponseTime,
    /// `random`: weighted random.
    Random,
    /// `hash`: Maglev consistent hash of a request key, with bounded loads.
    Hash {
        /// What is hashed.
        key: HashKey,
        /// Bounded loads in percent of the average load (0 = off; values
        /// from 1 to 100 are raised to 100).
        balance_factor: u32,
    },
}

impl Algorithm {
    /// Builds an algorithm from config values: `name` is `algorithm`,
    /// `hash_key` and `balance_factor` are used only by `hash` (defaults
    /// `source-ip` and 0).
    pub fn from_config(
        name: &str,
        hash_key: Option<&str>,
        balance_factor: Option<u32>,
    ) -> Result<Self, SelectConfigError> {
        Ok(match name {
            "round-robin" => Algorithm::RoundRobin,
            "weighted-round-robin" => Algorithm::WeightedRoundRobin,
            "least-connections" => Algorithm::LeastConnections,
            "p2c" => Algorithm::P2c,
            "least-response-time" => Algorithm::LeastResponseTime,
            "random" => Algorithm::Random,
            "hash" => Algorithm::Hash {
                key: hash_key.unwrap_or("source-ip").parse()?,
                balance_factor: balance_factor.unwrap_or(0),
            },
            other => return Err(SelectConfigError::UnknownAlgorithm(other.to_owned())),
        })
    }

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::P2c => "p2c",
            Algorithm::LeastResponseTime => "least-response-time",
            Algorithm::Random => "random",
            Algorithm::Hash { .. } => "hash",
        }
    }
}

/// Chooses servers for requests. Built immutably from a snapshot of the
/// pool; internal counters (round-robin position, WRR weights) are interior.
pub trait Selector: Send + Sync {
    /// Preference-ordered candidates: the first is the choice, the rest are
    /// fallbacks (bounded, each usable at the time of the call, no
    /// duplicates). Empty when no server is usable.
    fn select(
        &self,
        req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks;

    /// The algorithm this selector implements.
    fn algorithm(&self) -> Algorithm;
}

/// Builds the selector for `algorithm` over a snapshot of `servers`.
pub fn build(algorithm: &Algorithm, servers: &[ServerEntry]) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new()),
        Algorithm::WeightedRoundRobin => Box::new(SmoothWeightedRoundRobin::new(servers)),
        Algorithm::LeastConnections => Box::new(LeastConnections::new()),
        Algorithm::P2c => Box::new(PowerOfTwoChoices::new()),
        Algorithm::LeastResponseTime => Box::new(LeastResponseTime::new()),
        Algorithm::Random => Box::new(RandomSelector::new()),
        Algorithm::Hash {
            key,
            balance_factor,
        } => Box::new(HashSelector::new(key.clone(), *balance_factor, servers)),
    }
}

/// Which servers compete for new traffic: the usable non-backup servers,
/// or, when there are none, the usable backup servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tier {
    /// Compete servers are backups.
    pub backup: bool,
    /// How many servers compete.
    pub count: usize,
}

impl Tier {
    /// Finds the tier for this call.
    pub fn of(servers: &[ServerEntry], elig: &dyn Eligibility) -> Self {
        let mut primaries = 0;
        let mut backups = 0;
        for (i, s) in servers.iter().enumerate() {
            if elig.usable(i) {
                if s.backup {
                    backups += 1;
                } else {
                    primaries += 1;
                }
            }
        }
        if primaries > 0 {
            Tier {
                backup: false,
                count: primaries,
            }
        } else {
            Tier {
                backup: true,
                count: backups,
            }
        }
    }

    /// Whether server `i` competes in this tier.
    pub fn admits(&self, servers: &[ServerEntry], elig: &dyn Eligibility, i: usize) -> bool {
        servers.get(i).is_some_and(|s| s.backup == self.backup) && elig.usable(i)
    }

    /// Indices of the competing servers, in order.
    pub fn members<'s>(
        self,
        servers: &'s [ServerEntry],
        elig: &'s dyn Eligibility,
    ) -> impl Iterator<Item = usize> + 's {
        (0..servers.len()).filter(move |&i| self.admits(servers, elig, i))
    }
}

/// Effective weight of a usable server, at least 1.
pub(crate) fn weight_of(elig: &dyn Eligibility, i: usize) -> u64 {
    u64::from(elig.effective_weight(i).max(1))
}

/// Ranks the competing servers by `score` (lower first, ties broken by
/// position after a rotating `start`), and returns the best
/// [`MAX_CANDIDATES`].
pub(crate) fn ranked(
    servers: &[ServerEntry],
    elig: &dyn Eligibility,
    start: usize,
    mut score: impl FnMut(usize) -> f64,
) -> Fallbacks {
    let tier = Tier::of(servers, elig);
    let n = servers.len().max(1);
    let mut scored: Vec<(f64, usize, usize)> = tier
        .members(servers, elig)
        .map(|i| (score(i), (i + n - start % n) % n, i))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out = Fallbacks::new();
    for (_, _, i) in scored {
        if !out.push(i) {
            break;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
