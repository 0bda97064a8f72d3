//! The shop's handlers and router.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use remora_session::{CsrfLayer, Session, SessionError, SessionLayer};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::assets;

/// How long a sign-in lasts (a per-attribute TTL: the cart stays).
pub const LOGIN_TTL: Duration = Duration::from_secs(15 * 60);
/// Most distinct products in a cart, and most of one product.
const MAX_LINES: usize = 50;
const MAX_QTY: u32 = 99;

/// The shop's shared state.
#[derive(Clone)]
pub struct Shop {
    name: Arc<str>,
    admin: Option<Arc<Admin>>,
}

impl Shop {
    /// A shop called `name`; `admin` reaches the balancer for the cluster view.
    pub fn new(name: String, admin: Option<Arc<Admin>>) -> Self {
        Self {
            name: name.into(),
            admin,
        }
    }
}

/// One line of the cart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    sku: String,
    qty: u32,
}

#[derive(Deserialize)]
struct AddItem {
    sku: String,
    #[serde(default = "one")]
    qty: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

#[derive(Deserialize)]
struct Checkout {
    order_token: Option<String>,
}

/// An error the page can show: status and `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::TooLarge { .. } => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            other => ApiError(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        }
    }
}

fn bad(msg: &str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_owned())
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The cart as JSON, marking a session restored here from a replica.
async fn cart_json(shop: &Shop, session: &Session) -> Result<Json<serde_json::Value>, ApiError> {
    // `restored`: rebuilt from a replica in this process. Remembered in a
    // server-only attribute, which never travels in a replica.
    if session.was_restored().await?
        && session.get::<String>("restored_on").await?.as_deref() != Some(&*shop.name)
    {
        session
            .insert_server_only("restored_on", &*shop.name)
            .await?;
    }
    let restored = session.get::<String>("restored_on").await?.as_deref() == Some(&*shop.name);
    let items: Vec<Line> = session.get("cart").await?.unwrap_or_default();
    // A once-only order token per cart: a replayed checkout finds it taken.
    let order_token = if items.is_empty() {
        None
    } else {
        match session.get::<String>("order_token").await? {
            Some(t) => Some(t),
            None => {
                let t = remora_session::id::new_token();
                session.insert_once("order_token", &t).await?;
                Some(t)
            }
        }
    };
    let user: Option<String> = session.get("user").await?;
    Ok(Json(serde_json::json!({
        "server": &*shop.name,
        "items": items,
        "restored": restored,
        "user": user,
        "order_token": order_token,
    })))
}

async fn cart(State(shop): State<Shop>, session: Session) -> Result<impl IntoResponse, ApiError> {
    cart_json(&shop, &session).await
}

async fn add_item(
    State(shop): State<Shop>,
    session: Session,
    Json(add): Json<AddItem>,
) -> Result<impl IntoResponse, ApiError> {
    if !valid_name(&add.sku, 32) {
        return Err(bad("sku: 1 to 32 characters of A-Z a-z 0-9 _ . -"));
    }
    if add.qty == 0 || add.qty > MAX_QTY {
        return Err(bad("qty: 1 to 99"));
    }
    let mut items: Vec<Line> = session.get("cart").await?.unwrap_or_default();
    let lines = items.len();
    match items.iter_mut().find(|l| l.sku == add.sku) {
        Some(l) => l.qty = (l.qty + add.qty).min(MAX_QTY),
        None if lines >= MAX_LINES => return Err(bad("the cart is full")),
        None => items.push(Line {
            sku: add.sku,
            qty: add.qty,
        }),
    }
    session.insert("cart", &items).await?;
    cart_json(&shop, &session).await
}

async fn remove_item(
    State(shop): State<Shop>,
    session: Session,
    Path(sku): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let mut items: Vec<Line> = session.get("cart").await?.unwrap_or_default();
    let before = items.len();
    items.retain(|l| l.sku != sku);
    if items.len() != before {
        session.insert("cart", &items).await?;
    }
    cart_json(&shop, &session).await
}

async fn login(
    State(shop): State<Shop>,
    session: Session,
    Json(l): Json<Login>,
) -> Result<impl IntoResponse, ApiError> {
    if !valid_name(&l.user, 32) {
        return Err(bad("user: 1 to 32 characters of A-Z a-z 0-9 _ . -"));
    }
    // New id on sign-in, against session fixation; same data.
    session.cycle_id().await?;
    session.insert_with_ttl("user", &l.user, LOGIN_TTL).await?;
    cart_json(&shop, &session).await
}

