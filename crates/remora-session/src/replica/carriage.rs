//! Reading and writing replicas on HTTP messages: the request header, and the
//! optional numbered cookies.

use http::{HeaderMap, HeaderValue, header};

use super::{CookieCarriage, REPLICA_HEADER};

/// The `Session-Replica` request header, if present and text.
pub(super) fn header_replica(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Reassembles a replica from cookies `NAME.0`, `NAME.1`, … (stopping at the
/// first missing index). `None` when absent or longer than `max_len`.
pub(super) fn cookie_replica(headers: &HeaderMap, name: &str, max_len: usize) -> Option<String> {
    let mut text = String::new();
    for i in 0.. {
        let Some(part) = crate::config::cookie_value(headers, &format!("{name}.{i}")) else {
            break;
        };
        if text.len() + part.len() > max_len {
            return None;
        }
        text.push_str(&part);
    }
    (!text.is_empty()).then_some(text)
}

/// Sets the replica cookies for `text` (empty: expire them all). A replica
/// longer than the carriage's total is not sent as cookies, and earlier
/// replica cookies are expired, so a browser never holds a partial replica.
pub(super) fn set_replica_cookies(
    headers: &mut HeaderMap,
    c: &CookieCarriage,
    text: &str,
    max_age_secs: u64,
) {
    let per = c.per_cookie.max(1);
    let slots = c.max_total.div_ceil(per);
    let parts: Vec<&str> = if text.is_empty() || text.len() > c.max_total {
        Vec::new()
    } else {
        // base64url is ASCII, so byte chunks are character chunks.
        text.as_bytes()
            .chunks(per)
            .filter_map(|b| std::str::from_utf8(b).ok())
            .collect()
    };
    let secure = if c.secure { "; Secure" } else { "" };
    for i in 0..slots.max(parts.len()) {
        let cookie = match parts.get(i) {
            Some(p) => format!(
                "{}.{i}={p}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}",
                c.name
            ),
            None => format!(
                "{}.{i}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
                c.name
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carriage() -> CookieCarriage {
        CookieCarriage {
            name: "rr".into(),
            max_total: 10,
            per_cookie: 4,
            secure: true,
        }
    }

    fn cookies(h: &HeaderMap) -> Vec<String> {
        h.get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn splits_and_reassembles() {
        let mut h = HeaderMap::new();
        set_replica_cookies(&mut h, &carriage(), "abcdefghij", 60);
        let set = cookies(&h);
        assert_eq!(set.len(), 3);
        assert!(
            set[0].starts_with("rr.0=abcd; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure")
        );
        let mut req = HeaderMap::new();
        let pairs: Vec<String> = set
            .iter()
            .map(|c| c.split(';').next().unwrap().to_owned())
            .collect();
        req.insert(
            header::COOKIE,
            HeaderValue::from_str(&pairs.join("; ")).unwrap(),
        );
        assert_eq!(
            cookie_replica(&req, "rr", 100).as_deref(),
            Some("abcdefghij")
        );
        assert_eq!(cookie_replica(&req, "rr", 5), None, "over the limit");
    }

    #[test]
    fn too_large_expires_all_cookies_instead_of_a_partial_replica() {
        let mut h = HeaderMap::new();
        set_replica_cookies(&mut h, &carriage(), "abcdefghijk", 60);
        let set = cookies(&h);
        assert_eq!(set.len(), 3);
        assert!(set.iter().all(|c| c.contains("Max-Age=0")), "{set:?}");
    }

    #[test]
    fn header_is_trimmed_and_empty_is_none() {
        let mut h = HeaderMap::new();
        assert_eq!(header_replica(&h), None);
        h.insert(REPLICA_HEADER, HeaderValue::from_static("  "));
        assert_eq!(header_replica(&h), None);
        h.insert(REPLICA_HEADER, HeaderValue::from_static(" abc "));
        assert_eq!(header_replica(&h), Some("abc"));
    }
}
