//! A client request's header fields as the proxy reads them: the field
//! lines of an HTTP/1.1 head as they came ([`RequestLines`], no map built)
//! or hyper's map (HTTP/2), behind one view ([`ClientFields`]).
//!
//! Routing, affinity and forwarding read a few fields of every request
//! (`Host`, `Cookie`, `Connection`, the forwarding fields) and copy the rest
//! to the server as they are: a handful of lines scanned in place costs less
//! than building a `HeaderMap` (hashing and validating every name) to look
//! them up.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The field lines of an HTTP/1.1 request head, as slices of the buffer
/// the head was read into (no copy). Names are as the client wrote them
/// (any case); values without surrounding whitespace.
#[derive(Debug, Clone, Default)]
pub struct RequestLines {
    head: Bytes,
    /// Per line: name start and end, value start and end, in `head`.
    spans: Vec<[u32; 4]>,
}

/// A field line an HTTP `HeaderMap` refuses (on the WebSocket path, the
/// one that needs a map).
#[derive(Debug, thiserror::Error)]
#[error("invalid header field")]
pub struct InvalidField;

impl RequestLines {
    /// Lines over `head` at `spans`, each `[name start, name end, value
    /// start, value end]`. Every span must lie within `head` (a span that
    /// does not reads as empty).
    pub fn new(head: Bytes, spans: Vec<[u32; 4]>) -> RequestLines {
        RequestLines { head, spans }
    }

    /// The number of field lines.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Name and value of each line, in order.
    pub fn iter(&self) -> Iter<'_> {
        ClientFields::Lines(self).iter()
    }

    /// The lines as a `HeaderMap` (values share the head's buffer).
    pub fn to_header_map(&self) -> Result<HeaderMap, InvalidField> {
        let mut map = HeaderMap::with_capacity(self.spans.len());
        for &[ns, ne, vs, ve] in &self.spans {
            let name = self
                .head
                .get(ns as usize..ne as usize)
                .and_then(|n| HeaderName::from_bytes(n).ok())
                .ok_or(InvalidField)?;
            if vs > ve || ve as usize > self.head.len() {
                return Err(InvalidField);
            }
            let value = HeaderValue::from_maybe_shared(self.head.slice(vs as usize..ve as usize))
                .map_err(|_| InvalidField)?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// A client request's fields, read alike whichever way they arrived.
#[derive(Debug, Clone, Copy)]
pub enum ClientFields<'a> {
    /// An HTTP/1.1 head's lines, as they came.
    Lines(&'a RequestLines),
    /// A map (HTTP/2, or built by a caller).
    Map(&'a HeaderMap),
}

impl<'a> ClientFields<'a> {
    /// A request's fields: its head's `lines` when it has them (HTTP/1.1;
    /// its map is then empty), else its `map`.
    pub fn new(lines: Option<&'a RequestLines>, map: &'a HeaderMap) -> ClientFields<'a> {
        match lines {
            Some(l) => ClientFields::Lines(l),
            None => ClientFields::Map(map),
        }
    }

    /// Name and value of each field, in order (names in a map are lower
    /// case; lines keep the client's case).
    pub fn iter(self) -> Iter<'a> {
        match self {
            ClientFields::Lines(l) => Iter::Lines(l.spans.iter(), &l.head),
            ClientFields::Map(m) => Iter::Map(m.iter()),
        }
    }

    /// The values of every field named `name` (lower case; lines are
    /// compared without case), in order.
    pub fn get_all(self, name: &'a str) -> Values<'a> {
        match self {
            ClientFields::Lines(l) => Values::Lines(l.spans.iter(), &l.head, name.as_bytes()),
            ClientFields::Map(m) => Values::Map(m.get_all(name).iter()),
        }
    }

    /// The value of the first field named `name` (lower case).
    pub fn get(self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// Whether a field named `name` (lower case) is present.
    pub fn contains(self, name: &'a str) -> bool {
        self.get(name).is_some()
    }
}

fn span(head: &[u8], start: u32, end: u32) -> &[u8] {
    head.get(start as usize..end as usize).unwrap_or_default()
}

/// The fields of [`ClientFields::iter`].
#[derive(Debug)]
pub enum Iter<'a> {
    /// Over lines.
    Lines(std::slice::Iter<'a, [u32; 4]>, &'a [u8]),
    /// Over a map.
    Map(http::header::Iter<'a, HeaderValue>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Lines(spans, head) => {
                let &[ns, ne, vs, ve] = spans.next()?;
                Some((span(head, ns, ne), span(head, vs, ve)))
            }
            Iter::Map(it) => it
                .next()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        }
    }
}

/// The values of [`ClientFields::get_all`].
#[derive(Debug)]
pub enum Values<'a> {
    /// Over lines: those named so.
    Lines(std::slice::Iter<'a, [u32; 4]>, &'a [u8], &'a [u8]),
    /// Over a map's values for the name.
    Map(http::header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Lines(spans, head, name) => spans.find_map(|&[ns, ne, vs, ve]| {
                span(head, ns, ne)
                    .eq_ignore_ascii_case(name)
                    .then(|| span(head, vs, ve))
            }),
            Values::Map(it) => it.next().map(HeaderValue::as_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(head: &'static [u8]) -> RequestLines {
        // "Name: value" pairs separated by CRLF, as spans.
        let mut spans = Vec::new();
        let mut at = 0usize;
        for line in head.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = line.iter().position(|b| *b == b':') {
                let v = line[colon + 1..].iter().take_while(|b| **b == b' ').count();
                spans.push([at, at + colon, at + colon + 1 + v, at + line.len()].map(|o| o as u32));
            }
            at += line.len() + 2;
        }
        RequestLines::new(Bytes::from_static(head), spans)
    }

    #[test]
    fn lines_and_map_read_alike() {
        let l = lines(b"Host: a.test\r\nCookie: x=1\r\ncookie: y=2\r\nX-Empty: \r\n");
        let map = l.to_header_map().unwrap();
        for f in [ClientFields::Lines(&l), ClientFields::Map(&map)] {
            assert_eq!(f.iter().count(), 4);
            assert_eq!(f.get("host"), Some(&b"a.test"[..]));
            let cookies: Vec<&[u8]> = f.get_all("cookie").collect();
            assert_eq!(cookies, [&b"x=1"[..], &b"y=2"[..]]);
            assert_eq!(f.get("x-empty"), Some(&b""[..]));
            assert!(!f.contains("content-length"));
        }
        // Lines keep the client's case; the map's names are lower case.
        let names: Vec<&[u8]> = ClientFields::Lines(&l).iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], b"Host");
    }

    #[test]
    fn a_line_a_map_refuses_is_an_error() {
        let l = lines(b"Bad Name: x\r\n");
        assert!(l.to_header_map().is_err());
        let l = RequestLines::new(Bytes::from_static(b"a: b"), vec![[0, 1, 3, 9]]);
        assert!(l.to_header_map().is_err());
        // Out of range reads as empty, never panics.
        assert_eq!(l.iter().next(), Some((&b"a"[..], &b""[..])));
    }
}
