//! The replica's wire form: the session [`Record`] as JSON (once-only and
//! server-only attributes removed), compressed with LZ4 when that pays, sealed
//! with the `replica` purpose key and the session id as associated data, and
//! encoded base64url. See `docs/replica-protocol.md`.

use std::fmt;

use remora_seal::{OpenError, Sealer};

use crate::record::Record;

/// Default longest replica accepted or produced, in base64url characters (96 KiB).
pub const DEFAULT_MAX_LEN: usize = 96 * 1024;

/// First plaintext byte: the record follows as JSON.
const RAW: u8 = 0;
/// First plaintext byte: the record follows LZ4-compressed (size prepended).
const LZ4: u8 = 1;

/// Why a replica was not accepted. Every variant leads to a fresh session,
/// never to an error response; [`Rejection::label`] is the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Changed, truncated, forged, or presented with another session's cookie.
    #[error("replica failed authentication")]
    Tampered,
    /// Past its idle or absolute deadline.
    #[error("replica has expired")]
    Expired,
    /// Sealed with a key that is not in the keyring.
    #[error("replica was sealed with an unknown key")]
    WrongKey,
    /// Longer than the configured limit.
    #[error("replica is over the size limit")]
    Oversize,
    /// Older than the newest replica the replay ledger knows (strict mode).
    #[error("replica is older than the newest one issued")]
    Stale,
    /// Not base64url, or the authenticated payload is not a record.
    #[error("replica is malformed")]
    Malformed,
}

impl Rejection {
    /// The metric label: `tampered`, `expired`, `wrong_key`, `oversize`, `stale`, `malformed`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Tampered => "tampered",
            Rejection::Expired => "expired",
            Rejection::WrongKey => "wrong_key",
            Rejection::Oversize => "oversize",
            Rejection::Stale => "stale",
            Rejection::Malformed => "malformed",
        }
    }
}

impl From<OpenError> for Rejection {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Oversize { .. } => Rejection::Oversize,
            OpenError::Malformed | OpenError::UnknownVersion(_) => Rejection::Malformed,
            OpenError::WrongKey(_) => Rejection::WrongKey,
            OpenError::Tampered => Rejection::Tampered,
        }
    }
}

/// Why a record was not sealed into a replica.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed replica would exceed the size limit; no replica is sent.
    #[error("replica of {len} characters exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The record could not be serialized.
    #[error("replica record could not be serialized")]
    Serialize(#[source] serde_json::Error),
}

/// Seals and opens replicas. Every carriage (header, cookie, Bayeux) goes
/// through one codec, so all apply the same checks in the same order.
pub struct ReplicaCodec {
    sealer: Sealer,
    max_len: usize,
}

