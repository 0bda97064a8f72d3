//! Raw Bayeux protocol over real HTTP: every meta channel, errors, advice.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{deliveries, eventually, quick, start};
use remora_bayeux::{BayeuxConfig, ClientEvent, RemoveReason};
use serde_json::{Value, json};

#[tokio::test]
async fn handshake_negotiates_and_sets_browser_cookie() {
    let s = start(quick()).await;
    let r = s
        .post(r#"[{"channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0","id":42,"supportedConnectionTypes":["long-polling","callback-polling"]}]"#)
        .await;
    assert_eq!(r.status, 200);
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("BAYEUX_BROWSER="), "{cookie}");
    let m = &r.json()[0];
    assert_eq!(m["channel"], "/meta/handshake");
    assert_eq!(m["id"], 42);
    assert_eq!(m["successful"], true);
    assert_eq!(m["version"], "1.0");
    let id = m["clientId"].as_str().unwrap();
    assert!(
        id.len() >= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let types: Vec<&str> = m["supportedConnectionTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(types.contains(&"long-polling") && types.contains(&"websocket"));
    assert_eq!(m["advice"]["reconnect"], "retry");
    assert_eq!(m["advice"]["timeout"], 2000);
    // Two handshakes: two different ids.
    assert_ne!(s.handshake().await, s.handshake().await);
}

#[tokio::test]
async fn handshake_without_common_connection_type_fails() {
    let s = start(quick()).await;
    let r = s
        .send(json!([{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["flash"]}]))
        .await;
    assert_eq!(r[0]["successful"], false);
    assert!(r[0]["error"].as_str().unwrap().starts_with("400:flash:"));
    assert_eq!(s.bayeux.stats().clients, 0);
}

#[tokio::test]
async fn sub_paths_and_form_encoding_are_accepted() {
    let s = start(quick()).await;
    let r = s
        .request(
            "POST",
            "/cometd/handshake",
            "application/json",
            r#"[{"channel":"/meta/handshake","version":"1.0"}]"#,
            None,
        )
        .await;
    assert_eq!(r.json()[0]["successful"], true);
    // The CometD client posts non-meta messages to `/cometd/`.
    let id = r.json()[0]["clientId"].as_str().unwrap().to_owned();
    let r = s
        .request("POST", "/cometd/", "application/json", "[]", None)
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "[]"));
    let body = format!(
        "message=%5B%7B%22channel%22%3A%22%2Fmeta%2Fconnect%22%2C%22clientId%22%3A%22{id}%22%2C%22connectionType%22%3A%22long-polling%22%7D%5D"
    );
    let r = s
        .request(
            "POST",
            "/cometd/connect",
            "application/x-www-form-urlencoded",
            &body,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["successful"], true);
}

#[tokio::test]
async fn first_connect_is_immediate_later_ones_held_until_timeout() {
    let s = start(BayeuxConfig {
        timeout_ms: 400,
        ..quick()
    })
    .await;
    let id = s.handshake().await;
    let t = Instant::now();
    let r = s.connect(&id).await;
    assert!(t.elapsed() < Duration::from_millis(300));
    assert_eq!(r[0]["successful"], true);
    assert_eq!(r[0]["advice"]["timeout"], 400, "advice on first connect");
    let t = Instant::now();
    let r = s.connect(&id).await;
    assert!(
        t.elapsed() >= Duration::from_millis(380),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r[0]["successful"], true);
    assert!(
        r[0].get("advice").is_none(),
        "advice unchanged, not sent: {r:?}"
    );
}

#[tokio::test]
async fn client_advice_timeout_zero_is_honoured() {
    let s = start(quick()).await;
    let id = s.client().await;
    let t = Instant::now();
    let r = s
        .send(json!([{"channel":"/meta/connect","clientId":id,"connectionType":"long-polling","advice":{"timeout":0}}]))
        .await;
    assert!(t.elapsed() < Duration::from_millis(1_000));
    assert_eq!(r[0]["successful"], true);
}

