//! Hostile input against a running balancer and two demo shops (real
//! processes), while an honest shopper keeps shopping: every answer is the
//! documented one, every process stays up, memory stays bounded, and every
//! one of the honest shopper's requests succeeds.

mod serve_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serve_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The balancer's header read timeout in this test.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The balancer's body limit in this test.
const MAX_BODY: usize = 65_536;
/// The shops' session idle timeout (short, to test expired cookies).
const IDLE: Duration = Duration::from_secs(2);

struct Shop {
    addr: SocketAddr,
    proc: Proc,
}

struct Setup {
    _dir: tempfile::TempDir,
    shops: Vec<Shop>,
    remora: Remora,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN).arg("keygen").output().expect("keygen");
    assert!(out.status.success());
    let keys = dir.path().join("remora.keys");
    std::fs::write(&keys, &out.stdout).expect("write keys");
    let mut shops = Vec::new();
    let mut servers = String::new();
    for name in ["shop-a", "shop-b"] {
        let addr = free_addr();
        let child = Command::new(BIN)
            .args([
                "demo-app",
                "--name",
                name,
                "--port",
                &addr.port().to_string(),
            ])
            .arg("--keys")
            .arg(&keys)
            .args(["--idle-timeout", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo-app");
        let proc = Proc { child };
        wait_listening(addr, Duration::from_secs(10));
        servers.push_str(&format!(
            "[[pool.server]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
        shops.push(Shop { addr, proc });
    }
    let (addr, adm) = (free_addr(), free_addr());
    let listener_extra = format!(
        "[listener.limits]\nheader_read_timeout = \"1s\"\nmax_header_bytes = 131072\nmax_body_bytes = {MAX_BODY}\n"
    );
    let text = format!(
        "[keys]\nfile = \"{}\"\n\n{}",
        keys.display(),
        config(addr, adm, &listener_extra, COOKIE_POOL, &servers)
    );
    let remora = start(&text, addr, adm);
    Setup {
        _dir: dir,
        shops,
        remora,
    }
}

impl Jar {
    /// One request with the replica protocol (capable mark; one resend
    /// with the replica on `409` + `Session-Replica-Wanted`).
    async fn send(
        &mut self,
        c: &HttpClient,
        url: &str,
        method: &str,
        body: &str,
    ) -> Result<Resp, String> {
        let mut resend = false;
        loop {
            let cookie = self.header();
            let seq = self.replica.as_ref().map(|(_, s)| s.to_string());
            let mut headers: Vec<(&str, &str)> =
                vec![("cookie", &cookie), ("content-type", "application/json")];
            if let Some(seq) = &seq {
                headers.push(("session-replica-capable", seq));
            }
            let blob = self.replica.as_ref().map(|(b, _)| b.clone());
            if resend && let Some(b) = &blob {
                headers.push(("session-replica", b));
            }
            let r = request(c, method, url, &headers, body).await?;
            self.absorb(&r);
            let wanted = r.status == 409 && r.headers.contains_key("session-replica-wanted");
            if wanted && !resend {
                resend = true;
                continue;
            }
            return Ok(r);
        }
    }
}

fn items(body: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["items"].as_array().map_or(0, Vec::len)
}

/// Shops until `stop`; every request must answer 200 with the right cart.
async fn honest_shopper(
    base: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<(), String> {
    let c = client();
    let mut jar = Jar::default();
    let login = jar
        .send(
            &c,
            &format!("{base}/api/login"),
            "POST",
            r#"{"user":"honest"}"#,
        )
        .await?;
    if login.status != 200 {
        return Err(format!("login: {} {}", login.status, login.body));
    }
    let skus = ["tea", "jam", "figs", "oats"];
    let mut lines = std::collections::BTreeSet::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (method, url, body) = if i % 2 == 1 {
            let sku = skus[(i / 2) % skus.len()];
            lines.insert(sku);
            (
                "POST",
                format!("{base}/api/cart/items"),
                format!(r#"{{"sku":"{sku}","qty":1}}"#),
            )
        } else {
            ("GET", format!("{base}/api/cart"), String::new())
        };
        let r = jar.send(&c, &url, method, &body).await?;
        if r.status != 200 {
            return Err(format!("{method} {url}: {} {}", r.status, r.body));
        }
        let have = items(&r.body);
        if have != lines.len() {
            return Err(format!(
                "{method} {url}: {have} lines, want {}: {}",
                lines.len(),
                r.body
            ));
        }
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sends `bytes` on a fresh connection and reads until the server closes
/// it or `timeout` passes; returns what was read.
async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

/// Status codes of every response in `bytes` (pipelined responses too).
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A client that trickles a request head one byte per `step`: closed by
/// the header read timeout, whether `step` is shorter than `park_after`
/// (250 ms: the connection never goes quiet) or longer (it goes quiet
/// between bytes, so it parks and wakes each time).
async fn slowloris(addr: SocketAddr, step: Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = b"GET /api/cart HTTP/1.1\r\nHost: shop\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    let closed = loop {
        if started.elapsed() > HEADER_READ_TIMEOUT * 10 {
            break false;
        }
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break true,
                // A 408 before the close is fine; keep reading for the close.
                Ok(_) => {}
            },
            _ = tokio::time::sleep(step) => {
                if sent < head.len() - 4 {
                    if s.write_all(&head[sent..sent + 1]).await.is_err() {
                        break true;
                    }
                    sent += 1;
                }
            }
        }
    };
    let took = started.elapsed();
    assert!(closed, "a slowloris connection is closed");
    assert!(
        took >= HEADER_READ_TIMEOUT && took < HEADER_READ_TIMEOUT * 8,
        "closed by the header read timeout, after {took:?}"
    );
}

async fn huge_headers(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let _ = wr
            .write_all(b"GET /api/cart HTTP/1.1\r\nHost: shop\r\nX-Big: ")
            .await;
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..160 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    };
    let (_, out) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("a 10 MB header section is refused quickly");
    let got = statuses(&out);
    assert!(
        got.is_empty() || got == [431],
        "10 MB of headers: 431 or a closed connection, got {got:?}"
    );
}

async fn body_over_limit(addr: SocketAddr) {
    let too_big = MAX_BODY + 1;
    let req = format!(
        "POST /api/cart/items HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: {too_big}\r\n\r\n"
    );
    let out = raw(addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(
        statuses(&out).first(),
        Some(&413),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

async fn invalid_utf8(addr: SocketAddr) {
    let cases: [&[u8]; 4] = [
        b"GET /api/cart/\xff\xfe HTTP/1.1\r\nHost: shop\r\n\r\n",
        b"DELETE /api/cart/items/%ff%fe%c3%28 HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n",
        b"GET /api/cart HTTP/1.1\r\nHost: shop\r\nCookie: remora_session=\xff\xfe\xc3\x28; REMORA_AFFINITY=\xc3\x28\r\n\r\n",
        b"GET /api/cart HTTP/1.1\r\nHost: shop\r\nCookie: remora_session=%ff%fe\r\n\r\n",
    ];
    for case in cases {
        let out = raw(addr, case, Duration::from_millis(1500)).await;
        let got = statuses(&out);
        assert!(
            got.iter().all(|&s| s < 500),
            "{:?}: no 5xx, got {got:?}",
            String::from_utf8_lossy(case)
        );
        // A cart answer, if any, is a fresh (empty) one.
        if got.first() == Some(&200) {
            assert!(String::from_utf8_lossy(&out).contains(r#""items":[]"#));
        }
    }
}

/// Smuggling attempts: each is refused with 400 and the request hidden in
/// its body never reaches a shop (it would crash it: `POST /api/crash`).
async fn smuggling(addr: SocketAddr) {
    let hidden = "POST /api/crash HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n";
    let cases = [
        format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
        ),
        format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nContent-Length: 70\r\n\r\n0\r\n\r\n{hidden}"
        ),
        format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: shop\r\nContent-Length: 0, {}\r\n\r\n{hidden}",
            hidden.len()
        ),
    ];
    for case in &cases {
        let out = raw(addr, case.as_bytes(), Duration::from_secs(3)).await;
        let got = statuses(&out);
        // `Content-Length` + `Transfer-Encoding`: RFC 9112 lets a server
        // either refuse it or read it as chunked and close the connection
        // after it; Remora refuses it. Either way the bytes after the body
        // are never read as a request (one answer only, and no shop
        // crashes: checked at the end of the test).
        assert_eq!(got, [400], "{case:?}: one 400, then the connection closes");
    }
}

async fn malformed_bayeux(c: &HttpClient, base: &str) {
    let cases = [
        "{\"channel\": ",
        "not json at all",
        "[{\"channel\":\"/meta/handshake\",\"version\":",
        "\u{0}\u{1}\u{2}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    for body in cases {
        let r = request(
            c,
            "POST",
            &format!("{base}/cometd"),
            &[("content-type", "application/json")],
            body,
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 400, "malformed Bayeux {body:?}: {}", r.body);
    }
}

/// Resident memory of a process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

const HANDSHAKES: usize = 10_000;
/// How much the shops together may grow for 10,000 idle Bayeux clients.
const HANDSHAKE_RSS_BOUND_KB: u64 = 64 * 1024;

async fn handshakes_without_connect(base: &str, shops: &[Shop]) -> u64 {
    let before: u64 = shops.iter().map(|s| rss_kb(s.proc.pid())).sum();
    let base = Arc::new(base.to_owned());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let c = client();
                for _ in 0..HANDSHAKES / 8 {
                    let r = request(
                        &c,
                        "POST",
                        &format!("{base}/cometd"),
                        &[("content-type", "application/json")],
                        r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#,
                    )
                    .await
                    .expect("handshake answered");
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert!(r.body.contains(r#""successful":true"#), "{}", r.body);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("handshake task");
    }
    let after: u64 = shops.iter().map(|s| rss_kb(s.proc.pid())).sum();
    assert!(
        after < before + HANDSHAKE_RSS_BOUND_KB,
        "{HANDSHAKES} handshakes grew the shops from {before} KiB to {after} KiB"
    );
    after.saturating_sub(before)
}

async fn forged_affinity(c: &HttpClient, r: &Remora) {
    let count = |m: &str| -> u64 {
        m.lines()
            .filter(|l| {
                l.starts_with("remora_affinity_total{") && l.contains(r#"outcome="invalid""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = count(&admin(c, r, "GET", "/metrics", "").await.body);
    let forged =
        "REMORA_AFFINITY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let url = format!("http://{}/api/whoami", r.addr);
    let resp = get(c, &url, &[("cookie", forged)]).await;
    assert_eq!(resp.status, 200, "a forged pin is treated as new");
    let fresh = resp.affinity_cookie().expect("a fresh pin");
    assert_ne!(fresh, forged);
    let after = count(&admin(c, r, "GET", "/metrics", "").await.body);
    assert_eq!(after, before + 1, "counted invalid");
}

fn rejected(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("remora_session_replica_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

/// A session made on `shop`: its cookies and replica.
async fn session_on(c: &HttpClient, shop: SocketAddr) -> Jar {
    let mut jar = Jar::default();
    let base = format!("http://{shop}");
    for sku in ["tea", "jam"] {
        let r = jar
            .send(
                c,
                &format!("{base}/api/cart/items"),
                "POST",
                &format!(r#"{{"sku":"{sku}","qty":1}}"#),
            )
            .await
            .expect("add");
        assert_eq!(r.status, 200);
    }
    assert!(jar.replica.is_some());
    jar
}

/// Sends `replica` (with `cookie`) to `shop`; the cart must be fresh.
async fn present(c: &HttpClient, shop: SocketAddr, cookie: &str, replica: &str) {
    let r = request(
        c,
        "GET",
        &format!("http://{shop}/api/cart"),
        &[("cookie", cookie), ("session-replica", replica)],
        "",
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200, "a bad replica never fails the request");
    assert_eq!(items(&r.body), 0, "a fresh cart: {}", r.body);
}

async fn forged_and_replayed_replicas(c: &HttpClient, shops: &[Shop]) {
    let (a, b) = (shops[0].addr, shops[1].addr);
    let metrics =
        |addr: SocketAddr| async move { get(c, &format!("http://{addr}/metrics"), &[]).await.body };
    let jar = session_on(c, a).await;
    let (blob, _) = jar.replica.clone().expect("replica");
    let before = metrics(b).await;
    // Tampered: one byte changed.
    let mut bytes = blob.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    present(
        c,
        b,
        &jar.header(),
        &String::from_utf8(bytes).expect("ascii"),
    )
    .await;
    // Forged: not a replica at all.
    present(
        c,
        b,
        &jar.header(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    // Replayed under another session's cookie: bound to the session id.
    let other = session_on(c, a).await;
    present(c, b, &other.header(), &blob).await;
    let after = metrics(b).await;
    assert!(
        rejected(&after, "tampered") >= rejected(&before, "tampered") + 2,
        "tampered and replayed replicas are counted: {after}"
    );
    assert!(
        rejected(&after, "tampered") + rejected(&after, "malformed")
            >= rejected(&before, "tampered") + rejected(&before, "malformed") + 3,
        "the forged replica is counted too: {after}"
    );
}

/// An idle session past its timeout: the cookie gives a fresh session and
/// its replica is refused as expired.
async fn expired_cookies(c: &HttpClient, a: SocketAddr, b: SocketAddr) {
    let jar = session_on(c, a).await;
    let (blob, _) = jar.replica.clone().expect("replica");
    tokio::time::sleep(IDLE + Duration::from_millis(800)).await;
    let before = get(c, &format!("http://{b}/metrics"), &[]).await.body;
    let r = request(
        c,
        "GET",
        &format!("http://{a}/api/cart"),
        &[("cookie", &jar.header())],
        "",
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(
        items(&r.body),
        0,
        "an expired session is a fresh one: {}",
        r.body
    );
    present(c, b, &jar.header(), &blob).await;
    let after = get(c, &format!("http://{b}/metrics"), &[]).await.body;
    assert_eq!(
        rejected(&after, "expired"),
        rejected(&before, "expired") + 1,
        "an expired replica is counted: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_leaves_honest_shoppers_served() {
    let mut s = setup();
    let c = client();
    let base = format!("http://{}", s.remora.addr);
    let addr = s.remora.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let honest = tokio::spawn(honest_shopper(base.clone(), stop.clone(), done.clone()));
    let balancer_before = rss_kb(s.remora.proc.pid());

    // Slow ones run beside the others.
    let slow = tokio::spawn(async move {
        tokio::join!(
            slowloris(addr, Duration::from_millis(100)),
            slowloris(addr, Duration::from_millis(400))
        );
    });
    let expired = {
        let (a, b) = (s.shops[0].addr, s.shops[1].addr);
        let c = c.clone();
        tokio::spawn(async move { expired_cookies(&c, a, b).await })
    };
    huge_headers(addr).await;
    body_over_limit(addr).await;
    invalid_utf8(addr).await;
    smuggling(addr).await;
    malformed_bayeux(&c, &base).await;
    forged_affinity(&c, &s.remora).await;
    forged_and_replayed_replicas(&c, &s.shops).await;
    let grew = handshakes_without_connect(&base, &s.shops).await;
    slow.await.expect("slowloris");
    expired.await.expect("expired cookies");

    stop.store(true, Ordering::Relaxed);
    honest
        .await
        .expect("honest task")
        .expect("every honest request succeeded");
    let served = done.load(Ordering::Relaxed);
    assert!(
        served >= 20,
        "the honest shopper was served throughout ({served})"
    );
    for shop in &mut s.shops {
        assert!(
            shop.proc.child.try_wait().expect("poll").is_none(),
            "a shop died"
        );
    }
    assert!(
        s.remora.proc.child.try_wait().expect("poll").is_none(),
        "the balancer died: {}",
        s.remora.log()
    );
    let balancer_after = rss_kb(s.remora.proc.pid());
    assert!(
        balancer_after < balancer_before + 64 * 1024,
        "balancer memory {balancer_before} -> {balancer_after} KiB"
    );
    eprintln!(
        "hostile: honest requests {served}; shops grew {grew} KiB for {HANDSHAKES} handshakes; balancer {balancer_before} -> {balancer_after} KiB"
    );
}
