//! permessage-deflate (RFC 7692): negotiation, per-message compression and bounded inflation.
//!
//! Off unless the engine is given a [`DeflateConfig`]. Then, per connection:
//! 1. **Handshake.** Server: [`negotiate`] over [`Request::extensions`], then
//!    [`ContextBudget::admit`], and the [`Params`] `Display` is the `Sec-WebSocket-Extensions`
//!    response value. Client: send [`DeflateConfig::offer`], check the answer with
//!    [`Params::from_response`].
//! 2. **Receiving.** [`Receiver::with_deflate`] with [`Params::decompressor`]: RSV1 is then allowed
//!    on the first frame of a data message, and compressed messages are inflated chunk by chunk as
//!    they arrive, the size limit checked while inflating (1009), never after.
//! 3. **Sending.** Messages shorter than [`DeflateConfig::min_compress_size`] go uncompressed. The
//!    others go through a [`Compressor`]: the worker's shared one where the sending direction has no
//!    context takeover ([`Compressor::can_serve`]), else the connection's own ([`Params::compressor`]).
//!    [`Compressor::write_frame`] writes the whole frame with RSV1; a fragmented send uses
//!    [`Compressor::compress_part`] and sets RSV1 on the first frame only.
//!
//! # Memory per connection
//! Measured with flate2 1.1 on zlib-rs 0.6 (`cargo run --release -p ringws-protocol --example
//! deflate_bench`, which counts allocations); the level (1, 6, 9) changes nothing:
//!
//! | context | window bits | bytes |
//! |---|---|---|
//! | compressor ([`deflate_context_bytes`]) | 9 / 10 / 12 / 15 | 251,008 / 253,056 / 265,344 / 380,032 |
//! | decompressor ([`INFLATE_CONTEXT_BYTES`]) | any (zlib-rs always keeps a 32 KiB window) | 47,704 |
//!
//! What a connection holds between messages therefore depends on the agreed context takeover:
//! - server context takeover (`server_no_context_takeover` absent): its own compressor,
//!   ~250-380 KB. Without takeover (the default policy) the compressor is shared by the worker.
//! - client context takeover (`client_no_context_takeover` absent): a decompressor, ~47.7 KB, from
//!   the first compressed message on. Without takeover it exists only while a compressed message is
//!   being received.
//!
//! Both persistent costs are charged to a [`ContextBudget`] shared by all workers; once it is spent,
//! new connections are answered without context takeover, which costs them nothing between
//! messages.
//!
//! # Time per message
//! The same example runs a sans-IO echo on one core (receive, inflate, compress, frame), level 1,
//! JSON-like messages; messages per second on this 2-core box (shared, so ±20%):
//!
//! | size | plain | no takeover | default policy | takeover both ways |
//! |---|---|---|---|---|
//! | 128 B | 22.7 M | 228 k | 312 k | 1.28 M |
//! | 1 KiB | 10.4 M | 127 k | 149 k | 262 k |
//! | 16 KiB | 1.08 M | 22.7 k | 22.8 k | 24.4 k |
//! | 256 KiB | 67.6 k | 1.4 k | 1.2 k | 1.2 k |
//!
//! Without context takeover every message pays for a fresh compressor state (zlib clears its
//! 128 KiB hash table), a few microseconds that dominate small messages: hence
//! [`DeflateConfig::min_compress_size`]. The wire shrinks to 0.73 (128 B), 0.34 (1 KiB) and 0.2
//! (16 KiB and up) of the message size without takeover; with it, to 0.26, 0.21 and 0.2.

mod codec;
mod negotiate;
#[cfg(test)]
mod stream_tests;

pub use codec::{Compressor, Decompressor, MIN_WINDOW_BITS, RATIO_GUARD_FLOOR, TAIL};
pub use negotiate::{Direction, EXTENSION_NAME, Params, negotiate};

use crate::frame::Role;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(doc)]
use crate::{Receiver, handshake::Request};