#[tokio::test]
async fn a_new_connect_releases_the_previous_one() {
    let s = std::sync::Arc::new(
        start(BayeuxConfig {
            timeout_ms: 20_000,
            // Two concurrent connects from one "browser" (no cookie here).
            ..quick()
        })
        .await,
    );
    let id = s.client().await;
    let s2 = s.clone();
    let id2 = id.clone();
    let t = Instant::now();
    let first = tokio::spawn(async move { s2.connect(&id2).await });
    eventually(|| s.bayeux.client(&id).is_some_and(|c| c.connect_held)).await;
    let second = tokio::spawn({
        let s = s.clone();
        let id = id.clone();
        async move { s.connect(&id).await }
    });
    let r = first.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "first connect released"
    );
    assert_eq!(r[0]["successful"], true);
    second.abort();
}

#[tokio::test]
async fn connect_batched_with_other_messages_is_not_held() {
    let s = start(BayeuxConfig {
        timeout_ms: 20_000,
        ..quick()
    })
    .await;
    let id = s.client().await;
    let t = Instant::now();
    let r = s
        .send(json!([
            {"channel":"/meta/subscribe","clientId":id,"subscription":"/x"},
            {"channel":"/meta/connect","clientId":id,"connectionType":"long-polling"}
        ]))
        .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["channel"], "/meta/connect");
}

#[tokio::test]
async fn publish_reaches_subscribers_with_wildcards_and_releases_held_connect() {
    let s = std::sync::Arc::new(
        start(BayeuxConfig {
            timeout_ms: 20_000,
            ..quick()
        })
        .await,
    );
    let a = s.client().await;
    let b = s.client().await;
    let c = s.client().await;
    let r = s.subscribe(&a, json!("/chat/room")).await;
    assert_eq!(r["successful"], true);
    assert_eq!(r["subscription"], "/chat/room");
    assert_eq!(
        s.subscribe(&b, json!(["/chat/*", "/other"])).await["successful"],
        true
    );
    assert_eq!(s.subscribe(&c, json!("/chat/**")).await["successful"], true);

    // a's connect is held; a publish from b releases it at once.
    let held = tokio::spawn({
        let s = s.clone();
        let a = a.clone();
        async move { s.connect(&a).await }
    });
    eventually(|| s.bayeux.client(&a).is_some_and(|c| c.connect_held)).await;
    let t = Instant::now();
    let r = s.publish(&b, "/chat/room", json!({"text": "hi"})).await;
    assert_eq!(r["successful"], true);
    assert_eq!(r["id"], "p");
    let got = held.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let d = deliveries(&got);
    assert_eq!(d.len(), 1, "{got:?}");
    assert_eq!(d[0]["channel"], "/chat/room");
    assert_eq!(d[0]["data"]["text"], "hi");
    assert!(d[0].get("id").is_none(), "publisher's id not forwarded");
    assert_eq!(got.last().unwrap()["channel"], "/meta/connect");

    // b matched through /chat/* (and gets its own publish once).
    assert_eq!(deliveries(&s.connect(&b).await).len(), 1);
    // /chat/* does not match deeper channels, /chat/** does.
    s.publish(&a, "/chat/room/deep", json!(1)).await;
    assert_eq!(deliveries(&s.connect(&c).await).len(), 2);
    let r = s
        .send(json!([{"channel":"/meta/connect","clientId":b,"connectionType":"long-polling","advice":{"timeout":0}}]))
        .await;
    assert!(deliveries(&r).is_empty(), "{r:?}");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let s = start(quick()).await;
    let a = s.client().await;
    s.subscribe(&a, json!(["/a", "/b/*"])).await;
    let r = s
        .send(json!([{"channel":"/meta/unsubscribe","clientId":a,"subscription":["/a","/b/*"],"id":"u"}]))
        .await;
    assert_eq!(r[0]["successful"], true);
    assert_eq!(r[0]["id"], "u");
    assert!(s.bayeux.client(&a).unwrap().subscriptions.is_empty());
    s.publish(&a, "/a", json!(1)).await;
    s.publish(&a, "/b/c", json!(1)).await;
    assert_eq!(s.bayeux.client(&a).unwrap().queued, 0);
}

