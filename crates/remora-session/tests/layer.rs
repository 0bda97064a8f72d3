//! Layer semantics with in-process requests: one shared object per session
//! in a process, laziness, idle refresh, store failures, replica hooks,
//! cookie attributes and CSRF.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::{get, post};
use axum::{Form, Router};
use common::app::{Sync, router};
use common::{Browser, cookie_id};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use remora_session::store::BoxFuture;
use remora_session::{
    CsrfLayer, MemoryStore, OnStoreFailure, Record, ReplicaHooks, SaveOutcome, Session,
    SessionLayer, Store, StoreError, UnknownIdOutcome,
};

/// Counts calls and can be made slow, around a memory store.
#[derive(Default)]
struct Probe {
    inner: MemoryStore,
    loads: AtomicUsize,
    saves: AtomicUsize,
    touches: AtomicUsize,
    slow: std::sync::atomic::AtomicBool,
}

impl Probe {
    async fn maybe_slow(&self) {
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
}

impl Store for Probe {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.maybe_slow().await;
            self.inner.load(id).await
        })
    }
    fn save<'a>(&'a self, r: &'a Record, v: u64) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(async move {
            self.saves.fetch_add(1, Ordering::SeqCst);
            self.maybe_slow().await;
            self.inner.save(r, v).await
        })
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete(id)
    }
    fn touch<'a>(&'a self, id: &'a str, a: u64, i: u64) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.touches.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(id, a, i)
    }
    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.sweep_expired()
    }
}

