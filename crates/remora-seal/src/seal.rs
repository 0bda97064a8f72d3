//! Per-purpose AEAD sealing and opening.
//!
//! Two blob formats exist. Version 2 (what [`Sealer`] writes) is
//! AES-256-GCM-SIV with a 96-bit random nonce; version 1 (written by earlier
//! builds) is XChaCha20-Poly1305 with a 192-bit random nonce. Both open, so an
//! upgrade invalidates nothing that clients hold.

use std::convert::Infallible;
use std::ops::Range;

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use base64_simd::URL_SAFE_NO_PAD;
use chacha20poly1305::XChaCha20Poly1305;
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;

use crate::keyring::{KeyId, Keyring};

/// The blob format version [`Sealer`] writes in the first byte:
/// AES-256-GCM-SIV.
pub const FORMAT_VERSION: u8 = 2;
/// The earlier blob format version (XChaCha20-Poly1305): still opened,
/// never written.
pub const LEGACY_FORMAT_VERSION: u8 = 1;
/// Format version and key id.
const HEADER_LEN: usize = 1 + 4;
/// AES-GCM-SIV nonce (version 2).
const NONCE_LEN: usize = 12;
/// XChaCha20-Poly1305 nonce (version 1).
const LEGACY_NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Header and nonce: where the ciphertext starts in a version 2 blob.
const PREFIX_LEN: usize = HEADER_LEN + NONCE_LEN;
/// Bytes a sealed blob adds to its plaintext (before base64): 1 version +
/// 4 key id + 12 nonce + 16 tag.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// What a version 1 blob adds to its plaintext.
const LEGACY_OVERHEAD: usize = HEADER_LEN + LEGACY_NONCE_LEN + TAG_LEN;
/// Associated data up to this length is assembled on the stack.
const INLINE_AAD: usize = 128;

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

/// The keys one master key yields for one purpose. Both AEADs hold their key
/// schedules, so nothing is derived per call.
struct PurposeKey {
    id: KeyId,
    /// Version 2: seals and opens.
    aead: Aes256GcmSiv,
    /// Version 1: opens only.
    legacy: XChaCha20Poly1305,
}

