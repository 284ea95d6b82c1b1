//! The handle callbacks use to talk to a connection.

use crate::conn::{Message, Phase, SendResult};
use crate::pubsub::{Position, PubSubError, Publisher, Recovery};
use crate::state::Core;
use ringws_protocol::CloseCode;
use ringws_protocol::deflate::Params;
use ringws_protocol::frame::{MAX_CONTROL_PAYLOAD, OpCode};
use std::net::SocketAddr;

/// Names one connection of a worker, stable for the connection's life: after it closes the id no
/// longer resolves, even if its slot is reused. Ids are only meaningful within their worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

/// One WebSocket connection, lent to a callback.
///
/// Sends are queued and leave together at the end of the worker's loop turn, one send per connection
/// (corking). Payloads are copied once, into the connection's output queue.
pub struct Socket<'a, S> {
    core: &'a mut Core<S>,
    slot: u32,
}

impl<'a, S: Default> Socket<'a, S> {
    /// The socket for `slot` of `core`.
    pub(crate) fn new(core: &'a mut Core<S>, slot: u32) -> Self {
        Self { core, slot }
    }

    /// This connection's id, to reach it later from another connection's callback via [`get`](Self::get).
    pub fn id(&self) -> ConnId {
        ConnId {
            slot: self.slot,
            generation: self.core.slab.get(self.slot).generation,
        }
    }

    /// The connection's state.
    pub fn state(&self) -> &S {
        &self.core.slab.get(self.slot).state
    }

