//! Forwarding one request to one server: header rewriting, bounded request
//! bodies (the connections to servers are in [`crate::upstream`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::fields::ClientFields;
use crate::upstream::wire::{trim, write_field};
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

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

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `name` is hop-by-hop by itself (whatever `Connection` lists):
/// the fixed list of RFC 9110 section 7.6.1 and its predecessors, and every
/// `Proxy-*` header.
fn hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_name(name.as_str().as_bytes())
}

/// Whether a field name as it came off the wire (any case) is hop-by-hop
/// by itself: the fixed list of RFC 9110 section 7.6.1 and its
/// predecessors, and every `Proxy-*` field.
pub fn hop_by_hop_name(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|f| name.eq_ignore_ascii_case(f))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Removes hop-by-hop headers: those named in `Connection`, the fixed list,
/// and every `Proxy-*` header. One pass over the names finds them; a
/// header section without any (most requests) is left untouched.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        if hop_by_hop(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    for v in h.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',') {
            let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) else {
                continue;
            };
            if !hop_by_hop(&name) && h.contains_key(&name) {
                doomed.push(name);
            }
        }
    }
    for name in doomed {
        h.remove(name);
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

/// The forwarding header values of one client connection, built once for
/// all its requests instead of once per request.
#[derive(Debug)]
pub struct Forwarding {
    /// The client's IP, as `X-Forwarded-For` carries it.
    ip: HeaderValue,
    /// `http` or `https`.
    proto: &'static str,
    /// This hop's `Forwarded` element without `host`: `for=...;proto=...`.
    node: HeaderValue,
    /// The last element built with a `host`, and that host.
    with_host: parking_lot::Mutex<Option<(Box<str>, HeaderValue)>>,
}

impl Forwarding {
    /// The values for requests from `client`.
    pub fn new(client: &ClientInfo) -> Self {
        let ip = client.addr.ip().to_string();
        let proto = if client.tls { "https" } else { "http" };
        let node = match client.addr {
            SocketAddr::V4(_) => format!("for={ip};proto={proto}"),
            SocketAddr::V6(_) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        Forwarding {
            ip: header_value(ip),
            proto,
            node: header_value(node),
            with_host: parking_lot::Mutex::new(None),
        }
    }

    /// This hop's `Forwarded` element for a request to `host`.
    fn element(&self, host: Option<&str>) -> HeaderValue {
        let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        else {
            return self.node.clone();
        };
        let mut last = self.with_host.lock();
        if let Some((h, v)) = &*last
            && **h == *host
        {
            return v.clone();
        }
        let node = self.node.to_str().unwrap_or_default();
        let v = header_value(format!("{node};host=\"{host}\""));
        *last = Some((host.into(), v.clone()));
        v
    }
}

/// A header value from text known to be valid (ASCII, no control bytes);
/// empty should it not be.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(s)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `Forwarded`
/// (appended, RFC 7239) and `Via` (appended).
pub fn add_forwarding(h: &mut HeaderMap, fwd: &Forwarding, version: Version, host: Option<&str>) {
    append_list(h, X_FORWARDED_FOR, fwd.ip.clone());
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    append_list(h, header::FORWARDED, fwd.element(host));
    append_list(h, header::VIA, HeaderValue::from_static(via(version)));
}

/// Writes a request's header fields as they go to a server, in HTTP/1.1
/// wire form, without changing `h`: the fields [`strip_hop_by_hop`] and
/// [`add_forwarding`] would leave (the forwarding ones written last, each
/// as one line), then `Host` when the request has none (`host`, the
/// authority the client asked for, else `default_host`). `Content-Length`
/// and `Transfer-Encoding` are left out: the body is framed by the caller.
/// Names go out as the client wrote them. The `Cookie` fields go out as
/// one (RFC 9113 section 8.2.3: an HTTP/2 client may split its cookies
/// over several fields, and RFC 6265 section 5.4 allows one to a server),
/// without the cookie named `hidden_cookie`, and not at all when no cookie
/// is left.
pub fn write_request_fields(
    out: &mut Vec<u8>,
    h: ClientFields<'_>,
    fwd: &Forwarding,
    version: Version,
    host: Option<&str>,
    default_host: &str,
    hidden_cookie: Option<&str>,
) {
    // Names `Connection` makes hop-by-hop for this request (rare).
    let mut nominated: Vec<&[u8]> = Vec::new();
    for v in h.get_all("connection").filter(|v| visible(v)) {
        for token in v.split(|b| *b == b',') {
            let token = trim(token);
            if !token.is_empty() && !hop_by_hop_name(token) {
                nominated.push(token);
            }
        }
    }
    let dropped = |name: &[u8]| {
        hop_by_hop_name(name) || nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
    };
    let mut has_host = false;
    let mut cookie_name = None;
    for (name, value) in h.iter() {
        if dropped(name) || replaced_on_the_way(name) {
            continue;
        }
        has_host |= name.eq_ignore_ascii_case(b"host");
        if name.eq_ignore_ascii_case(b"cookie") {
            cookie_name.get_or_insert(name);
            continue;
        }
        write_field(out, name, value);
    }
    if let Some(name) = cookie_name {
        write_cookies(out, name, h.get_all("cookie"), hidden_cookie);
    }
    let list = |out: &mut Vec<u8>, name: &'static str, item: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        if !dropped(name.as_bytes()) {
            for v in h.get_all(name).filter(|v| visible(v)) {
                let v = trim(v);
                if !v.is_empty() {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
        }
        out.extend_from_slice(item);
        out.extend_from_slice(b"\r\n");
    };
    list(out, "x-forwarded-for", fwd.ip.as_bytes());
    write_field(out, b"x-forwarded-proto", fwd.proto.as_bytes());
    list(out, "forwarded", fwd.element(host).as_bytes());
    list(out, "via", via(version).as_bytes());
    if !has_host {
        let host = host
            .filter(|h| HeaderValue::from_str(h).is_ok())
            .unwrap_or(default_host);
        write_field(out, b"host", host.as_bytes());
    }
}

/// The pairs of a request's `Cookie` field `value` not named `name`, each
/// trimmed (RFC 6265 section 5.4: `name=value` pairs joined by `"; "`).
fn cookies_without<'v>(value: &'v [u8], name: &'v str) -> impl Iterator<Item = &'v [u8]> + 'v {
    value.split(|b| *b == b';').map(trim).filter(move |pair| {
        let n = pair
            .iter()
            .position(|b| *b == b'=')
            .map_or(*pair, |i| trim(&pair[..i]));
        !pair.is_empty() && n != name.as_bytes()
    })
}

/// Whether `value` may hold the cookie `name` (a quick scan before
/// [`cookies_without`] rewrites it).
fn may_hold(value: &[u8], name: &str) -> bool {
    let name = name.as_bytes();
    !name.is_empty() && value.windows(name.len()).any(|w| w == name)
}

/// Writes the cookies of every `Cookie` field `values` as one field
/// `name` (pairs joined by `"; "`), without the cookie `hidden`; nothing
/// when no cookie is left.
fn write_cookies<'a>(
    out: &mut Vec<u8>,
    name: &[u8],
    values: impl Iterator<Item = &'a [u8]>,
    hidden: Option<&str>,
) {
    let start = out.len();
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if push_cookies(out, values, hidden) {
        out.extend_from_slice(b"\r\n");
    } else {
        out.truncate(start);
    }
}

