//! The replica's wire form: the session [`Record`] as JSON (once-only and
//! server-only attributes removed), compressed with LZ4 when that pays (from
//! [`LZ4_MIN_JSON`] bytes of JSON on), sealed with the `replica`
//! purpose key and the session id as associated data, and encoded base64url.
//! See `docs/replica-protocol.md`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use remora_seal::{OpenError, Sealer};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::record::{Attribute, Record};

/// Default longest replica accepted or produced, in base64url characters (96 KiB).
pub const DEFAULT_MAX_LEN: usize = 96 * 1024;

/// Session JSON shorter than this many bytes is sealed as it is, without
/// trying LZ4. 0: LZ4 is tried on every replica. Measured (see
/// `docs/BENCHMARKS.md`, "Seal"): on a session of 795 bytes of JSON,
/// compressing makes the replica 45% shorter (612 instead of 1,106
/// characters) and its seal+open 3-8% slower (a third more instructions);
/// replicas ride in headers and cookies, so the shorter replica is the
/// default.
pub const LZ4_MIN_JSON: usize = 0;

/// Room reserved for a replica's JSON before it is written.
const JSON_SIZE_HINT: usize = 1024;

/// A decode buffer larger than this is not kept for the thread's next open.
const KEEP_BUFFER: usize = 64 * 1024;

thread_local! {
    /// The thread's buffers for opening: the one replica text is decoded
    /// and opened in, and the one an LZ4 body is decompressed into.
    static OPEN_BUFS: Cell<(Vec<u8>, Vec<u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
    /// The thread's buffer a replica's JSON is compressed into.
    static LZ4_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Compresses `json` into `out` (which keeps its capacity from call to
/// call): the uncompressed length (4 bytes, little endian), then the LZ4
/// block. `None` if the JSON is too long to say in 4 bytes or LZ4 fails.
fn lz4_into(json: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let size = u32::try_from(json.len()).ok()?;
    let need = 4 + lz4_flex::block::get_maximum_output_size(json.len());
    if out.len() < need {
        out.resize(need, 0);
    }
    out[..4].copy_from_slice(&size.to_le_bytes());
    let n = lz4_flex::block::compress_into(json, &mut out[4..need]).ok()?;
    Some(4 + n)
}

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
    lz4_min_json: usize,
}

impl fmt::Debug for ReplicaCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaCodec")
            .field("key", &self.sealer.sealing_key_id())
            .field("max_len", &self.max_len)
            .field("lz4_min_json", &self.lz4_min_json)
            .finish()
    }
}

impl ReplicaCodec {
    /// A codec sealing with `sealer` (purpose `replica`) and refusing replicas
    /// longer than `max_len` base64url characters.
    pub fn new(sealer: Sealer, max_len: usize) -> Self {
        Self {
            sealer,
            max_len,
            lz4_min_json: LZ4_MIN_JSON,
        }
    }

    /// The same codec trying LZ4 from `bytes` of JSON on (default
    /// [`LZ4_MIN_JSON`], which tries it on every replica; `usize::MAX` never
    /// compresses). Opening does not
    /// depend on it: a flag byte says whether a replica is compressed.
    pub fn with_lz4_min_json(self, bytes: usize) -> Self {
        Self {
            lz4_min_json: bytes,
            ..self
        }
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
        let blob = self
            .sealer
            .seal_with(record.id.as_bytes(), 1 + JSON_SIZE_HINT, |buf| {
                let flag_at = buf.len();
                buf.push(RAW);
                serde_json::to_writer(&mut *buf, &ReplicaView(record))
                    .map_err(SealError::Serialize)?;
                let json = &buf[flag_at + 1..];
                if json.len() >= self.lz4_min_json {
                    let mut lz4 = LZ4_BUF.take();
                    if let Some(n) = lz4_into(json, &mut lz4)
                        && n < json.len()
                    {
                        buf.truncate(flag_at);
                        buf.push(LZ4);
                        buf.extend_from_slice(&lz4[..n]);
                    }
                    if lz4.capacity() <= KEEP_BUFFER {
                        LZ4_BUF.set(lz4);
                    }
                }
                Ok(())
            })?;
        let len = base64::encoded_len(blob.len(), false).unwrap_or(usize::MAX);
        if len > self.max_len {
            return Err(SealError::TooLarge {
                len,
                limit: self.max_len,
            });
        }
        Ok(remora_seal::encode_b64(&blob))
    }

