//! The connection layer: everything about one connection, and a worker's slab of them.
//!
//! - [`Slab`] / [`Slot`]: one slot per connection holds all it owns (socket, machine, decoder,
//!   output queue, rate buckets, user state, and boxed [`Extra`]s); one place allocates a slot and
//!   one place resets it.
//! - [`Machine`]: the sans-IO connection machine (phases, close handshake, keep-alive, timeouts,
//!   backpressure decisions), tested on a virtual clock.
//! - [`OutQueue`] / [`Pool`]: per-connection output, corked into one send per loop turn.
//! - [`Wheel`](wheel::Wheel): the timer wheel the slab files its machines' deadlines in.
//!
//! It sits on the ring layer (sends are [`Flight`](crate::ring::Flight)s) and on the codec below it
//! (permessage-deflate, masking); it knows nothing of policy, pub/sub, callbacks or the event loop.

mod keys;
mod machine;
mod outq;
mod slot;
mod time;
pub(crate) mod wheel;

pub(crate) use keys::mask_key;
pub use machine::BackpressurePolicy;
pub(crate) use machine::{Backpressure, Check, CloseStep, Expired, Phase, Timeouts};
pub(crate) use outq::{LARGE, SendError};
#[cfg(test)]
pub(crate) use slot::tests::{config as test_config, fd as test_fd, open as test_open};
pub(crate) use slot::{Dial, Slab, SlabConfig, Slot, TlsSide, io};

use ringws_protocol::CloseCode;

/// The outcome of queueing a frame with [`Socket::send`](crate::Socket::send) and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a send can be dropped under backpressure"]
pub enum SendResult {
    /// Queued; the connection's buffered output is within `max_backpressure`.
    Queued,
    /// Queued, but the buffered output is now over `max_backpressure`: further sends are dropped (or
    /// close the connection, per policy) until [`Handler::on_drain`](crate::Handler::on_drain)
    /// reports it has drained.
    Backpressure,
    /// Not queued: the buffered output was already over the limit, the connection is closing, or the
    /// frame was invalid (a ping payload over 125 bytes).
    Dropped,
}

/// A complete message, borrowed from the receive buffer it arrived in (or from the connection's
/// assembly buffer when it spanned several). The borrow ends when the callback returns, before the
/// buffer goes back to the kernel: copy what must outlive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, UTF-8 validated.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes, whatever the type.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Self::Text(s) => s.as_bytes(),
            Self::Binary(b) => b,
        }
    }
}

/// A connection that left `Open`; the worker calls `on_close` for it.
#[derive(Debug)]
pub(crate) struct Closed {
    pub slot: u32,
    pub code: CloseCode,
    pub reason: String,
}
