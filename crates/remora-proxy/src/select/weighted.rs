//! Smooth weighted round-robin (nginx's algorithm).

use parking_lot::Mutex;

use super::{
    Algorithm, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, Tier, weight_of,
};

/// nginx's smooth weighted round-robin: on every pick each competing server
/// adds its effective weight to its current weight; the highest current
/// weight wins (first on ties) and loses the total. Weights 5,1,1 give
/// `a a b a c a a`. Fallbacks are the other servers by current weight.
#[derive(Debug)]
pub struct SmoothWeightedRoundRobin {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    /// Zeroed current weights for a snapshot of `servers`.
    pub fn new(servers: &[ServerEntry]) -> Self {
        Self {
            current: Mutex::new(vec![0; servers.len()]),
        }
    }
}

impl Selector for SmoothWeightedRoundRobin {
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
        let mut order: Vec<(i64, usize)> = Vec::with_capacity(tier.count);
        {
            let mut current = self.current.lock();
            if current.len() < servers.len() {
                current.resize(servers.len(), 0);
            }
            let mut total: i64 = 0;
            let mut best: Option<usize> = None;
            for i in tier.members(servers, elig) {
                let w = weight_of(elig, i) as i64;
                current[i] = current[i].saturating_add(w);
                total = total.saturating_add(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                current[b] = current[b].saturating_sub(total);
                out.push(b);
                for i in tier.members(servers, elig).filter(|&i| i != b) {
                    order.push((current[i], i));
                }
            }
        }
        // Highest current weight first; stable on ties (lower index first).
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in order {
            if !out.push(i) {
                break;
            }
        }
        out
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::WeightedRoundRobin
    }
}
