//! A private Redis stopped mid-test: the layer answers 503 within the store
//! timeout, and recovers when Redis is back. Never touches the machine's
//! Redis.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::app::{Sync, router};
use common::{Browser, PrivateRedis};
use remora_session::SessionLayer;
use remora_session::store::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_then_recovers() {
    let Some(mut redis) = PrivateRedis::start() else {
        common::skip("no redis-server on PATH");
        return;
    };
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let timeout = Duration::from_millis(500);
    let app = router(
        SessionLayer::new(store)
            .with_secure(false)
            .with_store_timeout(timeout),
        Sync::default(),
    );
    let mut b = Browser::default();
    assert_eq!(b.call(&app, "POST", "/set/a/1").await.status, 200);
    assert_eq!(
        b.call(&app, "GET", "/get/a").await.json(),
        serde_json::json!("1")
    );

    redis.stop();
    for path in ["/get/a", "/set/b/2"] {
        let method = if path.starts_with("/set") {
            "POST"
        } else {
            "GET"
        };
        let t = Instant::now();
        let g = b.call(&app, method, path).await;
        let took = t.elapsed();
        assert_eq!(g.status, 503, "{path}: {g:?}");
        assert!(g.headers.contains_key("retry-after"));
        assert!(took < timeout * 3, "{path} answered in {took:?}");
    }
    // A request that does not use the session is unaffected.
    assert_eq!(b.call(&app, "GET", "/plain").await.status, 200);

    assert!(redis.resume(), "restart redis");
    // The private server kept no data: the session comes back fresh, and
    // writes work again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let g = b.call(&app, "POST", "/set/c/3").await;
        if g.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {g:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.call(&app, "GET", "/get/c").await.json(),
        serde_json::json!("3")
    );
}
