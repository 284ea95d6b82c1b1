//! `ringws-protocol`: the WebSocket protocol (RFC 6455) as a sans-IO state machine.
//!
//! Bytes in, events out: nothing here touches a socket, a thread or a clock, so every rule is tested
//! with plain byte slices. The engine (`ringws-engine`) feeds it the pooled receive buffers and sends
//! what it produces.
//!
//! - [`handshake`]: HTTP/1.1 upgrade parsing and the 101 response (server), request building and
//!   response validation (client).
//! - [`frame`]: frame header decode/encode with the RFC's MUST rules enforced from the header alone.
//! - [`mask`]: in-place unmasking, SIMD-dispatched, with a continuing mask phase.
//! - [`utf8`]: streaming UTF-8 validation that fails at the first bad byte.
//! - [`assembler`]: fragments and control frames into messages, with size limits.
//! - [`receiver`]: the per-connection decoder that ties the above together over receive buffers.
//! - [`close`]: close codes and close payload rules.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compression, bounded inflation.
//! - [`error`]: the one error enum, each variant mapped to the close code or HTTP status to send.
//!
//! `unsafe` is denied outside two places where it measurably pays, each block with a `// SAFETY:`
//! comment: the SIMD unmasking in [`mask`] (measurements in its docs), and the one
//! `from_utf8_unchecked` in [`receiver`] on a text message the streaming validator already checked
//! (measured cost of a second check in its comment). Both were measured with
//! `cargo run --release -p ringws-protocol --example unsafe_costs`.
#![warn(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod assembler;
pub mod close;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
#[allow(unsafe_code)] // SIMD intrinsics, see the module docs
pub mod mask;
pub mod receiver;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use error::{Error, Reply};
pub use frame::{FrameHeader, OpCode, Role};
pub use receiver::{Event, Limits, MessageBuf, Receiver};
