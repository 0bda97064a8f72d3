//! Per-purpose AEAD sealing and opening.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::keyring::{KeyId, Keyring};

/// The blob format version written in the first byte.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed blob adds to its plaintext (before base64).
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// What a derived key is for. Each purpose gets its own key from every master
/// key, so a blob sealed for one purpose never opens for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The load balancer's affinity cookie.
    Affinity,
    /// A client-held session replica.
    Replica,
    /// Any other purpose, named by a fixed label.
    Other(&'static str),
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Affinity => "affinity",
            Purpose::Replica => "replica",
            Purpose::Other(label) => label,
        }
    }
}

/// Why a blob did not open. Every variant is the client's problem, never the
/// server's: callers treat all of them as "no blob" and count the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Larger than the caller's limit; rejected before any work.
    #[error("sealed blob is {len} bytes, over the limit of {limit}")]
    Oversize {
        /// Length seen.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not base64url, or shorter than the fixed overhead.
    #[error("sealed blob is malformed")]
    Malformed,
    /// Written by a format version this build does not know.
    #[error("sealed blob has unknown format version {0}")]
    UnknownVersion(u8),
    /// Sealed with a key this keyring does not hold.
    #[error("sealed blob names key {0}, which is not in the keyring")]
    WrongKey(KeyId),
    /// The authentication tag did not verify: changed, truncated, or sealed
    /// for another purpose or other associated data.
    #[error("sealed blob failed authentication")]
    Tampered,
}

struct PurposeKey {
    id: KeyId,
    aead: XChaCha20Poly1305,
}

/// Seals and opens blobs for one [`Purpose`] with keys derived from a
/// [`Keyring`]. Cheap to share (`Arc`); derivation happens once, here.
pub struct Sealer {
    purpose: Purpose,
    keys: Vec<PurposeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("purpose", &self.purpose)
            .field("keys", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Sealer {
    /// Derives the purpose keys from every key of the keyring.
    pub fn new(ring: &Keyring, purpose: Purpose) -> Self {
        let keys = ring
            .keys()
            .iter()
            .map(|k| {
                let hk = Hkdf::<Sha256>::new(Some(b"remora-seal v1"), k.bytes());
                let mut okm = zeroize::Zeroizing::new([0u8; 32]);
                let info = format!("remora/{}", purpose.label());
                hk.expand(info.as_bytes(), okm.as_mut())
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                PurposeKey {
                    id: k.id(),
                    aead: XChaCha20Poly1305::new((&*okm).into()),
                }
            })
            .collect();
        Self { purpose, keys }
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> KeyId {
        self.keys[0].id
    }

    /// Seals `plaintext`, binding `aad` (which the opener must present again).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system CSPRNG is unavailable");
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&key.id.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let full_aad = Self::full_aad(&out[..HEADER_LEN], aad);
        let (head, body) = out.split_at_mut(HEADER_LEN + NONCE_LEN);
        let tag = key
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(&head[HEADER_LEN..]), &full_aad, body)
            .expect("XChaCha20-Poly1305 encrypts any length this process can hold");
        out.extend_from_slice(&tag);
        out
    }

    /// Verifies and decrypts a blob made by [`Sealer::seal`] with the same
    /// purpose and `aad`.
    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if blob.len() < OVERHEAD {
            return Err(OpenError::Malformed);
        }
        if blob[0] != FORMAT_VERSION {
            return Err(OpenError::UnknownVersion(blob[0]));
        }
        let id = KeyId(u32::from_be_bytes([blob[1], blob[2], blob[3], blob[4]]));
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(OpenError::WrongKey(id))?;
        let full_aad = Self::full_aad(&blob[..HEADER_LEN], aad);
        let nonce = XNonce::from_slice(&blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let (body, tag) = blob[HEADER_LEN + NONCE_LEN..].split_at(blob.len() - OVERHEAD);
        let mut plain = body.to_vec();
        key.aead
            .decrypt_in_place_detached(nonce, &full_aad, &mut plain, Tag::from_slice(tag))
            .map_err(|_| OpenError::Tampered)?;
        Ok(plain)
    }

    /// [`Sealer::seal`], encoded base64url without padding.
    pub fn seal_b64(&self, plaintext: &[u8], aad: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(plaintext, aad))
    }

