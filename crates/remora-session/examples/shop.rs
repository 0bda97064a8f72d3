//! A tiny shop on `remora-session`: a cart kept in the session, a login that
//! cycles the session ID, a logout that invalidates it, and a CSRF-protected
//! form.
//!
//! Run it (memory store, plain HTTP for local development):
//!
//! ```text
//! cargo run -p remora-session --example shop -- 127.0.0.1:3000
//! curl -c jar -b jar -X POST -H 'content-type: application/json' \
//!      -d '{"sku":"tea","qty":2}' http://127.0.0.1:3000/api/cart/items
//! curl -c jar -b jar http://127.0.0.1:3000/api/cart
//! ```
//!
//! With `REDIS_URL` set it uses a [`RedisStore`] instead.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use remora_session::{CsrfLayer, Session, SessionError, SessionLayer};
use serde::{Deserialize, Serialize};

/// One cart line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// Quantity.
    pub qty: u32,
}

/// The app's shared state.
#[derive(Clone)]
pub struct Shop {
    /// The server's name (shown by `/api/whoami` and the cart).
    pub name: Arc<str>,
}

async fn cart_json(
    shop: &Shop,
    session: &Session,
) -> Result<Json<serde_json::Value>, SessionError> {
    let items: Vec<Item> = session.get("cart").await?.unwrap_or_default();
    Ok(Json(serde_json::json!({
        "server": &*shop.name,
        "items": items,
        "restored": session.was_restored().await?,
        "user": session.get::<String>("user").await?,
    })))
}

async fn cart(
    State(shop): State<Shop>,
    session: Session,
) -> Result<impl IntoResponse, SessionError> {
    cart_json(&shop, &session).await
}

async fn add_item(
    State(shop): State<Shop>,
    session: Session,
    Json(item): Json<Item>,
) -> Result<impl IntoResponse, SessionError> {
    let mut items: Vec<Item> = session.get("cart").await?.unwrap_or_default();
    match items.iter_mut().find(|i| i.sku == item.sku) {
        Some(i) => i.qty = i.qty.saturating_add(item.qty),
        None => items.push(item),
    }
    session.insert("cart", &items).await?;
    cart_json(&shop, &session).await
}

async fn remove_item(
    State(shop): State<Shop>,
    session: Session,
    Path(sku): Path<String>,
) -> Result<impl IntoResponse, SessionError> {
    let mut items: Vec<Item> = session.get("cart").await?.unwrap_or_default();
    items.retain(|i| i.sku != sku);
    session.insert("cart", &items).await?;
    cart_json(&shop, &session).await
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Json(l): Json<Login>) -> Result<impl IntoResponse, SessionError> {
    // New ID on privilege change, against session fixation.
    session.cycle_id().await?;
    session
        .insert_with_ttl("user", &l.user, std::time::Duration::from_secs(15 * 60))
        .await?;
    session.insert_once("checkout-ticket", "t-1").await?;
    Ok(Json(serde_json::json!({ "user": l.user })))
}

async fn checkout(session: Session) -> Result<impl IntoResponse, SessionError> {
    let ticket: Option<String> = session.take_once("checkout-ticket").await?;
    Ok(Json(serde_json::json!({ "ticket": ticket })))
}

async fn logout(session: Session) -> Result<impl IntoResponse, SessionError> {
    session.invalidate().await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn form(session: Session) -> Result<impl IntoResponse, SessionError> {
    let token = session.csrf_token().await?;
    Ok(Html(format!(
        "<form method=post action=/form/note><input type=hidden name=csrf_token value=\"{token}\"><input name=note><button>Save</button></form>"
    )))
}

#[derive(Deserialize)]
struct Note {
    note: String,
}

async fn save_note(
    session: Session,
    Form(n): Form<Note>,
) -> Result<impl IntoResponse, SessionError> {
    session.insert("note", &n.note).await?;
    Ok("saved\n")
}

/// The shop's router with the session layer applied.
pub fn app(name: &str, layer: SessionLayer) -> Router {
    let shop = Shop { name: name.into() };
    let protected = Router::new()
        .route("/form", get(form))
        .route("/form/note", post(save_note))
        .layer(CsrfLayer::new());
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/api/whoami",
            get(|State(s): State<Shop>| async move { Json(serde_json::json!({ "server": &*s.name })) }),
        )
        .route("/api/cart", get(cart))
        .route("/api/cart/items", post(add_item))
        .route("/api/cart/items/{sku}", delete(remove_item))
        .route("/api/login", post(login))
        .route("/api/checkout", post(checkout))
        .route("/api/logout", post(logout))
        .merge(protected)
        .with_state(shop)
        .layer(layer)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let layer = match std::env::var("REDIS_URL") {
        Ok(url) => SessionLayer::new(remora_session::store::RedisStore::connect(&url).await?),
        Err(_) => SessionLayer::new(remora_session::MemoryStore::new()),
    }
    // Plain HTTP on localhost for the example only.
    .with_secure(false)
    .with_expires_header(true);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("shop listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app("shop", layer)).await?;
    Ok(())
}
