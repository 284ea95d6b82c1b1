//! Connection slots: one [`Slot`] per connection holds everything the connection owns, and the
//! worker's [`Slab`] of them allocates, resets and frees slots in one place each.
//!
//! A slot is small on purpose: an idle open connection holds its descriptor, its machine (phase
//! and stamps), its decoder, two rate buckets, a few flag bits and its user state; everything a
//! connection needs only sometimes (a request head split over receives, permessage-deflate, topic
//! subscriptions, a counted client address, a client's dial state) sits in one boxed [`Extra`],
//! and output queues come from the worker's pool only while bytes are queued.

use super::machine::{Admit, Backpressure, CloseStep, Machine, Phase, Timeouts};
use super::outq::{LARGE, OutQueue, Pool};
use super::time::Time;
use super::wheel::{Entry, Tick, Wheel, tick_at_or_after};
use super::{Closed, SendResult, mask_key};
use crate::connect::Connect;
use crate::deflate::{ConnDeflate, Shared};
use crate::ring::{Chunk, Landing, Lending};
use crate::stats::{CloseStatus, MessageKind, WorkerStats};
use crate::tls::{self, Session};
use ringws_protocol::frame::{MAX_CONTROL_PAYLOAD, OpCode};
use ringws_protocol::handshake::ClientHandshake;
use ringws_protocol::{CloseCode, CloseFrame, Limits, MessageBuf, Receiver, Role};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use tracing::error;

/// Bits of [`Slot::io`]: the worker's bookkeeping of the slot's operations.
pub(crate) mod io {
    /// A multishot receive is armed.
    pub const RECV_ARMED: u8 = 1;
    /// The slot is in the list of connections to flush this turn.
    pub const DIRTY: u8 = 2;
    /// The receive must be re-armed after this turn (it ended for lack of buffers).
    pub const STARVED: u8 = 4;
    /// A client connection's connect is in flight.
    pub const CONNECTING: u8 = 8;
    /// The output queue was made while handshaking (for the answer): it is freed, not pooled, once
    /// drained, so that a burst of handshakes leaves no pool of its size behind.
    pub const UNPOOLED: u8 = 16;
    /// The multishot receive was cancelled so that the large frame in progress is received
    /// straight into its assembly buffer once the multishot receive has ended.
    pub const SWITCHING: u8 = 32;
}

/// Marks "no live wheel entry".
pub(crate) const NO_TIMER: Tick = Tick::MAX;

/// Rate buckets of one connection (generic cell rate algorithm state, see `policy::rate`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rates {
    /// Messages.
    pub messages: u64,
    /// Pings.
    pub pings: u64,
}

/// A client connection between the start of its connect and its `101`.
pub(crate) struct Dial {
    /// Where to, with what request.
    pub target: Connect,
    /// The key of the upgrade request, to check the `101` against.
    pub handshake: ClientHandshake,
}

/// What a connection needs only sometimes, boxed so that an idle slot pays 8 bytes for all of it.
#[derive(Default)]
pub(crate) struct Extra {
    /// A request head (or `101` response) split over receives, accumulated until complete.
    pub handshake: Vec<u8>,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<ConnDeflate>,
    /// The topics this connection subscribes to (ids; pub/sub keeps the members per topic).
    pub topics: Vec<u32>,
    /// The client address counted against `max_connections_per_ip`, if counted.
    pub counted_ip: Option<IpAddr>,
    /// A client connection's target and handshake, until the `101`.
    pub dial: Option<Dial>,
    /// wss://: the TLS session and the plaintext waiting to be encrypted.
    pub tls: Option<Box<TlsSide>>,
    /// A large frame's assembly buffer while a receive straight into it is in the air.
    pub landing: Option<Landing>,
}

/// A TLS connection's session and its plaintext queue: frames are queued here during a loop turn
/// and encrypted into the slot's output queue (the wire) at its flush, as few records as the
/// bytes need. The plaintext queue comes from the slab's pool like the wire's and goes back to it
/// once sealed, so an idle TLS connection holds none.
pub(crate) struct TlsSide {
    pub session: Session,
    pub plain: Option<Box<OutQueue>>,
}

impl Extra {
    /// Whether nothing is held (the box can go).
    fn is_empty(&self) -> bool {
        self.handshake.capacity() == 0
            && self.deflate.is_none()
            && self.topics.capacity() == 0
            && self.counted_ip.is_none()
            && self.dial.is_none()
            && self.tls.is_none()
            && self.landing.is_none()
    }
}

