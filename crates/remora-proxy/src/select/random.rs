//! Weighted random.

use rand::Rng;

use super::{
    Algorithm, Eligibility, Fallbacks, RequestKey, Selector, ServerEntry, Tier, weight_of,
};

/// A competing server drawn with probability proportional to its effective
/// weight; fallbacks are the servers after it in index order.
#[derive(Debug, Default)]
pub struct RandomSelector;

impl RandomSelector {
    /// A new selector.
    pub fn new() -> Self {
        Self
    }
}

impl Selector for RandomSelector {
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
        let members: Vec<(usize, u64)> = tier
            .members(servers, elig)
            .map(|i| (i, weight_of(elig, i)))
            .collect();
        let total: u64 = members.iter().map(|m| m.1).sum();
        let mut r = rand::rng().random_range(0..total.max(1));
        let mut pick = 0;
        for (k, (_, w)) in members.iter().enumerate() {
            if r < *w {
                pick = k;
                break;
            }
            r -= w;
        }
        let n = members.len();
        for k in 0..n {
            if !out.push(members[(pick + k) % n].0) {
                break;
            }
        }
        out
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::Random
    }
}
