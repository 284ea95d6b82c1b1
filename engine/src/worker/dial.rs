//! The worker's side of client connections (see [`crate::client`]): starting queued connects,
//! their completions, the `101` check, failures before open, and the wake-up timer of
//! [`Context::wake_at`].
//!
//! A client slot is `Handshaking` from the start of its connect until the `101`, with
//! `connecting` set while the `CONNECT` is in flight; the slot is not freed before that
//! completion arrives (a shut-down slot cancels it). Its target, handshake key and socket address
//! live in a boxed [`Pending`] until then, so the address the kernel reads stays put.

use super::{Engine, Handshake, Op, user_data};
use crate::client::{Connect, ConnectError, Context, MAX_DIALING};
use crate::conn::{NO_TIMER, Phase};
use crate::handler::Handler;
use io_uring::{opcode, types};
use ringws_protocol::deflate::Params;
use ringws_protocol::handshake::{ClientHandshake, ResponseParse};
use ringws_protocol::{Receiver, Role};
use socket2::{Domain, Protocol, SockAddr, Type};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;
use tracing::error;

/// A client connection between the start of its connect and its `101`.
struct Pending {
    /// The server address, read by the kernel while the `CONNECT` is in flight.
    addr: SockAddr,
    target: Connect,
    handshake: ClientHandshake,
    /// The `CONNECT` has not completed yet.
    in_flight: bool,
}

/// Per-worker client state.
pub(super) struct Dialer {
    /// By slot, until the `101` or the failure (and the connect's completion).
    pending: HashMap<u32, Box<Pending>>,
    /// `CONNECT`s in flight.
    connecting: usize,
    /// The wake-up operation in flight: the instant it was armed for and its sequence number.
    armed: Option<(Instant, u32)>,
    seq: u32,
    /// Read by the kernel when the wake-up timeout is submitted; one is armed per loop turn at most.
    timespec: Box<types::Timespec>,
}

impl Dialer {
    pub(super) fn new() -> Self {
        Self {
            pending: HashMap::new(),
            connecting: 0,
            armed: None,
            seq: 0,
            timespec: Box::new(types::Timespec::new()),
        }
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        // A worker that exits with connects in flight (forced shutdown) leaks their addresses rather
        // than free memory the kernel may still read.
        for (_, p) in self.pending.drain() {
            if p.in_flight {
                std::mem::forget(p);
            }
        }
    }
}

/// Creates the socket of a connect: non-delayed, bound to the source address if one is set.
fn dial_socket(target: &Connect) -> Result<socket2::Socket, ConnectError> {
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
        let one: libc::c_int = 1;
        // SAFETY: a setsockopt on a socket we own, with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(io("binding the source address"))?;
    }
    Ok(s)
}