/// One connection slot.
pub(crate) struct Slot<S> {
    /// The socket (`None` when free).
    pub fd: Option<OwnedFd>,
    /// Bumped each time the slot is freed: completions and ids of an earlier connection are stale.
    pub generation: u32,
    /// Phase, flags, stamps.
    pub machine: Machine,
    /// [`io`] bits.
    pub io: u8,
    /// The tick of the slot's live wheel entry, or [`NO_TIMER`].
    pub timer_at: Tick,
    /// The frame decoder. Taken out (`None`) while its events are delivered.
    pub rx: Option<Receiver>,
    /// Bytes queued to send, while there are any.
    pub out: Option<Box<OutQueue>>,
    /// Rate buckets.
    pub rates: Rates,
    /// What the connection needs only sometimes.
    pub extra: Option<Box<Extra>>,
    /// The handler's per-connection state.
    pub state: S,
}

impl<S> Slot<S> {
    /// Whether `bit` of [`io`] is set.
    pub fn has(&self, bit: u8) -> bool {
        self.io & bit != 0
    }

    /// Bytes queued and not yet written (plaintext waiting for encryption included).
    pub fn buffered(&self) -> usize {
        let plain = self
            .extra
            .as_ref()
            .and_then(|e| e.tls.as_ref())
            .and_then(|t| t.plain.as_ref())
            .map_or(0, |q| q.buffered());
        self.out.as_ref().map_or(0, |q| q.buffered()) + plain
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.tls.is_some())
    }

    /// Whether a send is in the air (the kernel may be reading the queue's memory).
    pub fn send_in_flight(&self) -> bool {
        self.out.as_ref().is_some_and(|q| q.in_flight())
    }

    /// Whether everything queued is written and no send is in the air.
    pub fn drained(&self) -> bool {
        self.buffered() == 0 && !self.send_in_flight()
    }

    /// Whether any operation may still complete for this slot.
    pub fn ops_in_flight(&self) -> bool {
        self.has(io::RECV_ARMED) || self.has(io::CONNECTING) || self.send_in_flight()
    }

    /// The socket, if the slot holds one.
    pub fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// The extras, created if needed.
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_default()
    }

    /// Drops the extras if nothing is left in them.
    pub fn trim_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }
}

/// Settings of a worker's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabConfig {
    /// Frame and message size limits of every decoder.
    pub limits: Limits,
    /// The timers.
    pub timeouts: Timeouts,
    /// The send queue limit and its policy.
    pub backpressure: Backpressure,
}

/// Slots per chunk of [`Slots`]: 1024 x ~100 B, a tenth of a MiB allocated at a time.
const CHUNK: usize = 1024;

/// The slots, stored in chunks of [`CHUNK`] that are allocated as the slab grows and never moved:
/// a growing `Vec` of slots would copy every slot into an array twice the size and leave the old
/// one behind in the allocator (at 10,000 idle connections that was ~110 of ~570 bytes of server
/// memory per connection).
struct Slots<S> {
    chunks: Vec<Vec<Slot<S>>>,
    len: usize,
}

impl<S> Slots<S> {
    fn new() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, slot: Slot<S>) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(slot),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(slot);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Slot<S>> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    fn iter(&self) -> impl Iterator<Item = &Slot<S>> {
        self.chunks.iter().flatten()
    }
}

impl<S> std::ops::Index<usize> for Slots<S> {
    type Output = Slot<S>;

