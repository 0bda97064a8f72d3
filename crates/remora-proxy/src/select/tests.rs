//! Unit and property tests of the selection algorithms.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::testutil::{Req, ready, servers};
use super::*;

fn all_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::P2c,
        Algorithm::LeastResponseTime,
        Algorithm::Random,
        Algorithm::Hash {
            key: HashKey::SourceIp,
            balance_factor: 0,
        },
        Algorithm::Hash {
            key: HashKey::Uri,
            balance_factor: 125,
        },
    ]
}

fn pick(sel: &dyn Selector, s: &[ServerEntry], e: &dyn Eligibility) -> Option<usize> {
    sel.select(&Req::new().key(), s, e).first()
}

#[test]
fn smooth_wrr_follows_nginx_sequence() {
    let s = servers(&[5, 1, 1]);
    let sel = build(&Algorithm::WeightedRoundRobin, &s);
    let e = ready(&s);
    let seq: String = (0..14)
        .map(|_| match pick(&*sel, &s, &e) {
            Some(0) => 'a',
            Some(1) => 'b',
            Some(2) => 'c',
            _ => '?',
        })
        .collect();
    assert_eq!(seq, "aabacaaaabacaa");
}

#[test]
fn round_robin_rotates_over_usable_servers() {
    let s = servers(&[1, 1, 1]);
    let sel = build(&Algorithm::RoundRobin, &s);
    let mut e = ready(&s);
    e.set(1, Availability::Down);
    let picks: Vec<_> = (0..4).map(|_| pick(&*sel, &s, &e).unwrap()).collect();
    assert_eq!(picks, vec![0, 2, 0, 2]);
    let c = sel.select(&Req::new().key(), &s, &e);
    assert_eq!(c.len(), 2);
}

#[test]
fn least_connections_is_weighted() {
    let s = servers(&[1, 3]);
    let sel = build(&Algorithm::LeastConnections, &s);
    let e = ready(&s);
    let mut held = Vec::new();
    // Weight 3 takes 3 requests for each one of weight 1.
    for _ in 0..8 {
        let i = pick(&*sel, &s, &e).unwrap();
        held.push(s[i].stats.start_request());
    }
    assert_eq!(s[0].stats.active_requests(), 2);
    assert_eq!(s[1].stats.active_requests(), 6);
    drop(held);
}

#[test]
fn p2c_avoids_the_loaded_server() {
    let s = servers(&[1, 1]);
    let sel = build(&Algorithm::P2c, &s);
    let e = ready(&s);
    let _busy: Vec<_> = (0..5).map(|_| s[0].stats.start_request()).collect();
    for _ in 0..50 {
        let c = sel.select(&Req::new().key(), &s, &e);
        assert_eq!(c.as_slice(), &[1, 0]);
    }
}

#[test]
fn least_response_time_prefers_the_fast_server() {
    let s = servers(&[1, 1, 1]);
    let sel = build(&Algorithm::LeastResponseTime, &s);
    let e = ready(&s);
    let now = Instant::now();
    s[0].stats
        .observe_latency_at(Duration::from_millis(300), now);
    s[1].stats.observe_latency_at(Duration::from_millis(5), now);
    s[2].stats
        .observe_latency_at(Duration::from_millis(80), now);
    for _ in 0..10 {
        assert_eq!(sel.select(&Req::new().key(), &s, &e).as_slice(), &[1, 2, 0]);
    }
}

#[test]
fn random_follows_weights() {
    let s = servers(&[1, 9]);
    let sel = build(&Algorithm::Random, &s);
    let e = ready(&s);
    let n = 5000;
    let heavy = (0..n).filter(|_| pick(&*sel, &s, &e) == Some(1)).count();
    // Expect 90%; 6 sigma is about 2.5%.
    assert!((4300..=4700).contains(&heavy), "{heavy}");
}

#[test]
fn backups_only_when_no_primary_is_usable() {
    let mut s = servers(&[1, 1, 1]);
    s[2].backup = true;
    for alg in all_algorithms() {
        let sel = build(&alg, &s);
        let mut e = ready(&s);
        for _ in 0..20 {
            let c = sel.select(&Req::new().key(), &s, &e);
            assert!(!c.contains(2), "{alg:?} used the backup: {c:?}");
        }
        e.set(0, Availability::Down).set(1, Availability::Drain);
        assert_eq!(pick(&*sel, &s, &e), Some(2), "{alg:?}");
        e.set(2, Availability::Maintenance);
        assert!(sel.select(&Req::new().key(), &s, &e).is_empty(), "{alg:?}");
    }
}

