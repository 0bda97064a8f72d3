//! Sealing for Remora: the only crate that touches keys and AEAD.
//!
//! A [`Keyring`] holds one or more 256-bit master keys. The first key seals;
//! every key opens, so keys rotate without invalidating what clients hold.
//! A [`Sealer`] derives, with HKDF-SHA256, one key per [`Purpose`] from each
//! master key, so an affinity cookie can never be opened as a replica and the
//! other way round.
//!
//! Blobs are AES-256-GCM-SIV (hardware AES and carry-less multiplication,
//! detected at run time; nonce-misuse resistant, so random 96-bit nonces are
//! safe at internet scale) with this layout, 33 bytes over the plaintext:
//!
//! ```text
//! version 2 (1 byte) | key id (4 bytes, big endian) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! Blobs of format version 1, written by earlier builds, still open:
//! XChaCha20-Poly1305 with a 24-byte nonce in place of the 12-byte one
//! (45 bytes over the plaintext), under its own derived key.
//!
//! The header is authenticated together with the caller's associated data.
//! [`Sealer::open`] checks length and tag before returning a single byte of
//! plaintext: callers never parse unauthenticated input.
//!
//! ```
//! use remora_seal::{Keyring, Purpose, Sealer};
//! let ring = Keyring::generate();
//! let sealer = Sealer::new(&ring, Purpose::Replica);
//! let blob = sealer.seal_b64(b"hello", b"session-id");
//! assert_eq!(sealer.open_b64(&blob, b"session-id", 1024).unwrap(), b"hello");
//! assert!(sealer.open_b64(&blob, b"other-id", 1024).is_err());
//! ```

mod keyring;
mod seal;

pub use keyring::{Key, KeyId, Keyring, KeyringError, generate_key_b64};
pub use seal::{
    FORMAT_VERSION, LEGACY_FORMAT_VERSION, OVERHEAD, OpenError, Purpose, Sealer, encode_b64,
};
