//! The event loop of one worker: one ring, one listener, one buffer ring, one slab of connections.
//!
//! A loop turn: submit and wait for at least one completion; handle every completion available
//! (receive buffers are decoded in place and given back to the kernel right after their callbacks);
//! advance the timer wheel; re-arm receives that ran out of buffers; then flush: every connection that
//! queued output during the turn gets one send (corking).
//!
//! Operations in flight per connection are at most one multishot receive and one send. A slot is
//! freed only when both have completed, so a completion can never reach a reused slot; the generation
//! in the user data is checked anyway.

use crate::bufring::BufRing;
use crate::config::{BackpressurePolicy, Config};
use crate::conn::{Closed, Core, Limits, NO_TIMER, Phase, flag};
use crate::error::EngineError;
use crate::guard::{Assembly, Guard};
use crate::handler::{Decision, Handler, HttpResponse, Message};
use crate::outq::SendOp;
use crate::pubsub::local::Local;
use crate::ratelimit::LogLimit;
use crate::server::Shared;
use crate::socket::Socket;
use crate::timer::{self, Tick};
use crate::uring::{self, TaskRun};
use io_uring::cqueue::{self, CompletionQueue};
use io_uring::squeue::{self, SubmissionQueue};
use io_uring::{Submitter, opcode, types};
use ringws_protocol::frame::OpCode;
use ringws_protocol::handshake::{
    Parse, Request, parse_request, write_accept_response, write_error_response, write_response,
};
use ringws_protocol::{CloseCode, CloseFrame, Event, Receiver, Reply, Role};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

mod dial;

/// The operation a completion belongs to, in the top byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Timer = 4,
    Wake = 5,
    Cancel = 6,
    Connect = 7,
    Wakeup = 8,
}

/// User data: op in bits 56-63, the low 24 bits of the slot generation in 32-55, the slot in 0-31.
fn user_data(op: Op, slot: u32, generation: u32) -> u64 {
    (op as u64) << 56 | u64::from(generation & 0xff_ffff) << 32 | u64::from(slot)
}

/// Splits user data into (op, slot, generation bits); `None` for an unknown op.
fn parse_user_data(ud: u64) -> Option<(Op, u32, u32)> {
    let op = match (ud >> 56) as u8 {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        4 => Op::Timer,
        5 => Op::Wake,
        6 => Op::Cancel,
        7 => Op::Connect,
        8 => Op::Wakeup,
        _ => return None,
    };
    Some((op, ud as u32, (ud >> 32) as u32 & 0xff_ffff))
}

/// The peer address of a connected socket, if it still has one.
pub(crate) fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    if fd < 0 {
        return None;
    }
    // SAFETY: callers pass the descriptor of a live connection slot, which stays open while the slot
    // is in use; the borrow does not outlive this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// The handler and the state callbacks may touch: everything a callback invocation needs, and nothing
/// the decoder borrows, so an event borrowing the decoder can be delivered through it.
struct App<H: Handler> {
    handler: H,
    core: Core<H::State>,
}

impl<H: Handler> App<H> {
    /// Runs one callback for `slot` with a panic guard: a panic is logged and closes the connection
    /// with 1011. Then delivers the `on_close` of every connection that closed meanwhile.
    fn call(&mut self, slot: u32, f: impl FnOnce(&mut H, &mut Socket<'_, H::State>)) {
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
                .close(slot, CloseCode::INTERNAL_ERROR, "internal error");
        }
        self.deliver_closes();
    }

    /// Calls `on_close` for every connection recorded as closed, then drops its state.
    fn deliver_closes(&mut self) {
        while let Some(Closed { slot, code, reason }) = self.core.closed.pop() {
            let (handler, core) = (&mut self.handler, &mut self.core);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                handler.on_close(&mut Socket::new(core, slot), code, &reason)
            }));
            if outcome.is_err() {
                error!(slot, "on_close panicked");
            }
            self.core.conns[slot as usize].state = H::State::default();
            self.core.unsubscribe_all(slot);
        }
    }

    /// Delivers one decoded event of an open connection.
    fn dispatch(&mut self, slot: u32, event: Event<'_>) {
        match event {
            Event::Text(text) => self.call(slot, |h, ws| h.on_message(ws, Message::Text(text))),
            Event::Binary(data) => self.call(slot, |h, ws| h.on_message(ws, Message::Binary(data))),
            Event::Ping(payload) => {
                // A peer that floods pings without reading gets no more pongs once its queue is over
                // the limit (RFC 6455 §5.5.3 lets an endpoint answer only the latest ping).
                if self.core.conns[slot as usize].buffered() <= self.core.limits.max_backpressure {
                    self.core.send_control(slot, OpCode::Pong, payload);
                }
                self.call(slot, |h, ws| h.on_ping(ws, payload));
            }
            Event::Pong(payload) => {
                self.core.conns[slot as usize].flags &= !flag::PING_OUT;
                self.call(slot, |h, ws| h.on_pong(ws, payload));
            }
            Event::Close(frame) => {
                // Echo the peer's code (RFC 6455 §5.5.1); no code received, none sent back.
                let mut payload = [0u8; 125];
                let n = frame.map_or(0, |f| {
                    CloseFrame {
                        code: f.code,
                        reason: "",
                    }
                    .encode(&mut payload)
                });
                self.core.send_control(slot, OpCode::Close, &payload[..n]);
                self.core.begin_closing(slot);
                let (code, reason) =
                    frame.map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason));
                let (handler, core) = (&mut self.handler, &mut self.core);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    handler.on_close(&mut Socket::new(core, slot), code, reason)
                }));
                if outcome.is_err() {
                    error!(slot, "on_close panicked");
                }
                self.core.conns[slot as usize].state = H::State::default();
                self.core.unsubscribe_all(slot);
                self.deliver_closes();
            }
        }
    }

    /// Runs a callback that produces an HTTP answer, with a panic guard (a panic answers 500).
    fn answer<T>(&mut self, f: impl FnOnce(&mut H) -> T) -> Option<T> {
        let handler = &mut self.handler;
        let outcome = catch_unwind(AssertUnwindSafe(|| f(handler)));
        if outcome.is_err() {
            error!("an HTTP callback panicked; answering 500");
        }
        outcome.ok()
    }
}

