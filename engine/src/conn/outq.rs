//! Per-connection output queue, flushed with one send per connection per loop turn (corking).
//!
//! The queue is a list of byte chunks. Small frames are appended to the last chunk; a large payload
//! (at least [`LARGE`] bytes) gets a chunk of its own, allocated at its exact size, so it is copied
//! exactly once and never moved again by a growing buffer. A flush moves up to [`MAX_IOV`] chunks
//! into the queue's [`Flight`] and hands them to the kernel in one operation (a plain send for one
//! chunk, a `sendmsg` otherwise). While that send is in the air its chunks belong to the flight:
//! nothing can append to, move or free them (see [`crate::ring`]); frames queued meanwhile go to
//! new chunks and leave with the next send. When the send completes, fully sent chunks are
//! recycled and the rest return to the front of the queue: a partial send resumes where it stopped.
//!
//! Queues are boxed and come from a per-worker [`Pool`]: a connection takes one when it first queues
//! bytes and gives it back once everything is sent, so an idle connection owns no send memory, and a
//! spare chunk buffer kept in each queue means echo does not allocate per message; a large
//! payload's buffer is kept the same way for the next large payload (allocating and freeing 16 KiB
//! per message cost page faults: the allocator handed freed pages back to the kernel and the next
//! copy faulted them in again, 12% of a 100 x 16 KiB echo's time in `clear_page_erms`). A payload
//! echoed from its receive buffer is not copied at all (a lent chunk, see
//! [`push_frame_uncopied`](OutQueue::push_frame_uncopied)), nor is a large message the decoder
//! assembled across receives (the decoder gives its buffer up). A queue whose
//! send is still in the air is never pooled or freed: the pool leaks it and logs (release builds
//! included).
//!
//! Pub/sub adds shared chunks: a frame encoded once by a publish (`Arc<[u8]>`, header and payload)
//! is queued by reference in every subscriber's queue, so fan-out never copies the payload in user
//! space; the iovec path sends any mix of owned and shared chunks in one operation. For slow
//! subscribers of conflating topics a small map (conflation key -> queued chunk) lets a newer frame
//! replace a queued, not yet sent one in O(1); the map only holds entries queued while the
//! subscriber was behind and is emptied with the queue.

#[cfg(test)]
use crate::ring::MAX_IOV;
use crate::ring::{Chunk, Finish, Flight, SendCqe, Token};
use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use ringws_protocol::mask::unmask;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tracing::error;

/// Payloads of at least this many bytes get a chunk of their own instead of being appended.
pub(crate) const LARGE: usize = 16 << 10;

/// Chunk slots (and conflation entries) a pooled queue keeps allocated.
const KEEP_CHUNKS: usize = 8;

/// What identifies a conflatable message: (topic id, key computed at publish).
pub(crate) type ConflationKey = (u32, u64);

/// Why a send did not land normally (see [`OutQueue::landed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The send failed with this errno: the connection is going away; the queue is now empty.
    Failed(i32),
    /// The completion does not belong to the send in the air (logged); nothing changed.
    Stale,
}

/// Bytes waiting to be sent on one connection.
#[derive(Default)]
pub(crate) struct OutQueue {
    /// Chunks not yet handed to a send.
    pending: VecDeque<Chunk>,
    /// Bytes of `pending[0]` already sent (the rest of a partial send).
    offset: usize,
    /// The chunks of the send in the air, if one is.
    flight: Flight,
    /// Chunks moved from `pending` into flights and not returned: `pending[i]` has the absolute
    /// position `moved + i`.
    moved: u64,
    /// Conflation key -> absolute position of the shared chunk queued for it while behind. Boxed
    /// and made on first use: only slow subscribers of conflating topics need it, and every
    /// handshake's answer goes through a queue of its own. Boxed on purpose: the 8-byte pointer
    /// instead of the map's 48 bytes is the point.
    #[allow(clippy::box_collection)]
    keyed: Option<Box<HashMap<ConflationKey, u64>>>,
    /// Unsent bytes, pending and in the air.
    buffered: usize,
    /// An emptied chunk buffer kept for the next small frames.
    spare: Vec<u8>,
    /// An emptied large payload's buffer kept for the next large payload.
    spare_large: Vec<u8>,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("pending", &self.pending.len())
            .field("buffered", &self.buffered)
            .field("in_flight", &self.flight.is_busy())
            .finish()
    }
}

impl OutQueue {
    /// Bytes queued and not yet acknowledged by a send completion.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether nothing is queued or in the air.
    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// Whether the kernel may still read the queue's memory: a send is in the air, or a zero-copy
    /// send's notification is due.
    pub fn in_flight(&self) -> bool {
        self.flight.holds_kernel_memory()
    }

