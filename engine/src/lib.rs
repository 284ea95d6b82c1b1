//! `ringws-engine`: the io_uring runtime of ringws.
//!
//! One worker thread per core, pinned, each with its own io_uring (`SINGLE_ISSUER | DEFER_TASKRUN`),
//! its own `SO_REUSEPORT` listener (multishot accept), a provided-buffer ring for multishot receives,
//! a slab of small connection slots and a timer wheel. Frames whole inside a receive buffer are
//! unmasked and delivered in place; output is corked into one send per connection per loop turn.
//!
//! - [`Server`] / [`ServerBuilder`] / [`ServerHandle`]: settings, start-up, shutdown and signals.
//! - [`Handler`]: the callbacks; [`Socket`]: a connection lent to a callback.
//! - [`Publisher`] / [`Topic`] / [`SlowConsumer`]: publish/subscribe with encode-once fan-out to
//!   subscribers on every worker, and per-topic slow-consumer policies; [`Bridge`]: the hook a
//!   message broker client (NATS, Redis) uses to carry publications between several nodes.
//! - [`Connect`] / [`Context`]: client connections opened by the workers (masked frames, the same
//!   callbacks); [`ServerBuilder::client_only`] for an engine without a listener.
//! - [`DeflateConfig`]: permessage-deflate (RFC 7692) for both ([`ServerBuilder::deflate`],
//!   [`Connect::deflate`]), with bounded memory per connection and a global context budget.
//! - [`Config`]: every limit and timer with its default; [`EngineError`]: start-up errors that name
//!   the cause and the fix.
//! - [`ProbeReport`]: which io_uring features this kernel has, probed; [`MemlockNeed`]: the locked
//!   memory the rings are charged.
//!
//! ```no_run
//! use ringws_engine::{Handler, Message, Server, Socket};
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
//!         let _ = ws.send(msg);
//!     }
//! }
//! Server::builder().bind("127.0.0.1:9001").workers(2).build()?.run(|_worker| Echo)?;
//! # Ok::<(), ringws_engine::EngineError>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

// The layers, bottom to top: a module uses only the modules declared before it (checked by
// `tests/layers.rs`; each layer is its own group so that formatting keeps the order).

// Plain data every layer may use: the error enum; a connection's TLS session and the TLS
// settings (rustls, unbuffered); where and how to connect; the per-worker counters
// (single-writer cells) and their snapshots.
mod tls;

mod connect;
mod error;
mod stats;

// io_uring and the few raw system calls: all of the engine's `unsafe`.
mod ring;

// permessage-deflate, the codec a connection's send path calls.
mod deflate;

// One connection: slot and slab, the sans-IO connection machine, output queues, the timer wheel.
mod conn;

// Admission and abuse limits.
mod policy;

// Publish/subscribe.
mod pubsub;

// The settings: plain data the worker and the server read.
mod config;

// The callback API the worker calls into: the state callbacks reach, a connection, the worker, the
// handler trait.
mod state;

mod socket;

mod context;

mod handler;

// Operations: /metrics, /health, /ready, the admin listener.
mod ops;

// The event loop.
mod worker;

// Start-up, worker threads, signals.
mod server;

pub use config::{Config, ServerBuilder, Setting, settings_table};
pub use conn::{BackpressurePolicy, Message, SendResult};
pub use connect::{Connect, ConnectError, MAX_DIALING};
pub use context::Context;
pub use error::EngineError;
pub use handler::{Decision, Handler, HttpResponse};
pub use pubsub::bridge::{
    Bridge, BridgeEvent, BridgePublication, BridgeStats, DEFAULT_BRIDGE_CAPACITY,
};
pub use pubsub::{
    BadPosition, ConflatedMark, History, MAX_TOPIC_NAME, NotRecovered, Position, PubSubError,
    Publisher, Recovery, SlowConsumer, Topic, TopicStats, parse_epoch,
};
pub use ring::probe::{Feature, MemlockNeed, ProbeReport, Support, kernel_version};
pub use ringws_protocol::CloseCode;
pub use ringws_protocol::deflate::DeflateConfig;
pub use ringws_protocol::handshake::Request;
pub use server::{Server, ServerHandle};
pub use socket::{ConnId, Socket};
pub use stats::{
    BUCKETS_US, CloseStatus, Counts, DeflateBytes, HistogramSnapshot, HttpStatus, Label,
    MessageKind, Rejection, Side, Stats, TimerKind, WorkerSnapshot,
};
pub use tls::{TlsClient, TlsConfig, TlsError};