/// Appends the cookies of `values`, joined by `"; "`, without the cookie
/// `hidden`; `false`: there was none to append.
fn push_cookies<'a>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'a [u8]>,
    hidden: Option<&str>,
) -> bool {
    let first = out.len();
    let push = |out: &mut Vec<u8>, cookies: &[u8]| {
        if out.len() > first {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(cookies);
    };
    for value in values {
        match hidden {
            Some(hidden) if may_hold(value, hidden) => {
                for pair in cookies_without(value, hidden) {
                    push(out, pair);
                }
            }
            _ => {
                let value = trim(value);
                if !value.is_empty() {
                    push(out, value);
                }
            }
        }
    }
    out.len() > first
}

/// The map form of what [`write_request_fields`] does with the `Cookie`
/// fields of `h`: one field, without the cookie `hidden`.
pub fn join_cookies(h: &mut HeaderMap, hidden: Option<&str>) {
    let values = || h.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes);
    let holds_hidden = hidden.is_some_and(|name| values().any(|v| may_hold(v, name)));
    if values().count() <= 1 && !holds_hidden {
        return;
    }
    let mut joined = Vec::new();
    let any = push_cookies(&mut joined, values(), hidden);
    h.remove(header::COOKIE);
    if let Some(v) = any.then(|| HeaderValue::from_bytes(&joined).ok()).flatten() {
        h.insert(header::COOKIE, v);
    }
}