/// The policy for permessage-deflate, used by the server to answer offers and by the client to make
/// one. Window sizes are base-2 logarithms, clamped to 8..=15; the RFC parameter names are kept,
/// so `server_*` always means the server-to-client direction, whichever side we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// The largest window the server compresses with. Default 15.
    ///
    /// A server uses it unless the client asks for less; a client asks for it when below 15. At 8
    /// the server's messages go uncompressed (zlib cannot compress with an 8-bit window).
    pub server_max_window_bits: u8,
    /// The largest window the client compresses with. Default 15.
    ///
    /// A server asks a client for it when the client's offer allows (with `client_max_window_bits`);
    /// a client compresses with no more than it. A smaller window costs the client memory, not us
    /// (see the table above).
    pub client_max_window_bits: u8,
    /// The server starts every message with a fresh window. Default `true`: its compressor is then
    /// shared per worker instead of kept per connection (~250-380 KB each), and a publish is
    /// compressed once for every subscriber.
    pub server_no_context_takeover: bool,
    /// The client starts every message with a fresh window. Default `false`: the client's messages
    /// compress better, and the server keeps a ~47.7 KB decompressor per connection, within the
    /// [`ContextBudget`].
    pub client_no_context_takeover: bool,
    /// Compression level, 0 (store) to 9 (smallest). Default 1: on JSON-like messages it compresses
    /// 3-4x faster than level 6 for output ~30% larger (see the bench example).
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (RFC 7692 §6 allows it per message).
    /// Default 256 bytes: below that, compressing costs a few microseconds for a small gain.
    pub min_compress_size: usize,
    /// The inflate ratio guard: a received message that inflates past [`RATIO_GUARD_FLOOR`] bytes
    /// and to more than this many times its compressed size fails with 1009. Default `Some(256)`:
    /// ordinary text and JSON stay under 20, a decompression bomb runs at ~1000.
    pub max_inflate_ratio: Option<u32>,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            level: 1,
            min_compress_size: 256,
            max_inflate_ratio: Some(256),
        }
    }
}

impl DeflateConfig {
    /// Whether a message of `len` bytes should be compressed (it is not shorter than
    /// [`min_compress_size`](Self::min_compress_size)).
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.min_compress_size
    }
}

/// Bytes of one allocated [`Decompressor`] context (zlib-rs; the window size does not change it).
/// Measured, see the module documentation.
pub const INFLATE_CONTEXT_BYTES: usize = 47_704;

/// Bytes of one compressor context with a window of 2^`window_bits` bytes (zlib-rs, memLevel 8:
/// a fixed 248,960 bytes of hash table and buffers plus four bytes per window byte). Measured, see
/// the module documentation.
pub const fn deflate_context_bytes(window_bits: u8) -> usize {
    let bits = if window_bits < MIN_WINDOW_BITS {
        MIN_WINDOW_BITS
    } else if window_bits > 15 {
        15
    } else {
        window_bits
    };
    248_960 + (4 << bits)
}

impl Params {
    /// Bytes of compression context our side must keep per connection between messages, for our
    /// `role`: a compressor where our sending direction takes over its context, a decompressor
    /// where the receiving one does.
    pub fn persistent_bytes(&self, role: Role) -> usize {
        let sending = self.sending(role);
        let receiving = self.receiving(role);
        let compressor = if !sending.no_context_takeover && sending.can_compress() {
            deflate_context_bytes(sending.window_bits)
        } else {
            0
        };
        let decompressor = if receiving.no_context_takeover {
            0
        } else {
            INFLATE_CONTEXT_BYTES
        };
        compressor + decompressor
    }
}

/// A process-wide budget for compression contexts that persist per connection. Clones share it;
/// it is an atomic counter, safe to use from every worker.
///
/// ```
/// use ringws_protocol::deflate::{negotiate, ContextBudget, DeflateConfig};
/// use ringws_protocol::handshake::ExtensionOffer;
/// let config = DeflateConfig { server_no_context_takeover: false, ..DeflateConfig::default() };
/// let budget = ContextBudget::new(1 << 20); // room for two connections with takeover both ways
/// let offer = || ExtensionOffer::list("permessage-deflate; client_max_window_bits");
/// let mut held = Vec::new();
/// for _ in 0..3 {
///     let (params, reservation) = budget.admit(negotiate(offer(), &config).unwrap());
///     held.push((params.to_string(), reservation));
/// }
/// assert_eq!(held[0].0, "permessage-deflate");
/// assert_eq!(held[2].0, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
/// drop(held); // the connections closed: the budget is free again
/// assert_eq!(budget.used(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct ContextBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    used: AtomicUsize,
}