#[test]
fn hash_key_sources() {
    let s = servers(&[1; 10]);
    let req = Req::new()
        .header("x-user", "alice")
        .header("cookie", "a=1; sid=xyz; b=2");
    let k = req.key();
    assert_eq!(
        hash::request_key_bytes(&HashKey::Header("x-user".parse().unwrap()), &k),
        b"alice"
    );
    assert_eq!(
        hash::request_key_bytes(&HashKey::Cookie("sid".into()), &k),
        b"xyz"
    );
    // Missing header or cookie: the client IP.
    assert_eq!(
        hash::request_key_bytes(&HashKey::Header("x-none".parse().unwrap()), &k),
        vec![10, 0, 0, 1]
    );
    // IPv4-mapped IPv6 hashes as IPv4.
    let mapped = Req::new().ip("::ffff:10.0.0.1".parse().unwrap());
    assert_eq!(
        hash::request_key_bytes(&HashKey::SourceIp, &mapped.key()),
        vec![10, 0, 0, 1]
    );
    let sel = build(
        &Algorithm::Hash {
            key: HashKey::Header("x-user".parse().unwrap()),
            balance_factor: 0,
        },
        &s,
    );
    let e = ready(&s);
    let first = sel.select(&k, &s, &e);
    for _ in 0..10 {
        assert_eq!(sel.select(&k, &s, &e), first);
    }
}

#[test]
fn the_fixed_seed_is_pinned() {
    // These values are part of the contract: every Remora instance (and
    // every version) must map keys the same way. Changing the hash breaks
    // affinity across a rolling upgrade.
    assert_eq!(HASH_K0_BYTES, *b"remora-h");
    assert_eq!(hash::key_hash(b""), hash::key_hash(b""));
    let s = servers(&[1; 5]);
    let sel = hash::HashSelector::new(HashKey::SourceIp, 0, &s);
    let e = ready(&s);
    let picks: Vec<usize> = (0..8u8)
        .map(|k| {
            sel.select_hash(hash::key_hash(&[k]), &s, &e)
                .first()
                .unwrap()
        })
        .collect();
    assert_eq!(picks, EXPECTED_PICKS);
}

const HASH_K0_BYTES: [u8; 8] = hash::HASH_K0.to_le_bytes();
const EXPECTED_PICKS: [usize; 8] = [0, 3, 4, 4, 2, 4, 3, 1];

#[test]
fn algorithm_from_config() {
    assert_eq!(
        Algorithm::from_config("hash", Some("header:X-User"), Some(125)),
        Ok(Algorithm::Hash {
            key: HashKey::Header("x-user".parse().unwrap()),
            balance_factor: 125
        })
    );
    assert_eq!(
        Algorithm::from_config("p2c", None, None).map(|a| a.name()),
        Ok("p2c")
    );
    assert!(Algorithm::from_config("fastest", None, None).is_err());
    assert!("cookie:".parse::<HashKey>().is_err());
    assert!("header:bad name".parse::<HashKey>().is_err());
    assert_eq!("drain".parse::<ServerState>(), Ok(ServerState::Drain));
    assert_eq!(ServerState::Maintenance.to_string(), "maintenance");
}

fn key_req(k: u32) -> Req {
    Req::new().ip(IpAddr::V4(Ipv4Addr::from(k)))
}

