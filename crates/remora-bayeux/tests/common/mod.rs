//! Test helpers: a Bayeux server on an ephemeral port and a raw HTTP client.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use remora_bayeux::{Bayeux, BayeuxConfig};
use serde_json::{Value, json};

pub struct Server {
    pub bayeux: Bayeux,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Resp {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Vec<Value> {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A config with short timings for tests.
pub fn quick() -> BayeuxConfig {
    BayeuxConfig {
        timeout_ms: 2_000,
        ..BayeuxConfig::default()
    }
}

pub async fn start(config: BayeuxConfig) -> Server {
    start_with(Bayeux::new(config)).await
}

/// Serves `bayeux` with `Bayeux::serve` (its own HTTP/1.1 loop for
/// long-polling, hyper and the router for the rest), as `remora bayeux` does.
pub async fn start_with(bayeux: Bayeux) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = bayeux.clone();
    let task = tokio::spawn(async move {
        let _ = served
            .serve(listener, axum::Router::new(), std::future::pending())
            .await;
    });
    server(bayeux, addr, task)
}

/// Serves `bayeux` as an embedding app does: `axum::serve` with
/// `Bayeux::router`.
pub async fn start_router(bayeux: Bayeux) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = bayeux.router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    server(bayeux, addr, task)
}

fn server(bayeux: Bayeux, addr: SocketAddr, task: tokio::task::JoinHandle<()>) -> Server {
    let http = Client::builder(TokioExecutor::new()).build_http();
    Server {
        bayeux,
        addr,
        task,
        http,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> Resp {
        let mut req = http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", content_type);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    pub async fn post(&self, body: &str) -> Resp {
        self.request("POST", "/cometd", "application/json", body, None)
            .await
    }

    /// POSTs `messages`, asserts HTTP 200 and returns the reply array.
    pub async fn send(&self, messages: Value) -> Vec<Value> {
        let r = self.post(&messages.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub async fn handshake_with(&self, ext: Value) -> String {
        let r = self
            .send(json!([{
                "channel": "/meta/handshake", "version": "1.0", "id": "h",
                "supportedConnectionTypes": ["long-polling"], "ext": ext,
            }]))
            .await;
        assert_eq!(r[0]["successful"], true, "{r:?}");
        r[0]["clientId"].as_str().unwrap().to_owned()
    }

    pub async fn handshake(&self) -> String {
        self.handshake_with(json!({})).await
    }

    /// Handshake and first (immediate) connect.
    pub async fn client(&self) -> String {
        let id = self.handshake().await;
        let r = self.connect(&id).await;
        assert_eq!(r.last().unwrap()["successful"], true, "{r:?}");
        id
    }

    pub async fn connect(&self, id: &str) -> Vec<Value> {
        self.send(json!([{"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "id": "c"}]))
            .await
    }

    pub async fn subscribe(&self, id: &str, sub: Value) -> Value {
        let r = self
            .send(json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": sub, "id": "s"}]))
            .await;
        r[0].clone()
    }

    pub async fn publish(&self, id: &str, channel: &str, data: Value) -> Value {
        let r = self
            .send(json!([{"channel": channel, "clientId": id, "data": data, "id": "p"}]))
            .await;
        r[0].clone()
    }
}

/// The non-meta messages of a reply array.
pub fn deliveries(r: &[Value]) -> Vec<Value> {
    r.iter()
        .filter(|m| !m["channel"].as_str().unwrap_or("").starts_with("/meta/"))
        .cloned()
        .collect()
}

/// Polls `f` until true or 10 s pass.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
