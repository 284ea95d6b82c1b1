//! `Sec-WebSocket-Key` and `Sec-WebSocket-Accept` (RFC 6455 §4.1, §4.2.2).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: the base64 of SHA-1 of the key (as
/// sent, not decoded) followed by the RFC's GUID.
///
/// The result is ASCII; `std::str::from_utf8` on it never fails.
///
/// ```
/// use ringws_protocol::handshake::accept_key;
/// assert_eq!(&accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    let mut out = [0u8; 28];
    // 20 bytes encode to exactly 28 characters with padding, so the slice always fits.
    let written = STANDARD.encode_slice(digest, &mut out);
    debug_assert_eq!(written, Ok(28));
    out
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: the canonical base64 of exactly 16 bytes, that is
/// 24 characters ending in `==` whose padding bits are zero (RFC 6455 §4.2.1 item 5).
pub(super) fn is_valid_key(key: &str) -> bool {
    // The decoder's length estimate for 24 characters is 18 bytes; it writes 16 for a valid key.
    let mut raw = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut raw) == Ok(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_vector() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn key_validity() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key("AAAAAAAAAAAAAAAAAAAAAA=="));
        // 17, 18 and 15 bytes; unpadded; non-canonical padding bits; bad alphabet; wrong length.
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZT8="));
        assert!(!is_valid_key("eHh4eHh4eHh4eHh4eHh4eHh4"));
        assert!(!is_valid_key("eHh4eHh4eHh4eHh4eHh4"));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZ-=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ=== "));
        assert!(!is_valid_key(""));
    }
}
