//! Tests of affinity: outcomes, repin determinism, drain, expiry, tables.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use remora_seal::{Key, Keyring, Purpose, Sealer};

use super::*;
use crate::select::testutil::{Req, named, ready};
use crate::select::{Algorithm, EligibilityTable, Selector, build};

fn sealer(seed: u8) -> Arc<Sealer> {
    let ring = Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).expect("one key");
    Arc::new(Sealer::new(&ring, Purpose::Affinity))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const T0: u64 = 1_800_000_000;

struct Pool {
    servers: Vec<ServerEntry>,
    elig: EligibilityTable,
    selector: Box<dyn Selector>,
    affinity: Affinity,
}

impl Pool {
    fn new(mode: AffinityMode, f: impl FnOnce(&mut AffinityConfig)) -> Self {
        Self::with_sealer(mode, f, sealer(1))
    }

    fn with_sealer(
        mode: AffinityMode,
        f: impl FnOnce(&mut AffinityConfig),
        sealer: Arc<Sealer>,
    ) -> Self {
        let servers = named(&["b1", "b2", "b3", "b4", "b5"]);
        let elig = ready(&servers);
        let selector = build(&Algorithm::RoundRobin, &servers);
        let mut cfg = AffinityConfig::new("app", mode);
        f(&mut cfg);
        let affinity = Affinity::new(cfg, sealer).expect("valid config");
        Self {
            servers,
            elig,
            selector,
            affinity,
        }
    }

    fn resolve(&self, req: &Req, now: u64) -> Decision {
        self.affinity.resolve(
            &req.key(),
            &self.servers,
            &self.elig,
            &*self.selector,
            at(now),
        )
    }

    /// Resolve and answer from the first candidate; returns the decision
    /// and the Set-Cookie.
    fn request(&self, req: &Req, now: u64) -> (Decision, Option<HeaderValue>) {
        self.request_on(req, now, &mut OpenedCookie::default())
    }

    /// [`Pool::request`] on a client connection whose opened cookie is
    /// `opened` (`resolve_with`, `on_response_with`).
    fn request_on(
        &self,
        req: &Req,
        now: u64,
        opened: &mut OpenedCookie,
    ) -> (Decision, Option<HeaderValue>) {
        let d = self.affinity.resolve_with(
            &req.key(),
            &self.servers,
            &self.elig,
            &*self.selector,
            at(now),
            opened,
        );
        let served = d.server().expect("a server");
        let sc = self.affinity.on_response_with(
            &d,
            served,
            &self.servers,
            &HeaderMap::new(),
            at(now),
            opened,
        );
        (d, sc)
    }

    fn index(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| &*s.name == name)
            .expect("server")
    }
}

/// The `NAME=value` part of a Set-Cookie, as a request with that cookie.
fn with_cookie(set_cookie: &HeaderValue) -> Req {
    let s = set_cookie.to_str().expect("ascii");
    let pair = s.split(';').next().expect("pair");
    Req::new().header("cookie", pair)
}

fn cookie_pool() -> Pool {
    Pool::new(AffinityMode::Cookie, |_| {})
}

#[test]
fn outcome_labels() {
    assert_eq!(Outcome::New.to_string(), "new");
    assert_eq!(Outcome::Hit.to_string(), "hit");
    assert_eq!(Outcome::Repin(RepinReason::Down).to_string(), "repin");
    assert_eq!(Outcome::Expired.to_string(), "expired");
    assert_eq!(Outcome::Invalid.to_string(), "invalid");
    assert_eq!(RepinReason::ConnectFailed.to_string(), "connect_failed");
    assert_eq!(RepinReason::Removed.as_str(), "removed");
    assert_eq!(RepinReason::Maintenance.as_str(), "maintenance");
}

