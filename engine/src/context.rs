//! [`Context`]: the worker, lent to worker-level callbacks and reached from any callback's socket.

use crate::connect::Connect;
use crate::socket::{ConnId, Socket};
use crate::state::Core;
use std::time::Instant;

/// The worker, lent to [`Handler::on_start`] and [`Handler::on_wake`] (or reached from a
/// callback's socket with [`Socket::context`]): open client connections, reach any connection by
/// id, and ask to be woken up.
///
/// [`Handler::on_start`]: crate::Handler::on_start
/// [`Handler::on_wake`]: crate::Handler::on_wake
pub struct Context<'a, S> {
    core: &'a mut Core<S>,
}

impl<'a, S: Default> Context<'a, S> {
    /// The context of `core`.
    pub(crate) fn new(core: &'a mut Core<S>) -> Self {
        Self { core }
    }

    /// Opens a client connection to `target` with `state` as its state, at the end of this loop turn
    /// (or later, when [`MAX_DIALING`](crate::MAX_DIALING) connects are already in progress). Then either `on_open` runs
    /// for it, or `on_connect_error` gets `state` back with the reason.
    pub fn connect(&mut self, target: &Connect, state: S) {
        self.core.outbound.dials.push_back((target.clone(), state));
    }

    /// An open (or closing) connection of this worker, by id; `None` once it has closed.
    pub fn socket(&mut self, id: ConnId) -> Option<Socket<'_, S>> {
        Socket::resolve(self.core, id)
    }

    /// Asks for `on_wake` at `at` (or as soon as possible if it has passed). Only the earliest
    /// pending request is kept; `on_wake` can ask again. Resolution is the kernel's
    /// high-resolution timer (an io_uring timeout), typically tens of microseconds.
    pub fn wake_at(&mut self, at: Instant) {
        let w = &mut self.core.outbound.wake;
        *w = Some(w.map_or(at, |w| w.min(at)));
    }

    /// Whether the worker is shutting down ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown)
    /// or a signal): connections closing now are closed by it (1001), and new connects will fail
    /// with [`ConnectError::Shutdown`](crate::ConnectError::Shutdown). A client that reconnects on
    /// close should check it first.
    pub fn is_shutting_down(&self) -> bool {
        self.core.outbound.shutting_down
    }

    /// Connection requests not yet started by the worker.
    pub fn queued_connects(&self) -> usize {
        self.core.outbound.dials.len()
    }
}

impl<S: Default> Socket<'_, S> {
    /// The worker's [`Context`], to open connections or ask for a wake-up from inside a callback.
    /// The socket is usable again once the context is dropped.
    pub fn context(&mut self) -> Context<'_, S> {
        Context::new(self.core())
    }
}
