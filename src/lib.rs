//! `ringws`: a WebSocket (RFC 6455) server engine for Linux on io_uring.
//!
//! This facade re-exports the sans-IO protocol crate ([`protocol`]) and the engine ([`engine`]), and
//! holds the market-data feed server built on the engine's pub/sub ([`feed`]).

pub use ringws_engine as engine;
pub use ringws_protocol as protocol;

pub mod feed;

// The engine's everyday API at the top level: `use ringws::{Handler, Message, Server, Socket};`.
pub use ringws_engine::{
    BackpressurePolicy, CloseCode, ConnId, Decision, EngineError, Handler, HttpResponse, Message,
    PubSubError, Publisher, Request, SendResult, Server, ServerBuilder, ServerHandle, SlowConsumer,
    Socket, Topic, TopicStats,
};
// The client side: connections opened by the workers, with the same callbacks.
pub use ringws_engine::{Connect, ConnectError, Context};
// permessage-deflate (RFC 7692): the policy for `ServerBuilder::deflate` and `Connect::deflate`.
pub use ringws_engine::DeflateConfig;