    /// The connection's state, mutably.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.core.slab.get_mut(self.slot).state
    }

    /// Whether the WebSocket is open (sends are accepted).
    pub fn is_open(&self) -> bool {
        self.core.slab.get(self.slot).machine.is_open()
    }

    /// Queues a message.
    pub fn send(&mut self, msg: Message<'_>) -> SendResult {
        match msg {
            Message::Text(s) => self.send_text(s),
            Message::Binary(b) => self.send_binary(b),
        }
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) -> SendResult {
        self.core
            .slab
            .send_data(self.slot, OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendResult {
        self.core.slab.send_data(self.slot, OpCode::Binary, data)
    }

    /// Queues a ping; the peer's pong arrives at [`Handler::on_pong`](crate::Handler::on_pong).
    /// Payloads over 125 bytes are not allowed in control frames and are [`SendResult::Dropped`].
    pub fn ping(&mut self, payload: &[u8]) -> SendResult {
        if payload.len() > MAX_CONTROL_PAYLOAD || !self.is_open() {
            return SendResult::Dropped;
        }
        self.core
            .slab
            .send_control(self.slot, OpCode::Ping, payload);
        SendResult::Queued
    }

    /// Starts the closing handshake with `code` and `reason` (cut to 123 bytes at a character
    /// boundary). A code that may not be sent on the wire (1005, 1006, 1015, unassigned ranges) is
    /// replaced by 1000. `on_close` follows once this callback returns. No-op if already closing.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let code = if code.is_valid_on_wire() {
            code
        } else {
            CloseCode::NORMAL
        };
        self.core.slab.close(self.slot, code, reason);
    }

    /// Stops reading from this connection until [`resume_reading`](Self::resume_reading): nothing
    /// more is received (pings included), what the peer sends waits in the kernel and then TCP
    /// flow control holds the peer back. Sends still leave. For a consumer that is slow on purpose,
    /// such as a load generator simulating stalled clients. Under
    /// [`BackpressurePolicy::Pause`](crate::BackpressurePolicy::Pause) reading also resumes when
    /// the send queue drains; it always resumes when the connection starts closing. No-op unless
    /// the connection is open.
    pub fn pause_reading(&mut self) {
        self.core.slab.set_paused(self.slot, true);
    }

    /// Resumes reading after [`pause_reading`](Self::pause_reading). No-op unless the connection is
    /// open and paused.
    pub fn resume_reading(&mut self) {
        self.core.slab.set_paused(self.slot, false);
    }

    /// The permessage-deflate parameters agreed for this connection (RFC 7692), or `None` if it
    /// sends and receives uncompressed. `Display` writes them as the `Sec-WebSocket-Extensions`
    /// value of the handshake.
    pub fn permessage_deflate(&self) -> Option<Params> {
        let extra = self.core.slab.get(self.slot).extra.as_ref()?;
        Some(extra.deflate.as_ref()?.params())
    }

    /// Bytes queued on this connection and not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.core.slab.get(self.slot).buffered()
    }

    /// The peer's address (one `getpeername` call), if the socket still has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        crate::policy::peer_addr(self.core.slab.get(self.slot))
    }

    /// Subscribes this connection to `topic` (created with the server's default slow-consumer policy
    /// if it does not exist): every publication made after this call is queued to it, from any
    /// worker or thread. `Ok(false)` if it was already subscribed. The subscription ends with
    /// [`unsubscribe`](Self::unsubscribe) or when the connection leaves the open state.
    ///
    /// ```no_run
    /// # use ringws_engine::{Message, Socket};
    /// fn on_message(ws: &mut Socket<'_, ()>, msg: Message<'_>) {
    ///     if let Message::Text(topic) = msg {
    ///         let _ = ws.subscribe(topic);
    ///     }
    /// }
    /// ```
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, PubSubError> {
        let core = &mut *self.core;
        core.pubsub
            .subscribe(&mut core.slab, self.slot, topic, false)
    }

    /// Like [`subscribe`](Self::subscribe), and first queues the topic's last publication (if any),
    /// so a new subscriber starts from the current value. A publication is never queued twice.
    pub fn subscribe_with_last(&mut self, topic: &str) -> Result<bool, PubSubError> {
        let core = &mut *self.core;
        core.pubsub
            .subscribe(&mut core.slab, self.slot, topic, true)
    }

    /// Subscribes this connection to `topic` from `since`, the position of the last publication it
    /// received (e.g. before it reconnected): if the topic's history still holds every publication
    /// after it, they are queued in order and live ones follow with no gap and no duplicate
    /// ([`Recovery::Recovered`]); otherwise the topic's last publication is queued as a snapshot
    /// and live ones follow ([`Recovery::NotRecovered`], saying why). A topic keeps history only
    /// if given one ([`Topic::set_history`](crate::Topic::set_history)).
    /// [`PubSubError::AlreadySubscribed`] if it is subscribed already.
    ///
    /// ```no_run
    /// # use ringws_engine::{Position, Recovery, Socket};
    /// fn resume(ws: &mut Socket<'_, ()>, epoch: u64, seq: u64) {
    ///     match ws.subscribe_since("BTC-USD", Position { epoch, seq }) {
    ///         Ok(Recovery::Recovered { replayed }) => println!("{replayed} missed, now live"),
    ///         Ok(Recovery::NotRecovered { reason }) => println!("snapshot ({reason}), then live"),
    ///         Err(e) => println!("not subscribed: {e}"),
    ///     }
    /// }
    /// ```
    pub fn subscribe_since(
        &mut self,
        topic: &str,
        since: Position,
    ) -> Result<Recovery, PubSubError> {
        let core = &mut *self.core;
        core.pubsub
            .subscribe_since(&mut core.slab, self.slot, topic, since)
    }

    /// Subscribes this connection to several topics at once, each from a position
    /// ([`subscribe_since`](Self::subscribe_since)) or, without one, from its last publication
    /// ([`subscribe_with_last`](Self::subscribe_with_last)), and lets `reply` answer the client
    /// before anything of the topics is queued: it gets each topic's outcome (`Ok(None)`:
    /// subscribed from its last publication; `Ok(Some(recovery))`: from the position;
    /// [`PubSubError::AlreadySubscribed`] and other refusals: nothing queued for that topic), and
    /// the text it returns, if any, is sent first. Then what each topic starts with is queued, in
    /// the order given, and live publications follow with no gap and no duplicate.
    ///
    /// ```no_run
    /// # use ringws_engine::{Position, Recovery, Socket};
    /// fn subscribe(ws: &mut Socket<'_, ()>, since: Position) {
    ///     ws.subscribe_many(&[("BTC-USD", Some(since)), ("ETH-USD", None)], |outcomes| {
    ///         let recovered = matches!(outcomes[0], Ok(Some(Recovery::Recovered { .. })));
    ///         Some(format!(r#"{{"type":"subscribed","recovered":{recovered}}}"#))
    ///     });
    /// }
    /// ```
    pub fn subscribe_many(
        &mut self,
        topics: &[(&str, Option<Position>)],
        reply: impl FnOnce(&[Result<Option<Recovery>, PubSubError>]) -> Option<String>,
    ) {
        let core = &mut *self.core;
        let outcomes: Vec<_> = topics
            .iter()
            .map(|&(topic, since)| core.pubsub.hold(&mut core.slab, self.slot, topic, since))
            .collect();
        if let Some(text) = reply(&outcomes) {
            let _ = self.send_text(&text);
        }
        let core = &mut *self.core;
        core.pubsub.release_held(&mut core.slab, self.slot);
    }

    /// Ends this connection's subscription to `topic`; `false` if it had none.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let core = &mut *self.core;
        core.pubsub.unsubscribe(&mut core.slab, self.slot, topic)
    }

    /// Publishes `msg` to `topic` (created if needed): encoded once, queued at once to this worker's
    /// subscribers and through their inboxes to the other workers' subscribers.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> Result<(), PubSubError> {
        let core = &mut *self.core;
        core.pubsub.publish(&mut core.slab, topic, msg)
    }

    /// A handle to publish from elsewhere (another thread, a later callback).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.core.pubsub.hub().clone())
    }

    /// Another open (or closing) connection of this worker, by id; `None` once it has closed.
    ///
    /// ```no_run
    /// # use ringws_engine::{ConnId, Socket};
    /// fn forward(ws: &mut Socket<'_, ()>, to: ConnId, text: &str) {
    ///     if let Some(mut other) = ws.get(to) {
    ///         let _ = other.send_text(text);
    ///     }
    /// }
    /// ```
    pub fn get(&mut self, id: ConnId) -> Option<Socket<'_, S>> {
        Socket::resolve(self.core, id)
    }

    /// The socket of connection `id` of `core`, if it is open or closing.
    pub(crate) fn resolve(core: &mut Core<S>, id: ConnId) -> Option<Socket<'_, S>> {
        if id.slot >= core.slab.capacity() {
            return None;
        }
        let c = core.slab.get(id.slot);
        let usable = matches!(c.machine.phase(), Phase::Open | Phase::Closing);
        (usable && c.generation == id.generation).then_some(Socket {
            core,
            slot: id.slot,
        })
    }

    /// The worker's core (for [`Socket::context`]).
    pub(crate) fn core(&mut self) -> &mut Core<S> {
        self.core
    }
}
