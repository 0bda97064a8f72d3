//! The balancer's configuration: resolved, validated types.
//!
//! [`Config::load`] reads a TOML file (see `docs/configuration.md`), checks
//! every name, address, duration and reference, and returns either a
//! [`Config`] or a [`ConfigError`] whose `Display` is `FILE:LINE:COL: message`.

mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use parse::ConfigError;

/// A validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this configuration was read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// The admin listener, if any.
    pub admin: Option<AdminConfig>,
    /// Global limits (listeners may override some).
    pub limits: Limits,
    /// Where the sealing keyring comes from; `None`: generated at start.
    pub keys: Option<KeysConfig>,
    /// Listeners, in file order.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Pools, in file order.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        parse::load(path)
    }

    /// Parses and validates `text`, reporting errors against `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, path)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[admin]`: the admin API and metrics listener.
#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The bearer token (from `token` or `token_file`); never printed.
    #[serde(skip)]
    pub token: String,
    /// `true`: `/metrics` answers without a token.
    pub public_metrics: bool,
}

/// `[keys]`: the sealing keyring file.
#[derive(Debug, Clone, Serialize)]
pub struct KeysConfig {
    /// Path of the keyring file (one base64url key a line).
    pub file: PathBuf,
}

/// `[limits]` (global) and `[listener.limits]` (per listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest request header section, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Largest response header section a server may send, in bytes (502 beyond).
    pub max_response_header_bytes: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Time allowed to receive a complete request header section.
    #[serde(with = "humantime_ser")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(with = "humantime_ser")]
    pub idle_timeout: Duration,
    /// An idle HTTP/1.1 keep-alive connection releases its buffers after this long.
    #[serde(with = "humantime_ser")]
    pub park_after: Duration,
    /// Most client connections open at once per listener.
    pub max_connections: usize,
    /// Time allowed for a server to connect.
    #[serde(with = "humantime_ser")]
    pub connect_timeout: Duration,
    /// Time allowed for a server to send its response head (504 beyond).
    #[serde(with = "humantime_ser")]
    pub server_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take before exit.
    #[serde(with = "humantime_ser")]
    pub drain_timeout: Duration,
    /// Request bodies up to this size (with a `Content-Length`) are kept in
    /// memory so that, when the chosen server refuses the connection, the
    /// request can go to another server (the body was never sent). 0: off.
    pub replay_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_response_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            park_after: Duration::from_millis(250),
            max_connections: 20_000,
            connect_timeout: Duration::from_secs(3),
            server_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            replay_body_bytes: 64 * 1024,
        }
    }
}

/// TLS material of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[[listener]]`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address to accept on.
    pub listen: SocketAddr,
    /// Default pool.
    pub pool: String,
    /// TLS, if enabled.
    pub tls: Option<TlsConfig>,
    /// Accept PROXY protocol v1/v2 headers.
    pub proxy_protocol: bool,
    /// Routes, first match wins.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Effective limits (global merged with this listener's overrides).
    pub limits: Limits,
}

/// `[[listener.route]]`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Path prefix the request path must start with.
    pub path_prefix: String,
    /// Host the request must name (port ignored, case-insensitive).
    pub host: Option<String>,
    /// Target pool.
    pub pool: String,
}

/// Selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Plain round-robin.
    RoundRobin,
    /// Smooth weighted round-robin.
    WeightedRoundRobin,
    /// Weighted least connections.
    LeastConnections,
    /// Power of two choices, least requests.
    P2c,
    /// Peak-EWMA least response time.
    LeastResponseTime,
    /// Uniform random.
    Random,
    /// Consistent hash of `hash_key`.
    Hash,
}

/// What the `hash` algorithm hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address.
    SourceIp,
    /// A request header.
    Header(String),
    /// A request cookie.
    Cookie(String),
    /// The request path and query.
    Uri,
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::SourceIp => f.write_str("source-ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn status_range_ser<S: serde::Serializer>(r: &(u16, u16), s: S) -> Result<S::Ok, S::Error> {
    if r.0 == r.1 {
        s.collect_str(&r.0)
    } else {
        s.collect_str(&format_args!("{}-{}", r.0, r.1))
    }
}

