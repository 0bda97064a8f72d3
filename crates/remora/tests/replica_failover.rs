//! Replicas across real processes: two `remora demo-app` shops with separate
//! memory stores (no shared store) behind `remora serve` with cookie
//! affinity. The pinned shop is killed; the next request lands on the other
//! one, which restores the session from the client's replica.

mod serve_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serve_support::*;

/// A running shop.
struct Shop {
    name: String,
    addr: SocketAddr,
    proc: Proc,
}

fn keyring(dir: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new(BIN)
        .arg("keygen")
        .output()
        .expect("run keygen");
    assert!(out.status.success());
    let path = dir.join("remora.keys");
    std::fs::write(&path, &out.stdout).expect("write keys");
    path
}

fn shop(name: &str, keys: &std::path::Path, extra: &[&str]) -> Shop {
    let addr = free_addr();
    let child = Command::new(BIN)
        .args([
            "demo-app",
            "--name",
            name,
            "--port",
            &addr.port().to_string(),
            "--keys",
        ])
        .arg(keys)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo-app");
    let proc = Proc { child };
    wait_listening(addr, Duration::from_secs(10));
    Shop {
        name: name.into(),
        addr,
        proc,
    }
}

/// Two shops behind the balancer.
struct Setup {
    _dir: tempfile::TempDir,
    shops: Vec<Shop>,
    remora: Remora,
}

fn setup(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keyring(dir.path());
    let shops = vec![shop("shop-a", &keys, extra), shop("shop-b", &keys, extra)];
    let servers: String = shops
        .iter()
        .map(|s| {
            format!(
                "[[pool.server]]\nname = \"{}\"\naddress = \"{}\"\n",
                s.name, s.addr
            )
        })
        .collect();
    let (addr, adm) = (free_addr(), free_addr());
    let remora = start(&config(addr, adm, "", COOKIE_POOL, &servers), addr, adm);
    Setup {
        _dir: dir,
        shops,
        remora,
    }
}

/// A client's cookies and replica, as `js/remora-client` keeps them.
type Client = Jar;

