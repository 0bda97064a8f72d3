//! `remora serve` against real backends: stickiness, repin, drain, reload,
//! WebSocket.

mod serve_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use serve_support::*;

/// Asserts that pool "app" counted `n` affinity hits; returns the metrics.
async fn assert_hits(c: &HttpClient, r: &Remora, n: u64) -> String {
    let metrics = admin(c, r, "GET", "/metrics", "").await.body;
    let line = format!(r#"remora_affinity_total{{pool="app",outcome="hit",reason=""}} {n}"#);
    assert!(metrics.contains(&line), "want {line}:\n{metrics}");
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_over_50_requests_and_spread_without_cookie() {
    let (b1, b2, b3) = (
        backend("srv-alpha"),
        backend("srv-bravo"),
        backend("srv-charlie"),
    );
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1, &b2, &b3])),
        addr,
        adm,
    );
    let c = client();
    let first = whoami(&c, &r, None).await;
    assert_eq!(first.status, 200);
    let cookie = first.affinity_cookie().expect("affinity cookie issued");
    assert!(
        !cookie.contains(&first.body) && !cookie.contains("127.0.0.1"),
        "cookie must not leak the server: {cookie}"
    );
    for i in 0..50 {
        let resp = whoami(&c, &r, Some(&cookie)).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, first.body, "request {i} left its server");
    }
    let mut seen = HashSet::new();
    for _ in 0..12 {
        seen.insert(whoami(&c, &r, None).await.body);
    }
    assert_eq!(
        seen.len(),
        3,
        "new clients spread over all servers: {seen:?}"
    );
    // A tampered cookie is "invalid" and gets a fresh pin, never an error.
    let tampered = format!("{}x", cookie);
    let resp = whoami(&c, &r, Some(&tampered)).await;
    assert_eq!(resp.status, 200);
    assert!(resp.affinity_cookie().is_some());
    let metrics = assert_hits(&c, &r, 50).await;
    assert!(metrics.contains(r#"outcome="invalid""#), "{metrics}");
}

/// The affinity cookie is Remora's own: servers never see it (as with
/// HAProxy's `indirect`) while the application's cookies still reach them,
/// unless `forward_cookie = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_is_kept_from_servers_unless_forwarded() {
    let b1 = backend("b1");
    for forward in [false, true] {
        let (addr, adm) = (free_addr(), free_addr());
        let pool = COOKIE_POOL.replace(
            "mode = \"cookie\"",
            &format!("mode = \"cookie\"\nforward_cookie = {forward}"),
        );
        let r = start(
            &config(addr, adm, "", &pool, &servers_toml(&[&b1])),
            addr,
            adm,
        );
        let c = client();
        let cookie = whoami(&c, &r, None)
            .await
            .affinity_cookie()
            .expect("cookie");
        let echoed = |resp: Resp| {
            assert_eq!(resp.status, 200);
            let echo: serde_json::Value = serde_json::from_str(&resp.body).expect("echo json");
            echo["headers"]["cookie"].clone()
        };
        let url = format!("http://{addr}/echo");
        let both = format!("app=1; {cookie}");
        let seen = echoed(
            request(&c, "GET", &url, &[("cookie", &both)], "")
                .await
                .expect("echo"),
        );
        let alone = echoed(
            request(&c, "GET", &url, &[("cookie", &cookie)], "")
                .await
                .expect("echo"),
        );
        if forward {
            assert_eq!(seen, serde_json::json!([both]));
            assert_eq!(alone, serde_json::json!([cookie]));
        } else {
            assert_eq!(seen, serde_json::json!(["app=1"]));
            assert_eq!(alone, serde_json::Value::Null, "no Cookie field left");
        }
        // Either way the cookie pinned: a hit, not a new pin.
        assert_hits(&c, &r, 2).await;
    }
}

