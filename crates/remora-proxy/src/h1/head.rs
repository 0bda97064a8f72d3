//! Request heads from clients (RFC 9112 sections 2 to 7): the request line
//! parsed into an [`http::Request`], the field lines kept as slices of the
//! buffer the head was read into ([`RequestLines`]), and how its body is
//! delimited.
//!
//! A pure function over a byte buffer, so that it can be fuzzed: the I/O is
//! in [`super`].

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::fields::RequestLines;
use crate::upstream::wire::{Fields, MAX_HEADERS};

/// How a request body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`, or a
    /// length of 0.
    Empty,
    /// Exactly this many bytes (more than 0).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target and version, without fields (they are in
    /// `fields`), and a body of `()`: the connection attaches the real one.
    pub request: Request<()>,
    /// The field lines as they came.
    pub fields: RequestLines,
    /// How its body is delimited.
    pub body: BodyFraming,
    /// Whether the client lets the connection carry another request
    /// after this one (HTTP/1.1 without `Connection: close`, or HTTP/1.0
    /// with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body: the
    /// client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a request head was refused. Each maps to the status the client is
/// answered with ([`HeadError::status`]) before the connection closes.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than `max_header_bytes`.
    #[error("request header section larger than {0} bytes")]
    TooLarge(usize),
    /// More header fields than Remora reads (100).
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyFields,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    Version,
    /// The request line or a field line does not parse.
    #[error("malformed request head")]
    Malformed(#[source] httparse::Error),
    /// The method is not a token.
    #[error("invalid method")]
    Method,
    /// The request target is not a URI reference HTTP allows.
    #[error("invalid request target")]
    Target,
    /// A field name or value HTTP does not allow.
    #[error("invalid header field")]
    Field,
    /// `Content-Length` is not one non-negative integer.
    #[error("invalid Content-Length")]
    Length,
    /// Both `Transfer-Encoding` and `Content-Length`: the body's end is
    /// ambiguous (the ground of request smuggling), so it is refused.
    #[error("both Transfer-Encoding and Content-Length")]
    Ambiguous,
    /// `Transfer-Encoding` whose last coding is not `chunked`, or any on an
    /// HTTP/1.0 request: the body's end cannot be known.
    #[error("body length cannot be determined from Transfer-Encoding")]
    Unframed,
    /// A transfer coding besides `chunked` (Remora does not decode them).
    #[error("unsupported transfer coding")]
    Coding,
}

