//! Pools of servers at run time: state, health flags, counters, selection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use remora_seal::Sealer;

use parking_lot::Mutex;

use crate::affinity::{self, Affinity, AffinityMode};
use crate::config::AffinityMode as AffinityModeConfig;
use crate::config::{
    Algorithm as AlgoConfig, HashKey as HashKeyConfig, PoolConfig, ServerConfig, ServerState,
};
use crate::select::{
    self, Algorithm, Availability, Eligibility, Fallbacks, HashKey, RequestGuard, RequestKey,
    Selector, ServerEntry, ServerStats,
};

/// Live, reload-surviving facts about one server.
#[derive(Debug)]
pub struct ServerLive {
    state: AtomicU8,
    healthy: AtomicBool,
    /// Active requests, connections, latency (shared with the selectors).
    pub stats: Arc<ServerStats>,
    consecutive_errors: AtomicU32,
    /// Until when a passive ejection holds.
    ejected_until: Mutex<Option<Instant>>,
    /// When the server last became available (slow start).
    up_since: Mutex<Instant>,
}

impl ServerLive {
    fn new(state: ServerState) -> Self {
        ServerLive {
            state: AtomicU8::new(state_code(state)),
            healthy: AtomicBool::new(true),
            stats: Arc::new(ServerStats::new()),
            consecutive_errors: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            up_since: Mutex::new(Instant::now()),
        }
    }
}

fn state_code(s: ServerState) -> u8 {
    match s {
        ServerState::Ready => 0,
        ServerState::Drain => 1,
        ServerState::Maintenance => 2,
    }
}

/// One server of a pool.
#[derive(Debug)]
pub struct Server {
    /// Pool name.
    pub pool: String,
    /// Index in the pool.
    pub index: usize,
    /// Static configuration.
    pub config: ServerConfig,
    /// `config.address`, shared with the connections to this server.
    pub address: Arc<str>,
    /// Live state (shared across reloads when the server keeps its name and address).
    pub live: Arc<ServerLive>,
}

impl Server {
    /// Server name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Administrative state.
    pub fn state(&self) -> ServerState {
        match self.live.state.load(Ordering::Relaxed) {
            0 => ServerState::Ready,
            1 => ServerState::Drain,
            _ => ServerState::Maintenance,
        }
    }

    /// Sets the administrative state.
    pub fn set_state(&self, s: ServerState) {
        let old = self.live.state.swap(state_code(s), Ordering::Relaxed);
        if old == state_code(ServerState::Maintenance) && s != ServerState::Maintenance {
            *self.live.up_since.lock() = Instant::now();
        }
    }

    /// Health (active checks and passive ejection).
    pub fn healthy(&self) -> bool {
        self.live.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; returns `true` when it changed.
    pub fn set_healthy(&self, up: bool) -> bool {
        let old = self.live.healthy.swap(up, Ordering::Relaxed);
        if !old && up {
            *self.live.up_since.lock() = Instant::now();
            self.live.consecutive_errors.store(0, Ordering::Relaxed);
        }
        old != up
    }

    /// Whether a passive ejection still holds (active checks may not re-admit yet).
    pub fn ejection_holds(&self) -> bool {
        self.live
            .ejected_until
            .lock()
            .is_some_and(|t| Instant::now() < t)
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        usize::try_from(self.live.stats.active_requests()).unwrap_or(usize::MAX)
    }

    /// Availability for selection and affinity.
    pub fn availability(&self) -> Availability {
        let state = match self.state() {
            ServerState::Ready => select::ServerState::Ready,
            ServerState::Drain => select::ServerState::Drain,
            ServerState::Maintenance => select::ServerState::Maintenance,
        };
        Availability::from_parts(self.healthy(), state, self.full())
    }

    /// Healthy and not in maintenance: may serve pinned clients.
    pub fn serves_pinned(&self) -> bool {
        self.healthy() && self.state() != ServerState::Maintenance && !self.full()
    }

    /// Healthy and ready: may take new clients.
    pub fn takes_new(&self) -> bool {
        self.healthy() && self.state() == ServerState::Ready && !self.full()
    }

    fn full(&self) -> bool {
        self.config.max_connections != 0 && self.active() >= self.config.max_connections
    }

    /// Effective weight, ramped during slow start (at least 1).
    pub fn effective_weight(&self) -> u32 {
        let w = self.config.weight;
        match self.config.slow_start {
            Some(ramp) if !ramp.is_zero() => {
                let up = self.live.up_since.lock().elapsed();
                if up >= ramp {
                    w
                } else {
                    let frac = up.as_secs_f64() / ramp.as_secs_f64();
                    ((f64::from(w) * frac).ceil() as u32).clamp(1, w)
                }
            }
            _ => w,
        }
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(&self) -> RequestGuard {
        self.live.stats.start_request()
    }

    /// Records a live-traffic failure; returns `true` when it ejects the server.
    pub fn record_failure(&self, passive_fall: u32, backoff: Duration) -> bool {
        if passive_fall == 0 {
            return false;
        }
        let n = self.live.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= passive_fall && self.healthy() {
            *self.live.ejected_until.lock() = Instant::now().checked_add(backoff);
            self.set_healthy(false)
        } else {
            false
        }
    }

    /// Records a live-traffic success.
    pub fn record_success(&self) {
        self.live.consecutive_errors.store(0, Ordering::Relaxed);
    }
}

/// A pool at run time.
pub struct Pool {
    /// Static configuration.
    pub config: PoolConfig,
    /// Servers, in configuration order.
    pub servers: Vec<Arc<Server>>,
    entries: Vec<ServerEntry>,
    selector: Box<dyn Selector>,
    /// Affinity of this pool.
    pub affinity: Affinity,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.config.name)
            .finish()
    }
}

