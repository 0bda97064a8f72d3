//! Response heads to clients (RFC 9112 sections 4 to 6): the status line,
//! the fields, the body framing Remora chooses, and `Date`.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{StatusCode, Version};
use http_body::SizeHint;

use crate::proxy::{RawHead, VIA};
use crate::upstream::wire::{push_decimal, write_field};

/// How a response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a `HEAD` request, `1xx`, `204`, `304`.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding (an HTTP/1.1 client, length unknown).
    Chunked,
    /// Until Remora closes the connection (an HTTP/1.0 client, length
    /// unknown).
    Close,
}

/// How a response goes out: its framing, and whether the connection
/// carries another request after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The body's framing.
    pub framing: Framing,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Where a response head's fields come from.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// A map: Remora's own answers, WebSocket handshakes.
    Map(&'a HeaderMap),
    /// A server's fields as they came, and this hop's additions.
    Raw(&'a RawHead),
}

impl Fields<'_> {
    /// The `Content-Length` the response declares, when it has exactly one
    /// valid one.
    pub fn declared_length(&self) -> Option<u64> {
        match self {
            Fields::Map(h) => declared_length(h),
            Fields::Raw(r) => r.fields.length(),
        }
    }
}

impl Plan {
    /// The plan for a response with `status`, a declared length (see
    /// [`Fields::declared_length`]) and a body of `hint`, to a request that
    /// was a `HEAD` (`head`) from a client of `version`; `keep_alive`:
    /// whether the connection may stay open as far as the request and the
    /// connection are concerned.
    pub fn new(
        status: StatusCode,
        declared: Option<u64>,
        hint: &SizeHint,
        head: bool,
        version: Version,
        keep_alive: bool,
    ) -> Plan {
        let bodiless = head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            Framing::None
        } else if let Some(n) = declared {
            Framing::Length(n)
        } else if let Some(n) = hint.exact() {
            Framing::Length(n)
        } else if version == Version::HTTP_10 {
            Framing::Close
        } else {
            Framing::Chunked
        };
        Plan {
            framing,
            keep_alive: keep_alive && framing != Framing::Close,
        }
    }
}