#[tokio::test]
async fn errors_use_the_code_args_message_form() {
    let s = start(quick()).await;
    let id = s.client().await;
    let r = s.send(json!([{"id": "1", "clientId": id}])).await;
    assert_eq!(r[0]["error"], "400::channel_missing");
    assert_eq!(r[0]["id"], "1");
    let r = s
        .send(json!([{"channel": "/meta/connect", "connectionType": "long-polling"}]))
        .await;
    assert_eq!(r[0]["error"], "401::no_client_id");
    let r = s
        .send(json!([{"channel": "/meta/connect", "clientId": "nope"}]))
        .await;
    assert_eq!(r[0]["error"], "402::session_unknown");
    assert_eq!(r[0]["successful"], false);
    assert_eq!(r[0]["advice"]["reconnect"], "handshake");
    let r = s
        .send(json!([{"channel": "/meta/bogus", "clientId": id}]))
        .await;
    assert_eq!(r[0]["error"], "404:/meta/bogus:unknown_channel");
    let r = s.subscribe(&id, json!("/a/*/b")).await;
    assert_eq!(r["error"], "400:/a/*/b:invalid_subscription");
    let r = s.subscribe(&id, json!("/meta/connect")).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("403:/meta/connect:")
    );
    let r = s
        .send(json!([{"channel": "/meta/subscribe", "clientId": id}]))
        .await;
    assert_eq!(r[0]["error"], "400::subscription_missing");
    let r = s.publish(&id, "/a/*", json!(1)).await;
    assert_eq!(r["error"], "400:/a/*:wildcard_publish");
    let r = s.publish(&id, "/a//b", json!(1)).await;
    assert_eq!(r["error"], "400:/a//b:invalid_channel");
    let r = s.send(json!([{"channel": "/a", "data": 1}])).await;
    assert_eq!(r[0]["error"], "401::no_client_id");
}