    /// The chunk small bytes are appended to: the last one if it holds small frames, else a new
    /// one (reusing the spare buffer).
    fn tail(&mut self) -> &mut Vec<u8> {
        let appendable = matches!(self.pending.back(), Some(Chunk::Owned(s)) if s.len() < LARGE);
        if !appendable {
            if self.pending.capacity() == 0 {
                // A new queue's first chunk: room for one (a handshake's answer is all most new
                // queues carry), not the four a first push would reserve; queues that need more
                // grow once and keep it in the pool.
                self.pending.reserve_exact(1);
            }
            self.pending
                .push_back(Chunk::Owned(std::mem::take(&mut self.spare)));
        }
        match self.pending.back_mut() {
            Some(Chunk::Owned(v)) => v,
            _ => unreachable!("an owned chunk was just ensured"),
        }
    }

    /// Queues one unmasked, unfragmented server frame (for tests; the engine calls
    /// [`push_frame_masked`](Self::push_frame_masked) with the connection's mask, if any).
    #[cfg(test)]
    pub fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.push_frame_masked(opcode, payload, None);
    }

    /// Queues one unfragmented frame, masked with `mask` if given (a client frame). The payload is
    /// masked while it is copied in, so it is still copied exactly once.
    pub fn push_frame_masked(&mut self, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, mask, payload.len() as u64);
        if payload.len() >= LARGE {
            self.tail().extend_from_slice(&header[..n]);
            let mut chunk = if self.spare_large.capacity() >= payload.len() {
                std::mem::take(&mut self.spare_large)
            } else {
                Vec::with_capacity(payload.len())
            };
            extend_masked(&mut chunk, payload, mask);
            self.pending.push_back(Chunk::Owned(chunk));
        } else {
            let tail = self.tail();
            tail.reserve(n + payload.len());
            tail.extend_from_slice(&header[..n]);
            extend_masked(tail, payload, mask);
        }
        self.buffered += n + payload.len();
    }

    /// Queues one unmasked, unfragmented server frame whose payload is not copied: a chunk lent
    /// from the receive buffer it arrived in, or a message the decoder assembled and gave up. The
    /// header goes to the small-frames chunk, the payload follows as its own chunk.
    pub fn push_frame_uncopied(&mut self, opcode: OpCode, payload: Chunk) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let len = payload.bytes().len();
        let n = encode_header(&mut header, true, 0, opcode, None, len as u64);
        self.tail().extend_from_slice(&header[..n]);
        self.pending.push_back(payload);
        self.buffered += n + len;
    }

    /// Queues a shared, already encoded frame by reference (no copy).
    pub fn push_shared(&mut self, frame: &Arc<[u8]>) {
        self.buffered += frame.len();
        self.pending.push_back(Chunk::Shared(Arc::clone(frame)));
    }

    /// Queues a shared frame and remembers it under `key`, so that [`replace_keyed`](Self::replace_keyed)
    /// can swap in a newer frame for the same key while this one waits.
    pub fn push_keyed(&mut self, key: ConflationKey, frame: &Arc<[u8]>) {
        self.push_shared(frame);
        let at = self.moved + self.pending.len() as u64 - 1;
        self.keyed.get_or_insert_default().insert(key, at);
    }

    /// Replaces the queued frame remembered under `key` with `frame`, if it is still waiting (not in
    /// the air, not partly sent). Returns whether it was replaced; if not, the caller queues `frame`.
    pub fn replace_keyed(&mut self, key: ConflationKey, frame: &Arc<[u8]>) -> bool {
        let Some(&at) = self.keyed.as_ref().and_then(|k| k.get(&key)) else {
            return false;
        };
        let Some(i) = at.checked_sub(self.moved).map(|i| i as usize) else {
            return false; // in the air or sent: it stays, the newer frame follows it
        };
        if i == 0 && self.offset > 0 {
            return false; // partly sent
        }
        let Some(Chunk::Shared(old)) = self.pending.get_mut(i) else {
            self.forget_keyed(key);
            return false;
        };
        self.buffered = self.buffered - old.len() + frame.len();
        *old = Arc::clone(frame);
        true
    }

    /// Forgets the frame remembered under `key`: a frame for that key is about to be queued behind
    /// it, so replacing the remembered one would put a newer value ahead of an older one.
    pub fn forget_keyed(&mut self, key: ConflationKey) {
        if let Some(keyed) = &mut self.keyed {
            keyed.remove(&key);
        }
    }

    /// Forgets every remembered frame (the queue emptied).
    fn clear_keyed(&mut self) {
        if let Some(keyed) = &mut self.keyed {
            keyed.clear();
        }
    }

    /// Appends raw bytes (an HTTP response, a compressed frame, TLS records) written by `write`.
    /// A chunk started for bytes that `write` did not write is not kept.
    pub fn push_raw(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let tail = self.tail();
        let before = tail.len();
        write(tail);
        let added = tail.len() - before;
        self.buffered += added;
        if added == 0
            && let Some(Chunk::Owned(v)) = self.pending.back_mut()
            && v.is_empty()
            && let Some(Chunk::Owned(v)) = self.pending.pop_back()
        {
            self.spare = v;
        }
    }

    /// Chunks waiting (for TLS: one chunk is encrypted from where it lies, several are gathered).
    pub fn chunk_count(&self) -> usize {
        self.pending.len()
    }

    /// Hands every waiting byte to `f`, chunk by chunk in order, and empties the queue. Only for a
    /// queue that never sends (a TLS connection's plaintext, which is encrypted into the wire
    /// queue): nothing may be in the air.
    pub fn drain_chunks(&mut self, mut f: impl FnMut(&[u8])) {
        debug_assert!(!self.flight.is_busy());
        for (i, c) in self.pending.iter().enumerate() {
            f(&c.bytes()[if i == 0 { self.offset } else { 0 }..]);
        }
        while let Some(c) = self.pending.pop_front() {
            if let Chunk::Owned(mut v) = c
                && v.len() < LARGE
                && v.capacity() > self.spare.capacity()
            {
                v.clear();
                self.spare = v;
            }
        }
        self.clear_keyed();
        self.moved = 0;
        self.offset = 0;
        self.buffered = 0;
    }

    /// Loads the next send into the queue's flight, if bytes are waiting and no send is in the
    /// air; the caller submits it ([`Submit::send`](crate::ring::Submit::send)) and reports its
    /// completion to [`landed`](Self::landed).
    pub fn next_send(&mut self) -> Option<&mut Flight> {
        if self.flight.is_busy() || self.pending.is_empty() {
            return None;
        }
        let n = self.flight.load(&mut self.pending, self.offset);
        if n == 0 {
            return None;
        }
        self.offset = 0;
        self.moved += n as u64;
        Some(&mut self.flight)
    }

    /// A completion of the send tagged `token`. At a send's result, sent chunks are recycled (or,
    /// for a zero-copy send, held by the flight until the kernel lets go of them), the rest go
    /// back to the front of the queue, and the bytes the send wrote are returned. `Ok(None)` for a
    /// zero-copy send's notification; `Err(Stale)` for a result of no send in the air.
    pub fn landed(&mut self, token: Token, cqe: SendCqe) -> Result<Option<usize>, SendError> {
        let landed = match self.flight.finish(token, cqe) {
            Finish::Landed(landed) => landed,
            Finish::Released => return Ok(None),
            Finish::Foreign => return Err(SendError::Stale),
        };
        let hold = landed.hold;
        let mut sent = match landed.result {
            Ok(n) => n,
            Err(errno) => {
                let sent: Vec<Chunk> = std::iter::from_fn(|| landed.chunks.pop()).collect();
                if hold {
                    self.flight.hold(sent.into_iter());
                }
                self.abandon();
                return Err(SendError::Failed(errno));
            }
        };
        let written = sent;
        let chunks = landed.chunks;
        self.buffered -= sent.min(self.buffered);
        // Bytes of each chunk already sent, from the start of the flight.
        let mut done = 0;
        let mut into_first = landed.offset;
        for chunk in chunks.iter() {
            let rest = chunk.bytes().len() - into_first;
            if sent < rest {
                into_first += sent;
                break;
            }
            sent -= rest;
            into_first = 0;
            done += 1;
        }
        let back = chunks.len() - done;
        // A zero-copy send's chunks stay as they are until the kernel lets go of them: what was
        // not sent is queued again as a copy (a shared frame as another reference), and nothing
        // is reused.
        let mut held = Vec::new();
        // What was not sent returns to the front, in order, ahead of what was queued meanwhile
        // (popped from the back: no drain to set up for the usual one or two chunks). A lent
        // payload that did not leave whole is copied: the peer is not keeping up, and a receive
        // buffer must not wait on it.
        for _ in 0..back {
            if let Some(chunk) = chunks.pop() {
                let again = match (hold, chunk.share()) {
                    (false, _) if !matches!(chunk, Chunk::Lent(_)) => chunk,
                    (true, Some(again)) => {
                        held.push(chunk);
                        again
                    }
                    _ => {
                        let copy = Chunk::Owned(chunk.bytes().to_vec());
                        if hold {
                            held.push(chunk);
                        }
                        copy
                    }
                };
                self.pending.push_front(again);
            }
        }
        if back > 0 {
            // Lent payloads queued behind the unsent ones would wait as long.
            for chunk in self.pending.iter_mut().skip(back) {
                if let Chunk::Lent(l) = chunk {
                    *chunk = Chunk::Owned(l.bytes().to_vec());
                }
            }
        }
        // What was sent: an owned buffer becomes the spare for the next frames of its kind.
        while let Some(chunk) = chunks.pop() {
            if hold {
                held.push(chunk);
            } else if let Chunk::Owned(mut v) = chunk {
                let spare = if v.len() < LARGE {
                    &mut self.spare
                } else {
                    &mut self.spare_large
                };
                if v.capacity() > spare.capacity() {
                    v.clear();
                    *spare = v;
                }
            }
        }
        if hold {
            self.flight.hold(held.into_iter());
        }
        self.moved -= back as u64;
        self.offset = if back > 0 { into_first } else { 0 };
        if self.pending.is_empty() {
            self.clear_keyed();
        }
        Ok(Some(written))
    }

    /// Drops everything waiting (not what is in the air): the connection is going away.
    fn abandon(&mut self) {
        self.pending.clear();
        self.clear_keyed();
        self.moved = 0;
        self.offset = 0;
        self.buffered = if self.flight.is_busy() {
            self.flight.len()
        } else {
            0
        };
    }

    /// Every unsent byte, in order (for tests).
    #[cfg(test)]
    pub fn unsent(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in self.pending.iter().enumerate() {
            out.extend_from_slice(&c.bytes()[if i == 0 { self.offset } else { 0 }..]);
        }
        out
    }

    /// Frees buffers above `max_capacity` bytes (after a large message), keeping small ones.
    fn trim(&mut self, max_capacity: usize) {
        if self.spare.capacity() > max_capacity {
            self.spare = Vec::new();
        }
        if self.spare_large.capacity() > max_capacity {
            self.spare_large = Vec::new();
        }
        // The chunk list and the conflation map keep a small allocation (the next message would
        // make it again); a large one, left by a burst, goes.
        if self.pending.capacity() > KEEP_CHUNKS {
            self.pending = VecDeque::new();
        }
        if self
            .keyed
            .as_ref()
            .is_some_and(|k| k.capacity() > KEEP_CHUNKS)
        {
            self.keyed = None;
        }
    }
}

