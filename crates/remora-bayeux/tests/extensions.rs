//! Server extensions, the ack extension and the security policy.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::{deliveries, quick, start, start_with};
use parking_lot::Mutex;
use remora_bayeux::{
    Bayeux, BayeuxConfig, ExtContext, Extension, Message, RequestContext, SecurityPolicy,
};
use serde_json::{Value, json};

/// What the replica carriage will do: read `ext.session` of a handshake and
/// the request's cookies, then push to that client on `/service/ext/session`.
type Seen = Arc<Mutex<Vec<(Value, Option<String>)>>>;

struct SessionCarriage {
    seen: Seen,
}

impl Extension for SessionCarriage {
    fn incoming(&self, ctx: &ExtContext<'_>, message: &mut Message) -> bool {
        if message.channel() == "/meta/handshake"
            && let Some(blob) = message.ext_field("session")
        {
            let cookie = ctx.request.and_then(|r| r.cookie("sid")).map(str::to_owned);
            self.seen.lock().push((blob.clone(), cookie));
        }
        // Reject publishes carrying ext.forbidden.
        message.ext_field("forbidden").is_none()
    }

    fn outgoing(&self, ctx: &ExtContext<'_>, message: &mut Message) -> bool {
        if message.channel() == "/meta/handshake" && message.successful == Some(true) {
            let id = message.client_id.clone().unwrap_or_default();
            ctx.bayeux
                .deliver(
                    &id,
                    Message::new("/service/ext/session", json!({"replica": "blob-1"})),
                )
                .unwrap();
        }
        true
    }
}

#[tokio::test]
async fn extension_sees_handshake_ext_and_cookies_and_can_deliver() {
    let seen = Arc::new(Mutex::new(vec![]));
    let bayeux = Bayeux::new(quick());
    bayeux.add_extension(SessionCarriage { seen: seen.clone() });
    let s = start_with(bayeux).await;
    let r = s
        .request(
            "POST",
            "/cometd",
            "application/json",
            r#"[{"channel":"/meta/handshake","version":"1.0","ext":{"session":"sealed"}}]"#,
            Some("sid=abc"),
        )
        .await;
    let id = r.json()[0]["clientId"].as_str().unwrap().to_owned();
    assert_eq!(*seen.lock(), [(json!("sealed"), Some("abc".to_owned()))]);
    assert_eq!(
        s.bayeux.client(&id).unwrap().handshake_ext,
        Some(json!({"session": "sealed"}))
    );
    let got = deliveries(&s.connect(&id).await);
    assert_eq!(got[0]["channel"], "/service/ext/session");
    assert_eq!(got[0]["data"]["replica"], "blob-1");
    let r = s
        .send(json!([{"channel":"/x","clientId":id,"data":1,"ext":{"forbidden":true}}]))
        .await;
    assert_eq!(r[0]["error"], "403::denied_by_extension");
}

#[tokio::test]
async fn ack_extension_resends_until_acknowledged() {
    let s = start(quick()).await;
    let r = s
        .send(json!([{"channel":"/meta/handshake","version":"1.0","ext":{"ack":true}}]))
        .await;
    assert_eq!(r[0]["ext"]["ack"], true);
    let id = r[0]["clientId"].as_str().unwrap().to_owned();
    let connect = |ack: u64| json!([{"channel":"/meta/connect","clientId":id,"connectionType":"long-polling","advice":{"timeout":0},"ext":{"ack":ack}}]);
    s.send(connect(0)).await;
    s.subscribe(&id, json!("/a")).await;
    s.bayeux.publish("/a", json!(1)).unwrap();
    let r = s.send(connect(0)).await;
    assert_eq!(deliveries(&r).len(), 1);
    assert_eq!(r.last().unwrap()["ext"]["ack"], 1);
    // The reply was "lost": the client still acknowledges 0, so batch 1 is
    // sent again (with a new message) as batch 2.
    s.bayeux.publish("/a", json!(2)).unwrap();
    let r = s.send(connect(0)).await;
    let data: Vec<Value> = deliveries(&r).iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(2)]);
    assert_eq!(r.last().unwrap()["ext"]["ack"], 2);
    // Acknowledged: nothing more.
    let r = s.send(connect(2)).await;
    assert!(deliveries(&r).is_empty());
    // A client without ext.ack gets no ack field.
    let plain = s.client().await;
    let r = s.connect(&plain).await;
    assert!(r[0].get("ext").is_none(), "{r:?}");
}

#[tokio::test]
async fn ack_extension_can_be_disabled() {
    let s = start(BayeuxConfig {
        ack_extension: false,
        ..quick()
    })
    .await;
    let r = s
        .send(json!([{"channel":"/meta/handshake","version":"1.0","ext":{"ack":true}}]))
        .await;
    assert!(r[0].get("ext").is_none());
}

struct CookiePolicy;

impl SecurityPolicy for CookiePolicy {
    fn can_handshake(&self, ctx: &RequestContext, _: &Message) -> bool {
        ctx.cookie("user").is_some()
    }
    fn can_subscribe(&self, ctx: &RequestContext, _: &str, pattern: &str) -> bool {
        !pattern.starts_with("/admin") || ctx.cookie("user") == Some("root")
    }
    fn can_publish(&self, _: &RequestContext, _: &str, message: &Message) -> bool {
        message.channel() != "/readonly"
    }
}

#[tokio::test]
async fn security_policy_refusals_are_403() {
    let bayeux = Bayeux::new(quick());
    bayeux.set_security_policy(CookiePolicy);
    let s = start_with(bayeux).await;
    let hs = r#"[{"channel":"/meta/handshake","version":"1.0"}]"#;
    let r = s.post(hs).await.json();
    assert_eq!(r[0]["error"], "403::handshake_denied");
    assert_eq!(r[0]["advice"]["reconnect"], "none");
    let r = s
        .request("POST", "/cometd", "application/json", hs, Some("user=bob"))
        .await
        .json();
    let id = r[0]["clientId"].as_str().unwrap().to_owned();
    let sub =
        json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/admin/x"}]).to_string();
    let r = s
        .request(
            "POST",
            "/cometd",
            "application/json",
            &sub,
            Some("user=bob"),
        )
        .await
        .json();
    assert_eq!(r[0]["error"], "403:/admin/x:subscribe_denied");
    let r = s
        .request(
            "POST",
            "/cometd",
            "application/json",
            &sub,
            Some("user=root"),
        )
        .await
        .json();
    assert_eq!(r[0]["successful"], true);
    let r = s.publish(&id, "/readonly", json!(1)).await;
    assert_eq!(r["error"], "403:/readonly:publish_denied");
}