/// Derives a 256-bit key for `info` from a master key with HKDF-SHA256.
fn derive(master: &[u8], salt: &[u8], info: &str) -> zeroize::Zeroizing<[u8; 32]> {
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), master)
        .expand(info.as_bytes(), okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
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
    /// Derives the purpose keys (one per format version) from every key of
    /// the keyring.
    pub fn new(ring: &Keyring, purpose: Purpose) -> Self {
        let label = purpose.label();
        let keys = ring
            .keys()
            .iter()
            .map(|k| {
                // Version 1's derivation must stay exactly as it was, or old
                // blobs stop opening.
                let v1 = derive(k.bytes(), b"remora-seal v1", &format!("remora/{label}"));
                let v2 = derive(
                    k.bytes(),
                    b"remora-seal v2",
                    &format!("remora/{label}/aes-256-gcm-siv"),
                );
                PurposeKey {
                    id: k.id(),
                    aead: Aes256GcmSiv::new((&*v2).into()),
                    legacy: XChaCha20Poly1305::new((&*v1).into()),
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
        let sealed = self.seal_with(aad, plaintext.len(), |buf| {
            buf.extend_from_slice(plaintext);
            Ok::<(), Infallible>(())
        });
        match sealed {
            Ok(blob) => blob,
            Err(never) => match never {},
        }
    }

    /// Seals the plaintext that `write` appends to the buffer it is given,
    /// without copying it: the buffer becomes the blob. `size_hint` is the
    /// expected plaintext length (room is reserved for it and the overhead).
    /// Bytes already in the buffer when `write` is called are reserved for the
    /// header and overwritten; `write` only appends. An error from `write`
    /// is returned as is and nothing is sealed.
    pub fn seal_with<E>(
        &self,
        aad: &[u8],
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(OVERHEAD.saturating_add(size_hint));
        out.resize(PREFIX_LEN, 0);
        write(&mut out)?;
        if out.len() < PREFIX_LEN {
            out.resize(PREFIX_LEN, 0);
        }
        let key = &self.keys[0];
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[0] = FORMAT_VERSION;
        prefix[1..HEADER_LEN].copy_from_slice(&key.id.0.to_be_bytes());
        // The thread's CSPRNG (ChaCha, seeded and periodically reseeded from
        // the operating system): no system call per seal.
        rand::rng().fill_bytes(&mut prefix[HEADER_LEN..]);
        out[..PREFIX_LEN].copy_from_slice(&prefix);
        let tag = with_full_aad(&prefix[..HEADER_LEN], aad, |full_aad| {
            key.aead.encrypt_in_place_detached(
                (&prefix[HEADER_LEN..]).into(),
                full_aad,
                &mut out[PREFIX_LEN..],
            )
        })
        .expect("AES-256-GCM-SIV encrypts any length below 64 GiB");
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Verifies and decrypts a blob made by [`Sealer::seal`] (or by an earlier
    /// build, format version 1) with the same purpose and `aad`.
    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut buf = blob.to_vec();
        let range = self.open_range(&mut buf, aad)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }

    /// [`Sealer::open`] without a copy: decrypts inside `blob` and returns
    /// the plaintext, a part of it. On error the content of `blob` is
    /// unspecified (never plaintext that failed authentication).
    pub fn open_in_place<'b>(&self, blob: &'b mut [u8], aad: &[u8]) -> Result<&'b [u8], OpenError> {
        let range = self.open_range(blob, aad)?;
        Ok(&blob[range])
    }

    /// [`Sealer::seal`], encoded base64url without padding.
    pub fn seal_b64(&self, plaintext: &[u8], aad: &[u8]) -> String {
        encode_b64(&self.seal(plaintext, aad))
    }

    /// Decodes base64url (no padding) and opens. A text longer than
    /// `max_len` characters is refused before decoding.
    pub fn open_b64(&self, text: &str, aad: &[u8], max_len: usize) -> Result<Vec<u8>, OpenError> {
        let mut buf = Vec::new();
        let range = self.open_b64_range(text, aad, max_len, &mut buf)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }

    /// [`Sealer::open_b64`] into a buffer the caller keeps and reuses: `buf`
    /// is cleared, receives the decoded blob, and the plaintext returned is a
    /// part of it.
    pub fn open_b64_into<'b>(
        &self,
        text: &str,
        aad: &[u8],
        max_len: usize,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], OpenError> {
        let range = self.open_b64_range(text, aad, max_len, buf)?;
        Ok(&buf[range])
    }

    fn open_b64_range(
        &self,
        text: &str,
        aad: &[u8],
        max_len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Range<usize>, OpenError> {
        if text.len() > max_len {
            return Err(OpenError::Oversize {
                len: text.len(),
                limit: max_len,
            });
        }
        buf.clear();
        URL_SAFE_NO_PAD
            .decode_append(text.as_bytes(), buf)
            .map_err(|_| OpenError::Malformed)?;
        self.open_range(buf, aad)
    }

    /// Authenticates and decrypts `blob` in place; returns where the
    /// plaintext lies in it.
    fn open_range(&self, blob: &mut [u8], aad: &[u8]) -> Result<Range<usize>, OpenError> {
        if blob.len() < OVERHEAD {
            return Err(OpenError::Malformed);
        }
        let version = blob[0];
        let nonce_len = match version {
            FORMAT_VERSION => NONCE_LEN,
            LEGACY_FORMAT_VERSION => LEGACY_NONCE_LEN,
            other => return Err(OpenError::UnknownVersion(other)),
        };
        let overhead = if version == FORMAT_VERSION {
            OVERHEAD
        } else {
            LEGACY_OVERHEAD
        };
        if blob.len() < overhead {
            return Err(OpenError::Malformed);
        }
        let id = KeyId(u32::from_be_bytes([blob[1], blob[2], blob[3], blob[4]]));
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(OpenError::WrongKey(id))?;
        let (prefix, rest) = blob.split_at_mut(HEADER_LEN + nonce_len);
        let (header, nonce) = prefix.split_at(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let verified = with_full_aad(header, aad, |full_aad| {
            if version == FORMAT_VERSION {
                key.aead
                    .decrypt_in_place_detached(nonce.into(), full_aad, body, (&*tag).into())
            } else {
                key.legacy
                    .decrypt_in_place_detached(nonce.into(), full_aad, body, (&*tag).into())
            }
        });
        verified.map_err(|_| OpenError::Tampered)?;
        Ok(HEADER_LEN + nonce_len..blob.len() - TAG_LEN)
    }
}

/// A sealed blob as text: base64url without padding, the form
/// [`Sealer::open_b64`] reads. Uses the SIMD instructions the CPU has
/// (detected at run time; the `base64-simd` crate), several times faster
/// than a table per byte on replica-sized blobs.
pub fn encode_b64(blob: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode_to_string(blob)
}

/// Calls `f` with the associated data the AEAD authenticates: the blob
/// header, then the caller's part prefixed with its length (so no two
/// (header, aad) pairs collide). Short ones are assembled on the stack.
fn with_full_aad<R>(header: &[u8], aad: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let len = header.len() + 8 + aad.len();
    let fill = |buf: &mut [u8]| {
        let (h, rest) = buf.split_at_mut(header.len());
        h.copy_from_slice(header);
        let (n, a) = rest.split_at_mut(8);
        n.copy_from_slice(&(aad.len() as u64).to_be_bytes());
        a.copy_from_slice(aad);
    };
    if len <= INLINE_AAD {
        let mut buf = [0u8; INLINE_AAD];
        fill(&mut buf[..len]);
        f(&buf[..len])
    } else {
        let mut buf = vec![0u8; len];
        fill(&mut buf);
        f(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Key;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

    /// Written by the version 1 build (XChaCha20-Poly1305) with master key
    /// `[0x11; 32]`: purpose replica, aad `sid-fixture`, plaintext
    /// `remora v1 fixture`; and purpose affinity, aad `pool`, `affinity v1`.
    const V1_REPLICA: &str =
        "Ab2XityBJvWgg9naptSF2EtyaLvuLsZ8Zhm4E0uQGZlJTP4HmmxgWb_TvYxN67FureyqxOw0eSQzsn0KK0k";
    const V1_AFFINITY: &str =
        "Ab2Xitxmg_nTZ8vHSZoPcEo2Bq-Hd9U0Qu2mLpAENpgOigI7mHV5XfTeYdVEIJaI6Pyxgi38wtM";

    #[test]
    fn opens_version_1_blobs_of_earlier_builds() {
        let r = ring(0x11);
        let s = Sealer::new(&r, Purpose::Replica);
        assert_eq!(
            s.open_b64(V1_REPLICA, b"sid-fixture", 1024).unwrap(),
            b"remora v1 fixture"
        );
        let a = Sealer::new(&r, Purpose::Affinity);
        assert_eq!(
            a.open_b64(V1_AFFINITY, b"pool", 1024).unwrap(),
            b"affinity v1"
        );
        // Still bound to purpose, aad and content.
        assert_eq!(
            a.open_b64(V1_REPLICA, b"sid-fixture", 1024),
            Err(OpenError::Tampered)
        );
        assert_eq!(
            s.open_b64(V1_REPLICA, b"sid-other", 1024),
            Err(OpenError::Tampered)
        );
        let mut blob = URL_SAFE_NO_PAD.decode(V1_REPLICA).unwrap();
        assert_eq!(blob[0], LEGACY_FORMAT_VERSION);
        assert_eq!(blob.len(), b"remora v1 fixture".len() + LEGACY_OVERHEAD);
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(s.open(&blob, b"sid-fixture"), Err(OpenError::Tampered));
        // Long enough for version 2, too short for version 1.
        assert_eq!(
            s.open(&blob[..LEGACY_OVERHEAD - 1], b"sid-fixture"),
            Err(OpenError::Malformed)
        );
        // Another keyring: the key id is unknown.
        assert!(matches!(
            Sealer::new(&ring(0x12), Purpose::Replica).open_b64(V1_REPLICA, b"sid-fixture", 1024),
            Err(OpenError::WrongKey(_))
        ));
    }

    #[test]
    fn seals_version_2_with_fresh_nonces() {
        let s = Sealer::new(&ring(0x13), Purpose::Replica);
        let a = s.seal(b"same", b"sid");
        let b = s.seal(b"same", b"sid");
        assert_eq!(a[0], FORMAT_VERSION);
        assert_eq!(&a[1..HEADER_LEN], &s.sealing_key_id().0.to_be_bytes());
        assert_ne!(a[HEADER_LEN..PREFIX_LEN], b[HEADER_LEN..PREFIX_LEN]);
        assert_ne!(a, b);
        // Relabelled as version 1, a version 2 blob does not open.
        let mut relabelled = a.clone();
        relabelled[0] = LEGACY_FORMAT_VERSION;
        relabelled.resize(LEGACY_OVERHEAD + 4, 0);
        assert!(s.open(&relabelled, b"sid").is_err());
    }

    #[test]
    fn in_place_and_buffered_opening_agree() {
        let s = Sealer::new(&ring(0x14), Purpose::Replica);
        let mut blob = s.seal(b"payload", b"sid");
        let text = URL_SAFE_NO_PAD.encode(&blob);
        let mut buf = vec![1, 2, 3];
        assert_eq!(
            s.open_b64_into(&text, b"sid", 1024, &mut buf).unwrap(),
            b"payload"
        );
        assert_eq!(
            s.open_b64_into("AAAA", b"sid", 1024, &mut buf),
            Err(OpenError::Malformed)
        );
        assert_eq!(s.open_in_place(&mut blob, b"sid").unwrap(), b"payload");
        let mut v1 = URL_SAFE_NO_PAD.decode(V1_REPLICA).unwrap();
        assert_eq!(
            Sealer::new(&ring(0x11), Purpose::Replica)
                .open_in_place(&mut v1, b"sid-fixture")
                .unwrap(),
            b"remora v1 fixture"
        );
    }

    #[test]
    fn seal_with_appends_in_place_and_passes_errors_on() {
        let s = Sealer::new(&ring(0x15), Purpose::Replica);
        let blob = s
            .seal_with(b"sid", 3, |buf| {
                buf.extend_from_slice(b"abc");
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(blob.len(), 3 + OVERHEAD);
        assert_eq!(s.open(&blob, b"sid").unwrap(), b"abc");
        assert_eq!(s.seal_with(b"sid", 0, |_| Err("no")), Err("no"));
        // A writer that cuts into the reserved header seals an empty plaintext.
        let blob = s
            .seal_with(b"sid", 0, |buf| {
                buf.clear();
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(s.open(&blob, b"sid").unwrap(), b"");
    }

    #[test]
    fn long_associated_data_round_trips() {
        let s = Sealer::new(&ring(0x16), Purpose::Replica);
        let aad = vec![7u8; INLINE_AAD * 3];
        let blob = s.seal(b"x", &aad);
        assert_eq!(s.open(&blob, &aad).unwrap(), b"x");
        let mut other = aad.clone();
        other[INLINE_AAD * 2] = 8;
        assert_eq!(s.open(&blob, &other), Err(OpenError::Tampered));
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

    const URL_SAFE_ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    proptest! {
        /// The SIMD codec writes what the `base64` crate writes, and reads
        /// exactly what it reads: no padding, no non-zero trailing bits,
        /// nothing outside the URL-safe alphabet.
        #[test]
        fn b64_agrees_with_the_base64_crate(blob in proptest::collection::vec(any::<u8>(), 0..200), text in "[A-Za-z0-9_=+/ -]{0,40}") {
            let encoded = encode_b64(&blob);
            prop_assert_eq!(&encoded, &URL_SAFE_NO_PAD.encode(&blob));
            // Every last character: only the canonical one decodes.
            let mut texts = vec![encoded.clone(), text];
            if let Some(stem) = encoded.get(..encoded.len().saturating_sub(1)) {
                texts.extend(URL_SAFE_ALPHABET.iter().map(|&c| format!("{stem}{}", char::from(c))));
            }
            for t in texts.iter().map(String::as_str) {
                let mut ours = Vec::new();
                let ours = base64_simd::URL_SAFE_NO_PAD.decode_append(t.as_bytes(), &mut ours).map(|()| ours);
                prop_assert_eq!(ours.ok(), URL_SAFE_NO_PAD.decode(t).ok(), "{:?}", t);
            }
        }

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