#[tokio::test]
async fn invalid_json_is_http_400_and_changes_nothing() {
    let s = start(quick()).await;
    for body in [
        r#"[{"channel":"/meta/handshake","version":"1.0"},"#,
        r#"[{"channel":"/meta/handshake"}, 3]"#,
        "hello",
        "",
    ] {
        let r = s.post(body).await;
        assert_eq!(r.status, 400, "{body}");
    }
    assert_eq!(s.bayeux.stats().clients, 0);
    let id = s.client().await;
    let r = s
        .post(&format!(
            r#"[{{"channel":"/meta/subscribe","clientId":"{id}","subscription":"/x"}},{{"#
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(s.bayeux.client(&id).unwrap().subscriptions.is_empty());
}

#[tokio::test]
async fn request_limits() {
    let s = start(BayeuxConfig {
        max_messages_per_request: 2,
        max_request_bytes: 1024,
        ..quick()
    })
    .await;
    let r = s.post("[{},{},{}]").await;
    assert_eq!(r.status, 400);
    let big = format!(r#"[{{"channel":"/a","data":"{}"}}]"#, "x".repeat(2000));
    assert_eq!(s.post(&big).await.status, 413);
}

#[tokio::test]
async fn service_channels_are_point_to_point() {
    let s = start(quick()).await;
    s.bayeux
        .add_listener("/service/echo", |b, p| {
            let mut reply = p.message.reply();
            reply.data = p.message.data.clone();
            b.deliver(p.from.unwrap(), reply).unwrap();
        })
        .unwrap();
    let a = s.client().await;
    let other = s.client().await;
    // Accepted, not recorded.
    assert_eq!(
        s.subscribe(&a, json!("/service/echo")).await["successful"],
        true
    );
    assert!(s.bayeux.client(&a).unwrap().subscriptions.is_empty());
    s.subscribe(&other, json!("/**")).await;
    let r = s
        .send(json!([{"channel":"/service/echo","clientId":a,"data":{"q":1},"id":"req-7"}]))
        .await;
    assert_eq!(r[0]["successful"], true);
    let got = deliveries(&s.connect(&a).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "req-7");
    assert_eq!(got[0]["data"]["q"], 1);
    // Not broadcast, even to /** subscribers.
    assert_eq!(s.bayeux.client(&other).unwrap().queued, 0);
}

#[tokio::test]
async fn disconnect_removes_the_client() {
    let s = start(quick()).await;
    let mut events = s.bayeux.events();
    let a = s.client().await;
    assert_eq!(
        events.recv().await.unwrap(),
        ClientEvent::Added {
            client_id: a.as_str().into()
        }
    );
    s.subscribe(&a, json!("/x")).await;
    let r = s
        .send(json!([{"channel":"/meta/disconnect","clientId":a,"id":"d"}]))
        .await;
    assert_eq!(r[0]["successful"], true);
    assert_eq!(
        events.recv().await.unwrap(),
        ClientEvent::Removed {
            client_id: a.as_str().into(),
            reason: RemoveReason::Disconnect
        }
    );
    assert_eq!(s.connect(&a).await[0]["error"], "402::session_unknown");
    assert_eq!(s.bayeux.publish("/x", json!(1)).unwrap(), 0);
}

#[tokio::test]
async fn clients_without_connect_expire_after_max_interval() {
    let s = start(BayeuxConfig {
        max_interval_ms: 200,
        timeout_ms: 1_000,
        ..quick()
    })
    .await;
    let mut events = s.bayeux.events();
    let a = s.client().await;
    let alive = s.client().await;
    s.subscribe(&a, json!("/x")).await;
    // `alive` keeps a connect held (longer than max_interval): not expired.
    let held = tokio::spawn({
        let url = s.url("/cometd");
        let alive = alive.clone();
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let body = json!([{"channel":"/meta/connect","clientId":alive,"connectionType":"long-polling"}]).to_string();
            let req = http::Request::post(url)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap();
            client.request(req).await.unwrap().status()
        }
    });
    let _ = events.recv().await;
    let _ = events.recv().await;
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        ClientEvent::Removed {
            client_id: a.as_str().into(),
            reason: RemoveReason::Expired
        }
    );
    assert!(s.bayeux.client(&a).is_none());
    assert!(s.bayeux.client(&alive).is_some());
    assert_eq!(
        s.bayeux.publish("/x", json!(1)).unwrap(),
        0,
        "subscriptions dropped"
    );
    assert_eq!(held.await.unwrap(), 200);
}

#[tokio::test]
async fn queue_is_bounded_oldest_dropped_and_counted() {
    let s = start(BayeuxConfig {
        max_queue: 3,
        ..quick()
    })
    .await;
    let a = s.client().await;
    s.subscribe(&a, json!("/x")).await;
    for i in 0..5 {
        s.bayeux.publish("/x", json!(i)).unwrap();
    }
    let got = deliveries(&s.connect(&a).await);
    let data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, [2, 3, 4]);
    assert_eq!(s.bayeux.stats().dropped, 2);
    assert_eq!(s.bayeux.client(&a).unwrap().dropped, 2);
}

#[tokio::test]
async fn max_clients_refuses_handshakes() {
    let s = start(BayeuxConfig {
        max_clients: 1,
        ..quick()
    })
    .await;
    s.handshake().await;
    let r = s
        .send(json!([{"channel":"/meta/handshake","version":"1.0"}]))
        .await;
    assert_eq!(r[0]["successful"], false);
    assert_eq!(r[0]["error"], "503::too_many_clients");
}

