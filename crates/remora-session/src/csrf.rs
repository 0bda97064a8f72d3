//! [`CsrfLayer`]: synchronizer-token CSRF protection on top of sessions.
//!
//! Unsafe methods (POST, PUT, PATCH, DELETE) must carry the session's token
//! ([`Session::csrf_token`]) in the `X-CSRF-Token` header or, for
//! `application/x-www-form-urlencoded` bodies, in a `csrf_token` field.
//! Otherwise the answer is `403` with a plain-text explanation. Tokens are
//! compared in constant time. A form body is buffered only up to a limit
//! (default 64 KiB; larger: `413`) and handed on unchanged.
//!
//! Put it *inside* the [`SessionLayer`](crate::SessionLayer):
//! `router.layer(CsrfLayer::new()).layer(session_layer)`.

use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use subtle::ConstantTimeEq;
use tower_layer::Layer;
use tower_service::Service;

use crate::session::{CSRF_KEY, Session};
use crate::store::BoxFuture;

/// Name of the request header carrying the token.
pub const HEADER: &str = "x-csrf-token";
/// Name of the form field carrying the token.
pub const FORM_FIELD: &str = "csrf_token";
/// Default limit for a buffered form body.
pub const DEFAULT_FORM_LIMIT: usize = 64 * 1024;

/// Layer rejecting unsafe requests without the session's CSRF token.
#[derive(Debug, Clone)]
pub struct CsrfLayer {
    form_limit: usize,
}

impl Default for CsrfLayer {
    fn default() -> Self {
        CsrfLayer {
            form_limit: DEFAULT_FORM_LIMIT,
        }
    }
}

impl CsrfLayer {
    /// A layer with the default form limit (64 KiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest urlencoded form body buffered to look for the token
    /// (default 65536 bytes); larger bodies get `413`.
    pub fn with_form_limit(mut self, bytes: usize) -> Self {
        self.form_limit = bytes;
        self
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            form_limit: self.form_limit,
        }
    }
}

/// The service built by [`CsrfLayer`].
#[derive(Debug, Clone)]
pub struct CsrfService<S> {
    inner: S,
    form_limit: usize,
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

const REJECTED: &str = "CSRF check failed: this request must carry the session's CSRF token in the X-CSRF-Token header or the csrf_token form field\n";

fn is_unsafe(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The `csrf_token` field of a urlencoded form, if any.
pub(crate) fn form_token(body: &[u8]) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(p) => (&pair[..p], &pair[p + 1..]),
            None => (pair, &[][..]),
        };
        (form_decode(k) == FORM_FIELD.as_bytes()).then(|| form_decode(v))
    })
}

fn matches(expected: &str, given: &[u8]) -> bool {
    bool::from(expected.as_bytes().ct_eq(given))
}

impl<S> Service<Request<Body>> for CsrfService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.form_limit;
        Box::pin(async move {
            if !is_unsafe(req.method()) {
                return inner.call(req).await;
            }
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                return Ok(plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "CsrfLayer needs a SessionLayer in front of it\n",
                ));
            };
            let expected = match session.get::<String>(CSRF_KEY).await {
                Ok(Some(t)) => t,
                Ok(None) => return Ok(plain(StatusCode::FORBIDDEN, REJECTED)),
                Err(e) => return Ok(axum::response::IntoResponse::into_response(e)),
            };
            if let Some(h) = req.headers().get(HEADER) {
                return if matches(&expected, h.as_bytes()) {
                    inner.call(req).await
                } else {
                    Ok(plain(StatusCode::FORBIDDEN, REJECTED))
                };
            }
            let is_form = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            if !is_form {
                return Ok(plain(StatusCode::FORBIDDEN, REJECTED));
            }
            let (parts, body) = req.into_parts();
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "form body over the CSRF check's size limit\n",
                    ));
                }
            };
            match form_token(&bytes) {
                Some(t) if matches(&expected, &t) => {
                    inner
                        .call(Request::from_parts(parts, Body::from(bytes)))
                        .await
                }
                _ => Ok(plain(StatusCode::FORBIDDEN, REJECTED)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_field_is_found_and_decoded() {
        assert_eq!(
            form_token(b"a=1&csrf_token=ab%2Dc&b=2"),
            Some(b"ab-c".to_vec())
        );
        assert_eq!(form_token(b"a=1"), None);
        assert_eq!(form_token(b"csrf_token"), Some(Vec::new()));
        assert_eq!(form_token(b"csrf_token=%"), Some(b"%".to_vec()));
        assert_eq!(form_token(b"csrf_token=%4"), Some(b"%4".to_vec()));
        assert!(matches("abc", b"abc"));
        assert!(!matches("abc", b"abd"));
        assert!(!matches("abc", b"ab"));
    }
}