/// Affinity mode of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AffinityMode {
    /// No affinity.
    None,
    /// Remora inserts a sealed cookie.
    Cookie,
    /// Learn the server's own cookie.
    AppCookie,
    /// Stick table keyed by client address.
    SourceIp,
    /// Stick table keyed by a request header.
    Header,
}

/// `[pool.affinity]`.
#[derive(Debug, Clone, Serialize)]
pub struct AffinityConfig {
    /// Mode.
    pub mode: AffinityMode,
    /// Name of the inserted cookie (mode `cookie`).
    pub cookie: String,
    /// Idle lifetime of an affinity.
    #[serde(with = "humantime_ser")]
    pub max_idle: Duration,
    /// Absolute lifetime of an affinity.
    #[serde(with = "humantime_ser")]
    pub max_life: Duration,
    /// `true`: 503 instead of repin when the pinned server is gone.
    pub strict: bool,
    /// Application cookie to learn (mode `app-cookie`).
    pub app_cookie: Option<String>,
    /// Header holding the key (mode `header`).
    pub header: Option<String>,
    /// Stick table entry lifetime (modes `app-cookie`, `source-ip`, `header`).
    #[serde(with = "humantime_ser")]
    pub ttl: Duration,
    /// Stick table capacity (LRU beyond).
    pub table_size: usize,
    /// Stateless: use the consistent hash instead of a stick table.
    pub stateless: bool,
    /// Mode `cookie`: the affinity cookie also goes to the servers
    /// (`false`: Remora takes it out of the request's `Cookie` fields).
    pub forward_cookie: bool,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            mode: AffinityMode::None,
            cookie: "REMORA_AFFINITY".into(),
            max_idle: Duration::from_secs(30 * 60),
            max_life: Duration::from_secs(12 * 3600),
            strict: false,
            app_cookie: None,
            header: None,
            ttl: Duration::from_secs(30 * 60),
            table_size: 100_000,
            stateless: false,
            forward_cookie: false,
        }
    }
}

/// `[pool.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// HTTP path to GET; `None`: TCP connect check.
    pub path: Option<String>,
    /// Accepted status range, inclusive.
    #[serde(serialize_with = "status_range_ser")]
    pub expect_status: (u16, u16),
    /// Time between checks.
    #[serde(with = "humantime_ser")]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(with = "humantime_ser")]
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
    /// Consecutive live-traffic errors (connect error or 5xx) that eject a server; 0 = off.
    pub passive_fall: u32,
    /// Minimum time an ejected server stays out before checks may re-admit it.
    #[serde(with = "humantime_ser")]
    pub passive_backoff: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            expect_status: (200, 399),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            passive_fall: 5,
            passive_backoff: Duration::from_secs(10),
        }
    }
}

/// Administrative state of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerState {
    /// Takes new and pinned clients.
    Ready,
    /// Takes pinned clients only.
    Drain,
    /// Takes nothing.
    Maintenance,
}

impl ServerState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maintenance => "maintenance",
        }
    }
}

/// `[[pool.server]]`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Unique name within the pool.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Relative weight (1..=1000).
    pub weight: u32,
    /// Used only when no non-backup server is available.
    pub backup: bool,
    /// Weight ramp after the server (re)joins.
    #[serde(with = "humantime_opt")]
    pub slow_start: Option<Duration>,
    /// Most concurrent requests; 0 = unlimited.
    pub max_connections: usize,
    /// Initial administrative state.
    pub state: ServerState,
}

/// `[[pool]]`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// Selection algorithm.
    pub algorithm: Algorithm,
    /// Key for `hash`.
    pub hash_key: HashKey,
    /// Bounded loads factor in percent (0 = off).
    pub hash_balance_factor: u32,
    /// Retries for idempotent requests.
    pub retries: u32,
    /// Affinity.
    pub affinity: AffinityConfig,
    /// Health checks.
    pub health: HealthConfig,
    /// Servers.
    #[serde(rename = "server")]
    pub servers: Vec<ServerConfig>,
}

mod humantime_ser {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

mod humantime_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}