/// Appends `src` to `dst`, XORed with `mask` if given. Masking goes chunk by chunk right behind the
/// copy, while the chunk is still in L1, so a large payload is not read from memory twice.
fn extend_masked(dst: &mut Vec<u8>, src: &[u8], mask: Option<[u8; 4]>) {
    const CHUNK: usize = 4096;
    let Some(key) = mask else {
        dst.extend_from_slice(src);
        return;
    };
    for (i, chunk) in src.chunks(CHUNK).enumerate() {
        let start = dst.len();
        dst.extend_from_slice(chunk);
        unmask(&mut dst[start..], key, i * CHUNK);
    }
}

/// A worker's free output queues, reused so sending does not allocate per message.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Boxed because slots hold boxes (8 bytes per idle slot); reusing the boxes saves the allocation.
    #[allow(clippy::vec_box)]
    free: Vec<Box<OutQueue>>,
    /// Queues kept at most; more are freed.
    max_free: usize,
    /// Spare buffer capacity kept at most per queue; larger buffers are freed.
    max_capacity: usize,
}

impl Pool {
    /// A pool keeping up to `max_free` queues with spare buffers of up to `max_capacity` bytes.
    pub fn new(max_free: usize, max_capacity: usize) -> Self {
        Self {
            free: Vec::new(),
            max_free,
            max_capacity,
        }
    }