/// Appends `resp` (or a 500 if it is malformed) to `out`.
fn write_http(out: &mut Vec<u8>, resp: &HttpResponse) {
    if !resp.is_valid() {
        error!(
            status = resp.status,
            "invalid HTTP response from a callback; answering 500"
        );
        write_response(out, 500, &[], b"");
        return;
    }
    let headers: Vec<(&str, &str)> = resp
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    write_response(out, resp.status, &headers, &resp.body);
}

/// What a handshake step left to do.
enum Handshake {
    /// The head is incomplete: keep the bytes for the next receive.
    Partial,
    /// Done (answered, refused or upgraded).
    Done,
}

/// Everything of a worker but its buffer ring (kept apart so a borrowed buffer and `&mut Engine` can
/// coexist).
struct Engine<'r, H: Handler> {
    submitter: Submitter<'r>,
    sq: SubmissionQueue<'r>,
    app: App<H>,
    /// One decoder per slot, parallel to `app.core.conns`.
    rx: Vec<Receiver>,
    rx_limits: ringws_protocol::Limits,
    cfg: &'r Config,
    shared: &'r Shared,
    index: usize,
    group: u16,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    /// Accepting paused after running out of descriptors; resumed on the next tick.
    accept_paused: bool,
    /// Connections beyond this are closed at once instead of being answered 503.
    hard_cap: usize,
    wake_fd: RawFd,
    start: Instant,
    timespec: Box<types::Timespec>,
    due: Vec<timer::Entry>,
    starved: Vec<u32>,
    /// Set when shutting down: the tick by which every connection must be gone.
    shutdown_deadline: Option<Tick>,
    forced: bool,
    log: LogLimit,
    /// Admission and abuse limits, and their per-connection state.
    guard: Guard,
    fatal: Option<io::Error>,
    /// Client connections before their `101`, and the wake-up timer.
    dial: dial::Dialer,
}

