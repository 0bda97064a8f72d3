//! `remora serve` limits, PROXY protocol, admin auth, and `remora check`.

mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serve_support::*;

const LIMITS: &str = r#"[listener.limits]
max_header_bytes = 4096
max_body_bytes = 1024
header_read_timeout = "500ms"
server_timeout = "400ms"
"#;

/// Sends raw bytes, returns everything read until close or `timeout`.
fn raw(addr: std::net::SocketAddr, data: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(data).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 200") {
                    // error responses: headers are enough
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_431_413_400_504_and_slowloris_close() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, LIMITS, COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let c = client();
    let base = format!("http://{addr}");

    let ok = get(&c, &format!("{base}/whoami"), &[]).await;
    assert_eq!(ok.status, 200);

    let big = "x".repeat(6000);
    let resp = request(&c, "GET", &format!("{base}/whoami"), &[("x-big", &big)], "").await;
    match resp {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => panic!("expected 431, got {e}"),
    }

    let resp = request(&c, "POST", &format!("{base}/echo"), &[], &"y".repeat(2000))
        .await
        .expect("413 response");
    assert_eq!(resp.status, 413);
    let resp = request(&c, "POST", &format!("{base}/echo"), &[], &"y".repeat(1000))
        .await
        .expect("small body");
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("\"body_len\":1000"), "{}", resp.body);

    // Chunked body over the limit (no Content-Length): 413 as well.
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'z'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let out = raw(addr, &chunked, Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    let out = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(addr, b"\x16\x03\x01garbage\r\n\r\n", Duration::from_secs(5));
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");

    let resp = get(&c, &format!("{base}/slow?ms=3000"), &[]).await;
    assert_eq!(resp.status, 504);

    // Slowloris: a header section trickling in is cut at header_read_timeout.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"X-a: b\r\n").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                // a 408 before the close is fine
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "slowloris connection still open after 5s");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed too late: {:?}",
        start.elapsed()
    );

    // The proxy is still fine.
    assert_eq!(get(&c, &format!("{base}/whoami"), &[]).await.status, 200);
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_503_with_retry_after() {
    let dead = free_addr();
    let (addr, adm) = (free_addr(), free_addr());
    let servers = format!("[[pool.server]]\nname = \"dead\"\naddress = \"{dead}\"\n");
    let r = start(&config(addr, adm, "", COOKIE_POOL, &servers), addr, adm);
    let c = client();
    let resp = get(&c, &format!("http://{addr}/whoami"), &[]).await;
    assert_eq!(resp.status, 503, "{}", r.log());
    assert!(resp.headers.contains_key("retry-after"));
    assert!(resp.body.len() < 100);
    assert!(r.log().contains("DOWN"), "{}", r.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_set_forwarded_for() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(
            addr,
            adm,
            "proxy_protocol = true",
            COOKIE_POOL,
            &servers_toml(&[&b1]),
        ),
        addr,
        adm,
    );
    let req = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n".to_vec();
    v1.extend_from_slice(req);
    let out = raw(addr, &v1, Duration::from_secs(5));
    assert!(out.contains("203.0.113.7"), "{out}");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x40, 0, 80,
    ]);
    v2.extend_from_slice(req);
    let out = raw(addr, &v2, Duration::from_secs(5));
    assert!(out.contains("198.51.100.9"), "{out}");

    // Without a header the connection is refused.
    let out = raw(addr, req, Duration::from_secs(2));
    assert!(out.is_empty(), "{out}");
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_bearer_token() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let c = client();
    for path in ["/api/servers", "/metrics"] {
        let url = format!("http://{adm}{path}");
        assert_eq!(get(&c, &url, &[]).await.status, 401, "{path}");
        assert_eq!(
            get(&c, &url, &[("authorization", "Bearer wrong")])
                .await
                .status,
            401
        );
        let ok = admin(&c, &r, "GET", path, "").await;
        assert_eq!(ok.status, 200, "{path}");
    }
    let put = request(
        &c,
        "PUT",
        &format!("http://{adm}/api/pools/app/servers/b1/state"),
        &[],
        r#"{"state":"drain"}"#,
    )
    .await
    .expect("put");
    assert_eq!(put.status, 401);
    let metrics = admin(&c, &r, "GET", "/metrics", "").await.body;
    for name in [
        "remora_active_connections",
        "remora_server_up",
        "remora_request_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"[[listener]]
name = "web"
listen = "127.0.0.1:8080"
pool = "app"

[[pool]]
name = "app"
[pool.affinity]
mode = "cookie"
max_idle = "30m"

[[pool.server]]
name = "b1"
address = "127.0.0.1:9101"
"#;

#[test]
fn check_reports_file_line_col_and_exits_2() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"max_idle\": \"30m\""), "{out}");

    let cases = [
        (
            GOOD.replace("pool = \"app\"\n", "pool = \"app\"\nbogus = 1\n"),
            ":5:1:",
            "unknown field",
        ),
        (
            GOOD.replace("\"30m\"", "\"30 parsecs\""),
            ":10:12:",
            "bad duration",
        ),
        (
            format!("{GOOD}\n[[pool.server]]\nname = \"b1\"\naddress = \"127.0.0.1:9102\"\n"),
            ":17:8:",
            "duplicate server name",
        ),
        (
            GOOD.replace("pool = \"app\"", "pool = \"nope\""),
            ":4:8:",
            "unknown pool",
        ),
        (
            GOOD.replace("127.0.0.1:9101", "nowhere"),
            ":14:11:",
            "bad address",
        ),
    ];
    for (text, pos, msg) in cases {
        let (code, _, err) = check(&text);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("bad.toml") && err.contains(pos) && err.contains(msg),
            "want {pos} {msg}, got: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(
            addr,
            adm,
            "[listener.limits]\nidle_timeout = \"300ms\"",
            COOKIE_POOL,
            &servers_toml(&[&b1]),
        ),
        addr,
        adm,
    );
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "idle connection still open");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
    drop(r);
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(1) => out.push(buf[0]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
    let head = String::from_utf8_lossy(&out).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_keep_alive_connection_serves_the_next_request() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n";
    for pause in [0, 700, 100, 900] {
        std::thread::sleep(Duration::from_millis(pause));
        s.write_all(req).expect("write");
        let resp = read_response(&mut s);
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("b1"),
            "after {pause}ms: {resp}"
        );
    }
    // Pipelined requests after a park: both answered, in order.
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(read_response(&mut s).ends_with("b1"));
    assert!(read_response(&mut s).contains("\"uri\":\"/echo\""));
    drop(r);
}

