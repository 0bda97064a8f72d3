//! HTTP/1.1 on the wire to servers: the request head Remora writes, the
//! response head it parses (RFC 9112), and how the response body is
//! delimited, including the chunked coding.
//!
//! Pure functions over byte buffers: the I/O is in [`super`] and its
//! response body, [`super::UpstreamBody`].

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Most header fields in a response head (and in a chunked trailer section).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with what a server sent.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The response head is larger than `max_response_header_bytes`.
    #[error("response header section larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The response head does not parse.
    #[error("malformed response head")]
    Head(#[source] httparse::Error),
    /// A header field name or value that HTTP does not allow.
    #[error("invalid header field in response")]
    Field,
    /// `Content-Length` is not one non-negative integer.
    #[error("invalid Content-Length in response")]
    Length,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
    /// A chunk-size line that does not parse or is too long.
    #[error("malformed chunk size line")]
    ChunkSize,
    /// Something other than CRLF after a chunk's data.
    #[error("missing CRLF after chunk data")]
    ChunkEnd,
    /// A trailer section that does not parse or is too large.
    #[error("malformed trailer section")]
    Trailers,
}

/// How a response body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` request, `204`, `304`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// End-to-end header fields, as they came off the wire.
    pub fields: RawFields,
    /// How the body ends.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// A response's end-to-end header fields as the server wrote them, ready
/// to be written on: each one line `name: value` CRLF, in order, names as
/// the server spelled them. The hop-by-hop fields (the fixed list, every
/// `Proxy-*` field and those `Connection` names) are left out, and so is
/// `Content-Length`, whose value is [`RawFields::length`].
///
/// A client on HTTP/1.1 gets these lines as they are, without a
/// [`HeaderMap`] built and taken apart again; [`RawFields::to_header_map`]
/// builds one for the others (HTTP/2).
#[derive(Debug, Clone, Default)]
pub struct RawFields {
    lines: Vec<u8>,
    count: usize,
    length: Option<u64>,
    dated: bool,
}

impl RawFields {
    /// The field lines, each ending in CRLF.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The response's `Content-Length`, when it had one and no
    /// `Transfer-Encoding` (which overrides it).
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether it has a `Date`.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// Each field's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines
            .split(|b| *b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let (name, value) = line.split_at(colon);
                Some((name, value.get(2..).unwrap_or_default()))
            })
    }

    /// The values of the fields named `name` (any case).
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The fields as a map, `Content-Length` included.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.count + 1);
        for (name, value) in self.iter() {
            // Both were checked when the head was parsed.
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        if let Some(n) = self.length {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        map
    }

    /// Adds one field (from a head being parsed, or for tests).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        write_field(&mut self.lines, name, value);
        self.count += 1;
        self.dated |= name.eq_ignore_ascii_case(b"date");
    }
}

/// Whether `v`, a value httparse accepted, may be forwarded as it is.
/// httparse lets through only tab, visible ASCII, space and obs-text, and
/// line folding (obsolete, RFC 9112 section 5.2), which leaves CRLF inside
/// the value: such a value is refused, as [`HeaderValue`] would refuse it.
fn valid_value(v: &[u8]) -> bool {
    !v.contains(&b'\n')
}

/// Writes the request head: `METHOD TARGET HTTP/1.1`, the header fields
/// `fields` writes (which must leave out `Content-Length` and
/// `Transfer-Encoding`: the framing is this function's), then the framing
/// field for a body of `length` bytes (`None`: chunked; `Some(0)` writes
/// `Content-Length: 0` only for methods that expect a body, or when the
/// client sent a length, `client_length`).
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    fields: impl FnOnce(&mut Vec<u8>),
    length: Option<u64>,
    client_length: bool,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out);
    match length {
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(0)
            if !client_length && !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
        }
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one header field line.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes every field of `headers` but `Content-Length` and
/// `Transfer-Encoding`, as they are.
pub fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Writes `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the header of one chunk of `len` bytes (`len` in hex, CRLF).
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buf` and removes it from
/// `buf`. `Ok(None)`: not complete yet (read more, unless `buf` already
/// holds `max` bytes: then it is [`WireError::HeadTooLarge`]). Interim
/// (`1xx`) responses are removed and skipped; `101` is an error (requests
/// that ask to switch protocols, WebSocket, do not come this way).
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    max: usize,
) -> Result<Option<Head>, WireError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .allow_obsolete_multiline_headers_in_responses(true)
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max {
                    Err(WireError::HeadTooLarge(max))
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(WireError::Head(e)),
        };
        if len > max {
            return Err(WireError::HeadTooLarge(max));
        }
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Head(httparse::Error::Status))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(WireError::UnexpectedSwitch);
            }
            buf.advance(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // What the framing and connection fields say, from the raw fields.
        let mut fields = Fields::default();
        for h in resp.headers.iter() {
            fields.note(h.name.as_bytes(), h.value)?;
        }
        let (framing, keep_alive) = fields.framing(method, status, version);
        // The end-to-end fields, copied out as lines. Hop-by-hop fields
        // stay behind (RFC 9110 section 7.6.1), and so does
        // `Content-Length` (its value is kept apart).
        let mut fields_out = RawFields {
            lines: Vec::with_capacity(len),
            count: 0,
            length: if fields.coding.is_some() {
                None
            } else {
                fields.length
            },
            dated: false,
        };
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if fields.hop_by_hop(name) || name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            if !valid_value(h.value) || fields_out.count >= MAX_HEADERS {
                return Err(WireError::Field);
            }
            fields_out.push(name, h.value);
        }
        buf.advance(len);
        return Ok(Some(Head {
            status,
            version,
            fields: fields_out,
            framing,
            keep_alive,
        }));
    }
}

