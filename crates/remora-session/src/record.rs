//! The session record: the unit a [`Store`](crate::Store) keeps and a replica
//! seals.
//!
//! Times are Unix epoch milliseconds (`u64`), so a record means the same on
//! every server and maps directly onto Redis `PEXPIREAT` and SQL integers.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The current time in Unix epoch milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One attribute of a session.
///
/// The value is kept as JSON text ([`RawValue`]): reading a record (from a
/// store or a replica) validates and copies each value's text but builds no
/// tree; [`Attribute::decode`] (and so [`Session::get`](crate::Session::get))
/// deserializes the application's type straight from the text. Two
/// attributes are equal when their text is: a value serialized by this crate
/// is compact JSON, so one value has one text as long as its type serializes
/// it the same way each time (map types without a fixed order, such as
/// `HashMap`, may not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attribute {
    /// The value, as JSON text.
    pub value: Box<RawValue>,
    /// Unix ms after which the attribute no longer exists (per-attribute TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A once-only value: it can be taken exactly once
    /// ([`Session::take_once`](crate::Session::take_once)) and is never put in
    /// a replica.
    #[serde(default, skip_serializing_if = "is_false")]
    pub once: bool,
    /// A server-only value: kept in the store, never put in a replica.
    #[serde(default, skip_serializing_if = "is_false")]
    pub server_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl PartialEq for Attribute {
    fn eq(&self, other: &Self) -> bool {
        self.value.get() == other.value.get()
            && self.expires_at == other.expires_at
            && self.once == other.once
            && self.server_only == other.server_only
    }
}

impl Attribute {
    /// A plain attribute with no expiry and no flags holding `value` (JSON
    /// text).
    pub fn new(value: Box<RawValue>) -> Self {
        Attribute {
            value,
            expires_at: None,
            once: false,
            server_only: false,
        }
    }

    /// A plain attribute holding `value` serialized as compact JSON.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Attribute::new)
    }

    /// Deserializes the value as a `T` from its JSON text.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.value.get())
    }

    /// Whether the attribute has expired at `now` (Unix ms).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A whole session as stored: identity, version, deadlines and attributes.
///
/// Serializable with `serde_json`. The replica layer seals
/// [`Record::to_replica_record`] and restores with
/// [`SessionLayer`](crate::SessionLayer)'s hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The session ID (see [`crate::id`]).
    pub id: String,
    /// Version for compare-and-set: 0 = never stored; every successful save
    /// writes a higher version.
    pub version: u64,
    /// Creation time, Unix ms.
    pub created_at: u64,
    /// Last access that was recorded (save or touch), Unix ms.
    pub accessed_at: u64,
    /// The session ends at this time unless it is used again (sliding idle
    /// timeout), Unix ms.
    pub idle_deadline: u64,
    /// The session ends at this time whatever happens (absolute lifetime),
    /// Unix ms.
    pub absolute_deadline: u64,
    /// Attributes by key.
    pub attributes: BTreeMap<String, Attribute>,
    /// Sequence of the newest replica made of this session: Unix ms, and
    /// never lower than one more than the replica it was restored from (a
    /// per-session Lamport clock, so clock skew between servers cannot make a
    /// newer replica look older). Clients keep the replica with the highest
    /// sequence. 0 = no replica made yet.
    #[serde(default)]
    pub replica_seq: u64,
}

impl Record {
    /// A new empty record created at `now` with the given timeouts (ms).
    pub fn new(id: String, now: u64, idle_ms: u64, absolute_ms: u64) -> Self {
        let absolute_deadline = now.saturating_add(absolute_ms);
        Record {
            id,
            version: 0,
            created_at: now,
            accessed_at: now,
            idle_deadline: now.saturating_add(idle_ms).min(absolute_deadline),
            absolute_deadline,
            attributes: BTreeMap::new(),
            replica_seq: 0,
        }
    }

    /// When the session ends if nothing happens: the earlier deadline.
    pub fn expires_at(&self) -> u64 {
        self.idle_deadline.min(self.absolute_deadline)
    }

    /// Whether the session has ended at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at() <= now
    }

    /// Removes attributes whose own TTL has passed; returns how many.
    pub fn purge_expired_attributes(&mut self, now: u64) -> usize {
        let before = self.attributes.len();
        self.attributes.retain(|_, a| !a.is_expired(now));
        before - self.attributes.len()
    }

    /// The copy of this record that may leave the server: once-only and
    /// server-only attributes removed. This is exactly what a replica seals.
    pub fn to_replica_record(&self) -> Record {
        let mut r = self.clone();
        r.attributes.retain(|_, a| !a.once && !a.server_only);
        r
    }

    /// Advances [`Record::replica_seq`] for a write at `now` (Unix ms).
    pub fn bump_replica_seq(&mut self, now: u64) {
        self.replica_seq = now.max(self.replica_seq.saturating_add(1));
    }

    /// Serialized size in bytes (the size the limit applies to).
    pub fn encoded_len(&self) -> usize {
        let mut n = ByteCount(0);
        match serde_json::to_writer(&mut n, self) {
            Ok(()) => n.0,
            Err(_) => usize::MAX,
        }
    }

    /// Serializes the record as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses a record from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        // Checking UTF-8 once for the whole text is cheaper than the
        // per-string and per-value checks of parsing bytes; text that is
        // not UTF-8 is parsed as bytes for serde_json's positioned error.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// Slides the idle deadline: accessed now, idle deadline `now + idle_ms`
    /// (never past the absolute deadline).
    pub fn slide(&mut self, now: u64, idle_ms: u64) {
        self.accessed_at = self.accessed_at.max(now);
        self.idle_deadline = now
            .saturating_add(idle_ms)
            .min(self.absolute_deadline)
            .max(self.idle_deadline);
    }
}