/// The selection algorithm for a pool's configuration.
pub fn algorithm(config: &PoolConfig) -> Algorithm {
    match config.algorithm {
        AlgoConfig::RoundRobin => Algorithm::RoundRobin,
        AlgoConfig::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        AlgoConfig::LeastConnections => Algorithm::LeastConnections,
        AlgoConfig::P2c => Algorithm::P2c,
        AlgoConfig::LeastResponseTime => Algorithm::LeastResponseTime,
        AlgoConfig::Random => Algorithm::Random,
        AlgoConfig::Hash => Algorithm::Hash {
            key: match &config.hash_key {
                HashKeyConfig::SourceIp => HashKey::SourceIp,
                HashKeyConfig::Uri => HashKey::Uri,
                HashKeyConfig::Cookie(c) => HashKey::Cookie(c.clone()),
                HashKeyConfig::Header(h) => http::HeaderName::from_bytes(h.as_bytes())
                    .map(HashKey::Header)
                    .unwrap_or(HashKey::SourceIp),
            },
            balance_factor: config.hash_balance_factor,
        },
    }
}

impl Eligibility for Pool {
    fn availability(&self, index: usize) -> Availability {
        self.servers
            .get(index)
            .map(|s| s.availability())
            .unwrap_or(Availability::Down)
    }

    fn effective_weight(&self, index: usize) -> u32 {
        self.servers
            .get(index)
            .map(|s| s.effective_weight())
            .unwrap_or(0)
    }
}

impl Pool {
    /// Builds a pool, reusing live state of servers from `previous` that keep
    /// their name and address.
    pub fn new(
        config: PoolConfig,
        previous: Option<&Pool>,
        sealer: &Arc<Sealer>,
    ) -> Result<Pool, affinity::AffinityConfigError> {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .enumerate()
            .map(|(index, sc)| {
                let live = previous
                    .and_then(|p| p.server(&sc.name))
                    .filter(|old| old.config.address == sc.address)
                    .map(|old| old.live.clone())
                    .unwrap_or_else(|| Arc::new(ServerLive::new(sc.state)));
                Arc::new(Server {
                    pool: config.name.clone(),
                    index,
                    address: Arc::from(sc.address.as_str()),
                    config: sc.clone(),
                    live,
                })
            })
            .collect();
        let entries: Vec<ServerEntry> = servers
            .iter()
            .map(|s| ServerEntry {
                name: Arc::from(s.name()),
                weight: s.config.weight,
                backup: s.config.backup,
                stats: s.live.stats.clone(),
            })
            .collect();
        let selector = select::build(&algorithm(&config), &entries);
        let affinity = Affinity::new(affinity_config(&config), sealer.clone())?;
        if let Some(prev) = previous {
            affinity.carry_over(&prev.affinity, SystemTime::now());
        }
        Ok(Pool {
            config,
            servers,
            entries,
            selector,
            affinity,
        })
    }