    /// An empty queue, reused if one is free.
    pub fn take(&mut self) -> Box<OutQueue> {
        self.free.pop().unwrap_or_default()
    }

    /// Returns a queue that is no longer needed. A queue with a send in the air is never reused or
    /// freed: it is leaked, and the slip logged.
    pub fn give(&mut self, q: Box<OutQueue>) {
        let Some(mut q) = Self::idle(q) else {
            return;
        };
        if self.free.len() >= self.max_free {
            return;
        }
        q.abandon();
        q.trim(self.max_capacity);
        self.free.push(q);
    }

    /// [`give`](Self::give)s `q` back, or with `discard` frees it instead (a queue made for a
    /// handshake's answer, see [`Slab::out`](super::slot::Slab::out)); a queue with a send in the
    /// air is leaked either way, and the slip logged.
    pub fn give_or_discard(&mut self, q: Box<OutQueue>, discard: bool) {
        if discard {
            drop(Self::idle(q));
        } else {
            self.give(q);
        }
    }

    /// `q` if no send is in the air, else `None` (`q` leaked and the slip logged).
    fn idle(q: Box<OutQueue>) -> Option<Box<OutQueue>> {
        if q.in_flight() {
            error!("an output queue with a send in the air was released; leaking it");
            Box::leak(q);
            return None;
        }
        Some(q)
    }

