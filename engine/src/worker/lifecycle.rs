//! Connections arriving and the passing of time: accepting (and refusing at the door), the timer
//! wheel's checks, and shutting down.

use super::Engine;
use super::close::Cause;
use crate::conn::wheel::TICK_MS;
use crate::conn::{Check, Expired, Phase};
use crate::handler::Handler;
use crate::ring::{Cqe, Op, Token};
use crate::stats::{Rejection, TimerKind};
use ringws_protocol::CloseCode;
use ringws_protocol::frame::OpCode;
use ringws_protocol::handshake::write_response;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tracing::{debug, warn};

/// How often the queued-bytes gauge is refreshed (a walk over the worker's slots), in ms.
const QUEUED_REFRESH_MS: u64 = 1_000;

impl<H: Handler> Engine<'_, H> {
    /// Arms the multishot accept of every listener that has none armed (a client-only engine
    /// has no listener).
    pub(super) fn arm_accept(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(fd) = l.fd.as_ref().filter(|_| !l.armed) {
                self.ring
                    .accept_multi(fd.as_fd(), Token::new(Op::Accept, i as u32, 0));
                l.armed = true;
            }
        }
    }

    /// An accept completion: a new connection (answered 503/429 at once if over a limit), or an
    /// error (out of descriptors: accepting pauses for a tick).
    pub(super) fn on_accept(&mut self, cqe: Cqe) {
        let index = cqe.token.map_or(0, |t| t.slot as usize);
        let Some(listener) = self.listeners.get_mut(index) else {
            return; // a completion of an accept cancelled at shutdown
        };
        if !cqe.more() {
            listener.armed = false;
        }
        let tls = listener.tls;
        let result = cqe.result;
        let now_ms = self.core.slab.now_ms();
        if let Some(fd) = cqe.accepted() {
            self.core.slab.stats.accepted.inc();
            let live = self.core.slab.live();
            if self.shutdown_deadline.is_some() || live >= self.hard_cap {
                drop(fd);
                self.core.slab.stats.rejected.inc(Rejection::Limit);
                if self.shutdown_deadline.is_none() && self.policy.log.allow(now_ms) {
                    warn!(
                        worker = self.index,
                        "connection limit far exceeded; closing new connections"
                    );
                }
            } else {
                let slot = self.take_slot(fd, false);
                let over_worker = live + 1 > self.cfg.max_connections;
                let refused = self.policy.admit(
                    &self.shared.counters,
                    now_ms,
                    self.core.slab.get_mut(slot),
                    over_worker,
                );
                if let Some((status, reason)) = refused {
                    self.core.slab.stats.rejected.inc(reason);
                    if tls {
                        // No HTTP answer can precede the TLS handshake: dropped at once.
                        self.core.slab.get_mut(slot).machine.close_now();
                        self.maybe_release(slot);
                        return self.rearm_accept();
                    }
                    self.core
                        .slab
                        .out(slot)
                        .push_raw(|out| write_response(out, status, &[("Retry-After", "1")], b""));
                    self.core.slab.begin_closing(slot);
                } else if tls && !self.start_tls(slot) {
                    return self.rearm_accept();
                }
                self.arm_recv(slot);
                self.setting_up.push(slot);
            }
        } else if result < 0 {
            match -result {
                libc::ECANCELED => {}
                e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    if self.policy.log.allow(now_ms) {
                        warn!(
                            worker = self.index,
                            error = %io::Error::from_raw_os_error(e),
                            "accept failed; pausing accepts for one tick"
                        );
                    }
                    self.accept_paused = Some(now_ms);
                }
                e => {
                    debug!(worker = self.index, error = %io::Error::from_raw_os_error(e), "accept failed")
                }
            }
        }
        self.rearm_accept();
    }

    /// Takes a free slot for socket `fd` (a client connection's if `client`) and installs the
    /// socket as the slot's direct descriptor where the ring has a file table (else, and if the
    /// kernel refuses, the slot's operations use `fd`).
    pub(super) fn take_slot(&mut self, fd: OwnedFd, client: bool) -> u32 {
        let slot = self.core.slab.alloc(fd, client);
        if let Some(fd) = self.core.slab.get(slot).fd.as_ref()
            && let Err(e) = self.ring.install(slot, fd.as_fd())
        {
            debug!(worker = self.index, slot, error = %e, "installing a direct descriptor failed");
        }
        slot
    }

    /// Arms the accepts again that ended, unless accepting is paused or over.
    fn rearm_accept(&mut self) {
        if self.accept_paused.is_none() && self.shutdown_deadline.is_none() {
            self.arm_accept();
        }
    }

    /// After the turn's completions: fires the wheel's due checks, resumes a paused accept, and
    /// forces the shutdown once its drain has timed out.
    pub(super) fn tick(&mut self) {
        self.policy.new_turn();
        let now_ms = self.core.slab.now_ms();
        let mut due = std::mem::take(&mut self.due);
        self.core.slab.advance(&mut due);
        for entry in due.drain(..) {
            if self.core.slab.take_due(&entry) {
                self.check(entry.slot);
            }
        }
        self.due = due;
        if now_ms >= self.queued_refreshed + QUEUED_REFRESH_MS {
            self.queued_refreshed = now_ms;
            let queued = self.core.slab.queued_bytes();
            self.core.slab.stats.queued_bytes.set(queued);
        }
        if self.accept_paused.is_some_and(|at| now_ms >= at + TICK_MS) {
            self.accept_paused = None;
            if self.shutdown_deadline.is_none() {
                self.arm_accept();
            }
        }
        if let Some(deadline) = self.shutdown_deadline
            && now_ms >= deadline
            && !self.forced
        {
            warn!(
                worker = self.index,
                live = self.core.slab.live(),
                "shutdown drain timed out"
            );
            self.force_close();
        }
    }

    /// Slot `slot`'s wheel entry fired: ask its machine what is due.
    fn check(&mut self, slot: u32) {
        let now = self.core.slab.time();
        let timeouts = self.core.slab.config().timeouts;
        match self.core.slab.get_mut(slot).machine.check(now, &timeouts) {
            Check::Later(_) => self.core.slab.schedule(slot),
            Check::Ping(_) => {
                self.core.slab.stats.timers.inc(TimerKind::Ping);
                self.core.slab.send_control(slot, OpCode::Ping, b"");
                self.core.slab.schedule(slot);
            }
            Check::Expired(expired) => self.expired(slot, expired),
        }
    }

    /// A timer of `slot` expired.
    fn expired(&mut self, slot: u32, expired: Expired) {
        let stats = &self.core.slab.stats;
        stats.timers.inc(match expired {
            Expired::Handshake => TimerKind::Handshake,
            Expired::Idle => TimerKind::Idle,
            Expired::Pong => TimerKind::Pong,
            Expired::Message => TimerKind::Message,
            Expired::Close => TimerKind::Close,
        });
        if expired == Expired::Handshake && !self.core.slab.get(slot).machine.is_client() {
            stats.rejected.inc(Rejection::HandshakeTimeout);
        }
        match expired {
            Expired::Handshake | Expired::Close | Expired::Pong => {
                debug!(
                    worker = self.index,
                    slot,
                    ?expired,
                    "timed out; dropping the connection"
                );
                self.abort(slot, Cause::Timeout);
            }
            Expired::Idle => {
                self.core
                    .slab
                    .close(slot, CloseCode::GOING_AWAY, "idle timeout");
                self.deliver_closes();
            }
            Expired::Message => {
                let now_ms = self.core.slab.now_ms();
                let code = crate::stats::CloseStatus(CloseCode::POLICY_VIOLATION.0);
                self.core.slab.stats.violations.inc(code);
                self.policy
                    .message_overdue(now_ms, self.core.slab.get(slot));
                self.core
                    .slab
                    .close(slot, CloseCode::POLICY_VIOLATION, "message timeout");
                self.reset_decoder(slot);
                self.deliver_closes();
            }
        }
    }

    /// Stops accepting and starts the closing handshake (1001) on every open connection.
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let now_ms = self.core.slab.now_ms();
        self.shutdown_deadline = Some(now_ms + self.cfg.shutdown_timeout.as_millis() as u64);
        self.core.outbound.shutting_down = true;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if l.armed {
                self.ring.cancel(Token::new(Op::Accept, i as u32, 0));
            }
            l.fd = None; // the accept holds its own reference until cancelled
        }
        for slot in 0..self.core.slab.capacity() {
            let m = &self.core.slab.get(slot).machine;
            if m.is_open() {
                self.core
                    .slab
                    .close(slot, CloseCode::GOING_AWAY, "server shutting down");
            } else if m.phase() == Phase::Handshaking {
                self.abort(slot, Cause::Shutdown);
            }
        }
        self.deliver_closes();
    }

    /// Aborts every remaining connection (second signal, or the drain timed out).
    pub(super) fn force_close(&mut self) {
        self.begin_shutdown();
        self.forced = true;
        for slot in 0..self.core.slab.capacity() {
            self.abort(slot, Cause::Shutdown);
        }
    }
}