#[test]
fn cookie_new_then_hit_with_attributes_and_no_clear_name() {
    let p = cookie_pool();
    let (d, sc) = p.request(&Req::new(), T0);
    assert_eq!(d.outcome(), Some(Outcome::New));
    let sc = sc.expect("a new pin sets the cookie");
    let text = sc.to_str().expect("ascii");
    assert!(text.starts_with("REMORA_AFFINITY="), "{text}");
    assert!(text.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{text}");
    let pinned = d.server().expect("server");
    // No name in clear. A name in clear would be in every cookie's bytes;
    // by chance (short names, random bytes) it is in one now and then: so
    // look at five new pins, each for its own server's name.
    let in_clear = |t: &str, name: &str| {
        use base64::Engine as _;
        let value = t
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v)
            .unwrap_or("");
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map(|b| b.windows(name.len()).any(|w| w == name.as_bytes()))
            .unwrap_or(true)
    };
    let leaks = (0..5)
        .filter(|_| {
            let (d, c) = p.request(&Req::new(), T0);
            let name = &p.servers[d.server().expect("server")].name;
            in_clear(c.expect("cookie").to_str().expect("ascii"), name)
        })
        .count();
    assert!(leaks < 5, "server name in clear in every cookie");
    // 50 requests stick, and no cookie is re-sent within the refresh interval.
    let req = with_cookie(&sc);
    for k in 0..50 {
        let (d, sc) = p.request(&req, T0 + k);
        assert_eq!(d.outcome(), Some(Outcome::Hit));
        assert_eq!(d.server(), Some(pinned));
        assert!(sc.is_none());
    }
    // TLS adds Secure.
    let mut tls = Req::new();
    tls.tls = true;
    let (_, sc) = p.request(&tls, T0);
    assert!(
        sc.expect("cookie")
            .to_str()
            .expect("ascii")
            .contains("; Secure")
    );
}

#[test]
fn cookie_refresh_at_most_once_a_minute_and_idle_expiry() {
    let p = Pool::new(AffinityMode::Cookie, |c| {
        c.max_idle = Some(Duration::from_secs(600));
    });
    let (d, sc) = p.request(&Req::new(), T0);
    let pinned = d.server();
    let sc = sc.expect("cookie");
    assert!(p.request(&with_cookie(&sc), T0 + 59).1.is_none());
    let refreshed = p.request(&with_cookie(&sc), T0 + 60).1.expect("refresh");
    // The refreshed cookie keeps the client pinned past the old idle limit.
    let (d2, _) = p.request(&with_cookie(&refreshed), T0 + 60 + 590);
    assert_eq!(d2.outcome(), Some(Outcome::Hit));
    assert_eq!(d2.server(), pinned);
    // The old cookie replayed after its idle limit: expired, new cookie.
    let (d3, sc3) = p.request(&with_cookie(&sc), T0 + 601);
    assert_eq!(d3.outcome(), Some(Outcome::Expired));
    assert!(sc3.is_some());
}

#[test]
fn a_connection_that_ignores_the_refresh_is_refreshed_once_a_minute() {
    let p = Pool::new(AffinityMode::Cookie, |c| {
        c.max_idle = Some(Duration::from_secs(600));
    });
    let (d, sc) = p.request(&Req::new(), T0);
    let pinned = d.server();
    let old = with_cookie(&sc.expect("cookie"));
    // One connection keeps sending the cookie of T0, ignoring refreshes.
    let mut conn = OpenedCookie::default();
    assert!(p.request_on(&old, T0 + 30, &mut conn).1.is_none());
    assert!(p.request_on(&old, T0 + 60, &mut conn).1.is_some());
    for t in [T0 + 61, T0 + 90, T0 + 119] {
        let (d, sc) = p.request_on(&old, t, &mut conn);
        assert_eq!((d.outcome(), d.server()), (Some(Outcome::Hit), pinned));
        assert!(sc.is_none(), "refreshed again at {t}");
    }
    assert!(p.request_on(&old, T0 + 120, &mut conn).1.is_some());
    // Another connection with the same cookie: refreshed, as without
    // the memo.
    assert!(
        p.request_on(&old, T0 + 121, &mut OpenedCookie::default())
            .1
            .is_some()
    );
    // Kept in use on its connection, the client stays pinned past the
    // sealed idle limit; elsewhere that cookie has expired.
    for k in 3..=11 {
        let (d, _) = p.request_on(&old, T0 + k * 60, &mut conn);
        assert_eq!((d.outcome(), d.server()), (Some(Outcome::Hit), pinned));
    }
    let (d, _) = p.request_on(&old, T0 + 660, &mut OpenedCookie::default());
    assert_eq!(d.outcome(), Some(Outcome::Expired));
    // A connection that takes the new cookie opens it and goes on.
    let (_, sc) = p.request_on(&old, T0 + 720, &mut conn);
    let new = with_cookie(&sc.expect("refresh"));
    let (d, sc) = p.request_on(&new, T0 + 721, &mut conn);
    assert_eq!((d.outcome(), d.server()), (Some(Outcome::Hit), pinned));
    assert!(sc.is_none());
}

