//! Bytes in: receive completions, the handshake bytes, and the decode loop that unmasks frames in
//! place in the receive buffer and delivers each event.

use super::{Engine, Worker};
use crate::conn::{LARGE, Phase, io};
use crate::handler::Handler;
use crate::policy::{Verdict, peer_addr};
use crate::ring::{Cqe, Landing, Op, Token};
use crate::stats::{CloseStatus, MessageKind};
use ringws_protocol::{CloseCode, Event, Receiver, Reply, Role};
use std::io as stdio;
use std::os::fd::AsFd;
use tracing::{debug, error};

/// What a handshake step left to do.
pub(super) enum Handshake {
    /// The head is incomplete: keep the bytes for the next receive.
    Partial,
    /// Done (answered, refused or upgraded).
    Done,
}

impl<H: Handler> Worker<'_, H> {
    /// A receive completion: bytes (decoded in place in the buffer the kernel picked, or with
    /// receive bundles in each of the buffers it filled, in order, as if each were a receive of
    /// its own), the end of the stream, or an error.
    pub(super) fn on_recv(&mut self, token: Token, cqe: Cqe) {
        let bid = cqe.buffer();
        let kept = cqe.buffer_kept();
        let more = cqe.more();
        let res = cqe.result;
        let eng = &mut self.eng;
        let slot = token.slot;
        let Some(s) = eng.core.slab.find(slot, |g| token.is_generation(g)) else {
            error!(slot, "receive completion for a stale slot");
            if let Some(b) = bid {
                if res > 0 {
                    // Received for nobody: the bytes are dropped, the buffers kept track of.
                    if self.bufs.received(b, res as usize, kept) {
                        while let Some((piece, _)) = self.bufs.next_piece() {
                            self.bufs.done(piece);
                        }
                    }
                } else {
                    self.bufs.unused(b);
                }
            }
            return;
        };
        if let Some(landing) = s.extra.as_mut().and_then(|e| e.landing.take()) {
            // The receive in the air is the one-shot receive into a large frame's buffer.
            self.eng.on_landed(token, landing, res);
            return;
        }
        if !more {
            s.io &= !io::RECV_ARMED;
        }
        if res <= 0 {
            if let Some(b) = bid {
                self.bufs.unused(b);
            }
            match -res {
                0 => eng.peer_gone(slot),
                // ENOBUFS ends the multishot receive; the data waits in the socket until the re-arm.
                libc::ENOBUFS => {
                    self.bufs.ran_dry();
                    eng.core.slab.stats.buffers_exhausted.inc();
                    if !more {
                        if eng.policy.log.allow(eng.core.slab.now_ms()) {
                            debug!(
                                worker = eng.index,
                                "receive buffers exhausted; re-arming after this turn"
                            );
                        }
                        eng.core.slab.get_mut(slot).io |= io::STARVED;
                        eng.starved.push(slot);
                    }
                }
                // Cancelled on purpose: by a pause under backpressure (re-armed here if the queue
                // drained before this completion arrived) or by the slot's shutdown.
                libc::ECANCELED => {
                    if !more && eng.core.slab.get(slot).machine.wants_recv() {
                        eng.receive_next(slot);
                    }
                }
                e => {
                    if eng.core.slab.get(slot).machine.phase() != Phase::Closed {
                        debug!(slot, error = %stdio::Error::from_raw_os_error(e), "receive failed");
                    }
                    eng.peer_gone(slot);
                }
            }
            eng.maybe_release(slot);
            return;
        }
        if !bid.is_some_and(|b| self.bufs.received(b, res as usize, kept)) {
            error!(slot, ?bid, res, "receive completion without usable buffers");
            if let Some(b) = bid {
                self.bufs.unused(b);
            }
            eng.abort(slot, super::close::Cause::Error);
            eng.maybe_release(slot);
            return;
        }
        let phase = s.machine.phase();
        eng.core.slab.stats.socket_received_bytes.add(res as u64);
        let mut pieces = 0u32;
        while let Some((b, buf)) = self.bufs.next_piece() {
            pieces += 1;
            let eng = &mut self.eng;
            // Payloads of this piece sent on from a callback are lent, not copied (large ones).
            if let Some(l) = eng.core.slab.lending.as_mut() {
                l.set_window(Some((b, buf)));
            }
            let s = eng.core.slab.get(slot);
            if s.is_tls() && matches!(s.machine.phase(), Phase::Handshaking | Phase::Open) {
                // Decrypted (in place, mostly), then handled as a plain connection's bytes.
                let mut plain = std::mem::take(&mut eng.tls.plain);
                plain.clear();
                if eng.tls_input(slot, buf, &mut plain) {
                    eng.plaintext_in(slot, buf, &mut plain);
                }
                eng.tls.plain = plain;
            } else {
                eng.bytes_in(slot, buf);
            }
            if let Some(l) = eng.core.slab.lending.as_mut() {
                l.set_window(None);
            }
            self.bufs.done(b);
        }
        if pieces > 1 {
            self.eng.core.slab.stats.receive_bundles.inc();
        }
        let eng = &mut self.eng;
        if phase == Phase::Handshaking {
            // The answer (or the TLS flight) leaves after this batch, not at the turn's end.
            eng.setting_up.push(slot);
        }
        if !more && eng.core.slab.get(slot).machine.wants_recv() {
            eng.receive_next(slot);
        } else if more && eng.wants_receive_into_message(slot) {
            // A large frame is under way: stop the multishot receive; its last completion arms
            // the receive into the frame's buffer (what arrives before it is decoded as usual).
            let s = eng.core.slab.get_mut(slot);
            s.io |= io::SWITCHING;
            eng.ring.cancel(Token::new(Op::Recv, slot, s.generation));
        }
        eng.maybe_release(slot);
    }
}