/// What a message's framing and connection fields say (a server's
/// response here, a client's request in [`crate::h1`]).
#[derive(Default)]
pub(crate) struct Fields<'a> {
    /// `Transfer-Encoding` present: whether its last coding is `chunked`.
    pub(crate) coding: Option<bool>,
    /// `Transfer-Encoding` names a coding besides one final `chunked`
    /// (or comes in more than one field line).
    pub(crate) other_codings: bool,
    /// The `Content-Length` (every value the same).
    pub(crate) length: Option<u64>,
    /// `Connection: close`.
    pub(crate) close: bool,
    /// `Connection: keep-alive`.
    pub(crate) keep_alive: bool,
    /// Other names `Connection` lists: hop-by-hop for this message.
    nominated: Vec<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Takes note of one field line.
    pub(crate) fn note(&mut self, name: &[u8], value: &'a [u8]) -> Result<(), WireError> {
        let tokens = || {
            value
                .split(|b| *b == b',')
                .map(trim)
                .filter(|t| !t.is_empty())
        };
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.other_codings |= self.coding.is_some() || tokens().count() > 1;
            if let Some(last) = tokens().next_back() {
                self.coding = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else {
                self.coding.get_or_insert(false);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|b| *b == b',') {
                let n = parse_length(trim(part)).ok_or(WireError::Length)?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(WireError::Length);
                }
                self.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens() {
                if t.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else {
                    self.nominated.push(t);
                }
            }
        }
        Ok(())
    }

    /// Whether the field `name` is hop-by-hop in this message: by itself,
    /// or because `Connection` names it.
    fn hop_by_hop(&self, name: &[u8]) -> bool {
        crate::forward::hop_by_hop_name(name)
            || self.nominated.iter().any(|n| name.eq_ignore_ascii_case(n))
    }

    /// The body framing of a final response, and whether the connection
    /// may carry another request. With both `Transfer-Encoding` and
    /// `Content-Length`, the coding wins and the connection is not reused
    /// (RFC 9112 section 6.3).
    fn framing(&self, method: &Method, status: StatusCode, version: Version) -> (Framing, bool) {
        let reusable = match version {
            Version::HTTP_10 => self.keep_alive,
            _ => !self.close,
        };
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return (Framing::Empty, reusable);
        }
        match (self.coding, self.length) {
            (Some(true), length) => (Framing::Chunked, reusable && length.is_none()),
            (Some(false), _) | (None, None) => (Framing::Close, false),
            (None, Some(n)) => (Framing::Length(n), reusable),
        }
    }
}

/// `b` without leading and trailing ASCII whitespace.
pub(crate) fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    Some(n)
}

/// Decodes the chunked transfer coding incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes to go.
    Data(u64),
    /// After a chunk's data: expecting CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// Complete.
    Done,
}

/// One step of chunked decoding.
#[derive(Debug)]
pub enum Decoded {
    /// Body data.
    Data(Bytes),
    /// The trailer section (the body is complete after it).
    Trailers(HeaderMap),
    /// The body is complete (no trailers).
    End,
    /// More bytes are needed.
    NeedMore,
}