#[test]
fn cookie_max_life_is_enforced_from_the_sealed_issue_time() {
    let p = Pool::new(AffinityMode::Cookie, |c| {
        c.max_life = Some(Duration::from_secs(3600));
    });
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    assert!(sc.to_str().expect("ascii").contains("Max-Age=3600"));
    // Keep refreshing: life still ends at issue + max_life.
    let mut cur = sc;
    for k in 1..=59 {
        if let (d, Some(new)) = p.request(&with_cookie(&cur), T0 + k * 60) {
            assert_eq!(d.outcome(), Some(Outcome::Hit));
            cur = new;
        }
    }
    let (d, _) = p.request(&with_cookie(&cur), T0 + 3601);
    assert_eq!(d.outcome(), Some(Outcome::Expired));
}

#[test]
fn tampered_or_foreign_cookie_is_invalid_and_repinned_fresh() {
    let p = cookie_pool();
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    let text = sc.to_str().expect("ascii").to_owned();
    let (pair, _) = text.split_once(';').expect("pair");
    let mut bytes = pair.as_bytes().to_vec();
    let last = bytes.len() - 3;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    let (d, sc2) = p.request(&Req::new().header("cookie", &tampered), T0);
    assert_eq!(d.outcome(), Some(Outcome::Invalid));
    assert!(sc2.is_some());
    // Sealed under another keyring: invalid too.
    let other = Pool::with_sealer(AffinityMode::Cookie, |_| {}, sealer(9));
    let (d, _) = other.request(&Req::new().header("cookie", pair), T0);
    assert_eq!(d.outcome(), Some(Outcome::Invalid));
    // Garbage.
    let (d, _) = p.request(&Req::new().header("cookie", "REMORA_AFFINITY=%%%"), T0);
    assert_eq!(d.outcome(), Some(Outcome::Invalid));
}

#[test]
fn a_remembered_cookie_still_expires_and_a_changed_one_is_opened_again() {
    let p = Pool::new(AffinityMode::Cookie, |c| {
        c.max_idle = Some(Duration::from_secs(600));
    });
    let mut opened = OpenedCookie::default();
    let resolve = |req: &Req, now: u64, opened: &mut OpenedCookie| {
        p.affinity.resolve_with(
            &req.key(),
            &p.servers,
            &p.elig,
            &*p.selector,
            at(now),
            opened,
        )
    };
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    let req = with_cookie(&sc);
    let first = resolve(&req, T0 + 1, &mut opened);
    assert_eq!(first.outcome(), Some(Outcome::Hit));
    assert!(
        opened.get(pair(&sc)).is_some(),
        "the opened cookie is remembered"
    );
    // The same value again: the same pin, from memory.
    let again = resolve(&req, T0 + 2, &mut opened);
    assert_eq!(again.outcome(), Some(Outcome::Hit));
    assert_eq!(again.server(), first.server());
    // Remembered or not, expiry is checked on every request.
    let late = resolve(&req, T0 + 601, &mut opened);
    assert_eq!(late.outcome(), Some(Outcome::Expired));
    // A tampered value is not taken for the remembered one.
    let text = sc.to_str().expect("ascii").split(';').next().expect("pair");
    let mut bytes = text.as_bytes().to_vec();
    let last = bytes.len() - 3;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    let d = resolve(&Req::new().header("cookie", &tampered), T0 + 3, &mut opened);
    assert_eq!(d.outcome(), Some(Outcome::Invalid));
    // Another pool's Affinity (another key) with that memory still refuses it.
    let other = Pool::with_sealer(AffinityMode::Cookie, |_| {}, sealer(9));
    let mut fresh = OpenedCookie::default();
    let d = other.affinity.resolve_with(
        &req.key(),
        &other.servers,
        &other.elig,
        &*other.selector,
        at(T0 + 4),
        &mut fresh,
    );
    assert_eq!(d.outcome(), Some(Outcome::Invalid));
}