#[tokio::test]
async fn callback_polling_wraps_in_the_callback() {
    let s = start(quick()).await;
    let msg = "%5B%7B%22channel%22%3A%22%2Fmeta%2Fhandshake%22%2C%22version%22%3A%221.0%22%7D%5D";
    let r = s
        .request(
            "GET",
            &format!("/cometd/handshake?jsonp=my.cb_1&message={msg}"),
            "text/plain",
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let inner = r
        .body
        .strip_prefix("my.cb_1(")
        .unwrap()
        .strip_suffix(");")
        .unwrap();
    let v: Vec<Value> = serde_json::from_str(inner).unwrap();
    assert_eq!(v[0]["successful"], true);
    let r = s
        .request(
            "GET",
            &format!("/cometd?jsonp=alert(1)&message={msg}"),
            "text/plain",
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .request("GET", "/cometd?jsonp=cb", "text/plain", "", None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(s.bayeux.stats().clients, 1);
}

#[tokio::test]
async fn multiple_clients_advice_beyond_max_sessions_per_browser() {
    let s = std::sync::Arc::new(
        start(BayeuxConfig {
            timeout_ms: 20_000,
            ..quick()
        })
        .await,
    );
    let cookie = "BAYEUX_BROWSER=browser1";
    let mut ids = vec![];
    for _ in 0..2 {
        let id = s.handshake().await;
        s.connect(&id).await;
        ids.push(id);
    }
    let connect = |id: &str| {
        json!([{"channel":"/meta/connect","clientId":id,"connectionType":"long-polling"}])
            .to_string()
    };
    let first = tokio::spawn({
        let s = s.clone();
        let body = connect(&ids[0]);
        async move {
            s.request("POST", "/cometd", "application/json", &body, Some(cookie))
                .await
        }
    });
    eventually(|| s.bayeux.client(&ids[0]).is_some_and(|c| c.connect_held)).await;
    let t = Instant::now();
    let r = s
        .request(
            "POST",
            "/cometd",
            "application/json",
            &connect(&ids[1]),
            Some(cookie),
        )
        .await;
    assert!(t.elapsed() < Duration::from_secs(5), "not held");
    let m = &r.json()[0];
    assert_eq!(m["successful"], true);
    assert_eq!(m["advice"]["multiple-clients"], true, "{m}");
    assert_eq!(m["advice"]["interval"], 2000);
    // Another browser is not affected... it is held (abort after a moment).
    let other = tokio::spawn({
        let s = s.clone();
        let body = connect(&ids[1]);
        async move {
            s.request(
                "POST",
                "/cometd",
                "application/json",
                &body,
                Some("BAYEUX_BROWSER=b2"),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_finished());
    other.abort();
    first.abort();
}

#[tokio::test]
async fn server_api_publish_and_listeners() {
    let s = start(quick()).await;
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(
        Vec::<(String, Option<String>)>::new(),
    ));
    let seen2 = seen.clone();
    s.bayeux
        .add_listener("/news/**", move |_, p| {
            seen2
                .lock()
                .push((p.channel.to_owned(), p.from.map(str::to_owned)));
        })
        .unwrap();
    let a = s.client().await;
    s.subscribe(&a, json!("/news/*")).await;
    assert_eq!(s.bayeux.publish("/news/today", json!("x")).unwrap(), 1);
    s.publish(&a, "/news/sport", json!("y")).await;
    assert!(s.bayeux.publish("/news/*", json!(1)).is_err());
    assert!(s.bayeux.publish("/meta/connect", json!(1)).is_err());
    assert_eq!(
        *seen.lock(),
        [
            ("/news/today".to_owned(), None),
            ("/news/sport".to_owned(), Some(a.clone()))
        ]
    );
    assert_eq!(deliveries(&s.connect(&a).await).len(), 2);
    assert_eq!(
        s.bayeux
            .deliver("nope", remora_bayeux::Message::new("/service/x", json!(1))),
        Err(remora_bayeux::DeliverError::UnknownClient)
    );
}

#[tokio::test]
async fn remove_all_clients_answers_held_connects() {
    let s = std::sync::Arc::new(
        start(BayeuxConfig {
            timeout_ms: 20_000,
            ..quick()
        })
        .await,
    );
    let a = s.client().await;
    let held = tokio::spawn({
        let s = s.clone();
        let a = a.clone();
        async move { s.connect(&a).await }
    });
    eventually(|| s.bayeux.client(&a).is_some_and(|c| c.connect_held)).await;
    let t = Instant::now();
    assert_eq!(s.bayeux.remove_all_clients(), 1);
    let r = held.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r[0]["error"], "402::session_unknown");
    assert_eq!(r[0]["advice"]["reconnect"], "handshake");
    assert_eq!(s.bayeux.stats().clients, 0);
}