    /// Queues currently free, for accounting in tests.
    #[cfg(test)]
    pub fn free_len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ring::Op;

    /// The token the test helpers send under (as `Flight::arm_for_test` does).
    const SEND: Token = Token {
        op: Op::Send,
        slot: 0,
        generation: 0,
    };

    /// Starts the next send as the worker would and returns the bytes it carries.
    fn send(q: &mut OutQueue) -> Vec<u8> {
        let f = q.next_send().expect("a send starts");
        assert_eq!(f.arm_for_test(0), Some(SEND));
        f.loaded()
    }

    /// Completes the send in the air with `n` bytes written.
    fn complete(q: &mut OutQueue, n: usize) {
        q.landed(SEND, SendCqe::Done(n as i32))
            .expect("the send lands");
    }

    #[test]
    fn a_queue_is_small() {
        // 272 B until the conflation map was boxed: a burst of handshakes has one queue per
        // answer in the air.
        let size = size_of::<OutQueue>();
        assert!(size <= 232, "an output queue grew to {size} bytes");
    }

    #[test]
    fn frames_are_encoded_unmasked() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"Hello");
        q.push_frame(OpCode::Binary, &[7; 256]);
        assert_eq!(q.buffered(), 7 + 4 + 256);
        let sent = send(&mut q);
        assert_eq!(&sent[..7], b"\x81\x05Hello");
        assert_eq!(&sent[7..11], b"\x82\x7e\x01\x00");
        assert!(sent[11..].iter().all(|&b| b == 7));
    }

    #[test]
    fn one_send_per_turn_and_nothing_while_in_flight() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"a");
        q.push_frame(OpCode::Text, b"b");
        assert_eq!(send(&mut q), b"\x81\x01a\x81\x01b");
        assert!(q.in_flight());
        assert!(q.next_send().is_none(), "one send in flight at a time");
        q.push_frame(OpCode::Text, b"c");
        assert_eq!(q.buffered(), 9);
        complete(&mut q, 6);
        assert_eq!(q.buffered(), 3);
        assert_eq!(send(&mut q), b"\x81\x01c");
        complete(&mut q, 3);
        assert!(q.is_empty());
        assert!(q.next_send().is_none());
    }

    #[test]
    fn partial_sends_continue_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, b"0123456789");
        assert_eq!(send(&mut q).len(), 12);
        complete(&mut q, 5);
        q.push_frame(OpCode::Text, b"z");
        // The rest of the first chunk goes first, then what was queued meanwhile, in one send.
        assert_eq!(send(&mut q), b"3456789\x81\x01z");
        complete(&mut q, 7);
        assert_eq!(send(&mut q), b"\x81\x01z");
        complete(&mut q, 0);
        assert_eq!(send(&mut q), b"\x81\x01z", "a zero-byte send retries");
        complete(&mut q, 3);
        assert!(q.is_empty());
    }

    #[test]
    fn a_lent_payload_is_sent_in_place_and_copied_only_if_it_did_not_leave() {
        let mut bufs = crate::ring::Buffers::new(0, 8, 1024, false, false).unwrap();
        let mut lending = bufs.lending();
        let buf = bufs.received_one(0, 300, false).unwrap();
        buf.fill(3);
        lending.set_window(Some((0, buf)));
        let mut q = OutQueue::default();
        q.push_frame_uncopied(
            OpCode::Binary,
            Chunk::Lent(lending.lend(&buf[..200]).unwrap()),
        );
        q.push_frame_uncopied(
            OpCode::Binary,
            Chunk::Lent(lending.lend(&buf[200..]).unwrap()),
        );
        assert!(matches!(q.pending[1], Chunk::Lent(_)));
        assert_eq!(q.buffered(), 4 + 200 + 2 + 100);
        let sent = send(&mut q);
        assert_eq!(
            &sent[..4],
            b"\x82\x7e\x00\xc8",
            "the header, then the payload in place"
        );
        assert!(sent[4..204].iter().all(|&b| b == 3));
        assert!(!bufs.done(0), "held while a send may read it");
        // The first payload left whole; the second frame's header did not, and its payload is
        // copied: a peer that is not keeping up does not hold the receive buffer.
        complete(&mut q, 204);
        assert!(!q.pending.iter().any(|c| matches!(c, Chunk::Lent(_))));
        bufs.refill();
        assert!(
            bufs.received_one(0, 10, false).is_some(),
            "no lease left (the first payload left, the second was copied): back in the ring"
        );
        let rest = send(&mut q);
        assert_eq!(rest.len(), 102);
        assert!(rest[2..].iter().all(|&b| b == 3));
        complete(&mut q, 102);
        assert!(q.is_empty());
    }

    /// A binary message of `len` bytes of 5 (16-bit length, at least 126) that a decoder
    /// assembled from two receives and gave up.
    pub(in crate::conn) fn taken(len: usize) -> Arc<ringws_protocol::MessageBuf> {
        use ringws_protocol::{Limits, Receiver, Role};
        let mut rx = Receiver::new(Role::Client);
        let mut frame = vec![0x82, 0x7e];
        frame.extend(u16::try_from(len).unwrap().to_be_bytes());
        frame.resize(4 + len, 5);
        let (first, second) = frame.split_at_mut(10);
        assert_eq!(rx.read(first, &Limits::default()).unwrap(), (10, None));
        assert!(rx.read(second, &Limits::default()).unwrap().1.is_some());
        Arc::new(rx.take_message().expect("an assembled message"))
    }

    #[test]
    fn a_taken_message_is_queued_by_reference_and_stays_so_after_a_partial_send() {
        let m = taken(20_000);
        let (mut a, mut b) = (OutQueue::default(), OutQueue::default());
        a.push_frame_uncopied(OpCode::Binary, Chunk::Message(Arc::clone(&m)));
        b.push_frame_uncopied(OpCode::Binary, Chunk::Message(Arc::clone(&m)));
        assert_eq!(Arc::strong_count(&m), 3, "one buffer for both queues");
        assert_eq!(a.buffered(), 4 + 20_000);
        let sent = send(&mut a);
        assert_eq!(
            &sent[..4],
            b"\x82\x7e\x4e\x20",
            "the header, then the payload"
        );
        assert_eq!(sent.len(), 20_004);
        assert!(sent[4..].iter().all(|&x| x == 5));
        complete(&mut a, 1_000);
        assert!(
            matches!(a.pending[0], Chunk::Message(_)),
            "what did not leave is queued again by reference, not copied"
        );
        assert_eq!(send(&mut a).len(), 19_004);
        complete(&mut a, 19_004);
        assert!(a.is_empty());
        assert_eq!(
            Arc::strong_count(&m),
            2,
            "released by the queue that sent it"
        );
        // A zero-copy send keeps the message until the kernel lets go of it.
        let f = b.next_send().expect("a send starts");
        assert_eq!(f.arm_for_test(1), Some(SEND));
        assert_eq!(
            b.landed(SEND, SendCqe::Sent(20_004)),
            Ok(Some(20_004)),
            "a zero-copy send lands at its result"
        );
        assert!(
            b.in_flight() && Arc::strong_count(&m) == 2,
            "held for the kernel"
        );
        assert_eq!(b.landed(SEND, SendCqe::Released { copied: true }), Ok(None));
        assert!(!b.in_flight());
        assert_eq!(Arc::strong_count(&m), 1, "released once the kernel let go");
    }

    #[test]
    fn frames_queued_while_in_flight_never_touch_the_flight() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, &[1; 100]);
        assert_eq!(send(&mut q).len(), 102);
        for _ in 0..100 {
            q.push_frame(OpCode::Binary, &[2; 1000]);
        }
        assert_eq!(q.pending.len(), 6, "new chunks, never the one in the air");
        complete(&mut q, 50);
        let next = send(&mut q);
        assert_eq!(next.len(), 52 + 100 * 1004);
        assert_eq!(&next[..52], &[1; 52][..]);
    }

    #[test]
    fn a_failed_send_empties_the_queue() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"a");
        send(&mut q);
        q.push_frame(OpCode::Text, b"b");
        assert_eq!(
            q.landed(SEND, SendCqe::Done(-libc::EPIPE)),
            Err(SendError::Failed(libc::EPIPE))
        );
        assert!(q.is_empty() && !q.in_flight());
    }

    #[test]
    fn a_zero_copy_send_goes_on_at_its_result_and_holds_memory_until_its_notification() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, &[7; 100]);
        let f = q.next_send().expect("a send starts");
        assert_eq!(f.arm_for_test(1), Some(SEND));
        let all = f.loaded();
        // Partly written: the rest is queued again (a copy) and goes in the next send at once.
        assert_eq!(q.landed(SEND, SendCqe::Sent(40)), Ok(Some(40)));
        assert!(
            q.in_flight(),
            "the kernel may still read the first 40 bytes"
        );
        assert_eq!(send(&mut q), all[40..]);
        complete(&mut q, all.len() - 40);
        assert!(q.is_empty() && q.in_flight(), "written, memory still held");
        assert_eq!(q.landed(SEND, SendCqe::Released { copied: true }), Ok(None));
        assert!(!q.in_flight());
    }

    #[test]
    fn a_stale_completion_changes_nothing() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"a");
        send(&mut q);
        let other = Token::new(Op::Send, 0, 1);
        assert_eq!(q.landed(other, SendCqe::Done(3)), Err(SendError::Stale));
        assert!(q.in_flight(), "still in the air");
        complete(&mut q, 3);
        assert!(q.is_empty());
    }

    #[test]
    fn at_most_max_iov_chunks_per_send() {
        let mut q = OutQueue::default();
        let f: Arc<[u8]> = Arc::from(&b"x"[..]);
        for _ in 0..MAX_IOV + 5 {
            q.push_shared(&f);
        }
        assert_eq!(send(&mut q).len(), MAX_IOV);
        complete(&mut q, MAX_IOV);
        assert_eq!(send(&mut q).len(), 5);
    }

    #[test]
    fn large_payloads_get_their_own_exact_chunk() {
        let mut q = OutQueue::default();
        let big = vec![9u8; LARGE * 4];
        q.push_frame(OpCode::Text, b"hi");
        q.push_frame(OpCode::Binary, &big);
        q.push_frame(OpCode::Text, b"yo");
        // [small frame + big header] [big payload] [small frame]
        assert_eq!(q.pending.len(), 3);
        let Chunk::Owned(own) = &q.pending[1] else {
            panic!("the large payload is an owned chunk");
        };
        assert_eq!(own.capacity(), big.len(), "allocated once, at its size");
        let sent = send(&mut q);
        assert_eq!(sent.len(), q.buffered());
        assert_eq!(&sent[..4], b"\x81\x02hi");
        assert_eq!(&sent[4..14], b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00");
        assert_eq!(&sent[sent.len() - 4..], b"\x81\x02yo");
        // A partial send that ends inside the big chunk.
        complete(&mut q, 20);
        assert_eq!(q.pending.len(), 2);
        assert_eq!(send(&mut q).len(), big.len() - 6 + 4);
        complete(&mut q, big.len() - 6 + 4);
        assert!(q.is_empty() && q.pending.is_empty());
    }

    #[test]
    fn client_frames_are_masked_as_they_are_copied() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut q = OutQueue::default();
        // RFC 6455 §5.7: a single-frame masked text message.
        q.push_frame_masked(OpCode::Text, b"Hello", Some(key));
        assert_eq!(
            send(&mut q),
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        );
        complete(&mut q, 11);
        // A large payload (own chunk, several mask chunks) unmasks back to the original.
        let big: Vec<u8> = (0..LARGE * 2 + 3).map(|i| (i * 7) as u8).collect();
        q.push_frame_masked(OpCode::Binary, &big, Some(key));
        let mut sent = send(&mut q);
        assert_eq!(&sent[..8], b"\x82\xfe\x80\x03\x37\xfa\x21\x3d");
        unmask(&mut sent[8..], key, 0);
        assert_eq!(&sent[8..], &big[..]);
    }

    #[test]
    fn the_spare_buffer_is_reused() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, &[b'a'; 100]);
        send(&mut q);
        complete(&mut q, 102);
        let cap = q.spare.capacity();
        assert!(cap >= 102);
        q.push_frame(OpCode::Text, b"x");
        let Chunk::Owned(own) = &q.pending[0] else {
            panic!("small frames go to an owned chunk");
        };
        assert_eq!(own.capacity(), cap, "no new allocation");
    }

    #[test]
    fn a_large_payloads_buffer_is_reused_for_the_next_one() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, &[1; LARGE * 2]);
        let sent = send(&mut q).len();
        complete(&mut q, sent);
        let cap = q.spare_large.capacity();
        assert!(cap >= LARGE * 2);
        q.push_frame(OpCode::Binary, &[2; LARGE]);
        let Chunk::Owned(own) = &q.pending[1] else {
            panic!("a large payload gets its own chunk");
        };
        assert_eq!(own.capacity(), cap, "the kept buffer, no new allocation");
        assert!(own.iter().all(|&b| b == 2) && own.len() == LARGE);
        q.push_frame(OpCode::Binary, &[3; LARGE * 3]);
        let Chunk::Owned(own) = &q.pending[3] else {
            panic!("a large payload gets its own chunk");
        };
        assert_eq!(
            own.capacity(),
            LARGE * 3,
            "too small to reuse: allocated at its size"
        );
    }

    #[test]
    fn pool_reuses_and_bounds_memory() {
        let mut pool = Pool::new(2, 1024);
        let mut a = pool.take();
        a.push_frame(OpCode::Binary, &[0; 100]);
        send(&mut a);
        complete(&mut a, 102);
        let mut big = pool.take();
        big.push_frame(OpCode::Binary, &[0; 4096]);
        send(&mut big);
        complete(&mut big, 4100);
        pool.give(a);
        pool.give(big);
        pool.give(Box::default());
        assert_eq!(pool.free_len(), 2, "keeps at most max_free");
        let q = pool.take();
        assert!(q.is_empty());
        assert_eq!(q.spare.capacity(), 0, "a big buffer is freed, not pooled");
        let q2 = pool.take();
        assert!(q2.spare.capacity() >= 102, "a small buffer is reused");
    }

    #[test]
    fn a_queue_in_the_air_is_never_pooled_or_freed() {
        let shared: Arc<[u8]> = Arc::from(&b"publication"[..]);
        let mut pool = Pool::new(4, 1024);
        let mut q = pool.take();
        q.push_shared(&shared);
        q.push_frame(OpCode::Text, b"x");
        send(&mut q);
        pool.give(q);
        assert_eq!(pool.free_len(), 0, "not pooled");
        assert_eq!(
            Arc::strong_count(&shared),
            2,
            "its memory is leaked, not freed"
        );
    }

    fn frame(bytes: &[u8]) -> Arc<[u8]> {
        Arc::from(bytes)
    }

    #[test]
    fn shared_frames_are_sent_by_reference_between_owned_ones() {
        let mut q = OutQueue::default();
        let f = frame(b"\x81\x03abc");
        q.push_frame(OpCode::Text, b"x");
        q.push_shared(&f);
        q.push_frame(OpCode::Text, b"y");
        assert_eq!(q.buffered(), 3 + 5 + 3);
        assert_eq!(Arc::strong_count(&f), 2, "queued by reference");
        assert_eq!(q.unsent(), b"\x81\x01x\x81\x03abc\x81\x01y");
        assert_eq!(send(&mut q), b"\x81\x01x\x81\x03abc\x81\x01y");
        complete(&mut q, 11);
        assert!(q.is_empty());
        assert_eq!(Arc::strong_count(&f), 1, "released once sent");
    }

    #[test]
    fn a_waiting_keyed_frame_is_replaced_in_place() {
        let mut q = OutQueue::default();
        q.push_keyed((1, 7), &frame(b"old-7"));
        q.push_keyed((1, 8), &frame(b"old-8"));
        assert!(q.replace_keyed((1, 7), &frame(b"newer-7")));
        assert!(
            !q.replace_keyed((2, 7), &frame(b"other topic")),
            "keys include the topic"
        );
        assert_eq!(q.unsent(), b"newer-7old-8", "same position, newest value");
        assert_eq!(q.buffered(), 12);
    }

    #[test]
    fn frames_in_flight_or_partly_sent_are_never_replaced() {
        let mut q = OutQueue::default();
        q.push_keyed((1, 1), &frame(b"aaaa"));
        send(&mut q);
        assert!(!q.replace_keyed((1, 1), &frame(b"bbbb")), "in flight");
        complete(&mut q, 2);
        assert!(!q.replace_keyed((1, 1), &frame(b"cccc")), "partly sent");
        q.push_keyed((1, 1), &frame(b"dddd"));
        assert!(
            q.replace_keyed((1, 1), &frame(b"eeee")),
            "the newer entry is replaceable"
        );
        assert_eq!(q.unsent(), b"aaeeee");
        send(&mut q);
        complete(&mut q, 6);
        assert!(
            q.is_empty() && q.keyed.as_ref().is_none_or(|k| k.is_empty()),
            "the map empties with the queue"
        );
        assert!(
            !q.replace_keyed((1, 1), &frame(b"ffff")),
            "sent frames are gone"
        );
    }

    #[test]
    fn positions_survive_sends() {
        let mut q = OutQueue::default();
        q.push_shared(&frame(b"11"));
        q.push_keyed((3, 3), &frame(b"22"));
        assert_eq!(send(&mut q), b"1122");
        complete(&mut q, 2); // the first chunk is gone; the keyed one returns to the front
        q.push_shared(&frame(b"33"));
        assert!(q.replace_keyed((3, 3), &frame(b"44")));
        assert_eq!(q.unsent(), b"4433");
    }
}