/// The cookie value of a Set-Cookie.
fn pair(set_cookie: &HeaderValue) -> &str {
    let s = set_cookie.to_str().expect("ascii");
    let pair = s.split(';').next().expect("pair");
    pair.split_once('=').expect("name=value").1
}

#[test]
fn another_instance_with_the_same_key_honours_the_cookie() {
    let a = cookie_pool();
    let b = cookie_pool();
    let (d, sc) = a.request(&Req::new(), T0);
    let (d2, _) = b.request(&with_cookie(&sc.expect("cookie")), T0 + 1);
    assert_eq!(d2.outcome(), Some(Outcome::Hit));
    assert_eq!(d2.server(), d.server());
}

#[test]
fn drain_keeps_pinned_clients_and_takes_no_new_ones() {
    let mut p = cookie_pool();
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    let pinned = p.request(&with_cookie(&sc), T0).0.server().expect("server");
    p.elig.set(pinned, Availability::Drain);
    for _ in 0..20 {
        let (d, _) = p.request(&with_cookie(&sc), T0 + 1);
        assert_eq!(d.outcome(), Some(Outcome::Hit));
        assert_eq!(d.server(), Some(pinned));
        let (d, _) = p.request(&Req::new(), T0 + 1);
        assert_eq!(d.outcome(), Some(Outcome::New));
        assert_ne!(d.server(), Some(pinned));
    }
}

#[test]
fn repin_is_deterministic_and_issues_a_new_cookie() {
    let mut p = cookie_pool();
    let b = cookie_pool(); // another instance, same key
    let clients: Vec<HeaderValue> = (0..40)
        .map(|_| p.request(&Req::new(), T0).1.expect("cookie"))
        .collect();
    let victim = p.index("b2");
    p.elig.set(victim, Availability::Down);
    let mut b = b;
    b.elig.set(victim, Availability::Down);
    let mut moved = 0;
    for sc in &clients {
        let req = with_cookie(sc);
        let first = p.resolve(&req, T0 + 5);
        if first.pinned_server() != Some(victim) {
            assert_eq!(first.outcome(), Some(Outcome::Hit));
            continue;
        }
        moved += 1;
        assert_eq!(first.outcome(), Some(Outcome::Repin(RepinReason::Down)));
        let target = first.server().expect("repin target");
        assert_ne!(target, victim);
        // Concurrent requests with the same stale cookie, here and on
        // another instance: same target.
        for _ in 0..3 {
            assert_eq!(p.resolve(&req, T0 + 5).server(), Some(target));
            assert_eq!(b.resolve(&req, T0 + 6).server(), Some(target));
        }
        let new = p
            .affinity
            .on_response(&first, target, &p.servers, &HeaderMap::new(), at(T0 + 5))
            .expect("repin sets a new cookie");
        let (d, _) = p.request(&with_cookie(&new), T0 + 7);
        assert_eq!(d.outcome(), Some(Outcome::Hit));
        assert_eq!(d.server(), Some(target));
    }
    assert_eq!(moved, 8, "round-robin pinned 40 clients over 5 servers");
}