impl Chunked {
    /// Decodes what `buf` holds, removing what it consumed; `max_trailers`
    /// bounds the trailer section.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, WireError> {
        loop {
            match *self {
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                        return Ok(Decoded::NeedMore);
                    }
                    _ => return Err(WireError::ChunkSize),
                },
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::ChunkEnd);
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunked::Done;
                        return Ok(Decoded::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| WireError::Trailers)?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| WireError::Trailers)?;
                                trailers.append(name, value);
                            }
                            buf.advance(used);
                            *self = Chunked::Done;
                            return Ok(Decoded::Trailers(trailers));
                        }
                        Ok(httparse::Status::Partial) if buf.len() < max_trailers => {
                            return Ok(Decoded::NeedMore);
                        }
                        _ => return Err(WireError::Trailers),
                    }
                }
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: &Method) -> Result<Option<Head>, WireError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, method, 1024)
    }

    #[test]
    fn request_head_has_framing_and_no_client_framing_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.test"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::POST,
            "/p?q=1",
            |o| write_fields(o, &h),
            Some(12),
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: example.test\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 12\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&mut out, &Method::PUT, "/", |_| {}, None, false);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("transfer-encoding: chunked\r\n\r\n")
        );
        // A GET without a body says nothing about one (unless its client
        // said 0); a POST says 0.
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", |_| {}, Some(0), false);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", |_| {}, Some(0), true);
        assert_eq!(out, b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/", |_| {}, Some(0), false);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn chunk_headers_are_hex() {
        for (n, s) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (255, "ff\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_header(&mut out, n);
            assert_eq!(out, s.as_bytes());
        }
        let mut out = Vec::new();
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn a_response_head_parses_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"[..],
        );
        let h = parse_head(&mut buf, &Method::GET, 1024).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.fields.get_all(b"set-cookie").count(), 2);
        assert_eq!(h.fields.length(), Some(5));
        let map = h.fields.to_header_map();
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        assert_eq!(map["content-length"], "5");
        assert_eq!(h.fields.lines(), b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n");
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn partial_heads_wait_and_big_ones_fail() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
                .unwrap()
                .is_none()
        );
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(2000));
        assert!(matches!(
            head(&big, &Method::GET),
            Err(WireError::HeadTooLarge(1024))
        ));
        assert!(matches!(
            head("HTTP/1.1 abc\r\n\r\n", &Method::GET),
            Err(WireError::Head(_))
        ));
        assert!(matches!(
            head("garbage\r\n\r\n", &Method::GET),
            Err(WireError::Head(_))
        ));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |t: &str, m: &Method| head(t, m).unwrap().map(|h| (h.framing, h.keep_alive));
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Chunked, false))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Close, false))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", &Method::GET),
            Some((Framing::Close, false))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                &Method::HEAD
            ),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\n\r\n", &Method::GET),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", &Method::GET),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Length(3), true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Length(3), false))
        );
        assert_eq!(
            f("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", &Method::GET),
            Some((Framing::Length(3), false))
        );
        assert_eq!(
            f(
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n",
                &Method::GET
            ),
            Some((Framing::Length(3), true))
        );
        for bad in ["3, 4", "-1", "", "1x", "99999999999999999999"] {
            let t = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(head(&t, &Method::GET), Err(WireError::Length)),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_httparse_passes_are_forwardable_or_refused() {
        // Every byte in a value: what passes is what a `HeaderValue` takes.
        for b in 0..=255u8 {
            let mut text = b"HTTP/1.1 200 OK\r\nX-A: a".to_vec();
            text.push(b);
            text.extend_from_slice(b"b\r\nContent-Length: 0\r\n\r\n");
            let mut buf = BytesMut::from(&text[..]);
            let ok = matches!(parse_head(&mut buf, &Method::GET, 1024), Ok(Some(_)));
            assert_eq!(
                ok,
                HeaderValue::from_bytes(&[b'a', b, b'b']).is_ok(),
                "byte {b:#x}"
            );
        }
        // Line folding is refused, not forwarded.
        let folded = "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(head(folded, &Method::GET), Err(WireError::Field)));
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nProxy-Thing: 2\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nTrailer: x-sum\r\nX-Kept: 3\r\nSet-Cookie: a=1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&[u8]> = h.fields.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"X-Kept"[..], b"Set-Cookie"]);
        assert_eq!(h.fields.length(), None, "Transfer-Encoding overrides it");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive, "both framings: not reused");
    }

    #[test]
    fn interim_responses_are_skipped_and_101_is_refused() {
        let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.fields.get_all(b"link").count(), 0);
        assert!(matches!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET),
            Err(WireError::UnexpectedSwitch)
        ));
        // Only the interim response so far: wait for the final one.
        assert!(
            head("HTTP/1.1 100 Continue\r\n\r\n", &Method::POST)
                .unwrap()
                .is_none()
        );
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), WireError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match state.decode(&mut buf, 1024)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t))),
                Decoded::End => return Ok((body, None)),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(WireError::ChunkEnd);
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 9\r\n\r\n";
        for step in 1..input.len() {
            let (body, trailers) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(trailers.unwrap().get("x-sum").unwrap(), "9");
        }
        let (body, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 2).unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn bad_chunked_bodies_fail() {
        assert!(matches!(
            decode_all(b"zz\r\n", 64),
            Err(WireError::ChunkSize)
        ));
        assert!(matches!(
            decode_all(b"3\r\nabcX\r\n", 64),
            Err(WireError::ChunkEnd)
        ));
        assert!(matches!(
            decode_all(b"ffffffffffffffffff\r\n", 64),
            Err(WireError::ChunkSize)
        ));
        let long = format!("1;{}\r\n", "e".repeat(5000));
        assert!(matches!(
            decode_all(long.as_bytes(), 64),
            Err(WireError::ChunkSize)
        ));
        let trailers = format!("0\r\nx: {}\r\n", "t".repeat(2000));
        assert!(matches!(
            decode_all(trailers.as_bytes(), 64),
            Err(WireError::Trailers)
        ));
    }
}
