//! TOML -> [`Config`]: raw serde types with spans, then validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    AdminConfig, AffinityConfig, AffinityMode, Algorithm, Config, HashKey, HealthConfig,
    KeysConfig, Limits, ListenerConfig, PoolConfig, RouteConfig, ServerConfig, ServerState,
    TlsConfig,
};

/// A configuration mistake, displayed as `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A syntax or semantic error at a position in the file.
    #[error("{}:{line}:{col}: {message}", path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// An error with no position (e.g. a missing section).
    #[error("{}: {message}", path.display())]
    General {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin: Option<RawAdmin>,
    limits: Option<RawLimits>,
    keys: Option<RawKeys>,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    pool: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    #[serde(default)]
    public_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    file: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<Spanned<u64>>,
    max_response_header_bytes: Option<Spanned<u64>>,
    max_body_bytes: Option<u64>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    park_after: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    connect_timeout: Option<Spanned<String>>,
    server_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    replay_body_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    listen: Spanned<String>,
    pool: Spanned<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    route: Vec<RawRoute>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: Spanned<String>,
    host: Option<String>,
    pool: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    #[serde(default = "default_algorithm")]
    algorithm: Algorithm,
    hash_key: Option<Spanned<String>>,
    #[serde(default = "default_balance")]
    hash_balance_factor: Spanned<u32>,
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
    affinity: Option<RawAffinity>,
    health: Option<RawHealth>,
    #[serde(default)]
    server: Vec<RawServer>,
}

fn default_algorithm() -> Algorithm {
    Algorithm::RoundRobin
}
fn default_balance() -> Spanned<u32> {
    Spanned::new(0..0, 125)
}
fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAffinity {
    mode: Spanned<AffinityMode>,
    cookie: Option<Spanned<String>>,
    max_idle: Option<Spanned<String>>,
    max_life: Option<Spanned<String>>,
    #[serde(default)]
    strict: bool,
    app_cookie: Option<Spanned<String>>,
    header: Option<Spanned<String>>,
    ttl: Option<Spanned<String>>,
    table_size: Option<Spanned<u64>>,
    #[serde(default)]
    stateless: bool,
    forward_cookie: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    passive_fall: Option<u32>,
    passive_backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    address: Spanned<String>,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
    #[serde(default)]
    backup: bool,
    slow_start: Option<Spanned<String>>,
    #[serde(default)]
    max_connections: u64,
    #[serde(default = "default_state")]
    state: ServerState,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_state() -> ServerState {
    ServerState::Ready
}

/// Longest duration accepted anywhere (keeps time arithmetic far from overflow).
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Turns byte offsets into `FILE:LINE:COL` errors.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        ConfigError::At {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    fn general(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::General {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn duration(&self, value: &Spanned<String>) -> Result<Duration, ConfigError> {
        let d = self.parse_duration(value)?;
        if d > MAX_DURATION {
            return Err(self.at(value.span(), "duration too large (at most 10 years)"));
        }
        Ok(d)
    }

    fn parse_duration(&self, value: &Spanned<String>) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
            self.at(
                value.span(),
                format!(
                    "bad duration {:?}: {e} (use e.g. \"500ms\", \"2s\", \"30m\")",
                    value.get_ref()
                ),
            )
        })
    }

    fn opt_duration(
        &self,
        value: &Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value
            .as_ref()
            .map(|v| self.duration(v))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }

    fn socket_addr(&self, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.at(
                value.span(),
                format!(
                    "bad address {:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\"",
                    value.get_ref()
                ),
            )
        })
    }

    fn relative(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path
                .parent()
                .map(|d| d.join(p))
                .unwrap_or_else(|| p.to_path_buf())
        }
    }
}

pub(super) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => ctx.at(span, e.message().trim().to_string()),
        None => ctx.general(e.message().trim().to_string()),
    })?;
    validate(&ctx, raw)
}