#[test]
fn maintenance_removed_and_strict() {
    let mut p = cookie_pool();
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    let req = with_cookie(&sc);
    let pinned = p.resolve(&req, T0).server().expect("server");
    p.elig.set(pinned, Availability::Maintenance);
    assert_eq!(
        p.resolve(&req, T0).outcome(),
        Some(Outcome::Repin(RepinReason::Maintenance))
    );
    // Removed by reload: the name is gone from the snapshot.
    p.elig = ready(&p.servers);
    let gone = p.servers.remove(pinned);
    p.elig = ready(&p.servers);
    let d = p.resolve(&req, T0);
    assert_eq!(d.outcome(), Some(Outcome::Repin(RepinReason::Removed)));
    assert!(d.server().is_some());
    assert!(p.servers.iter().all(|s| s.name != gone.name));
    // Strict: refused instead of repinned.
    let mut s = Pool::new(AffinityMode::Cookie, |c| c.strict = true);
    let sc = s.request(&Req::new(), T0).1.expect("cookie");
    let req = with_cookie(&sc);
    let pinned = s.resolve(&req, T0).server().expect("server");
    s.elig.set(pinned, Availability::Down);
    let d = s.resolve(&req, T0);
    assert!(d.is_refused());
    assert!(d.candidates().is_empty());
    assert_eq!(d.outcome(), Some(Outcome::Repin(RepinReason::Down)));
    assert!(
        s.affinity
            .on_response(&d, 0, &s.servers, &HeaderMap::new(), at(T0))
            .is_none()
    );
}

#[test]
fn connect_failure_repins_to_the_hit_fallback() {
    let p = cookie_pool();
    let sc = p.request(&Req::new(), T0).1.expect("cookie");
    let req = with_cookie(&sc);
    let hit = p.resolve(&req, T0);
    let pinned = hit.server().expect("server");
    let after = p
        .affinity
        .repin_after_failure(&hit, pinned, &p.servers, &p.elig);
    assert_eq!(
        after.outcome(),
        Some(Outcome::Repin(RepinReason::ConnectFailed))
    );
    let target = after.server().expect("target");
    assert_ne!(target, pinned);
    // A hit carries the pinned server only; the repin target is computed
    // when it is needed.
    assert_eq!(hit.candidates().as_slice(), &[pinned]);
    let new = p
        .affinity
        .on_response(&after, target, &p.servers, &HeaderMap::new(), at(T0))
        .expect("new cookie");
    assert_eq!(p.request(&with_cookie(&new), T0).0.server(), Some(target));
}

#[test]
fn app_cookie_learns_and_honours_route_suffix() {
    let p = Pool::new(
        AffinityMode::AppCookie {
            name: "JSESSIONID".into(),
        },
        |c| c.ttl = Duration::from_secs(100),
    );
    // First request: no cookie, the server sets one.
    let d = p.resolve(&Req::new(), T0);
    assert_eq!(d.outcome(), Some(Outcome::New));
    let served = d.server().expect("server");
    let mut resp = HeaderMap::new();
    resp.append(
        "set-cookie",
        HeaderValue::from_static("JSESSIONID=abc123; Path=/; HttpOnly"),
    );
    assert!(
        p.affinity
            .on_response(&d, served, &p.servers, &resp, at(T0))
            .is_none()
    );
    let req = Req::new().header("cookie", "JSESSIONID=abc123");
    for k in 0..10 {
        let d = p.resolve(&req, T0 + k);
        assert_eq!(d.outcome(), Some(Outcome::Hit));
        assert_eq!(d.server(), Some(served));
    }
    assert_eq!(p.affinity.pinned_counts(&p.servers, at(T0))[served], 1);
    // Several cookies of that name: the known one wins wherever it is.
    let two = Req::new().header("cookie", "JSESSIONID=stale; JSESSIONID=abc123");
    assert_eq!(p.resolve(&two, T0 + 10).server(), Some(served));
    // Expired after the TTL without use.
    assert_eq!(p.resolve(&req, T0 + 200).outcome(), Some(Outcome::Expired));
    // Jetty/Tomcat route suffix naming a server, never learned.
    let b4 = p.index("b4");
    let d = p.resolve(&Req::new().header("cookie", "JSESSIONID=zzz.b4"), T0);
    assert_eq!(d.outcome(), Some(Outcome::Hit));
    assert_eq!(d.server(), Some(b4));
    // Deletion by the server forgets the value.
    let d = p.resolve(&req, T0 + 300);
    let s = d.server().expect("server");
    p.affinity
        .on_response(&d, s, &p.servers, &HeaderMap::new(), at(T0 + 300));
    assert_eq!(p.resolve(&req, T0 + 301).outcome(), Some(Outcome::Hit));
    let mut del = HeaderMap::new();
    del.append(
        "set-cookie",
        HeaderValue::from_static("JSESSIONID=abc123; Max-Age=0"),
    );
    let d = p.resolve(&req, T0 + 302);
    p.affinity
        .on_response(&d, s, &p.servers, &del, at(T0 + 302));
    assert_eq!(p.resolve(&req, T0 + 303).outcome(), Some(Outcome::New));
}