fn avail_strategy() -> impl Strategy<Value = Availability> {
    prop_oneof![
        3 => Just(Availability::Ready),
        1 => Just(Availability::Drain),
        1 => Just(Availability::Full),
        1 => Just(Availability::Maintenance),
        1 => Just(Availability::Down),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Over one cycle (sum of weights picks), smooth WRR gives each server
    /// exactly its weight.
    #[test]
    fn wrr_exact_proportions(weights in proptest::collection::vec(1u32..12, 1..7), cycles in 1usize..3) {
        let s = servers(&weights);
        let sel = build(&Algorithm::WeightedRoundRobin, &s);
        let e = ready(&s);
        let total: u32 = weights.iter().sum();
        for _ in 0..cycles {
            let mut counts = vec![0u32; s.len()];
            for _ in 0..total {
                counts[pick(&*sel, &s, &e).unwrap()] += 1;
            }
            prop_assert_eq!(&counts, &weights);
        }
    }

    /// No algorithm returns a server that cannot take new traffic while one
    /// can; candidates are distinct, bounded and backups come only when no
    /// primary is usable.
    #[test]
    fn unusable_servers_never_chosen(
        avail in proptest::collection::vec(avail_strategy(), 1..12),
        backups in proptest::collection::vec(any::<bool>(), 12),
        loads in proptest::collection::vec(0u8..5, 12),
    ) {
        let mut s = servers(&vec![2; avail.len()]);
        for (i, srv) in s.iter_mut().enumerate() { srv.backup = backups[i]; }
        let _held: Vec<_> = s.iter().enumerate()
            .flat_map(|(i, srv)| (0..loads[i]).map(|_| srv.stats.start_request()).collect::<Vec<_>>())
            .collect();
        let e = EligibilityTable { availability: avail.clone(), weights: vec![2; avail.len()] };
        let any_primary = (0..s.len()).any(|i| avail[i] == Availability::Ready && !s[i].backup);
        let any_usable = avail.contains(&Availability::Ready);
        for alg in all_algorithms() {
            let sel = build(&alg, &s);
            for k in 0..5 {
                let c = sel.select(&key_req(k).key(), &s, &e);
                prop_assert_eq!(c.is_empty(), !any_usable, "{:?}", alg);
                prop_assert!(c.len() <= MAX_CANDIDATES);
                let mut seen = std::collections::HashSet::new();
                for i in c.iter() {
                    prop_assert!(seen.insert(i), "duplicate in {:?}", c);
                    prop_assert_eq!(avail[i], Availability::Ready, "{:?} chose {} in {:?}", alg, i, c);
                    if any_primary { prop_assert!(!s[i].backup, "{:?} chose backup", alg); }
                }
            }
        }
    }

    /// Two selectors built independently (two Remora instances) pick the
    /// same server for the same key.
    #[test]
    fn hash_is_deterministic_across_instances(n in 1usize..12, keys in proptest::collection::vec(any::<u32>(), 1..50), factor in prop_oneof![Just(0u32), Just(125)]) {
        let a = servers(&vec![1; n]);
        let b = servers(&vec![1; n]);
        let alg = Algorithm::Hash { key: HashKey::SourceIp, balance_factor: factor };
        let (sa, sb) = (build(&alg, &a), build(&alg, &b));
        let (ea, eb) = (ready(&a), ready(&b));
        for k in keys {
            let r = key_req(k);
            prop_assert_eq!(sa.select(&r.key(), &a, &ea), sb.select(&r.key(), &b, &eb));
        }
    }

    /// Removing one of N servers (by reload: rebuilt table) moves at most
    /// about 1/N of the keys; marking it down (same table) moves only its
    /// own keys.
    #[test]
    fn removing_a_server_moves_few_keys(n in 3usize..12, removed in 0usize..12) {
        let removed = removed % n;
        let all = servers(&vec![1; n]);
        let rest: Vec<ServerEntry> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
        let alg = Algorithm::Hash { key: HashKey::SourceIp, balance_factor: 0 };
        let (before, after) = (build(&alg, &all), build(&alg, &rest));
        let (eb, ea) = (ready(&all), ready(&rest));
        let mut down = ready(&all);
        down.set(removed, Availability::Down);
        let keys = 4000u32;
        let mut moved = 0;
        for k in 0..keys {
            let r = key_req(k.wrapping_mul(2_654_435_761));
            let x = before.select(&r.key(), &all, &eb).first().unwrap();
            let y = after.select(&r.key(), &rest, &ea).first().unwrap();
            if all[x].name != rest[y].name { moved += 1; }
            let z = before.select(&r.key(), &all, &down).first().unwrap();
            if x != removed { prop_assert_eq!(z, x); } else { prop_assert_ne!(z, removed); }
        }
        let frac = f64::from(moved) / f64::from(keys);
        prop_assert!(frac <= 1.0 / n as f64 + 0.05, "moved {:.3} of keys with n={}", frac, n);
    }

    /// With bounded loads, while requests pile up, no server ever holds more
    /// than ceil(factor x average), i.e. factor x average + 1.
    #[test]
    fn bounded_loads_cap_every_server(n in 2usize..10, factor in 100u32..300, keys in proptest::collection::vec(0u32..4, 50..300)) {
        let s = servers(&vec![1; n]);
        let e = ready(&s);
        let sel = build(&Algorithm::Hash { key: HashKey::SourceIp, balance_factor: factor }, &s);
        let mut held = Vec::new();
        // Only 4 distinct keys: without the bound they would pile on <= 4 servers.
        for (m, k) in keys.iter().enumerate() {
            let i = sel.select(&key_req(*k).key(), &s, &e).first().unwrap();
            held.push(s[i].stats.start_request());
            let total = (m + 1) as f64;
            let cap = (f64::from(factor) / 100.0 * total / n as f64).ceil() as u64;
            for srv in &s {
                prop_assert!(srv.stats.active_requests() <= cap,
                    "load {} over cap {} (total {}, n {}, factor {})", srv.stats.active_requests(), cap, total, n, factor);
            }
        }
    }

    /// Weighted Maglev gives slots in proportion to weights.
    #[test]
    fn maglev_respects_weights(w in proptest::collection::vec(1u32..5, 2..5)) {
        let s = servers(&w);
        let e = ready(&s);
        let sel = hash::HashSelector::new(HashKey::SourceIp, 0, &s);
        let mut counts = HashMap::new();
        let samples = 20_000u64;
        for k in 0..samples {
            let i = sel.select_hash(hash::key_hash(&k.to_be_bytes()), &s, &e).first().unwrap();
            *counts.entry(i).or_insert(0u64) += 1;
        }
        let total_w: u32 = w.iter().sum();
        for (i, wi) in w.iter().enumerate() {
            let share = *counts.get(&i).unwrap_or(&0) as f64 / samples as f64;
            let want = f64::from(*wi) / f64::from(total_w);
            prop_assert!((share - want).abs() < 0.05, "server {} share {:.3} want {:.3}", i, share, want);
        }
    }
}
