//! Replicas through the session layer: two "servers" (layers with separate
//! memory stores and one keyring) and every carriage of the protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use remora_seal::Keyring;
use remora_session::replica::{CookieCarriage, MemoryLedger, Rejection, Replicas, Via};
use remora_session::{MemoryStore, Session, SessionError, SessionLayer};
use tower::ServiceExt;

struct Server {
    app: Router,
    replicas: Arc<Replicas>,
    layer: SessionLayer,
    side_effects: Arc<AtomicUsize>,
}

async fn add(
    State(n): State<Arc<AtomicUsize>>,
    session: Session,
    body: String,
) -> Result<String, SessionError> {
    n.fetch_add(1, Ordering::SeqCst);
    let mut items: Vec<String> = session.get("items").await?.unwrap_or_default();
    items.push(body);
    session.insert("items", &items).await?;
    Ok(items.join(","))
}

async fn list(session: Session) -> Result<String, SessionError> {
    let items: Vec<String> = session.get("items").await?.unwrap_or_default();
    let restored = session.was_restored().await?;
    Ok(format!("{}|restored={restored}", items.join(",")))
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.invalidate().await?;
    Ok("bye")
}

fn server(keys: &Keyring, tune: impl FnOnce(Replicas) -> Replicas) -> Server {
    let replicas = Arc::new(tune(Replicas::new(keys)));
    let layer = SessionLayer::new(MemoryStore::new())
        .with_secure(false)
        .with_replica_hooks(replicas.clone());
    let side_effects = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/add", post(add))
        .route("/list", get(list))
        .route("/logout", post(logout))
        .with_state(side_effects.clone())
        .layer(layer.clone());
    Server {
        app,
        replicas,
        layer,
        side_effects,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (Response<()>, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (Response::from_parts(parts, ()), text)
}

fn session_cookie(resp: &Response<()>) -> String {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("id=") || c.contains("session"))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("session cookie")
}

fn replica(resp: &Response<()>) -> (String, u64) {
    let r = resp.headers()["session-replica"]
        .to_str()
        .unwrap()
        .to_owned();
    let seq = resp.headers()["session-replica-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (r, seq)
}

/// Adds two items on A; returns (cookie, replica, seq).
async fn shop_on(a: &Server) -> (String, String, u64) {
    let (r1, _) = send(
        &a.app,
        Request::post("/add").body(Body::from("tea")).unwrap(),
    )
    .await;
    let cookie = session_cookie(&r1);
    let (r2, body) = send(
        &a.app,
        Request::post("/add")
            .header(header::COOKIE, &cookie)
            .body(Body::from("milk"))
            .unwrap(),
    )
    .await;
    assert_eq!(body, "tea,milk");
    let (rep, seq) = replica(&r2);
    assert!(seq > replica(&r1).1, "seq grows with every change");
    (cookie, rep, seq)
}

#[tokio::test]
async fn header_restores_on_another_server() {
    let keys = Keyring::generate();
    let (a, b) = (server(&keys, |r| r), server(&keys, |r| r));
    let (cookie, rep, _) = shop_on(&a).await;
    let (resp, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &rep)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, "tea,milk|restored=true");
    assert_eq!(b.replicas.restored_count(Via::Header), 1);
    // B now knows the session: the next request needs no replica.
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(body.starts_with("tea,milk|"), "{body}");
}

#[tokio::test]
async fn capable_client_is_asked_and_the_handler_does_not_run() {
    let keys = Keyring::generate();
    let (a, b) = (server(&keys, |r| r), server(&keys, |r| r));
    let (cookie, rep, seq) = shop_on(&a).await;
    let ask = Request::post("/add")
        .header(header::COOKIE, &cookie)
        .header("session-replica-capable", seq.to_string())
        .body(Body::from("cake"))
        .unwrap();
    let (resp, _) = send(&b.app, ask).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(resp.headers()["session-replica-wanted"], "1");
    assert_eq!(
        b.side_effects.load(Ordering::SeqCst),
        0,
        "no side effect before the resend"
    );
    let resend = Request::post("/add")
        .header(header::COOKIE, &cookie)
        .header("session-replica", &rep)
        .body(Body::from("cake"))
        .unwrap();
    let (resp, body) = send(&b.app, resend).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, "tea,milk,cake");
    assert_eq!(b.side_effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_parked_navigation_is_released_by_a_replica_on_another_request() {
    let keys = Keyring::generate();
    let (a, b) = (
        server(&keys, |r| r),
        server(&keys, |r| r.with_restore_grace(Duration::from_secs(20))),
    );
    let (cookie, rep, _) = shop_on(&a).await;
    let nav_cookie = format!("{cookie}; remora_replica_held=1");
    let app = b.app.clone();
    let nav = tokio::spawn(async move {
        send(
            &app,
            Request::get("/list")
                .header(header::COOKIE, nav_cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    });
    while b.replicas.parked() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (resp, body) = send(
        &b.app,
        Request::post("/add")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &rep)
            .body(Body::from("jam"))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, "tea,milk,jam");
    let (resp, body) = tokio::time::timeout(Duration::from_secs(10), nav)
        .await
        .expect("released well before the grace")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        body.starts_with("tea,milk"),
        "parked request sees the restored cart: {body}"
    );
}

#[tokio::test]
async fn a_bayeux_style_restore_releases_a_parked_request() {
    let keys = Keyring::generate();
    let (a, b) = (
        server(&keys, |r| r),
        server(&keys, |r| r.with_restore_grace(Duration::from_secs(20))),
    );
    let (cookie, rep, _) = shop_on(&a).await;
    let id = cookie.split_once('=').unwrap().1.to_owned();
    let app = b.app.clone();
    let nav_cookie = format!("{cookie}; remora_replica_held=1");
    let nav = tokio::spawn(async move {
        send(
            &app,
            Request::get("/list")
                .header(header::COOKIE, nav_cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    });
    while b.replicas.parked() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        b.replicas
            .restore(&b.layer, &id, &rep, Via::Bayeux)
            .await
            .unwrap()
    );
    let (_, body) = tokio::time::timeout(Duration::from_secs(10), nav)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "tea,milk|restored=true");
    assert_eq!(b.replicas.restored_count(Via::Bayeux), 1);
    assert_eq!(b.replicas.restored_count(Via::Park), 1);
}

#[tokio::test]
async fn without_the_hint_a_plain_request_does_not_wait() {
    let keys = Keyring::generate();
    let (a, b) = (
        server(&keys, |r| r),
        server(&keys, |r| r.with_restore_grace(Duration::from_secs(30))),
    );
    let (cookie, _, _) = shop_on(&a).await;
    let (_, body) = tokio::time::timeout(
        Duration::from_secs(5),
        send(
            &b.app,
            Request::get("/list")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        ),
    )
    .await
    .expect("no parking without the held hint");
    assert_eq!(body, "|restored=false");
}

#[tokio::test]
async fn tampered_and_foreign_replicas_give_a_fresh_session_and_are_counted() {
    let keys = Keyring::generate();
    let (a, b) = (server(&keys, |r| r), server(&keys, |r| r));
    let (cookie, rep, _) = shop_on(&a).await;
    let mut bytes = rep.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let (resp, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &tampered)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a rejected replica never fails the request"
    );
    assert_eq!(body, "|restored=false");
    assert_eq!(b.replicas.rejected_count(Rejection::Tampered), 1);
    // A replica from a server with other keys: wrong_key.
    let other = server(&Keyring::generate(), |r| r);
    let (_, rep2, _) = shop_on(&other).await;
    send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &rep2)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(b.replicas.rejected_count(Rejection::WrongKey), 1);
}

