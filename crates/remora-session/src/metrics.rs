//! Prometheus metrics (`prometheus-client`), registered under the prefix
//! `remora_session` on a registry the application passes in.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label for per-operation metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabel {
    pub op: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The layer's metrics. Always maintained; exported only if registered.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub created: Counter,
    pub loaded: Counter,
    pub saved: Counter,
    pub restored: Counter,
    pub expired: Counter,
    pub invalidated: Counter,
    pub conflicts_merged: Counter,
    pub malformed_ids: Counter,
    pub store_errors: Family<OpLabel, Counter>,
    pub store_latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    pub size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            created: Counter::default(),
            loaded: Counter::default(),
            saved: Counter::default(),
            restored: Counter::default(),
            expired: Counter::default(),
            invalidated: Counter::default(),
            conflicts_merged: Counter::default(),
            malformed_ids: Counter::default(),
            store_errors: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram),
            // 64 B .. 1 MiB
            size: Histogram::new(exponential_buckets(64.0, 2.0, 15)),
        }
    }
}

impl Metrics {
    /// Registers every metric on `registry` under `remora_session_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("remora_session");
        r.register(
            "created",
            "Sessions created (first saved)",
            self.created.clone(),
        );
        r.register(
            "loaded",
            "Sessions loaded from the store",
            self.loaded.clone(),
        );
        r.register("saved", "Session saves that wrote data", self.saved.clone());
        r.register(
            "restored",
            "Sessions restored from a replica",
            self.restored.clone(),
        );
        r.register(
            "expired",
            "Requests whose session ID was unknown or expired",
            self.expired.clone(),
        );
        r.register(
            "invalidated",
            "Sessions invalidated",
            self.invalidated.clone(),
        );
        r.register(
            "conflicts_merged",
            "Version conflicts resolved by a per-attribute merge",
            self.conflicts_merged.clone(),
        );
        r.register(
            "malformed_ids",
            "Requests with a malformed session ID (fresh session started)",
            self.malformed_ids.clone(),
        );
        r.register(
            "store_errors",
            "Store operations that failed or timed out, by operation",
            self.store_errors.clone(),
        );
        r.register(
            "store_latency_seconds",
            "Store operation latency, by operation",
            self.store_latency.clone(),
        );
        r.register(
            "size_bytes",
            "Serialized size of saved sessions",
            self.size.clone(),
        );
    }
}