/// The value of an unlabelled gauge in the admin's `/metrics`.
async fn gauge(c: &HttpClient, r: &Remora, name: &str) -> Option<u64> {
    let text = admin(c, r, "GET", "/metrics", "").await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parked_connections_each_serve_a_second_request() {
    const N: usize = 200;
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    // `park_after` far beyond the test: only the park right after a
    // connection's first answer can park them.
    let limits = "[listener.limits]\npark_after = \"600s\"\n";
    let r = start(
        &config(addr, adm, limits, COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let c = client();
    let req = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(req).expect("write");
        let resp = read_response(&mut s);
        assert!(
            resp.ends_with("b1"),
            "connection {i}, first request: {resp}"
        );
        conns.push(s);
    }
    // Every connection parks once answered (none is closed): the gauge
    // counts them all.
    let parked = eventually(Duration::from_secs(10), || async {
        gauge(&c, &r, "remora_parked_connections").await == Some(N as u64)
    })
    .await;
    assert!(
        parked,
        "parked: {:?}",
        gauge(&c, &r, "remora_parked_connections").await
    );
    // Each wakes for its next request, on the same socket.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(req).expect("write");
        let resp = read_response(s);
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("b1"),
            "connection {i}, second request: {resp}"
        );
    }
    drop(conns);
    drop(r);
}
