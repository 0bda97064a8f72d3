//! `remora serve`: active health checks, app-cookie and source-ip affinity,
//! h2c prior knowledge, new listeners on reload.

mod serve_support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serve_support::*;

async fn server_up(c: &HttpClient, r: &Remora, server: &str) -> Option<bool> {
    let m = admin(c, r, "GET", "/metrics", "").await.body;
    let key = format!("remora_server_up{{pool=\"app\",server=\"{server}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim() == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_mark_down_and_readmit() {
    let (mut b1, b2) = (backend("b1"), backend("b2"));
    let b1_addr = b1.addr;
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            server_up(&c, &r, "b1").await == Some(true)
        })
        .await
    );
    b1.proc.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            server_up(&c, &r, "b1").await == Some(false)
        })
        .await,
        "{}",
        r.log()
    );
    for _ in 0..6 {
        assert_eq!(whoami(&c, &r, None).await.body, "b2");
    }
    let _b1 = backend_at("b1", b1_addr);
    assert!(
        eventually(Duration::from_secs(5), || async {
            server_up(&c, &r, "b1").await == Some(true)
        })
        .await,
        "{}",
        r.log()
    );
    let mut seen_b1 = false;
    for _ in 0..6 {
        seen_b1 |= whoami(&c, &r, None).await.body == "b1";
    }
    assert!(seen_b1, "b1 re-admitted");
    assert!(
        r.log().contains("server DOWN") && r.log().contains("server UP"),
        "{}",
        r.log()
    );
    let servers = admin(&c, &r, "GET", "/api/servers", "").await.body;
    assert!(servers.contains("\"healthy\":true"), "{servers}");
    let m = admin(&c, &r, "GET", "/metrics", "").await.body;
    assert!(m.contains("remora_pinned_clients{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_cookie_is_learned_and_source_ip_sticks() {
    let b1 = backend_with("b1", &["--set-cookie", "JSESSIONID"]);
    let b2 = backend_with("b2", &["--set-cookie", "JSESSIONID"]);
    let (addr, adm) = (free_addr(), free_addr());
    let pool = COOKIE_POOL.replace(
        "mode = \"cookie\"",
        "mode = \"app-cookie\"\napp_cookie = \"JSESSIONID\"",
    );
    let r = start(
        &config(addr, adm, "", &pool, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    let mut pins = Vec::new();
    for _ in 0..4 {
        let first = whoami(&c, &r, None).await;
        let set = first
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("app cookie")
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        assert!(set.starts_with("JSESSIONID="), "{set}");
        pins.push((set, first.body));
    }
    assert!(pins.iter().any(|p| p.1 == "b1") && pins.iter().any(|p| p.1 == "b2"));
    for (cookie, server) in &pins {
        for _ in 0..5 {
            assert_eq!(&whoami(&c, &r, Some(cookie)).await.body, server);
        }
    }
    drop(r);

    // source-ip: every request from 127.0.0.1 goes to one server.
    let (addr, adm) = (free_addr(), free_addr());
    let pool = COOKIE_POOL.replace("mode = \"cookie\"", "mode = \"source-ip\"");
    let r = start(
        &config(addr, adm, "", &pool, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let first = whoami(&c, &r, None).await.body;
    for _ in 0..10 {
        assert_eq!(whoami(&c, &r, None).await.body, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_and_listener_added_by_reload() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/whoami"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2c response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    // Reload with a second listener: it starts accepting; the first keeps working.
    let second = free_addr();
    let text = config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1]))
        + &format!("\n[[listener]]\nname = \"second\"\nlisten = \"{second}\"\npool = \"app\"\n");
    r.rewrite(&text);
    let c = client();
    let resp = admin(&c, &r, "POST", "/api/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        get(&c, &format!("http://{second}/whoami"), &[]).await.body,
        "b1"
    );
    assert_eq!(
        get(&c, &format!("http://{addr}/whoami"), &[]).await.body,
        "b1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_keyring_honour_each_others_cookies() {
    let (b1, b2) = (backend("b1"), backend("b2"));
    let keys = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .arg("keygen")
        .output()
        .expect("keygen");
    let key_file = keys.path().join("remora.keys");
    std::fs::write(&key_file, &out.stdout).expect("keys");
    let keys_toml = format!("[keys]\nfile = \"{}\"\n", key_file.display());
    let (addr_a, adm_a) = (free_addr(), free_addr());
    let (addr_b, adm_b) = (free_addr(), free_addr());
    let servers = servers_toml(&[&b1, &b2]);
    let a = start(
        &(keys_toml.clone() + &config(addr_a, adm_a, "", COOKIE_POOL, &servers)),
        addr_a,
        adm_a,
    );
    let text_b = keys_toml
        + &config(addr_b, adm_b, "", COOKIE_POOL, &servers).replace(
            &format!("token = \"{TOKEN}\""),
            &format!("token = \"{TOKEN}\"\npublic_metrics = true"),
        );
    let b = start(&text_b, addr_b, adm_b);
    let c = client();
    let mut pins = Vec::new();
    for _ in 0..4 {
        let r = whoami(&c, &a, None).await;
        pins.push((r.affinity_cookie().expect("cookie"), r.body));
    }
    for (cookie, server) in &pins {
        let r = whoami(&c, &b, Some(cookie)).await;
        assert_eq!(&r.body, server, "instance B follows instance A's cookie");
    }
    // public_metrics: B's /metrics needs no token, A's does.
    let m = get(&c, &format!("http://{adm_b}/metrics"), &[]).await;
    assert_eq!(m.status, 200);
    assert!(m.body.contains(r#"outcome="hit""#), "{}", m.body);
    assert_eq!(
        get(&c, &format!("http://{adm_a}/metrics"), &[])
            .await
            .status,
        401
    );
    assert_eq!(
        get(&c, &format!("http://{adm_b}/api/servers"), &[])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_on_5xx_then_readmission() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let pool = COOKIE_POOL.replace(
        "fall = 1\n",
        "fall = 1\npassive_fall = 3\npassive_backoff = \"1500ms\"\n",
    );
    let r = start(
        &config(addr, adm, "", &pool, &servers_toml(&[&b1])),
        addr,
        adm,
    );
    let c = client();
    let url = format!("http://{addr}/status/500");
    for _ in 0..3 {
        assert_eq!(get(&c, &url, &[]).await.status, 500);
    }
    let resp = whoami(&c, &r, None).await;
    assert_eq!(resp.status, 503, "ejected after 3 consecutive 5xx");
    assert!(r.log().contains("passive"), "{}", r.log());
    assert!(
        eventually(Duration::from_secs(5), || async {
            whoami(&c, &r, None).await.status == 200
        })
        .await,
        "re-admitted by active checks after the backoff: {}",
        r.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_server_only_when_primaries_are_unusable() {
    let (b1, b2) = (backend("b1"), backend("b2"));
    let (addr, adm) = (free_addr(), free_addr());
    let servers = servers_toml(&[&b1, &b2]).replacen(
        &format!("address = \"{}\"\n", b2.addr),
        &format!("address = \"{}\"\nbackup = true\n", b2.addr),
        1,
    );
    let r = start(&config(addr, adm, "", COOKIE_POOL, &servers), addr, adm);
    let c = client();
    for _ in 0..6 {
        assert_eq!(whoami(&c, &r, None).await.body, "b1");
    }
    admin(
        &c,
        &r,
        "PUT",
        "/api/pools/app/servers/b1/state",
        r#"{"state":"maintenance"}"#,
    )
    .await;
    for _ in 0..4 {
        assert_eq!(whoami(&c, &r, None).await.body, "b2");
    }
}