async fn logout(State(shop): State<Shop>, session: Session) -> Result<impl IntoResponse, ApiError> {
    session.invalidate().await?;
    Ok(Json(
        serde_json::json!({ "server": &*shop.name, "items": [], "restored": false, "user": null, "order_token": null }),
    ))
}

async fn keep_alive(
    State(shop): State<Shop>,
    session: Session,
) -> Result<impl IntoResponse, ApiError> {
    session.keep_alive().await?;
    cart_json(&shop, &session).await
}

async fn csrf(session: Session) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        serde_json::json!({ "token": session.csrf_token().await? }),
    ))
}

async fn checkout(
    State(shop): State<Shop>,
    session: Session,
    Json(c): Json<Checkout>,
) -> Result<Response, ApiError> {
    let items: Vec<Line> = session.get("cart").await?.unwrap_or_default();
    if items.is_empty() {
        return Err(ApiError(StatusCode::CONFLICT, "the cart is empty".into()));
    }
    let presented = c.order_token.ok_or_else(|| bad("order_token is missing"))?;
    // Taken exactly once, even by concurrent or replayed requests.
    match session.take_once::<String>("order_token").await? {
        Some(t) if t == presented => {}
        Some(t) => {
            // Not this cart's token: put it back untouched.
            session.insert_once("order_token", &t).await?;
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this order was already placed or is out of date".into(),
            ));
        }
        None => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this order was already placed".into(),
            ));
        }
    }
    let order = remora_session::id::new_token();
    session.remove("cart").await?;
    tracing::info!(server = %shop.name, %order, lines = items.len(), "order placed");
    let cart = cart_json(&shop, &session).await?.0;
    Ok(Json(serde_json::json!({ "order": &order[..12.min(order.len())], "server": &*shop.name, "items": items, "cart": cart })).into_response())
}

async fn crash(State(shop): State<Shop>) -> StatusCode {
    tracing::warn!(server = %shop.name, "crash requested: exiting at once");
    // No cleanup, no graceful shutdown: what a real crash looks like.
    std::process::exit(137)
}

async fn set_state(
    shop: &Shop,
    state: &'static str,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let admin = shop.admin.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "no balancer admin API configured".into(),
        )
    })?;
    admin
        .set_state(&shop.name, state)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(
        serde_json::json!({ "server": &*shop.name, "state": state }),
    ))
}

async fn drain(State(shop): State<Shop>) -> Result<impl IntoResponse, ApiError> {
    set_state(&shop, "drain").await
}

async fn resume(State(shop): State<Shop>) -> Result<impl IntoResponse, ApiError> {
    set_state(&shop, "ready").await
}

async fn cluster(State(shop): State<Shop>) -> Result<impl IntoResponse, ApiError> {
    let servers = match &shop.admin {
        Some(a) => a
            .servers()
            .await
            .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?,
        None => Vec::new(),
    };
    Ok(Json(serde_json::json!({ "servers": servers })))
}

/// The shop's router with `layer` applied. The page and its assets are
/// served too; routes that carry no session do not touch the store.
pub fn router(shop: Shop, layer: SessionLayer) -> Router {
    let checkout_route = post(checkout).route_layer(CsrfLayer::default());
    let api =
        Router::new()
            .route(
                "/api/whoami",
                get(|State(s): State<Shop>| async move {
                    Json(serde_json::json!({ "server": &*s.name }))
                }),
            )
            .route("/api/cart", get(cart))
            .route("/api/cart/items", post(add_item))
            .route("/api/cart/items/{sku}", delete(remove_item))
            .route("/api/login", post(login))
            .route("/api/logout", post(logout))
            .route("/api/csrf", get(csrf))
            .route("/api/keepalive", post(keep_alive))
            .route("/api/checkout", checkout_route)
            .layer(layer);
    Router::new()
        .merge(api)
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/crash", post(crash))
        .route("/api/drain", post(drain))
        .route("/api/resume", post(resume))
        .route("/api/cluster", get(cluster))
        .merge(assets::router())
        .with_state(shop)
}
