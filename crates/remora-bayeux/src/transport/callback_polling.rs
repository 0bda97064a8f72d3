//! `callback-polling` (JSONP): GET with `message=` and `jsonp=`; the reply
//! is `callback([...]);` as JavaScript.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::{form_field, handle_http, respond};
use crate::engine::{Bayeux, Transport};
use crate::security::RequestContext;

/// Callback used when the request names none (as CometD and Faye do).
const DEFAULT_CALLBACK: &str = "jsonpcallback";
/// Longest accepted callback name.
const MAX_CALLBACK_LEN: usize = 128;

/// Whether `name` is a safe JavaScript callback: identifiers joined by dots.
pub fn valid_callback(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CALLBACK_LEN
        && name.split('.').all(|part| {
            let mut bytes = part.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

/// Handles a callback-polling GET.
pub(crate) async fn get(bayeux: Bayeux, parts: http::request::Parts) -> Response {
    let query = parts.uri.query().unwrap_or("").as_bytes();
    if query.len() > bayeux.config().max_request_bytes {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
    }
    let Some(message) = form_field(query, "message") else {
        return (StatusCode::BAD_REQUEST, "missing message parameter").into_response();
    };
    let callback = form_field(query, "jsonp")
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_else(|| DEFAULT_CALLBACK.to_owned());
    if !valid_callback(&callback) {
        return (StatusCode::BAD_REQUEST, "invalid jsonp callback name").into_response();
    }
    let ctx = RequestContext::from_parts(&parts);
    // The request shares the connection's read buffer: not kept while held.
    drop(parts);
    match handle_http(&bayeux, &ctx, message, Transport::CallbackPolling).await {
        Ok((json, cookie)) => respond(
            format!("{callback}({json});"),
            "text/javascript;charset=UTF-8",
            cookie,
        ),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_callback;

    #[test]
    fn callback_names() {
        for ok in ["cb", "_cb1", "$.cb", "a.b.c", "jsonpcallback"] {
            assert!(valid_callback(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a..b",
            "a.",
            "alert(1)",
            "a;b",
            "a-b",
            &"x".repeat(200),
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }
}
