//! The websocket transport, with tokio-tungstenite as the client.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{deliveries, quick, start};
use futures_util::{SinkExt, StreamExt};
use remora_bayeux::BayeuxConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: std::net::SocketAddr) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/cometd"))
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Socket) -> Vec<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame in time")
            .expect("socket closed")
            .unwrap();
        if let Ws::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn handshake_and_connect(ws: &mut Socket) -> String {
    send(ws, json!([{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket"],"id":"1"}])).await;
    let r = recv(ws).await;
    assert_eq!(r[0]["successful"], true, "{r:?}");
    let id = r[0]["clientId"].as_str().unwrap().to_owned();
    send(ws, json!([{"channel":"/meta/connect","clientId":id,"connectionType":"websocket","advice":{"timeout":0},"id":"2"}])).await;
    let r = recv(ws).await;
    assert_eq!(r[0]["channel"], "/meta/connect");
    assert_eq!(r[0]["successful"], true);
    id
}

#[tokio::test]
async fn websocket_holds_connect_and_pushes_messages() {
    let s = start(BayeuxConfig {
        timeout_ms: 20_000,
        ..quick()
    })
    .await;
    let mut ws = open(s.addr).await;
    let id = handshake_and_connect(&mut ws).await;
    send(
        &mut ws,
        json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/room/*","id":"3"}]),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["successful"], true);
    // Held connect: no reply yet.
    send(
        &mut ws,
        json!([{"channel":"/meta/connect","clientId":id,"connectionType":"websocket","id":"4"}]),
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err()
    );
    // A long-polling client publishes; the websocket gets it pushed.
    let other = s.client().await;
    s.publish(&other, "/room/1", json!({"n": 1})).await;
    let r = recv(&mut ws).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["channel"], "/room/1");
    assert_eq!(r[0]["data"]["n"], 1);
    // Publishing from the websocket reaches a long-polling subscriber.
    s.subscribe(&other, json!("/room/**")).await;
    send(
        &mut ws,
        json!([{"channel":"/room/2","clientId":id,"data":"hey","id":"5"}]),
    )
    .await;
    // Our own publish reply, and (subscribed to /room/*) the message itself.
    let mut got = vec![];
    while got.len() < 2 {
        got.extend(recv(&mut ws).await);
    }
    assert!(
        got.iter()
            .any(|m| m["id"] == "5" && m["successful"] == true),
        "{got:?}"
    );
    assert_eq!(deliveries(&s.connect(&other).await)[0]["data"], "hey");
}

#[tokio::test]
async fn websocket_connect_is_answered_at_timeout() {
    let s = start(BayeuxConfig {
        timeout_ms: 300,
        ..quick()
    })
    .await;
    let mut ws = open(s.addr).await;
    let id = handshake_and_connect(&mut ws).await;
    let t = Instant::now();
    send(
        &mut ws,
        json!([{"channel":"/meta/connect","clientId":id,"connectionType":"websocket","id":"x"}]),
    )
    .await;
    let r = recv(&mut ws).await;
    assert!(t.elapsed() >= Duration::from_millis(280));
    assert_eq!(r[0]["id"], "x");
    assert_eq!(r[0]["successful"], true);
}

#[tokio::test]
async fn websocket_unknown_client_and_invalid_json() {
    let s = start(quick()).await;
    let mut ws = open(s.addr).await;
    send(
        &mut ws,
        json!([{"channel":"/meta/connect","clientId":"nope","connectionType":"websocket"}]),
    )
    .await;
    let r = recv(&mut ws).await;
    assert_eq!(r[0]["error"], "402::session_unknown");
    assert_eq!(r[0]["advice"]["reconnect"], "handshake");
    ws.send(Ws::Text("[{".into())).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match frame {
        Some(Ok(Ws::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1003),
        other => panic!("expected close, got {other:?}"),
    }
    assert_eq!(s.bayeux.stats().clients, 0);
}

#[tokio::test]
async fn websocket_ack_extension_delivers_with_connect_reply() {
    let s = start(BayeuxConfig {
        timeout_ms: 20_000,
        ..quick()
    })
    .await;
    let mut ws = open(s.addr).await;
    send(
        &mut ws,
        json!([{"channel":"/meta/handshake","version":"1.0","ext":{"ack":true}}]),
    )
    .await;
    let r = recv(&mut ws).await;
    assert_eq!(r[0]["ext"]["ack"], true);
    let id = r[0]["clientId"].as_str().unwrap().to_owned();
    send(&mut ws, json!([{"channel":"/meta/connect","clientId":id,"connectionType":"websocket","advice":{"timeout":0},"ext":{"ack":0}}])).await;
    let r = recv(&mut ws).await;
    assert_eq!(r[0]["ext"]["ack"], 0);
    send(
        &mut ws,
        json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/a"}]),
    )
    .await;
    recv(&mut ws).await;
    send(&mut ws, json!([{"channel":"/meta/connect","clientId":id,"connectionType":"websocket","ext":{"ack":0}}])).await;
    common::eventually(|| s.bayeux.client(&id).is_some_and(|c| c.connect_held)).await;
    s.bayeux.publish("/a", json!(1)).unwrap();
    let r = recv(&mut ws).await;
    assert_eq!(r.len(), 2, "message and connect reply together: {r:?}");
    assert_eq!(r[0]["channel"], "/a");
    assert_eq!(r[1]["channel"], "/meta/connect");
    assert_eq!(r[1]["ext"]["ack"], 1);
}
