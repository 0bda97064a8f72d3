//! `long-polling`: POST with a JSON body (or a form field `message=`).

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::{form_field, handle_http, respond};
use crate::engine::{Bayeux, Transport};
use crate::security::RequestContext;

/// Handles a long-polling POST (any sub-path).
pub(crate) async fn post(State(bayeux): State<Bayeux>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let limit = bayeux.config().max_request_bytes;
    let Ok(body) = to_bytes(body, limit).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
    };
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let ctx = RequestContext::from_parts(&parts);
    // Nothing of the request may stay alive while a connect is held: its
    // header values and body share the connection's read buffer.
    drop(parts);
    let body = match is_form.then(|| form_field(&body, "message")).flatten() {
        Some(m) => bytes::Bytes::from(m),
        // JSON, or a JSON body labelled as a form (curl -d): handle_http
        // drops it once parsed.
        None => body,
    };
    let result = handle_http(&bayeux, &ctx, body, Transport::LongPolling).await;
    match result {
        Ok((json, cookie)) => respond(json, "application/json;charset=UTF-8", cookie),
        Err(r) => r,
    }
}
