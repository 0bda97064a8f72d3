//! Stable fuzz harness for the replica opener ([`ReplicaCodec::open`]), run
//! by `cargo test`. The `cargo fuzz` target `replica_open` (see
//! `docs/fuzzing.md`) explores the same function without a case limit.
//!
//! Two kinds of cases, from a fixed seed so every run is the same:
//! - mutated replica text (base64url), which must never open unless it
//!   decodes to the very blob that was sealed;
//! - mutated *plaintext* (flag byte + JSON or LZ4), sealed with the codec's
//!   own key so it passes authentication and reaches the format, LZ4,
//!   record and deadline checks. Whatever opens must satisfy the codec's
//!   promises (right id, nothing once-only or server-only, not expired).

use remora_seal::{Key, Keyring, Purpose, Sealer};
use remora_session::replica::{DEFAULT_MAX_LEN, Rejection, ReplicaCodec};
use remora_session::{Attribute, Record};
use serde_json::json;

const SID: &str = "fuzz-session-id";
const NOW: u64 = 1_000_000;
/// Cases per test: each sealed case costs several AEAD operations, which
/// are slow in a debug build.
const CASES: usize = 20_000;
const SEALED_CASES: usize = 8_000;
/// A smaller limit than the default, so the size checks are reached too.
const MAX_LEN: usize = 4 * 1024;

use remora_fuzzkit::Gen;

fn ring() -> Keyring {
    Keyring::from_keys(vec![Key::from_bytes([0x5a; 32])]).expect("one key")
}

fn codec(max_len: usize) -> ReplicaCodec {
    ReplicaCodec::new(Sealer::new(&ring(), Purpose::Replica), max_len)
}

fn records() -> Vec<Record> {
    let mut out = Vec::new();
    let mut empty = Record::new(SID.into(), NOW - 10, 60_000, 3_600_000);
    empty.replica_seq = 7;
    out.push(empty.clone());
    let mut shop = empty.clone();
    shop.attributes.insert(
        "cart".into(),
        Attribute::from_value(&json!(["tea", "cups", 3])).unwrap(),
    );
    let mut auth = Attribute::from_value(&json!({"user": "ann", "roles": ["admin"]})).unwrap();
    auth.expires_at = Some(NOW + 5);
    shop.attributes.insert("auth".into(), auth);
    let mut gone = Attribute::from_value(&json!(1.5)).unwrap();
    gone.expires_at = Some(NOW - 1);
    shop.attributes.insert("gone".into(), gone);
    out.push(shop);
    let mut big = empty.clone();
    big.attributes.insert(
        "blob".into(),
        Attribute::from_value(&json!("ab".repeat(900))).unwrap(),
    );
    out.push(big);
    let mut nested = empty;
    nested.attributes.insert(
        "deep".into(),
        Attribute::from_value(&json!({"a": [[[{"b": null}]]], "n": -12, "u": "\u{e9}\u{1F600}"}))
            .unwrap(),
    );
    out.push(nested);
    out
}

/// Plaintexts as the codec builds them: flag 0 + JSON, or flag 1 + LZ4.
fn plaintexts() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in records() {
        let json = r.to_json().expect("json");
        let mut raw = vec![0u8];
        raw.extend_from_slice(&json);
        out.push(raw);
        let mut lz = vec![1u8];
        lz.extend_from_slice(&lz4_flex::compress_prepend_size(&json));
        out.push(lz);
    }
    out
}

const JSON_DICT: &[&[u8]] = &[
    b"\"once\":true,",
    b"\"server_only\":true,",
    b"\"expires_at\":0,",
    b"\"expires_at\":18446744073709551615,",
    b"\"id\":\"other\",",
    b"\"idle_deadline\":0,",
    b"\"absolute_deadline\":18446744073709551615,",
    b"\"replica_seq\":-1,",
    b"\"attributes\":{},",
    b"{\"value\":null}",
    b"1e999",
    b"18446744073709551616",
    b"\"\\ud800\"",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x10\x00",
];

const TEXT_DICT: &[&[u8]] = &[
    b"A",
    b"_",
    b"-",
    b"=",
    b"+",
    b"/",
    b"AAAA",
    b"____",
    b" ",
    b"\xc3\xa9",
];

/// What an accepted replica must look like.
fn check_opened(r: &Record) {
    assert_eq!(r.id, SID, "a replica opened for another session id");
    assert!(!r.is_expired(NOW), "an expired replica opened");
    assert!(
        r.attributes.values().all(|a| !a.once && !a.server_only),
        "a once-only or server-only attribute came in through a replica"
    );
    assert!(
        r.attributes.values().all(|a| !a.is_expired(NOW)),
        "an expired attribute survived opening"
    );
}

