//! Replica metrics, registered beside the session layer's under `remora_session`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Rejection, Via};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Counters of the replica lifecycle.
#[derive(Debug, Clone)]
pub(super) struct ReplicaMetrics {
    restored: Family<ViaLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    pub issued: Counter,
    pub seal_failures: Counter,
    pub asked: Counter,
    pub parked: Counter,
    pub park_timeouts: Counter,
    pub size: Histogram,
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        Self {
            restored: Family::default(),
            rejected: Family::default(),
            issued: Counter::default(),
            seal_failures: Counter::default(),
            asked: Counter::default(),
            parked: Counter::default(),
            park_timeouts: Counter::default(),
            // 64 B .. 128 KiB
            size: Histogram::new(exponential_buckets(64.0, 2.0, 12)),
        }
    }
}

impl ReplicaMetrics {
    pub fn restored(&self, via: Via) {
        self.restored
            .get_or_create(&ViaLabel { via: via.label() })
            .inc();
    }

    pub fn rejected(&self, r: Rejection) {
        self.rejected
            .get_or_create(&ReasonLabel { reason: r.label() })
            .inc();
    }

    /// The count of restores by `via`.
    pub fn restored_count(&self, via: Via) -> u64 {
        self.restored
            .get_or_create(&ViaLabel { via: via.label() })
            .get()
    }

    /// The count of rejections by reason.
    pub fn rejected_count(&self, r: Rejection) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel { reason: r.label() })
            .get()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("remora_session");
        r.register(
            "restored_via",
            "Sessions restored from a replica, by carriage",
            self.restored.clone(),
        );
        r.register(
            "replica_rejected",
            "Replicas refused (the request went on with a fresh session), by reason",
            self.rejected.clone(),
        );
        r.register(
            "replicas_issued",
            "Replicas sealed and handed to clients",
            self.issued.clone(),
        );
        r.register(
            "replica_seal_failures",
            "Sessions too large (or unserializable) for a replica",
            self.seal_failures.clone(),
        );
        r.register(
            "replica_asked",
            "409 Session-Replica-Wanted answers to capable clients",
            self.asked.clone(),
        );
        r.register(
            "replica_parked",
            "Requests parked to wait for a replica",
            self.parked.clone(),
        );
        r.register(
            "replica_park_timeouts",
            "Parked requests that saw no replica within the grace",
            self.park_timeouts.clone(),
        );
        r.register(
            "replica_size_chars",
            "Size of issued replicas in base64url characters",
            self.size.clone(),
        );
    }
}
