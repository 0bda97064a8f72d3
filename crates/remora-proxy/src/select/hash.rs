//! Consistent hashing: the fixed hash function, the Maglev table, bounded
//! loads and rendezvous hashing.
//!
//! # The hash (identical on every Remora instance)
//! Every key is hashed with **SipHash-1-3** (crate `siphasher`) under the
//! fixed 128-bit key `k0 = u64::from_le_bytes(*b"remora-h")`,
//! `k1 = u64::from_le_bytes(*b"ash-v1\0\0")` ([`HASH_K0`], [`HASH_K1`]).
//! The input is one domain byte followed by the key bytes:
//! `0` request key, `1` Maglev offset of a server name, `2` Maglev skip of
//! a server name, `3` rendezvous score (key bytes, `0xff`, server name).
//! Request keys: client IP as 4 (IPv4, also IPv4-mapped IPv6) or 16 bytes;
//! header value bytes; cookie value bytes; URI path and query bytes.
//! Changing any of this moves clients between servers: it is versioned
//! (`v1` in the key) and must not change silently.
//!
//! The seed is public, so a client can craft keys that land on one server;
//! bounded loads (`balance_factor`) cap what that can do.
//!
//! # Maglev
//! A lookup table of [`MAGLEV_TABLE_SIZE`] (a prime) slots filled by each
//! server's permutation `(offset + j * skip) mod M`, in turns proportional
//! to the configured weights. A key maps to slot `hash mod M`; when that
//! server cannot take it (not usable, or over its bounded load) the walk
//! goes on to the next slots, which hold the other servers in a key-specific
//! order. Removing one of N servers moves about 1/N of the keys.
//!
//! # Bounded loads
//! With `balance_factor = c` (percent, at least 100 when not 0), a server
//! may take a new request only while
//! `active + 1 <= ceil(c/100 * (total + 1) * w / W)`, where `total` is the sum of active requests of the
//! competing servers, `w` the server's effective weight and `W` the sum of
//! their weights. With equal weights no server exceeds `c/100` times the
//! average load, plus one.

use std::hash::Hasher as _;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

use super::{
    Algorithm, Eligibility, Fallbacks, HashKey, MAX_CANDIDATES, RequestKey, Selector, ServerEntry,
    Tier, weight_of,
};
use crate::fields::ClientFields;
use crate::select::Availability;

/// First half of the fixed SipHash-1-3 key (`b"remora-h"`, little endian).
pub const HASH_K0: u64 = u64::from_le_bytes(*b"remora-h");
/// Second half of the fixed SipHash-1-3 key (`b"ash-v1\0\0"`, little endian).
pub const HASH_K1: u64 = u64::from_le_bytes(*b"ash-v1\0\0");
/// Slots in a Maglev table (prime).
pub const MAGLEV_TABLE_SIZE: usize = 65537;

const DOMAIN_KEY: u8 = 0;
const DOMAIN_OFFSET: u8 = 1;
const DOMAIN_SKIP: u8 = 2;
const DOMAIN_RENDEZVOUS: u8 = 3;

fn sip(domain: u8, parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher13::new_with_keys(HASH_K0, HASH_K1);
    h.write(&[domain]);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// The fixed hash of a request key (domain 0).
pub fn key_hash(bytes: &[u8]) -> u64 {
    sip(DOMAIN_KEY, &[bytes])
}

/// Bytes of an IP address: 4 for IPv4 (IPv4-mapped IPv6 included), else 16.
pub fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Values of the cookie `name` in the request's `Cookie` headers, in order.
/// Malformed pairs and non-UTF-8 headers are skipped.
pub fn request_cookies<'h>(
    fields: ClientFields<'h>,
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    fields
        .get_all("cookie")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, val) = pair.split_once('=')?;
            (n.trim() == name).then(|| val.trim().trim_matches('"'))
        })
}

/// The bytes the hash algorithm hashes for `key`.
pub fn request_key_bytes(key: &HashKey, req: &RequestKey<'_>) -> Vec<u8> {
    match key {
        HashKey::SourceIp => ip_key(req.client_ip),
        HashKey::Header(name) => match req.fields.get(name.as_str()) {
            Some(v) => v.to_vec(),
            None => ip_key(req.client_ip),
        },
        HashKey::Cookie(name) => match request_cookies(req.fields, name).next() {
            Some(v) => v.as_bytes().to_vec(),
            None => ip_key(req.client_ip),
        },
        HashKey::Uri => req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().as_bytes().to_vec())
            .unwrap_or_else(|| b"/".to_vec()),
    }
}

/// A Maglev lookup table over some servers of a pool.
#[derive(Clone)]
pub struct Maglev {
    /// Server index per slot.
    table: Vec<u32>,
}

impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maglev")
            .field("size", &self.table.len())
            .finish()
    }
}

impl Maglev {
    /// Builds the table for `members` (server index, name, weight) with
    /// [`MAGLEV_TABLE_SIZE`] slots; `None` when there is no member.
    pub fn build(members: &[(usize, &str, u32)]) -> Option<Self> {
        Self::build_with_size(members, MAGLEV_TABLE_SIZE)
    }

    fn build_with_size(members: &[(usize, &str, u32)], size: usize) -> Option<Self> {
        let members = &members[..members.len().min(size)];
        if members.is_empty() || size < 2 {
            return None;
        }
        let m = size as u64;
        let perm: Vec<(u64, u64)> = members
            .iter()
            .map(|(_, name, _)| {
                let offset = sip(DOMAIN_OFFSET, &[name.as_bytes()]) % m;
                let skip = sip(DOMAIN_SKIP, &[name.as_bytes()]) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = members.iter().map(|m| u64::from(m.2.max(1))).max()?;
        let mut next = vec![0u64; members.len()];
        let mut counts = vec![0u64; members.len()];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0usize;
        let mut iteration: u64 = 0;
        while filled < size {
            iteration += 1;
            for (k, member) in members.iter().enumerate() {
                let w = u64::from(member.2.max(1));
                // Weighted turns: a server of weight w takes about w/max_w
                // slots per round.
                if counts[k] * max_w > iteration * w {
                    continue;
                }
                let (offset, skip) = perm[k];
                loop {
                    let c = ((offset + next[k] % m * skip) % m) as usize;
                    next[k] += 1;
                    if table[c] == u32::MAX {
                        table[c] = u32::try_from(member.0).unwrap_or(u32::MAX - 1);
                        counts[k] += 1;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Some(Self { table })
    }

    /// The servers in the order a key with `hash` prefers them, each once,
    /// only those `admit` accepts; stops as soon as `done(order so far)`
    /// says so, or when every server was seen.
    fn walk(
        &self,
        hash: u64,
        servers: usize,
        mut admit: impl FnMut(usize) -> bool,
        mut done: impl FnMut(&[usize]) -> bool,
    ) -> Vec<usize> {
        let size = self.table.len();
        let start = (hash % size as u64) as usize;
        let mut seen = vec![false; servers];
        let mut unseen = servers;
        let mut out: Vec<usize> = Vec::new();
        for step in 0..size {
            let i = self.table[(start + step) % size] as usize;
            match seen.get_mut(i) {
                Some(s) if !*s => {
                    *s = true;
                    unseen -= 1;
                }
                _ => continue,
            }
            if admit(i) {
                out.push(i);
                if done(&out) {
                    break;
                }
            }
            if unseen == 0 {
                break;
            }
        }
        out
    }

    /// The server of slot `hash mod M`, ignoring availability.
    pub fn home(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }
}

/// Bounded loads of one call: whether a server may take one more request.
struct Capacity {
    /// `factor x (total + 1)`; 0 when the bound is off.
    scaled: u128,
    /// `100 x total weight`.
    denom: u128,
}

impl Capacity {
    fn new(servers: &[ServerEntry], elig: &dyn Eligibility, tier: Tier, factor: u32) -> Self {
        if factor == 0 {
            return Self {
                scaled: 0,
                denom: 1,
            };
        }
        let mut total: u128 = 0;
        let mut total_w: u128 = 0;
        for i in tier.members(servers, elig) {
            total += u128::from(servers[i].stats.active_requests());
            total_w += u128::from(weight_of(elig, i));
        }
        Self {
            scaled: u128::from(factor.max(100)) * (total + 1),
            denom: 100 * total_w.max(1),
        }
    }

    /// Server `i` is under `ceil(factor x (total + 1) x w / (100 x W))`.
    fn admits(&self, servers: &[ServerEntry], elig: &dyn Eligibility, i: usize) -> bool {
        if self.scaled == 0 {
            return true;
        }
        let cap = (self.scaled * u128::from(weight_of(elig, i))).div_ceil(self.denom);
        u128::from(servers[i].stats.active_requests()) < cap
    }
}

/// Takes the first server of `order` (competing servers in preference
/// order) that is within its bounded load (the first of all if none is),
/// then the rest of `order` as fallbacks.
fn bounded(
    order: &[usize],
    servers: &[ServerEntry],
    elig: &dyn Eligibility,
    cap: &Capacity,
) -> Fallbacks {
    let mut out = Fallbacks::new();
    if let Some(c) = order
        .iter()
        .copied()
        .find(|&i| cap.admits(servers, elig, i))
        .or_else(|| order.first().copied())
    {
        out.push(c);
    }
    for &i in order {
        if out.len() >= MAX_CANDIDATES {
            break;
        }
        out.push(i);
    }
    out
}

/// The `hash` algorithm: Maglev over the non-backup servers (and one over
/// the backups), bounded loads, fixed seed (see the module docs).
#[derive(Debug)]
pub struct HashSelector {
    key: HashKey,
    balance_factor: u32,
    primary: Option<Maglev>,
    backup: Option<Maglev>,
}

impl HashSelector {
    /// Builds the tables for a snapshot of `servers`.
    pub fn new(key: HashKey, balance_factor: u32, servers: &[ServerEntry]) -> Self {
        let members = |backup: bool| -> Vec<(usize, &str, u32)> {
            servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.backup == backup)
                .map(|(i, s)| (i, &*s.name, s.weight))
                .collect()
        };
        Self {
            key,
            balance_factor,
            primary: Maglev::build(&members(false)),
            backup: Maglev::build(&members(true)),
        }
    }

    /// Candidates for a raw key hash (what [`Selector::select`] uses after
    /// extracting and hashing the request key).
    pub fn select_hash(
        &self,
        hash: u64,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks {
        let tier = Tier::of(servers, elig);
        let table = if tier.backup {
            &self.backup
        } else {
            &self.primary
        };
        let Some(table) = table else {
            return Fallbacks::new();
        };
        if tier.count == 0 {
            return Fallbacks::new();
        }
        let cap = Capacity::new(servers, elig, tier, self.balance_factor);
        // Stop once a server within its bound was found and the list of
        // candidates is full, or every competing server was seen.
        let mut found = false;
        let order = table.walk(
            hash,
            servers.len(),
            |i| tier.admits(servers, elig, i),
            |order| {
                let last = order[order.len() - 1];
                found = found || cap.admits(servers, elig, last);
                (found && order.len() >= MAX_CANDIDATES) || order.len() >= tier.count
            },
        );
        bounded(&order, servers, elig, &cap)
    }
}

impl Selector for HashSelector {
    fn select(
        &self,
        req: &RequestKey<'_>,
        servers: &[ServerEntry],
        elig: &dyn Eligibility,
    ) -> Fallbacks {
        let hash = key_hash(&request_key_bytes(&self.key, req));
        self.select_hash(hash, servers, elig)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::Hash {
            key: self.key.clone(),
            balance_factor: self.balance_factor,
        }
    }
}

/// Weighted rendezvous score of `server_name` for `key` (higher wins).
fn rendezvous_score(key: &[u8], server_name: &str, weight: u32) -> f64 {
    let h = sip(DOMAIN_RENDEZVOUS, &[key, &[0xff], server_name.as_bytes()]);
    // Uniform in (0, 1): 53 high bits, centred.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// Rendezvous (highest random weight) hashing of `key` over the competing
/// servers, with bounded loads (`balance_factor` as for `hash`). Used for
/// the deterministic affinity repin target and the stateless stick mode:
/// any instance, given the same key and the same usable servers, answers
/// the same.
pub fn rendezvous(
    key: &[u8],
    servers: &[ServerEntry],
    elig: &dyn Eligibility,
    balance_factor: u32,
) -> Fallbacks {
    let tier = Tier::of(servers, elig);
    let mut scored: Vec<(f64, usize)> = tier
        .members(servers, elig)
        .map(|i| {
            (
                rendezvous_score(key, &servers[i].name, servers[i].weight),
                i,
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let order: Vec<usize> = scored.into_iter().map(|(_, i)| i).collect();
    bounded(
        &order,
        servers,
        elig,
        &Capacity::new(servers, elig, tier, balance_factor),
    )
}

/// The rendezvous winner for `key` among all non-backup servers (all
/// backups if there is no other), whatever their availability: the server
/// a key is "pinned" to in stateless mode.
pub fn rendezvous_home(key: &[u8], servers: &[ServerEntry]) -> Option<usize> {
    let any_primary = servers.iter().any(|s| !s.backup);
    servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.backup != any_primary)
        .map(|(i, s)| (rendezvous_score(key, &s.name, s.weight), i))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
}

/// An [`Eligibility`] that also rules out one server (counted as down).
pub struct Excluding<'a> {
    /// The underlying view.
    pub inner: &'a dyn Eligibility,
    /// The server ruled out.
    pub index: usize,
}

impl Eligibility for Excluding<'_> {
    fn availability(&self, index: usize) -> Availability {
        if index == self.index {
            Availability::Down
        } else {
            self.inner.availability(index)
        }
    }

    fn effective_weight(&self, index: usize) -> u32 {
        self.inner.effective_weight(index)
    }
}
