//! Stable fuzz harness for the proxy's untrusted-input parsers, run by
//! `cargo test`: the configuration parser ([`Config::parse`]), the sealed
//! affinity cookie opener ([`CookieRecord::open`]), the PROXY protocol
//! v1/v2 parsers, a server's response as the proxy's HTTP/1.1 client
//! reads it ([`parse_head`], [`Chunked`]), and a client's request as the
//! proxy's HTTP/1.1 server side reads it ([`parse_request`]). The
//! `cargo fuzz` targets `config_parse`, `affinity_cookie`,
//! `proxy_protocol`, `server_response` and `client_request` (see
//! `docs/fuzzing.md`) explore the same functions without a case limit.
//!
//! Inputs are structured mutations of valid inputs from a fixed seed, so
//! every run is the same and a failure names its case number.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use remora_proxy::affinity::cookie::{self, CookieRecord, MAX_SERVER_NAME};
use remora_proxy::config::{Config, ConfigError};
use remora_proxy::h1::head::{BodyFraming, parse as parse_request, skip_empty_lines};
use remora_proxy::proxy_protocol::{
    MAX_V1_LEN, MAX_V2_PAYLOAD, ProxiedAddr, V2_SIGNATURE, parse_v1, parse_v2, read_header,
};
use remora_proxy::upstream::wire::{Chunked, Decoded, Framing, Head, WireError, parse_head};
use remora_seal::{Key, Keyring, Purpose, Sealer};

/// No single input may take this long (a hang or blow-up).
const SLOW: Duration = Duration::from_secs(2);

use remora_fuzzkit::Gen;

// ---------------------------------------------------------------- config

const CONFIG_SEEDS: &[&str] = &[
    include_str!("../../../examples/remora.toml"),
    r#"
[keys]
file = "keys.txt"

[limits]
max_header_bytes = 8192
max_body_bytes = 1048576
server_timeout = "60s"

[[listener]]
name = "web"
listen = "0.0.0.0:8080"
pool = "app"
proxy_protocol = true

[listener.limits]
max_body_bytes = 1073741824

[[listener.route]]
path_prefix = "/api/"
host = "api.example.com"
pool = "api"

[[pool]]
name = "app"
algorithm = "hash"
hash_key = "header:X-User"

[pool.affinity]
mode = "app-cookie"
app_cookie = "JSESSIONID"
ttl = "10m"
table_size = 1000

[[pool.server]]
name = "a1"
address = "10.0.0.1:80"
weight = 3
slow_start = "30s"
max_connections = 100

[[pool.server]]
name = "a2"
address = "backend.internal:80"
backup = true
state = "drain"

[[pool]]
name = "api"
algorithm = "least-response-time"

[pool.affinity]
mode = "header"
header = "X-Tenant"
stateless = true

[pool.health]
expect_status = "200"
passive_fall = 0

[[pool.server]]
name = "api1"
address = "[::1]:9000"
"#,
    r#"
[admin]
listen = "127.0.0.1:9090"
token_file = "does-not-exist"

[[listener]]
name = "tls"
listen = "[::]:8443"
pool = "p"
tls = { cert = "cert.pem", key = "key.pem" }

[[pool]]
name = "p"
algorithm = "weighted-round-robin"
[pool.affinity]
mode = "source-ip"
strict = true
[[pool.server]]
name = "s"
address = "127.0.0.1:1"
"#,
];

const CONFIG_DICT: &[&[u8]] = &[
    b"[[pool]]\n",
    b"[[pool.server]]\n",
    b"[[listener]]\n",
    b"[pool.affinity]\n",
    b"[admin]\n",
    b"name = \"x\"\n",
    b"listen = \"127.0.0.1:0\"\n",
    b"address = \"h:1\"\n",
    b"weight = 0\n",
    b"weight = 18446744073709551615\n",
    b"\"0s\"",
    b"\"18446744073709551615s\"",
    b"\"99999999999999999999h\"",
    b"\"\"",
    b"-1",
    b"1e309",
    b"nan",
    b"inf",
    b"[[[[[[[[[[[[[[[[",
    b"{a={a={a={a={a={a={a={}}}}}}}",
    b"'''",
    b"\"\"\"",
    b"\\u0000",
    b"\xff",
    b"\t",
    b"\r\n",
    b"mode = \"cookie\"\n",
    b"algorithm = \"hash\"\n",
    b"hash_key = \"cookie:\"\n",
    b"expect_status = \"399-200\"\n",
    b"table_size = 0\n",
];