fn layer(p: &Arc<Probe>) -> SessionLayer {
    SessionLayer::from_arc(p.clone()).with_secure(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_one_object_and_save_once() {
    let probe = Arc::new(Probe::default());
    let n = 5;
    let sync = Sync {
        barrier: Some(Arc::new(tokio::sync::Barrier::new(n))),
    };
    let app = router(layer(&probe), sync);
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/base/0").await;
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    let (loads0, saves0) = (
        probe.loads.load(Ordering::SeqCst),
        probe.saves.load(Ordering::SeqCst),
    );
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = app.clone();
        let mut c = b.clone();
        tasks.push(tokio::spawn(async move {
            c.call(&app, "POST", &format!("/sync/k{i}/v")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(
        probe.loads.load(Ordering::SeqCst) - loads0,
        1,
        "one load for all"
    );
    assert_eq!(
        probe.saves.load(Ordering::SeqCst) - saves0,
        1,
        "one save, by the last"
    );
    let rec = probe.inner.load(&sid).await.unwrap().unwrap();
    assert_eq!(rec.attributes.len(), n + 1);
    assert_eq!(rec.version, 2);
}

#[tokio::test]
async fn untouched_session_is_never_loaded_and_idle_refresh_is_throttled() {
    let probe = Arc::new(Probe::default());
    let app = router(layer(&probe), Sync::default());
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/a/1").await;
    let loads = probe.loads.load(Ordering::SeqCst);
    b.call(&app, "GET", "/plain").await;
    assert_eq!(
        probe.loads.load(Ordering::SeqCst),
        loads,
        "lazy: no store read"
    );
    // Default save period (60 s): reading does not write.
    b.call(&app, "GET", "/get/a").await;
    assert_eq!(probe.touches.load(Ordering::SeqCst), 0);
    // Save period 0: every read refreshes the idle deadline with a touch.
    let app0 = router(
        layer(&probe).with_save_period(Duration::ZERO),
        Sync::default(),
    );
    let saves = probe.saves.load(Ordering::SeqCst);
    b.call(&app0, "GET", "/get/a").await;
    assert_eq!(probe.touches.load(Ordering::SeqCst), 1);
    assert_eq!(
        probe.saves.load(Ordering::SeqCst),
        saves,
        "a touch is not a save"
    );
}

#[tokio::test]
async fn slow_store_gives_503_within_the_timeout_or_a_fresh_session() {
    let probe = Arc::new(Probe::default());
    let app = router(
        layer(&probe).with_store_timeout(Duration::from_millis(200)),
        Sync::default(),
    );
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/a/1").await;
    probe.slow.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let g = b.call(&app, "GET", "/get/a").await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(g.headers["retry-after"], "1");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Concurrent requests on the session do not queue one timeout each.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (app, mut c) = (app.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            c.call(&app, "GET", "/get/a").await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    // Even a handler that swallows the error gets a 503.
    let g = b.call(&app, "GET", "/info").await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);

    let fresh = router(
        layer(&probe)
            .with_store_timeout(Duration::from_millis(200))
            .with_on_store_failure(OnStoreFailure::FreshSession),
        Sync::default(),
    );
    let g = b.call(&fresh, "GET", "/get/a").await;
    assert_eq!(g.status, 200);
    assert!(g.json().is_null(), "fresh session");
    // Saving still fails visibly.
    let g = b.call(&fresh, "POST", "/set/b/1").await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    probe.slow.store(false, Ordering::SeqCst);
}

struct Hooks {
    store: MemoryStore,
    saved: AtomicUsize,
}

impl ReplicaHooks for Hooks {
    fn on_unknown_id<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        id: &'a str,
    ) -> BoxFuture<'a, UnknownIdOutcome> {
        Box::pin(async move {
            if parts.headers.contains_key("want-409") {
                let mut r = http::Response::new(Body::empty());
                *r.status_mut() = StatusCode::CONFLICT;
                return UnknownIdOutcome::Respond(r);
            }
            // Stand-in for opening a replica: another server's store.
            match self.store.load(id).await {
                Ok(Some(r)) => UnknownIdOutcome::Restore(r.to_replica_record()),
                _ => UnknownIdOutcome::Fresh,
            }
        })
    }

    fn on_saved(&self, record: &Record, headers: &mut HeaderMap) {
        self.saved.fetch_add(1, Ordering::SeqCst);
        headers.insert("x-saved-version", HeaderValue::from(record.version));
    }

    fn on_invalidated(&self, id: &str, headers: &mut HeaderMap) {
        headers.insert("x-invalidated", HeaderValue::from_str(id).unwrap());
    }
}

#[tokio::test]
async fn replica_hooks_restore_unknown_sessions() {
    // Server A (its own memory store) makes a session.
    let store_a = MemoryStore::new();
    let a = router(
        SessionLayer::new(store_a.clone()).with_secure(false),
        Sync::default(),
    );
    let mut b = Browser::default();
    b.call(&a, "POST", "/set/cart/tea").await;
    b.call(&a, "POST", "/once/ticket/t").await;
    // Server B has another store but can "open replicas" of A's sessions.
    let hooks = Arc::new(Hooks {
        store: store_a,
        saved: AtomicUsize::new(0),
    });
    let mut reg = prometheus_client::registry::Registry::default();
    let store_b = MemoryStore::new();
    let bl = SessionLayer::new(store_b.clone())
        .with_secure(false)
        .with_metrics(&mut reg)
        .with_replica_hooks(hooks.clone());
    let app_b = router(bl, Sync::default());
    let mut wanted = b.clone();
    let req = Request::builder()
        .uri("/restored")
        .header("cookie", wanted.cookie.clone().unwrap())
        .header("want-409", "1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(wanted.send(&app_b, req).await.status, StatusCode::CONFLICT);

    assert_eq!(b.call(&app_b, "GET", "/restored").await.body, "true");
    assert_eq!(
        b.call(&app_b, "GET", "/get/cart").await.json(),
        serde_json::json!("tea")
    );
    // Once-only values never travel in a replica.
    assert!(
        b.call(&app_b, "POST", "/take/ticket")
            .await
            .json()
            .is_null()
    );
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    assert!(
        store_b.load(&sid).await.unwrap().is_some(),
        "restored into B's store"
    );
    let g = b.call(&app_b, "POST", "/set/x/1").await;
    assert!(g.headers.contains_key("x-saved-version"));
    assert_eq!(hooks.saved.load(Ordering::SeqCst), 1);
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
    assert!(s.contains("remora_session_restored_total 1"), "{s}");
    let g = b.call(&app_b, "POST", "/invalidate").await;
    assert_eq!(g.headers["x-invalidated"], sid.as_str());
}

#[tokio::test]
async fn cookie_attributes() {
    let app = router(SessionLayer::new(MemoryStore::new()), Sync::default());
    let mut b = Browser::default();
    let sc = b.call(&app, "POST", "/set/a/1").await.set_cookie().unwrap();
    assert!(sc.starts_with("remora_session="), "{sc}");
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age="] {
        assert!(sc.contains(attr), "{attr} in {sc}");
    }
    let id = cookie_id(sc.split(';').next().unwrap());
    assert!(remora_session::id::is_well_formed(&id));
    let app = router(
        SessionLayer::new(MemoryStore::new())
            .with_host_prefix(true)
            .with_secure(false)
            .with_cookie_domain("example.com"),
        Sync::default(),
    );
    let mut b = Browser::default();
    let sc = b.call(&app, "POST", "/set/a/1").await.set_cookie().unwrap();
    assert!(sc.starts_with("__Host-remora_session="), "{sc}");
    assert!(sc.contains("Secure") && !sc.contains("Domain"), "{sc}");
    let app = router(
        SessionLayer::new(MemoryStore::new()).with_secure(false),
        Sync::default(),
    );
    let sc = Browser::default()
        .call(&app, "POST", "/set/a/1")
        .await
        .set_cookie()
        .unwrap();
    assert!(!sc.contains("Secure"), "{sc}");
}

#[derive(serde::Deserialize)]
struct Note {
    note: String,
}

#[tokio::test]
async fn csrf_layer() {
    let app = Router::new()
        .route(
            "/token",
            get(|s: Session| async move { s.csrf_token().await }),
        )
        .route("/note", post(|Form(n): Form<Note>| async move { n.note }))
        .route("/json", post(|| async { "ok" }))
        .layer(CsrfLayer::new().with_form_limit(1024))
        .layer(SessionLayer::new(MemoryStore::new()).with_secure(false));
    let mut b = Browser::default();
    // No session, no token: rejected with a clear body.
    let g = b.call(&app, "POST", "/json").await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    assert!(g.body.contains("CSRF"), "{}", g.body);
    let token = b.call(&app, "GET", "/token").await.body;
    assert_eq!(token.len(), 43);
    assert_eq!(
        b.call(&app, "GET", "/token").await.body,
        token,
        "stable per session"
    );
    assert_eq!(
        b.call(&app, "POST", "/json").await.status,
        StatusCode::FORBIDDEN
    );
    let mut req = b.request("POST", "/json", None);
    req.headers_mut()
        .insert("x-csrf-token", token.parse().unwrap());
    assert_eq!(b.send(&app, req).await.status, 200);
    let mut req = b.request("DELETE", "/json", None);
    req.headers_mut()
        .insert("x-csrf-token", "wrong".parse().unwrap());
    assert_eq!(b.send(&app, req).await.status, StatusCode::FORBIDDEN);
    let cookie = b.cookie.clone().unwrap();
    let form = |body: String| {
        Request::builder()
            .method("POST")
            .uri("/note")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookie.clone())
            .body(Body::from(body))
            .unwrap()
    };
    let g = b
        .send(&app, form(format!("note=hi+there&csrf_token={token}")))
        .await;
    assert_eq!(
        (g.status, g.body.as_str()),
        (StatusCode::OK, "hi there"),
        "body handed on"
    );
    let g = b.send(&app, form("note=x&csrf_token=nope".into())).await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    let g = b
        .send(
            &app,
            form(format!("note={}&csrf_token={token}", "x".repeat(2000))),
        )
        .await;
    assert_eq!(g.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        b.call(&app, "GET", "/token").await.status,
        200,
        "safe methods pass"
    );
}

#[tokio::test]
async fn save_on_server_error_is_opt_in() {
    let store = MemoryStore::new();
    for (opt, expect) in [(false, false), (true, true)] {
        let app = router(
            SessionLayer::new(store.clone())
                .with_secure(false)
                .with_save_on_server_error(opt),
            Sync::default(),
        );
        let mut b = Browser::default();
        b.call(&app, "POST", "/set/a/1").await;
        assert_eq!(b.call(&app, "POST", "/fail").await.status, 500);
        let sid = cookie_id(b.cookie.as_deref().unwrap());
        let rec = store.load(&sid).await.unwrap().unwrap();
        assert_eq!(
            rec.attributes.contains_key("failed"),
            expect,
            "save_on_server_error={opt}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_request_still_saves() {
    let store = MemoryStore::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let app = router(
        SessionLayer::new(store.clone()).with_secure(false),
        Sync {
            barrier: Some(barrier.clone()),
        },
    );
    let mut b = Browser::default();
    b.call(&app, "POST", "/set/a/1").await;
    let sid = cookie_id(b.cookie.as_deref().unwrap());
    // The handler inserts, meets the barrier, and never answers: the client
    // goes away and the request future is dropped.
    let req = b.request("POST", "/hang/late/1", None);
    let app2 = app.clone();
    let task = tokio::spawn(async move { tower::ServiceExt::oneshot(app2, req).await });
    barrier.wait().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let (s2, sid2) = (store.clone(), sid.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s2
        .load(&sid2)
        .await
        .unwrap()
        .unwrap()
        .attributes
        .contains_key("late")
    {
        assert!(Instant::now() < deadline, "change saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn layer_restore_and_metrics() {
    let mut reg = prometheus_client::registry::Registry::default();
    let store = MemoryStore::new();
    let layer = SessionLayer::new(store.clone())
        .with_secure(false)
        .with_metrics(&mut reg);
    // A record as a replica would carry it, restored outside a request.
    let now = remora_session::record::now_ms();
    let mut rec = Record::new(remora_session::id::new_id(), now, 60_000, 120_000);
    rec.version = 7;
    rec.attributes.insert(
        "cart".into(),
        remora_session::Attribute::from_value(&serde_json::json!(["tea"])).unwrap(),
    );
    let held = layer.restore(rec.clone()).await.unwrap().unwrap();
    assert_eq!(held.version, 7, "the replica's version is kept");
    // Restoring again keeps what the store holds.
    let mut stale = rec.clone();
    stale.attributes.clear();
    assert_eq!(
        layer
            .restore(stale)
            .await
            .unwrap()
            .unwrap()
            .attributes
            .len(),
        1
    );
    // Expired or malformed records are refused.
    let mut old = rec.clone();
    old.idle_deadline = now - 1;
    assert_eq!(layer.restore(old).await.unwrap(), None);
    let mut bad = rec.clone();
    bad.id = "nope".into();
    assert_eq!(layer.restore(bad).await.unwrap(), None);

    let app = router(layer, Sync::default());
    let mut b = Browser {
        cookie: Some(format!("remora_session={}", rec.id)),
    };
    assert_eq!(
        b.call(&app, "GET", "/get/cart").await.json(),
        serde_json::json!(["tea"])
    );
    b.call(&app, "POST", "/set/x/1").await;
    let mut fresh = Browser::default();
    fresh.call(&app, "POST", "/set/y/1").await;
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
    for line in [
        "remora_session_restored_total 1",
        "remora_session_created_total 1",
        "remora_session_loaded_total 2",
        "remora_session_saved_total 2",
        "remora_session_store_latency_seconds_count{op=\"load\"} 2",
        "remora_session_size_bytes_count 2",
    ] {
        assert!(s.contains(line), "{line} in\n{s}");
    }
}

#[tokio::test]
async fn sweeper_removes_expired_sessions() {
    let store = MemoryStore::new();
    let now = remora_session::record::now_ms();
    let mut rec = Record::new(remora_session::id::new_id(), now, 50, 50);
    rec.version = 1;
    store.save(&rec, 0).await.unwrap();
    assert_eq!(store.len(), 1);
    let task =
        remora_session::store::spawn_sweeper(Arc::new(store.clone()), Duration::from_millis(20));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.is_empty() {
        assert!(Instant::now() < deadline, "sweeper did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

#[tokio::test]
async fn keep_alive_slides_the_idle_deadline_despite_the_save_period() {
    use axum::routing::{get, post};
    let layer = remora_session::SessionLayer::new(remora_session::MemoryStore::new())
        .with_secure(false)
        .with_idle_timeout(std::time::Duration::from_secs(100))
        .with_save_period(std::time::Duration::from_secs(3600))
        .with_expires_header(true);
    let app = axum::Router::new()
        .route(
            "/set",
            post(|s: remora_session::Session| async move { s.insert("k", 1).await.map(|_| "ok") }),
        )
        .route(
            "/peek",
            get(|s: remora_session::Session| async move {
                s.get::<u32>("k").await.map(|v| format!("{v:?}"))
            }),
        )
        .route(
            "/stay",
            post(|s: remora_session::Session| async move { s.keep_alive().await.map(|_| "ok") }),
        )
        .layer(layer);
    use tower::ServiceExt;
    let call = |req: http::Request<axum::body::Body>| app.clone().oneshot(req);
    let r = call(
        http::Request::post("/set")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let cookie = r.headers()[http::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let expires = |r: &http::Response<axum::body::Body>| {
        r.headers()["session-expires"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let first = expires(&r);
    assert!((99..=100).contains(&first), "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // A plain read within the save period does not slide the deadline...
    let r = call(
        http::Request::get("/peek")
            .header("cookie", &cookie)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(expires(&r) < first, "no refresh within the save period");
    // ...keep_alive does.
    let r = call(
        http::Request::post("/stay")
            .header("cookie", &cookie)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        expires(&r) >= 99,
        "keep_alive slid the idle deadline: {}",
        expires(&r)
    );
}