impl<'r, H: Handler> Engine<'r, H> {
    /// Queues a submission, submitting first if the queue is full.
    ///
    /// # Safety
    /// Memory the entry points to must stay valid (and, for sends, unmodified) until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        for _ in 0..16 {
            // SAFETY: forwarded from the caller.
            if unsafe { self.sq.push(entry) }.is_ok() {
                return;
            }
            self.sq.sync();
            if let Err(e) = self.submitter.submit()
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                )
            {
                self.fatal = Some(e);
                return;
            }
            self.sq.sync();
        }
        self.fatal = Some(io::Error::other("submission queue stays full"));
    }

    fn arm_accept(&mut self) {
        let Some(fd) = self.listener.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0, 0));
        // SAFETY: multishot accept references no user memory.
        unsafe { self.push(&e) };
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(Op::Wake, 0, 0));
        // SAFETY: a poll references no user memory.
        unsafe { self.push(&e) };
    }

    fn arm_timer(&mut self) {
        let e = opcode::Timeout::new(&*self.timespec)
            .build()
            .user_data(user_data(Op::Timer, 0, 0));
        // SAFETY: the kernel copies the boxed timespec when the entry is submitted; the box lives as
        // long as the engine.
        unsafe { self.push(&e) };
    }

    fn arm_recv(&mut self, slot: u32) {
        let c = &mut self.app.core.conns[slot as usize];
        c.flags |= flag::RECV_ARMED;
        c.flags &= !flag::STARVED;
        let e = opcode::RecvMulti::new(types::Fd(c.fd), self.group)
            .build()
            .user_data(user_data(Op::Recv, slot, c.generation));
        // SAFETY: the receive picks buffers from the registered buffer ring, which outlives the
        // ring's use; it references no other memory.
        unsafe { self.push(&e) };
    }

    /// Takes a slot for a new socket, with a fresh decoder.
    fn alloc(&mut self, fd: RawFd) -> u32 {
        let slot = self.app.core.alloc(fd);
        if slot as usize == self.rx.len() {
            self.rx.push(Receiver::new(Role::Server, self.rx_limits));
        }
        self.guard.on_alloc(slot);
        slot
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            let fd = res;
            if self.shutdown_deadline.is_some() || self.app.core.live >= self.hard_cap {
                // SAFETY: `fd` was just accepted and is owned by nobody else.
                unsafe { libc::close(fd) };
                if self.shutdown_deadline.is_none() && self.log.allow(self.app.core.now) {
                    warn!(
                        worker = self.index,
                        "connection limit far exceeded; closing new connections"
                    );
                }
            } else {
                let slot = self.alloc(fd);
                let over_worker = self.app.core.live > self.cfg.max_connections;
                let now = self.app.core.now;
                let refused = self.guard.admit(
                    &self.shared.guard,
                    &mut self.log,
                    now,
                    slot,
                    fd,
                    over_worker,
                );
                if let Some(status) = refused {
                    self.app
                        .core
                        .out(slot)
                        .push_raw(|out| write_response(out, status, &[("Retry-After", "1")], b""));
                    self.app.core.begin_closing(slot);
                }
                self.arm_recv(slot);
            }
        } else {
            match -res {
                libc::ECANCELED => {}
                e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    if self.log.allow(self.app.core.now) {
                        warn!(
                            worker = self.index,
                            error = %io::Error::from_raw_os_error(e),
                            "accept failed; pausing accepts for one tick"
                        );
                    }
                    self.accept_paused = true;
                }
                e => {
                    debug!(worker = self.index, error = %io::Error::from_raw_os_error(e), "accept failed")
                }
            }
        }
        if !self.accept_armed && !self.accept_paused && self.shutdown_deadline.is_none() {
            self.arm_accept();
        }
    }

    /// Handles bytes received during the handshake. `input` is the receive buffer itself when no
    /// earlier part of the request is pending (parsed in place), else the accumulated request.
    fn handshake(&mut self, slot: u32, input: &mut [u8]) -> Handshake {
        if self.app.core.conns[slot as usize].client {
            return self.client_handshake(slot, input);
        }
        let req = match parse_request(input, self.cfg.max_header_bytes) {
            Ok(Parse::Partial) => return Handshake::Partial,
            Ok(Parse::Complete(req)) => req,
            Err(e) => {
                self.log_violation(slot, &e, "bad handshake request");
                self.app
                    .core
                    .out(slot)
                    .push_raw(|out| write_error_response(out, &e));
                self.app.core.begin_closing(slot);
                return Handshake::Done;
            }
        };
        let head_len = req.head_len();
        if !self.upgrade(slot, &req) {
            return Handshake::Done;
        }
        self.app.call(slot, |h, ws| h.on_open(ws));
        if head_len < input.len() && self.app.core.conns[slot as usize].phase == Phase::Open {
            // The client did not wait for the 101 before sending its first frames.
            self.frames(slot, &mut input[head_len..]);
        }
        Handshake::Done
    }

    /// Queues `resp` as the connection's last output and starts closing it.
    fn respond(&mut self, slot: u32, resp: &HttpResponse) {
        self.app
            .core
            .out(slot)
            .push_raw(|out| write_http(out, resp));
        self.app.core.begin_closing(slot);
    }

    /// Answers a complete request: plain HTTP, invalid upgrade, refused or accepted upgrade. Returns
    /// whether the connection is now open.
    fn upgrade(&mut self, slot: u32, req: &Request<'_>) -> bool {
        if !req.is_upgrade() {
            let resp = self
                .app
                .answer(|h| h.on_http(req))
                .unwrap_or_else(|| HttpResponse::new(500));
            self.respond(slot, &resp);
            return false;
        }
        let key = match req.validate_upgrade() {
            Ok(key) => key,
            Err(e) => {
                self.log_violation(slot, &e, "invalid upgrade request");
                self.app
                    .core
                    .out(slot)
                    .push_raw(|out| write_error_response(out, &e));
                self.app.core.begin_closing(slot);
                return false;
            }
        };
        let now = self.app.core.now;
        let fd = self.app.core.conns[slot as usize].fd;
        let preferred = match self
            .guard
            .check_upgrade(self.cfg, &mut self.log, now, fd, req)
        {
            Ok(preferred) => preferred,
            Err(resp) => {
                self.respond(slot, &resp);
                return false;
            }
        };
        match self.app.answer(|h| h.on_upgrade(req)) {
            Some(Decision::Accept { protocol, state }) => {
                // RFC 6455 §4.2.2: the server may only select a subprotocol the client offered.
                let offered = |p: &&str| req.subprotocols().any(|o| o == *p);
                if let Some(p) = protocol.filter(|p| !offered(p)) {
                    warn!(
                        protocol = p,
                        "on_upgrade selected a subprotocol the client did not offer; selecting none"
                    );
                }
                let protocol = protocol.filter(offered).or(preferred);
                let (rx, extensions) = crate::deflate::accept(
                    &mut self.app.core.deflate,
                    slot,
                    req,
                    self.cfg.deflate.as_ref(),
                    &self.shared.deflate_budget,
                    self.rx_limits,
                );
                self.app.core.out(slot).push_raw(|out| {
                    write_accept_response(out, key, protocol, extensions.as_deref())
                });
                self.rx[slot as usize] = rx;
                let now = self.app.core.now;
                let c = &mut self.app.core.conns[slot as usize];
                c.state = state;
                c.phase = Phase::Open;
                c.stamp = now;
                c.timer_at = NO_TIMER; // the handshake entry goes stale
                self.evaluate(slot);
                true
            }
            Some(Decision::Reject(resp)) => {
                self.respond(slot, &resp);
                false
            }
            None => {
                self.app
                    .core
                    .out(slot)
                    .push_raw(|out| write_response(out, 500, &[], b""));
                self.app.core.begin_closing(slot);
                false
            }
        }
    }

    /// Decodes frames from a receive buffer of an open connection, in place, delivering each event.
    fn frames(&mut self, slot: u32, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() && self.app.core.conns[slot as usize].phase == Phase::Open {
            match self.rx[slot as usize].read(&mut buf[pos..]) {
                Ok((used, event)) => {
                    pos += used;
                    match event {
                        Some(event) => {
                            let core = &mut self.app.core;
                            if self.guard.admit_event(core, &mut self.log, slot, &event) {
                                self.app.dispatch(slot, event);
                            } else {
                                self.app.deliver_closes();
                            }
                        }
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(e) => {
                    self.log_violation(slot, &e, "protocol violation");
                    match e.reply() {
                        Reply::Close(code) => self.app.core.close(slot, code, &e.to_string()),
                        Reply::Status(_) | Reply::Drop => self.abort(slot),
                    }
                    self.app.deliver_closes();
                    break;
                }
            }
        }
        let rx = &mut self.rx[slot as usize];
        rx.release();
        let (bytes, busy) = (rx.assembly_bytes(), rx.in_progress());
        let (guard, core) = (&mut self.guard, &mut self.app.core);
        if guard.after_receive(&self.shared.guard, core, &mut self.log, slot, bytes, busy)
            == Assembly::OverMemory
        {
            self.rx[slot as usize] = Receiver::new(Role::Server, self.rx_limits);
            self.app.deliver_closes();
        }
    }

    fn log_violation(&mut self, slot: u32, e: &ringws_protocol::Error, what: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) && self.log.allow(self.app.core.now) {
            let peer = peer_addr(self.app.core.conns[slot as usize].fd);
            debug!(worker = self.index, ?peer, error = %e, "{what}");
        }
    }

    /// The peer closed its side (or reset the connection).
    fn peer_gone(&mut self, slot: u32) {
        let c = &mut self.app.core.conns[slot as usize];
        match c.phase {
            Phase::Closing => {
                c.flags |= flag::PEER_EOF;
                self.finish_closing(slot);
            }
            Phase::Handshaking | Phase::Open => self.abort(slot),
            Phase::Zombie | Phase::Free => {}
        }
    }

    /// In `Closing`: once everything queued is written, shut the write side; once the peer's FIN is
    /// in too, close.
    fn finish_closing(&mut self, slot: u32) {
        let c = &mut self.app.core.conns[slot as usize];
        if c.phase != Phase::Closing || c.buffered() != 0 || c.send_in_flight() {
            return;
        }
        // A client waits for the server to close first (RFC 6455 §7.1.1: the server keeps TIME_WAIT).
        if !c.has(flag::SHUT_WR) && !c.client {
            c.flags |= flag::SHUT_WR;
            // SAFETY: shutting down a descriptor the slot owns; no memory is passed.
            unsafe { libc::shutdown(c.fd, libc::SHUT_WR) };
        }
        if c.has(flag::PEER_EOF) {
            self.shut_down_slot(slot);
        }
    }

    /// Ends a connection now: `on_close(1006)` if it was open, then the socket is shut down both ways
    /// (which completes its in-flight operations) and the slot waits for those completions.
    fn abort(&mut self, slot: u32) {
        let c = &mut self.app.core.conns[slot as usize];
        match c.phase {
            Phase::Open => {
                c.phase = Phase::Zombie;
                self.app.core.closed.push(Closed {
                    slot,
                    code: CloseCode::ABNORMAL,
                    reason: String::new(),
                });
                self.app.deliver_closes();
            }
            Phase::Handshaking if c.client => self.dial_aborted(slot),
            Phase::Handshaking | Phase::Closing => {}
            Phase::Zombie | Phase::Free => return,
        }
        self.shut_down_slot(slot);
    }

    fn shut_down_slot(&mut self, slot: u32) {
        self.cancel_connect(slot);
        let c = &mut self.app.core.conns[slot as usize];
        c.phase = Phase::Zombie;
        c.handshake = None;
        if c.has(flag::RECV_ARMED) || c.send_in_flight() {
            // SAFETY: shutting down a descriptor the slot owns; no memory is passed.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        if c.has(flag::RECV_ARMED) {
            let target = user_data(Op::Recv, slot, c.generation);
            let e = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(Op::Cancel, slot, 0));
            // SAFETY: a cancel references no user memory.
            unsafe { self.push(&e) };
        }
        self.maybe_release(slot);
    }

    /// Frees a zombie slot whose operations have all completed: closes the socket, returns the queue.
    fn maybe_release(&mut self, slot: u32) {
        let c = &self.app.core.conns[slot as usize];
        if c.phase != Phase::Zombie || c.has(flag::RECV_ARMED) || c.connecting || c.send_in_flight()
        {
            return;
        }
        // SAFETY: the slot owns the descriptor and no operation uses it any more.
        unsafe { libc::close(c.fd) };
        // A decoder with a decompressor is replaced too: it must not be reused, nor keep memory.
        let deflated = crate::deflate::forget(&mut self.app.core.deflate, slot);
        if deflated
            || self.rx[slot as usize].buffered() != 0
            || self.rx[slot as usize].in_progress()
        {
            self.rx[slot as usize] = Receiver::new(Role::Server, self.rx_limits);
        }
        let client = self.app.core.conns[slot as usize].client;
        self.guard.release(&self.shared.guard, slot, client);
        self.app.core.release(slot);
    }

    fn on_send(&mut self, slot: u32, res: i32) {
        let max = self.app.core.limits.max_backpressure;
        let pause_policy = self.app.core.limits.policy == BackpressurePolicy::Pause;
        let c = &mut self.app.core.conns[slot as usize];
        let Some(q) = c.out.as_mut().filter(|q| q.in_flight()) else {
            error!(slot, "send completion without a send in flight");
            return;
        };
        if res < 0 {
            q.abandon();
            if c.phase != Phase::Zombie {
                debug!(slot, error = %io::Error::from_raw_os_error(-res), "send failed");
            }
            self.abort(slot);
            self.maybe_release(slot);
            return;
        }
        q.complete(res as usize);
        let empty = q.is_empty();
        if empty {
            if let Some(q) = c.out.take() {
                self.app.core.pool.give(q);
            }
        } else if c.flags & flag::DIRTY == 0 {
            c.flags |= flag::DIRTY;
            self.app.core.dirty.push(slot);
        }
        match c.phase {
            Phase::Open if c.has(flag::OVER_LIMIT) && c.buffered() <= max => {
                c.flags &= !flag::OVER_LIMIT;
                // Only a pause under backpressure ends here, not one asked for by the handler.
                if c.has(flag::PAUSED) && pause_policy {
                    c.flags &= !flag::PAUSED;
                    if !c.has(flag::RECV_ARMED) {
                        self.arm_recv(slot);
                    }
                }
                self.app.call(slot, |h, ws| h.on_drain(ws));
            }
            Phase::Closing => self.finish_closing(slot),
            Phase::Zombie => self.maybe_release(slot),
            _ => {}
        }
    }

    /// Checks a slot's timers (its wheel entry fired).
    fn evaluate(&mut self, slot: u32) {
        let now = self.app.core.now;
        let l = self.app.core.limits;
        let c = &mut self.app.core.conns[slot as usize];
        match c.phase {
            Phase::Handshaking => {
                let due = c.stamp + l.handshake;
                if now >= due {
                    debug!(worker = self.index, slot, "handshake timeout");
                    self.abort(slot);
                } else {
                    self.app.core.schedule(slot, due);
                }
            }
            Phase::Open => {
                let (guard, core) = (&mut self.guard, &mut self.app.core);
                if guard.message_overdue(&self.shared.guard, core, &mut self.log, slot) {
                    self.rx[slot as usize] = Receiver::new(Role::Server, self.rx_limits);
                    self.app.deliver_closes();
                    return;
                }
                let c = &mut self.app.core.conns[slot as usize];
                if l.idle > 0 && now >= c.stamp + l.idle {
                    self.app
                        .core
                        .close(slot, CloseCode::GOING_AWAY, "idle timeout");
                    self.app.deliver_closes();
                    return;
                }
                if c.has(flag::PING_OUT) && now >= c.ping_sent + l.pong {
                    debug!(
                        worker = self.index,
                        slot, "no answer to a keep-alive ping; dropping"
                    );
                    self.abort(slot);
                    return;
                }
                if !c.has(flag::PING_OUT) && l.ping > 0 && now >= c.stamp + l.ping {
                    c.flags |= flag::PING_OUT;
                    c.ping_sent = now;
                    self.app.core.send_control(slot, OpCode::Ping, b"");
                }
                let c = &self.app.core.conns[slot as usize];
                let idle_at = if l.idle > 0 {
                    c.stamp + l.idle
                } else {
                    NO_TIMER
                };
                let ping_at = if c.has(flag::PING_OUT) {
                    c.ping_sent + l.pong
                } else if l.ping > 0 {
                    c.stamp + l.ping
                } else {
                    NO_TIMER
                };
                let message_at = self.guard.message_due(slot).unwrap_or(NO_TIMER);
                let next = idle_at.min(ping_at).min(message_at);
                if next != NO_TIMER {
                    self.app.core.schedule(slot, next);
                }
            }
            Phase::Closing => {
                let due = c.stamp + l.close;
                if now >= due {
                    debug!(worker = self.index, slot, "close timeout");
                    self.abort(slot);
                } else {
                    self.app.core.schedule(slot, due);
                }
            }
            Phase::Zombie | Phase::Free => {}
        }
    }

    /// Moves the clock and fires due timers.
    fn tick(&mut self) {
        self.guard.new_turn();
        let now = (self.start.elapsed().as_nanos() / timer::TICK.as_nanos()) as Tick;
        if now <= self.app.core.now && now <= self.app.core.wheel.current() {
            return;
        }
        self.app.core.now = now;
        let mut due = std::mem::take(&mut self.due);
        self.app.core.wheel.advance(now, &mut due);
        for entry in due.drain(..) {
            let c = &mut self.app.core.conns[entry.slot as usize];
            if c.generation == entry.generation && c.timer_at == entry.at {
                c.timer_at = NO_TIMER;
                self.evaluate(entry.slot);
            }
        }
        self.due = due;
        if self.accept_paused && self.shutdown_deadline.is_none() {
            self.accept_paused = false;
            if !self.accept_armed {
                self.arm_accept();
            }
        }
        if let Some(deadline) = self.shutdown_deadline
            && now >= deadline
            && !self.forced
        {
            warn!(
                worker = self.index,
                live = self.app.core.live,
                "shutdown drain timed out"
            );
            self.force_close();
        }
    }

    /// Stops accepting and starts the closing handshake (1001) on every open connection.
    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let now = self.app.core.now;
        self.shutdown_deadline = Some(now + timer::ticks(self.cfg.shutdown_timeout));
        self.app.core.outbound.shutting_down = true;
        if self.accept_armed {
            let e = opcode::AsyncCancel::new(user_data(Op::Accept, 0, 0))
                .build()
                .user_data(user_data(Op::Cancel, 0, 0));
            // SAFETY: a cancel references no user memory.
            unsafe { self.push(&e) };
        }
        self.listener = None; // the accept holds its own reference until cancelled
        for slot in 0..self.app.core.conns.len() as u32 {
            match self.app.core.conns[slot as usize].phase {
                Phase::Open => {
                    self.app
                        .core
                        .close(slot, CloseCode::GOING_AWAY, "server shutting down");
                }
                Phase::Handshaking => self.abort(slot),
                _ => {}
            }
        }
        self.app.deliver_closes();
    }

    /// Aborts every remaining connection (second signal, or the drain timed out).
    fn force_close(&mut self) {
        self.begin_shutdown();
        self.forced = true;
        for slot in 0..self.app.core.conns.len() as u32 {
            self.abort(slot);
        }
    }

    fn on_wake(&mut self, flags: u32) {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a u64 from the worker's eventfd (non-blocking).
        unsafe { libc::read(self.wake_fd, (&raw mut counter).cast(), 8) };
        self.app.core.drain_inbox();
        self.app.deliver_closes();
        match self.shared.level.load(Ordering::Acquire) {
            0 => {}
            1 => self.begin_shutdown(),
            _ => self.force_close(),
        }
        if !cqueue::more(flags) {
            self.arm_wake();
        }
    }

    /// Flushes: one send per connection that queued output this turn.
    fn flush(&mut self) {
        self.dial_turn();
        let mut dirty = std::mem::take(&mut self.app.core.dirty);
        for slot in dirty.drain(..) {
            let c = &mut self.app.core.conns[slot as usize];
            c.flags &= !flag::DIRTY;
            if !matches!(c.phase, Phase::Handshaking | Phase::Open | Phase::Closing) {
                continue;
            }
            let (fd, generation) = (c.fd, c.generation);
            let Some(op) = c.out.as_mut().and_then(|q| q.start_send()) else {
                continue;
            };
            let e = match op {
                SendOp::Single { ptr, len } => opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build(),
                SendOp::Vectored(msg) => opcode::SendMsg::new(types::Fd(fd), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build(),
            }
            .user_data(user_data(Op::Send, slot, generation));
            // SAFETY: the operation points into the slot's boxed output queue (segments, iovecs,
            // message header). While the send is in flight the queue does not touch that memory, and
            // the box is neither freed nor returned to the pool (release and `give` require no send in
            // flight; a worker that exits with sends in flight leaks those queues).
            unsafe { self.push(&e) };
        }
        self.app.core.dirty = dirty;
        for slot in std::mem::take(&mut self.starved) {
            let c = &self.app.core.conns[slot as usize];
            if c.has(flag::STARVED) && c.wants_recv() {
                self.arm_recv(slot);
            }
        }
        for slot in std::mem::take(&mut self.app.core.recv_review) {
            let c = &self.app.core.conns[slot as usize];
            if c.wants_recv() && !c.has(flag::RECV_ARMED) {
                self.arm_recv(slot);
            } else if c.has(flag::PAUSED) && c.has(flag::RECV_ARMED) {
                // Paused: stop the multishot receive; its last completion (-ECANCELED, no F_MORE)
                // clears RECV_ARMED, and draining the queue re-arms it.
                let e = opcode::AsyncCancel::new(user_data(Op::Recv, slot, c.generation))
                    .build()
                    .user_data(user_data(Op::Cancel, slot, 0));
                // SAFETY: a cancel references no user memory.
                unsafe { self.push(&e) };
            }
        }
    }
}

