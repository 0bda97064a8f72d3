//! The sealed affinity cookie: its record, sealing and `Set-Cookie`.

use http::HeaderValue;
use remora_seal::{OpenError, Sealer};

/// Longest cookie value (base64url characters) that is opened at all.
pub const MAX_COOKIE_VALUE: usize = 512;
/// Longest server name that fits in a cookie record.
pub const MAX_SERVER_NAME: usize = 255;
const RECORD_VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 8;

/// What the affinity cookie carries, sealed (AEAD, `Purpose::Affinity`):
/// nothing of it is readable or changeable by the client.
///
/// Binary layout before sealing: `version (1) | id (8) | issued (8) |
/// last_seen (8) | server name (UTF-8)`, integers big endian, times in Unix
/// seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieRecord {
    /// Random per-client id: the repin hash key and the pinned-clients count.
    pub id: u64,
    /// When the client was pinned (Unix seconds): `max_life` counts from it.
    pub issued: u64,
    /// When the cookie was last refreshed (Unix seconds): `max_idle` counts
    /// from it.
    pub last_seen: u64,
    /// The pinned server's name.
    pub server: std::sync::Arc<str>,
}

impl CookieRecord {
    /// The plaintext bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = truncate_utf8(&self.server, MAX_SERVER_NAME);
        let mut out = Vec::with_capacity(HEADER + name.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out
    }

    /// Parses plaintext bytes; `None` if they are not a record of this
    /// version.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER || bytes.len() > HEADER + MAX_SERVER_NAME {
            return None;
        }
        if bytes[0] != RECORD_VERSION {
            return None;
        }
        let u = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            id: u(1)?,
            issued: u(9)?,
            last_seen: u(17)?,
            server: std::str::from_utf8(&bytes[HEADER..]).ok()?.into(),
        })
    }

    /// Seals the record into a cookie value.
    pub fn seal(&self, sealer: &Sealer, aad: &[u8]) -> String {
        sealer.seal_b64(&self.encode(), aad)
    }

    /// Opens and parses a cookie value. Never panics on any input.
    pub fn open(sealer: &Sealer, value: &str, aad: &[u8]) -> Result<Self, CookieError> {
        let plain = sealer.open_b64(value, aad, MAX_COOKIE_VALUE)?;
        Self::decode(&plain).ok_or(CookieError::BadRecord)
    }
}

/// Why a cookie value was refused (all mean outcome `invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The seal did not open (tampered, wrong key, malformed, too long).
    #[error("affinity cookie did not open")]
    Seal(
        #[from]
        #[source]
        OpenError,
    ),
    /// Opened but is not a record this build understands.
    #[error("affinity cookie holds an unknown record")]
    BadRecord,
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Associated data binding a cookie to its name and pool, so a cookie of
/// one pool never opens for another.
pub fn aad(cookie_name: &str, pool: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(cookie_name.len() + pool.len() + 1);
    v.extend_from_slice(cookie_name.as_bytes());
    v.push(0);
    v.extend_from_slice(pool.as_bytes());
    v
}

/// `NAME=VALUE; Path=/; HttpOnly; SameSite=Lax[; Secure][; Max-Age=N]`.
pub fn set_cookie(
    name: &str,
    value: &str,
    secure: bool,
    max_age: Option<u64>,
) -> Option<HeaderValue> {
    let mut s = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    if let Some(age) = max_age {
        s.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use remora_seal::{Key, Keyring, Purpose};

    fn sealer(seed: u8) -> Sealer {
        let ring = Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).expect("one key");
        Sealer::new(&ring, Purpose::Affinity)
    }

    fn record() -> CookieRecord {
        CookieRecord {
            id: 42,
            issued: 1_700_000_000,
            last_seen: 1_700_000_100,
            server: "b1".into(),
        }
    }

    #[test]
    fn seals_round_trip_without_clear_name() {
        let s = sealer(1);
        let v = record().seal(&s, &aad("C", "app"));
        assert!(v.len() < 100, "{}", v.len());
        // A name long enough not to turn up in random base64 by chance
        // (a two-letter one does, about once in 70 seals).
        let named = CookieRecord {
            server: "backend-in-clear".into(),
            ..record()
        };
        let sealed = named.seal(&s, &aad("C", "app"));
        assert!(!sealed.contains("backend-in-clear"), "{sealed}");
        assert_eq!(CookieRecord::open(&s, &sealed, &aad("C", "app")), Ok(named));
        assert_eq!(CookieRecord::open(&s, &v, &aad("C", "app")), Ok(record()));
        // Other pool, other key: refused.
        assert!(CookieRecord::open(&s, &v, &aad("C", "api")).is_err());
        assert!(matches!(
            CookieRecord::open(&sealer(2), &v, &aad("C", "app")),
            Err(CookieError::Seal(OpenError::WrongKey(_)))
        ));
    }

    #[test]
    fn set_cookie_attributes() {
        let h = set_cookie("REMORA_AFFINITY", "abc", true, Some(60)).expect("valid");
        assert_eq!(
            h.to_str().expect("ascii"),
            "REMORA_AFFINITY=abc; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
        let h = set_cookie("C", "abc", false, None).expect("valid");
        assert_eq!(
            h.to_str().expect("ascii"),
            "C=abc; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    proptest! {
        #[test]
        fn opener_never_panics(value in ".{0,600}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let s = sealer(3);
            let _ = CookieRecord::open(&s, &value, b"x");
            let _ = CookieRecord::decode(&bytes);
        }

        #[test]
        fn record_round_trips(id in any::<u64>(), issued in any::<u64>(), last in any::<u64>(), server in "[a-z0-9.-]{0,40}") {
            let r = CookieRecord { id, issued, last_seen: last, server: server.into() };
            prop_assert_eq!(CookieRecord::decode(&r.encode()), Some(r));
        }
    }
}
