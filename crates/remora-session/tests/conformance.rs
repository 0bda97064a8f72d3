//! One conformance suite, run against every store: memory, redb, Redis and
//! PostgreSQL (real servers: `REDIS_URL` / `DATABASE_URL` or private ones).
#![allow(missing_docs)]

mod common;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app::{Sync, router};
use common::{Browser, cookie_id};
use prometheus_client::registry::Registry;
use remora_session::record::now_ms;
use remora_session::{Attribute, Record, SaveOutcome, SessionLayer, Store};

type Keep = Box<dyn Any + Send>;

fn record(id: &str, ttl_ms: u64) -> Record {
    let now = now_ms();
    Record::new(id.to_owned(), now, ttl_ms, ttl_ms * 2)
}

fn id() -> String {
    remora_session::id::new_id()
}

async fn poll_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn metric(reg: &Registry, name: &str) -> u64 {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, reg).expect("encode");
    s.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

// ---- store level ---------------------------------------------------------

async fn round_trip(store: Arc<dyn Store>) {
    let mut r = record(&id(), 60_000);
    r.attributes.insert(
        "cart".into(),
        Attribute::from_value(&serde_json::json!(["tea", 2, 1.5])).unwrap(),
    );
    r.version = 1;
    assert_eq!(store.load(&r.id).await.unwrap(), None);
    assert_eq!(
        store.save(&r, 0).await.unwrap(),
        SaveOutcome::Saved { new_version: 1 }
    );
    assert_eq!(store.load(&r.id).await.unwrap().as_ref(), Some(&r));
    // Creating again must conflict.
    assert!(matches!(
        store.save(&r, 0).await.unwrap(),
        SaveOutcome::Conflict { current: Some(_) }
    ));
    let mut r2 = r.clone();
    r2.version = 2;
    r2.attributes.insert(
        "x".into(),
        Attribute::from_value(&serde_json::json!("y")).unwrap(),
    );
    assert_eq!(
        store.save(&r2, 1).await.unwrap(),
        SaveOutcome::Saved { new_version: 2 }
    );
    // A stale writer gets the current record back.
    match store.save(&r2, 1).await.unwrap() {
        SaveOutcome::Conflict { current: Some(c) } => assert_eq!(c, r2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    store.delete(&r.id).await.unwrap();
    assert_eq!(store.load(&r.id).await.unwrap(), None);
    store.delete(&r.id).await.unwrap();
}

async fn expiry(store: Arc<dyn Store>) {
    let mut gone = record(&id(), 60_000);
    gone.idle_deadline = now_ms().saturating_sub(1);
    gone.version = 1;
    store.save(&gone, 0).await.unwrap();
    assert_eq!(
        store.load(&gone.id).await.unwrap(),
        None,
        "expired record must not load"
    );
    // An expired record does not block a new one under the same ID.
    let mut again = record(&gone.id, 60_000);
    again.version = 1;
    assert!(matches!(
        store.save(&again, 0).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));

    let mut soon = record(&id(), 300);
    soon.version = 1;
    store.save(&soon, 0).await.unwrap();
    assert!(store.load(&soon.id).await.unwrap().is_some());
    let s = store.clone();
    let sid = soon.id.clone();
    poll_until("idle timeout", move || {
        let s = s.clone();
        let sid = sid.clone();
        async move { s.load(&sid).await.unwrap().is_none() }
    })
    .await;
    // Touching an expired session does nothing.
    assert!(
        !store
            .touch(&soon.id, now_ms(), now_ms() + 60_000)
            .await
            .unwrap()
    );
}

async fn touch(store: Arc<dyn Store>) {
    let mut r = record(&id(), 10_000);
    r.version = 1;
    store.save(&r, 0).await.unwrap();
    let later = now_ms() + 15_000;
    assert!(store.touch(&r.id, now_ms(), later).await.unwrap());
    let l = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(l.version, 1, "touch must not bump the version");
    assert_eq!(l.idle_deadline, later.min(l.absolute_deadline));
    assert!(l.idle_deadline > r.idle_deadline);
    assert!(!store.touch(&id(), now_ms(), later).await.unwrap());
}

async fn take_once_concurrently(store: Arc<dyn Store>) {
    let mut r = record(&id(), 60_000);
    let mut a = Attribute::from_value(&serde_json::json!("ticket")).unwrap();
    a.once = true;
    r.attributes.insert("t".into(), a);
    r.attributes.insert(
        "keep".into(),
        Attribute::from_value(&serde_json::json!(1)).unwrap(),
    );
    r.version = 1;
    store.save(&r, 0).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = store.clone();
        let id = r.id.clone();
        tasks.push(tokio::spawn(async move { s.take_once(&id, "t").await }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one of 50 concurrent takers wins");
    let l = store.load(&r.id).await.unwrap().unwrap();
    assert!(!l.attributes.contains_key("t"));
    assert!(l.attributes.contains_key("keep"));
    // A plain attribute cannot be taken.
    assert_eq!(store.take_once(&r.id, "keep").await.unwrap(), None);
}

async fn sweeping(store: Arc<dyn Store>, native_expiry: bool) {
    let mut r = record(&id(), 200);
    r.version = 1;
    store.save(&r, 0).await.unwrap();
    let mut live = record(&id(), 60_000);
    live.version = 1;
    store.save(&live, 0).await.unwrap();
    let deadline = r.expires_at();
    poll_until(
        "expiry before sweep",
        move || async move { now_ms() > deadline },
    )
    .await;
    let n = store.sweep_expired().await.unwrap();
    if !native_expiry {
        assert!(n >= 1, "sweep removed {n}");
        // Nothing left to sweep.
        assert_eq!(store.sweep_expired().await.unwrap(), 0);
    }
    assert_eq!(store.load(&r.id).await.unwrap(), None);
    assert!(
        store.load(&live.id).await.unwrap().is_some(),
        "live session kept"
    );
}

// ---- through the layer ----------------------------------------------------

fn layer(store: &Arc<dyn Store>) -> SessionLayer {
    SessionLayer::from_arc(store.clone()).with_secure(false)
}

async fn layer_round_trip(store: Arc<dyn Store>) {
    let app = router(layer(&store), Sync::default());
    let mut b = Browser::default();
    let g = b.call(&app, "GET", "/plain").await;
    assert_eq!(g.set_cookie(), None, "untouched session sets no cookie");
    let g = b.call(&app, "GET", "/get/a").await;
    assert_eq!(g.set_cookie(), None, "empty session sets no cookie");
    let g = b.call(&app, "POST", "/set/a/1").await;
    assert_eq!(g.status, 200);
    let sc = g.set_cookie().expect("cookie for a new session");
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax"),
        "{sc}"
    );
    let g = b.call(&app, "GET", "/get/a").await;
    assert_eq!(g.json(), serde_json::json!("1"));
    assert_eq!(g.set_cookie(), None, "known session: no new cookie");
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    let rec = store.load(&sid).await.unwrap().expect("stored");
    assert_eq!(rec.attributes["a"].value.get(), r#""1""#);
}

async fn attribute_ttl(store: Arc<dyn Store>) {
    let app = router(layer(&store), Sync::default());
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/cart/tea").await;
    let g = b.call(&app, "POST", "/ttl/auth/alice/300").await;
    assert_eq!(g.status, 200);
    assert_eq!(
        b.call(&app, "GET", "/get/auth").await.json(),
        serde_json::json!("alice")
    );
    let app2 = app.clone();
    let b2 = b.clone();
    poll_until("attribute expiry", move || {
        let app = app2.clone();
        let mut b = b2.clone();
        async move { b.call(&app, "GET", "/get/auth").await.json().is_null() }
    })
    .await;
    assert_eq!(
        b.call(&app, "GET", "/get/cart").await.json(),
        serde_json::json!("tea")
    );
}

async fn merge_across_servers(store: Arc<dyn Store>) {
    let (mut ra, mut rb) = (Registry::default(), Registry::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let sync = Sync {
        barrier: Some(barrier),
    };
    let a = router(layer(&store).with_metrics(&mut ra), sync.clone());
    let b = router(layer(&store).with_metrics(&mut rb), sync);
    let mut br = Browser::default();
    br.call(&a, "POST", "/set/base/0").await;
    assert!(br.cookie.is_some());
    let (mut b1, mut b2) = (br.clone(), br.clone());
    let (ga, gb) = tokio::join!(
        b1.call(&a, "POST", "/sync/x/from-a"),
        b2.call(&b, "POST", "/sync/y/from-b")
    );
    assert_eq!(
        (ga.status.as_u16(), gb.status.as_u16()),
        (200, 200),
        "{ga:?} {gb:?}"
    );
    let sid = cookie_id(br.cookie.as_deref().unwrap());
    let rec = store.load(&sid).await.unwrap().unwrap();
    let keys: Vec<&str> = rec.attributes.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["base", "x", "y"], "both servers' items are kept");
    let merged = metric(&ra, "remora_session_conflicts_merged_total")
        + metric(&rb, "remora_session_conflicts_merged_total");
    assert_eq!(merged, 1, "exactly one save had to merge");
    // A later write from either server still works.
    br.call(&b, "POST", "/set/z/1").await;
    assert_eq!(store.load(&sid).await.unwrap().unwrap().attributes.len(), 4);
}

async fn take_once_through_layers(store: Arc<dyn Store>) {
    let a = router(layer(&store), Sync::default());
    let b = router(layer(&store), Sync::default());
    let mut br = Browser::default();
    br.call(&a, "POST", "/once/ticket/t1").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut c = br.clone();
        tasks.push(tokio::spawn(async move {
            c.call(&app, "POST", "/take/ticket").await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, 200, "{g:?}");
        if g.json() == serde_json::json!("t1") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    // Taking in the request that inserted it works too.
    let mut fresh = Browser::default();
    fresh.call(&a, "POST", "/once/t/v").await;
    assert_eq!(
        fresh.call(&a, "POST", "/take/t").await.json(),
        serde_json::json!("v")
    );
    assert_eq!(
        fresh.call(&a, "POST", "/take/t").await.json(),
        serde_json::Value::Null
    );
}

async fn cycle_id(store: Arc<dyn Store>) {
    let app = router(layer(&store), Sync::default());
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/cart/tea").await;
    let old = cookie_id(b.cookie.as_deref().unwrap());
    let g = b.call(&app, "POST", "/cycle").await;
    assert_eq!(g.status, 200);
    let new = cookie_id(b.cookie.as_deref().unwrap());
    assert_ne!(old, new, "a new cookie with a new ID");
    assert_eq!(store.load(&old).await.unwrap(), None, "old ID deleted");
    assert!(store.load(&new).await.unwrap().is_some());
    assert_eq!(
        b.call(&app, "GET", "/get/cart").await.json(),
        serde_json::json!("tea")
    );
    // The old ID no longer works: it is a fresh, expired-flagged session.
    let mut attacker = Browser {
        cookie: Some(format!("remora_session={old}")),
    };
    let info = attacker.call(&app, "GET", "/info").await.json();
    assert_eq!(info["was_expired"], true);
    assert_eq!(info["keys"], serde_json::json!([]));
}

async fn invalidate(store: Arc<dyn Store>) {
    let mut reg = Registry::default();
    let app = router(layer(&store).with_metrics(&mut reg), Sync::default());
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/user/alice").await;
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    let g = b.call(&app, "POST", "/invalidate").await;
    assert_eq!(g.status, 200);
    let sc = g.set_cookie().expect("cookie removal");
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(store.load(&sid).await.unwrap(), None);
    assert_eq!(metric(&reg, "remora_session_invalidated_total"), 1);
    assert!(b.cookie.is_none());
}

async fn size_limit(store: Arc<dyn Store>) {
    let app = router(layer(&store).with_size_limit(4096), Sync::default());
    let mut b = Browser::default();
    assert_eq!(b.call(&app, "POST", "/big/1000").await.status, 200);
    let g = b.call(&app, "POST", "/big/5000").await;
    assert_eq!(g.status, 413, "over the limit is an error at insert");
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    let rec = store.load(&sid).await.unwrap().unwrap();
    assert_eq!(
        rec.attributes["big"]
            .decode::<String>()
            .ok()
            .map(|s| s.len()),
        Some(1000),
        "kept the old value, not truncated"
    );
    // Default limit is 64 KiB.
    let app = router(layer(&store), Sync::default());
    let mut b = Browser::default();
    assert_eq!(b.call(&app, "POST", "/big/60000").await.status, 200);
    assert_eq!(b.call(&app, "POST", "/big/70000").await.status, 413);
}

async fn expired_and_5xx(store: Arc<dyn Store>) {
    let app = router(layer(&store).with_expires_header(true), Sync::default());
    let mut b = Browser {
        cookie: Some(format!("remora_session={}", id())),
    };
    let g = b.call(&app, "GET", "/info").await;
    assert_eq!(g.json()["was_expired"], true);
    assert!(
        g.set_cookie().is_some_and(|c| c.contains("Max-Age=0")),
        "stale cookie removed"
    );
    // Malformed IDs start a fresh session, never an error.
    let mut m = Browser {
        cookie: Some("remora_session=not-an-id".into()),
    };
    let g = m.call(&app, "GET", "/info").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["was_expired"], false);
    // Nothing is saved after a 5xx.
    let mut c = Browser::default();
    c.call(&app, "POST", "/set/a/1").await;
    let sid = cookie_id(c.cookie.as_deref().unwrap());
    assert_eq!(c.call(&app, "POST", "/fail").await.status, 500);
    let rec = store.load(&sid).await.unwrap().unwrap();
    assert!(!rec.attributes.contains_key("failed"));
    // Session-Expires header on a known session.
    let g = c.call(&app, "GET", "/get/a").await;
    let secs: u64 = g.headers["session-expires"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 25 * 60 && secs <= 30 * 60, "{secs}");
}

async fn merge_rules(store: Arc<dyn Store>) {
    // A removal on one server and a change on another both survive.
    let app_a = router(layer(&store), Sync::default());
    let mut b = Browser::default();
    b.call(&app_a, "POST", "/set/a/1").await;
    b.call(&app_a, "POST", "/set/b/1").await;
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    let cur = store.load(&sid).await.unwrap().unwrap();
    // Another writer changes `b` behind our back.
    let mut other = cur.clone();
    other.version += 1;
    other.attributes.insert(
        "b".into(),
        Attribute::from_value(&serde_json::json!("theirs")).unwrap(),
    );
    other.attributes.insert(
        "c".into(),
        Attribute::from_value(&serde_json::json!("theirs")).unwrap(),
    );
    assert!(matches!(
        store.save(&other, cur.version).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    let mut changes = BTreeMap::new();
    changes.insert("a".to_string(), remora_session::Change::Removed);
    let merged = remora_session::record::merge(&other, &cur, &changes);
    assert!(!merged.attributes.contains_key("a"));
    assert_eq!(merged.attributes["b"].value.get(), r#""theirs""#);
    assert_eq!(merged.attributes["c"].value.get(), r#""theirs""#);
}

macro_rules! conformance {
    ($name:ident, $native:expr, $make:expr) => {
        mod $name {
            use super::*;

            async fn store() -> Option<(Arc<dyn Store>, Keep)> {
                $make.await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn round_trip() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::round_trip(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn expiry() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::expiry(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn touch() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::touch(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn take_once_concurrently() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::take_once_concurrently(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sweeping() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::sweeping(s, $native).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn layer_round_trip() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::layer_round_trip(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn attribute_ttl() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::attribute_ttl(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn merge_across_servers() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::merge_across_servers(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn take_once_through_layers() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::take_once_through_layers(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cycle_id() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::cycle_id(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn invalidate() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::invalidate(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn size_limit() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::size_limit(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn expired_and_5xx() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::expired_and_5xx(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn merge_rules() {
                let Some((s, _keep)) = store().await else {
                    return;
                };
                super::merge_rules(s).await;
            }
        }
    };
}

conformance!(memory, false, async {
    Some((
        Arc::new(remora_session::MemoryStore::new()) as Arc<dyn Store>,
        Box::new(()) as Keep,
    ))
});

conformance!(redb, false, async {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = remora_session::store::RedbStore::open(dir.path().join("s.redb")).expect("open redb");
    Some((Arc::new(s) as Arc<dyn Store>, Box::new(dir) as Keep))
});

conformance!(redis, true, async {
    let (url, keep) = common::redis()?;
    match remora_session::store::RedisStore::connect(&url).await {
        Ok(s) => Some((
            Arc::new(s.with_prefix(format!("{}:", common::unique("t")))) as Arc<dyn Store>,
            Box::new(keep) as Keep,
        )),
        Err(e) => {
            common::skip(&format!("redis at {url}: {e}"));
            None
        }
    }
});

conformance!(redis_near_cache, true, async {
    let (url, keep) = common::redis()?;
    let prefix = format!("{}:", common::unique("n"));
    match remora_session::store::RedisStore::builder(&url)
        .prefix(prefix)
        .near_cache(remora_session::store::NearCache::new(1000))
        .connect()
        .await
    {
        Ok(s) => Some((Arc::new(s) as Arc<dyn Store>, Box::new(keep) as Keep)),
        Err(e) => {
            common::skip(&format!("redis at {url}: {e}"));
            None
        }
    }
});

conformance!(redis_cluster, true, async {
    let Some(cluster) = common::PrivateRedisCluster::start() else {
        common::skip(
            "no private redis cluster could be started (redis-server + redis-cli on PATH)",
        );
        return None;
    };
    let urls = cluster.urls();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    match remora_session::store::RedisStore::connect_cluster(&refs).await {
        Ok(s) => Some((
            Arc::new(s.with_prefix(format!("{}:", common::unique("c")))) as Arc<dyn Store>,
            Box::new(cluster) as Keep,
        )),
        Err(e) => {
            common::skip(&format!("redis cluster: {e}"));
            None
        }
    }
});

conformance!(postgres, false, async {
    let (url, keep) = common::postgres()?;
    let table = common::unique("t");
    let s = remora_session::store::PostgresStore::connect(&url)
        .expect("pool")
        .with_table(&table)
        .expect("table name");
    match s.load("probe").await {
        Ok(_) => Some((
            Arc::new(s) as Arc<dyn Store>,
            Box::new((common::DropTable { url, table }, keep)) as Keep,
        )),
        Err(e) => {
            common::skip(&format!("postgres at {url}: {e:?}"));
            None
        }
    }
});

#[tokio::test]
async fn redb_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut r = record(&id(), 60_000);
    r.version = 1;
    {
        let s = remora_session::store::RedbStore::open(&path).unwrap();
        s.save(&r, 0).await.unwrap();
    }
    let s = remora_session::store::RedbStore::open(&path).unwrap();
    assert_eq!(s.load(&r.id).await.unwrap(), Some(r));
}
