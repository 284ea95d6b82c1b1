//! Connection slots and the per-worker state callbacks may touch (the "core").
//!
//! A slot is small on purpose: an idle open connection holds its descriptor, a few tick stamps, two
//! empty `Option<Box<..>>`s and its user state. Output queues come from the worker's pool only while
//! bytes are queued, and the handshake buffer exists only while a request head is split over
//! receives. The decoder of each connection lives in a parallel vector owned by the worker, so that
//! an event borrowing it can be handed to a callback together with a `&mut Core`.

use crate::client::{Outbound, mask_key};
use crate::config::{BackpressurePolicy, Config};
use crate::deflate::Deflate;
use crate::handler::SendResult;
use crate::outq::{OutQueue, Pool};
use crate::pubsub::local::Local;
use crate::timer::{Entry, Tick, Wheel, ticks};
use ringws_protocol::frame::OpCode;
use ringws_protocol::{CloseCode, CloseFrame};
use std::os::fd::RawFd;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The slot is unused.
    Free,
    /// Accepted; waiting for a complete HTTP request head.
    Handshaking,
    /// Upgraded; frames flow both ways.
    Open,
    /// A final response or Close frame is queued: after it is written the write side is shut down,
    /// input is read and discarded until the peer's FIN, then the socket is closed (so a peer that is
    /// still sending does not get a RST that could destroy the Close it has not read yet).
    Closing,
    /// Closed for the engine: the socket is shut down and the slot waits for its last in-flight
    /// completions before it is freed.
    Zombie,
}

/// Per-connection flag bits.
pub(crate) mod flag {
    /// A multishot receive is armed.
    pub const RECV_ARMED: u8 = 1;
    /// The slot is in the worker's list of connections to flush this turn.
    pub const DIRTY: u8 = 2;
    /// A send reported backpressure; `on_drain` is due when the queue falls back under the limit.
    pub const OVER_LIMIT: u8 = 4;
    /// A keep-alive ping is outstanding.
    pub const PING_OUT: u8 = 8;
    /// The write side is shut down (`Closing`).
    pub const SHUT_WR: u8 = 16;
    /// The peer's FIN was received (`Closing`).
    pub const PEER_EOF: u8 = 32;
    /// The receive must be re-armed after this turn (it ended for lack of buffers).
    pub const STARVED: u8 = 64;
    /// Reading is paused: until the output queue drains (`BackpressurePolicy::Pause`), or until
    /// [`Socket::resume_reading`](crate::Socket::resume_reading).
    pub const PAUSED: u8 = 128;
}

/// Marks "no live wheel entry".
pub(crate) const NO_TIMER: Tick = Tick::MAX;

/// One connection slot.
pub(crate) struct Conn<S> {
    pub fd: RawFd,
    pub generation: u32,
    pub phase: Phase,
    pub flags: u8,
    /// Opened by this side ([`Context::connect`](crate::Context::connect)): frames are masked, and
    /// the handshake reads a response instead of a request.
    pub client: bool,
    /// A client connection's `CONNECT` is in flight (the slot cannot be freed before it completes).
    pub connecting: bool,
    /// `Handshaking`: when accepted. `Open`: when something was last received. `Closing`: when the
    /// drain started.
    pub stamp: Tick,
    /// When the outstanding keep-alive ping was sent.
    pub ping_sent: Tick,
    /// The tick of this slot's live wheel entry, or [`NO_TIMER`].
    pub timer_at: Tick,
    pub out: Option<Box<OutQueue>>,
    /// A request head split over receives, accumulated until complete. Boxed: 8 bytes in every slot
    /// instead of 24 for a state that is rare and short-lived.
    #[allow(clippy::box_collection)]
    pub handshake: Option<Box<Vec<u8>>>,
    pub state: S,
}

impl<S> Conn<S> {
    /// Whether `bit` is set.
    pub fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.buffered())
    }

    /// Whether the connection should have a receive armed: it is live, connected, and reading is
    /// not paused.
    pub fn wants_recv(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshaking | Phase::Open | Phase::Closing
        ) && !self.has(flag::PAUSED)
            && !self.connecting
    }

    /// Whether a send is in flight (the kernel may be reading the queue's memory).
    pub fn send_in_flight(&self) -> bool {
        self.out.as_ref().is_some_and(|q| q.in_flight())
    }
}

