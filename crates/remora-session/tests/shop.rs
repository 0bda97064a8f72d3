//! The example shop app (`examples/shop.rs`) driven over real HTTP.
#![allow(missing_docs)]

mod common;

#[allow(dead_code, missing_docs)]
#[path = "../examples/shop.rs"]
mod shop;

use common::{HttpBrowser, serve};
use remora_session::{MemoryStore, SessionLayer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_over_http() {
    let store = MemoryStore::new();
    let layer = SessionLayer::new(store.clone())
        .with_secure(false)
        .with_expires_header(true);
    let server = serve(shop::app("alpha", layer)).await;
    let mut b = HttpBrowser::new(server.addr);

    assert_eq!(b.get("/health").await.status, 200);
    assert_eq!(
        b.get("/api/whoami").await.json(),
        serde_json::json!({"server": "alpha"})
    );
    let g = b.get("/api/cart").await;
    assert_eq!(g.json()["items"], serde_json::json!([]));
    assert!(b.cookie.is_none(), "an empty cart sets no cookie");

    b.post_json("/api/cart/items", r#"{"sku":"tea","qty":1}"#)
        .await;
    let g = b
        .post_json("/api/cart/items", r#"{"sku":"tea","qty":1}"#)
        .await;
    assert_eq!(
        g.json()["items"],
        serde_json::json!([{"sku":"tea","qty":2}])
    );
    b.post_json("/api/cart/items", r#"{"sku":"jam","qty":1}"#)
        .await;
    let g = b.send("DELETE", "/api/cart/items/jam", None, "", &[]).await;
    assert_eq!(
        g.json()["items"],
        serde_json::json!([{"sku":"tea","qty":2}])
    );
    let g = b.get("/api/cart").await;
    assert_eq!(
        g.json(),
        serde_json::json!({"server":"alpha","items":[{"sku":"tea","qty":2}],"restored":false,"user":null})
    );
    assert!(g.headers.contains_key("session-expires"));

    // Login cycles the ID and keeps the cart.
    let before = b.cookie.clone().unwrap();
    assert_eq!(
        b.post_json("/api/login", r#"{"user":"alice"}"#)
            .await
            .status,
        200
    );
    assert_ne!(b.cookie.clone().unwrap(), before);
    let g = b.get("/api/cart").await;
    assert_eq!(g.json()["user"], "alice");
    assert_eq!(g.json()["items"][0]["sku"], "tea");
    let mut old = HttpBrowser::new(server.addr);
    old.cookie = Some(before);
    assert_eq!(
        old.get("/api/cart").await.json()["items"],
        serde_json::json!([])
    );

    // The checkout ticket is taken exactly once.
    assert_eq!(
        b.post_json("/api/checkout", "{}").await.json()["ticket"],
        "t-1"
    );
    assert!(b.post_json("/api/checkout", "{}").await.json()["ticket"].is_null());

    // CSRF-protected form.
    let page = b.get("/form").await.body;
    let token = page
        .split("value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let form = "application/x-www-form-urlencoded";
    let g = b
        .send("POST", "/form/note", Some(form), "note=hello", &[])
        .await;
    assert_eq!(g.status, 403);
    let g = b
        .send(
            "POST",
            "/form/note",
            Some(form),
            &format!("note=hello&csrf_token={token}"),
            &[],
        )
        .await;
    assert_eq!(g.status, 200);
    let g = b
        .send(
            "POST",
            "/form/note",
            Some(form),
            "note=again",
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(g.status, 200);

    // Logout invalidates: cookie removed, session gone from the store.
    let sid = b.cookie.clone().unwrap();
    let g = b.post_json("/api/logout", "{}").await;
    assert!(
        g.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(b.cookie.is_none());
    assert!(store.is_empty(), "no session left after logout ({sid})");
}
