//! A POST whose pinned server died before health checks noticed: a small
//! body is replayed to the repin target (the refused connection sent
//! nothing), so the client sees no error and gets the new cookie.

mod serve_support;

use serve_support::*;

/// Cookie affinity; health checks too slow to notice within the test.
const SLOW_HEALTH_POOL: &str = r#"algorithm = "round-robin"
retries = 2
[pool.affinity]
mode = "cookie"
[pool.health]
path = "/health"
interval = "60s"
timeout = "1s"
rise = 1
fall = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dead_pinned_server_is_replayed_on_the_repin_target() {
    let (mut b1, mut b2) = (backend("srv-one"), backend("srv-two"));
    let (addr, adm) = (free_addr(), free_addr());
    let r = start(
        &config(addr, adm, "", SLOW_HEALTH_POOL, &servers_toml(&[&b1, &b2])),
        addr,
        adm,
    );
    let c = client();
    let first = whoami(&c, &r, None).await;
    let cookie = first.affinity_cookie().expect("affinity cookie");
    let pinned = first.body.trim().to_owned();
    // Kill the pinned server; the balancer has not noticed (60 s checks).
    if pinned == b1.name {
        b1.proc.kill()
    } else {
        b2.proc.kill()
    }
    let url = format!("http://{}/echo", r.addr);
    let body = r#"{"sku":"tea","qty":1}"#;
    let resp = request(
        &c,
        "POST",
        &url,
        &[("cookie", &cookie), ("content-type", "application/json")],
        body,
    )
    .await
    .expect("answer");
    assert_eq!(
        resp.status,
        200,
        "no client-visible error: {}\n{}",
        resp.body,
        r.log()
    );
    assert!(
        !resp.body.contains(&pinned),
        "served by the other server: {}",
        resp.body
    );
    assert!(
        resp.affinity_cookie().is_some(),
        "the client gets the repin cookie"
    );
}
