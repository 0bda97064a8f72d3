//! Shared test helpers: real Redis/PostgreSQL (from the environment or a
//! private server started from PATH), and an in-process request driver.
#![allow(missing_docs)]
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub mod app;

/// Whether missing services must fail the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("REMORA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skip (print why) or, under `REMORA_REQUIRE_SERVICES=1`, fail.
pub fn skip(reason: &str) {
    if required() {
        panic!("required service unavailable: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A process-unique name fragment.
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        remora_session::record::now_ms() % 1_000_000
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, up: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if ok == up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private `redis-server` on a free port, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl PrivateRedis {
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mut r = PrivateRedis {
            port: free_port(),
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.resume().then_some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                self.child = Some(c);
                wait_port(self.port, true, Duration::from_secs(10))
            }
            Err(_) => false,
        }
    }

    /// Kills the server and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(5));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis URL: `REDIS_URL`, or a private server (returned to keep alive).
pub fn redis() -> Option<(String, Option<PrivateRedis>)> {
    if let Ok(u) = std::env::var("REDIS_URL") {
        return Some((u, None));
    }
    match PrivateRedis::start() {
        Some(p) => Some((p.url(), Some(p))),
        None => {
            skip("no REDIS_URL and no redis-server on PATH could be started");
            None
        }
    }
}

/// A private three-node Redis Cluster (no replicas), killed on drop.
pub struct PrivateRedisCluster {
    pub nodes: Vec<PrivateRedis>,
}

impl PrivateRedisCluster {
    pub fn start() -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The bus port is given: by default it is the port plus 10,000,
            // and a free port above 55535 (a fifth of Linux's ephemeral range)
            // then makes the node refuse to start.
            let bus = free_port().to_string();
            nodes.push(PrivateRedis::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
            ])?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let ok = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let all_ok = nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if all_ok {
                return Some(PrivateRedisCluster { nodes });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}

/// A private PostgreSQL cluster in a temp dir, stopped on drop.
pub struct PrivatePostgres {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// `name` on PATH, or in Debian's `/usr/lib/postgresql/*/bin`.
fn pg_bin(name: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let mut v: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v.pop()
    })
}

fn id_of(flag: &str, user: Option<&str>) -> Option<u32> {
    let out = Command::new("id").arg(flag).args(user).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A command, run as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root).
fn pg_command(bin: &std::path::Path, as_user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = as_user {
        c.uid(uid).gid(gid);
    }
    c
}

impl PrivatePostgres {
    pub fn start() -> Option<Self> {
        let (initdb, postgres) = (pg_bin("initdb")?, pg_bin("postgres")?);
        let dir = tempfile::tempdir().ok()?;
        let as_user = if id_of("-u", None) == Some(0) {
            Some((
                id_of("-u", Some("postgres"))?,
                id_of("-g", Some("postgres"))?,
            ))
        } else {
            None
        };
        if as_user.is_some() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
        }
        let data = dir.path().join("data");
        let ok = pg_command(&initdb, as_user)
            .args(["-U", "postgres", "-A", "trust", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let port = free_port();
        let child = pg_command(&postgres, as_user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let p = PrivatePostgres {
            port,
            child: Some(child),
            _dir: dir,
        };
        if !wait_port(port, true, Duration::from_secs(20)) {
            return None;
        }
        // Accepting connections is not yet accepting queries.
        let ready = pg_bin("pg_isready")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(p);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A PostgreSQL URL: `DATABASE_URL`, or a private server.
pub fn postgres() -> Option<(String, Option<PrivatePostgres>)> {
    if let Ok(u) = std::env::var("DATABASE_URL") {
        return Some((u, None));
    }
    match PrivatePostgres::start() {
        Some(p) => Some((
            format!("postgres://postgres@127.0.0.1:{}/postgres", p.port),
            Some(p),
        )),
        None => {
            skip(
                "no DATABASE_URL and no private postgres could be started (initdb/postgres on PATH, not as root)",
            );
            None
        }
    }
}

/// A client for in-process requests that keeps one session cookie.
#[derive(Clone, Default)]
pub struct Browser {
    pub cookie: Option<String>,
}

/// A response with its body read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Browser {
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        b.body(Body::from(body.unwrap_or_default().to_owned()))
            .expect("request")
    }

    /// Takes the cookie from a response, like a browser would.
    pub fn absorb(&mut self, got: &Got) {
        if let Some(sc) = got.set_cookie() {
            let first = sc.split(';').next().unwrap_or_default().to_owned();
            if sc.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(first);
            }
        }
    }

    pub async fn send(&mut self, app: &Router, req: Request<Body>) -> Got {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let got = read(resp).await;
        self.absorb(&got);
        got
    }

    pub async fn call(&mut self, app: &Router, method: &str, path: &str) -> Got {
        let req = self.request(method, path, None);
        self.send(app, req).await
    }
}

pub async fn read(resp: Response<Body>) -> Got {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_default();
    Got {
        status,
        headers,
        body,
    }
}

/// The session ID in a `name=value` cookie.
pub fn cookie_id(cookie: &str) -> String {
    cookie
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// Serves `app` on 127.0.0.1:0; the task is aborted on drop.
pub struct Served {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(app: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served { addr, task }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A real HTTP client keeping one session cookie.
#[derive(Clone)]
pub struct HttpBrowser {
    pub base: String,
    pub cookie: Option<String>,
    client: Client,
}

impl HttpBrowser {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        HttpBrowser {
            base: format!("http://{addr}"),
            cookie: None,
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Got {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = b
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .expect("request");
        let resp = self.client.request(req).await.expect("http request");
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        let got = Got {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        let mut jar = Browser {
            cookie: self.cookie.take(),
        };
        jar.absorb(&got);
        self.cookie = jar.cookie;
        got
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.send("GET", path, None, "", &[]).await
    }

    pub async fn post_json(&mut self, path: &str, json: &str) -> Got {
        self.send("POST", path, Some("application/json"), json, &[])
            .await
    }
}

/// Drops a test table when the test ends.
pub struct DropTable {
    pub url: String,
    pub table: String,
}

impl Drop for DropTable {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP TABLE IF EXISTS {}", self.table);
        // Own thread and runtime: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let task = tokio::spawn(conn);
                    let _ = client.batch_execute(&sql).await;
                    drop(client);
                    let _ = task.await;
                }
            });
        })
        .join();
    }
}