    /// Opens a replica presented for session `session_id` at `now_ms` (Unix
    /// ms): size, then seal (with the session id bound), then format, then
    /// deadlines. Attributes whose own deadline has passed are dropped.
    pub fn open(&self, text: &str, session_id: &str, now_ms: u64) -> Result<Record, Rejection> {
        let (mut buf, mut json) = OPEN_BUFS.take();
        let opened = self.open_in(text, session_id, now_ms, &mut buf, &mut json);
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        if json.capacity() > KEEP_BUFFER {
            json = Vec::new();
        }
        OPEN_BUFS.set((buf, json));
        opened
    }

    /// [`ReplicaCodec::open`] in the thread's buffers: `buf` for the blob,
    /// `json` for a decompressed body.
    fn open_in(
        &self,
        text: &str,
        session_id: &str,
        now_ms: u64,
        buf: &mut Vec<u8>,
        json: &mut Vec<u8>,
    ) -> Result<Record, Rejection> {
        let plain = self
            .sealer
            .open_b64_into(text, session_id.as_bytes(), self.max_len, buf)?;
        let (&flag, body) = plain.split_first().ok_or(Rejection::Malformed)?;
        let mut record = match flag {
            RAW => Record::from_json(body),
            LZ4 => {
                // The prepended size is authenticated, but bound it anyway.
                let size = body
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or(Rejection::Malformed)?;
                if size > self.max_len.saturating_mul(64) {
                    return Err(Rejection::Oversize);
                }
                if json.len() < size {
                    json.resize(size, 0);
                }
                let n = lz4_flex::block::decompress_into(&body[4..], &mut json[..size])
                    .map_err(|_| Rejection::Malformed)?;
                if n != size {
                    return Err(Rejection::Malformed);
                }
                Record::from_json(&json[..n])
            }
            _ => return Err(Rejection::Malformed),
        }
        .map_err(|_| Rejection::Malformed)?;
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

/// Serializes a [`Record`] exactly as [`Record::to_replica_record`] would be
/// serialized, borrowing instead of cloning: same field names, once-only and
/// server-only attributes skipped. A test keeps the two identical.
struct ReplicaView<'a>(&'a Record);

impl Serialize for ReplicaView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut s = serializer.serialize_struct("Record", 8)?;
        s.serialize_field("id", &r.id)?;
        s.serialize_field("version", &r.version)?;
        s.serialize_field("created_at", &r.created_at)?;
        s.serialize_field("accessed_at", &r.accessed_at)?;
        s.serialize_field("idle_deadline", &r.idle_deadline)?;
        s.serialize_field("absolute_deadline", &r.absolute_deadline)?;
        s.serialize_field("attributes", &TravellingAttributes(&r.attributes))?;
        s.serialize_field("replica_seq", &r.replica_seq)?;
        s.end()
    }
}

/// The attributes that may leave the server.
struct TravellingAttributes<'a>(&'a BTreeMap<String, Attribute>);

