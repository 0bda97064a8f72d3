//! Shared helpers for the `serve_*` integration tests: real `remora serve`
//! and `remora test-backend` processes, killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_remora");
pub const TOKEN: &str = "test-token";

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free local port (bound then released), below the kernel's ephemeral
/// range: a port from that range (what binding port 0 gives) can be taken
/// by an outgoing connection of a test running in parallel between this
/// check and the server's own bind, and the server then cannot start.
pub fn free_addr() -> SocketAddr {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let r = RandomState::new().hash_one(Instant::now());
        let port = low + (r % u64::from(high - low)) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local addr");
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr")
}

/// Waits until `addr` accepts TCP connections, while `proc` runs; false
/// when it exited or the time ran out.
fn listening_while_alive(proc: &mut Proc, addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        if !matches!(proc.child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never started listening");
}

/// A running test backend.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

pub fn backend(name: &str) -> Backend {
    backend_with(name, &[])
}

pub fn backend_at(name: &str, addr: SocketAddr) -> Backend {
    let child = Command::new(BIN)
        .args([
            "test-backend",
            "--name",
            name,
            "--listen",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn test-backend");
    let proc = Proc { child };
    wait_listening(addr, Duration::from_secs(10));
    Backend {
        name: name.to_string(),
        addr,
        proc,
    }
}

pub fn backend_with(name: &str, extra: &[&str]) -> Backend {
    let addr = free_addr();
    let child = Command::new(BIN)
        .args([
            "test-backend",
            "--name",
            name,
            "--listen",
            &addr.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn test-backend");
    let proc = Proc { child };
    wait_listening(addr, Duration::from_secs(10));
    Backend {
        name: name.to_string(),
        addr,
        proc,
    }
}

/// A running `remora serve`.
pub struct Remora {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

impl Remora {
    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("remora.log")).unwrap_or_default()
    }

    pub fn rewrite(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }
}

/// The `[[pool.server]]` blocks for `backends`.
pub fn servers_toml(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| {
            format!(
                "[[pool.server]]\nname = \"{}\"\naddress = \"{}\"\n",
                b.name, b.addr
            )
        })
        .collect()
}

/// A config with one listener at `addr`, an admin listener, and one pool
/// "app" whose body is `pool_extra` followed by `servers`.
pub fn config(
    addr: SocketAddr,
    admin: SocketAddr,
    listener_extra: &str,
    pool_extra: &str,
    servers: &str,
) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
token = "{TOKEN}"

[[listener]]
name = "web"
listen = "{addr}"
pool = "app"
{listener_extra}

[[pool]]
name = "app"
{pool_extra}
{servers}
"#
    )
}

/// Cookie affinity and fast health checks.
pub const COOKIE_POOL: &str = r#"algorithm = "round-robin"
retries = 2
[pool.affinity]
mode = "cookie"
[pool.health]
path = "/health"
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1
"#;

/// Starts `remora serve` with `text` (placeholders already filled).
pub fn start(text: &str, addr: SocketAddr, admin: SocketAddr) -> Remora {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir, text, addr, admin)
}

pub fn start_in(dir: tempfile::TempDir, text: &str, addr: SocketAddr, admin: SocketAddr) -> Remora {
    let config = dir.path().join("remora.toml");
    std::fs::write(&config, text).expect("write config");
    let log = std::fs::File::create(dir.path().join("remora.log")).expect("log file");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("REMORA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn remora serve");
    let mut proc = Proc { child };
    for a in [addr, admin] {
        if !listening_while_alive(&mut proc, a, Duration::from_secs(10)) {
            let log = std::fs::read_to_string(dir.path().join("remora.log")).unwrap_or_default();
            panic!("remora serve did not start listening on {a}:\n{log}");
        }
    }
    Remora {
        dir,
        config,
        addr,
        admin,
        proc,
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    /// The value of our affinity cookie in `Set-Cookie`, if any.
    pub fn affinity_cookie(&self) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("REMORA_AFFINITY="))
            .map(|v| v.split(';').next().unwrap_or("").to_string())
    }
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    request(client, "GET", url, headers, "")
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET /whoami` through the proxy with an optional cookie.
pub async fn whoami(client: &HttpClient, r: &Remora, cookie: Option<&str>) -> Resp {
    let url = format!("http://{}/whoami", r.addr);
    match cookie {
        Some(c) => get(client, &url, &[("cookie", c)]).await,
        None => get(client, &url, &[]).await,
    }
}

pub async fn admin(client: &HttpClient, r: &Remora, method: &str, path: &str, body: &str) -> Resp {
    let url = format!("http://{}{path}", r.admin);
    let auth = format!("Bearer {TOKEN}");
    request(client, method, &url, &[("authorization", &auth)], body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Polls `f` until it returns true, at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Cookies and the newest replica, kept as `js/remora-client` keeps them.
#[derive(Default, Clone)]
pub struct Jar {
    pub cookies: std::collections::BTreeMap<String, String>,
    pub replica: Option<(String, u64)>,
}

impl Jar {
    /// The `Cookie` header for the next request.
    pub fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Takes `Set-Cookie`s and a newer `Session-Replica` from a response.
    pub fn absorb(&mut self, r: &Resp) {
        for v in r.headers.get_all(http::header::SET_COOKIE) {
            let Ok(text) = v.to_str() else { continue };
            let Some((k, val)) = text.split(';').next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            if val.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
        let seq = r
            .headers
            .get("session-replica-seq")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let (Some(rep), Some(seq)) = (r.headers.get("session-replica"), seq)
            && self.replica.as_ref().is_none_or(|(_, s)| seq >= *s)
        {
            self.replica = Some((rep.to_str().expect("ascii replica").to_owned(), seq));
        }
    }
}

/// Sends `msg` as a text frame on `ws` and returns the text of the frame
/// that comes back (5 s at most).
pub async fn ws_round_trip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
        .await
        .expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("reply timeout")
        .expect("stream open")
        .expect("frame");
    reply.into_text().expect("text").as_str().to_string()
}