    /// The selector.
    pub fn selector(&self) -> &dyn Selector {
        &*self.selector
    }

    /// Clients pinned to each server, in server order.
    pub fn pinned_counts(&self) -> Vec<u64> {
        self.affinity
            .pinned_counts(&self.entries, SystemTime::now())
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name() == name)
    }

    /// The selectors' view of the servers.
    pub fn entries(&self) -> &[ServerEntry] {
        &self.entries
    }

    /// Candidates for a client that is not pinned: the choice first, then
    /// fallbacks for retries.
    pub fn select(&self, key: &RequestKey<'_>) -> Fallbacks {
        self.selector.select(key, &self.entries, self)
    }
}

/// The affinity settings for a pool's configuration.
pub fn affinity_config(config: &PoolConfig) -> affinity::AffinityConfig {
    let a = &config.affinity;
    let mode = match a.mode {
        AffinityModeConfig::None => AffinityMode::None,
        AffinityModeConfig::Cookie => AffinityMode::Cookie,
        AffinityModeConfig::SourceIp => AffinityMode::SourceIp,
        AffinityModeConfig::AppCookie => AffinityMode::AppCookie {
            name: a.app_cookie.clone().unwrap_or_default(),
        },
        AffinityModeConfig::Header => match a
            .header
            .as_deref()
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        {
            Some(name) => AffinityMode::Header { name },
            None => AffinityMode::None,
        },
    };
    affinity::AffinityConfig {
        pool: config.name.clone(),
        mode,
        cookie: a.cookie.clone(),
        max_idle: Some(a.max_idle),
        max_life: Some(a.max_life),
        strict: a.strict,
        ttl: a.ttl,
        table_size: a.table_size,
        stateless: a.stateless,
        forward_cookie: a.forward_cookie,
        ..affinity::AffinityConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(extra: &str) -> Pool {
        let text = format!(
            "[[listener]]\nname = \"w\"\nlisten = \"127.0.0.1:1\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\n\
             [[pool.server]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\nweight = 10\n{extra}\n\
             [[pool.server]]\nname = \"b\"\naddress = \"127.0.0.1:3\"\n"
        );
        let cfg = Config::parse(&text, std::path::Path::new("t.toml")).expect("config");
        let ring = remora_seal::Keyring::generate();
        let sealer = Arc::new(Sealer::new(&ring, remora_seal::Purpose::Affinity));
        Pool::new(cfg.pools[0].clone(), None, &sealer).expect("pool")
    }

    #[test]
    fn slow_start_ramps_weight_from_one() {
        let p = pool("slow_start = \"1h\"");
        assert_eq!(p.servers[0].effective_weight(), 1);
        let p = pool("");
        assert_eq!(p.servers[0].effective_weight(), 10);
    }

    #[test]
    fn states_and_health_give_availability() {
        let p = pool("max_connections = 1");
        let a = &p.servers[0];
        assert_eq!(a.availability(), Availability::Ready);
        a.set_state(ServerState::Drain);
        assert_eq!(a.availability(), Availability::Drain);
        assert!(a.serves_pinned() && !a.takes_new());
        a.set_state(ServerState::Ready);
        let guard = a.begin();
        assert_eq!(a.availability(), Availability::Full);
        drop(guard);
        assert!(!a.record_failure(0, Duration::from_secs(1)));
        for _ in 0..2 {
            assert!(!a.record_failure(3, Duration::from_secs(60)));
        }
        assert!(a.record_failure(3, Duration::from_secs(60)));
        assert_eq!(a.availability(), Availability::Down);
        assert!(a.ejection_holds());
        a.set_state(ServerState::Maintenance);
        assert_eq!(a.availability(), Availability::Maintenance);
    }

    #[test]
    fn reload_keeps_live_state_of_same_name_and_address() {
        let old = pool("");
        old.servers[0].set_state(ServerState::Drain);
        old.servers[1].set_healthy(false);
        let ring = remora_seal::Keyring::generate();
        let sealer = Arc::new(Sealer::new(&ring, remora_seal::Purpose::Affinity));
        let mut cfg = old.config.clone();
        cfg.servers[1].address = "127.0.0.1:4".into();
        let new = Pool::new(cfg, Some(&old), &sealer).expect("pool");
        assert_eq!(new.servers[0].state(), ServerState::Drain);
        assert!(new.servers[1].healthy(), "a moved server starts fresh");
    }
}
