//! Forwarding one request to one server: header rewriting, bounded request
//! bodies (the connections to servers are in [`crate::upstream`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

/// Any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of everything the proxy sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
/// A small local response (errors, admin).
pub fn local(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A body from bytes.
pub fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Methods that may be resent (RFC 9110 idempotent methods).
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers: those named in `Connection`, the fixed list,
/// and every `Proxy-*` header.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for n in proxy {
        h.remove(n);
    }
}

/// Facts about the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// Client address (from PROXY protocol when enabled).
    pub addr: SocketAddr,
    /// `true` on a TLS listener.
    pub tls: bool,
}

fn forwarded_node(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("\"[{}]\"", a.ip()),
    }
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `Forwarded`
/// (appended, RFC 7239) and `Via` (appended).
pub fn add_forwarding(
    h: &mut HeaderMap,
    client: &ClientInfo,
    version: Version,
    host: Option<&str>,
) {
    let ip = client.addr.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let proto = if client.tls { "https" } else { "http" };
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let mut fwd = format!("for={};proto={proto}", forwarded_node(&client.addr));
    if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        fwd.push_str(";host=\"");
        fwd.push_str(host);
        fwd.push('"');
    }
    append_list(h, header::FORWARDED, &fwd);
    let via = match version {
        Version::HTTP_2 => "2 remora",
        Version::HTTP_10 => "1.0 remora",
        _ => "1.1 remora",
    };
    append_list(h, header::VIA, via);
}

/// Appends `item` to a comma-separated list header.
pub fn append_list(h: &mut HeaderMap, name: HeaderName, item: &str) {
    let joined = match h.get(&name).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {item}"),
        _ => item.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(name, v);
    }
}

/// The authority the client asked for (`Host`, or the h2 `:authority`).
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// The URI to send to a server: the client's path and query, in origin
/// form (`None` for a target that is not a path, such as `*`).
pub fn upstream_uri(uri: &Uri) -> Option<Uri> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Some(Uri::from(pq.clone())),
        Some(_) => None,
        None => Some(Uri::from_static("/")),
    }
}

/// Approximate size of the request header section, in bytes.
pub fn header_bytes(h: &HeaderMap, uri: &Uri) -> usize {
    h.iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + 16
}

pin_project_lite::pin_project! {
    /// A request body that fails once it exceeds `limit` bytes and raises a flag.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        exceeded: Arc<AtomicBool>,
    }
}

impl LimitedBody {
    /// Wraps `inner`; `exceeded` becomes `true` if more than `limit` bytes arrive.
    pub fn new(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            exceeded,
        }
    }
}

/// The request body was larger than allowed.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes")]
pub struct BodyTooLarge;

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-custom"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("y"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
        let c = ClientInfo {
            addr: "[2001:db8::5]:443".parse().unwrap(),
            tls: true,
        };
        add_forwarding(&mut h, &c, Version::HTTP_2, Some("example.test"));
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=\"[2001:db8::5]\";proto=https;host=\"example.test\""
        );
        assert_eq!(h["via"], "2 remora");
    }

    #[test]
    fn uri_and_idempotence() {
        let u: Uri = "/a/b?c=1".parse().unwrap();
        assert_eq!(upstream_uri(&u).unwrap().to_string(), "/a/b?c=1");
        let abs: Uri = "http://example.test:8080/x?y".parse().unwrap();
        assert_eq!(upstream_uri(&abs).unwrap().to_string(), "/x?y");
        let star: Uri = "*".parse().unwrap();
        assert!(upstream_uri(&star).is_none());
        assert!(idempotent(&Method::GET));
        assert!(!idempotent(&Method::POST));
    }
}