impl fmt::Debug for ReplicaCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaCodec")
            .field("key", &self.sealer.sealing_key_id())
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl ReplicaCodec {
    /// A codec sealing with `sealer` (purpose `replica`) and refusing replicas
    /// longer than `max_len` base64url characters.
    pub fn new(sealer: Sealer, max_len: usize) -> Self {
        Self { sealer, max_len }
    }

    /// The same codec with another size limit.
    pub fn with_max_len(self, max_len: usize) -> Self {
        Self { max_len, ..self }
    }

    /// The longest replica, in characters, that is sealed or opened.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Seals the part of `record` that may leave the server
    /// ([`Record::to_replica_record`]) into base64url text.
    pub fn seal(&self, record: &Record) -> Result<String, SealError> {
        let json = serde_json::to_vec(&record.to_replica_record()).map_err(SealError::Serialize)?;
        let compressed = lz4_flex::compress_prepend_size(&json);
        let mut plain = Vec::with_capacity(1 + json.len().min(compressed.len()));
        if compressed.len() < json.len() {
            plain.push(LZ4);
            plain.extend_from_slice(&compressed);
        } else {
            plain.push(RAW);
            plain.extend_from_slice(&json);
        }
        let text = self.sealer.seal_b64(&plain, record.id.as_bytes());
        if text.len() > self.max_len {
            return Err(SealError::TooLarge {
                len: text.len(),
                limit: self.max_len,
            });
        }
        Ok(text)
    }

    /// Opens a replica presented for session `session_id` at `now_ms` (Unix
    /// ms): size, then seal (with the session id bound), then format, then
    /// deadlines. Attributes whose own deadline has passed are dropped.
    pub fn open(&self, text: &str, session_id: &str, now_ms: u64) -> Result<Record, Rejection> {
        let plain = self
            .sealer
            .open_b64(text, session_id.as_bytes(), self.max_len)?;
        let (&flag, body) = plain.split_first().ok_or(Rejection::Malformed)?;
        let json = match flag {
            RAW => std::borrow::Cow::Borrowed(body),
            LZ4 => {
                // The prepended size is authenticated, but bound it anyway.
                let size = body
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or(Rejection::Malformed)?;
                if size > self.max_len.saturating_mul(64) {
                    return Err(Rejection::Oversize);
                }
                std::borrow::Cow::Owned(
                    lz4_flex::decompress_size_prepended(body).map_err(|_| Rejection::Malformed)?,
                )
            }
            _ => return Err(Rejection::Malformed),
        };
        let mut record = Record::from_json(&json).map_err(|_| Rejection::Malformed)?;
        if record.id != session_id || record.attributes.values().any(|a| a.once || a.server_only) {
            return Err(Rejection::Malformed);
        }
        if record.is_expired(now_ms) {
            return Err(Rejection::Expired);
        }
        record.purge_expired_attributes(now_ms);
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Attribute;
    use proptest::prelude::*;
    use remora_seal::{Key, Keyring, Purpose};

    fn codec(seed: u8) -> ReplicaCodec {
        let ring = Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).unwrap();
        ReplicaCodec::new(Sealer::new(&ring, Purpose::Replica), DEFAULT_MAX_LEN)
    }

    fn record(id: &str, attrs: &[(&str, serde_json::Value, Option<u64>)]) -> Record {
        let mut r = Record::new(id.into(), 0, 10_000, 20_000);
        r.version = 3;
        r.replica_seq = 1_000;
        for (k, v, e) in attrs {
            let mut a = Attribute::new(v.clone());
            a.expires_at = *e;
            r.attributes.insert((*k).to_owned(), a);
        }
        r
    }

    #[test]
    fn round_trip_drops_expired_attributes() {
        let c = codec(1);
        let r = record(
            "sid",
            &[
                ("cart", serde_json::json!(["tea"]), None),
                ("auth", serde_json::json!("ann"), Some(500)),
            ],
        );
        let text = c.seal(&r).unwrap();
        assert_eq!(c.open(&text, "sid", 100).unwrap(), r);
        let later = c.open(&text, "sid", 600).unwrap();
        assert!(later.attributes.contains_key("cart") && !later.attributes.contains_key("auth"));
    }

    #[test]
    fn once_only_and_server_only_never_travel() {
        let c = codec(9);
        let mut r = record("sid", &[("cart", serde_json::json!(1), None)]);
        let mut once = Attribute::new(serde_json::json!("order-token"));
        once.once = true;
        r.attributes.insert("order".into(), once);
        let mut secret = Attribute::new(serde_json::json!("x"));
        secret.server_only = true;
        r.attributes.insert("secret".into(), secret);
        let opened = c.open(&c.seal(&r).unwrap(), "sid", 1).unwrap();
        assert_eq!(opened.attributes.keys().collect::<Vec<_>>(), vec!["cart"]);
    }

    #[test]
    fn bound_to_the_session_id() {
        let c = codec(2);
        let text = c.seal(&record("sid-a", &[])).unwrap();
        assert_eq!(c.open(&text, "sid-b", 1), Err(Rejection::Tampered));
    }

    #[test]
    fn expired_wrong_key_rotated_key_oversize_malformed() {
        let c = codec(3);
        let text = c.seal(&record("s", &[])).unwrap();
        assert_eq!(c.open(&text, "s", 10_000), Err(Rejection::Expired));
        assert_eq!(codec(4).open(&text, "s", 1), Err(Rejection::WrongKey));
        let rotated =
            Keyring::from_keys(vec![Key::from_bytes([4; 32]), Key::from_bytes([3; 32])]).unwrap();
        let rc = ReplicaCodec::new(Sealer::new(&rotated, Purpose::Replica), DEFAULT_MAX_LEN);
        assert!(
            rc.open(&text, "s", 1).is_ok(),
            "an old key still opens after rotation"
        );
        let small = ReplicaCodec::new(
            Sealer::new(
                &Keyring::from_keys(vec![Key::from_bytes([3; 32])]).unwrap(),
                Purpose::Replica,
            ),
            text.len() - 1,
        );
        assert_eq!(small.open(&text, "s", 1), Err(Rejection::Oversize));
        assert!(matches!(
            small.seal(&record("s", &[])),
            Err(SealError::TooLarge { .. })
        ));
        assert_eq!(c.open("not base64!", "s", 1), Err(Rejection::Malformed));
        assert_eq!(c.open("", "s", 1), Err(Rejection::Malformed));
    }

    #[test]
    fn compresses_when_it_pays_and_overhead_is_small() {
        let c = codec(5);
        let big = serde_json::json!("x".repeat(16 * 1024));
        let text = c.seal(&record("s", &[("blob", big, None)])).unwrap();
        assert!(
            text.len() < 2_000,
            "16 KiB of repetitive data sealed to {} chars",
            text.len()
        );
        let opened = c.open(&text, "s", 1).unwrap();
        assert_eq!(
            opened.attributes["blob"].value.as_str().map(str::len),
            Some(16 * 1024)
        );
    }

    proptest! {
        #[test]
        fn round_trips_any_session(values in proptest::collection::btree_map("[a-z]{1,8}", ".{0,40}", 0..8), seq in 1u64..u64::MAX / 2) {
            let c = codec(10);
            let mut r = record("sid", &[]);
            r.replica_seq = seq;
            for (k, v) in values {
                r.attributes.insert(k, Attribute::new(serde_json::json!(v)));
            }
            prop_assert_eq!(c.open(&c.seal(&r).unwrap(), "sid", 1).unwrap(), r);
        }

        #[test]
        fn any_change_or_truncation_is_rejected(value in ".{0,200}", pos in any::<usize>(), bit in 0u8..6, cut in any::<usize>()) {
            let c = codec(6);
            let text = c.seal(&record("s", &[("k", serde_json::json!(value), None)])).unwrap();
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut bytes = text.clone().into_bytes();
            let i = pos % bytes.len();
            let sextet = ALPHABET.iter().position(|&b| b == bytes[i]).unwrap();
            bytes[i] = ALPHABET[sextet ^ (1 << bit)];
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(c.open(&changed, "s", 1).is_err());
            let cut = cut % text.len();
            prop_assert!(c.open(&text[..cut], "s", 1).is_err());
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}", sid in "[a-z]{0,8}") {
            let _ = codec(7).open(&text, &sid, 1);
        }
    }
}
