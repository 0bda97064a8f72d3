//! Writes the seed corpora of every fuzz target under `fuzz/seeds/<target>/`.
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin gen-seeds`.
//! Sealed seeds use the fixed fuzz keys of `remora_fuzz`, so they open in
//! the targets. They are sealed in the current blob format; the files named
//! `v1-seed-*` are blobs of the legacy format 1 (XChaCha20-Poly1305) kept
//! from the build that wrote them (it can no longer be written), so the
//! legacy opener stays covered: this tool leaves them alone.

use std::path::Path;

use remora_fuzz::{COOKIE_NAME, NOW, POOL, REPLICA_MAX_LEN, SID, sealer};
use remora_proxy::affinity::cookie::{self, CookieRecord};
use remora_proxy::proxy_protocol::V2_SIGNATURE;
use remora_seal::Purpose;
use remora_session::replica::ReplicaCodec;
use remora_session::{Attribute, Record};
use serde_json::json;

const CONFIG_SEEDS: &[&str] = &[
    include_str!("../../examples/remora.toml"),
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

const SEEDS: &[&str] = &[
    r#"[{"channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0","supportedConnectionTypes":["long-polling","callback-polling"],"id":"1","ext":{"ack":true}}]"#,
    r#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket"],"advice":{"timeout":60000,"interval":0}}"#,
    r#"[{"channel":"/meta/connect","clientId":"$CID","connectionType":"long-polling","id":"2","advice":{"timeout":0}}]"#,
    r#"[{"channel":"/meta/connect","clientId":"$CID","connectionType":"long-polling","id":"3","ext":{"ack":1}}]"#,
    r#"[{"channel":"/meta/subscribe","clientId":"$CID","subscription":"/chat/room","id":"4"}]"#,
    r#"[{"channel":"/meta/subscribe","clientId":"$CID","subscription":["/chat/**","/news/*","/service/echo"],"id":5}]"#,
    r#"[{"channel":"/meta/unsubscribe","clientId":"$CID","subscription":["/chat/room","/nope"],"id":6}]"#,
    r#"[{"channel":"/chat/room","clientId":"$CID","data":{"text":"hello","n":[1,2.5,null,true]},"id":"7"}]"#,
    r#"[{"channel":"/service/echo","clientId":"$CID","data":"ping","id":"8"}]"#,
    r#"[{"channel":"/chat/room","clientId":"$CID","data":1,"id":"9"},{"channel":"/meta/connect","clientId":"$CID","connectionType":"long-polling","id":"10"}]"#,
    r#"[{"channel":"/meta/disconnect","clientId":"$CID","id":"11"}]"#,
    r#"[{"channel":"/meta/connect","clientId":"$CID","connectionType":"callback-polling","id":"12"},{"channel":"/meta/connect","clientId":"$CID","connectionType":"long-polling","id":"13"}]"#,
    r#"[{"channel":"/meta/unknown","clientId":"$CID"},{"channel":"/chat/*","clientId":"$CID","data":0},{"clientId":"$CID"}]"#,
];

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = Path::new("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create seed dir (run from the repository root)");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("write seed");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn with_mode(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

fn records() -> Vec<Record> {
    let mut empty = Record::new(SID.into(), NOW - 10, 60_000, 3_600_000);
    empty.replica_seq = 7;
    let mut shop = empty.clone();
    shop.attributes
        .insert("cart".into(), Attribute::from_value(&json!(["tea", "cups", 3])).unwrap());
    let mut auth = Attribute::from_value(&json!({"user": "ann"})).unwrap();
    auth.expires_at = Some(NOW + 5);
    shop.attributes.insert("auth".into(), auth);
    let mut big = empty.clone();
    big.attributes
        .insert("blob".into(), Attribute::from_value(&json!("ab".repeat(300))).unwrap());
    vec![empty, shop, big]
}

fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | cmd);
    out.push(fam);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn main() {
    let codec = ReplicaCodec::new(sealer(Purpose::Replica), REPLICA_MAX_LEN);
    let mut replica = Vec::new();
    for r in records() {
        let json = r.to_json().expect("json");
        replica.push(with_mode(1, &[&[0u8][..], &json].concat()));
        let lz = lz4_flex::compress_prepend_size(&json);
        replica.push(with_mode(1, &[&[1u8][..], &lz].concat()));
        replica.push(with_mode(0, codec.seal(&r).expect("seal").as_bytes()));
    }
    write("replica_open", &replica);

    let sealer = sealer(Purpose::Affinity);
    let aad = cookie::aad(COOKIE_NAME, POOL);
    let mut cookies = Vec::new();
    for (id, server) in [(1u64, "b1"), (u64::MAX, "server-with-a-long-name.example")] {
        let r = CookieRecord {
            id,
            issued: 1_700_000_000,
            last_seen: 1_700_000_600,
            server: server.into(),
        };
        cookies.push(with_mode(1, &r.encode()));
        cookies.push(with_mode(0, r.seal(&sealer, &aad).as_bytes()));
    }
    write("affinity_cookie", &cookies);

    write(
        "config_parse",
        &CONFIG_SEEDS
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    write(
        "bayeux_messages",
        &SEEDS
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );

    let ipv4 = [
        192, 0, 2, 7, 10, 0, 0, 1, 0x15, 0xb3, 0, 80, 0x04, 0, 3, b'a', b'b', b'c',
    ];
    let mut ipv6 = vec![0x20, 0x01, 0x0d, 0xb8];
    ipv6.extend_from_slice(&[0; 28]);
    ipv6.extend_from_slice(&[0, 1, 0, 2]);
    let tail = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let proxy: Vec<Vec<u8>> = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(1, 0x11, &ipv4),
        v2(1, 0x21, &ipv6),
        v2(0, 0x00, &[]),
        v2(1, 0x31, &[0; 216]),
    ]
    .into_iter()
    .map(|h| [h, tail.to_vec()].concat())
    .collect();
    write("proxy_protocol", &proxy);

    let responses: Vec<Vec<u8>> = [
        &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 21 Nov 2026 19:00:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: keep-alive\r\nETag: \"abc\"\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the connection closes",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n0\r\n\r\n",
    ]
    .iter()
    .map(|r| r.to_vec())
    .collect();
    write("server_response", &responses);

    let requests: Vec<Vec<u8>> = [
        &b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: wrk\r\nCookie: REMORA_AFFINITY=abc; a=b\r\n\r\n"[..],
        b"POST /cart HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-sum: 8\r\n\r\n",
        b"\r\nGET http://example.test/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
    ]
    .iter()
    .map(|r| r.to_vec())
    .collect();
    write("client_request", &requests);
}
