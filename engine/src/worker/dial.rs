//! The worker's side of client connections (see [`crate::connect`]): starting queued connects,
//! their completions, the `101` check, failures before open, and the wake-up timer of
//! [`Context::wake_at`](crate::Context::wake_at).
//!
//! A client slot is `Handshaking` from the start of its connect until the `101`, with the
//! `CONNECTING` bit set while the `CONNECT` is in flight; the slot is not freed before that
//! completion arrives (a shut-down slot cancels it). Its target and handshake key live in the slot's
//! extras until the `101`; the address the kernel reads is kept by the ring until the completion.

use super::Engine;
use super::recv::Handshake;
use crate::conn::{Dial, Phase, TlsSide, io};
use crate::connect::{Connect, ConnectError, MAX_DIALING};
use crate::deflate;
use crate::handler::Handler;
use crate::ring::{Clock, Op, Token, sys};
use crate::tls::Session;
use ringws_protocol::deflate::Params;
use ringws_protocol::handshake::{ClientHandshake, ResponseParse};
use socket2::{Domain, Protocol, SockAddr, Type};
use std::io as stdio;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;
use tracing::error;

/// Per-worker client state.
#[derive(Default)]
pub(super) struct Dialer {
    /// `CONNECT`s in flight.
    connecting: usize,
    /// The wake-up operation in flight: the instant it was armed for and its sequence number.
    armed: Option<(Instant, u32)>,
    seq: u32,
}

/// Creates the socket of a connect: non-delayed, bound to the source address if one is set.
fn dial_socket(target: &Connect) -> Result<OwnedFd, ConnectError> {
    let io = |during| move |error| ConnectError::Io { during, error };
    let addr = target.addr();
    let s = socket2::Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io("creating a socket"))?;
    s.set_tcp_nodelay(true).map_err(io("setting TCP_NODELAY"))?;
    if let Some(bytes) = target.recv_buffer_size() {
        s.set_recv_buffer_size(bytes)
            .map_err(io("setting SO_RCVBUF"))?;
    }
    if let Some(ip) = target.source_ip() {
        // Defer the port choice to connect time: the kernel then picks a port free for this
        // destination, instead of one free for every destination, so each source address offers
        // the whole ephemeral range to each server (Linux 4.2). Best effort: without it the bind
        // still works, with fewer ports.
        let _ = sys::set_bind_address_no_port(s.as_fd());
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(io("binding the source address"))?;
    }
    Ok(s.into())
}

