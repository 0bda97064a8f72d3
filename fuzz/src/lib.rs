//! Shared fixtures of the fuzz targets: the fixed keys, session id and clock
//! every target and the seed generator agree on.

use bytes::BytesMut;
use remora_proxy::upstream::wire::{Chunked, Decoded};
use remora_seal::{Key, Keyring, Purpose, Sealer};

/// The session id replicas are opened for.
pub const SID: &str = "fuzz-session-id";
/// "Now" for the replica opener (Unix ms).
pub const NOW: u64 = 1_000_000;
/// The replica size limit used by the target (small, so size checks are hit).
pub const REPLICA_MAX_LEN: usize = 4 * 1024;
/// Affinity cookie name and pool the cookie target binds to.
pub const COOKIE_NAME: &str = "REMORA_AFFINITY";
/// See [`COOKIE_NAME`].
pub const POOL: &str = "app";

/// The sealer of `purpose` over a fixed key.
pub fn sealer(purpose: Purpose) -> Sealer {
    let ring = Keyring::from_keys(vec![Key::from_bytes([0x5a; 32])]).expect("one key");
    Sealer::new(&ring, purpose)
}

/// Decodes the chunked body at the start of `buf` until it ends, fails or
/// needs more bytes, checking that decoding only consumes and never yields
/// an empty data frame.
pub fn drain_chunked(buf: &mut BytesMut) {
    let mut state = Chunked::Size;
    let before = buf.len();
    while let Ok(step) = state.decode(buf, 4096) {
        assert!(buf.len() <= before);
        match step {
            Decoded::Data(d) => assert!(!d.is_empty()),
            Decoded::Trailers(_) | Decoded::End | Decoded::NeedMore => break,
        }
    }
}