#[tokio::test]
async fn cookie_carriage_restores_without_scripts() {
    let keys = Keyring::generate();
    let carriage = CookieCarriage {
        secure: false,
        ..CookieCarriage::default()
    };
    let (a, b) = (
        server(&keys, |r| r.with_cookie_carriage(carriage.clone())),
        server(&keys, |r| r.with_cookie_carriage(carriage.clone())),
    );
    let (r1, _) = send(
        &a.app,
        Request::post("/add").body(Body::from("tea")).unwrap(),
    )
    .await;
    let mut jar: Vec<String> = r1
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .filter(|c| !c.ends_with('='))
        .collect();
    assert!(
        jar.iter().any(|c| c.starts_with("remora_replica.0=")),
        "{jar:?}"
    );
    jar.sort();
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, jar.join("; "))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "tea|restored=true");
    assert_eq!(b.replicas.restored_count(Via::Cookie), 1);
}

#[tokio::test]
async fn strict_mode_refuses_an_older_replica_and_a_logged_out_session() {
    let keys = Keyring::generate();
    let ledger = Arc::new(MemoryLedger::new(1000));
    let strict = |r: Replicas| r.with_ledger(ledger.clone(), Duration::from_secs(3600));
    let (a, b, c) = (
        server(&keys, strict),
        server(&keys, strict),
        server(&keys, strict),
    );
    let (r1, _) = send(
        &a.app,
        Request::post("/add").body(Body::from("tea")).unwrap(),
    )
    .await;
    let cookie = session_cookie(&r1);
    let (old, _) = replica(&r1);
    let (r2, _) = send(
        &a.app,
        Request::post("/add")
            .header(header::COOKIE, &cookie)
            .body(Body::from("milk"))
            .unwrap(),
    )
    .await;
    let (new, _) = replica(&r2);
    // The ledger is written off the response path; wait for it.
    let id = cookie.split_once('=').unwrap().1.to_owned();
    let want = r2.headers()["session-replica-seq"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while remora_session::replica::ReplayLedger::newest(&*ledger, &id)
        .await
        .unwrap()
        != Some(want)
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &old)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "|restored=false", "the older replica is refused");
    assert_eq!(b.replicas.rejected_count(Rejection::Stale), 1);
    let (_, body) = send(
        &c.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &new)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "tea,milk|restored=true");
    // Logout on C writes a tombstone: the newest replica no longer restores anywhere.
    let (resp, _) = send(
        &c.app,
        Request::post("/logout")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.headers()["session-replica-drop"], "1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while remora_session::replica::ReplayLedger::newest(&*ledger, &id)
        .await
        .unwrap()
        != Some(u64::MAX)
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let (_, body) = send(
        &a.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &new)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(body.ends_with("restored=false"), "{body}");
}