#[test]
fn fuzz_replica_sealed_plaintext() {
    let codec = codec(MAX_LEN);
    let sealer = Sealer::new(&ring(), Purpose::Replica);
    let seeds = plaintexts();
    let mut g = Gen::new(0x5EED_0001);
    let (mut opened, mut rejected) = (0usize, 0usize);
    for case in 0..SEALED_CASES {
        let plain = g.mutate(&seeds, JSON_DICT);
        let text = sealer.seal_b64(&plain, SID.as_bytes());
        match codec.open(&text, SID, NOW) {
            Ok(r) => {
                opened += 1;
                check_opened(&r);
                // What opened seals again and opens to the same session.
                if let Ok(again) = codec.seal(&r) {
                    let r2 = codec.open(&again, SID, NOW).unwrap_or_else(|e| {
                        panic!("case {case}: resealed replica refused ({e}); plain {plain:?}")
                    });
                    assert_eq!(
                        r2.attributes.keys().collect::<Vec<_>>(),
                        r.attributes.keys().collect::<Vec<_>>()
                    );
                    assert_eq!(r2.replica_seq, r.replica_seq);
                }
                // Bound to the session id even when the payload is valid.
                if case % 16 == 0 {
                    assert_eq!(
                        codec.open(&text, "another-id", NOW).err(),
                        Some(Rejection::Tampered)
                    );
                }
            }
            Err(e) => {
                rejected += 1;
                assert!(
                    !matches!(
                        e,
                        Rejection::Tampered | Rejection::WrongKey | Rejection::Stale
                    ),
                    "case {case}: authentic replica refused as {e:?}"
                );
            }
        }
    }
    // Mutations must exercise both outcomes, or the harness is not reaching deep code.
    assert!(
        opened > SEALED_CASES / 50,
        "only {opened} of {SEALED_CASES} cases opened"
    );
    assert!(
        rejected > SEALED_CASES / 50,
        "only {rejected} of {SEALED_CASES} cases were refused"
    );
}

#[test]
fn fuzz_replica_text() {
    let codec = codec(MAX_LEN);
    let default_codec = codec_default();
    let originals: Vec<String> = records()
        .iter()
        .map(|r| codec.seal(r).expect("seeds fit"))
        .collect();
    let seeds: Vec<Vec<u8>> = originals.iter().map(|t| t.clone().into_bytes()).collect();
    let mut g = Gen::new(0x5EED_0002);
    for case in 0..CASES {
        let bytes = g.mutate(&seeds, TEXT_DICT);
        let text = String::from_utf8_lossy(&bytes);
        for c in [&codec, &default_codec] {
            if let Ok(r) = c.open(&text, SID, NOW) {
                check_opened(&r);
                assert!(
                    originals.iter().any(|o| o.as_str() == text),
                    "case {case}: changed replica text opened: {text:?}"
                );
            }
        }
        // Any session id, any time: no panic.
        let _ = codec.open(&text, text.get(..8).unwrap_or(""), g.next_u64());
    }
}

fn codec_default() -> ReplicaCodec {
    codec(DEFAULT_MAX_LEN)
}

/// The committed seed corpus of the `cargo fuzz` target `replica_open`
/// (`fuzz/seeds/replica_open/`, written by `gen-seeds`; same key, session id
/// and clock as this harness): first byte even, replica text; odd, a
/// plaintext to seal.
fn committed_seeds() -> Vec<(String, Vec<u8>)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/replica_open");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    out.sort();
    out
}

/// Runs the committed seeds as the `cargo fuzz` target does, so CI covers
/// them on stable: every seed must open (they are valid replicas and
/// plaintexts), the corpus must hold text replicas of the current blob
/// format and of the legacy one, and mutations of the text seeds never open.
#[test]
fn fuzz_replica_committed_seeds() {
    use base64::Engine as _;
    let codec = codec(MAX_LEN);
    let sealer = Sealer::new(&ring(), Purpose::Replica);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (mut current, mut legacy) = (0, 0);
    let mut texts = Vec::new();
    for (name, seed) in committed_seeds() {
        let (&mode, rest) = seed.split_first().expect("seed is not empty");
        let text = if mode & 1 == 0 {
            let text = String::from_utf8(rest.to_vec()).expect("text seed is UTF-8");
            match b64.decode(&text).expect("text seed is base64url")[0] {
                remora_seal::FORMAT_VERSION => current += 1,
                remora_seal::LEGACY_FORMAT_VERSION => legacy += 1,
                v => panic!("{name}: unknown blob format {v}"),
            }
            texts.push(text.clone());
            text
        } else {
            sealer.seal_b64(rest, SID.as_bytes())
        };
        let r = codec
            .open(&text, SID, NOW)
            .unwrap_or_else(|e| panic!("{name}: seed refused ({e:?})"));
        check_opened(&r);
        let again = codec.seal(&r).expect("reseal");
        assert_eq!(codec.open(&again, SID, NOW), Ok(r), "{name}");
    }
    assert!(
        current > 0,
        "no replica of blob format {} among the committed seeds: run gen-seeds",
        remora_seal::FORMAT_VERSION
    );
    assert!(legacy > 0, "the legacy-format seeds are gone");
    let seeds: Vec<Vec<u8>> = texts.iter().map(|t| t.clone().into_bytes()).collect();
    let mut g = Gen::new(0x5EED_0003);
    for case in 0..CASES / 4 {
        let bytes = g.mutate(&seeds, TEXT_DICT);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(r) = codec.open(&text, SID, NOW) {
            check_opened(&r);
            assert!(
                texts.iter().any(|o| o.as_str() == text),
                "case {case}: changed replica text opened: {text:?}"
            );
        }
    }
}