fn limits(ctx: &Ctx<'_>, raw: Option<&RawLimits>, base: &Limits) -> Result<Limits, ConfigError> {
    let Some(raw) = raw else {
        return Ok(base.clone());
    };
    let mut l = base.clone();
    if let Some(v) = &raw.max_header_bytes {
        let n = *v.get_ref();
        if !(1024..=1024 * 1024).contains(&n) {
            return Err(ctx.at(v.span(), "max_header_bytes must be in 1024..=1048576"));
        }
        l.max_header_bytes = n as usize;
    }
    if let Some(v) = &raw.max_response_header_bytes {
        let n = *v.get_ref();
        if !(1024..=1024 * 1024).contains(&n) {
            return Err(ctx.at(
                v.span(),
                "max_response_header_bytes must be in 1024..=1048576",
            ));
        }
        l.max_response_header_bytes = n as usize;
    }
    if let Some(v) = raw.max_body_bytes {
        l.max_body_bytes = v;
    }
    l.header_read_timeout = ctx.opt_duration(&raw.header_read_timeout, l.header_read_timeout)?;
    l.idle_timeout = ctx.opt_duration(&raw.idle_timeout, l.idle_timeout)?;
    l.park_after = ctx.opt_duration(&raw.park_after, l.park_after)?;
    if let Some(v) = &raw.max_connections {
        if *v.get_ref() == 0 {
            return Err(ctx.at(v.span(), "max_connections must be at least 1"));
        }
        l.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    l.connect_timeout = ctx.opt_duration(&raw.connect_timeout, l.connect_timeout)?;
    l.server_timeout = ctx.opt_duration(&raw.server_timeout, l.server_timeout)?;
    l.drain_timeout = ctx.opt_duration(&raw.drain_timeout, l.drain_timeout)?;
    if let Some(v) = &raw.replay_body_bytes {
        if *v.get_ref() > 16 * 1024 * 1024 {
            return Err(ctx.at(v.span(), "replay_body_bytes must be at most 16777216"));
        }
        l.replay_body_bytes = *v.get_ref();
    }
    for (v, name) in [
        (&raw.header_read_timeout, "header_read_timeout"),
        (&raw.idle_timeout, "idle_timeout"),
        (&raw.park_after, "park_after"),
        (&raw.connect_timeout, "connect_timeout"),
        (&raw.server_timeout, "server_timeout"),
    ] {
        if let Some(v) = v {
            if ctx.duration(v)?.is_zero() {
                return Err(ctx.at(v.span(), format!("{name} must be greater than zero")));
            }
        }
    }
    Ok(l)
}

fn validate(ctx: &Ctx<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let global = limits(ctx, raw.limits.as_ref(), &Limits::default())?;

    let admin = match raw.admin {
        None => None,
        Some(a) => {
            let listen = ctx.socket_addr(&a.listen)?;
            let token = match (&a.token, &a.token_file) {
                (Some(t), None) => {
                    if t.get_ref().trim().is_empty() {
                        return Err(ctx.at(t.span(), "admin token must not be empty"));
                    }
                    t.get_ref().clone()
                }
                (None, Some(f)) => {
                    let p = ctx.relative(f.get_ref());
                    let t = std::fs::read_to_string(&p).map_err(|e| {
                        ctx.at(
                            f.span(),
                            format!("cannot read token_file {}: {e}", p.display()),
                        )
                    })?;
                    let t = t.trim().to_string();
                    if t.is_empty() {
                        return Err(ctx.at(f.span(), "token_file is empty"));
                    }
                    t
                }
                (Some(t), Some(_)) => {
                    return Err(ctx.at(t.span(), "set either token or token_file, not both"));
                }
                (None, None) => {
                    return Err(ctx.at(
                        a.listen.span(),
                        "[admin] needs `token` or `token_file` (the API is never open)",
                    ));
                }
            };
            Some(AdminConfig {
                listen,
                token,
                public_metrics: a.public_metrics,
            })
        }
    };

    let keys = raw.keys.map(|k| KeysConfig {
        file: ctx.relative(k.file.get_ref()),
    });

    // Pools first: listeners refer to them.
    let mut pools = Vec::new();
    let mut pool_names = HashSet::new();
    for p in &raw.pool {
        let name = p.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(ctx.at(p.name.span(), "pool name must not be empty"));
        }
        if !pool_names.insert(name.clone()) {
            return Err(ctx.at(p.name.span(), format!("duplicate pool name {name:?}")));
        }
        pools.push(pool(ctx, p, name)?);
    }

    if raw.listener.is_empty() {
        return Err(ctx.general("at least one [[listener]] is required"));
    }
    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut addrs = HashSet::new();
    if let Some(a) = &admin {
        addrs.insert(a.listen);
    }
    for l in &raw.listener {
        let name = l.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(ctx.at(l.name.span(), "listener name must not be empty"));
        }
        if !listener_names.insert(name.clone()) {
            return Err(ctx.at(l.name.span(), format!("duplicate listener name {name:?}")));
        }
        let listen = ctx.socket_addr(&l.listen)?;
        if listen.port() != 0 && !addrs.insert(listen) {
            return Err(ctx.at(l.listen.span(), format!("address {listen} used twice")));
        }
        let known = |p: &Spanned<String>| -> Result<String, ConfigError> {
            if pool_names.contains(p.get_ref()) {
                Ok(p.get_ref().clone())
            } else {
                Err(ctx.at(
                    p.span(),
                    format!("unknown pool {:?} (no [[pool]] has that name)", p.get_ref()),
                ))
            }
        };
        let pool = known(&l.pool)?;
        let mut routes = Vec::new();
        for r in &l.route {
            if !r.path_prefix.get_ref().starts_with('/') {
                return Err(ctx.at(r.path_prefix.span(), "path_prefix must start with '/'"));
            }
            routes.push(RouteConfig {
                path_prefix: r.path_prefix.get_ref().clone(),
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                pool: known(&r.pool)?,
            });
        }
        let tls = l.tls.as_ref().map(|t| TlsConfig {
            cert: ctx.relative(&t.cert),
            key: ctx.relative(&t.key),
        });
        listeners.push(ListenerConfig {
            name,
            listen,
            pool,
            tls,
            proxy_protocol: l.proxy_protocol,
            routes,
            limits: limits(ctx, l.limits.as_ref(), &global)?,
        });
    }

    Ok(Config {
        path: ctx.path.to_path_buf(),
        admin,
        limits: global,
        keys,
        listeners,
        pools,
    })
}