/// The response's `Content-Length`, when it has exactly one valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let s = first.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Writes the status line and fields of a response going out by `plan`
/// to a client of `version`. From a map: the fields as they are, but
/// `Transfer-Encoding` and `Content-Length` (written as the framing says)
/// and `Connection` (but a `101`'s). From a server's fields: its lines,
/// its `Content-Length` again when there is no body to frame (a `HEAD`
/// answer, `304`), then `Via` and the affinity cookie. Then the framing,
/// `Date` when the response has none, and `Connection` as the plan says.
pub fn encode(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: Fields<'_>,
    plan: Plan,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let dated = match fields {
        Fields::Map(headers) => {
            let mut dated = false;
            for (name, value) in headers {
                if name == header::TRANSFER_ENCODING
                    || (name == header::CONTENT_LENGTH && plan.framing != Framing::None)
                    || (name == header::CONNECTION && !switching)
                {
                    continue;
                }
                dated |= name == header::DATE;
                write_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            dated
        }
        Fields::Raw(raw) => {
            out.extend_from_slice(raw.fields.lines());
            if plan.framing == Framing::None
                && let Some(n) = raw.fields.length()
            {
                push_length(out, n);
            }
            write_field(out, b"via", VIA.as_bytes());
            if let Some(c) = &raw.set_cookie {
                write_field(out, b"set-cookie", c.as_bytes());
            }
            raw.fields.dated()
        }
    };
    match plan.framing {
        Framing::Length(n) => push_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !switching {
        if !plan.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// A short local answer that closes the connection: for a request head
/// that cannot be served ([`super::head::HeadError`]).
pub fn refusal(out: &mut Vec<u8>, status: StatusCode, body: &str) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let plan = Plan {
        framing: Framing::Length(body.len() as u64),
        keep_alive: false,
    };
    encode(out, status, Fields::Map(&headers), plan, Version::HTTP_11);
    out.extend_from_slice(body.as_bytes());
}

thread_local! {
    /// The second last formatted, and its IMF-fixdate.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// Writes the current time as an IMF-fixdate (RFC 9110 section 5.6.7),
/// formatted at most once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (at, mut text) = DATE.get();
    if at != now {
        text = imf_fixdate(now);
        DATE.set((now, text));
    }
    out.extend_from_slice(&text);
}

/// `secs` after the Unix epoch as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut t = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    t[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |t: &mut [u8; 29], at: usize, n: u64| {
        t[at] = b'0' + (n / 10 % 10) as u8;
        t[at + 1] = b'0' + (n % 10) as u8;
    };
    two(&mut t, 5, day);
    t[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut t, 12, year / 100);
    two(&mut t, 14, year % 100);
    two(&mut t, 17, rem / 3600);
    two(&mut t, 20, rem / 60 % 60);
    two(&mut t, 23, rem % 60);
    t
}

/// Year, month (1 to 12) and day (1 to 31) of the day `days` after
/// 1970-01-01, in the proleptic Gregorian calendar (the "civil from days"
/// algorithm: eras of 400 years, years starting in March).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_795_219_199),
            b"Fri, 20 Nov 2026 23:59:59 GMT"
        );
        assert_eq!(
            &imf_fixdate(4_102_444_800),
            b"Fri, 01 Jan 2100 00:00:00 GMT"
        );
    }

    fn plan(status: u16, headers: &HeaderMap, hint: SizeHint, head: bool, v: Version) -> Plan {
        let declared = Fields::Map(headers).declared_length();
        Plan::new(
            StatusCode::from_u16(status).unwrap(),
            declared,
            &hint,
            head,
            v,
            true,
        )
    }

    #[test]
    fn the_framing_follows_the_response_and_the_client() {
        let none = HeaderMap::new();
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let v11 = Version::HTTP_11;
        let unknown = SizeHint::default;
        assert_eq!(
            plan(200, &declared, unknown(), false, v11).framing,
            Framing::Length(12)
        );
        assert_eq!(
            plan(200, &none, SizeHint::with_exact(3), false, v11).framing,
            Framing::Length(3)
        );
        assert_eq!(
            plan(200, &none, unknown(), false, v11).framing,
            Framing::Chunked
        );
        let old = plan(200, &none, unknown(), false, Version::HTTP_10);
        assert_eq!(
            old,
            Plan {
                framing: Framing::Close,
                keep_alive: false
            }
        );
        assert_eq!(
            plan(200, &declared, unknown(), true, v11).framing,
            Framing::None
        );
        assert_eq!(
            plan(204, &none, unknown(), false, v11).framing,
            Framing::None
        );
        assert_eq!(
            plan(304, &declared, unknown(), false, v11).framing,
            Framing::None
        );
        assert_eq!(
            plan(101, &none, unknown(), false, v11).framing,
            Framing::None
        );
    }

    fn text(status: u16, headers: &HeaderMap, plan: Plan, v: Version) -> String {
        let mut out = Vec::new();
        encode(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            Fields::Map(headers),
            plan,
            v,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_carry_framing_date_and_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let keep = Plan {
            framing: Framing::Length(2),
            keep_alive: true,
        };
        assert_eq!(
            text(200, &h, keep, Version::HTTP_11),
            "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nset-cookie: a=1\r\n\
             set-cookie: b=2\r\ncontent-length: 2\r\n\r\n"
        );
        let close = Plan {
            framing: Framing::Chunked,
            keep_alive: false,
        };
        let t = text(599, &HeaderMap::new(), close, Version::HTTP_11);
        assert!(
            t.starts_with("HTTP/1.1 599 \r\ntransfer-encoding: chunked\r\ndate: "),
            "{t}"
        );
        assert!(t.ends_with(" GMT\r\nconnection: close\r\n\r\n"), "{t}");
        let t = text(200, &HeaderMap::new(), keep, Version::HTTP_10);
        assert!(t.ends_with("connection: keep-alive\r\n\r\n"), "{t}");
        // A 304 keeps its Content-Length (it describes the representation).
        let none = Plan {
            framing: Framing::None,
            keep_alive: true,
        };
        assert!(text(304, &h, none, Version::HTTP_11).contains("content-length: 2\r\n"));
        // A 101 keeps its own Connection and Upgrade.
        let mut up = HeaderMap::new();
        up.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        up.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let t = text(
            101,
            &up,
            Plan {
                framing: Framing::None,
                keep_alive: false,
            },
            Version::HTTP_11,
        );
        assert!(
            t.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{t}"
        );
        assert!(!t.contains("close"), "{t}");
    }

    #[test]
    fn a_servers_fields_go_out_as_they_came_with_this_hops() {
        let mut fields = crate::upstream::wire::RawFields::default();
        fields.push(b"Server", b"nginx");
        fields.push(b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT");
        fields.push(b"Via", b"1.0 front");
        let mut buf = bytes::BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let parsed = crate::upstream::wire::parse_head(&mut buf, &http::Method::GET, 1024)
            .unwrap()
            .unwrap();
        let raw = RawHead {
            fields: fields.clone(),
            set_cookie: Some(HeaderValue::from_static("REMORA_AFFINITY=x; HttpOnly")),
        };
        let keep = Plan {
            framing: Framing::Length(2),
            keep_alive: true,
        };
        let mut out = Vec::new();
        encode(
            &mut out,
            StatusCode::OK,
            Fields::Raw(&raw),
            keep,
            Version::HTTP_11,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Via: 1.0 front\r\nvia: 1.1 remora\r\nset-cookie: REMORA_AFFINITY=x; HttpOnly\r\n\
             content-length: 2\r\n\r\n"
        );
        // A HEAD answer keeps the length the server declared.
        let head = RawHead {
            fields: parsed.fields,
            set_cookie: None,
        };
        assert_eq!(Fields::Raw(&head).declared_length(), Some(2));
        let none = Plan {
            framing: Framing::None,
            keep_alive: true,
        };
        let mut out = Vec::new();
        encode(
            &mut out,
            StatusCode::OK,
            Fields::Raw(&head),
            none,
            Version::HTTP_11,
        );
        let t = String::from_utf8(out).unwrap();
        assert!(
            t.starts_with("HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 2\r\n"),
            "{t}"
        );
        assert!(t.contains("\r\ndate: "), "{t}");
    }

    #[test]
    fn a_refusal_closes() {
        let mut out = Vec::new();
        refusal(&mut out, StatusCode::BAD_REQUEST, "bad request\n");
        let t = String::from_utf8(out).unwrap();
        assert!(t.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{t}");
        assert!(t.contains("content-length: 12\r\n"), "{t}");
        assert!(t.ends_with("connection: close\r\n\r\nbad request\n"), "{t}");
    }
}
