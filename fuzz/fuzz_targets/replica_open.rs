//! Replica opener: `ReplicaCodec::open(text, session_id, now)`.
//!
//! First byte even: the rest is replica text, opened as presented by a
//! client. First byte odd: the rest is a *plaintext* (flag byte + JSON or
//! LZ4), sealed with the codec's own key first, so it passes authentication
//! and the fuzzer explores the format, LZ4, record and deadline checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_fuzz::{NOW, REPLICA_MAX_LEN, SID, sealer};
use remora_seal::Purpose;
use remora_session::replica::{Rejection, ReplicaCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let codec = ReplicaCodec::new(sealer(Purpose::Replica), REPLICA_MAX_LEN);
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        sealer(Purpose::Replica).seal_b64(rest, SID.as_bytes())
    };
    match codec.open(&text, SID, NOW) {
        Ok(r) => {
            assert_eq!(r.id, SID);
            assert!(!r.is_expired(NOW));
            assert!(
                r.attributes
                    .values()
                    .all(|a| !a.once && !a.server_only && !a.is_expired(NOW))
            );
            if let Ok(again) = codec.seal(&r) {
                let r2 = codec
                    .open(&again, SID, NOW)
                    .expect("resealed replica opens");
                assert_eq!(r2.attributes.len(), r.attributes.len());
            }
        }
        Err(e) => {
            if mode & 1 == 1 {
                assert!(!matches!(
                    e,
                    Rejection::Tampered | Rejection::WrongKey | Rejection::Stale
                ));
            }
        }
    }
});
