//! Power of two random choices, least request.

use rand::Rng;

use super::{
    Algorithm, Eligibility, Fallbacks, MAX_CANDIDATES, RequestKey, Selector, ServerEntry, Tier,
    weight_of,
};

/// Picks two distinct competing servers at random and takes the one with
/// fewer active requests per unit of weight (Envoy's least-request). The
/// other one is the first fallback, then the rest in index order after it.
#[derive(Debug, Default)]
pub struct PowerOfTwoChoices;

impl PowerOfTwoChoices {
    /// A new selector.
    pub fn new() -> Self {
        Self
    }
}

impl Selector for PowerOfTwoChoices {
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
        let members: Vec<usize> = tier.members(servers, elig).collect();
        let mut rng = rand::rng();
        let a = rng.random_range(0..members.len());
        let b = if members.len() > 1 {
            let b = rng.random_range(0..members.len() - 1);
            if b >= a { b + 1 } else { b }
        } else {
            a
        };
        let load = |i: usize| {
            (servers[i].stats.active_requests() as f64 + 1.0) / weight_of(elig, i) as f64
        };
        let (x, y) = (members[a], members[b]);
        let (first, second) = if load(y) < load(x) { (y, x) } else { (x, y) };
        out.push(first);
        out.push(second);
        let n = members.len();
        for k in 1..n {
            if out.len() >= MAX_CANDIDATES {
                break;
            }
            out.push(members[(a + k) % n]);
        }
        out
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::P2c
    }
}
