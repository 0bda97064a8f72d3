//! `Bayeux::serve`: its own HTTP/1.1 loop for long-polling (keep-alive,
//! pipelining, a client closing during a held connect, shutdown) and the
//! hand-off to hyper for everything else; and `Bayeux::router` under
//! `axum::serve` still serving the same protocol.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::{deliveries, quick, start, start_router};
use remora_bayeux::{Bayeux, BayeuxConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.x client on one connection.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One parsed response.
#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Vec<Value> {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads one response (`Content-Length` or chunked body); `None` at end
    /// of stream before any byte of it.
    async fn read(&mut self) -> Option<RawResp> {
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, self.read_inner())
            .await
            .expect("response timed out")
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn read_inner(&mut self) -> Option<RawResp> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "truncated head");
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        self.buf.drain(..head_end);
        let mut resp = RawResp {
            status,
            headers,
            body: vec![],
        };
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "truncated body");
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "truncated chunk");
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "truncated chunk");
                }
                resp.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        Some(resp)
    }

    async fn bayeux(&mut self, messages: Value) -> Vec<Value> {
        self.send(&post("/cometd", &messages.to_string())).await;
        let r = self.read().await.expect("a response");
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    async fn handshake(&mut self) -> String {
        let r = self
            .bayeux(json!([{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]))
            .await;
        let id = r[0]["clientId"].as_str().unwrap().to_owned();
        let r = self.bayeux(connect(&id)).await;
        assert_eq!(r[0]["successful"], true, "{r:?}");
        id
    }
}

fn connect(id: &str) -> Value {
    json!([{"channel":"/meta/connect","clientId":id,"connectionType":"long-polling"}])
}

#[tokio::test]
async fn keep_alive_connection_carries_a_whole_session() {
    let s = start(quick()).await;
    let mut raw = Raw::connect(s.addr).await;
    let id = raw.handshake().await;
    let r = raw
        .bayeux(json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/a"}]))
        .await;
    assert_eq!(r[0]["successful"], true, "{r:?}");
    let r = raw
        .bayeux(json!([{"channel":"/a","clientId":id,"data":1}]))
        .await;
    assert_eq!(r[0]["successful"], true, "{r:?}");
    let r = raw.bayeux(connect(&id)).await;
    assert_eq!(deliveries(&r).len(), 1, "{r:?}");
    // The own loop's answers carry the same headers as the router's.
    raw.send(&post("/cometd/connect", &connect(&id).to_string()))
        .await;
    s.bayeux.publish("/a", json!(2)).unwrap();
    let r = raw.read().await.unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("date").is_some());
    assert_eq!(deliveries(&r.json())[0]["data"], 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = start(quick()).await;
    let mut raw = Raw::connect(s.addr).await;
    let id = raw.handshake().await;
    let two = format!(
        "{}{}",
        post(
            "/cometd",
            &json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/p","id":"1"}])
                .to_string()
        ),
        post(
            "/cometd",
            &json!([{"channel":"/p","clientId":id,"data":"x","id":"2"}]).to_string()
        )
    );
    raw.send(&two).await;
    let first = raw.read().await.unwrap().json();
    let second = raw.read().await.unwrap().json();
    assert_eq!(first[0]["id"], "1", "{first:?}");
    assert_eq!(second[0]["id"], "2", "{second:?}");
    let r = raw.bayeux(connect(&id)).await;
    assert_eq!(deliveries(&r)[0]["data"], "x", "{r:?}");
    // A request pipelined behind a held connect waits for it, then is read
    // from what arrived during the hold.
    let held_then_next = format!(
        "{}{}",
        post("/cometd", &connect(&id).to_string()),
        post(
            "/cometd",
            &json!([{"channel":"/p","clientId":id,"data":"y","id":"3"}]).to_string()
        )
    );
    raw.send(&held_then_next).await;
    common::eventually(|| s.bayeux.client(&id).is_some_and(|c| c.connect_held)).await;
    s.bayeux.publish("/p", json!("z")).unwrap();
    let r = raw.read().await.unwrap().json();
    assert_eq!(deliveries(&r)[0]["data"], "z", "{r:?}");
    let r = raw.read().await.unwrap().json();
    assert_eq!(r[0]["id"], "3", "{r:?}");
}

#[tokio::test]
async fn a_large_batch_of_deliveries_is_framed_whole() {
    // Bodies over 2 KiB go out as a vectored write of head and body: the
    // whole batch must arrive, in order, and the connection stay usable.
    let s = start(quick()).await;
    let mut raw = Raw::connect(s.addr).await;
    let id = raw.handshake().await;
    let r = raw
        .bayeux(json!([{"channel":"/meta/subscribe","clientId":id,"subscription":"/big"}]))
        .await;
    assert_eq!(r[0]["successful"], true, "{r:?}");
    let filler = "x".repeat(200);
    for i in 0..100 {
        s.bayeux
            .publish("/big", json!({"i": i, "f": filler}))
            .unwrap();
    }
    raw.send(&post("/cometd", &connect(&id).to_string())).await;
    let resp = raw.read().await.expect("a response");
    assert!(resp.body.len() > 20_000, "{} bytes", resp.body.len());
    let got: Vec<i64> = deliveries(&resp.json())
        .iter()
        .map(|m| m["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let r = raw
        .bayeux(json!([{"channel":"/big","clientId":id,"data":{"i":-1}}]))
        .await;
    assert_eq!(r[0]["successful"], true, "{r:?}");
}

#[tokio::test]
async fn closing_the_connection_abandons_the_held_connect() {
    let s = start(quick()).await;
    let mut raw = Raw::connect(s.addr).await;
    let id = raw.handshake().await;
    raw.send(&post("/cometd", &connect(&id).to_string())).await;
    common::eventually(|| s.bayeux.client(&id).is_some_and(|c| c.connect_held)).await;
    drop(raw);
    common::eventually(|| s.bayeux.client(&id).is_some_and(|c| !c.connect_held)).await;
}

#[tokio::test]
async fn other_requests_are_handed_to_hyper() {
    let bayeux = Bayeux::new(quick());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = axum::Router::new().route("/extra", axum::routing::get(|| async { "extra" }));
    let served = bayeux.clone();
    let task = tokio::spawn(async move {
        served
            .serve(listener, routes, std::future::pending())
            .await
            .unwrap()
    });

    // Another route, then long-polling on the same (now hyper's) connection.
    let mut raw = Raw::connect(addr).await;
    raw.send("GET /extra HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let r = raw.read().await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"extra"[..]));
    let id = raw.handshake().await;
    assert!(bayeux.client(&id).is_some());

    // HTTP/1.0, chunked and Expect: 100-continue bodies.
    let hs = json!([{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]).to_string();
    let mut raw = Raw::connect(addr).await;
    raw.send(&format!(
        "POST /cometd HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{hs}",
        hs.len()
    ))
    .await;
    assert_eq!(raw.read().await.unwrap().json()[0]["successful"], true);
    let mut raw = Raw::connect(addr).await;
    raw.send(&format!(
        "POST /cometd HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hs}\r\n0\r\n\r\n",
        hs.len()
    ))
    .await;
    assert_eq!(raw.read().await.unwrap().json()[0]["successful"], true);
    let mut raw = Raw::connect(addr).await;
    raw.send(&format!(
        "POST /cometd HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        hs.len()
    ))
    .await;
    assert_eq!(raw.read().await.unwrap().status, 100);
    raw.send(&hs).await;
    assert_eq!(raw.read().await.unwrap().json()[0]["successful"], true);

    // A body over max_request_bytes: 413 as from the router.
    let mut raw = Raw::connect(addr).await;
    let big = "x".repeat(BayeuxConfig::default().max_request_bytes + 1);
    raw.send(&post("/cometd", &big)).await;
    assert_eq!(raw.read().await.unwrap().status, 413);
    // Not JSON: 400 from the own loop, and the connection stays usable.
    let mut raw = Raw::connect(addr).await;
    raw.send(&post("/cometd", "{nope")).await;
    let r = raw.read().await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    raw.handshake().await;
    task.abort();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let bayeux = Bayeux::new(quick());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = bayeux.clone();
    let task = tokio::spawn(async move {
        served
            .serve(listener, axum::Router::new(), async {
                let _ = stop_rx.await;
            })
            .await
    });
    let mut idle = Raw::connect(addr).await;
    let id = idle.handshake().await;
    let mut held = Raw::connect(addr).await;
    held.send(&post("/cometd", &connect(&id).to_string())).await;
    common::eventually(|| bayeux.client(&id).is_some_and(|c| c.connect_held)).await;

    stop_tx.send(()).unwrap();
    // The idle keep-alive connection is closed at once.
    assert!(idle.read().await.is_none());
    // The held connect finishes (here: released by removing the clients)
    // with `Connection: close`, then serve returns.
    bayeux.remove_all_clients();
    let r = held.read().await.unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.json()[0]["error"], "402::session_unknown");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_router_under_axum_serve_still_serves_bayeux() {
    let s = start_router(Bayeux::new(quick())).await;
    let on = s.client().await;
    s.subscribe(&on, json!("/r")).await;
    assert_eq!(s.publish(&on, "/r", json!(7)).await["successful"], true);
    let r = s.connect(&on).await;
    assert_eq!(deliveries(&r)[0]["data"], 7, "{r:?}");
    let r = s.post("{nope").await;
    assert_eq!(r.status, 400);
}
