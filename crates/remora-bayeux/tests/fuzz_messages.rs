//! Stable fuzz harness for Bayeux message parsing and dispatch, run by
//! `cargo test`. The `cargo fuzz` target `bayeux_messages` (see
//! `docs/fuzzing.md`) explores the same code without a case limit.
//!
//! Bodies are structured mutations of valid Bayeux traffic (handshake,
//! connect, subscribe, publish, ack, disconnect, batches) from a fixed seed.
//! The placeholder `$CID` is replaced by the id of a Bayeux client that
//! really handshook, so mutants get past the client lookup into the
//! engine. Each body goes through [`parse_messages`] and through the
//! long-polling transport of an in-process [`Bayeux`] router (as JSON or
//! as a form field), exactly as an HTTP request would.

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use remora_bayeux::message::parse_messages;
use remora_bayeux::{Bayeux, BayeuxConfig};
use serde_json::{Value, json};

/// No request may take this long (a hang or blow-up).
const SLOW: Duration = Duration::from_secs(2);
const CASES: usize = 20_000;
const MAX_MESSAGES: usize = 50;

use remora_fuzzkit::Gen;

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

const DICT: &[&[u8]] = &[
    b"\"$CID\"",
    b"\"channel\":\"/meta/connect\",",
    b"\"channel\":\"/meta/handshake\",",
    b"\"channel\":\"/meta/subscribe\",",
    b"\"channel\":\"/meta/disconnect\",",
    b"\"channel\":\"/chat/room\",",
    b"\"subscription\":\"/**\",",
    b"\"subscription\":\"/meta/*\",",
    b"\"subscription\":[],",
    b"\"ext\":{\"ack\":18446744073709551615},",
    b"\"ext\":{\"ack\":-1},",
    b"\"ext\":null,",
    b"\"advice\":{\"timeout\":0},",
    b"\"advice\":{\"timeout\":-5},",
    b"\"connectionType\":\"websocket\",",
    b"\"clientId\":\"\",",
    b"\"clientId\":null,",
    b"\"id\":{\"x\":[1]},",
    b"\"data\":{},",
    b"/chat/**",
    b"/service/",
    b"//",
    b"\\u0000",
    b"\\ud800",
    b"1e400",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{},",
    b",{}",
];

/// Values a JSON-level mutation puts into a message field.
fn field_values() -> Vec<Value> {
    vec![
        json!("$CID"),
        json!("/meta/handshake"),
        json!("/meta/connect"),
        json!("/meta/subscribe"),
        json!("/meta/unsubscribe"),
        json!("/meta/disconnect"),
        json!("/meta/"),
        json!("/chat/room"),
        json!("/chat/**"),
        json!("/chat/*"),
        json!("/**"),
        json!("/service/echo"),
        json!("/service/**"),
        json!("/"),
        json!(""),
        json!("long-polling"),
        json!("callback-polling"),
        json!("websocket"),
        json!(["/chat/room", "/meta/connect", "/a/b"]),
        json!([]),
        json!([1, null]),
        json!({"ack": true}),
        json!({"ack": 3}),
        json!({"ack": u64::MAX}),
        json!({"timeout": 0, "interval": -1}),
        json!({"timeout": u64::MAX}),
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5e300),
        json!(u64::MAX),
        json!({"x": {"y": [1, 2, {"z": "\u{0}"}]}}),
        json!("1.0"),
        json!("x".repeat(300)),
    ]
}

const FIELDS: &[&str] = &[
    "channel",
    "clientId",
    "subscription",
    "connectionType",
    "id",
    "data",
    "ext",
    "advice",
    "version",
    "minimumVersion",
    "supportedConnectionTypes",
    "successful",
];

/// A JSON-level mutant: fields set, removed, messages duplicated, dropped
/// or borrowed from another seed. Always valid JSON, so it reaches dispatch.
fn mutate_json(g: &mut Gen, seeds: &[Value], values: &[Value]) -> Vec<u8> {
    let as_array = |v: &Value| match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let mut messages = as_array(g.pick(seeds));
    for _ in 0..1 + g.below(3) {
        let n = messages.len();
        match g.below(6) {
            0..=2 if n > 0 => {
                if let Some(m) = messages[g.below(n)].as_object_mut() {
                    m.insert((*g.pick(FIELDS)).to_owned(), g.pick(values).clone());
                }
            }
            3 if n > 0 => {
                if let Some(m) = messages[g.below(n)].as_object_mut() {
                    let key = *g.pick(FIELDS);
                    m.remove(key);
                }
            }
            4 if n > 1 => {
                messages.remove(g.below(n));
            }
            _ => {
                let other = as_array(g.pick(seeds));
                messages.push(g.pick(&other).clone());
            }
        }
    }
    if messages.len() == 1 && g.below(2) == 0 {
        serde_json::to_vec(&messages[0]).expect("JSON")
    } else {
        serde_json::to_vec(&messages).expect("JSON")
    }
}