/// A client that keeps sending an affinity cookie it was told to refresh
/// (an API client, a load tool with a fixed `Cookie`) gets one refresh per
/// connection and minute, not a reseal on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_refresh_is_not_repeated_on_the_same_connection() {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    use remora_proxy::affinity::cookie::{self, CookieRecord};
    use remora_seal::{Key, Keyring, Purpose, Sealer};

    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let key = remora_seal::generate_key_b64();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("remora.keys"), format!("{key}\n")).expect("keys");
    let text = format!(
        "[keys]\nfile = \"remora.keys\"\n{}",
        config(
            addr,
            adm,
            // No idle park between this test's requests, however slow.
            "[listener.limits]\npark_after = \"1h\"",
            COOKIE_POOL,
            &servers_toml(&[&b1])
        )
    );
    let r = start_in(dir, &text, addr, adm);
    // A cookie pinning b1, last refreshed two minutes ago.
    let ring = Keyring::from_keys(vec![Key::from_b64(&key).expect("key")]).expect("keyring");
    let sealer = Sealer::new(&ring, Purpose::Affinity);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let record = CookieRecord {
        id: 7,
        issued: now - 120,
        last_seen: now - 120,
        server: "b1".into(),
    };
    let old = format!(
        "REMORA_AFFINITY={}",
        record.seal(&sealer, &cookie::aad("REMORA_AFFINITY", "app"))
    );
    // Requests on one connection, each with that cookie: whether the
    // answer refreshed it.
    let on_one_connection = |n: usize| {
        let old = old.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut refreshed = Vec::new();
            for _ in 0..n {
                let req = http::Request::builder()
                    .uri("/whoami")
                    .header("host", "app")
                    .header("cookie", &old)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                sender.ready().await.expect("connection ready");
                let resp = sender.send_request(req).await.expect("response");
                assert_eq!(resp.status(), 200);
                refreshed.push(
                    resp.headers()
                        .get_all("set-cookie")
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|v| v.starts_with("REMORA_AFFINITY="))),
                );
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(&body[..], b"b1", "left its pinned server");
            }
            refreshed
        }
    };
    // The first answer parks the connection (nothing more was sent yet),
    // and a parked connection keeps no context: the second request starts
    // a fresh one, which opens and refreshes the cookie once more. From
    // then on the connection remembers its refresh.
    assert_eq!(
        on_one_connection(5).await,
        [true, true, false, false, false]
    );
    // Another connection with that cookie: refreshed again, as the cookie
    // still says two minutes.
    assert_eq!(on_one_connection(3).await, [true, true, false]);
    let c = client();
    assert_hits(&c, &r, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repin_after_pinned_backend_dies_without_client_error() {
    let (mut b1, mut b2) = (backend("b1"), backend("b2"));
    let (addr, adm) = (free_addr(), free_addr());
    // Slow health checks: the proxy learns of the death from the refused connection.
    let pool = COOKIE_POOL.replace("interval = \"200ms\"", "interval = \"60s\"");
    let r = start(
        &config(addr, adm, "", &pool, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    let first = whoami(&c, &r, None).await;
    let cookie = first.affinity_cookie().expect("cookie");
    let pinned = first.body.clone();
    if pinned == "b1" {
        b1.proc.kill();
    } else {
        b2.proc.kill();
    }
    let resp = whoami(&c, &r, Some(&cookie)).await;
    assert_eq!(resp.status, 200, "GET must be retried on the repin target");
    assert_ne!(resp.body, pinned);
    let new_cookie = resp.affinity_cookie().expect("client gets the new cookie");
    assert_ne!(new_cookie, cookie);
    // Both the new cookie and (deterministically) the old one now land on the new server.
    for _ in 0..5 {
        assert_eq!(whoami(&c, &r, Some(&new_cookie)).await.body, resp.body);
        assert_eq!(whoami(&c, &r, Some(&cookie)).await.body, resp.body);
    }
    let metrics = admin(&c, &r, "GET", "/metrics", "").await.body;
    assert!(
        metrics.contains(r#"outcome="repin",reason="connect_failed""#),
        "{metrics}\n{}",
        r.log()
    );
    assert!(r.log().contains("affinity=\"repin\"") || r.log().contains("affinity=repin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_pinned_clients_and_sends_new_ones_elsewhere() {
    let (b1, b2) = (backend("b1"), backend("b2"));
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    let first = whoami(&c, &r, None).await;
    let cookie = first.affinity_cookie().expect("cookie");
    let pinned = first.body.clone();
    let resp = admin(
        &c,
        &r,
        "PUT",
        &format!("/api/pools/app/servers/{pinned}/state"),
        r#"{"state":"drain"}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    for _ in 0..10 {
        assert_eq!(whoami(&c, &r, Some(&cookie)).await.body, pinned);
    }
    for _ in 0..10 {
        assert_ne!(whoami(&c, &r, None).await.body, pinned);
    }
    let servers = admin(&c, &r, "GET", "/api/servers", "").await.body;
    assert!(servers.contains(r#""state":"drain""#), "{servers}");
    // Maintenance: even pinned clients move (repin), without error.
    admin(
        &c,
        &r,
        "PUT",
        &format!("/api/pools/app/servers/{pinned}/state"),
        r#"{"state":"maintenance"}"#,
    )
    .await;
    let moved = whoami(&c, &r, Some(&cookie)).await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, pinned);
    let bad = admin(
        &c,
        &r,
        "PUT",
        "/api/pools/app/servers/b1/state",
        r#"{"state":"x"}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_traffic_drops_nothing_and_keeps_affinity() {
    let (b1, b2, b3) = (backend("b1"), backend("b2"), backend("b3"));
    let (addr, adm) = (free_addr(), free_addr());
    let text = config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1, &b2]));
    let r = start(&text, addr, adm);
    let c = client();
    let first = whoami(&c, &r, None).await;
    let cookie = first.affinity_cookie().expect("cookie");
    let pinned = first.body.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        let (url, cookie, pinned) = (
            format!("http://{addr}/whoami"),
            cookie.clone(),
            pinned.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match request(&c, "GET", &url, &[("cookie", &cookie)], "").await {
                    Ok(r) if r.status == 200 && r.body == pinned => {}
                    other => {
                        eprintln!("failure during reload: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Reload 1 (admin API): add b3, keep b1 and b2.
    r.rewrite(&config(
        addr,
        adm,
        "",
        COOKIE_POOL,
        &servers_toml(&[&b1, &b2, &b3]),
    ));
    let resp = admin(&c, &r, "POST", "/api/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // Reload 2 (SIGHUP): change retries, reorder servers.
    r.rewrite(&config(
        addr,
        adm,
        "",
        &COOKIE_POOL.replace("retries = 2", "retries = 3"),
        &servers_toml(&[&b3, &b2, &b1]),
    ));
    r.proc.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.log().matches("configuration reloaded").count() >= 2
        })
        .await,
        "{}",
        r.log()
    );
    // Invalid config: 400 with the error, old config kept.
    r.rewrite("[[listener]]\nname = 1\n");
    let resp = admin(&c, &r, "POST", "/api/reload", "").await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("remora.toml:2:8"), "{}", resp.body);
    let before = done.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            done.load(Ordering::Relaxed) > before + 50
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{}", r.log());
    assert!(done.load(Ordering::Relaxed) > 50);
    let servers = admin(&c, &r, "GET", "/api/servers", "").await.body;
    assert!(servers.contains("\"b3\""), "{servers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_follows_affinity() {
    let (b1, b2) = (backend("b1"), backend("b2"));
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    let first = whoami(&c, &r, None).await;
    let cookie = first.affinity_cookie().expect("cookie");
    for _ in 0..3 {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/ws"),
            )
            .expect("ws request");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("cookie header"));
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("ws connect timeout")
        .expect("ws connect");
        assert_eq!(resp.status(), 101);
        for msg in ["hello", "again"] {
            assert_eq!(
                ws_round_trip(&mut ws, msg).await,
                format!("{}:{msg}", first.body)
            );
        }
        ws.close(None).await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let mut r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let url = format!("http://{addr}/slow?ms=1500");
    let slow = tokio::spawn(async move {
        let c = client();
        request(&c, "GET", &url, &[], "").await
    });
    // Wait until the request is in flight at the backend.
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin(&c, &r, "GET", "/api/servers", "")
                .await
                .body
                .contains("\"active_connections\":1")
        })
        .await
    );
    r.proc.signal("TERM");
    let resp = slow
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "b1");
    let status = r.proc.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "exit status {status:?}");
}