fn ip_req(last: u8) -> Req {
    Req::new().ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
}

#[test]
fn source_ip_table_pins_repins_and_carries_over() {
    let mut p = Pool::new(AffinityMode::SourceIp, |c| c.ttl = Duration::from_secs(60));
    let mut pins = Vec::new();
    for k in 0..10 {
        let (d, sc) = p.request(&ip_req(k), T0);
        assert_eq!(d.outcome(), Some(Outcome::New));
        assert!(sc.is_none());
        pins.push(d.server().expect("server"));
    }
    for k in 0..10u8 {
        let d = p.resolve(&ip_req(k), T0 + 30);
        assert_eq!(d.outcome(), Some(Outcome::Hit));
        assert_eq!(d.server(), Some(pins[usize::from(k)]));
    }
    let counts = p.affinity.pinned_counts(&p.servers, at(T0 + 30));
    assert_eq!(counts.iter().sum::<u64>(), 10);
    assert_eq!(counts, vec![2, 2, 2, 2, 2]);
    // Reload: a new Affinity takes the pins over.
    let cfg = p.affinity.config().clone();
    let next = Affinity::new(cfg, sealer(1)).expect("valid");
    next.carry_over(&p.affinity, at(T0 + 31));
    p.affinity = next;
    assert_eq!(p.resolve(&ip_req(3), T0 + 32).server(), Some(pins[3]));
    // Pinned server down: repin, then the table learns the new server.
    p.elig.set(pins[3], Availability::Down);
    let (d, _) = p.request(&ip_req(3), T0 + 33);
    assert_eq!(d.outcome(), Some(Outcome::Repin(RepinReason::Down)));
    let target = d.server();
    p.elig.set(pins[3], Availability::Ready);
    let d = p.resolve(&ip_req(3), T0 + 34);
    assert_eq!(d.outcome(), Some(Outcome::Hit));
    assert_eq!(d.server(), target);
    // Idle past the TTL: expired.
    assert_eq!(
        p.resolve(&ip_req(3), T0 + 500).outcome(),
        Some(Outcome::Expired)
    );
}

#[test]
fn table_size_is_bounded() {
    let p = Pool::new(AffinityMode::SourceIp, |c| c.table_size = 64);
    for k in 0..2000u32 {
        p.request(&Req::new().ip(IpAddr::V4(Ipv4Addr::from(k))), T0);
    }
    let total: u64 = p.affinity.pinned_counts(&p.servers, at(T0)).iter().sum();
    assert!(total <= 64 + 15, "{total}");
}

