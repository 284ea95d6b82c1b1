//! The opening handshake (RFC 6455 §4): server-side request parsing and responses, client-side
//! request building and response validation.
//!
//! Everything is sans-IO and allocation-free on the accept path: [`parse_request`] borrows every
//! string from the receive buffer, and the writers append to a caller-owned `Vec<u8>`.
//!
//! Server side, per connection:
//! 1. After each receive, call [`parse_request`] on everything received so far. [`Parse::Partial`]
//!    means "receive more"; an error carries its HTTP status in [`Error::reply`](crate::Error::reply), and
//!    [`write_error_response`] writes the answer.
//! 2. With [`Parse::Complete`], route on [`Request::is_upgrade`]: plain HTTP goes to the HTTP hook
//!    (answer with [`write_response`]); an upgrade is checked with [`Request::validate_upgrade`],
//!    which returns the client's key.
//! 3. Answer with [`write_accept_response`]; the WebSocket stream starts at [`Request::head_len`].
//!
//! Client side: [`ClientHandshake::write_request`], then [`ClientHandshake::parse_response`] after
//! each receive until it returns [`ResponseParse::Complete`].
//!
//! ```
//! use ringws_protocol::handshake::*;
//!
//! let client = ClientHandshake::with_key(*b"the sample nonce");
//! let mut request = Vec::new();
//! client.write_request(&mut request, "example.com", "/chat", &["chat"], None, &[]);
//!
//! let Parse::Complete(req) = parse_request(&request, DEFAULT_MAX_HEADER_BYTES)? else {
//!     unreachable!("the whole request is there")
//! };
//! assert!(req.is_upgrade());
//! let key = req.validate_upgrade()?;
//! assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
//!
//! let mut response = Vec::new();
//! write_accept_response(&mut response, key, req.subprotocols().next(), None);
//! let ResponseParse::Complete(resp) =
//!     client.parse_response(&response, &["chat"], None, DEFAULT_MAX_HEADER_BYTES)?
//! else {
//!     unreachable!("the whole response is there")
//! };
//! assert_eq!(resp.protocol, Some("chat"));
//! # Ok::<(), ringws_protocol::Error>(())
//! ```

mod accept;
mod client;
mod fields;
mod request;
mod response;
mod tokens;

pub use accept::accept_key;
pub use client::{ClientHandshake, Response, ResponseParse};
pub use request::{Parse, Request, is_uri_scheme, parse_request};
pub use response::{
    error_status, reason_phrase, write_accept_response, write_error_response, write_response,
};
pub use tokens::{ExtensionOffer, is_token};

/// Default limit on the size of a request's (or response's) header block, terminator included.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8192;

/// The most header lines a request or response may carry; above it the request is answered with 431.
///
/// Browsers send 10 to 20; the bound keeps a peer from making the parser do unbounded work per call
/// (10,000 one-byte headers fit in a large header limit).
pub const MAX_HEADERS: usize = 100;

/// Test support shared by the request and response tests.
#[cfg(test)]
mod test_heads {
    /// An HTTP head: `start` line, then `headers` except the one starting with `replace`, then
    /// `line` (a replacement or an extra header) if given.
    pub(super) fn head_with(
        start: &str,
        headers: &[&str],
        replace: &str,
        line: Option<&str>,
    ) -> String {
        let mut head = format!("{start}\r\n");
        for h in headers.iter().filter(|h| !h.starts_with(replace)) {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if let Some(line) = line {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }
}