    /// Decodes base64url (no padding) and opens. A text longer than
    /// `max_len` characters is refused before decoding.
    pub fn open_b64(&self, text: &str, aad: &[u8], max_len: usize) -> Result<Vec<u8>, OpenError> {
        if text.len() > max_len {
            return Err(OpenError::Oversize {
                len: text.len(),
                limit: max_len,
            });
        }
        let blob = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| OpenError::Malformed)?;
        self.open(&blob, aad)
    }

    fn full_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
        // Length-prefix the caller's part so (header, aad) pairs cannot collide.
        let mut v = Vec::with_capacity(header.len() + 8 + aad.len());
        v.extend_from_slice(header);
        v.extend_from_slice(&(aad.len() as u64).to_be_bytes());
        v.extend_from_slice(aad);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Key;
    use proptest::prelude::*;

    fn ring(seed: u8) -> Keyring {
        Keyring::from_keys(vec![Key::from_bytes([seed; 32])]).unwrap()
    }

    #[test]
    fn overhead_is_fixed_and_small() {
        let s = Sealer::new(&ring(1), Purpose::Replica);
        assert_eq!(s.seal(b"", b"").len(), OVERHEAD);
        assert_eq!(s.seal(&[0; 1000], b"x").len(), 1000 + OVERHEAD);
        const { assert!(OVERHEAD < 48) };
    }

    #[test]
    fn purposes_are_separated() {
        let r = ring(2);
        let blob = Sealer::new(&r, Purpose::Affinity).seal(b"b1", b"");
        assert_eq!(
            Sealer::new(&r, Purpose::Replica).open(&blob, b""),
            Err(OpenError::Tampered)
        );
    }

    #[test]
    fn rotation_old_key_still_opens_new_key_seals() {
        let old = ring(3);
        let blob = Sealer::new(&old, Purpose::Replica).seal(b"cart", b"sid");
        let rotated =
            Keyring::from_keys(vec![Key::from_bytes([4; 32]), Key::from_bytes([3; 32])]).unwrap();
        let s = Sealer::new(&rotated, Purpose::Replica);
        assert_eq!(s.open(&blob, b"sid").unwrap(), b"cart");
        assert_eq!(s.sealing_key_id(), Key::from_bytes([4; 32]).id());
        // A keyring without the old key reports the wrong key, not tampering.
        let only_new = Sealer::new(&ring(4), Purpose::Replica);
        assert!(matches!(
            only_new.open(&blob, b"sid"),
            Err(OpenError::WrongKey(_))
        ));
    }

    #[test]
    fn malformed_and_oversize_inputs() {
        let s = Sealer::new(&ring(5), Purpose::Replica);
        assert_eq!(s.open(b"", b""), Err(OpenError::Malformed));
        assert_eq!(s.open_b64("!!!", b"", 100), Err(OpenError::Malformed));
        assert!(matches!(
            s.open_b64(&"A".repeat(101), b"", 100),
            Err(OpenError::Oversize {
                len: 101,
                limit: 100
            })
        ));
        let mut blob = s.seal(b"x", b"");
        blob[0] = 9;
        assert_eq!(s.open(&blob, b""), Err(OpenError::UnknownVersion(9)));
    }

    proptest! {
        #[test]
        fn round_trips(plain in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = Sealer::new(&ring(6), Purpose::Replica);
            let text = s.seal_b64(&plain, &aad);
            prop_assert_eq!(s.open_b64(&text, &aad, usize::MAX).unwrap(), plain);
        }

        #[test]
        fn any_bit_flip_is_rejected(plain in proptest::collection::vec(any::<u8>(), 0..256), bit in any::<usize>()) {
            let s = Sealer::new(&ring(7), Purpose::Replica);
            let mut blob = s.seal(&plain, b"sid");
            let bit = bit % (blob.len() * 8);
            blob[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(s.open(&blob, b"sid").is_err());
        }

        #[test]
        fn any_truncation_is_rejected(plain in proptest::collection::vec(any::<u8>(), 0..256), cut in any::<usize>()) {
            let s = Sealer::new(&ring(8), Purpose::Replica);
            let blob = s.seal(&plain, b"sid");
            let cut = cut % blob.len();
            prop_assert!(s.open(&blob[..cut], b"sid").is_err());
        }
    }
}
