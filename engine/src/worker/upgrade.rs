//! The server's HTTP side: a request head is parsed in place, then answered — plain HTTP through
//! `on_http`, an invalid upgrade with the RFC's status, a refused one with the policy's or the
//! handler's answer — or upgraded: `101`, permessage-deflate negotiated, `on_open`, and any frames
//! the client sent behind its request decoded at once.

use super::Engine;
use super::recv::Handshake;
use crate::deflate;
use crate::handler::{Decision, Handler, HttpResponse};
use crate::stats::{HttpStatus, Rejection};
use ringws_protocol::handshake::{
    Parse, Request, error_status, parse_request, write_accept_response, write_error_response,
};
use tracing::warn;

impl<H: Handler> Engine<'_, H> {
    /// Handles the bytes of a request head: `input` holds everything received so far.
    pub(super) fn server_handshake(&mut self, slot: u32, input: &mut [u8]) -> Handshake {
        let req = match parse_request(input, self.cfg.max_header_bytes) {
            Ok(Parse::Partial) => return Handshake::Partial,
            Ok(Parse::Complete(req)) => req,
            Err(e) => {
                self.log_violation(slot, &e, "bad handshake request");
                self.refused(Rejection::HandshakeError, error_status(&e));
                self.core
                    .slab
                    .out(slot)
                    .push_raw(|out| write_error_response(out, &e));
                self.core.slab.begin_closing(slot);
                return Handshake::Done;
            }
        };
        let head_len = req.head_len();
        if !self.upgrade(slot, &req) {
            return Handshake::Done;
        }
        self.call(slot, |h, ws| h.on_open(ws));
        if head_len < input.len() && self.core.slab.get(slot).machine.is_open() {
            // The client did not wait for the 101 before sending its first frames.
            self.frames(slot, &mut input[head_len..]);
        }
        Handshake::Done
    }

    /// Counts a refused upgrade request: its reason and the status it was answered with.
    fn refused(&mut self, reason: Rejection, status: u16) {
        let stats = &self.core.slab.stats;
        stats.rejected.inc(reason);
        stats.upgrades.inc(HttpStatus(status));
    }

    /// Queues `resp` as the connection's last output and starts closing it.
    pub(super) fn respond(&mut self, slot: u32, resp: &HttpResponse) {
        self.core.slab.out(slot).push_raw(|out| resp.write_to(out));
        self.core.slab.begin_closing(slot);
    }

    /// Answers a complete request: plain HTTP, invalid upgrade, refused or accepted upgrade. Returns
    /// whether the connection is now open.
    fn upgrade(&mut self, slot: u32, req: &Request<'_>) -> bool {
        if !req.is_upgrade() {
            let ops = &self.shared.ops;
            let own = ops.on_main_port.then(|| ops.respond(req)).flatten();
            let resp = own.unwrap_or_else(|| {
                self.answer(|h| h.on_http(req))
                    .unwrap_or_else(|| HttpResponse::new(500))
            });
            self.respond(slot, &resp);
            return false;
        }
        let key = match req.validate_upgrade() {
            Ok(key) => key,
            Err(e) => {
                self.log_violation(slot, &e, "invalid upgrade request");
                self.refused(Rejection::HandshakeError, error_status(&e));
                self.core
                    .slab
                    .out(slot)
                    .push_raw(|out| write_error_response(out, &e));
                self.core.slab.begin_closing(slot);
                return false;
            }
        };
        let now_ms = self.core.slab.now_ms();
        let preferred = match self
            .policy
            .check_upgrade(now_ms, self.core.slab.get(slot), req)
        {
            Ok(preferred) => preferred.map(str::to_owned),
            Err(refusal) => {
                self.refused(refusal.reason, refusal.status);
                self.respond(slot, &HttpResponse::text(refusal.status, &refusal.body));
                return false;
            }
        };
        match self.answer(|h| h.on_upgrade(req)) {
            Some(Decision::Accept { protocol, state }) => {
                // RFC 6455 §4.2.2: the server may only select a subprotocol the client offered.
                let offered = |p: &&str| req.subprotocols().any(|o| o == *p);
                if let Some(p) = protocol.filter(|p| !offered(p)) {
                    warn!(
                        protocol = p,
                        "on_upgrade selected a subprotocol the client did not offer; selecting none"
                    );
                }
                let protocol = protocol.filter(offered).or(preferred.as_deref());
                let agreed =
                    self.cfg.deflate.as_ref().and_then(|config| {
                        deflate::accept(req, config, &self.shared.deflate_budget)
                    });
                let extensions = agreed.as_ref().map(|(_, _, header)| header.as_str());
                self.core
                    .slab
                    .out(slot)
                    .push_raw(|out| write_accept_response(out, key, protocol, extensions));
                let now = self.core.slab.time();
                let s = self.core.slab.get_mut(slot);
                if let Some((conn, rx, _)) = agreed {
                    s.extra().deflate = Some(conn);
                    s.rx = Some(rx);
                }
                s.state = state;
                let took = s.machine.open(now);
                let stats = &self.core.slab.stats;
                stats.upgrades.inc(HttpStatus(101));
                if let Some(took) = took {
                    stats.handshake.observe_us(u64::from(took) * 1000);
                }
                self.core.slab.schedule(slot);
                true
            }
            Some(Decision::Reject(resp)) => {
                self.refused(Rejection::Handler, resp.status);
                self.respond(slot, &resp);
                false
            }
            None => {
                self.refused(Rejection::Handler, 500);
                self.respond(slot, &HttpResponse::new(500));
                false
            }
        }
    }
}