/// Callback names for callback-polling: valid ones and script injections.
const CALLBACKS: &[&str] = &[
    "jsonpcallback",
    "cb",
    "$.cb_1",
    "a.b.c",
    "alert(1)//",
    "a;b",
    "1a",
    "a..b",
    "</script><script>x",
    "a\u{2028}",
    "é",
    "",
];

/// Percent-encodes `bytes` for an `application/x-www-form-urlencoded` body.
fn form_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = b"message=".to_vec();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

struct Harness {
    bayeux: Bayeux,
    service: TowerToHyperService<axum::routing::RouterIntoService<Body>>,
}

impl Harness {
    fn new() -> Self {
        let config = BayeuxConfig {
            timeout_ms: 0,
            max_clients: 200,
            max_queue: 20,
            max_messages_per_request: MAX_MESSAGES,
            max_subscriptions_per_client: 10,
            max_request_bytes: 64 * 1024,
            ..BayeuxConfig::default()
        };
        let bayeux = Bayeux::new(config);
        bayeux
            .add_listener("/service/echo", |b, p| {
                if let Some(from) = p.from {
                    let mut reply = p.message.reply();
                    reply.data = p.message.data.clone();
                    let _ = b.deliver(from, reply);
                }
            })
            .expect("valid channel");
        let service = TowerToHyperService::new(bayeux.router().into_service::<Body>());
        Harness { bayeux, service }
    }