impl Serialize for TravellingAttributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().filter(|(_, a)| !a.once && !a.server_only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Attribute;
    use proptest::prelude::*;
    use remora_seal::{Key, Keyring, Purpose};
    use serde_json::value::RawValue;

    fn codec(seed: u8) -> ReplicaCodec {
        let ring = Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).unwrap();
        ReplicaCodec::new(Sealer::new(&ring, Purpose::Replica), DEFAULT_MAX_LEN)
    }

    fn record(id: &str, attrs: &[(&str, serde_json::Value, Option<u64>)]) -> Record {
        let mut r = Record::new(id.into(), 0, 10_000, 20_000);
        r.version = 3;
        r.replica_seq = 1_000;
        for (k, v, e) in attrs {
            let mut a = Attribute::from_value(v).unwrap();
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

    /// Replicas written by the version 1 build (XChaCha20-Poly1305 seal,
    /// LZ4 for every record it shrank) with master key `[0x22; 32]`, for
    /// [`v1_record`]; the second with a 4096-byte `blob` attribute added.
    const V1_RAW: &str = "AXpHe8qbkwm5wMZWF4rbYiHLVrMcxx2mEejU8MW9AJt2I71fUfBMLki0aBvy3jYKddgUmaXqXFC-oVyOOVu8jbqK2ZEOYtR6Ua-EKA4KCFCTEc9G4eZEDwVkU8WSYLbC7IG1FhJqQZF-WAi8d8HF7GlwB3HgumZ8oJgH0RlTYCblqWc_WGVF_cDjwWbRNfbrvtau_gIUHDNBl9sEuyWzbL6kD4QTs3f3GIViA6LLubixnlTjQSyKgZLN1w1Ev3EgORMMarx34r0YI2Nvyv8t6jOGlh9RuHPflfaZ5HQdS0gIcFONGK4q74Plz3bORXHdfoQ_9mf71n8n5B2qPSSTzfhvbnEnw955xBy-soKU";
    const V1_LZ4: &str = "AXpHe8rEeIEUy8fPabVFX8OBq25afTZqeFwrydX5mOIahiGZE-cGl_yWvvClSBGxH1YMRCK7FnlCal9mkj36YGtBIXPwRvsTxRrdkFDWVldT9wiffrE9lKjLSVT149ytC17x4yoUhDwQHSmUgC9aPoIiVfpF5ea0D18JUg6MvT7XAmZMbAfa6l10IVsSExzpa2eQ-oFKinaChRGHG8dQVAoOVaCbT0laZk0YwdJXKsMij2m-lE2zU6P7FPT784wTXWDlWOV4udjyc1qwdXEChEPRvTVwQexHhCIX1gZVqz95sS26Isath91AI6IFP12U-WPeYJ4InYyjKQcTenJKsr2bE5CnZ9KpTgUdVui6rbqKgX8kgiG7Dpdz7czvvwEgQ7bJfv6JYj5ruSCB-w";

    fn v1_record() -> Record {
        let mut r = Record::new("fixture-sid".into(), 1_000, 60_000, 3_600_000);
        r.version = 4;
        r.replica_seq = 1_234;
        r.attributes.insert(
            "cart".into(),
            Attribute::from_value(&serde_json::json!(["tea", {"sku": "cup", "qty": 2}])).unwrap(),
        );
        let mut auth = Attribute::from_value(&serde_json::json!("ann")).unwrap();
        auth.expires_at = Some(30_000);
        r.attributes.insert("auth".into(), auth);
        r
    }

    #[test]
    fn opens_replicas_of_the_version_1_build() {
        let c = codec(0x22);
        let expected = v1_record();
        assert_eq!(c.open(V1_RAW, "fixture-sid", 2_000).unwrap(), expected);
        let mut big = expected.clone();
        big.attributes.insert(
            "blob".into(),
            Attribute::from_value(&serde_json::json!("x".repeat(4096))).unwrap(),
        );
        assert_eq!(c.open(V1_LZ4, "fixture-sid", 2_000).unwrap(), big);
        // Attribute and session deadlines, session binding and key still apply.
        let later = c.open(V1_RAW, "fixture-sid", 40_000).unwrap();
        assert!(!later.attributes.contains_key("auth"));
        assert_eq!(
            c.open(V1_RAW, "fixture-sid", 61_000),
            Err(Rejection::Expired)
        );
        assert_eq!(c.open(V1_RAW, "other-sid", 2_000), Err(Rejection::Tampered));
        assert_eq!(
            codec(0x23).open(V1_RAW, "fixture-sid", 2_000),
            Err(Rejection::WrongKey)
        );
        // What a version 1 replica restores is sealed again in the new format.
        let again = c.seal(&expected).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(b64.decode(&again).unwrap()[0], remora_seal::FORMAT_VERSION);
        assert_eq!(
            b64.decode(V1_RAW).unwrap()[0],
            remora_seal::LEGACY_FORMAT_VERSION
        );
        assert_eq!(c.open(&again, "fixture-sid", 2_000).unwrap(), expected);
    }

    /// The plaintext inside a replica sealed by `codec(seed)`.
    fn plaintext(seed: u8, text: &str, sid: &str) -> Vec<u8> {
        let ring = Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).unwrap();
        Sealer::new(&ring, Purpose::Replica)
            .open_b64(text, sid.as_bytes(), usize::MAX)
            .unwrap()
    }

    #[test]
    fn new_format_and_the_compression_threshold() {
        use base64::Engine as _;
        const THRESHOLD: usize = 1024;
        let c = codec(0x24).with_lz4_min_json(THRESHOLD);
        let small = record("s", &[("cart", serde_json::json!("x".repeat(300)), None)]);
        let text = c.seal(&small).unwrap();
        let blob = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .unwrap();
        assert_eq!(blob[0], remora_seal::FORMAT_VERSION);
        let plain = plaintext(0x24, &text, "s");
        let json = small.to_replica_record().to_json().unwrap();
        assert!(json.len() < THRESHOLD);
        assert_eq!(plain[0], RAW, "JSON under the threshold is not compressed");
        assert_eq!(&plain[1..], &json[..]);
        assert_eq!(blob.len(), 1 + json.len() + remora_seal::OVERHEAD);
        let big = record(
            "s",
            &[("cart", serde_json::json!("x".repeat(THRESHOLD)), None)],
        );
        let text = c.seal(&big).unwrap();
        assert_eq!(plaintext(0x24, &text, "s")[0], LZ4);
        assert_eq!(c.open(&text, "s", 1).unwrap(), big);
        // The default tries LZ4 on every replica; whatever the threshold, a
        // replica opens with any codec.
        let default = codec(0x24);
        let text = default.seal(&small).unwrap();
        assert_eq!(plaintext(0x24, &text, "s")[0], LZ4);
        assert_eq!(c.open(&text, "s", 1).unwrap(), small);
        let never = codec(0x24).with_lz4_min_json(usize::MAX);
        let text = never.seal(&big).unwrap();
        assert_eq!(plaintext(0x24, &text, "s")[0], RAW);
        assert_eq!(default.open(&text, "s", 1).unwrap(), big);
        // Incompressible JSON stays raw.
        const DIGITS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: String = (0..8 * THRESHOLD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(DIGITS[(x % 64) as usize])
            })
            .collect();
        let noisy = record("s", &[("n", serde_json::json!(noise), None)]);
        let json = noisy.to_json().unwrap();
        assert!(lz4_flex::compress_prepend_size(&json).len() >= json.len());
        let plain = plaintext(0x24, &default.seal(&noisy).unwrap(), "s");
        assert_eq!(plain[0], RAW);
        assert_eq!(&plain[1..], &json[..]);
    }

    #[test]
    fn once_only_and_server_only_never_travel() {
        let c = codec(9);
        let mut r = record("sid", &[("cart", serde_json::json!(1), None)]);
        let mut once = Attribute::from_value(&serde_json::json!("order-token")).unwrap();
        once.once = true;
        r.attributes.insert("order".into(), once);
        let mut secret = Attribute::from_value(&serde_json::json!("x")).unwrap();
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
            opened.attributes["blob"]
                .decode::<String>()
                .ok()
                .map(|s| s.len()),
            Some(16 * 1024)
        );
    }

    #[test]
    fn values_travel_as_their_json_text() {
        // Not the compact form serde_json would write: spaces, key order,
        // a number spelled as written. It travels and comes back verbatim.
        let text = r#"{ "z" : [1.50, 2e3] , "a" : "\u00e9" }"#;
        let mut r = record("sid", &[]);
        r.attributes.insert(
            "odd".into(),
            Attribute::new(RawValue::from_string(text.to_owned()).unwrap()),
        );
        let c = codec(11);
        let opened = c.open(&c.seal(&r).unwrap(), "sid", 1).unwrap();
        assert_eq!(opened.attributes["odd"].value.get(), text);
        assert_eq!(opened, r);
        let v: serde_json::Value = opened.attributes["odd"].decode().unwrap();
        assert_eq!(v, serde_json::json!({"a": "é", "z": [1.5, 2000.0]}));
    }

    #[test]
    fn malformed_attribute_json_is_rejected() {
        let c = codec(12);
        let ring = Keyring::from_keys(vec![Key::from_bytes([12; 32])]).unwrap();
        let sealer = Sealer::new(&ring, Purpose::Replica);
        let good = record("sid", &[("a", serde_json::json!({"k": [1, 2]}), None)]);
        let json = String::from_utf8(good.to_json().unwrap()).unwrap();
        assert!(json.contains(r#""value":{"k":[1,2]}"#), "{json}");
        for bad in [
            r#""value":{"k":[1,2}"#,
            r#""value":{"k":[1,2],}"#,
            r#""value":tru"#,
            r#""value":"\x""#,
            r#""value":NaN"#,
            r#""value":01"#,
            r#""value":"#,
        ] {
            let broken = json.replace(r#""value":{"k":[1,2]}"#, bad);
            for flag in [RAW, LZ4] {
                let mut plain = vec![flag];
                if flag == RAW {
                    plain.extend_from_slice(broken.as_bytes());
                } else {
                    plain.extend_from_slice(&lz4_flex::compress_prepend_size(broken.as_bytes()));
                }
                let text = sealer.seal_b64(&plain, b"sid");
                assert_eq!(c.open(&text, "sid", 1), Err(Rejection::Malformed), "{bad}");
            }
        }
        // The unbroken plaintext opens, so the rejections above are the value's.
        let mut plain = vec![RAW];
        plain.extend_from_slice(json.as_bytes());
        assert_eq!(c.open(&sealer.seal_b64(&plain, b"sid"), "sid", 1), Ok(good));
    }

    proptest! {
        #[test]
        fn round_trips_any_session(values in proptest::collection::btree_map("[a-z]{1,8}", ".{0,40}", 0..8), seq in 1u64..u64::MAX / 2) {
            let c = codec(10);
            let mut r = record("sid", &[]);
            r.replica_seq = seq;
            for (k, v) in values {
                r.attributes.insert(k, Attribute::from_value(&serde_json::json!(v)).unwrap());
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
        fn view_serializes_like_the_replica_record(
            attrs in proptest::collection::btree_map("[a-z]{1,6}", (".{0,12}", any::<Option<u64>>(), any::<bool>(), any::<bool>()), 0..8),
            times in any::<[u64; 6]>(),
        ) {
            let mut r = record("sid-\"quoted\"", &[]);
            r.version = times[0];
            r.created_at = times[1];
            r.accessed_at = times[2];
            r.idle_deadline = times[3];
            r.absolute_deadline = times[4];
            r.replica_seq = times[5];
            for (k, (v, expires_at, once, server_only)) in attrs {
                let mut a = Attribute::from_value(&serde_json::json!(v)).unwrap();
                a.expires_at = expires_at;
                a.once = once;
                a.server_only = server_only;
                r.attributes.insert(k, a);
            }
            prop_assert_eq!(
                serde_json::to_vec(&ReplicaView(&r)).unwrap(),
                serde_json::to_vec(&r.to_replica_record()).unwrap()
            );
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}", sid in "[a-z]{0,8}") {
            let _ = codec(7).open(&text, &sid, 1);
        }
    }
}
