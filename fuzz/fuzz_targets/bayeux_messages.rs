//! Bayeux message parsing and dispatch: `parse_messages`, then the body is
//! POSTed to the long-polling transport of an in-process `Bayeux` router,
//! exactly as an HTTP request would be. The text `$CID` in the input is
//! replaced by the id of a Bayeux client that really handshook, so inputs
//! reach the engine past the client lookup.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use libfuzzer_sys::fuzz_target;
use remora_bayeux::message::parse_messages;
use remora_bayeux::{Bayeux, BayeuxConfig};
use serde_json::Value;

const MAX_MESSAGES: usize = 50;
const HANDSHAKE: &str = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"ext":{"ack":true}}]"#;

struct Harness {
    rt: tokio::runtime::Runtime,
    bayeux: Bayeux,
    service: TowerToHyperService<axum::routing::RouterIntoService<Body>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let bayeux = Bayeux::new(BayeuxConfig {
            timeout_ms: 0,
            max_clients: 200,
            max_queue: 20,
            max_messages_per_request: MAX_MESSAGES,
            max_subscriptions_per_client: 10,
            max_request_bytes: 64 * 1024,
            ..BayeuxConfig::default()
        });
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
        Harness {
            rt,
            bayeux,
            service,
        }
    })
}

async fn post(h: &Harness, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/cometd")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, "BAYEUX_BROWSER=fuzz")
        .body(Body::from(body))
        .expect("request");
    let fut = h.service.call(req);
    let resp = tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .expect("answered in time")
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_messages(data, MAX_MESSAGES);
    let h = harness();
    h.rt.block_on(async {
        if h.bayeux.client_ids().len() > 100 {
            for id in h.bayeux.client_ids() {
                h.bayeux.remove_client(&id);
            }
        }
        let (_, hs) = post(h, HANDSHAKE.as_bytes().to_vec()).await;
        let replies: Vec<Value> = serde_json::from_slice(&hs).expect("handshake reply");
        let cid = replies[0]["clientId"].as_str().unwrap_or("none").to_owned();
        let body = String::from_utf8_lossy(data).replace("$CID", &cid);
        let same = body.as_bytes() == data;
        let (status, reply) = post(h, body.into_bytes()).await;
        match status {
            StatusCode::OK => {
                let v: Vec<Value> = serde_json::from_slice(&reply).expect("reply is a JSON array");
                assert!(!same || parsed.is_ok());
                drop(v);
            }
            StatusCode::BAD_REQUEST => assert!(!same || parsed.is_err()),
            StatusCode::PAYLOAD_TOO_LARGE => {}
            s => panic!("unexpected status {s}"),
        }
        h.bayeux.remove_client(&cid);
    });
});
