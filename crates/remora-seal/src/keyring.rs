//! Master keys: loading, generating and identifying them.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a master key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// A 256-bit master key. Zeroed on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).expect("the operating system CSPRNG is unavailable");
        Self(bytes)
    }

    /// Parses a base64url key (padding optional), as printed by `remora keygen`.
    pub fn from_b64(text: &str) -> Result<Self, KeyringError> {
        let text = text.trim().trim_end_matches('=');
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|source| KeyringError::Base64 { source })?;
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyringError::Length { len: b.len() })?;
        Ok(Self(bytes))
    }

    /// The key id: the first four bytes of SHA-256 over a fixed label and the
    /// key. Every instance that shares a key computes the same id, so the id
    /// needs no configuration and reveals nothing about the key.
    pub fn id(&self) -> KeyId {
        let mut h = Sha256::new();
        h.update(b"remora key id v1\0");
        h.update(self.0);
        let d = h.finalize();
        KeyId(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

/// Identifies a master key inside a sealed blob's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Errors from loading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The key is not valid base64url.
    #[error("key is not valid base64url")]
    Base64 {
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The key decodes to the wrong number of bytes.
    #[error(
        "key is {len} bytes long; a key must be exactly 32 bytes (generate one with `remora keygen`)"
    )]
    Length {
        /// The decoded length.
        len: usize,
    },
    /// A line of a keyring file is not a key.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The keyring file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with the line.
        #[source]
        source: Box<KeyringError>,
    },
    /// The keyring holds no key.
    #[error(
        "{path}: the keyring holds no key (one base64url key a line; generate one with `remora keygen`)"
    )]
    Empty {
        /// The keyring file.
        path: PathBuf,
    },
    /// Two keys in one keyring have the same id.
    #[error("{path}:{line}: key duplicates an earlier key")]
    Duplicate {
        /// The keyring file.
        path: PathBuf,
        /// One-based line number of the second copy.
        line: usize,
    },
    /// The keyring file could not be read.
    #[error("cannot read keyring {path}")]
    Io {
        /// The keyring file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An ordered set of master keys: the first seals, all open.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<Key>,
    generated: bool,
}

impl Keyring {
    /// A keyring of one fresh random key. Instances that do not share a
    /// keyring cannot open each other's blobs: use only for a single instance.
    pub fn generate() -> Self {
        Self {
            keys: vec![Key::generate()],
            generated: true,
        }
    }

    /// A keyring from keys; the first seals. Returns `None` when empty.
    pub fn from_keys(keys: Vec<Key>) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        Some(Self {
            keys,
            generated: false,
        })
    }

    /// Parses keyring text: one base64url key a line; blank lines and lines
    /// starting with `#` are ignored. `path` is used only in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyringError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = Key::from_b64(line).map_err(|e| KeyringError::Line {
                path: path.to_owned(),
                line: i + 1,
                source: Box::new(e),
            })?;
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(KeyringError::Duplicate {
                    path: path.to_owned(),
                    line: i + 1,
                });
            }
            keys.push(key);
        }
        Self::from_keys(keys).ok_or_else(|| KeyringError::Empty {
            path: path.to_owned(),
        })
    }

    /// Reads and parses a keyring file.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The key that seals.
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// All keys, primary first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// True when this keyring was generated at start rather than loaded:
    /// callers warn that several instances must share one.
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

/// A fresh key, base64url without padding: what `remora keygen` prints.
pub fn generate_key_b64() -> String {
    URL_SAFE_NO_PAD.encode(Key::generate().bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyring_with_comments_and_rotation_order() {
        let a = generate_key_b64();
        let b = generate_key_b64();
        let text = format!("# current\n{a}\n\n# previous\n{b}\n");
        let ring = Keyring::parse(&text, Path::new("k")).unwrap();
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.primary().id(), Key::from_b64(&a).unwrap().id());
        assert!(!ring.is_generated());
    }

    #[test]
    fn names_the_bad_line() {
        let a = generate_key_b64();
        let err = Keyring::parse(&format!("{a}\nnot-a-key!\n"), Path::new("ring")).unwrap_err();
        assert!(err.to_string().starts_with("ring:2:"), "{err}");
        let err = Keyring::parse("AAAA\n", Path::new("ring")).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let err = Keyring::parse(&format!("{a}\n{a}\n"), Path::new("ring")).unwrap_err();
        assert!(matches!(err, KeyringError::Duplicate { line: 2, .. }));
        let err = Keyring::parse("# nothing\n", Path::new("ring")).unwrap_err();
        assert!(matches!(err, KeyringError::Empty { .. }));
    }

    #[test]
    fn keygen_round_trips_and_padding_is_optional() {
        let k = generate_key_b64();
        assert_eq!(k.len(), 43);
        let id = Key::from_b64(&k).unwrap().id();
        assert_eq!(Key::from_b64(&format!("{k}=")).unwrap().id(), id);
    }

    #[test]
    fn debug_never_prints_key_material() {
        let k = Key::from_bytes([7; 32]);
        let shown = format!("{k:?}");
        assert!(shown.starts_with("Key(") && shown.len() == 13, "{shown}");
    }
}
