//! Two "servers" (separate layers, separate connections, real HTTP) on the
//! same Redis / PostgreSQL: each adds a different item to the same session at
//! the same moment, and both items are there afterwards.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::app::{Sync, router};
use common::{HttpBrowser, serve};
use remora_session::{SessionLayer, Store};

async fn both_items_survive(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let sync = Sync {
        barrier: Some(barrier),
    };
    let sa = serve(router(
        SessionLayer::from_arc(a.clone()).with_secure(false),
        sync.clone(),
    ))
    .await;
    let sb = serve(router(SessionLayer::from_arc(b).with_secure(false), sync)).await;
    let mut client = HttpBrowser::new(sa.addr);
    client.send("POST", "/set/start/1", None, "", &[]).await;
    let cookie = client.cookie.clone().expect("cookie");
    for round in 0..5 {
        let mut ca = HttpBrowser::new(sa.addr);
        ca.cookie = Some(cookie.clone());
        let mut cb = HttpBrowser::new(sb.addr);
        cb.cookie = Some(cookie.clone());
        let pa = format!("/sync/a{round}/x");
        let pb = format!("/sync/b{round}/y");
        let (ga, gb) = tokio::join!(
            ca.send("POST", &pa, None, "", &[]),
            cb.send("POST", &pb, None, "", &[])
        );
        assert_eq!((ga.status.as_u16(), gb.status.as_u16()), (200, 200));
    }
    let id = common::cookie_id(&cookie);
    let rec = a.load(&id).await.unwrap().unwrap();
    for round in 0..5 {
        assert!(rec.attributes.contains_key(&format!("a{round}")), "{rec:?}");
        assert!(rec.attributes.contains_key(&format!("b{round}")), "{rec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_servers() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("two"));
    let a = remora_session::store::RedisStore::connect(&url)
        .await
        .expect("redis")
        .with_prefix(&prefix);
    let b = remora_session::store::RedisStore::connect(&url)
        .await
        .expect("redis")
        .with_prefix(&prefix);
    both_items_survive(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_servers_with_near_caches() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("twonear"));
    let connect = || async {
        remora_session::store::RedisStore::builder(&url)
            .prefix(&prefix)
            .near_cache(remora_session::store::NearCache::new(100))
            .connect()
            .await
            .expect("redis")
    };
    let (a, b) = (connect().await, connect().await);
    both_items_survive(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_servers() {
    let Some((url, _keep)) = common::postgres() else {
        return;
    };
    let table = common::unique("two");
    let a = remora_session::store::PostgresStore::connect(&url)
        .unwrap()
        .with_table(&table)
        .unwrap();
    let b = remora_session::store::PostgresStore::connect(&url)
        .unwrap()
        .with_table(&table)
        .unwrap();
    if let Err(e) = a.load("probe").await {
        common::skip(&format!("postgres: {e:?}"));
        return;
    }
    let _drop = common::DropTable { url, table };
    both_items_survive(Arc::new(a), Arc::new(b)).await;
}
