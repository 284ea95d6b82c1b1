//! The opening handshake (RFC 6455 §4): server-side request parsing and responses, client-side
//! request building and response validation.
// STUB: signatures fixed, bodies being implemented.

use crate::error::Error;

/// Default limit on the size of a request's header block.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8192;

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (base64 of SHA-1 of key + GUID).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let _ = key;
    todo!()
}

/// The outcome of [`parse_request`].
#[derive(Debug)]
pub enum Parse<'a> {
    /// No `\r\n\r\n` yet and still under the size limit: call again with more bytes.
    Partial,
    /// A complete request head.
    Complete(Request<'a>),
}

/// A parsed HTTP/1.1 request head, borrowed from the input.
#[derive(Debug)]
pub struct Request<'a> {
    _buf: &'a [u8],
}

/// Parses a request head from `buf`.
pub fn parse_request(buf: &[u8], max_header_bytes: usize) -> Result<Parse<'_>, Error> {
    let _ = (buf, max_header_bytes);
    todo!()
}
