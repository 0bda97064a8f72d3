//! The page and its scripts, embedded in the binary (no CDN, no build step).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($mime:expr, $path:expr) => {
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, $mime),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                include_str!($path),
            )
                .into_response()
        })
    };
}

/// Routes for `/`, `/assets/*` and the client library under `/assets/remora-client/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", asset!(HTML, "../../assets/demo/index.html"))
        .route("/assets/app.js", asset!(JS, "../../assets/demo/app.js"))
        .route("/assets/app.css", asset!(CSS, "../../assets/demo/app.css"))
        .route(
            "/assets/shop-bayeux.js",
            asset!(JS, "../../assets/demo/shop-bayeux.js"),
        )
        .route(
            "/assets/remora-client/bayeux.js",
            asset!(JS, "../../../../js/remora-client/src/bayeux.js"),
        )
        .route(
            "/assets/remora-client/replica.js",
            asset!(JS, "../../../../js/remora-client/src/replica.js"),
        )
        .route(
            "/assets/remora-client/fetch.js",
            asset!(JS, "../../../../js/remora-client/src/fetch.js"),
        )
        .route(
            "/assets/remora-client/extensions.js",
            asset!(JS, "../../../../js/remora-client/src/extensions.js"),
        )
}