impl<H: Handler> Engine<'_, H> {
    /// Runs a worker-level callback with a [`Context`] and a panic guard, then delivers the
    /// `on_close` of connections it closed.
    fn call_ctx(&mut self, f: impl FnOnce(&mut H, &mut Context<'_, H::State>)) {
        let (handler, core) = (&mut self.app.handler, &mut self.app.core);
        let outcome = catch_unwind(AssertUnwindSafe(|| f(handler, &mut Context::new(core))));
        if outcome.is_err() {
            error!(worker = self.index, "a worker callback panicked");
        }
        self.app.deliver_closes();
    }

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
            let queued = std::mem::take(&mut self.app.core.outbound.dials);
            for (_, state) in queued {
                self.report(state, ConnectError::Shutdown);
            }
        } else {
            while self.dial.connecting < MAX_DIALING
                && let Some((target, state)) = self.app.core.outbound.dials.pop_front()
            {
                self.start_dial(target, state);
            }
        }
        self.arm_wakeup();
    }

    /// Creates the socket, takes a slot and submits the `CONNECT`.
    fn start_dial(&mut self, target: Connect, state: H::State) {
        let socket = match dial_socket(&target) {
            Ok(s) => s,
            Err(e) => return self.report(state, e),
        };
        let fd = socket.into_raw_fd();
        let slot = self.alloc(fd);
        let c = &mut self.app.core.conns[slot as usize];
        c.client = true;
        c.connecting = true;
        c.state = state;
        let generation = c.generation;
        let pending = Box::new(Pending {
            addr: SockAddr::from(target.addr()),
            target,
            handshake: ClientHandshake::new(),
            in_flight: true,
        });
        let e = opcode::Connect::new(
            types::Fd(fd),
            pending.addr.as_ptr().cast::<libc::sockaddr>(),
            pending.addr.len(),
        )
        .build()
        .user_data(user_data(Op::Connect, slot, generation));
        self.dial.pending.insert(slot, pending);
        self.dial.connecting += 1;
        // SAFETY: the address lives in the boxed `Pending` of this slot, which is neither moved
        // (boxed) nor freed until this connect's completion clears `in_flight` (or is leaked if
        // the worker exits first).
        unsafe { self.push(&e) };
    }

    /// A `CONNECT` completed: on success, queue the upgrade request and start receiving.
    pub(super) fn on_connect(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = self.app.core.conns.get_mut(slot as usize) else {
            error!(slot, "connect completion for an unknown slot");
            return;
        };
        if c.generation & 0xff_ffff != generation || !c.connecting {
            error!(slot, "connect completion for a stale slot");
            return;
        }
        c.connecting = false;
        let phase = c.phase;
        self.dial.connecting -= 1;
        if phase != Phase::Handshaking {
            // Aborted meanwhile (and reported then).
            self.dial.pending.remove(&slot);
            self.maybe_release(slot);
            return;
        }
        if res < 0 {
            self.dial.pending.remove(&slot);
            let error = io::Error::from_raw_os_error(-res);
            self.fail_dial(
                slot,
                ConnectError::Io {
                    during: "connecting",
                    error,
                },
            );
            return;
        }
        let Some(p) = self.dial.pending.get_mut(&slot) else {
            error!(slot, "connected slot without a pending handshake");
            return self.abort(slot);
        };
        p.in_flight = false;
        self.app
            .core
            .out(slot)
            .push_raw(|out| p.target.write_request(&p.handshake, out));
        self.arm_recv(slot);
    }

    /// Reads the server's answer (everything received so far): `101` opens the connection, anything
    /// else fails it.
    pub(super) fn client_handshake(&mut self, slot: u32, input: &mut [u8]) -> Handshake {
        let Some(p) = self.dial.pending.get(&slot) else {
            error!(slot, "client handshake without a pending connect");
            self.abort(slot);
            return Handshake::Done;
        };
        let offered: Vec<&str> = p.target.protocols().collect();
        let policy = p.target.deflate_policy();
        let offer = policy.map(|d| d.offer());
        let parsed = p
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
            Ok(None) => return Handshake::Partial,
            Ok(Some(done)) => done,
            Err(e) => {
                self.log_violation(slot, &e, "invalid handshake response");
                self.dial.pending.remove(&slot);
                self.fail_dial(slot, ConnectError::Handshake(e));
                return Handshake::Done;
            }
        };
        self.dial.pending.remove(&slot);
        self.rx[slot as usize] = match agreed {
            Some((params, policy)) => crate::deflate::connect(
                &mut self.app.core.deflate,
                slot,
                params,
                &policy,
                self.rx_limits,
            ),
            None => Receiver::new(Role::Client, self.rx_limits),
        };
        let now = self.app.core.now;
        let c = &mut self.app.core.conns[slot as usize];
        c.phase = Phase::Open;
        c.stamp = now;
        c.timer_at = NO_TIMER; // the handshake entry goes stale
        self.evaluate(slot);
        self.app.call(slot, |h, ws| h.on_open(ws));
        if head_len < input.len() && self.app.core.conns[slot as usize].phase == Phase::Open {
            // Frames that came in the same read as the 101.
            self.frames(slot, &mut input[head_len..]);
        }
        Handshake::Done
    }

    /// Reports a client connection that is being aborted before its `101`: shutting down, past
    /// `handshake_timeout`, or otherwise (the peer closed, a socket error) [`ConnectError::Closed`].
    pub(super) fn dial_aborted(&mut self, slot: u32) {
        let core = &self.app.core;
        let c = &core.conns[slot as usize];
        let error = if self.shutdown_deadline.is_some() {
            ConnectError::Shutdown
        } else if core.now >= c.stamp + core.limits.handshake {
            ConnectError::Timeout
        } else {
            ConnectError::Closed
        };
        if !c.connecting {
            self.dial.pending.remove(&slot);
        }
        let state = std::mem::take(&mut self.app.core.conns[slot as usize].state);
        self.report(state, error);
    }

    /// Cancels the connect of a slot being shut down, if it is in flight.
    pub(super) fn cancel_connect(&mut self, slot: u32) {
        let c = &self.app.core.conns[slot as usize];
        if c.connecting {
            let e = opcode::AsyncCancel::new(user_data(Op::Connect, slot, c.generation))
                .build()
                .user_data(user_data(Op::Cancel, slot, 0));
            // SAFETY: a cancel references no user memory.
            unsafe { self.push(&e) };
        }
    }

    /// Fails a client connection before its `101`: reports, then shuts the slot down.
    fn fail_dial(&mut self, slot: u32, error: ConnectError) {
        let state = std::mem::take(&mut self.app.core.conns[slot as usize].state);
        self.report(state, error);
        self.shut_down_slot(slot);
    }

    /// Calls `on_connect_error`.
    fn report(&mut self, state: H::State, error: ConnectError) {
        self.call_ctx(|h, ctx| h.on_connect_error(ctx, state, &error));
    }

    /// Arms the wake-up operation if a wake-up is asked for and none in flight fires by then: a
    /// timeout, or a no-op if it is already due.
    fn arm_wakeup(&mut self) {
        let Some(at) = self.app.core.outbound.wake else {
            return;
        };
        if self.dial.armed.is_some_and(|(armed, _)| armed <= at) {
            return;
        }
        self.dial.seq = self.dial.seq.wrapping_add(1) & 0xff_ffff;
        let ud = user_data(Op::Wakeup, 0, self.dial.seq);
        let now = Instant::now();
        let e = if at <= now {
            opcode::Nop::new().build()
        } else {
            *self.dial.timespec = types::Timespec::from(at - now);
            opcode::Timeout::new(&*self.dial.timespec).build()
        };
        self.dial.armed = Some((at, self.dial.seq));
        // SAFETY: a no-op references nothing; a timeout's timespec is copied by the kernel when it
        // is submitted, before the next turn can rewrite it, and the box lives as long as the engine.
        unsafe { self.push(&e.user_data(ud)) };
    }

    /// The wake-up operation `seq` completed: call `on_wake` if the wake-up asked for is due.
    pub(super) fn on_wakeup(&mut self, seq: u32) {
        if self.dial.armed.is_some_and(|(_, s)| s == seq) {
            self.dial.armed = None;
        }
        match self.app.core.outbound.wake {
            Some(at) if at <= Instant::now() => {
                self.app.core.outbound.wake = None;
                self.call_ctx(|h, ctx| h.on_wake(ctx));
            }
            // Early (a superseded timeout): the next turn re-arms for the current request.
            _ => {}
        }
    }
}
