//! Calling the handler: every callback runs behind a panic guard, and the `on_close` of every
//! connection a callback (or the engine) closed is delivered right after it.

use super::Engine;
use crate::conn::{Closed, Message};
use crate::context::Context;
use crate::handler::Handler;
use crate::socket::Socket;
use ringws_protocol::frame::OpCode;
use ringws_protocol::{CloseCode, Event, MessageBuf};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use tracing::error;

impl<H: Handler> Engine<'_, H> {
    /// Runs one callback for `slot` with a panic guard: a panic is logged and closes the connection
    /// with 1011. Then delivers the `on_close` of every connection that closed meanwhile.
    pub(super) fn call(&mut self, slot: u32, f: impl FnOnce(&mut H, &mut Socket<'_, H::State>)) {
        let (handler, core) = (&mut self.handler, &mut self.core);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            f(handler, &mut Socket::new(core, slot))
        }));
        if outcome.is_err() {
            error!(
                slot,
                "a callback panicked; closing the connection with 1011"
            );
            self.core
                .slab
                .close(slot, CloseCode::INTERNAL_ERROR, "internal error");
        }
        self.deliver_closes();
    }

    /// Runs a worker-level callback with a [`Context`] and a panic guard, then delivers the
    /// `on_close` of connections it closed.
    pub(super) fn call_ctx(&mut self, f: impl FnOnce(&mut H, &mut Context<'_, H::State>)) {
        let (handler, core) = (&mut self.handler, &mut self.core);
        let outcome = catch_unwind(AssertUnwindSafe(|| f(handler, &mut Context::new(core))));
        if outcome.is_err() {
            error!(worker = self.index, "a worker callback panicked");
        }
        self.deliver_closes();
    }

    /// Runs a callback that produces an HTTP answer, with a panic guard (`None` after a panic).
    pub(super) fn answer<T>(&mut self, f: impl FnOnce(&mut H) -> T) -> Option<T> {
        let handler = &mut self.handler;
        let outcome = catch_unwind(AssertUnwindSafe(|| f(handler)));
        if outcome.is_err() {
            error!("an HTTP callback panicked; answering 500");
        }
        outcome.ok()
    }

    /// Calls `on_close` for `slot`, then drops its state and subscriptions.
    fn on_close(&mut self, slot: u32, code: CloseCode, reason: &str) {
        let (handler, core) = (&mut self.handler, &mut self.core);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            handler.on_close(&mut Socket::new(core, slot), code, reason)
        }));
        if outcome.is_err() {
            error!(slot, "on_close panicked");
        }
        self.core.forget(slot);
    }

    /// Calls `on_close` for every connection recorded as closed.
    pub(super) fn deliver_closes(&mut self) {
        while let Some(Closed { slot, code, reason }) = self.core.slab.next_closed() {
            self.on_close(slot, code, &reason);
        }
    }

    /// Delivers a data message the decoder assembled and gave up: while its callback runs, sends
    /// of exactly its payload (an echo, a forward to other connections) queue it by reference.
    pub(super) fn dispatch_taken(&mut self, slot: u32, message: MessageBuf) {
        let message = Arc::new(message);
        self.core.slab.taken = Some(Arc::clone(&message));
        self.dispatch(slot, message.event());
        self.core.slab.taken = None;
    }

    /// Delivers one decoded event of an open connection.
    pub(super) fn dispatch(&mut self, slot: u32, event: Event<'_>) {
        match event {
            Event::Text(text) => self.call(slot, |h, ws| h.on_message(ws, Message::Text(text))),
            Event::Binary(data) => self.call(slot, |h, ws| h.on_message(ws, Message::Binary(data))),
            Event::Ping(payload) => {
                // A peer that floods pings without reading gets no more pongs once its queue is over
                // the limit (RFC 6455 §5.5.3 lets an endpoint answer only the latest ping).
                let slab = &mut self.core.slab;
                if slab.get(slot).buffered() <= slab.config().backpressure.max {
                    slab.send_control(slot, OpCode::Pong, payload);
                }
                self.call(slot, |h, ws| h.on_ping(ws, payload));
            }
            Event::Pong(payload) => self.call(slot, |h, ws| h.on_pong(ws, payload)),
            Event::Close(frame) => {
                // Echo the peer's code (RFC 6455 §5.5.1); no code received, none sent back.
                let echo = frame.map(|f| f.code.0.to_be_bytes());
                let slab = &mut self.core.slab;
                slab.send_control(slot, OpCode::Close, echo.as_ref().map_or(&[], |c| &c[..]));
                slab.begin_closing(slot);
                let (code, reason) =
                    frame.map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason));
                self.core
                    .slab
                    .stats
                    .closes_peer
                    .inc(crate::stats::CloseStatus(code.0));
                self.on_close(slot, code, reason);
                self.deliver_closes();
            }
        }
    }
}
