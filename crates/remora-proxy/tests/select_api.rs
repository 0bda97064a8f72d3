//! The selection and affinity API as the rest of the proxy sees it: only
//! public paths, one request's full life (resolve, failure, response).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Uri};
use remora_proxy::affinity::{Affinity, AffinityConfig, AffinityMode, Outcome, RepinReason};
use remora_proxy::fields::ClientFields;
use remora_proxy::select::{
    Algorithm, Availability, EligibilityTable, RequestKey, ServerEntry, ServerState, build,
};
use remora_seal::{Keyring, Purpose, Sealer};

#[test]
fn a_request_life_through_the_public_api() {
    let servers: Vec<ServerEntry> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| ServerEntry::new(*n, 1, false))
        .collect();
    let mut elig = EligibilityTable::all_ready(&servers);
    let algorithm = Algorithm::from_config("hash", Some("source-ip"), Some(125)).expect("valid");
    let selector = build(&algorithm, &servers);
    let sealer = Arc::new(Sealer::new(&Keyring::generate(), Purpose::Affinity));
    let affinity = Affinity::new(AffinityConfig::new("app", AffinityMode::Cookie), sealer)
        .expect("valid config");
    let uri = Uri::from_static("/");
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let now = SystemTime::now();

    // New client: the selector decides, the response pins.
    let headers = HeaderMap::new();
    let key = RequestKey::new(ip, ClientFields::Map(&headers), &uri).with_tls(true);
    let d = affinity.resolve(&key, &servers, &elig, &*selector, now);
    assert_eq!(d.outcome(), Some(Outcome::New));
    let first = d.server().expect("a server");
    let guard = servers[first].stats.start_request();
    assert_eq!(servers[first].stats.active_requests(), 1);
    guard.finish(Duration::from_millis(3));
    assert_eq!(servers[first].stats.active_requests(), 0);
    let set_cookie = affinity
        .on_response(&d, first, &servers, &HeaderMap::new(), now)
        .expect("new pin sets a cookie");
    let text = set_cookie.to_str().expect("ascii");
    assert!(text.contains("; Secure"), "{text}");

    // Back with the cookie: hit; the pinned server refuses: connect_failed repin.
    let mut headers = HeaderMap::new();
    let pair = text.split(';').next().expect("pair");
    headers.insert("cookie", pair.parse().expect("header value"));
    let key = RequestKey::new(ip, ClientFields::Map(&headers), &uri);
    let d = affinity.resolve(&key, &servers, &elig, &*selector, now);
    assert_eq!(d.outcome(), Some(Outcome::Hit));
    let r = affinity.repin_after_failure(&d, first, &servers, &elig);
    assert_eq!(
        r.outcome(),
        Some(Outcome::Repin(RepinReason::ConnectFailed))
    );
    assert_ne!(r.server(), Some(first));

    // Operator drain: still a hit. Maintenance: repin.
    let drain =
        Availability::from_parts(true, "drain".parse::<ServerState>().expect("state"), false);
    elig.set(first, drain);
    assert_eq!(
        affinity
            .resolve(&key, &servers, &elig, &*selector, now)
            .server(),
        Some(first)
    );
    elig.set(
        first,
        Availability::from_parts(true, ServerState::Maintenance, false),
    );
    let d = affinity.resolve(&key, &servers, &elig, &*selector, now);
    assert_eq!(d.outcome(), Some(Outcome::Repin(RepinReason::Maintenance)));
    assert_eq!(d.outcome().map(|o| o.to_string()), Some("repin".to_owned()));
    assert_eq!(affinity.pinned_counts(&servers, now).iter().sum::<u64>(), 1);
}
