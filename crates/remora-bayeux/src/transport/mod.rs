//! The three transports and the axum router that serves them.

pub mod callback_polling;
pub mod long_polling;
mod server;
pub mod websocket;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State, ws::WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

use crate::engine::{Bayeux, Transport, new_browser_id};
use crate::message::{ParseError, join_array, parse_messages};
use crate::security::RequestContext;

/// Where [`Bayeux::router`] and [`Bayeux::serve`] serve Bayeux.
pub(crate) const DEFAULT_PATH: &str = "/cometd";

/// Longest browser cookie value we accept (longer ones are ignored).
const MAX_BROWSER_ID_LEN: usize = 64;

impl Bayeux {
    /// An axum router serving Bayeux at `/cometd` (and its sub-paths, such
    /// as the `/cometd/handshake` and `/cometd/connect` the CometD client
    /// appends): long-polling on POST, callback-polling on GET, WebSocket on
    /// GET with an upgrade.
    pub fn router(&self) -> Router {
        self.router_at(DEFAULT_PATH)
    }

    /// Like [`Bayeux::router`], at another path (`/bayeux`; not `/`).
    pub fn router_at(&self, path: &str) -> Router {
        let path = path.trim_end_matches('/');
        let path = if path.is_empty() { DEFAULT_PATH } else { path };
        Router::new()
            .route(path, get(get_handler).post(long_polling::post))
            .route(
                &format!("{path}/"),
                get(get_handler).post(long_polling::post),
            )
            .route(
                &format!("{path}/{{*rest}}"),
                get(get_handler).post(long_polling::post),
            )
            .with_state(self.clone())
    }
}

async fn get_handler(State(bayeux): State<Bayeux>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let is_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &bayeux).await {
            Ok(ws) => websocket::upgrade(bayeux, ws, RequestContext::from_parts(&parts)),
            Err(rejection) => rejection.into_response(),
        };
    }
    drop(body);
    callback_polling::get(bayeux, parts).await
}

/// The browser id of a request: its cookie, or a fresh one to set.
pub(crate) fn browser_of(bayeux: &Bayeux, ctx: &RequestContext) -> (Arc<str>, bool) {
    match ctx.cookie(&bayeux.config().browser_cookie) {
        Some(v) if !v.is_empty() && v.len() <= MAX_BROWSER_ID_LEN => (Arc::from(v), false),
        _ => (Arc::from(new_browser_id()), true),
    }
}

/// The `Set-Cookie` value for a fresh browser id.
pub(crate) fn browser_cookie(bayeux: &Bayeux, id: &str) -> Option<HeaderValue> {
    let cfg = bayeux.config();
    let secure = if cfg.browser_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Lax{secure}",
        cfg.browser_cookie
    ))
    .ok()
}

/// Runs one HTTP request's messages (long-polling or callback-polling) and
/// returns the JSON array to answer with, plus a cookie to set. `body` is
/// dropped once parsed, before a connect is held.
pub(crate) async fn handle_http(
    bayeux: &Bayeux,
    ctx: &RequestContext,
    body: impl AsRef<[u8]>,
    transport: Transport,
) -> Result<(String, Option<HeaderValue>), Response> {
    let messages = parse_messages(body.as_ref(), bayeux.config().max_messages_per_request)
        .map_err(bad_request)?;
    drop(body);
    let (browser, fresh) = browser_of(bayeux, ctx);
    let mut processed = bayeux.process(messages, ctx, transport, Some(&browser));
    if let Some(pending) = processed.connect.take() {
        if !pending.hold.is_zero() && !pending.client.has_queued() {
            pending.client.wait(pending.generation, pending.hold).await;
        }
        processed
            .replies
            .extend(bayeux.finish_connect(pending, ctx));
    }
    let cookie = if fresh && processed.handshook {
        browser_cookie(bayeux, &browser)
    } else {
        None
    };
    Ok((join_array(&processed.replies), cookie))
}

/// HTTP 400 for a body that is not Bayeux messages: nothing was processed.
pub(crate) fn bad_request(e: ParseError) -> Response {
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

/// Builds a response with a content type and an optional cookie.
pub(crate) fn respond(
    body: String,
    content_type: &'static str,
    cookie: Option<HeaderValue>,
) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Decodes `application/x-www-form-urlencoded` and returns field `name`.
pub(crate) fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (percent_decode(k) == name.as_bytes()).then(|| percent_decode(v))
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_field(b"a=1&message=%5B%7B%22x%22%3A+1%7D%5D", "message").unwrap(),
            br#"[{"x": 1}]"#
        );
        assert_eq!(form_field(b"message", "message").unwrap(), b"");
        assert_eq!(form_field(b"a=%4", "a").unwrap(), b"%4");
        assert_eq!(form_field(b"a=%41", "a").unwrap(), b"A");
        assert!(form_field(b"a=1", "b").is_none());
    }
}