impl ContextBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Server side: reserves what `params` keeps per connection
    /// ([`Params::persistent_bytes`]); if that does not fit, answers without context takeover
    /// instead ([`Params::without_context_takeover`], which a server may always do) and reserves
    /// nothing. Keep the [`Reservation`] with the connection: dropping it returns the bytes.
    pub fn admit(&self, params: Params) -> (Params, Reservation) {
        let bytes = params.persistent_bytes(Role::Server);
        if bytes == 0 {
            return (params, Reservation::none());
        }
        let reserved = self
            .inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&u| u <= self.inner.limit)
            });
        match reserved {
            Ok(_) => (
                params,
                Reservation {
                    budget: Some(self.inner.clone()),
                    bytes,
                },
            ),
            Err(_) => (params.without_context_takeover(), Reservation::none()),
        }
    }
}

/// Bytes held in a [`ContextBudget`] for one connection, returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Option<Arc<BudgetInner>>,
    bytes: usize,
}

impl Reservation {
    /// A reservation of nothing (no persistent context).
    pub fn none() -> Self {
        Self {
            budget: None,
            bytes: 0,
        }
    }

    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::ExtensionOffer;

    #[test]
    fn persistent_bytes_per_mode() {
        let p = |snct, cnct, sw| Params {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sw,
            client_max_window_bits: None,
        };
        assert_eq!(p(true, true, None).persistent_bytes(Role::Server), 0);
        assert_eq!(
            p(true, false, None).persistent_bytes(Role::Server),
            INFLATE_CONTEXT_BYTES
        );
        assert_eq!(
            p(false, true, Some(10)).persistent_bytes(Role::Server),
            253_056
        );
        assert_eq!(
            p(false, false, None).persistent_bytes(Role::Server),
            380_032 + INFLATE_CONTEXT_BYTES
        );
        // An 8-bit server window sends uncompressed: no compressor to keep.
        assert_eq!(p(false, true, Some(8)).persistent_bytes(Role::Server), 0);
        // The client keeps the mirror image.
        assert_eq!(
            p(false, true, None).persistent_bytes(Role::Client),
            INFLATE_CONTEXT_BYTES
        );
        assert_eq!(deflate_context_bytes(9), 251_008);
        assert_eq!(deflate_context_bytes(12), 265_344);
        assert_eq!(deflate_context_bytes(3), deflate_context_bytes(9));
    }

    #[test]
    fn budget_falls_back_to_no_takeover_and_is_returned_on_drop() {
        let config = DeflateConfig {
            server_no_context_takeover: false,
            ..DeflateConfig::default()
        };
        let offer = || ExtensionOffer::list("permessage-deflate");
        let one = 380_032 + INFLATE_CONTEXT_BYTES;
        let budget = ContextBudget::new(one * 2 + 10);
        let (a, ra) = budget.admit(negotiate(offer(), &config).unwrap());
        let (b, rb) = budget.admit(negotiate(offer(), &config).unwrap());
        let (c, rc) = budget.admit(negotiate(offer(), &config).unwrap());
        assert_eq!((ra.bytes(), rb.bytes(), rc.bytes()), (one, one, 0));
        assert_eq!(a, b);
        assert!(!a.server_no_context_takeover && !a.client_no_context_takeover);
        assert!(c.server_no_context_takeover && c.client_no_context_takeover);
        assert_eq!(budget.used(), 2 * one);
        drop(ra);
        assert_eq!(budget.used(), one);
        let (d, rd) = budget.clone().admit(negotiate(offer(), &config).unwrap());
        assert_eq!((d, rd.bytes()), (a, one));
        drop((rb, rd));
        assert_eq!((budget.used(), budget.limit()), (0, one * 2 + 10));
    }

    #[test]
    fn threshold() {
        let config = DeflateConfig::default();
        assert!(!config.should_compress(255));
        assert!(config.should_compress(256));
    }
}