impl Jar {
    async fn send(
        &mut self,
        c: &HttpClient,
        r: &Remora,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let cookie = self.header();
        let mut headers: Vec<(&str, &str)> =
            vec![("cookie", &cookie), ("content-type", "application/json")];
        headers.extend_from_slice(extra);
        let url = format!("http://{}{path}", r.addr);
        let resp = request(c, method, &url, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        self.absorb(&resp);
        resp
    }

    async fn add(&mut self, c: &HttpClient, r: &Remora, sku: &str) -> serde_json::Value {
        let resp = self
            .send(
                c,
                r,
                "POST",
                "/api/cart/items",
                &[],
                &format!(r#"{{"sku":"{sku}","qty":1}}"#),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        serde_json::from_str(&resp.body).unwrap()
    }
}

fn skus(cart: &serde_json::Value) -> Vec<String> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap().to_owned())
        .collect()
}

/// Shops three items, then kills the shop that served them; returns the
/// survivor's name once the balancer has seen the death.
async fn shop_then_crash(s: &mut Setup, c: &HttpClient, client: &mut Client) -> String {
    let mut server = String::new();
    for sku in ["tea", "coffee", "cocoa"] {
        let cart = client.add(c, &s.remora, sku).await;
        let now = cart["server"].as_str().unwrap().to_owned();
        assert!(
            server.is_empty() || server == now,
            "affinity keeps one server"
        );
        server = now;
    }
    assert!(client.replica.is_some(), "changes hand out replicas");
    let victim = s.shops.iter().position(|x| x.name == server).unwrap();
    s.shops[victim].proc.kill();
    let survivor = s.shops[1 - victim].name.clone();
    let remora = &s.remora;
    let seen = eventually(Duration::from_secs(10), || async {
        let r = admin(c, remora, "GET", "/api/servers", "").await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == server.as_str() && x["healthy"] == false)
    })
    .await;
    assert!(seen, "the balancer marks the killed shop down");
    survivor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_and_retry_restores_on_the_surviving_shop() {
    let mut s = setup(&[]);
    let c = client();
    let mut me = Client::default();
    let survivor = shop_then_crash(&mut s, &c, &mut me).await;
    let seq = me.replica.as_ref().unwrap().1.to_string();
    // The fetch wrapper marks its requests capable; the new shop asks.
    let asked = me
        .send(
            &c,
            &s.remora,
            "POST",
            "/api/cart/items",
            &[("session-replica-capable", &seq)],
            r#"{"sku":"honey","qty":1}"#,
        )
        .await;
    assert_eq!(asked.status, 409, "{}", asked.body);
    assert_eq!(asked.headers["session-replica-wanted"], "1");
    let (rep, _) = me.replica.clone().unwrap();
    let resp = me
        .send(
            &c,
            &s.remora,
            "POST",
            "/api/cart/items",
            &[("session-replica", &rep)],
            r#"{"sku":"honey","qty":1}"#,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let cart: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(cart["server"], survivor.as_str());
    assert_eq!(
        skus(&cart),
        ["tea", "coffee", "cocoa", "honey"],
        "the 409 had no side effect; nothing lost"
    );
    assert_eq!(cart["restored"], true);
    // Stays restored on the survivor: the next plain request needs no replica.
    let again = me.send(&c, &s.remora, "GET", "/api/cart", &[], "").await;
    assert_eq!(skus(&serde_json::from_str(&again.body).unwrap()).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_page_load_is_released_by_the_replica() {
    let mut s = setup(&[]);
    let c = client();
    let mut me = Client::default();
    shop_then_crash(&mut s, &c, &mut me).await;
    me.cookies.insert("remora_replica_held".into(), "1".into());
    // A page navigation: no capable mark, no replica; it parks on the new shop.
    let url = format!("http://{}/api/cart", s.remora.addr);
    let cookie = me.header();
    let c2 = c.clone();
    let nav =
        tokio::spawn(async move { request(&c2, "GET", &url, &[("cookie", &cookie)], "").await });
    // Meanwhile the page's script presents the replica (as its Bayeux
    // re-handshake or a fetch would); wait until the navigation has parked.
    let shop = s
        .shops
        .iter()
        .find(|x| x.proc.child.id() > 0 && std::net::TcpStream::connect(x.addr).is_ok())
        .unwrap()
        .addr;
    let parked = eventually(Duration::from_secs(10), || async move {
        let m = get(&client(), &format!("http://{shop}/metrics"), &[]).await;
        m.body
            .lines()
            .any(|l| l.starts_with("remora_session_replica_parked_total 1"))
    })
    .await;
    assert!(parked, "the page load parked");
    let (rep, _) = me.replica.clone().unwrap();
    let resp = me
        .send(
            &c,
            &s.remora,
            "GET",
            "/api/whoami",
            &[("session-replica", &rep)],
            "",
        )
        .await;
    assert_eq!(resp.status, 200);
    let resp = me
        .send(
            &c,
            &s.remora,
            "POST",
            "/api/cart/items",
            &[("session-replica", &rep)],
            r#"{"sku":"jam","qty":1}"#,
        )
        .await;
    assert_eq!(resp.status, 200);
    let nav = tokio::time::timeout(Duration::from_secs(10), nav)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(nav.status, 200);
    let cart: serde_json::Value = serde_json::from_str(&nav.body).unwrap();
    let got = skus(&cart);
    assert!(
        got.starts_with(&["tea".into(), "coffee".into(), "cocoa".into()]),
        "the parked page load sees the restored cart: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_carriage_restores_with_no_script_at_all() {
    let mut s = setup(&["--replica-cookie"]);
    let c = client();
    let mut me = Client::default();
    shop_then_crash(&mut s, &c, &mut me).await;
    assert!(
        me.cookies.keys().any(|k| k.starts_with("remora_replica.")),
        "{:?}",
        me.cookies.keys()
    );
    let resp = me.send(&c, &s.remora, "GET", "/api/cart", &[], "").await;
    let cart: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(skus(&cart), ["tea", "coffee", "cocoa"]);
    assert_eq!(cart["restored"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_replica_gives_a_fresh_cart_and_is_counted() {
    let mut s = setup(&[]);
    let c = client();
    let mut me = Client::default();
    let survivor = shop_then_crash(&mut s, &c, &mut me).await;
    let (rep, _) = me.replica.clone().unwrap();
    let mut bytes = rep.into_bytes();
    let i = bytes.len() / 3;
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    let forged = String::from_utf8(bytes).unwrap();
    let resp = me
        .send(
            &c,
            &s.remora,
            "GET",
            "/api/cart",
            &[("session-replica", &forged)],
            "",
        )
        .await;
    assert_eq!(resp.status, 200, "a bad replica never fails the request");
    let cart: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(cart["items"].as_array().unwrap().len(), 0, "fresh cart");
    let addr = s.shops.iter().find(|x| x.name == survivor).unwrap().addr;
    let m = get(&c, &format!("http://{addr}/metrics"), &[]).await;
    assert!(
        m.body
            .lines()
            .any(|l| l == r#"remora_session_replica_rejected_total{reason="tampered"} 1"#),
        "{}",
        m.body
    );
}
