//! `ringws`: a WebSocket (RFC 6455) server engine for Linux on io_uring.
//!
//! One worker thread per core, each with its own io_uring and `SO_REUSEPORT` listener; frames are
//! unmasked and delivered in place from the kernel's provided receive buffers, and output is corked
//! into one send per connection per loop turn. This crate re-exports the two crates that make it up:
//!
//! - [`engine`] (`ringws-engine`): the io_uring runtime: [`Server`] and its [`ServerBuilder`]
//!   settings, the [`Handler`] callbacks and the [`Socket`] lent to them, publish/subscribe
//!   ([`Publisher`], [`Topic`]), client connections ([`Connect`]), permessage-deflate
//!   ([`DeflateConfig`]), and the host checks behind `ringws check` ([`engine::ProbeReport`],
//!   [`engine::MemlockNeed`]);
//! - [`protocol`] (`ringws-protocol`): the sans-IO protocol: handshake, frames, SIMD unmasking,
//!   UTF-8 validation, message assembly, permessage-deflate.
//!
//! The everyday types are also at the top level. An echo server:
//!
//! ```no_run
//! use ringws::{EngineError, Handler, Message, Server, Socket};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type State = ();
//!
//!     fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
//!         let _ = ws.send(msg);
//!     }
//! }
//!
//! fn main() -> Result<(), EngineError> {
//!     let server = Server::builder().bind("127.0.0.1:9001").build()?;
//!     server.run(|_worker| Echo)
//! }
//! ```
//!
//! The `ringws` command line (`ringws serve`, `ringws load`, `ringws check`) and the market-data feed
//! demo are not part of this crate: they live in the `ringws-cli` package of the repository.

pub use ringws_engine as engine;
pub use ringws_protocol as protocol;

// The engine's everyday API at the top level: `use ringws::{Handler, Message, Server, Socket};`.
pub use ringws_engine::{
    BackpressurePolicy, CloseCode, ConnId, Decision, EngineError, Handler, HttpResponse, Message,
    PubSubError, Publisher, Request, SendResult, Server, ServerBuilder, ServerHandle, SlowConsumer,
    Socket, Topic, TopicStats,
};
// Sequenced topics, their history and resuming from a position.
pub use ringws_engine::{
    BadPosition, ConflatedMark, History, NotRecovered, Position, Recovery, parse_epoch,
};
// Several nodes over a message broker: the hook a broker client (NATS, Redis) drives.
pub use ringws_engine::{
    Bridge, BridgeEvent, BridgePublication, BridgeStats, DEFAULT_BRIDGE_CAPACITY,
};
// The client side: connections opened by the workers, with the same callbacks.
pub use ringws_engine::{Connect, ConnectError, Context};
// permessage-deflate (RFC 7692): the policy for `ServerBuilder::deflate` and `Connect::deflate`.
pub use ringws_engine::DeflateConfig;
// The settings: every one with its default and range (`Config::SETTINGS`, `settings_table`).
pub use ringws_engine::{Config, Setting, settings_table};
// wss://: the server's certificate and key (`ServerBuilder::tls`).
pub use ringws_engine::{TlsClient, TlsConfig, TlsError};
// Operations: the counters `ServerHandle::stats` returns (what /metrics exposes).
pub use ringws_engine::{
    CloseStatus, Counts, HistogramSnapshot, HttpStatus, Label, MessageKind, Rejection, Side, Stats,
    TimerKind, WorkerSnapshot,
};