impl HeadError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyFields => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::Coding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the request head at the start of `buf` and removes it from
/// `buf` (with the empty lines a client may send before it). `Ok(None)`:
/// not complete yet (read more, unless `buf` already holds `max` bytes:
/// then it is [`HeadError::TooLarge`]).
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max {
                Err(HeadError::TooLarge(max))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if len > max {
        return Err(HeadError::TooLarge(max));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Method)?;
    let mut fields = Fields::default();
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // httparse ends a request's field line at its line break (it
        // refuses obs-fold in requests), so no value should hold one:
        // checked all the same, as the lines go to the server as they are.
        if h.value.contains(&b'\n') {
            return Err(HeadError::Field);
        }
        fields.note(name, h.value).map_err(|_| HeadError::Length)?;
        if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (fields.coding, fields.length) {
        (Some(_), Some(_)) => return Err(HeadError::Ambiguous),
        (Some(_), None) if version == Version::HTTP_10 => return Err(HeadError::Unframed),
        (Some(false), None) => return Err(HeadError::Unframed),
        (Some(true), None) if fields.other_codings => return Err(HeadError::Coding),
        (Some(true), None) => BodyFraming::Chunked,
        (None, Some(0) | None) => BodyFraming::Empty,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = match version {
        Version::HTTP_10 => fields.keep_alive && !fields.close,
        _ => !fields.close,
    };
    // Offsets into the buffer (on the stack), then the head frozen: the
    // target and the values become slices of it, without a copy.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path = req.path.unwrap_or_default().as_bytes();
    let target = (offset(path), offset(path) + path.len());
    // The head is at most `max` bytes (well under 4 GiB): offsets fit.
    let spans: Vec<[u32; 4]> = req
        .headers
        .iter()
        .map(|h| {
            let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
            [n, n + h.name.len(), v, v + h.value.len()]
                .map(|o| u32::try_from(o).unwrap_or(u32::MAX))
        })
        .collect();
    let head = buf.split_to(len).freeze();
    let uri = head
        .get(target.0..target.1)
        .filter(|t| !t.is_empty())
        .and_then(|_| Uri::from_maybe_shared(head.slice(target.0..target.1)).ok())
        .ok_or(HeadError::Target)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    let fields = RequestLines::new(head, spans);
    Ok(Some(RequestHead {
        request,
        fields,
        expect_continue: expect_continue
            && version == Version::HTTP_11
            && body != BodyFraming::Empty,
        body,
        keep_alive,
    }))
}

/// Removes the empty lines (CRLF or LF) a client may send between
/// requests (RFC 9112 section 2.2), so that an idle connection's buffer is
/// empty when nothing else came.
pub fn skip_empty_lines(buf: &mut BytesMut) {
    let n = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    buf.advance(n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::ClientFields;

    fn parse_str(text: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse(&mut buf, 8192)
    }

    fn head(text: &str) -> RequestHead {
        parse_str(text).unwrap().unwrap()
    }

    #[test]
    fn a_head_parses_into_a_request_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            &b"GET /a/b?c=d HTTP/1.1\r\nHost: example.test\r\nX-A: 1\r\nx-a: 2\r\n\r\nNEXT"[..],
        );
        let h = parse(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(&buf[..], b"NEXT");
        let r = &h.request;
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/a/b");
        assert_eq!(r.uri().query(), Some("c=d"));
        assert_eq!(r.version(), Version::HTTP_11);
        assert!(r.headers().is_empty(), "the fields are in the lines");
        let f = ClientFields::Lines(&h.fields);
        assert_eq!(f.get("host"), Some(&b"example.test"[..]));
        let xa: Vec<_> = f.get_all("x-a").collect();
        assert_eq!(xa, [b"1", b"2"]);
        let names: Vec<_> = f.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [&b"Host"[..], b"X-A", b"x-a"],
            "as the client wrote them"
        );
        assert_eq!(h.body, BodyFraming::Empty);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
    }

    #[test]
    fn an_incomplete_head_waits_until_it_reaches_the_limit() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse(&mut buf, 8192).unwrap().is_none());
        assert_eq!(buf.len(), 25, "nothing consumed");
        assert!(matches!(parse(&mut buf, 25), Err(HeadError::TooLarge(25))));
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(matches!(parse(&mut big, 20), Err(HeadError::TooLarge(20))));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let body = |t: &str| parse_str(t).map(|h| h.unwrap().body);
        assert_eq!(
            body("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap(),
            BodyFraming::Length(5)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap(),
            BodyFraming::Empty
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n").unwrap(),
            BodyFraming::Length(5)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap(),
            BodyFraming::Chunked
        );
        let err = |t: &str| body(t).unwrap_err();
        assert!(matches!(
            err("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            HeadError::Length
        ));
        assert!(matches!(
            err("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            HeadError::Length
        ));
        assert!(matches!(
            err("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::Ambiguous
        ));
        assert!(matches!(
            err("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            HeadError::Unframed
        ));
        assert!(matches!(
            err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::Unframed
        ));
        assert!(matches!(
            err("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            HeadError::Coding
        ));
        assert!(matches!(
            err(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            HeadError::Coding
        ));
    }

    #[test]
    fn keep_alive_and_expect_follow_the_version() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let e = head("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(e.expect_continue);
        let no_body = head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(!no_body.expect_continue, "nothing to wait for");
        let old = head("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(!old.expect_continue, "HTTP/1.0 clients do not wait");
    }

    #[test]
    fn bad_heads_get_their_status() {
        let status = |t: &str| parse_str(t).unwrap_err().status();
        assert_eq!(
            status("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status("G(T / HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("GET /\x7f HTTP/1.1\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: br, chunked\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn targets_in_every_form_parse() {
        let abs = head("GET http://example.test/x HTTP/1.1\r\n\r\n");
        assert_eq!(abs.request.uri().host(), Some("example.test"));
        assert_eq!(abs.request.uri().path(), "/x");
        let star = head("OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(star.request.uri(), "*");
    }

    #[test]
    fn empty_lines_between_requests_are_skipped() {
        let mut buf = BytesMut::from(&b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..]);
        skip_empty_lines(&mut buf);
        assert!(buf.starts_with(b"GET"));
        let mut only = BytesMut::from(&b"\r\n"[..]);
        skip_empty_lines(&mut only);
        assert!(only.is_empty());
    }
}
