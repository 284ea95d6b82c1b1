//! Bytes out and connections ending: flushing queued output (one send per connection per turn),
//! send completions, the TCP side of the closing handshake, aborting a connection, and freeing its
//! slot once its last operation has completed.

use super::Engine;
use crate::conn::{CloseStep, Phase, SendError, io};
use crate::connect::ConnectError;
use crate::handler::Handler;
use crate::ring::{Op, SendCqe, Token};
use crate::stats::CloseStatus;
use ringws_protocol::CloseCode;
use std::io as stdio;
use std::net::Shutdown;
use std::os::fd::AsFd;
use tracing::{debug, error};

/// Why a connection is aborted (for a client before its `101`, what `on_connect_error` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// A timer expired.
    Timeout,
    /// The worker is shutting down.
    Shutdown,
    /// The peer went away, or an error.
    Error,
}

impl<H: Handler> Engine<'_, H> {
    /// End of the turn: one send per connection that queued output, then receives re-armed
    /// (buffers returned), cancelled (reading paused) or armed again (resumed).
    pub(super) fn flush(&mut self) {
        self.dial_turn();
        let mut dirty = std::mem::take(&mut self.core.slab.dirty);
        for slot in dirty.drain(..) {
            self.core.slab.get_mut(slot).io &= !io::DIRTY;
            self.send_queued(slot);
        }
        self.core.slab.dirty = dirty;
        for slot in std::mem::take(&mut self.starved) {
            let s = self.core.slab.get(slot);
            if s.has(io::STARVED) && s.machine.wants_recv() {
                self.rearm_recv(slot);
            }
        }
        for slot in std::mem::take(&mut self.core.slab.review) {
            let s = self.core.slab.get(slot);
            if s.machine.wants_recv() && !s.has(io::RECV_ARMED) {
                self.rearm_recv(slot);
            } else if s.machine.is_paused() && s.has(io::RECV_ARMED) {
                // Paused: stop the multishot receive; its last completion (-ECANCELED, no F_MORE)
                // clears RECV_ARMED, and resuming re-arms it.
                self.ring.cancel(Token::new(Op::Recv, slot, s.generation));
            }
        }
    }

    /// Starts the send of what `slot` has queued (sealed into TLS records first), unless a send
    /// is in flight, nothing is queued or the connection is gone.
    pub(super) fn send_queued(&mut self, slot: u32) {
        let s = self.core.slab.get_mut(slot);
        if !s.machine.is_live() {
            return;
        }
        if s.is_tls() {
            self.core.slab.seal_tls(slot, &mut self.tls.gather);
        }
        let s = self.core.slab.get_mut(slot);
        let token = Token::new(Op::Send, slot, s.generation);
        if let (Some(fd), Some(q)) = (s.fd.as_ref(), s.out.as_mut())
            && let Some(flight) = q.next_send()
        {
            self.ring.send(fd.as_fd(), token, flight);
        }
    }

    /// A send completed.
    pub(super) fn on_send(&mut self, token: Token, cqe: SendCqe) {
        if let SendCqe::Released { copied } = cqe {
            let stats = &self.core.slab.stats;
            stats.zero_copy_sends.inc();
            if copied {
                stats.zero_copy_copied.inc();
            }
        }
        let slot = token.slot;
        let Some(s) = self.core.slab.find(slot, |g| token.is_generation(g)) else {
            error!(slot, "send completion for a stale slot");
            return;
        };
        let Some(q) = s.out.as_mut() else {
            error!(slot, "send completion without an output queue");
            return;
        };
        let written = match q.landed(token, cqe) {
            Ok(Some(n)) => n,
            // A zero-copy send's notification: the memory it held may be free now, and with it
            // the queue (back to the pool) and a closed slot.
            Ok(None) => {
                let s = self.core.slab.get(slot);
                let phase = s.machine.phase();
                if s.drained() {
                    self.core.slab.return_queue(slot);
                }
                match phase {
                    Phase::Closing => self.finish_closing(slot),
                    Phase::Closed => self.maybe_release(slot),
                    _ => {}
                }
                return;
            }
            Err(SendError::Stale) => return,
            Err(SendError::Failed(e)) => {
                if s.machine.phase() != Phase::Closed {
                    debug!(slot, error = %stdio::Error::from_raw_os_error(e), "send failed");
                }
                self.abort(slot, Cause::Error);
                self.maybe_release(slot);
                return;
            }
        };
        let buffered = q.buffered();
        self.core.slab.stats.socket_sent_bytes.add(written as u64);
        if buffered == 0 {
            self.core.slab.return_queue(slot);
        } else {
            // The rest of a partial send, or what was queued meanwhile, goes with this turn's flush.
            self.core.slab.out(slot);
        }
        let bp = self.core.slab.config().backpressure;
        let s = self.core.slab.get_mut(slot);
        match s.machine.phase() {
            Phase::Open => {
                if let Some(resume) = s.machine.written(buffered, &bp) {
                    if resume && !s.has(io::RECV_ARMED) {
                        self.rearm_recv(slot);
                    }
                    self.call(slot, |h, ws| h.on_drain(ws));
                }
            }
            Phase::Closing => self.finish_closing(slot),
            Phase::Closed => self.maybe_release(slot),
            Phase::Handshaking | Phase::Free => {}
        }
    }

    /// The peer closed its side (or reset the connection).
    pub(super) fn peer_gone(&mut self, slot: u32) {
        let s = self.core.slab.get_mut(slot);
        let drained = s.drained();
        match s.machine.peer_eof(drained) {
            Some(step) => self.close_step(slot, step),
            None => self.abort(slot, Cause::Error),
        }
    }

    /// In `Closing`: once everything queued is written, shut the write side; once the peer's FIN
    /// is in too, close.
    pub(super) fn finish_closing(&mut self, slot: u32) {
        let step = self.core.slab.close_progress(slot);
        self.close_step(slot, step);
    }

    fn close_step(&mut self, slot: u32, step: CloseStep) {
        if step.shut_write {
            // Everything queued is written: the peer reads our Close (or response), then EOF.
            if let Some(fd) = self.core.slab.get(slot).fd.as_ref() {
                let _ = socket2::SockRef::from(fd).shutdown(Shutdown::Write);
            }
        }
        if step.done {
            self.shut_down_slot(slot);
        }
    }

    /// Ends a connection now: `on_close(1006)` if it was open, `on_connect_error` if it was a client
    /// before its `101`; then the socket is shut down both ways (which completes its operations in
    /// flight) and the slot waits for those completions.
    pub(super) fn abort(&mut self, slot: u32, cause: Cause) {
        let s = self.core.slab.get(slot);
        match s.machine.phase() {
            Phase::Open => {
                let slab = &mut self.core.slab;
                slab.get_mut(slot).machine.close_now();
                let closes = match cause {
                    Cause::Error => &slab.stats.closes_peer,
                    Cause::Timeout | Cause::Shutdown => &slab.stats.closes_local,
                };
                closes.inc(CloseStatus(CloseCode::ABNORMAL.0));
                slab.record_close(slot, CloseCode::ABNORMAL, String::new());
                self.deliver_closes();
            }
            Phase::Handshaking if s.machine.is_client() => {
                let error = if self.shutdown_deadline.is_some() {
                    ConnectError::Shutdown
                } else if cause == Cause::Timeout {
                    ConnectError::Timeout
                } else {
                    ConnectError::Closed
                };
                self.dial_failed(slot, error);
            }
            Phase::Handshaking | Phase::Closing => {}
            Phase::Closed | Phase::Free => return,
        }
        self.shut_down_slot(slot);
    }

    /// Closes the slot for the engine: its socket is shut down both ways if operations are in
    /// flight (which completes them) and its receive and connect are cancelled; the slot is freed
    /// once they have completed.
    pub(super) fn shut_down_slot(&mut self, slot: u32) {
        self.cancel_connect(slot);
        let s = self.core.slab.get_mut(slot);
        s.machine.close_now();
        if let Some(e) = s.extra.as_mut() {
            e.handshake = Vec::new();
        }
        if (s.has(io::RECV_ARMED) || s.send_in_flight())
            && let Some(fd) = s.fd.as_ref()
        {
            let _ = socket2::SockRef::from(fd).shutdown(Shutdown::Both);
        }
        if s.has(io::RECV_ARMED) {
            self.ring.cancel(Token::new(Op::Recv, slot, s.generation));
        }
        self.maybe_release(slot);
    }

    /// Frees a closed slot whose operations have all completed (and whose decoder is not out
    /// delivering events): uncounts it, drops its subscriptions, closes its socket.
    pub(super) fn maybe_release(&mut self, slot: u32) {
        let s = self.core.slab.get_mut(slot);
        if s.machine.phase() != Phase::Closed || s.ops_in_flight() {
            return;
        }
        let Some(rx) = s.rx.as_ref() else {
            return; // out in `frames`, which puts it back and releases after
        };
        let held = rx.assembly_bytes();
        self.policy.release(&self.shared.counters, s, held);
        // The ring's table lets go of the socket before the slot closes its descriptor.
        self.ring.uninstall(slot);
        self.core.release(slot);
    }
}