/// Limits and timer lengths in the units the core works in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_backpressure: usize,
    pub policy: BackpressurePolicy,
    pub handshake: Tick,
    /// Zero: disabled.
    pub idle: Tick,
    /// Zero: disabled.
    pub ping: Tick,
    pub pong: Tick,
    pub close: Tick,
}

impl Limits {
    /// Converts the configuration's durations to ticks.
    pub fn new(cfg: &Config) -> Self {
        Self {
            max_backpressure: cfg.max_backpressure,
            policy: cfg.backpressure_policy,
            handshake: ticks(cfg.handshake_timeout),
            idle: ticks(cfg.idle_timeout),
            ping: ticks(cfg.ping_interval),
            pong: ticks(cfg.pong_timeout),
            close: ticks(cfg.close_timeout),
        }
    }
}

/// A connection that left `Open` from inside the core; the worker calls `on_close` for it.
#[derive(Debug)]
pub(crate) struct Closed {
    pub slot: u32,
    pub code: CloseCode,
    pub reason: String,
}

/// The per-worker state that callbacks reach through [`Socket`](crate::Socket).
pub(crate) struct Core<S> {
    pub conns: Vec<Conn<S>>,
    free: Vec<u32>,
    /// Slots not `Free`.
    pub live: usize,
    pub pool: Pool,
    /// Slots with bytes to flush at the end of this turn.
    pub dirty: Vec<u32>,
    /// Slots whose receive may need arming or cancelling at the end of this turn (paused/resumed).
    pub recv_review: Vec<u32>,
    /// Connections that left `Open` and still need their `on_close`.
    pub closed: Vec<Closed>,
    pub wheel: Wheel,
    /// The current tick.
    pub now: Tick,
    pub limits: Limits,
    /// This worker's topic subscriptions.
    pub pubsub: Local,
    /// Client connections and the wake-up asked for by callbacks, for the end of the turn.
    pub outbound: Outbound<S>,
    /// permessage-deflate state, from the first connection that negotiates it.
    pub deflate: Option<Box<Deflate>>,
}

impl<S: Default> Core<S> {
    /// An empty core.
    pub fn new(limits: Limits, pubsub: Local) -> Self {
        Self {
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            // Queues for a thousand connections sending in the same turn; spare buffers up to 64 KiB
            // are kept, bigger ones are freed after use.
            pool: Pool::new(1024, 64 << 10),
            dirty: Vec::new(),
            recv_review: Vec::new(),
            closed: Vec::new(),
            wheel: Wheel::new(),
            now: 0,
            limits,
            pubsub,
            outbound: Outbound::default(),
            deflate: None,
        }
    }