/// Fields a request never keeps on its way to a server: the framing one
/// (the body is framed anew) and the forwarding ones Remora writes itself,
/// merged with the client's.
fn replaced_on_the_way(name: &[u8]) -> bool {
    const REPLACED: [&[u8]; 5] = [
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"forwarded",
        b"via",
    ];
    REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// Whether a field value is only visible ASCII, spaces and tabs (what
/// `HeaderValue::to_str` accepts): not obs-text.
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2 remora",
        Version::HTTP_10 => "1.0 remora",
        _ => "1.1 remora",
    }
}

/// The request target to send to a server, in origin form: the client's
/// path and query (`None` for a target that is not a path, such as `*`).
pub fn origin_target(uri: &Uri) -> Option<&str> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Some(pq.as_str()),
        Some(_) => None,
        None => Some("/"),
    }
}

/// Appends `item` to a comma-separated list header: the header's values
/// (all of them, in order; blank or non-text ones dropped) joined with
/// `item` into one, or `item` alone when there are none.
pub fn append_list(h: &mut HeaderMap, name: HeaderName, item: HeaderValue) {
    match h.entry(name) {
        header::Entry::Vacant(e) => {
            e.insert(item);
        }
        header::Entry::Occupied(mut e) => {
            let mut joined = String::new();
            for v in e.iter() {
                let Ok(v) = v.to_str() else { continue };
                let v = v.trim();
                if !v.is_empty() {
                    joined.push_str(v);
                    joined.push_str(", ");
                }
            }
            if joined.is_empty() {
                e.insert(item);
                return;
            }
            joined.push_str(item.to_str().unwrap_or_default());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
                e.insert(v);
            }
        }
    }
}

