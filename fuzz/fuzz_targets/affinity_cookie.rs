//! Affinity cookie opener: `CookieRecord::open(sealer, value, aad)`.
//!
//! First byte even: the rest is the cookie value as a client sends it.
//! First byte odd: the rest is a record plaintext, sealed with the pool's
//! key first, so the fuzzer explores the record decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_fuzz::{COOKIE_NAME, POOL, sealer};
use remora_proxy::affinity::cookie::{self, CookieRecord, MAX_COOKIE_VALUE, MAX_SERVER_NAME};
use remora_seal::Purpose;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealer = sealer(Purpose::Affinity);
    let aad = cookie::aad(COOKIE_NAME, POOL);
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        let _ = CookieRecord::open(&sealer, &text, &aad);
    } else {
        let text = sealer.seal_b64(rest, &aad);
        match CookieRecord::open(&sealer, &text, &aad) {
            Ok(r) => {
                assert!(r.server.len() <= MAX_SERVER_NAME);
                assert_eq!(r.encode(), rest);
            }
            Err(_) => {
                assert!(CookieRecord::decode(rest).is_none() || text.len() > MAX_COOKIE_VALUE);
            }
        }
        assert!(CookieRecord::open(&sealer, &text, &cookie::aad(COOKIE_NAME, "other")).is_err());
    }
});