fn pool(ctx: &Ctx<'_>, p: &RawPool, name: String) -> Result<PoolConfig, ConfigError> {
    let hash_key = match &p.hash_key {
        None => HashKey::SourceIp,
        Some(k) => {
            let v = k.get_ref().trim();
            if v == "source-ip" {
                HashKey::SourceIp
            } else if v == "uri" {
                HashKey::Uri
            } else if let Some(h) = v.strip_prefix("header:").filter(|h| !h.is_empty()) {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(ctx.at(k.span(), format!("bad header name {h:?}")));
                }
                HashKey::Header(h.to_ascii_lowercase())
            } else if let Some(c) = v.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                HashKey::Cookie(c.to_string())
            } else {
                return Err(ctx.at(
                    k.span(),
                    format!(
                        "bad hash_key {v:?}: expected source-ip, uri, header:NAME or cookie:NAME"
                    ),
                ));
            }
        }
    };
    if *p.hash_balance_factor.get_ref() != 0 && *p.hash_balance_factor.get_ref() < 100 {
        return Err(ctx.at(
            p.hash_balance_factor.span(),
            "hash_balance_factor must be 0 (off) or at least 100 (percent)",
        ));
    }
    if *p.retries.get_ref() > 10 {
        return Err(ctx.at(p.retries.span(), "retries must be at most 10"));
    }

    let mut affinity = AffinityConfig::default();
    if let Some(a) = &p.affinity {
        affinity.mode = *a.mode.get_ref();
        if let Some(c) = &a.cookie {
            if !valid_cookie_name(c.get_ref()) {
                return Err(ctx.at(c.span(), format!("bad cookie name {:?}", c.get_ref())));
            }
            affinity.cookie = c.get_ref().clone();
        }
        affinity.max_idle = ctx.opt_duration(&a.max_idle, affinity.max_idle)?;
        affinity.max_life = ctx.opt_duration(&a.max_life, affinity.max_life)?;
        affinity.ttl = ctx.opt_duration(&a.ttl, affinity.ttl)?;
        affinity.strict = a.strict;
        affinity.stateless = a.stateless;
        if let Some(f) = &a.forward_cookie {
            if affinity.mode != AffinityMode::Cookie {
                return Err(ctx.at(f.span(), "forward_cookie applies to mode \"cookie\" only"));
            }
            affinity.forward_cookie = *f.get_ref();
        }
        if let Some(t) = &a.table_size {
            if *t.get_ref() == 0 {
                return Err(ctx.at(t.span(), "table_size must be at least 1"));
            }
            affinity.table_size = usize::try_from(*t.get_ref()).unwrap_or(usize::MAX);
        }
        if let Some(c) = &a.app_cookie {
            if !valid_cookie_name(c.get_ref()) {
                return Err(ctx.at(c.span(), format!("bad cookie name {:?}", c.get_ref())));
            }
            affinity.app_cookie = Some(c.get_ref().clone());
        }
        if let Some(h) = &a.header {
            if http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
                return Err(ctx.at(h.span(), format!("bad header name {:?}", h.get_ref())));
            }
            affinity.header = Some(h.get_ref().to_ascii_lowercase());
        }
        match affinity.mode {
            AffinityMode::AppCookie if affinity.app_cookie.is_none() => {
                return Err(ctx.at(a.mode.span(), "mode \"app-cookie\" needs `app_cookie`"));
            }
            AffinityMode::Header if affinity.header.is_none() => {
                return Err(ctx.at(a.mode.span(), "mode \"header\" needs `header`"));
            }
            _ => {}
        }
    }

    let mut health = HealthConfig::default();
    if let Some(h) = &p.health {
        if let Some(path) = &h.path {
            if !path.get_ref().starts_with('/') {
                return Err(ctx.at(path.span(), "health path must start with '/'"));
            }
            health.path = Some(path.get_ref().clone());
        }
        if let Some(s) = &h.expect_status {
            health.expect_status = parse_status_range(s.get_ref()).ok_or_else(|| {
                ctx.at(
                    s.span(),
                    format!(
                        "bad expect_status {:?}: expected \"200\" or \"200-399\"",
                        s.get_ref()
                    ),
                )
            })?;
        }
        health.interval = ctx.opt_duration(&h.interval, health.interval)?;
        health.timeout = ctx.opt_duration(&h.timeout, health.timeout)?;
        if let Some(i) = &h.interval {
            if health.interval < Duration::from_millis(10) {
                return Err(ctx.at(i.span(), "interval must be at least 10ms"));
            }
        }
        for (v, field) in [(&h.rise, &mut health.rise), (&h.fall, &mut health.fall)] {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    return Err(ctx.at(v.span(), "rise and fall must be at least 1"));
                }
                *field = *v.get_ref();
            }
        }
        if let Some(n) = h.passive_fall {
            health.passive_fall = n;
        }
        health.passive_backoff = ctx.opt_duration(&h.passive_backoff, health.passive_backoff)?;
    }

    if p.server.is_empty() {
        return Err(ctx.at(
            p.name.span(),
            format!("pool {name:?} has no servers (add a [[pool.server]])"),
        ));
    }
    let mut servers = Vec::new();
    let mut names = HashSet::new();
    for s in &p.server {
        let sname = s.name.get_ref().trim().to_string();
        if sname.is_empty() || sname.len() > 64 {
            return Err(ctx.at(s.name.span(), "server name must be 1..=64 characters"));
        }
        if !names.insert(sname.clone()) {
            return Err(ctx.at(
                s.name.span(),
                format!("duplicate server name {sname:?} in pool {name:?}"),
            ));
        }
        let address = s.address.get_ref().trim();
        if !valid_host_port(address) {
            return Err(ctx.at(
                s.address.span(),
                format!("bad address {address:?}: expected HOST:PORT, e.g. \"127.0.0.1:9101\""),
            ));
        }
        let weight = *s.weight.get_ref();
        if !(1..=1000).contains(&weight) {
            return Err(ctx.at(s.weight.span(), "weight must be in 1..=1000"));
        }
        servers.push(ServerConfig {
            name: sname,
            address: address.to_string(),
            weight,
            backup: s.backup,
            slow_start: s.slow_start.as_ref().map(|d| ctx.duration(d)).transpose()?,
            max_connections: usize::try_from(s.max_connections).unwrap_or(usize::MAX),
            state: s.state,
        });
    }

    Ok(PoolConfig {
        name,
        algorithm: p.algorithm,
        hash_key,
        hash_balance_factor: *p.hash_balance_factor.get_ref(),
        retries: *p.retries.get_ref(),
        affinity,
        health,
        servers,
    })
}

fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"
pool = "app"
[listener.limits]
max_body_bytes = 10

[[pool]]
name = "app"
algorithm = "hash"
hash_key = "header:X-User"
[pool.health]
expect_status = "200"
[[pool.server]]
name = "b1"
address = "backend.internal:9101"
slow_start = "30s"
"#;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("t.toml"))
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse_str(BASE).expect("valid");
        let l = &c.listeners[0];
        assert_eq!(l.limits.max_body_bytes, 10);
        assert_eq!(
            l.limits.max_header_bytes,
            Limits::default().max_header_bytes
        );
        assert_eq!(c.limits.max_body_bytes, Limits::default().max_body_bytes);
        let p = &c.pools[0];
        assert_eq!(p.algorithm, Algorithm::Hash);
        assert_eq!(p.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(p.hash_balance_factor, 125);
        assert_eq!(p.retries, 2);
        assert_eq!(p.health.expect_status, (200, 200));
        assert_eq!(p.servers[0].slow_start, Some(Duration::from_secs(30)));
        assert_eq!(p.servers[0].weight, 1);
        assert_eq!(p.affinity.mode, AffinityMode::None);
    }

    fn err(text: &str) -> String {
        parse_str(text).expect_err("invalid").to_string()
    }

    #[test]
    fn semantic_errors_have_positions() {
        let e = err(&BASE.replace("\"header:X-User\"", "\"body\""));
        assert!(e.starts_with("t.toml:12:12: bad hash_key"), "{e}");
        let e = err(&BASE.replace("expect_status = \"200\"", "expect_status = \"600\""));
        assert!(e.starts_with("t.toml:14:17: bad expect_status"), "{e}");
        let e = err(&BASE.replace("algorithm = \"hash\"", "algorithm = \"fastest\""));
        assert!(e.starts_with("t.toml:11:13: unknown variant"), "{e}");
        let e = err(&BASE.replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost\""));
        assert!(e.starts_with("t.toml:4:10: bad address"), "{e}");
        let e = err("[[pool]]\nname = \"app\"\n");
        assert!(e.contains("t.toml:2:8: pool \"app\" has no servers"), "{e}");
        let e = err(&format!("{BASE}[admin]\nlisten = \"127.0.0.1:9\"\n"));
        assert!(e.contains("needs `token` or `token_file`"), "{e}");
        let e = err(&BASE.replace(
            "[listener.limits]",
            "[listener.limits]\nidle_timeout = \"0s\"",
        ));
        assert!(e.contains("idle_timeout must be greater than zero"), "{e}");
        let e = err(&BASE.replace(
            "[listener.limits]",
            "[listener.limits]\nmax_response_header_bytes = 512",
        ));
        assert!(
            e.contains("max_response_header_bytes must be in 1024..=1048576"),
            "{e}"
        );
        let c = parse_str(&BASE.replace(
            "[listener.limits]",
            "[listener.limits]\nmax_response_header_bytes = 2048",
        ))
        .expect("valid");
        assert_eq!(c.listeners[0].limits.max_response_header_bytes, 2048);
        let affinity = |mode: &str| {
            BASE.replace(
                "[pool.health]",
                &format!(
                    "[pool.affinity]\nmode = \"{mode}\"\nforward_cookie = true\n[pool.health]"
                ),
            )
        };
        let e = err(&affinity("source-ip"));
        assert!(
            e.starts_with("t.toml:15:18: forward_cookie applies to mode \"cookie\" only"),
            "{e}"
        );
        let c = parse_str(&affinity("cookie")).expect("valid");
        assert!(c.pools[0].affinity.forward_cookie);
        assert!(
            !parse_str(BASE).expect("valid").pools[0]
                .affinity
                .forward_cookie
        );
    }

    #[test]
    fn token_file_is_read_relative_to_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tok"), "  abc\n").expect("write");
        let path = dir.path().join("r.toml");
        let text = format!("{BASE}[admin]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"tok\"\n");
        let c = parse(&text, &path).expect("valid");
        assert_eq!(c.admin.expect("admin").token, "abc");
    }

    #[test]
    fn status_ranges_and_addresses() {
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range(" 204 "), Some((204, 204)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("abc"), None);
        assert!(valid_host_port("[::1]:80"));
        assert!(valid_host_port("app-1.internal:8080"));
        assert!(!valid_host_port("app:0"));
        assert!(!valid_host_port("app"));
        assert!(!valid_host_port("a b:80"));
    }
}