#[test]
fn fuzz_config_parse() {
    let seeds: Vec<Vec<u8>> = CONFIG_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let path = Path::new("/nonexistent-remora-fuzz/remora.toml");
    // Every seed is a valid configuration, so mutants start from deep code.
    for (i, s) in CONFIG_SEEDS.iter().enumerate() {
        if let Err(e) = Config::parse(s, path) {
            // The seeds name files that do not exist; only that may fail.
            assert!(
                e.to_string().contains("does-not-exist"),
                "seed {i} refused: {e}"
            );
        }
    }
    let mut g = Gen::new(0xC0F1_6000);
    let mut accepted = 0usize;
    for case in 0..20_000 {
        let bytes = g.mutate(&seeds, CONFIG_DICT);
        let text = String::from_utf8_lossy(&bytes);
        let start = Instant::now();
        let result = Config::parse(&text, path);
        assert!(
            start.elapsed() < SLOW,
            "case {case}: slow parse of {text:?}"
        );
        match result {
            Ok(_) => accepted += 1,
            Err(ConfigError::At { line, col, .. }) => {
                // The position an operator is sent to exists in the file.
                let lines = text.split('\n').count();
                assert!(
                    line >= 1 && line <= lines && col >= 1,
                    "case {case}: error at {line}:{col} outside a {lines}-line file: {text:?}"
                );
            }
            Err(_) => {}
        }
    }
    assert!(
        accepted > 100,
        "only {accepted} mutants parsed: mutations too coarse"
    );
}

// ---------------------------------------------------------------- affinity cookie

fn affinity_sealer() -> Sealer {
    let ring = Keyring::from_keys(vec![Key::from_bytes([0xa5; 32])]).expect("one key");
    Sealer::new(&ring, Purpose::Affinity)
}

fn cookie_records() -> Vec<CookieRecord> {
    vec![
        CookieRecord {
            id: 0x0123_4567_89ab_cdef,
            issued: 1_700_000_000,
            last_seen: 1_700_000_600,
            server: "b1".into(),
        },
        CookieRecord {
            id: u64::MAX,
            issued: 0,
            last_seen: u64::MAX,
            server: "\u{e9}".repeat(MAX_SERVER_NAME / 2).into(),
        },
        CookieRecord {
            id: 0,
            issued: 1,
            last_seen: 1,
            server: "".into(),
        },
    ]
}