impl<H: Handler> Engine<'_, H> {
    /// Bytes received on `slot` (decrypted, for TLS): the request head, frames, or nothing once
    /// closing (the last response or Close is queued; input is read only to reach the FIN).
    pub(super) fn bytes_in(&mut self, slot: u32, buf: &mut [u8]) {
        match self.core.slab.get(slot).machine.phase() {
            Phase::Handshaking => self.handshake_input(slot, buf),
            Phase::Open => {
                let now = self.core.slab.time();
                self.core.slab.get_mut(slot).machine.received(now);
                self.frames(slot, buf);
            }
            Phase::Closing | Phase::Closed | Phase::Free => {}
        }
    }

    /// Arms the multishot receive of `slot`.
    pub(super) fn arm_recv(&mut self, slot: u32) {
        let s = self.core.slab.get_mut(slot);
        let Some(fd) = s.fd.as_ref() else {
            return;
        };
        s.io |= io::RECV_ARMED;
        s.io &= !(io::STARVED | io::SWITCHING);
        let token = Token::new(Op::Recv, slot, s.generation);
        self.ring.recv_multi(fd.as_fd(), token);
    }

    /// Arms the receive of `slot` again after its multishot receive ended (counted).
    pub(super) fn rearm_recv(&mut self, slot: u32) {
        self.core.slab.stats.receive_rearms.inc();
        self.arm_recv(slot);
    }

    /// After `slot`'s receive ended (and the connection still reads): a receive straight into the
    /// buffer of the large frame in progress if it takes one, else the multishot receive again.
    fn receive_next(&mut self, slot: u32) {
        if !self.receive_into_message(slot) {
            self.rearm_recv(slot);
        }
    }

    /// Whether `slot` is a plain connection in the middle of a frame large enough
    /// (`recv_into_threshold`) to be received straight into its message's buffer, and is not
    /// switching to that already.
    pub(super) fn wants_receive_into_message(&self, slot: u32) -> bool {
        let from = self.cfg.recv_into_threshold as u64;
        let s = self.core.slab.get(slot);
        from > 0
            && !s.has(io::SWITCHING)
            && s.machine.phase() == Phase::Open
            && !s.is_tls()
            && s.rx.as_ref().is_some_and(|rx| rx.lendable() >= from)
    }

    /// Arms a one-shot receive of `slot` straight into the assembly buffer of the large frame in
    /// progress (the decoder lends it out, grown for at most as many bytes as it holds); false if
    /// the frame does not take one (the caller arms the multishot receive).
    fn receive_into_message(&mut self, slot: u32) -> bool {
        let s = self.core.slab.get_mut(slot);
        s.io &= !io::SWITCHING;
        if !self.wants_receive_into_message(slot) {
            return false;
        }
        let Some(mut rx) = self.core.slab.get_mut(slot).rx.take() else {
            return false;
        };
        let held = rx.assembly_bytes();
        let lent = rx.lend();
        let now_ms = self.core.slab.now_ms();
        let mut accounted = held;
        let within_cap = self.account_assembly(slot, now_ms, &mut accounted, rx.assembly_bytes());
        let armed = match lent {
            Some((buf, room)) if within_cap => {
                let s = self.core.slab.get_mut(slot);
                let token = Token::new(Op::Recv, slot, s.generation);
                let mut landing = Landing::new(buf, room);
                match s.fd.as_ref() {
                    Some(fd) if self.ring.recv_into(fd.as_fd(), token, &mut landing) => {
                        s.io |= io::RECV_ARMED;
                        s.io &= !io::STARVED;
                        s.extra().landing = Some(landing);
                        true
                    }
                    _ => {
                        if let Ok(buf) = landing.reclaim() {
                            rx.land(buf);
                        }
                        false
                    }
                }
            }
            Some((buf, _)) => {
                rx.land(buf);
                false
            }
            None => false,
        };
        if !within_cap {
            rx = self.assembly_full(slot, now_ms, accounted);
        }
        self.core.slab.get_mut(slot).rx = Some(rx);
        armed
    }

    /// The completion (`result`) of `slot`'s receive into a large frame's buffer, `landing`:
    /// the bytes go to the decoder (which unmasks them where they landed and completes the
    /// message at the frame's end), then the next receive is armed, into the buffer again while
    /// the frame is still large.
    pub(super) fn on_landed(&mut self, token: Token, landing: Landing, result: i32) {
        let slot = token.slot;
        let s = self.core.slab.get_mut(slot);
        let buf = match landing.land(token, result) {
            Ok(buf) => buf,
            Err(landing) => {
                // Not this receive's completion: the buffer stays where the kernel may write it.
                s.extra().landing = Some(landing);
                return;
            }
        };
        s.io &= !io::RECV_ARMED;
        match s.rx.as_mut() {
            Some(rx) => rx.land(buf),
            None => error!(slot, "a landed receive for a connection without a decoder"),
        }
        s.trim_extra();
        match result {
            n if n > 0 => {
                let stats = &self.core.slab.stats;
                stats.socket_received_bytes.add(n as u64);
                stats.received_into_message.inc();
                self.bytes_in(slot, &mut []);
            }
            0 => self.peer_gone(slot),
            e if e == -libc::ECANCELED => {}
            e => {
                if self.core.slab.get(slot).machine.phase() != Phase::Closed {
                    let e = stdio::Error::from_raw_os_error(-e);
                    debug!(slot, error = %e, "receive failed");
                }
                self.peer_gone(slot);
            }
        }
        if self.core.slab.get(slot).machine.wants_recv()
            && !self.core.slab.get(slot).has(io::RECV_ARMED)
        {
            self.receive_next(slot);
        }
        self.maybe_release(slot);
    }

    /// Bytes received while handshaking. `buf` is parsed in place when no earlier part of the head
    /// is pending; otherwise it is appended to what is.
    fn handshake_input(&mut self, slot: u32, buf: &mut [u8]) {
        let pending = self
            .core
            .slab
            .get_mut(slot)
            .extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.handshake))
            .filter(|h| !h.is_empty());
        match pending {
            None => {
                if let Handshake::Partial = self.handshake(slot, buf) {
                    self.core.slab.get_mut(slot).extra().handshake = buf.to_vec();
                }
            }
            Some(mut acc) => {
                acc.extend_from_slice(buf);
                if let Handshake::Partial = self.handshake(slot, &mut acc) {
                    self.core.slab.get_mut(slot).extra().handshake = acc;
                } else {
                    self.core.slab.get_mut(slot).trim_extra();
                }
            }
        }
    }

    /// A request (server) or `101` (client) head, complete or not, with any frames behind it.
    fn handshake(&mut self, slot: u32, input: &mut [u8]) -> Handshake {
        if self.core.slab.get(slot).machine.is_client() {
            self.client_handshake(slot, input)
        } else {
            self.server_handshake(slot, input)
        }
    }

    /// Decodes frames from a receive buffer of an open connection, in place, delivering each event.
    pub(super) fn frames(&mut self, slot: u32, buf: &mut [u8]) {
        // The decoder is taken out of the slot while its events (which borrow it) are delivered
        // with the slab lent to callbacks; the slot is not freed meanwhile (see `maybe_release`).
        let Some(mut rx) = self.core.slab.get_mut(slot).rx.take() else {
            error!(slot, "a connection without a decoder");
            return;
        };
        let now_ms = self.core.slab.now_ms();
        let limits = self.core.slab.config().limits;
        let mut accounted = rx.assembly_bytes();
        let inflated_before = rx.inflate_totals();
        let mut delivered = false;
        let mut within_cap = true;
        let mut pos = 0;
        // Empty input: bytes landed in the decoder's own buffer (a large frame's), read once.
        let mut landed = buf.is_empty();
        while (landed || pos < buf.len()) && self.core.slab.get(slot).machine.is_open() {
            landed = false;
            // Growth is accounted after each frame taken into assembly (the decoder stops there),
            // so a connection over the cap is closed before anything behind that frame is acted on.
            within_cap = self.account_assembly(slot, now_ms, &mut accounted, rx.assembly_bytes());
            if !within_cap {
                break;
            }
            // An event's payload outside these bytes was assembled in the decoder.
            let in_place = buf[pos..].as_ptr_range();
            match rx.read(&mut buf[pos..], &limits) {
                Ok((used, event)) => {
                    pos += used;
                    match event {
                        Some(event) => {
                            delivered |= matches!(event, Event::Text(_) | Event::Binary(_));
                            let (kind, len) = event_kind(&event);
                            let stats = &self.core.slab.stats;
                            stats.received.inc(kind);
                            stats.received_bytes.add(kind, len as u64);
                            let s = self.core.slab.get_mut(slot);
                            let assembled = match &event {
                                Event::Text(t) => !in_place.contains(&t.as_ptr()),
                                Event::Binary(b) => !in_place.contains(&b.as_ptr()),
                                _ => false,
                            };
                            match self.policy.admit_event(now_ms, s, &event) {
                                // A large assembled message is taken from the decoder, so that
                                // sends of it can queue it instead of copying it.
                                Verdict::Deliver if assembled && len >= LARGE => {
                                    match rx.take_message() {
                                        Some(message) => self.dispatch_taken(slot, message),
                                        None => error!(slot, "an assembled message not taken"),
                                    }
                                }
                                Verdict::Deliver => self.dispatch(slot, event),
                                Verdict::Ignore => {}
                                Verdict::Close(reason) => {
                                    let slab = &mut self.core.slab;
                                    slab.stats
                                        .violations
                                        .inc(CloseStatus(CloseCode::POLICY_VIOLATION.0));
                                    slab.close(slot, CloseCode::POLICY_VIOLATION, reason);
                                    self.deliver_closes();
                                }
                            }
                        }
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(e) => {
                    self.log_violation(slot, &e, "protocol violation");
                    match e.reply() {
                        Reply::Close(code) => {
                            self.core.slab.stats.violations.inc(CloseStatus(code.0));
                            self.core.slab.close(slot, code, &e.to_string());
                        }
                        Reply::Status(_) | Reply::Drop => {
                            let code = CloseStatus(CloseCode::PROTOCOL_ERROR.0);
                            self.core.slab.stats.violations.inc(code);
                            self.abort(slot, super::close::Cause::Error);
                        }
                    }
                    self.deliver_closes();
                    break;
                }
            }
        }
        rx.release();
        if let (Some((in0, out0)), Some((in1, out1))) = (inflated_before, rx.inflate_totals()) {
            let stats = &self.core.slab.stats;
            stats.deflate_received_compressed.add(in1 - in0);
            stats.deflate_received_uncompressed.add(out1 - out0);
        }
        let busy = rx.in_progress();
        if !within_cap || !self.account_assembly(slot, now_ms, &mut accounted, rx.assembly_bytes())
        {
            rx = self.assembly_full(slot, now_ms, accounted);
        } else {
            let now = self.core.slab.time();
            let s = self.core.slab.get_mut(slot);
            if s.machine.message_progress(now, busy, delivered) {
                self.core.slab.schedule(slot);
            }
        }
        self.core.slab.get_mut(slot).rx = Some(rx);
    }

    /// `slot` took the assembly memory over `max_assembly_memory`: closes it with 1009, uncounts
    /// the `accounted` bytes its decoder holds and returns a fresh decoder to replace it.
    fn assembly_full(&mut self, slot: u32, now_ms: u64, accounted: usize) -> Receiver {
        let slab = &mut self.core.slab;
        slab.stats
            .violations
            .inc(CloseStatus(CloseCode::MESSAGE_TOO_BIG.0));
        slab.close(
            slot,
            CloseCode::MESSAGE_TOO_BIG,
            "server assembly memory full",
        );
        self.policy.assembly(
            &self.shared.counters,
            now_ms,
            self.core.slab.get(slot),
            accounted,
            0,
        );
        let rx = self.fresh_decoder(slot);
        self.deliver_closes();
        rx
    }

    /// Accounts `slot`'s assembly memory going from `accounted` to `held` against
    /// `max_assembly_memory` (`accounted` becomes `held`); false if it is now over the cap.
    fn account_assembly(
        &mut self,
        slot: u32,
        now_ms: u64,
        accounted: &mut usize,
        held: usize,
    ) -> bool {
        let from = std::mem::replace(accounted, held);
        self.policy.assembly(
            &self.shared.counters,
            now_ms,
            self.core.slab.get(slot),
            from,
            held,
        )
    }

    /// A new decoder for `slot`'s role (its old one is dropped with whatever it held).
    pub(super) fn fresh_decoder(&self, slot: u32) -> Receiver {
        let role = if self.core.slab.get(slot).machine.is_client() {
            Role::Client
        } else {
            Role::Server
        };
        Receiver::new(role)
    }

    /// Drops what `slot`'s decoder holds (a message in progress), uncounting its memory.
    pub(super) fn reset_decoder(&mut self, slot: u32) {
        let fresh = self.fresh_decoder(slot);
        let now_ms = self.core.slab.now_ms();
        if let Some(old) = self.core.slab.get_mut(slot).rx.replace(fresh) {
            let held = old.assembly_bytes();
            self.policy.assembly(
                &self.shared.counters,
                now_ms,
                self.core.slab.get(slot),
                held,
                0,
            );
        }
    }

    /// Logs a peer's protocol violation (rate-limited, at debug level).
    pub(super) fn log_violation(&mut self, slot: u32, e: &ringws_protocol::Error, what: &str) {
        if tracing::enabled!(tracing::Level::DEBUG)
            && self.policy.log.allow(self.core.slab.now_ms())
        {
            let peer = peer_addr(self.core.slab.get(slot));
            debug!(worker = self.index, ?peer, error = %e, "{what}");
        }
    }
}

/// The metrics kind and payload length of a decoded event.
fn event_kind(event: &Event<'_>) -> (MessageKind, usize) {
    match event {
        Event::Text(t) => (MessageKind::Text, t.len()),
        Event::Binary(b) => (MessageKind::Binary, b.len()),
        Event::Ping(p) => (MessageKind::Ping, p.len()),
        Event::Pong(p) => (MessageKind::Pong, p.len()),
        Event::Close(f) => (MessageKind::Close, f.map_or(0, |f| 2 + f.reason.len())),
    }
}