#[tokio::test]
async fn issued_replicas_reach_listeners() {
    let keys = Keyring::generate();
    let a = server(&keys, |r| r);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = seen.clone();
    a.replicas.subscribe(move |i| {
        s.lock()
            .push((i.session_id.clone(), i.replica.is_some(), i.seq))
    });
    let (cookie, _, seq) = shop_on(&a).await;
    let id = cookie.split_once('=').unwrap().1.to_owned();
    let got = seen.lock().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1], (id, true, seq));
}

#[tokio::test]
async fn a_newer_replica_replaces_an_older_stored_copy() {
    // A server whose store kept an old copy (a persistent store after the
    // client moved away and back) must not serve it over the client's newer replica.
    let keys = Keyring::generate();
    let (a, b) = (server(&keys, |r| r), server(&keys, |r| r));
    let (r1, _) = send(
        &a.app,
        Request::post("/add").body(Body::from("tea")).unwrap(),
    )
    .await;
    let cookie = session_cookie(&r1);
    let (old, _) = replica(&r1);
    // B learns the old state...
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &old)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "tea|restored=true");
    // ...the client moves on with A...
    let (r2, _) = send(
        &a.app,
        Request::post("/add")
            .header(header::COOKIE, &cookie)
            .body(Body::from("milk"))
            .unwrap(),
    )
    .await;
    let (new, seq) = replica(&r2);
    // ...and comes back to B: B asks, because the client's replica is newer.
    let (resp, _) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica-capable", seq.to_string())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let (resp, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &new)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body.starts_with("tea,milk|"), "{body}");
    // An older replica never replaces a newer stored copy.
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica", &old)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(body.starts_with("tea,milk|"), "{body}");
    // And the client's current seq asks nothing.
    let (resp, _) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .header("session-replica-capable", seq.to_string())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_restore_outside_a_request_is_seen_by_the_next_request() {
    let keys = Keyring::generate();
    let (a, b) = (server(&keys, |r| r), server(&keys, |r| r));
    let (cookie, rep, _) = shop_on(&a).await;
    let id = cookie.split_once('=').unwrap().1.to_owned();
    assert!(
        b.replicas
            .restore(&b.layer, &id, &rep, Via::Bayeux)
            .await
            .unwrap()
    );
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "tea,milk|restored=true");
    let (_, body) = send(
        &b.app,
        Request::get("/list")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        body, "tea,milk|restored=false",
        "only the first request after the restore is told"
    );
}
