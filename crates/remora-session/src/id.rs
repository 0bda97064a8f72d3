//! Session identifiers and random tokens.
//!
//! An ID is 192 bits from the operating system's CSPRNG, encoded base64url
//! without padding (32 characters). Anything else presented by a client is
//! rejected as malformed before it reaches a store.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Number of random bytes in a session ID (192 bits).
pub const ID_BYTES: usize = 24;
/// Length of an encoded session ID.
pub const ID_LEN: usize = 32;

/// Fills `buf` from the OS CSPRNG.
///
/// Failing to read the OS generator is not recoverable for a security
/// component: there is no safe fallback, so this aborts the request.
fn fill(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the OS random number generator failed");
}

/// A new random session ID (192 bits, base64url, 32 characters).
pub fn new_id() -> String {
    let mut b = [0u8; ID_BYTES];
    fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A new random token of 256 bits (base64url, 43 characters), used for CSRF.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Whether `s` has the shape of an ID this crate generates.
pub fn is_well_formed(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(is_well_formed(&a));
        assert_ne!(a, b);
        assert!(!is_well_formed("short"));
        assert!(!is_well_formed(&format!("{}=", &a[..31])));
        assert!(!is_well_formed(&format!("{a}x")));
    }
}