impl<H: Handler> Engine<'_, H> {
    /// Calls `on_start`, then starts the connects it asked for.
    pub(super) fn start_client(&mut self) {
        self.call_ctx(|h, ctx| h.on_start(ctx));
        self.dial_turn();
    }

    /// End of a loop turn: starts queued connects (up to [`MAX_DIALING`] in flight; all fail with
    /// [`ConnectError::Shutdown`] once shutting down) and arms the wake-up timer if one is asked for.
    pub(super) fn dial_turn(&mut self) {
        if self.shutdown_deadline.is_some() {
            // Only those queued now: a handler that reconnects from `on_connect_error` gets its
            // new request refused next turn, not in an endless loop here.
            let queued = std::mem::take(&mut self.core.outbound.dials);
            for (_, state) in queued {
                self.report(state, ConnectError::Shutdown);
            }
        } else {
            while self.dial.connecting < MAX_DIALING
                && let Some((target, state)) = self.core.outbound.dials.pop_front()
            {
                self.start_dial(target, state);
            }
        }
        self.arm_wakeup();
    }

    /// Creates the socket, takes a slot and submits the `CONNECT`.
    fn start_dial(&mut self, target: Connect, state: H::State) {
        let fd = match dial_socket(&target) {
            Ok(fd) => fd,
            Err(e) => return self.report(state, e),
        };
        let slot = self.take_slot(fd, true);
        if let Some((client, name)) = target.tls_target() {
            match Session::client(client, name.clone()) {
                Ok(session) => {
                    self.core.slab.get_mut(slot).extra().tls = Some(Box::new(TlsSide {
                        session,
                        plain: None,
                    }))
                }
                Err(e) => {
                    self.core.slab.get_mut(slot).machine.close_now();
                    self.maybe_release(slot);
                    return self.report(state, ConnectError::Tls(e));
                }
            }
        }
        let s = self.core.slab.get_mut(slot);
        s.io |= io::CONNECTING;
        s.state = state;
        let addr = SockAddr::from(target.addr());
        s.extra().dial = Some(Dial {
            target,
            handshake: ClientHandshake::new(),
        });
        let token = Token::new(Op::Connect, slot, s.generation);
        if let Some(fd) = s.fd.as_ref() {
            self.ring.connect(fd.as_fd(), addr, token);
            self.dial.connecting += 1;
        }
    }

    /// A `CONNECT` completed: on success, queue the upgrade request and start receiving.
    pub(super) fn on_connect(&mut self, token: Token, res: i32) {
        self.ring.connect_done(token);
        let slot = token.slot;
        let Some(s) = self.core.slab.find(slot, |g| token.is_generation(g)) else {
            error!(slot, "connect completion for a stale slot");
            return;
        };
        if !s.has(io::CONNECTING) {
            error!(slot, "connect completion for a slot not connecting");
            return;
        }
        s.io &= !io::CONNECTING;
        self.dial.connecting -= 1;
        if s.machine.phase() != Phase::Handshaking {
            // Aborted meanwhile (and reported then).
            self.maybe_release(slot);
            return;
        }
        if res < 0 {
            let error = stdio::Error::from_raw_os_error(-res);
            self.fail_dial(
                slot,
                ConnectError::Io {
                    during: "connecting",
                    error,
                },
            );
            return;
        }
        let Some(dial) = s.extra.as_mut().and_then(|e| e.dial.take()) else {
            error!(slot, "connected slot without its target");
            return self.abort(slot, super::close::Cause::Error);
        };
        // For wss:// the request waits in the plaintext queue until the TLS handshake is done,
        // which starts here with the ClientHello.
        self.core
            .slab
            .out(slot)
            .push_raw(|out| dial.target.write_request(&dial.handshake, out));
        self.core.slab.get_mut(slot).extra().dial = Some(dial);
        if self.core.slab.get(slot).is_tls() {
            let mut plain = crate::tls::Plaintext::default();
            self.tls_input(slot, &mut [], &mut plain);
        }
        self.arm_recv(slot);
    }

    /// Reads the server's answer (everything received so far): `101` opens the connection, anything
    /// else fails it.
    pub(super) fn client_handshake(&mut self, slot: u32, input: &mut [u8]) -> Handshake {
        let Some(dial) = self
            .core
            .slab
            .get_mut(slot)
            .extra
            .as_mut()
            .and_then(|e| e.dial.take())
        else {
            error!(slot, "client handshake without a pending connect");
            self.abort(slot, super::close::Cause::Error);
            return Handshake::Done;
        };
        let offered: Vec<&str> = dial.target.protocols().collect();
        let policy = dial.target.deflate_policy();
        let offer = policy.map(|d| d.offer());
        let parsed = dial
            .handshake
            .parse_response(input, &offered, offer.as_deref(), self.cfg.max_header_bytes)
            .and_then(|r| match r {
                ResponseParse::Partial => Ok(None),
                ResponseParse::Complete(resp) => {
                    // The extension the server agreed to, checked against our offer (RFC 7692 §7.1).
                    let agreed = match (policy, resp.extensions) {
                        (Some(policy), Some(selected)) => {
                            Params::from_response(selected, policy)?.map(|params| (params, *policy))
                        }
                        _ => None,
                    };
                    Ok(Some((resp.head_len, agreed)))
                }
            });
        let (head_len, agreed) = match parsed {
            Ok(None) => {
                self.core.slab.get_mut(slot).extra().dial = Some(dial);
                return Handshake::Partial;
            }
            Ok(Some(done)) => done,
            Err(e) => {
                self.log_violation(slot, &e, "invalid handshake response");
                self.fail_dial(slot, ConnectError::Handshake(e));
                return Handshake::Done;
            }
        };
        let now = self.core.slab.time();
        let s = self.core.slab.get_mut(slot);
        if let Some((params, policy)) = agreed {
            let (conn, rx) = deflate::connect(params, &policy);
            s.extra().deflate = Some(conn);
            s.rx = Some(rx);
        }
        let took = s.machine.open(now);
        s.trim_extra();
        if let Some(took) = took {
            self.core
                .slab
                .stats
                .handshake
                .observe_us(u64::from(took) * 1000);
        }
        self.core.slab.schedule(slot);
        self.call(slot, |h, ws| h.on_open(ws));
        if head_len < input.len() && self.core.slab.get(slot).machine.is_open() {
            // Frames that came in the same read as the 101.
            self.frames(slot, &mut input[head_len..]);
        }
        Handshake::Done
    }

    /// Reports a client connection that failed before its `101` (the caller shuts the slot down).
    pub(super) fn dial_failed(&mut self, slot: u32, error: ConnectError) {
        let s = self.core.slab.get_mut(slot);
        if let Some(e) = s.extra.as_mut() {
            e.dial = None;
        }
        let state = std::mem::take(&mut s.state);
        self.report(state, error);
    }

    /// Cancels the connect of a slot being shut down, if it is in flight.
    pub(super) fn cancel_connect(&mut self, slot: u32) {
        let s = self.core.slab.get(slot);
        if s.has(io::CONNECTING) {
            self.ring
                .cancel(Token::new(Op::Connect, slot, s.generation));
        }
    }

    /// Fails a client connection before its `101`: reports, then shuts the slot down.
    pub(super) fn fail_dial(&mut self, slot: u32, error: ConnectError) {
        self.dial_failed(slot, error);
        self.shut_down_slot(slot);
    }

    /// Calls `on_connect_error`.
    fn report(&mut self, state: H::State, error: ConnectError) {
        self.call_ctx(|h, ctx| h.on_connect_error(ctx, state, &error));
    }

    /// Arms the wake-up operation if a wake-up is asked for and none in flight fires by then: a
    /// timeout, or a no-op if it is already due.
    fn arm_wakeup(&mut self) {
        let Some(at) = self.core.outbound.wake else {
            return;
        };
        if self.dial.armed.is_some_and(|(armed, _)| armed <= at) {
            return;
        }
        self.dial.seq = self.dial.seq.wrapping_add(1) & crate::ring::GENERATION_BITS;
        let token = Token::new(Op::Wakeup, 0, self.dial.seq);
        let now = Instant::now();
        if at <= now {
            self.ring.nop(token);
        } else {
            self.ring.timeout(Clock::Wakeup, at - now, token);
        }
        self.dial.armed = Some((at, self.dial.seq));
    }

    /// The wake-up operation `seq` completed: call `on_wake` if the wake-up asked for is due.
    pub(super) fn on_wakeup(&mut self, seq: u32) {
        if self.dial.armed.is_some_and(|(_, s)| s == seq) {
            self.dial.armed = None;
        }
        match self.core.outbound.wake {
            Some(at) if at <= Instant::now() => {
                self.core.outbound.wake = None;
                self.call_ctx(|h, ctx| h.on_wake(ctx));
            }
            // Early (a superseded timeout): the next turn re-arms for the current request.
            _ => {}
        }
    }
}
