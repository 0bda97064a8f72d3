//! Prometheus metrics (`GET /metrics` on the admin listener).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `remora_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Pool name.
    pub pool: String,
    /// Server name (`-` when none was reached).
    pub server: String,
    /// Status code.
    pub code: u16,
}

/// Labels `{pool,server}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Pool name.
    pub pool: String,
    /// Server name.
    pub server: String,
}

/// Labels of `remora_affinity_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AffinityLabels {
    /// Pool name.
    pub pool: String,
    /// `new`, `hit`, `repin`, `expired`, `invalid`, `none`.
    pub outcome: String,
    /// Why (repin: `down`, `maintenance`, `removed`, `refused`...; empty otherwise).
    pub reason: String,
}

/// Labels `{pool}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Every metric the balancer exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by pool, server, status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration.
    pub duration: Histogram,
    /// Open client connections.
    pub active_connections: Gauge,
    /// Client connections parked (HTTP/1.1 keep-alive, waiting for their
    /// next request with no HTTP state).
    pub parked_connections: Gauge,
    /// 1 when a server is healthy and not in maintenance.
    pub server_up: Family<ServerLabels, Gauge>,
    /// Affinity outcomes.
    pub affinity: Family<AffinityLabels, Counter>,
    /// Clients pinned to each server (stick tables, or cookie hits seen in the last `max_idle`).
    pub pinned: Family<ServerLabels, Gauge>,
    /// Retries performed.
    pub retries: Family<PoolLabels, Counter>,
    /// Requests in flight per server.
    pub server_active: Family<ServerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remora");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by pool, server and status code",
            requests.clone(),
        );
        let duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register_with_unit(
            "request_duration",
            "Time from request head to response head",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "active_connections",
            "Open client connections",
            active_connections.clone(),
        );
        let parked_connections = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1.1 client connections parked (no HTTP state held)",
            parked_connections.clone(),
        );
        let server_up = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "server_up",
            "1 when the server is healthy and not in maintenance",
            server_up.clone(),
        );
        let affinity = Family::<AffinityLabels, Counter>::default();
        registry.register(
            "affinity",
            "Affinity outcomes (new, hit, repin, expired, invalid, none)",
            affinity.clone(),
        );
        let pinned = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "pinned_clients",
            "Clients pinned to each server",
            pinned.clone(),
        );
        let retries = Family::<PoolLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests retried on another server",
            retries.clone(),
        );
        let server_active = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "server_active_requests",
            "Requests in flight per server",
            server_active.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            active_connections,
            parked_connections,
            server_up,
            affinity,
            pinned,
            retries,
            server_active,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
