//! The request context seen by extensions and the [`SecurityPolicy`].

use std::net::SocketAddr;

use http::{Extensions, HeaderMap};

use crate::message::Message;

/// What the server knows of the HTTP request (or WebSocket upgrade request)
/// that carried a message: headers (cookies included), the request's
/// extensions (where a session layer puts the session) and the peer address.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Request headers.
    pub headers: HeaderMap,
    /// Request extensions, as left by the layers in front of Bayeux.
    pub extensions: Extensions,
    /// Peer address, when the server was started with connect info.
    pub remote: Option<SocketAddr>,
}

impl RequestContext {
    /// Builds a context from request parts. Header values are copied, not
    /// shared: the server's values point into the connection's read buffer,
    /// which a context kept during a held connect would otherwise keep alive.
    pub fn from_parts(parts: &http::request::Parts) -> Self {
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if let Ok(mut v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                v.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), v);
            }
        }
        RequestContext {
            headers,
            extensions: parts.extensions.clone(),
            remote: parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        }
    }

    /// The value of cookie `name`, if the request carries it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        cookie_value(&self.headers, name)
    }
}

/// Finds cookie `name` in the `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// Decides who may handshake, subscribe and publish. Refusals are answered
/// with a `403::...` error. The default methods allow everything.
pub trait SecurityPolicy: Send + Sync + 'static {
    /// May this handshake create a Bayeux client?
    fn can_handshake(&self, _ctx: &RequestContext, _message: &Message) -> bool {
        true
    }
    /// May `client_id` subscribe to `pattern`?
    fn can_subscribe(&self, _ctx: &RequestContext, _client_id: &str, _pattern: &str) -> bool {
        true
    }
    /// May `client_id` publish `message` (on a broadcast or service channel)?
    fn can_publish(&self, _ctx: &RequestContext, _client_id: &str, _message: &Message) -> bool {
        true
    }
}

/// The default policy: everything is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl SecurityPolicy for AllowAll {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; BAYEUX_BROWSER=xyz".parse().unwrap(),
        );
        h.append(http::header::COOKIE, "b=\"2\"".parse().unwrap());
        assert_eq!(cookie_value(&h, "BAYEUX_BROWSER"), Some("xyz"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