#[test]
fn fuzz_affinity_cookie() {
    let sealer = affinity_sealer();
    let aad = cookie::aad("REMORA_AFFINITY", "app");
    let records = cookie_records();
    let originals: Vec<String> = records.iter().map(|r| r.seal(&sealer, &aad)).collect();
    let text_seeds: Vec<Vec<u8>> = originals.iter().map(|t| t.clone().into_bytes()).collect();
    let plain_seeds: Vec<Vec<u8>> = records.iter().map(CookieRecord::encode).collect();
    let text_dict: &[&[u8]] = &[
        b"A",
        b"_",
        b"-",
        b"=",
        b"%3D",
        b"\"",
        b";",
        b" ",
        b"\xc3\xa9",
    ];
    let plain_dict: &[&[u8]] = &[
        b"\x01",
        b"\x02",
        b"\x00",
        b"\xff\xfe",
        b"\xc3",
        b"\xed\xa0\x80",
    ];
    let mut g = Gen::new(0xC00C_1E00);
    let mut opened = 0usize;
    for case in 0..20_000 {
        if case % 2 == 0 {
            // Changed cookie text must never open.
            let bytes = g.mutate(&text_seeds, text_dict);
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(r) = CookieRecord::open(&sealer, &text, &aad) {
                let i = originals.iter().position(|o| o.as_str() == text);
                assert!(
                    i.is_some(),
                    "case {case}: changed cookie opened: {text:?} -> {r:?}"
                );
            }
            // The same text bound to another pool never opens.
            let other = cookie::aad("REMORA_AFFINITY", "other");
            assert!(CookieRecord::open(&sealer, &text, &other).is_err());
        } else {
            // Authentic cookies with mutated records reach the decoder.
            let plain = g.mutate(&plain_seeds, plain_dict);
            let text = sealer.seal_b64(&plain, &aad);
            let direct = CookieRecord::decode(&plain);
            match CookieRecord::open(&sealer, &text, &aad) {
                Ok(r) => {
                    opened += 1;
                    assert_eq!(direct.as_ref(), Some(&r));
                    assert!(r.server.len() <= MAX_SERVER_NAME);
                    assert_eq!(r.encode(), plain, "case {case}: decode/encode not inverse");
                }
                Err(e) => {
                    // Either the record is bad or the sealed text is over the cookie limit.
                    assert!(
                        direct.is_none() || text.len() > cookie::MAX_COOKIE_VALUE,
                        "case {case}: valid record refused: {e}"
                    );
                }
            }
        }
    }
    assert!(opened > 500, "only {opened} authentic mutants opened");
}

// ---------------------------------------------------------------- PROXY protocol

fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | cmd);
    out.push(fam);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn proxy_seeds() -> Vec<Vec<u8>> {
    let mut ipv4 = vec![192, 0, 2, 7, 10, 0, 0, 1, 0x15, 0xb3, 0, 80];
    ipv4.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c']); // a TLV after the addresses
    let mut ipv6 = vec![0x20, 0x01, 0x0d, 0xb8];
    ipv6.extend_from_slice(&[0; 12]);
    ipv6.extend_from_slice(&[0; 15]);
    ipv6.push(1);
    ipv6.extend_from_slice(&[0, 1, 0, 2]);
    let unix = vec![0u8; 216];
    let tail = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let with_tail = |mut v: Vec<u8>| {
        v.extend_from_slice(&tail);
        v
    };
    vec![
        with_tail(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".to_vec()),
        with_tail(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n".to_vec()),
        with_tail(b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec()),
        with_tail(b"PROXY UNKNOWN\r\n".to_vec()),
        with_tail(v2(1, 0x11, &ipv4)),
        with_tail(v2(1, 0x21, &ipv6)),
        with_tail(v2(0, 0x00, &[])),
        with_tail(v2(1, 0x31, &unix)),
    ]
}

/// Runs `read_header` on an in-memory stream (which never waits) and
/// returns its result and how many bytes it consumed.
fn read_all(stream: &[u8]) -> (Result<ProxiedAddr, String>, usize) {
    let mut r = stream;
    let result = read_header(&mut r)
        .now_or_never()
        .expect("an in-memory stream never waits");
    (result.map_err(|e| e.to_string()), stream.len() - r.len())
}

#[test]
fn fuzz_proxy_protocol() {
    let seeds = proxy_seeds();
    let dict: &[&[u8]] = &[
        b"PROXY ",
        b"TCP4 ",
        b"TCP6 ",
        b"UNKNOWN",
        b"\r\n",
        b" ",
        b"255.255.255.255",
        b"::ffff:1.2.3.4",
        b"65536",
        b"00",
        b"\x21\x11",
        b"\x04\x00",
        b"\xff\xff",
        &V2_SIGNATURE,
    ];
    for s in &seeds {
        let (r, _) = read_all(s);
        assert!(r.is_ok(), "seed refused: {r:?}");
    }
    let mut g = Gen::new(0x9E0_C0DE);
    let mut sources = 0usize;
    for case in 0..40_000 {
        let stream = g.mutate(&seeds, dict);
        let (result, used) = read_all(&stream);
        // The reader stops at the end of the header: never more than the
        // largest header, so the HTTP bytes after it stay untouched.
        assert!(
            used <= (MAX_V1_LEN).max(16 + MAX_V2_PAYLOAD),
            "case {case}: consumed {used} bytes of {stream:?}"
        );
        if stream.starts_with(b"PROXY ") && result.is_ok() {
            assert!(used <= MAX_V1_LEN && stream[..used].ends_with(b"\r\n"));
            // The streaming reader and the line parser agree.
            let line = parse_v1(&stream[..used]).map_err(|e| e.to_string());
            assert_eq!(line, result, "case {case}: {stream:?}");
        }
        if let Ok(ProxiedAddr::Source(_)) = result {
            sources += 1;
        }
        // The pure parsers, on the raw bytes.
        let _ = parse_v1(&stream);
        if stream.len() >= 16 {
            let mut head = [0u8; 16];
            head.copy_from_slice(&stream[..16]);
            let _ = parse_v2(&head, &stream[16..]);
        }
    }
    assert!(
        sources > 1_000,
        "only {sources} mutants parsed to an address"
    );
}

// ------------------------------------------------------- server responses

/// Runs 30,000 mutants of `seeds` (seeded with `seed`) through `read`,
/// which reads a message fed in pieces of a given size: whole and in small
/// pieces, each gives the same answer, within [`SLOW`]. `each` sees every
/// answer.
fn split_invariant<R: PartialEq + std::fmt::Debug>(
    seed: u64,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    read: impl Fn(&[u8], usize) -> (R, Vec<u8>),
    mut each: impl FnMut(&R),
) {
    let mut g = Gen::new(seed);
    for case in 0..30_000 {
        let input = g.mutate(seeds, dict);
        let started = Instant::now();
        let (whole, body) = read(&input, input.len().max(1));
        let step = 1 + g.below(7);
        let (pieces, pieces_body) = read(&input, step);
        assert_eq!(
            whole, pieces,
            "case {case}: split at {step} differs: {input:?}"
        );
        assert_eq!(
            body, pieces_body,
            "case {case}: body differs when split: {input:?}"
        );
        assert!(
            started.elapsed() < SLOW,
            "case {case} took {:?}",
            started.elapsed()
        );
        each(&whole);
    }
}

/// The committed seeds of the cargo-fuzz target `target`, in name order.
fn target_seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("entry").path()).expect("seed"))
        .collect();
    seeds.sort();
    seeds
}

/// Decodes a chunked body at the start of `buf` until it ends, fails or
/// needs more: the data decoded.
fn decode_chunked(buf: &mut bytes::BytesMut) -> Vec<u8> {
    let mut body = Vec::new();
    let mut state = Chunked::Size;
    loop {
        match state.decode(buf, 4096) {
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "an empty data frame");
                body.extend_from_slice(&d);
            }
            Ok(_) | Err(WireError::ChunkSize | WireError::ChunkEnd | WireError::Trailers) => {
                return body;
            }
            Err(e) => panic!("unexpected body error {e}"),
        }
    }
}

/// What a response head said: status, framing, fields kept (`None`: not
/// complete), or the error.
type HeadFacts = Result<Option<(u16, Framing, usize)>, String>;

/// Reads a head from `input` fed in pieces of `step` bytes, then decodes
/// a chunked body: what was parsed, and the body bytes decoded.
fn read_response(input: &[u8], step: usize) -> (HeadFacts, Vec<u8>) {
    let mut buf = bytes::BytesMut::new();
    let mut fed = 0;
    let head: Head = loop {
        match parse_head(&mut buf, &http::Method::GET, 4096) {
            Ok(Some(h)) => break h,
            Ok(None) if fed < input.len() => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Ok(None) => return (Ok(None), Vec::new()),
            Err(e) => return (Err(e.to_string()), Vec::new()),
        }
    };
    buf.extend_from_slice(&input[fed..]);
    let body = if head.framing == Framing::Chunked {
        decode_chunked(&mut buf)
    } else {
        Vec::new()
    };
    let facts = (head.status.as_u16(), head.framing, head.fields.len());
    (Ok(Some(facts)), body)
}

