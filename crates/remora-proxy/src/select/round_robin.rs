//! Plain round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Algorithm, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, Tier};

/// Each usable server in turn; weights are ignored. Fallbacks are the next
/// servers in the rotation.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A rotation starting at the first server.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for RoundRobin {
    fn select(
        &self,
        _req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks {
        let tier = Tier::of(servers, elig);
        let mut out = Fallbacks::new();
        if tier.count == 0 {
            return out;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % tier.count;
        let members = || tier.members(servers, elig);
        for i in members().skip(turn).chain(members().take(turn)) {
            if !out.push(i) {
                break;
            }
        }
        out
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RoundRobin
    }
}
