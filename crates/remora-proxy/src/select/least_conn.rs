//! Weighted least-connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    Algorithm, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, ranked, weight_of,
};

/// The server with the fewest active requests per unit of effective weight
/// (in-flight requests, WebSocket tunnels included). Ties rotate so equal
/// servers share the load. Fallbacks are the next least loaded.
#[derive(Debug, Default)]
pub struct LeastConnections {
    rotation: AtomicUsize,
}

impl LeastConnections {
    /// A new selector.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for LeastConnections {
    fn select(
        &self,
        _req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks {
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        ranked(servers, elig, start, |i| {
            servers[i].stats.active_requests() as f64 / weight_of(elig, i) as f64
        })
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::LeastConnections
    }
}
