//! Least response time (peak EWMA).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{
    Algorithm, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, ranked, weight_of,
};

/// The server with the lowest `peak-EWMA latency x (active requests + 1) /
/// effective weight` (see [`super::ServerStats`]). The estimate decays
/// without traffic, so a server that was slow is probed again. Ties (for
/// example before any response) rotate.
#[derive(Debug, Default)]
pub struct LeastResponseTime {
    rotation: AtomicUsize,
}

impl LeastResponseTime {
    /// A new selector.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for LeastResponseTime {
    fn select(
        &self,
        _req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks {
        let now = Instant::now();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        ranked(servers, elig, start, |i| {
            let s = &servers[i].stats;
            // 1 µs floor so the number of active requests still counts
            // while no latency has been measured.
            let latency = s.latency_estimate_at(now).as_nanos() as f64 + 1_000.0;
            latency * (s.active_requests() as f64 + 1.0) / weight_of(elig, i) as f64
        })
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::LeastResponseTime
    }
}