#[test]
fn fuzz_server_response() {
    let seeds = target_seeds("server_response");
    assert!(seeds.len() >= 5, "seeds missing");
    for s in &seeds {
        let (r, _) = read_response(s, s.len());
        assert!(matches!(r, Ok(Some(_))), "seed refused: {r:?} {s:?}");
    }
    let dict: &[&[u8]] = &[
        b"HTTP/1.1 ",
        b"HTTP/1.0 ",
        b"100 Continue\r\n\r\n",
        b"101 ",
        b"\r\n",
        b"\r\n\r\n",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b" \t",
        b"ffffffffffffffff",
        b"18446744073709551616",
        b"0\r\n\r\n",
        b";ext=\"",
        b"\x80\xff",
    ];
    let mut parsed = 0usize;
    split_invariant(0x5E4_7E5, &seeds, dict, read_response, |whole| {
        if matches!(whole, Ok(Some(_))) {
            parsed += 1;
        }
    });
    assert!(parsed > 3_000, "only {parsed} mutants parsed to a head");
}

// -------------------------------------------------------- client requests

/// What a request head said: method, target, framing, fields, keep-alive
/// (`None`: not complete), or the refusal's status and error.
type RequestFacts = Result<Option<(String, String, BodyFraming, usize, bool)>, (u16, String)>;

/// Reads a head from `input` fed in pieces of `step` bytes, as the
/// connection does (empty lines between requests skipped), then decodes a
/// chunked body: what was parsed, and the body bytes decoded.
fn read_request(input: &[u8], step: usize) -> (RequestFacts, Vec<u8>) {
    let mut buf = bytes::BytesMut::new();
    let mut fed = 0;
    let head = loop {
        skip_empty_lines(&mut buf);
        match parse_request(&mut buf, 4096) {
            Ok(Some(h)) => break h,
            Ok(None) if fed < input.len() => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Ok(None) => return (Ok(None), Vec::new()),
            Err(e) => return (Err((e.status().as_u16(), e.to_string())), Vec::new()),
        }
    };
    buf.extend_from_slice(&input[fed..]);
    let mut body = Vec::new();
    match head.body {
        BodyFraming::Chunked => body = decode_chunked(&mut buf),
        BodyFraming::Length(n) => assert!(n > 0, "an empty body is framed as Empty"),
        BodyFraming::Empty => {}
    }
    let r = &head.request;
    assert!(!r.uri().to_string().is_empty(), "an empty target");
    let facts = (
        r.method().to_string(),
        r.uri().to_string(),
        head.body,
        head.fields.len(),
        head.keep_alive,
    );
    (Ok(Some(facts)), body)
}

#[test]
fn fuzz_client_request() {
    let seeds = target_seeds("client_request");
    assert!(seeds.len() >= 5, "seeds missing");
    for s in &seeds {
        let (r, _) = read_request(s, s.len());
        assert!(matches!(r, Ok(Some(_))), "seed refused: {r:?} {s:?}");
    }
    let dict: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b" HTTP/2.0\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b" \t",
        b"ffffffffffffffff",
        b"18446744073709551616",
        b"0\r\n\r\n",
        b"http://",
        b"\x80\xff",
        b"\x00",
    ];
    let mut parsed = 0usize;
    let mut refused = 0usize;
    split_invariant(
        0x00C1_1E47,
        &seeds,
        dict,
        read_request,
        |whole| match whole {
            Ok(Some(_)) => parsed += 1,
            Err((status, _)) => {
                assert!(
                    [400, 431, 501, 505].contains(status),
                    "refused with {status}"
                );
                refused += 1;
            }
            Ok(None) => {}
        },
    );
    assert!(parsed > 3_000, "only {parsed} mutants parsed to a head");
    assert!(refused > 1_000, "only {refused} mutants refused");
}
