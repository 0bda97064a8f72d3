//! A small router exercising every `Session` operation, for the
//! conformance suite.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use remora_session::{Session, SessionError, SessionLayer};
use tokio::sync::Barrier;

/// Optional barrier every `/sync/...` handler waits on after loading.
#[derive(Clone, Default)]
pub struct Sync {
    pub barrier: Option<Arc<Barrier>>,
}

async fn get_key(
    s: Session,
    Path(k): Path<String>,
) -> Result<Json<serde_json::Value>, SessionError> {
    Ok(Json(
        s.get::<serde_json::Value>(&k).await?.unwrap_or_default(),
    ))
}

async fn set_key(
    s: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    s.insert(&k, v).await?;
    Ok("ok")
}

async fn sync_set(
    State(sync): State<Sync>,
    s: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    s.keys().await?;
    if let Some(b) = &sync.barrier {
        b.wait().await;
    }
    s.insert(&k, v).await?;
    Ok("ok")
}

/// Inserts, meets the barrier, then never answers (to be cancelled).
async fn hang(
    State(sync): State<Sync>,
    s: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    s.insert(&k, v).await?;
    if let Some(b) = &sync.barrier {
        b.wait().await;
    }
    std::future::pending::<()>().await;
    Ok("never")
}

async fn ttl(
    s: Session,
    Path((k, v, ms)): Path<(String, String, u64)>,
) -> Result<&'static str, SessionError> {
    s.insert_with_ttl(&k, v, Duration::from_millis(ms)).await?;
    Ok("ok")
}

async fn once(
    s: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    s.insert_once(&k, v).await?;
    Ok("ok")
}

async fn take(s: Session, Path(k): Path<String>) -> Result<Json<Option<String>>, SessionError> {
    Ok(Json(s.take_once(&k).await?))
}

async fn big(s: Session, Path(n): Path<usize>) -> Result<&'static str, SessionError> {
    s.insert("big", "x".repeat(n)).await?;
    Ok("ok")
}

async fn cycle(s: Session) -> Result<&'static str, SessionError> {
    s.cycle_id().await?;
    Ok("ok")
}

async fn invalidate(s: Session) -> Result<&'static str, SessionError> {
    s.invalidate().await?;
    Ok("ok")
}

async fn info(s: Session) -> Result<Json<serde_json::Value>, SessionError> {
    Ok(Json(serde_json::json!({
        "id": s.id(),
        "was_expired": s.was_expired().await?,
        "expires_in_ms": s.expires_in().await?.map(|d| d.as_millis() as u64),
        "keys": s.keys().await?,
    })))
}

async fn fail(s: Session) -> Result<(http::StatusCode, &'static str), SessionError> {
    s.insert("failed", true).await?;
    Ok((http::StatusCode::INTERNAL_SERVER_ERROR, "boom"))
}

pub fn router(layer: SessionLayer, sync: Sync) -> Router {
    Router::new()
        .route("/get/{k}", get(get_key))
        .route("/set/{k}/{v}", post(set_key))
        .route("/sync/{k}/{v}", post(sync_set))
        .route("/ttl/{k}/{v}/{ms}", post(ttl))
        .route("/hang/{k}/{v}", post(hang))
        .route("/once/{k}/{v}", post(once))
        .route("/take/{k}", post(take))
        .route("/big/{n}", post(big))
        .route("/cycle", post(cycle))
        .route("/invalidate", post(invalidate))
        .route("/info", get(info))
        .route("/fail", post(fail))
        .route("/plain", get(|| async { "plain" }))
        .route(
            "/restored",
            get(|s: Session| async move { s.was_restored().await.map(|r| r.to_string()) }),
        )
        .with_state(sync)
        .layer(layer)
}
