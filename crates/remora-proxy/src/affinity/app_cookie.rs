//! Application cookies: learning `Set-Cookie: NAME=value` from servers and
//! the Jetty/Tomcat route suffix `value.NODE`.

use http::HeaderMap;

use crate::upstream::wire::RawFields;

/// Longest application cookie value that is learned or looked up.
pub const MAX_APP_COOKIE_VALUE: usize = 4096;

/// One `Set-Cookie` for the application cookie seen in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned<'h> {
    /// The cookie value.
    pub value: &'h str,
    /// The server deletes it (`Max-Age=0` or less, or an empty value).
    pub deleted: bool,
}

/// A response's header fields, as far as learning cookies goes: a map,
/// or the fields as a server wrote them ([`RawFields`]).
pub trait SetCookies {
    /// The values of its `Set-Cookie` fields, in order.
    fn set_cookies(&self) -> impl Iterator<Item = &[u8]>;
}

impl SetCookies for HeaderMap {
    fn set_cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.as_bytes())
    }
}

impl SetCookies for RawFields {
    fn set_cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(b"set-cookie")
    }
}

/// The `Set-Cookie` headers of `headers` that set cookie `name`. Malformed
/// and non-UTF-8 headers are skipped; never panics.
pub fn learn<'h>(
    headers: &'h impl SetCookies,
    name: &'h str,
) -> impl Iterator<Item = Learned<'h>> + 'h {
    headers
        .set_cookies()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .filter_map(move |line| {
            let mut parts = line.split(';');
            let (n, v) = parts.next()?.split_once('=')?;
            if n.trim() != name {
                return None;
            }
            let value = v.trim().trim_matches('"');
            if value.len() > MAX_APP_COOKIE_VALUE {
                return None;
            }
            let expired = parts.any(|attr| {
                attr.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("max-age")
                        && v.trim().parse::<i64>().is_ok_and(|age| age <= 0)
                })
            });
            Some(Learned {
                value,
                deleted: expired || value.is_empty(),
            })
        })
}

/// The route suffix of a Jetty/Tomcat session id (`id.NODE` -> `NODE`).
pub fn route_suffix(value: &str) -> Option<&str> {
    let (_, node) = value.rsplit_once('.')?;
    (!node.is_empty()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn learns_sets_and_deletions() {
        let mut h = HeaderMap::new();
        h.append(
            "set-cookie",
            HeaderValue::from_static("JSESSIONID=abc.b1; Path=/; HttpOnly"),
        );
        h.append("set-cookie", HeaderValue::from_static("other=1"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("JSESSIONID=old; Max-Age=0"),
        );
        let got: Vec<_> = learn(&h, "JSESSIONID").collect();
        assert_eq!(
            got,
            vec![
                Learned {
                    value: "abc.b1",
                    deleted: false
                },
                Learned {
                    value: "old",
                    deleted: true
                }
            ]
        );
        assert_eq!(route_suffix("abc.b1"), Some("b1"));
        assert_eq!(route_suffix("abc"), None);
        assert_eq!(route_suffix("abc."), None);
    }

    #[test]
    fn learns_from_raw_fields_too() {
        let mut f = RawFields::default();
        f.push(b"Set-Cookie", b"JSESSIONID=abc.b1; Path=/");
        f.push(b"X-Other", b"JSESSIONID=no");
        f.push(b"set-cookie", b"JSESSIONID=gone; max-age=-1");
        let got: Vec<_> = learn(&f, "JSESSIONID").collect();
        assert_eq!(
            got,
            [
                Learned {
                    value: "abc.b1",
                    deleted: false
                },
                Learned {
                    value: "gone",
                    deleted: true
                }
            ]
        );
    }

    proptest! {
        #[test]
        fn never_panics(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..5), name in "[A-Za-z]{1,10}") {
            let mut h = HeaderMap::new();
            for l in lines {
                if let Ok(v) = HeaderValue::from_bytes(&l) {
                    h.append("set-cookie", v);
                }
            }
            let _ = learn(&h, &name).count();
        }
    }
}