/// The authority the client asked for (`Host`, or the h2 `:authority`).
pub fn request_host(fields: ClientFields<'_>, uri: &Uri) -> Option<String> {
    fields
        .get("host")
        .filter(|v| visible(v))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
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
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        exceeded: Arc<AtomicBool>,
    }
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` becomes `true` if more than `limit` bytes arrive.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
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

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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
        add_forwarding(
            &mut h,
            &Forwarding::new(&c),
            Version::HTTP_2,
            Some("example.test"),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=\"[2001:db8::5]\";proto=https;host=\"example.test\""
        );
        assert_eq!(h["via"], "2 remora");
    }

    #[test]
    fn hop_by_hop_listed_only_in_connection_is_removed() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static("X-Trace, close"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("y"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
        // Nothing hop-by-hop: nothing changes.
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("x-connection", HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn list_headers_keep_every_earlier_value() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(" "));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("192.0.2.2, 192.0.2.3"),
        );
        append_list(
            &mut h,
            X_FORWARDED_FOR,
            HeaderValue::from_static("192.0.2.4"),
        );
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4"]);
        let mut h = HeaderMap::new();
        h.insert("via", HeaderValue::from_static(""));
        append_list(&mut h, header::VIA, HeaderValue::from_static("1.1 remora"));
        assert_eq!(h["via"], "1.1 remora");
    }

    #[test]
    fn forwarded_element_follows_the_host_of_each_request() {
        let c = ClientInfo {
            addr: "192.0.2.7:5000".parse().unwrap(),
            tls: false,
        };
        let f = Forwarding::new(&c);
        let mut seen = Vec::new();
        for host in [
            Some("a.test"),
            Some("a.test"),
            Some("b.test"),
            None,
            Some("bad\"host"),
        ] {
            let mut h = HeaderMap::new();
            add_forwarding(&mut h, &f, Version::HTTP_11, host);
            assert_eq!(h["x-forwarded-for"], "192.0.2.7");
            assert_eq!(h["x-forwarded-proto"], "http");
            assert_eq!(h["via"], "1.1 remora");
            seen.push(h["forwarded"].to_str().unwrap().to_owned());
        }
        assert_eq!(
            seen,
            [
                "for=192.0.2.7;proto=http;host=\"a.test\"",
                "for=192.0.2.7;proto=http;host=\"a.test\"",
                "for=192.0.2.7;proto=http;host=\"b.test\"",
                "for=192.0.2.7;proto=http",
                "for=192.0.2.7;proto=http",
            ]
        );
    }

    /// The wire form says what the map-based path says: hop-by-hop fields
    /// (and those `Connection` names) gone, forwarding fields merged.
    #[test]
    fn request_fields_on_the_wire_match_the_map_rules() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.test"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(" "));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("via", HeaderValue::from_static("1.0 edge"));
        h.insert("cookie", HeaderValue::from_static("a=1"));
        let c = ClientInfo {
            addr: "203.0.113.7:5000".parse().unwrap(),
            tls: false,
        };
        let fwd = Forwarding::new(&c);
        let wire = |fields: ClientFields<'_>| {
            let mut out = Vec::new();
            let host = Some("shop.test");
            write_request_fields(
                &mut out,
                fields,
                &fwd,
                Version::HTTP_11,
                host,
                "10.0.0.1:80",
                None,
            );
            String::from_utf8(out).unwrap()
        };
        let merged = "x-forwarded-for: 198.51.100.1, 198.51.100.2, 203.0.113.7\r\n\
             x-forwarded-proto: http\r\n\
             forwarded: for=203.0.113.7;proto=http;host=\"shop.test\"\r\n\
             via: 1.0 edge, 1.1 remora\r\n";
        assert_eq!(
            wire(ClientFields::Map(&h)),
            format!("host: shop.test\r\ncookie: a=1\r\n{merged}")
        );
        // The same rules through the map.
        let mut m = h.clone();
        strip_hop_by_hop(&mut m);
        add_forwarding(&mut m, &fwd, Version::HTTP_11, Some("shop.test"));
        assert_eq!(
            m.get("x-forwarded-for").unwrap(),
            "198.51.100.1, 198.51.100.2, 203.0.113.7"
        );
        assert_eq!(m.get("via").unwrap(), "1.0 edge, 1.1 remora");
        assert!(m.get("x-secret").is_none());
        // The same rules over an HTTP/1.1 head's lines, names in any case
        // (and kept as they came); a value of obs-text is not merged.
        let mut head = bytes::BytesMut::from(
            &b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, X-Secret\r\n\
               x-secret: 1\r\nTE: trailers\r\nProxy-Authorization: x\r\nContent-Length: 3\r\n\
               X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For:  \r\n\
               X-Forwarded-For: \xff\r\nx-forwarded-for: 198.51.100.2\r\n\
               X-Forwarded-Proto: gopher\r\nVIA: 1.0 edge\r\nCookie: a=1\r\n\r\n"[..],
        );
        let parsed = crate::h1::head::parse(&mut head, 8192).unwrap().unwrap();
        assert_eq!(
            wire(ClientFields::Lines(&parsed.fields)),
            format!("Host: shop.test\r\nCookie: a=1\r\n{merged}")
        );
        // No Host: the authority asked for, else the server's address.
        let text = h2_wire(&HeaderMap::new(), &fwd);
        assert!(
            text.ends_with("via: 2 remora\r\nhost: 10.0.0.1:80\r\n"),
            "{text}"
        );
    }

    /// What goes to the server for an HTTP/2 request with fields `h` and no
    /// authority.
    fn h2_wire(h: &HeaderMap, fwd: &Forwarding) -> String {
        let mut out = Vec::new();
        write_request_fields(
            &mut out,
            ClientFields::Map(h),
            fwd,
            Version::HTTP_2,
            None,
            "10.0.0.1:80",
            None,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_hidden_cookie_stays_with_remora() {
        let fwd = Forwarding::new(&ClientInfo {
            addr: "203.0.113.7:5000".parse().unwrap(),
            tls: false,
        });
        let cookies = |head: &[u8]| {
            let mut buf = bytes::BytesMut::from(head);
            let parsed = crate::h1::head::parse(&mut buf, 8192).unwrap().unwrap();
            let mut out = Vec::new();
            write_request_fields(
                &mut out,
                ClientFields::Lines(&parsed.fields),
                &fwd,
                Version::HTTP_11,
                None,
                "10.0.0.1:80",
                Some("AFF"),
            );
            let text = String::from_utf8(out).unwrap();
            text.lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("cookie:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // Alone: the field goes; among others: only the pair goes, names
        // that merely contain it stay.
        assert!(cookies(b"GET / HTTP/1.1\r\nCookie: AFF=sealed\r\n\r\n").is_empty());
        assert_eq!(
            cookies(b"GET / HTTP/1.1\r\nCookie: a=1;AFF=x ; AFF2=y; xAFF=z;b\r\n\r\n"),
            ["Cookie: a=1; AFF2=y; xAFF=z; b"]
        );
        assert_eq!(
            cookies(b"GET / HTTP/1.1\r\ncookie: a=1\r\ncookie: AFF=x\r\n\r\n"),
            ["cookie: a=1"]
        );
        // A field without it goes out as it came.
        assert_eq!(
            cookies(b"GET / HTTP/1.1\r\nCookie: a=1;  b=2\r\n\r\n"),
            ["Cookie: a=1;  b=2"]
        );
        // The map form does the same.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("AFF=x"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1; AFF=y; b=2"));
        join_cookies(&mut h, Some("AFF"));
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("AFF=x"));
        join_cookies(&mut h, Some("AFF"));
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn cookie_fields_go_to_the_server_as_one() {
        // An HTTP/2 client's cookies split over several fields
        // (RFC 9113 section 8.2.3).
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::HOST, HeaderValue::from_static("shop.test"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        let fwd = Forwarding::new(&ClientInfo {
            addr: "203.0.113.7:5000".parse().unwrap(),
            tls: true,
        });
        let text = h2_wire(&h, &fwd);
        let cookies: Vec<_> = text.lines().filter(|l| l.starts_with("cookie")).collect();
        assert_eq!(cookies, ["cookie: a=1; b=2; c=3"], "{text}");
        join_cookies(&mut h, None);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2; c=3"]);
        // One field without the hidden cookie is left as it is.
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1;  b=2"));
        join_cookies(&mut one, Some("AFF"));
        assert_eq!(one.get(header::COOKIE).unwrap(), "a=1;  b=2");
    }

    #[test]
    fn uri_and_idempotence() {
        let u: Uri = "/a/b?c=1".parse().unwrap();
        assert_eq!(origin_target(&u), Some("/a/b?c=1"));
        let abs: Uri = "http://example.test:8080/x?y".parse().unwrap();
        assert_eq!(origin_target(&abs), Some("/x?y"));
        let star: Uri = "*".parse().unwrap();
        assert!(origin_target(&star).is_none());
        assert!(idempotent(&Method::GET));
        assert!(!idempotent(&Method::POST));
    }
}