    /// POSTs `body` to `/cometd`; returns status and body text.
    async fn post(&self, body: Vec<u8>, form: bool, cookie: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::post("/cometd/connect").header(
            header::CONTENT_TYPE,
            if form {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            },
        );
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let req = req.body(Body::from(body)).expect("request");
        let response = tokio::time::timeout(SLOW, self.service.call(req))
            .await
            .expect("request answered in time")
            .expect("infallible");
        let status = response.status();
        let bytes = tokio::time::timeout(SLOW, response.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends a callback-polling GET with `query`; returns status and body text.
    async fn get(&self, query: &str) -> (StatusCode, String) {
        let req = Request::get(format!("/cometd?{query}"))
            .body(Body::empty())
            .expect("request");
        let response = tokio::time::timeout(SLOW, self.service.call(req))
            .await
            .expect("request answered in time")
            .expect("infallible");
        let status = response.status();
        let bytes = tokio::time::timeout(SLOW, response.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Handshakes a fresh Bayeux client and returns its id.
    async fn handshake(&self) -> Option<String> {
        let (status, body) = self.post(SEEDS[0].as_bytes().to_vec(), false, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let replies: Vec<Value> = serde_json::from_str(&body).expect("JSON reply");
        replies[0]["clientId"].as_str().map(str::to_owned)
    }
}

/// The protocol's promises about any reply body.
fn check_replies(case: usize, input: &[u8], body: &str) {
    let replies: Vec<Value> = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("case {case}: reply is not a JSON array ({e}): {body}"));
    for r in &replies {
        let channel = r["channel"].as_str();
        // Only the refusal of a message that had no channel has none.
        assert!(
            channel.is_some() || r["error"] == json!("400::channel_missing"),
            "case {case}: reply without channel: {r}\ninput: {}",
            String::from_utf8_lossy(input)
        );
        if channel.is_some_and(|c| c.starts_with("/meta/")) {
            assert!(
                r["successful"].is_boolean(),
                "case {case}: meta reply without `successful`: {r}"
            );
            if r["successful"] == json!(false) {
                assert!(
                    r["error"].is_string(),
                    "case {case}: failed meta reply without `error`: {r}"
                );
            }
        }
    }
}

#[tokio::test]
async fn fuzz_bayeux_messages() {
    let h = Harness::new();
    let seeds: Vec<Vec<u8>> = SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let json_seeds: Vec<Value> = SEEDS
        .iter()
        .map(|s| serde_json::from_str(s).expect("seed is JSON"))
        .collect();
    let values = field_values();
    let mut g = Gen::new(0xBA7E_0001).with_max_ops(2);
    let mut client = h.handshake().await.expect("handshake succeeds");
    let (mut ok, mut bad) = (0usize, 0usize);
    for case in 0..CASES {
        if case % 500 == 0 {
            // Mutated handshakes make clients that nobody connects: clear them.
            for id in h.bayeux.client_ids() {
                h.bayeux.remove_client(&id);
            }
        }
        if h.bayeux.client(&client).is_none() {
            // A mutant disconnected it (or it was cleared): a fresh one.
            client = h.handshake().await.expect("handshake succeeds");
        }
        let template = if g.below(2) == 0 {
            g.mutate(&seeds, DICT)
        } else {
            mutate_json(&mut g, &json_seeds, &values)
        };
        let text = String::from_utf8_lossy(&template).replace("$CID", &client);
        let input = text.into_bytes();
        let parsed = parse_messages(&input, MAX_MESSAGES);
        if g.below(8) == 0 {
            // callback-polling: the same body as a query, with a callback name.
            let jsonp = *g.pick(CALLBACKS);
            let query = format!(
                "{}&{}",
                String::from_utf8_lossy(&form_encode(&input)),
                String::from_utf8_lossy(&form_encode(jsonp.as_bytes()))
                    .replacen("message=", "jsonp=", 1)
            );
            let (status, body) = h.get(&query).await;
            match status {
                StatusCode::OK => {
                    assert!(
                        parsed.is_ok(),
                        "case {case}: accepted what parse_messages refuses"
                    );
                    // Only a safe callback name is ever echoed into JavaScript.
                    let inner = body
                        .strip_prefix(jsonp)
                        .and_then(|b| b.strip_prefix('('))
                        .and_then(|b| b.strip_suffix(");"))
                        .unwrap_or_else(|| panic!("case {case}: not `{jsonp}(...);`: {body}"));
                    assert!(remora_bayeux::transport::callback_polling::valid_callback(
                        jsonp
                    ));
                    check_replies(case, &input, inner);
                    ok += 1;
                }
                StatusCode::BAD_REQUEST => {
                    bad += 1;
                    assert!(
                        parsed.is_err()
                            || !remora_bayeux::transport::callback_polling::valid_callback(jsonp),
                        "case {case}: refused parsed messages: {body}"
                    );
                }
                s => panic!("case {case}: unexpected status {s}: {body}"),
            }
            continue;
        }
        let form = g.below(8) == 0;
        let wire = if form {
            form_encode(&input)
        } else {
            input.clone()
        };
        let cookie = (g.below(4) == 0).then_some("BAYEUX_BROWSER=fuzz-browser");
        let (status, body) = h.post(wire, form, cookie).await;
        match status {
            StatusCode::OK => {
                ok += 1;
                assert!(
                    parsed.is_ok(),
                    "case {case}: accepted what parse_messages refuses"
                );
                check_replies(case, &input, &body);
            }
            StatusCode::BAD_REQUEST => {
                bad += 1;
                assert!(
                    parsed.is_err(),
                    "case {case}: refused parsed messages: {body}"
                );
            }
            s => panic!("case {case}: unexpected status {s}: {body}"),
        }
        // Server-side publishes and deliveries interleave with client traffic.
        if case % 7 == 0 {
            let _ = h.bayeux.publish("/chat/room", json!({"server": case}));
            let _ = h.bayeux.deliver(
                &client,
                remora_bayeux::Message::new("/chat/room", json!(case)),
            );
        }
    }
    let stats = h.bayeux.stats();
    assert!(
        ok > CASES / 10 && bad > CASES / 10,
        "ok {ok}, bad {bad}: mutations miss one side"
    );
    assert!(
        h.bayeux.client_ids().len() <= 200,
        "client limit exceeded: {stats:?}"
    );
    for id in h.bayeux.client_ids() {
        h.bayeux.remove_client(&id);
    }
}

#[test]
fn fuzz_bayeux_parse_messages() {
    let seeds: Vec<Vec<u8>> = SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut g = Gen::new(0xBA7E_0002);
    for case in 0..40_000 {
        let input = g.mutate(&seeds, DICT);
        if let Ok(messages) = parse_messages(&input, MAX_MESSAGES) {
            assert!(messages.len() <= MAX_MESSAGES, "case {case}: limit ignored");
            // What was parsed serialises and parses back to the same messages.
            let json = remora_bayeux::message::join_array(
                &messages.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
            );
            let again = parse_messages(json.as_bytes(), MAX_MESSAGES)
                .unwrap_or_else(|e| panic!("case {case}: own output refused ({e}): {json}"));
            assert_eq!(again.len(), messages.len());
        }
    }
}