    /// Takes a free slot for a just-accepted socket, in `Handshaking`, with its handshake timer set.
    pub fn alloc(&mut self, fd: RawFd) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(Conn {
                    fd: -1,
                    generation: 0,
                    phase: Phase::Free,
                    flags: 0,
                    client: false,
                    connecting: false,
                    stamp: 0,
                    ping_sent: 0,
                    timer_at: NO_TIMER,
                    out: None,
                    handshake: None,
                    state: S::default(),
                });
                (self.conns.len() - 1) as u32
            }
        };
        let now = self.now;
        let c = &mut self.conns[slot as usize];
        c.fd = fd;
        c.phase = Phase::Handshaking;
        c.flags = 0;
        c.client = false;
        c.stamp = now;
        c.timer_at = NO_TIMER;
        self.live += 1;
        self.schedule(slot, now + self.limits.handshake);
        slot
    }

    /// Frees a `Zombie` slot whose socket is closed and whose operations have all completed.
    pub fn release(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        debug_assert!(c.phase == Phase::Zombie && !c.send_in_flight() && !c.has(flag::RECV_ARMED));
        c.phase = Phase::Free;
        c.generation = c.generation.wrapping_add(1);
        c.fd = -1;
        c.flags = 0;
        c.timer_at = NO_TIMER;
        c.handshake = None;
        c.state = S::default();
        if let Some(q) = c.out.take() {
            self.pool.give(q);
        }
        // Normally done when it left the open state; a reused slot must never inherit a subscription.
        self.unsubscribe_all(slot);
        self.live -= 1;
        self.free.push(slot);
    }

    /// Makes sure the slot is checked at tick `at` (or earlier).
    pub fn schedule(&mut self, slot: u32, at: Tick) {
        let c = &mut self.conns[slot as usize];
        if at < c.timer_at {
            c.timer_at = at;
            self.wheel.schedule(Entry {
                slot,
                generation: c.generation,
                at,
            });
        }
    }

    /// The slot's output queue (taken from the pool if it has none), marked for this turn's flush.
    pub fn out(&mut self, slot: u32) -> &mut OutQueue {
        let c = &mut self.conns[slot as usize];
        if c.flags & flag::DIRTY == 0 {
            c.flags |= flag::DIRTY;
            self.dirty.push(slot);
        }
        c.out.get_or_insert_with(|| self.pool.take())
    }

    /// Queues a data frame under the backpressure policy.
    pub fn send_data(&mut self, slot: u32, opcode: OpCode, payload: &[u8]) -> SendResult {
        let c = &self.conns[slot as usize];
        if c.phase != Phase::Open {
            return SendResult::Dropped;
        }
        if c.buffered() > self.limits.max_backpressure
            && self.limits.policy != BackpressurePolicy::Pause
        {
            if self.limits.policy == BackpressurePolicy::Close {
                self.close(
                    slot,
                    CloseCode::POLICY_VIOLATION,
                    "send queue over the limit",
                );
            }
            return SendResult::Dropped;
        }
        let max = self.limits.max_backpressure;
        let mask = c.client.then(mask_key);
        // Taken out for the call (a pointer move) so that it and the queue can be borrowed together.
        let mut deflate = self.deflate.take();
        let q = self.out(slot);
        let compressed = deflate
            .as_deref_mut()
            .is_some_and(|d| d.push_frame(slot, opcode, payload, mask, q));
        if !compressed {
            q.push_frame_masked(opcode, payload, mask);
        }
        let over = q.buffered() > max;
        self.deflate = deflate;
        if over {
            let c = &mut self.conns[slot as usize];
            c.flags |= flag::OVER_LIMIT;
            if self.limits.policy == BackpressurePolicy::Pause && !c.has(flag::PAUSED) {
                c.flags |= flag::PAUSED;
                self.recv_review.push(slot);
            }
            SendResult::Backpressure
        } else {
            SendResult::Queued
        }
    }

    /// Queues a control frame (ping, pong, close) regardless of backpressure: control frames are at
    /// most 127 bytes and the protocol requires them.
    pub fn send_control(&mut self, slot: u32, opcode: OpCode, payload: &[u8]) {
        debug_assert!(opcode.is_control() && payload.len() <= 125);
        let mask = self.conns[slot as usize].client.then(mask_key);
        self.out(slot).push_frame_masked(opcode, payload, mask);
    }

    /// Stops (`paused`) or restarts reading from an open connection; the receive is cancelled or
    /// re-armed at the end of this turn.
    pub fn set_reading_paused(&mut self, slot: u32, paused: bool) {
        let c = &mut self.conns[slot as usize];
        if c.phase != Phase::Open || c.has(flag::PAUSED) == paused {
            return;
        }
        c.flags ^= flag::PAUSED;
        self.recv_review.push(slot);
    }

    /// Starts the closing handshake from this side: queues a Close frame with `code` and `reason`,
    /// leaves `Open`, and records the close for `on_close`. No-op unless the connection is open.
    pub fn close(&mut self, slot: u32, code: CloseCode, reason: &str) {
        if self.conns[slot as usize].phase != Phase::Open {
            return;
        }
        let mut payload = [0u8; 125];
        let n = CloseFrame { code, reason }.encode(&mut payload);
        self.send_control(slot, OpCode::Close, &payload[..n]);
        self.begin_closing(slot);
        let reason = reason[..n - 2].to_owned();
        self.closed.push(Closed { slot, code, reason });
    }

    /// Enters `Closing`: the queued output is the last; the drain timer starts now.
    pub fn begin_closing(&mut self, slot: u32) {
        let now = self.now;
        let c = &mut self.conns[slot as usize];
        c.phase = Phase::Closing;
        c.stamp = now;
        if c.has(flag::PAUSED) {
            // Closing reads until the peer's FIN: resume reading.
            self.recv_review.push(slot);
        }
        c.flags &= !(flag::OVER_LIMIT | flag::PING_OUT | flag::PAUSED);
        self.schedule(slot, now + self.limits.close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn core() -> Core<u64> {
        let cfg = Config {
            max_backpressure: 100,
            ..Config::default()
        };
        Core::new(Limits::new(&cfg), Local::standalone())
    }

    fn open(core: &mut Core<u64>) -> u32 {
        let slot = core.alloc(-1);
        core.conns[slot as usize].phase = Phase::Open;
        slot
    }

    #[test]
    fn slot_is_small() {
        let slot = size_of::<Conn<()>>();
        let rx = size_of::<ringws_protocol::Receiver>();
        println!(
            "connection slot {slot} B + decoder {rx} B = {} B",
            slot + rx
        );
        assert!(slot <= 64, "slot grew to {slot} bytes");
        assert!(
            slot + rx <= 200,
            "idle connection costs {} bytes",
            slot + rx
        );
    }

    #[test]
    fn slots_are_reused_with_a_new_generation() {
        let mut core = core();
        let a = core.alloc(3);
        assert_eq!(
            (core.live, core.conns[a as usize].phase),
            (1, Phase::Handshaking)
        );
        core.conns[a as usize].phase = Phase::Zombie;
        core.release(a);
        assert_eq!(core.live, 0);
        let b = core.alloc(4);
        assert_eq!(a, b);
        assert_eq!(core.conns[b as usize].generation, 1);
        assert_eq!(core.conns[b as usize].fd, 4);
    }

    #[test]
    fn handshake_timer_is_scheduled_on_accept() {
        let mut core = core();
        let slot = core.alloc(3);
        let at = ticks(Duration::from_secs(10));
        assert_eq!(core.conns[slot as usize].timer_at, at);
        let mut due = Vec::new();
        core.wheel.advance(at - 1, &mut due);
        assert!(due.is_empty());
        core.wheel.advance(at, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].slot, slot);
    }

    #[test]
    fn backpressure_reports_then_drops() {
        let mut core = core();
        let s = open(&mut core);
        assert_eq!(
            core.send_data(s, OpCode::Binary, &[0; 50]),
            SendResult::Queued
        );
        assert_eq!(core.dirty, vec![s]);
        assert_eq!(
            core.send_data(s, OpCode::Binary, &[0; 60]),
            SendResult::Backpressure
        );
        assert!(core.conns[s as usize].has(flag::OVER_LIMIT));
        assert_eq!(
            core.send_data(s, OpCode::Binary, &[0; 1]),
            SendResult::Dropped
        );
        assert_eq!(core.conns[s as usize].buffered(), 52 + 62);
        assert_eq!(core.dirty, vec![s], "flushed once per turn");
        // Control frames are never dropped.
        core.send_control(s, OpCode::Pong, b"p");
        assert_eq!(core.conns[s as usize].buffered(), 52 + 62 + 3);
    }

    #[test]
    fn a_message_larger_than_the_limit_is_queued_when_under_it() {
        let mut core = core();
        let s = open(&mut core);
        assert_eq!(
            core.send_data(s, OpCode::Binary, &[0; 1000]),
            SendResult::Backpressure
        );
    }

    #[test]
    fn close_policy_closes_with_1008() {
        let cfg = Config {
            max_backpressure: 10,
            backpressure_policy: BackpressurePolicy::Close,
            ..Config::default()
        };
        let mut core: Core<()> = Core::new(Limits::new(&cfg), Local::standalone());
        let s = core.alloc(-1);
        core.conns[s as usize].phase = Phase::Open;
        let _ = core.send_data(s, OpCode::Binary, &[0; 20]);
        assert_eq!(core.send_data(s, OpCode::Binary, b"x"), SendResult::Dropped);
        assert_eq!(core.conns[s as usize].phase, Phase::Closing);
        assert_eq!(core.closed.len(), 1);
        assert_eq!(core.closed[0].code, CloseCode::POLICY_VIOLATION);
        let q = core.conns[s as usize].out.as_ref().unwrap();
        assert!(
            q.unsent()
                .ends_with(b"\x88\x1b\x03\xf0send queue over the limit")
        );
    }

    #[test]
    fn close_sends_code_and_reason_once() {
        let mut core = core();
        let s = open(&mut core);
        core.close(s, CloseCode::NORMAL, "bye");
        core.close(s, CloseCode::GOING_AWAY, "again");
        assert_eq!(core.closed.len(), 1);
        assert_eq!(core.closed[0].reason, "bye");
        let q = core.conns[s as usize].out.as_ref().unwrap();
        assert_eq!(q.unsent(), b"\x88\x05\x03\xe8bye");
        assert_eq!(
            core.send_data(s, OpCode::Text, b"late"),
            SendResult::Dropped
        );
    }
}