/// A worker: its engine and its buffer ring.
struct Worker<'r, H: Handler> {
    bufs: &'r mut BufRing,
    eng: Engine<'r, H>,
}

impl<H: Handler> Worker<'_, H> {
    fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let eng = &mut self.eng;
        let Some(c) = eng.app.core.conns.get_mut(slot as usize) else {
            if let Some(b) = bid {
                self.bufs.recycle_unused(b);
            }
            return;
        };
        if c.generation & 0xff_ffff != generation || c.phase == Phase::Free {
            error!(slot, "receive completion for a stale slot");
            if let Some(b) = bid {
                self.bufs.recycle_unused(b);
            }
            return;
        }
        let more = cqueue::more(flags);
        if !more {
            c.flags &= !flag::RECV_ARMED;
        }
        if res <= 0 {
            if let Some(b) = bid {
                self.bufs.recycle_unused(b);
            }
            match -res {
                0 => eng.peer_gone(slot),
                // ENOBUFS ends the multishot receive; the data waits in the socket until the re-arm.
                libc::ENOBUFS => {
                    if !more {
                        if eng.log.allow(eng.app.core.now) {
                            debug!(
                                worker = eng.index,
                                "receive buffers exhausted; re-arming after this turn"
                            );
                        }
                        c.flags |= flag::STARVED;
                        eng.starved.push(slot);
                    }
                }
                // Cancelled on purpose: by a pause under backpressure (re-armed here if the queue
                // drained before this completion arrived) or by the slot's shutdown.
                libc::ECANCELED => {
                    if !more && c.wants_recv() {
                        eng.arm_recv(slot);
                    }
                }
                e => {
                    if c.phase != Phase::Zombie {
                        debug!(slot, error = %io::Error::from_raw_os_error(e), "receive failed");
                    }
                    eng.peer_gone(slot);
                }
            }
            eng.maybe_release(slot);
            return;
        }
        let Some(buf) = bid.and_then(|b| self.bufs.buffer(b, res as usize)) else {
            error!(
                slot,
                ?bid,
                res,
                "receive completion without a usable buffer"
            );
            if let Some(b) = bid {
                self.bufs.recycle_unused(b);
            }
            eng.abort(slot);
            return;
        };
        match c.phase {
            Phase::Handshaking => match c.handshake.take() {
                Some(mut acc) => {
                    acc.extend_from_slice(buf);
                    if let Handshake::Partial = eng.handshake(slot, &mut acc) {
                        eng.app.core.conns[slot as usize].handshake = Some(acc);
                    }
                }
                None => {
                    if let Handshake::Partial = eng.handshake(slot, buf) {
                        eng.app.core.conns[slot as usize].handshake = Some(Box::new(buf.to_vec()));
                    }
                }
            },
            Phase::Open => {
                c.stamp = eng.app.core.now;
                c.flags &= !flag::PING_OUT;
                eng.frames(slot, buf);
            }
            // Closing: the last response or Close is queued; input is read only to reach the FIN.
            Phase::Closing | Phase::Zombie | Phase::Free => {}
        }
        if let Some(b) = bid {
            self.bufs.recycle(b);
        }
        if !more && self.eng.app.core.conns[slot as usize].wants_recv() {
            self.eng.arm_recv(slot);
        }
        self.eng.maybe_release(slot);
    }

    fn handle(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((op, slot, generation)) = parse_user_data(ud) else {
            error!(ud, "completion with unknown user data");
            return;
        };
        match op {
            Op::Recv => self.on_recv(slot, generation, res, flags),
            Op::Send => self.eng.on_send(slot, res),
            Op::Accept => self.eng.on_accept(res, flags),
            Op::Timer => self.eng.arm_timer(),
            Op::Wake => self.eng.on_wake(flags),
            Op::Cancel => {}
            Op::Connect => self.eng.on_connect(slot, generation, res),
            Op::Wakeup => self.eng.on_wakeup(generation),
        }
    }

    /// Whether the loop is done: shutting down and every connection (and the accept) is gone.
    fn finished(&self) -> bool {
        self.eng.shutdown_deadline.is_some()
            && self.eng.app.core.live == 0
            && !self.eng.accept_armed
    }

    /// Runs the loop until shutdown (or a fatal ring error), then tears down on either path.
    fn run(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        ready: impl FnOnce(),
    ) -> Result<(), EngineError> {
        let result = self.serve(cq, ready);
        self.teardown();
        result
    }

    fn serve(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        ready: impl FnOnce(),
    ) -> Result<(), EngineError> {
        self.eng.arm_wake();
        self.eng.arm_timer();
        self.eng.arm_accept();
        self.eng.sq.sync();
        self.eng
            .submitter
            .submit()
            .map_err(|e| EngineError::io("arming the listener", e))?;
        ready();
        self.eng.start_client();
        let mut batch: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        let mut forced_at: Option<Instant> = None;
        loop {
            self.eng.sq.sync();
            match self.eng.submitter.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(EngineError::io("waiting for completions", e)),
            }
            loop {
                cq.sync();
                batch.extend(
                    cq.by_ref()
                        .take(1024)
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
                cq.sync();
                if batch.is_empty() {
                    break;
                }
                for (ud, res, flags) in batch.drain(..) {
                    self.handle(ud, res, flags);
                }
            }
            debug_assert_eq!(
                self.bufs.out_count(),
                0,
                "every receive buffer is back in the ring"
            );
            self.eng.tick();
            self.eng.flush();
            if let Some(e) = self.eng.fatal.take() {
                return Err(EngineError::io("submitting to the ring", e));
            }
            if self.finished() {
                break;
            }
            if self.eng.forced {
                // Aborted connections complete their operations promptly; do not wait forever.
                let at = *forced_at.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_secs(1) {
                    warn!(
                        worker = self.eng.index,
                        live = self.eng.app.core.live,
                        "exiting with operations in flight"
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// Releases what is left at exit. Queues still in flight are leaked on purpose: the kernel may
    /// still read them until the ring is gone.
    fn teardown(&mut self) {
        self.eng.app.core.pubsub.detach();
        for c in &mut self.eng.app.core.conns {
            if c.phase != Phase::Free {
                // SAFETY: the slot owns its descriptor; nothing uses it after this.
                unsafe { libc::close(c.fd) };
            }
            if let Some(q) = c.out.take()
                && q.in_flight()
            {
                std::mem::forget(q);
            }
        }
        let _ = self.eng.submitter.unregister_buf_ring(self.bufs.group());
    }
}

/// Runs worker `index` on the calling thread until shutdown. `ready` is called once the listener is
/// armed; errors before that are returned without calling it.
pub(crate) fn run<H: Handler>(
    index: usize,
    cfg: &Config,
    listener: Option<OwnedFd>,
    shared: &Shared,
    handler: H,
    ready: impl FnOnce(),
) -> Result<(), EngineError> {
    // Declared before the ring so that it is dropped after it: the buffers stay mapped until the kernel
    // can no longer write to them.
    let mut bufs: BufRing;
    let (mut ring, mode) = uring::new_ring(cfg.ring_entries)?;
    if mode != TaskRun::Deferred {
        info!(
            worker = index,
            ?mode,
            "DEFER_TASKRUN unavailable; using a fallback"
        );
    }
    let (mut submitter, sq, mut cq) = ring.split();
    if let Err(e) = submitter.register_ring_fd() {
        debug!(worker = index, error = %e, "registering the ring fd failed; using the plain fd");
    }
    bufs = BufRing::new(&submitter, 0, cfg.buffer_count, cfg.buffer_size)
        .map_err(|e| EngineError::io("registering the provided buffer ring", e))?;
    let hard_cap = cfg.max_connections + cfg.max_connections / 8 + 64;
    let mut worker = Worker {
        eng: Engine {
            submitter,
            sq,
            app: App {
                handler,
                core: Core::new(Limits::new(cfg), Local::new(shared.hub.clone(), index)),
            },
            rx: Vec::new(),
            rx_limits: ringws_protocol::Limits {
                max_frame_size: cfg.max_message_size,
                max_message_size: cfg.max_message_size,
            },
            cfg,
            shared,
            index,
            group: bufs.group(),
            listener,
            accept_armed: false,
            accept_paused: false,
            hard_cap,
            wake_fd: shared.wakers[index].as_raw_fd(),
            start: Instant::now(),
            timespec: Box::new(types::Timespec::from(timer::TICK)),
            due: Vec::new(),
            starved: Vec::new(),
            shutdown_deadline: None,
            forced: false,
            log: LogLimit::new(),
            guard: Guard::new(cfg, index),
            fatal: None,
            dial: dial::Dialer::new(),
        },
        bufs: &mut bufs,
    };
    worker.run(&mut cq, ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::Send, 123_456, 0x1234_5678);
        assert_eq!(parse_user_data(ud), Some((Op::Send, 123_456, 0x34_5678)));
        let ud = user_data(Op::Recv, u32::MAX, u32::MAX);
        assert_eq!(parse_user_data(ud), Some((Op::Recv, u32::MAX, 0xff_ffff)));
        assert_eq!(parse_user_data(0), None);
        assert_eq!(parse_user_data(9 << 56), None);
    }
}