    fn index(&self, i: usize) -> &Slot<S> {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<S> std::ops::IndexMut<usize> for Slots<S> {
    fn index_mut(&mut self, i: usize) -> &mut Slot<S> {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// A worker's connections: the slots, their timers, their queued output and what the worker must
/// do about them at the end of the turn (flush, arm or cancel receives, deliver `on_close`).
pub(crate) struct Slab<S> {
    slots: Slots<S>,
    free: Vec<u32>,
    /// Slots not `Free`.
    live: usize,
    pool: Pool,
    /// Slots with bytes to flush at the end of this turn.
    pub dirty: Vec<u32>,
    /// Slots whose receive may need arming or cancelling at the end of this turn.
    pub review: Vec<u32>,
    /// Connections that left `Open` and still need their `on_close`.
    closed: Vec<Closed>,
    /// permessage-deflate state shared by the worker's connections.
    pub deflate: Shared,
    wheel: Wheel,
    cfg: SlabConfig,
    /// The current time: milliseconds since the worker started.
    now_ms: u64,
    /// The worker's counters (the worker's own, shared with scrapes).
    pub stats: Arc<WorkerStats>,
    /// Lends large payloads of the receive being handled to sends instead of copying them (set by
    /// the worker once its receive buffers exist).
    pub lending: Option<Lending>,
    /// The assembled message being delivered (taken from its decoder): a send of exactly its
    /// payload queues it by reference instead of copying it.
    pub taken: Option<Arc<MessageBuf>>,
}

impl<S: Default> Slab<S> {
    /// An empty slab.
    pub fn new(cfg: SlabConfig) -> Self {
        Self {
            slots: Slots::new(),
            free: Vec::new(),
            live: 0,
            // Queues for a thousand connections sending in the same turn; spare buffers up to 64 KiB
            // are kept, bigger ones are freed after use.
            pool: Pool::new(1024, 64 << 10),
            dirty: Vec::new(),
            review: Vec::new(),
            closed: Vec::new(),
            deflate: Shared::default(),
            wheel: Wheel::new(),
            cfg,
            now_ms: 0,
            stats: Arc::default(),
            lending: None,
            taken: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SlabConfig {
        &self.cfg
    }

    /// Slots in use.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots allocated so far (used or free): valid slot numbers are below this.
    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Slot `slot` (which must exist).
    pub fn get(&self, slot: u32) -> &Slot<S> {
        &self.slots[slot as usize]
    }

    /// Slot `slot` (which must exist), mutably.
    pub fn get_mut(&mut self, slot: u32) -> &mut Slot<S> {
        &mut self.slots[slot as usize]
    }

    /// Slot `slot` if it exists and is at `generation` (on the bits a token keeps: `matches`).
    pub fn find(&mut self, slot: u32, matches: impl Fn(u32) -> bool) -> Option<&mut Slot<S>> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.machine.phase() != Phase::Free && matches(s.generation))
    }

    /// The current time (milliseconds since the worker started, and as the machine sees it).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The current time as the connection machines see it.
    pub fn time(&self) -> Time {
        Time::from_ms(self.now_ms)
    }

    /// Moves the clock to `now_ms` (milliseconds since the worker started; it never goes back).
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Collects the wheel entries due by now into `due`.
    pub fn advance(&mut self, due: &mut Vec<Entry>) {
        self.wheel
            .advance(super::wheel::tick_at_or_before(self.now_ms), due);
    }

    /// Takes a free slot for socket `fd` (a client connection's if `client`), handshaking from now.
    pub fn alloc(&mut self, fd: OwnedFd, client: bool) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    fd: None,
                    generation: 0,
                    machine: Machine::default(),
                    io: 0,
                    timer_at: NO_TIMER,
                    rx: None,
                    out: None,
                    rates: Rates::default(),
                    extra: None,
                    state: S::default(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let role = if client { Role::Client } else { Role::Server };
        let now = self.time();
        let s = &mut self.slots[slot as usize];
        s.fd = Some(fd);
        s.machine = Machine::start(now, client);
        s.rx = Some(Receiver::new(role));
        self.live += 1;
        self.stats.connections_open.inc();
        self.schedule(slot);
        slot
    }

    /// Frees slot `slot`: closes its socket and resets everything it held. The slot must be
    /// `Closed` with no operation in flight; otherwise nothing happens and the slip is logged (a
    /// slot whose send is in the air is never reused).
    pub fn release(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        if s.machine.phase() != Phase::Closed || s.ops_in_flight() {
            error!(
                slot,
                phase = ?s.machine.phase(),
                io = s.io,
                "release of a slot that is not closed or has operations in flight; keeping it"
            );
            return false;
        }
        if s.extra.as_ref().is_some_and(|e| !e.topics.is_empty()) {
            error!(slot, "a slot released with subscriptions; they are dropped");
        }
        s.fd = None;
        s.generation = s.generation.wrapping_add(1);
        s.machine = Machine::default();
        let unpooled = s.has(io::UNPOOLED);
        s.io = 0;
        s.timer_at = NO_TIMER;
        s.rx = None;
        s.rates = Rates::default();
        s.extra = None;
        s.state = S::default();
        if let Some(q) = s.out.take() {
            self.pool.give_or_discard(q, unpooled);
        }
        self.live -= 1;
        self.stats.connections_open.dec();
        self.free.push(slot);
        true
    }

    /// Makes sure slot `slot` is checked by its machine's next deadline (or earlier).
    pub fn schedule(&mut self, slot: u32) {
        let now = self.time();
        let s = &mut self.slots[slot as usize];
        let Some(in_ms) = s.machine.next_check(now, &self.cfg.timeouts) else {
            return;
        };
        let at = tick_at_or_after(self.now_ms + u64::from(in_ms));
        if at < s.timer_at {
            s.timer_at = at;
            self.wheel.schedule(Entry { slot, at });
        }
    }

    /// Whether wheel entry `e` is the live one of its slot (due at the slot's timer tick; a freed
    /// slot has none); if so it is consumed (the slot has no live entry until it is scheduled
    /// again).
    pub fn take_due(&mut self, e: &Entry) -> bool {
        match self.slots.get_mut(e.slot as usize) {
            Some(s) if s.timer_at == e.at => {
                s.timer_at = NO_TIMER;
                true
            }
            _ => false,
        }
    }

    /// The queue frames for the slot go to (taken from the pool if it has none; for TLS, the
    /// plaintext queue), marked for this turn's flush.
    ///
    /// While handshaking the wire queue is a new one, freed once drained ([`io::UNPOOLED`]): a
    /// burst of thousands of handshakes has thousands of answers in the air at once, and their
    /// queues, pooled, would stay as a pool of that size (~650 bytes each with their buffers,
    /// 26-51 bytes per connection after 10,000 idle connections arrived at once).
    pub fn out(&mut self, slot: u32) -> &mut OutQueue {
        let s = &mut self.slots[slot as usize];
        if !s.has(io::DIRTY) {
            s.io |= io::DIRTY;
            self.dirty.push(slot);
        }
        match s.extra.as_mut().and_then(|e| e.tls.as_mut()) {
            Some(t) => t.plain.get_or_insert_with(|| self.pool.take()),
            None => wire_queue(&mut self.pool, &mut s.out, &mut s.io, &s.machine),
        }
    }

    /// The slot's wire queue (what sends carry), marked for this turn's flush: for TLS, where
    /// records go.
    pub fn wire(&mut self, slot: u32) -> &mut OutQueue {
        let s = &mut self.slots[slot as usize];
        if !s.has(io::DIRTY) {
            s.io |= io::DIRTY;
            self.dirty.push(slot);
        }
        wire_queue(&mut self.pool, &mut s.out, &mut s.io, &s.machine)
    }

    /// Gives an emptied output queue back to the pool.
    pub fn return_queue(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.out
            .as_ref()
            .is_some_and(|q| q.is_empty() && !q.in_flight())
            && let Some(q) = s.out.take()
        {
            self.pool.give_or_discard(q, s.has(io::UNPOOLED));
            s.io &= !io::UNPOOLED;
        }
    }

    /// Bytes queued for sending over every connection (a walk of the slab: for a periodic
    /// gauge, not per message).
    pub fn queued_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.buffered() as u64).sum()
    }

    /// TLS: feeds bytes received on `slot` to its session. Handshake records (and an alert after
    /// an error) go to the wire queue; decrypted bytes are decrypted in place in `data` or
    /// copied, as `plain` says. `None` if the slot has no TLS session.
    pub fn tls_input(
        &mut self,
        slot: u32,
        data: &mut [u8],
        plain: &mut tls::Plaintext,
        records: &mut Vec<u8>,
    ) -> Option<tls::Input> {
        let s = &mut self.slots[slot as usize];
        let tls = s.extra.as_mut()?.tls.as_mut()?;
        records.clear();
        let outcome = tls.session.input(data, records, plain);
        if !records.is_empty() {
            self.wire(slot).push_raw(|v| v.extend_from_slice(records));
        }
        Some(outcome)
    }

    /// TLS, at the flush: encrypts the plaintext the turn queued for `slot` into its wire queue
    /// (a single chunk from where it lies, several gathered into `gather` first: one record
    /// stream either way), then close_notify once a closing connection has nothing more to say.
    pub fn seal_tls(&mut self, slot: u32, gather: &mut Vec<u8>) {
        let s = &mut self.slots[slot as usize];
        let closing = s.machine.phase() == Phase::Closing;
        let Slot { extra, out, .. } = s;
        let Some(tls) = extra.as_mut().and_then(|e| e.tls.as_mut()) else {
            return;
        };
        if !tls.session.established() {
            return;
        }
        let wire = out.get_or_insert_with(|| self.pool.take());
        let TlsSide { session, plain } = &mut **tls;
        if let Some(plain) = plain.as_mut().filter(|q| !q.is_empty()) {
            if plain.chunk_count() == 1 {
                plain.drain_chunks(|c| {
                    wire.push_raw(|v| {
                        session.seal(c, v);
                    })
                });
            } else {
                gather.clear();
                plain.drain_chunks(|c| gather.extend_from_slice(c));
                wire.push_raw(|v| {
                    session.seal(gather, v);
                });
            }
        }
        if let Some(q) = plain.take_if(|q| q.is_empty()) {
            self.pool.give(q);
        }
        if closing && plain.is_none() && !session.close_notify_sent() {
            wire.push_raw(|v| session.close_notify(v));
        }
    }

    /// Queues a data frame under the backpressure policy.
    pub fn send_data(&mut self, slot: u32, opcode: OpCode, payload: &[u8]) -> SendResult {
        let bp = self.cfg.backpressure;
        let s = &self.slots[slot as usize];
        let open = s.machine.is_open();
        match s.machine.admit_send(s.buffered(), &bp) {
            Admit::Queue => {}
            Admit::Drop => {
                if open {
                    self.stats.backpressure_events.inc();
                    self.stats.dropped.inc();
                }
                return SendResult::Dropped;
            }
            Admit::DropAndClose => {
                self.stats.backpressure_events.inc();
                self.stats.dropped.inc();
                self.stats.slow_consumer_disconnects.inc();
                self.close(
                    slot,
                    CloseCode::POLICY_VIOLATION,
                    "send queue over the limit",
                );
                return SendResult::Dropped;
            }
        }
        let mask = s.machine.is_client().then(mask_key);
        // The connection's compression state is taken out for the call (a pointer move), so that
        // it, the shared compressors and the queue can be borrowed together.
        let mut extra = self.slots[slot as usize].extra.take();
        let (deflate, tls) = match extra.as_deref_mut() {
            Some(Extra { deflate, tls, .. }) => (deflate.as_mut(), tls.as_mut()),
            None => (None, None),
        };
        let compressor = deflate.and_then(|d| d.compressor(&mut self.deflate, payload.len()));
        // Borrow the queue without `out()` (which borrows the whole slab) while `compressor` lives.
        let s = &mut self.slots[slot as usize];
        if !s.has(io::DIRTY) {
            s.io |= io::DIRTY;
            self.dirty.push(slot);
        }
        // A large payload still in the receive buffer it arrived in, or the assembled message
        // being delivered (an echo, a forward), is sent from there; TLS and compression write new
        // bytes anyway, and a client masks.
        let uncopied = match (&tls, &compressor, mask) {
            (None, None, None) if payload.len() >= LARGE => self
                .lending
                .as_ref()
                .and_then(|l| l.lend(payload))
                .map(Chunk::Lent)
                .or_else(|| {
                    let taken = self.taken.as_ref()?;
                    std::ptr::eq(taken.bytes(), payload).then(|| Chunk::Message(Arc::clone(taken)))
                }),
            _ => None,
        };
        let q = match tls {
            Some(t) => t.plain.get_or_insert_with(|| self.pool.take()),
            None => s.out.get_or_insert_with(|| self.pool.take()),
        };
        let stats = &self.stats;
        match (uncopied, compressor) {
            (Some(chunk), _) => {
                match chunk {
                    Chunk::Lent(_) => stats.sent_lent.inc(),
                    _ => stats.sent_taken.inc(),
                }
                q.push_frame_uncopied(opcode, chunk);
            }
            (None, Some(c)) => {
                let before = q.buffered();
                q.push_raw(|out| c.write_frame(opcode, payload, mask, out));
                stats.deflate_sent_uncompressed.add(payload.len() as u64);
                stats
                    .deflate_sent_compressed
                    .add(q.buffered().saturating_sub(before) as u64);
            }
            (None, None) => q.push_frame_masked(opcode, payload, mask),
        }
        let kind = kind_of(opcode);
        stats.sent.inc(kind);
        stats.sent_bytes.add(kind, payload.len() as u64);
        s.extra = extra;
        let buffered = s.buffered();
        match s.machine.queued(buffered, &bp) {
            None => SendResult::Queued,
            Some(pause) => {
                stats.backpressure_events.inc();
                if pause {
                    self.review.push(slot);
                }
                SendResult::Backpressure
            }
        }
    }

    /// Queues a control frame (ping, pong, close) regardless of backpressure: control frames are at
    /// most 127 bytes and the protocol requires them.
    pub fn send_control(&mut self, slot: u32, opcode: OpCode, payload: &[u8]) {
        debug_assert!(opcode.is_control() && payload.len() <= MAX_CONTROL_PAYLOAD);
        let mask = self.slots[slot as usize].machine.is_client().then(mask_key);
        self.out(slot).push_frame_masked(opcode, payload, mask);
        let kind = kind_of(opcode);
        self.stats.sent.inc(kind);
        self.stats.sent_bytes.add(kind, payload.len() as u64);
    }

    /// Stops (`paused`) or restarts reading from an open connection; the receive is cancelled or
    /// re-armed at the end of this turn.
    pub fn set_paused(&mut self, slot: u32, paused: bool) {
        if self.slots[slot as usize].machine.set_paused(paused) {
            self.review.push(slot);
        }
    }

    /// Starts the closing handshake from this side: queues a Close frame with `code` and `reason`
    /// (cut to fit a control frame), leaves `Open`, and records the close for `on_close`. No-op
    /// unless the connection is open.
    pub fn close(&mut self, slot: u32, code: CloseCode, reason: &str) {
        if !self.slots[slot as usize].machine.is_open() {
            return;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let n = CloseFrame { code, reason }.encode(&mut payload);
        self.send_control(slot, OpCode::Close, &payload[..n]);
        self.begin_closing(slot);
        let reason = reason[..n - 2].to_owned();
        self.stats.closes_local.inc(CloseStatus(code.0));
        self.closed.push(Closed { slot, code, reason });
    }

    /// Records that connection `slot` left `Open` with `code` (1006: without a Close), for its
    /// `on_close`.
    pub fn record_close(&mut self, slot: u32, code: CloseCode, reason: String) {
        self.closed.push(Closed { slot, code, reason });
    }

    /// The next connection whose `on_close` is due.
    pub fn next_closed(&mut self) -> Option<Closed> {
        self.closed.pop()
    }

    /// Enters `Closing` (a final response or Close frame was just queued): the close timeout starts
    /// and reading resumes if it was paused.
    pub fn begin_closing(&mut self, slot: u32) {
        let now = self.time();
        if self.slots[slot as usize].machine.begin_closing(now) {
            self.review.push(slot);
        }
        self.schedule(slot);
    }

    /// In `Closing`: what to do now that the queue may have drained (see
    /// [`Machine::close_progress`]).
    pub fn close_progress(&mut self, slot: u32) -> CloseStep {
        let s = &mut self.slots[slot as usize];
        let drained = s.drained();
        s.machine.close_progress(drained)
    }
}

/// A slot's wire queue `out`, made if it has none: from the pool, or new and marked
/// [`io::UNPOOLED`] while handshaking (see [`Slab::out`]).
fn wire_queue<'a>(
    pool: &mut Pool,
    out: &'a mut Option<Box<OutQueue>>,
    bits: &mut u8,
    machine: &Machine,
) -> &'a mut OutQueue {
    out.get_or_insert_with(|| {
        if machine.phase() == Phase::Handshaking {
            *bits |= io::UNPOOLED;
            Box::default()
        } else {
            pool.take()
        }
    })
}

/// The metrics kind of a frame's opcode.
pub(crate) fn kind_of(opcode: OpCode) -> MessageKind {
    match opcode {
        OpCode::Text => MessageKind::Text,
        OpCode::Ping => MessageKind::Ping,
        OpCode::Pong => MessageKind::Pong,
        OpCode::Close => MessageKind::Close,
        _ => MessageKind::Binary,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::conn::{BackpressurePolicy, Check};

    pub(crate) fn config(max_backpressure: usize, policy: BackpressurePolicy) -> SlabConfig {
        SlabConfig {
            limits: Limits::default(),
            timeouts: Timeouts {
                handshake: 10_000,
                idle: 120_000,
                ping: 30_000,
                pong: 30_000,
                close: 5_000,
                message: 30_000,
            },
            backpressure: Backpressure {
                max: max_backpressure,
                policy,
            },
        }
    }

    /// A descriptor for a slot: one end of a fresh socket pair.
    pub(crate) fn fd() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.into()
    }

    pub(crate) fn open<S: Default>(slab: &mut Slab<S>) -> u32 {
        let slot = slab.alloc(fd(), false);
        slab.get_mut(slot)
            .machine
            .open(Time(0))
            .expect("handshaking");
        slot
    }

    fn slab() -> Slab<u64> {
        Slab::new(config(100, BackpressurePolicy::Drop))
    }

    #[test]
    fn slot_is_small() {
        let slot = size_of::<Slot<()>>();
        let rx = size_of::<Receiver>();
        println!("connection slot {slot} B, of which the decoder {rx} B");
        // 192 B (a 128 B decoder) until the decoder's spanning state was boxed, 96 B until the
        // decoder stopped keeping a copy of the limits: an idle connection's memory is mostly its
        // slot, so keep it from silently regrowing.
        assert!(slot <= 80, "an idle connection's slot grew to {slot} bytes");
        assert!(rx <= 16, "an idle decoder grew to {rx} bytes");
        // And its one wheel entry (12 B while entries carried the slot's generation).
        assert!(size_of::<Entry>() <= 8, "a wheel entry grew");
    }

    #[test]
    fn slots_are_reused_with_a_new_generation_and_a_clean_state() {
        let mut slab = slab();
        let a = slab.alloc(fd(), false);
        assert_eq!(
            (slab.live(), slab.get(a).machine.phase()),
            (1, Phase::Handshaking)
        );
        let s = slab.get_mut(a);
        s.state = 7;
        s.rates.pings = 9;
        s.extra().handshake.extend_from_slice(b"GET /");
        assert!(!slab.release(a), "not closed yet");
        slab.get_mut(a).machine.close_now();
        assert!(slab.release(a));
        assert_eq!(slab.live(), 0);
        let b = slab.alloc(fd(), true);
        assert_eq!(a, b);
        let s = slab.get(b);
        assert_eq!(s.generation, 1);
        assert_eq!((s.state, s.rates.pings), (0, 0));
        assert!(s.extra.is_none() && s.fd.is_some());
        assert!(s.machine.is_client(), "the new connection's role");
    }

    #[test]
    fn a_slot_with_a_send_in_the_air_is_never_released() {
        let mut slab = slab();
        let s = open(&mut slab);
        let _ = slab.send_data(s, OpCode::Text, b"x");
        slab.get_mut(s)
            .out
            .as_mut()
            .unwrap()
            .next_send()
            .unwrap()
            .arm_for_test(0);
        slab.get_mut(s).machine.close_now();
        assert!(!slab.release(s));
        assert_eq!(slab.live(), 1);
    }

    #[test]
    fn the_handshake_check_is_scheduled_on_accept() {
        let mut slab = slab();
        let slot = slab.alloc(fd(), false);
        assert_eq!(slab.get(slot).timer_at, 100, "10 s = tick 100");
        let mut due = Vec::new();
        slab.set_now(9_999);
        slab.advance(&mut due);
        assert!(due.is_empty());
        slab.set_now(10_000);
        slab.advance(&mut due);
        assert_eq!(due.len(), 1);
        assert!(slab.take_due(&due[0]));
        assert!(!slab.take_due(&due[0]), "consumed");
    }

    /// Runs the worker's timer loop on a virtual clock: at every tick boundary (where the worker's
    /// absolute ring timeout wakes it) the wheel fires and due machines are checked. Returns when
    /// slot `slot`'s first timer action happened, in milliseconds.
    fn first_timer_action(slab: &mut Slab<u64>, slot: u32, from_ms: u64) -> (u64, Check) {
        let mut due = Vec::new();
        let mut now = from_ms;
        loop {
            now = (now / super::super::wheel::TICK_MS + 1) * super::super::wheel::TICK_MS;
            slab.set_now(now);
            slab.advance(&mut due);
            for e in due.drain(..) {
                if slab.take_due(&e) {
                    let t = slab.time();
                    let timeouts = slab.config().timeouts;
                    match slab.get_mut(e.slot).machine.check(t, &timeouts) {
                        Check::Later(_) => slab.schedule(e.slot),
                        action if e.slot == slot => return (now, action),
                        _ => {}
                    }
                }
            }
            assert!(now < from_ms + 1_000_000, "no timer fired");
        }
    }

    #[test]
    fn timers_fire_no_earlier_than_their_value_and_at_most_one_tick_late() {
        use super::super::machine::Expired;
        use super::super::wheel::TICK_MS;
        let timeouts = config(100, BackpressurePolicy::Drop).timeouts;
        // Activity at every millisecond offset within a tick, so rounding is exercised both ways.
        for offset in [0, 1, 37, 99, 100, 101, 150, 199] {
            // Handshake: from the accept.
            let mut sl = slab();
            sl.set_now(1_000 + offset);
            let s = sl.alloc(fd(), false);
            let deadline = 1_000 + offset + u64::from(timeouts.handshake);
            let (at, what) = first_timer_action(&mut sl, s, 1_000 + offset);
            assert_eq!(what, Check::Expired(Expired::Handshake));
            assert!(
                at >= deadline && at <= deadline + TICK_MS,
                "{offset}: {at} vs {deadline}"
            );
            // Ping, then idle from the last receive (the ping's pong deadline is later than idle
            // here, so the idle timeout is what ends it).
            let mut sl = Slab::new(SlabConfig {
                timeouts: Timeouts {
                    idle: 45_000,
                    ..timeouts
                },
                ..config(100, BackpressurePolicy::Drop)
            });
            let s = open(&mut sl);
            sl.set_now(5_000 + offset);
            let t = sl.time();
            sl.get_mut(s).machine.received(t);
            let (at, what) = first_timer_action(&mut sl, s, 5_000 + offset);
            let ping = 5_000 + offset + u64::from(timeouts.ping);
            assert!(matches!(what, Check::Ping(_)));
            assert!(
                at >= ping && at <= ping + TICK_MS,
                "{offset}: {at} vs {ping}"
            );
            sl.schedule(s);
            let (at, what) = first_timer_action(&mut sl, s, at);
            let idle = 5_000 + offset + 45_000;
            assert_eq!(what, Check::Expired(Expired::Idle));
            assert!(
                at >= idle && at <= idle + TICK_MS,
                "{offset}: {at} vs {idle}"
            );
            // Close: from entering Closing.
            let mut sl = slab();
            let s = open(&mut sl);
            sl.set_now(20_000 + offset);
            sl.begin_closing(s);
            let close = 20_000 + offset + u64::from(timeouts.close);
            let (at, what) = first_timer_action(&mut sl, s, 20_000 + offset);
            assert_eq!(what, Check::Expired(Expired::Close));
            assert!(
                at >= close && at <= close + TICK_MS,
                "{offset}: {at} vs {close}"
            );
        }
    }

    #[test]
    fn backpressure_reports_then_drops() {
        let mut slab = slab();
        let s = open(&mut slab);
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 50]),
            SendResult::Queued
        );
        assert_eq!(slab.dirty, vec![s]);
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 60]),
            SendResult::Backpressure
        );
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 1]),
            SendResult::Dropped
        );
        assert_eq!(slab.get(s).buffered(), 52 + 62);
        assert_eq!(slab.dirty, vec![s], "flushed once per turn");
        // Control frames are never dropped.
        slab.send_control(s, OpCode::Pong, b"p");
        assert_eq!(slab.get(s).buffered(), 52 + 62 + 3);
    }

    #[test]
    fn a_message_larger_than_the_limit_is_queued_when_under_it() {
        let mut slab = slab();
        let s = open(&mut slab);
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 1000]),
            SendResult::Backpressure
        );
    }

    #[test]
    fn the_message_being_delivered_is_queued_by_reference_only_when_sent_as_it_is() {
        let mut slab: Slab<u64> = Slab::new(config(1 << 20, BackpressurePolicy::Drop));
        let (a, b, c) = (open(&mut slab), open(&mut slab), open(&mut slab));
        let m = super::super::outq::tests::taken(20_000);
        slab.taken = Some(Arc::clone(&m));
        assert_eq!(
            slab.send_data(a, OpCode::Binary, m.bytes()),
            SendResult::Queued
        );
        assert_eq!(
            Arc::strong_count(&m),
            3,
            "a's queue holds the message itself"
        );
        let _ = slab.send_data(c, OpCode::Binary, m.bytes());
        assert_eq!(Arc::strong_count(&m), 4, "so does c's (a forward)");
        let copy = m.bytes().to_vec();
        let _ = slab.send_data(b, OpCode::Binary, &copy);
        let _ = slab.send_data(b, OpCode::Binary, &m.bytes()[1..]);
        assert_eq!(
            Arc::strong_count(&m),
            4,
            "equal bytes elsewhere and a part of the message are copied"
        );
        slab.taken = None;
        assert_eq!(slab.stats.sent_taken.get(), 2);
        assert_eq!(slab.stats.sent_lent.get(), 0);
        let unsent = slab.get(a).out.as_ref().unwrap().unsent();
        assert_eq!(unsent[..4], *b"\x82\x7e\x4e\x20");
        assert_eq!(unsent[4..], *m.bytes());
        assert_eq!(slab.get(b).buffered(), 2 * 4 + 20_000 + 19_999);
    }

    #[test]
    fn close_policy_closes_with_1008() {
        let mut slab: Slab<()> = Slab::new(config(10, BackpressurePolicy::Close));
        let s = open(&mut slab);
        let _ = slab.send_data(s, OpCode::Binary, &[0; 20]);
        assert_eq!(slab.send_data(s, OpCode::Binary, b"x"), SendResult::Dropped);
        assert_eq!(slab.get(s).machine.phase(), Phase::Closing);
        let closed = slab.next_closed().unwrap();
        assert_eq!(closed.code, CloseCode::POLICY_VIOLATION);
        let q = slab.get(s).out.as_ref().unwrap();
        assert!(
            q.unsent()
                .ends_with(b"\x88\x1b\x03\xf0send queue over the limit")
        );
    }

    #[test]
    fn pause_policy_pauses_reading_over_the_limit() {
        let mut slab: Slab<()> = Slab::new(config(10, BackpressurePolicy::Pause));
        let s = open(&mut slab);
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 20]),
            SendResult::Backpressure
        );
        assert_eq!(slab.review, vec![s], "the receive is cancelled this turn");
        assert!(!slab.get(s).machine.wants_recv());
        assert_eq!(
            slab.send_data(s, OpCode::Binary, &[0; 20]),
            SendResult::Backpressure
        );
    }

    #[test]
    fn close_sends_code_and_reason_once() {
        let mut slab = slab();
        let s = open(&mut slab);
        slab.close(s, CloseCode::NORMAL, "bye");
        slab.close(s, CloseCode::GOING_AWAY, "again");
        let closed = slab.next_closed().unwrap();
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (CloseCode::NORMAL, "bye")
        );
        assert!(slab.next_closed().is_none());
        let q = slab.get(s).out.as_ref().unwrap();
        assert_eq!(q.unsent(), b"\x88\x05\x03\xe8bye");
        assert_eq!(
            slab.send_data(s, OpCode::Text, b"late"),
            SendResult::Dropped
        );
    }

    #[test]
    fn a_client_masks_what_it_sends() {
        let mut slab = slab();
        let s = slab.alloc(fd(), true);
        slab.get_mut(s).machine.open(Time(0)).expect("handshaking");
        let _ = slab.send_data(s, OpCode::Text, b"hi");
        let sent = slab.get(s).out.as_ref().unwrap().unsent();
        assert_eq!(sent[1], 0x80 | 2, "the mask bit and the length");
        assert_eq!(sent.len(), 2 + 4 + 2);
    }
}