#[test]
fn header_mode_stateless_uses_the_consistent_hash() {
    let mut p = Pool::new(
        AffinityMode::Header {
            name: "x-user".parse().expect("name"),
        },
        |c| c.stateless = true,
    );
    let b = Pool::new(
        AffinityMode::Header {
            name: "x-user".parse().expect("name"),
        },
        |c| c.stateless = true,
    );
    let users: Vec<String> = (0..30).map(|k| format!("user{k}")).collect();
    let homes: Vec<usize> = users
        .iter()
        .map(|u| {
            let r = Req::new().header("x-user", u);
            let d = p.resolve(&r, T0);
            assert_eq!(d.outcome(), Some(Outcome::Hit));
            assert_eq!(b.resolve(&r, T0).server(), d.server());
            d.server().expect("server")
        })
        .collect();
    // Not all on one server.
    assert!(homes.iter().any(|&h| h != homes[0]));
    // No header: plain selection, no outcome.
    assert_eq!(p.resolve(&Req::new(), T0).outcome(), None);
    // Home down: repin, others untouched.
    p.elig.set(homes[0], Availability::Down);
    for (u, &h) in users.iter().zip(&homes) {
        let d = p.resolve(&Req::new().header("x-user", u), T0);
        if h == homes[0] {
            assert_eq!(d.outcome(), Some(Outcome::Repin(RepinReason::Down)));
            assert_ne!(d.server(), Some(h));
        } else {
            assert_eq!(d.server(), Some(h));
        }
    }
    assert_eq!(
        p.affinity.pinned_counts(&p.servers, at(T0)),
        vec![0; p.servers.len()]
    );
}

#[test]
fn cookie_mode_counts_pinned_clients() {
    let p = cookie_pool();
    for _ in 0..10 {
        p.request(&Req::new(), T0);
    }
    let counts = p.affinity.pinned_counts(&p.servers, at(T0 + 1));
    assert_eq!(counts, vec![2, 2, 2, 2, 2]);
}

#[test]
fn no_affinity_is_plain_selection() {
    let p = Pool::new(AffinityMode::None, |_| {});
    let (d, sc) = p.request(&Req::new(), T0);
    assert_eq!(d.outcome(), None);
    assert!(sc.is_none());
    assert!(d.server().is_some());
}

#[test]
fn config_parsing_and_validation() {
    assert_eq!(
        AffinityMode::from_config("app-cookie", Some("JSESSIONID"), None),
        Ok(AffinityMode::AppCookie {
            name: "JSESSIONID".into()
        })
    );
    assert_eq!(
        AffinityMode::from_config("header", None, None),
        Err(AffinityConfigError::Missing("header"))
    );
    assert!(AffinityMode::from_config("sticky", None, None).is_err());
    assert!(AffinityMode::from_config("app-cookie", Some("bad name"), None).is_err());
    let mut cfg = AffinityConfig::new("app", AffinityMode::Cookie);
    cfg.cookie = "a;b".into();
    assert!(Affinity::new(cfg, sealer(1)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No cookie or header input makes resolve or on_response panic.
    #[test]
    fn never_panics_on_any_input(
        cookie in proptest::collection::vec(any::<u8>(), 0..700),
        header in proptest::collection::vec(any::<u8>(), 0..300),
        set_cookie in proptest::collection::vec(any::<u8>(), 0..300),
        mode in 0usize..5,
    ) {
        let mode = match mode {
            0 => AffinityMode::Cookie,
            1 => AffinityMode::AppCookie { name: "JSESSIONID".into() },
            2 => AffinityMode::SourceIp,
            3 => AffinityMode::Header { name: "x-user".parse().expect("name") },
            _ => AffinityMode::None,
        };
        let p = Pool::new(mode, |_| {});
        let mut req = Req::new();
        for raw in [cookie.clone(), [b"REMORA_AFFINITY=".as_slice(), &cookie].concat(), [b"JSESSIONID=".as_slice(), &cookie].concat()] {
            if let Ok(v) = HeaderValue::from_bytes(&raw) { req.headers.append("cookie", v); }
        }
        if let Ok(v) = HeaderValue::from_bytes(&header) { req.headers.append("x-user", v); }
        let mut resp = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&[b"JSESSIONID=".as_slice(), &set_cookie].concat()) {
            resp.append("set-cookie", v);
        }
        let d = p.resolve(&req, T0);
        if let Some(s) = d.server() {
            let _ = p.affinity.on_response(&d, s, &p.servers, &resp, at(T0));
            let _ = p.affinity.repin_after_failure(&d, s, &p.servers, &p.elig);
        }
        // An out-of-range server index is ignored, not a panic.
        prop_assert!(p.affinity.on_response(&d, 99, &p.servers, &resp, at(T0)).is_none());
    }
}