/// A writer that only counts bytes (sizes without allocating).
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A change one server made to one attribute, used to merge on a version
/// conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The attribute was set to this value.
    Set(Attribute),
    /// The attribute was removed.
    Removed,
}

/// Merges local changes into the newer `current` record from the store.
///
/// Rules (documented in `docs/sessions.md`): attributes this server changed
/// (set or removed) win; every other attribute keeps the stored value;
/// deadlines and access time take the later of the two; the result's version
/// is `current.version + 1`.
pub fn merge(current: &Record, local: &Record, changes: &BTreeMap<String, Change>) -> Record {
    let mut out = current.clone();
    for (k, c) in changes {
        match c {
            Change::Set(a) => {
                out.attributes.insert(k.clone(), a.clone());
            }
            Change::Removed => {
                out.attributes.remove(k);
            }
        }
    }
    out.accessed_at = out.accessed_at.max(local.accessed_at);
    out.idle_deadline = out
        .idle_deadline
        .max(local.idle_deadline)
        .min(out.absolute_deadline);
    out.version = current.version + 1;
    out.replica_seq = out.replica_seq.max(local.replica_seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_record_drops_once_and_server_only() {
        let mut r = Record::new("x".into(), 0, 10, 100);
        r.attributes.insert(
            "a".into(),
            Attribute::from_value(&serde_json::json!(1)).unwrap(),
        );
        let mut once = Attribute::from_value(&serde_json::json!(2)).unwrap();
        once.once = true;
        r.attributes.insert("o".into(), once);
        let mut so = Attribute::from_value(&serde_json::json!(3)).unwrap();
        so.server_only = true;
        r.attributes.insert("s".into(), so);
        let rr = r.to_replica_record();
        assert_eq!(rr.attributes.keys().collect::<Vec<_>>(), vec!["a"]);
        let back = Record::from_json(&r.to_json().unwrap()).unwrap();
        assert_eq!(back, r);
    }

    /// A record as the build before raw JSON values wrote it (values from a
    /// `serde_json::Value`: compact, object keys sorted).
    const STORED: &str = r#"{"id":"x","version":3,"created_at":1,"accessed_at":2,"idle_deadline":10,"absolute_deadline":100,"attributes":{"cart":{"value":[{"qty":2,"sku":"tea"},1.5,null,"\u00e9\"\n"]},"csrf":{"value":"t0k","expires_at":50,"once":true,"server_only":true}},"replica_seq":9}"#;

    #[test]
    fn stored_json_is_unchanged_byte_for_byte() {
        let r = Record::from_json(STORED.as_bytes()).unwrap();
        assert_eq!(
            r.attributes["cart"].value.get(),
            r#"[{"qty":2,"sku":"tea"},1.5,null,"\u00e9\"\n"]"#
        );
        assert!(r.attributes["csrf"].once && r.attributes["csrf"].server_only);
        assert_eq!(String::from_utf8(r.to_json().unwrap()).unwrap(), STORED);
        assert_eq!(r.encoded_len(), STORED.len());
        let cart: serde_json::Value = r.attributes["cart"].decode().unwrap();
        assert_eq!(cart[3], serde_json::json!("é\"\n"));
        assert_eq!(r.attributes["csrf"].decode::<String>().unwrap(), "t0k");
        assert!(r.attributes["cart"].decode::<u32>().is_err());
    }

    #[test]
    fn values_are_written_compact_and_compared_as_text() {
        #[derive(Serialize)]
        struct Line {
            sku: &'static str,
            qty: u32,
        }
        let a = Attribute::from_value(&Line { sku: "tea", qty: 2 }).unwrap();
        assert_eq!(a.value.get(), r#"{"sku":"tea","qty":2}"#);
        assert_eq!(
            a,
            Attribute::from_value(&Line { sku: "tea", qty: 2 }).unwrap()
        );
        assert_ne!(
            a,
            Attribute::from_value(&Line { sku: "tea", qty: 3 }).unwrap()
        );
        let mut once = a.clone();
        once.once = true;
        assert_ne!(a, once);
        assert!(Record::from_json(br#"{"id":"x","version":1,"created_at":1,"accessed_at":1,"idle_deadline":1,"absolute_deadline":1,"attributes":{"a":{"value":[1,}}}}"#).is_err());
    }

    #[test]
    fn merge_keeps_other_writers_attributes() {
        let mut base = Record::new("x".into(), 0, 10, 100);
        base.version = 1;
        let mut current = base.clone();
        current.version = 2;
        current.attributes.insert(
            "b".into(),
            Attribute::from_value(&serde_json::json!("theirs")).unwrap(),
        );
        let mut changes = BTreeMap::new();
        changes.insert(
            "a".to_string(),
            Change::Set(Attribute::from_value(&serde_json::json!("ours")).unwrap()),
        );
        let m = merge(&current, &base, &changes);
        assert_eq!(m.version, 3);
        assert_eq!(m.attributes.len(), 2);
    }
}
