//! Per-connection output queue, flushed with one send per connection per loop turn (corking).
//!
//! The queue is a list of byte segments. Small frames are appended to the last segment; a large
//! payload (at least [`LARGE`] bytes) gets a segment of its own, allocated at its exact size, so it is
//! copied exactly once and never moved again by a growing buffer. A flush hands every queued segment
//! to the kernel in one operation: a plain send for one segment, a `sendmsg` with an iovec per segment
//! otherwise. While that send is in flight its segments are frozen (nothing is appended to them, they
//! are neither moved nor freed); frames queued meanwhile go to new segments and leave with the next
//! send. A partial send resumes where it stopped.
//!
//! Queues are boxed and come from a per-worker [`Pool`]: a connection takes one when it first queues
//! bytes and gives it back once everything is sent, so an idle connection owns no send memory, and a
//! spare segment buffer kept in each queue means echo does not allocate per message.
//!
//! Pub/sub adds shared segments: a frame encoded once by a publish (`Arc<[u8]>`, header and payload)
//! is queued by reference in every subscriber's queue, so fan-out never copies the payload in user
//! space; the iovec path sends any mix of owned and shared segments in one operation. For slow
//! subscribers of conflating topics a small map (conflation key -> queued segment) lets a newer frame
//! replace a queued, not yet sent one in O(1); the map only holds entries queued while the subscriber
//! was behind and is emptied with the queue.

use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use ringws_protocol::mask::unmask;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Payloads of at least this many bytes get a segment of their own instead of being appended.
pub(crate) const LARGE: usize = 16 << 10;

/// Most segments handed to one send (well under the kernel's `UIO_MAXIOV` of 1024).
const MAX_IOV: usize = 64;

/// The largest plain send handed to the kernel (its length is 32 bits); the rest follows.
const MAX_SEND: usize = 1 << 30;

/// What [`OutQueue::start_send`] asks the worker to submit.
#[derive(Debug)]
pub(crate) enum SendOp {
    /// A plain send of `len` bytes at `ptr`.
    Single { ptr: *const u8, len: u32 },
    /// A `sendmsg` of the message header (and the iovecs it points to), all inside the queue.
    Vectored(*const libc::msghdr),
}

/// One run of queued bytes.
enum Seg {
    /// Frames encoded into the queue's own buffer: small frames appended together, or one large
    /// payload at its exact size.
    Owned(Vec<u8>),
    /// Exactly one frame, encoded once by a publish and shared with every subscriber's queue.
    Shared(Arc<[u8]>),
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(f) => f,
        }
    }
}

/// What identifies a conflatable message: (topic id, key computed at publish).
pub(crate) type ConflationKey = (u32, u64);

/// Bytes waiting to be sent on one connection.
pub(crate) struct OutQueue {
    segs: VecDeque<Seg>,
    /// Segments removed from the front so far: `segs[i]` has the absolute position `popped + i`.
    popped: u64,
    /// Conflation key -> absolute position of the shared segment queued for it while behind.
    keyed: HashMap<ConflationKey, u64>,
    /// Bytes of `segs[0]` already written.
    sent: usize,
    /// Segments (from the front) that the in-flight send covers; 0 when none is in flight.
    in_flight: usize,
    /// Unsent bytes over all segments.
    buffered: usize,
    /// The iovecs and message header of the in-flight `sendmsg`; rebuilt only when none is in flight.
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// An emptied segment buffer kept for the next small frames.
    spare: Vec<u8>,
}

impl Default for OutQueue {
    fn default() -> Self {
        Self {
            segs: VecDeque::new(),
            popped: 0,
            keyed: HashMap::new(),
            sent: 0,
            in_flight: 0,
            buffered: 0,
            iov: Vec::new(),
            // SAFETY: msghdr is plain data for which all-zero is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
            spare: Vec::new(),
        }
    }
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("segments", &self.segs.len())
            .field("buffered", &self.buffered)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl OutQueue {
    /// Bytes queued and not yet acknowledged by a send completion.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// Whether a send is in flight (the kernel may be reading the queue's memory).
    pub fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// The segment small bytes are appended to: the last one if it is not in flight and holds small
    /// frames, else a new one (reusing the spare buffer).
    fn tail(&mut self) -> &mut Vec<u8> {
        let appendable = self.segs.len() > self.in_flight
            && matches!(self.segs.back(), Some(Seg::Owned(s)) if s.len() < LARGE);
        if !appendable {
            self.segs
                .push_back(Seg::Owned(std::mem::take(&mut self.spare)));
        }
        match self.segs.back_mut() {
            Some(Seg::Owned(v)) => v,
            _ => unreachable!("an owned segment was just ensured"),
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
            let mut seg = Vec::with_capacity(payload.len());
            extend_masked(&mut seg, payload, mask);
            self.segs.push_back(Seg::Owned(seg));
        } else {
            let tail = self.tail();
            tail.reserve(n + payload.len());
            tail.extend_from_slice(&header[..n]);
            extend_masked(tail, payload, mask);
        }
        self.buffered += n + payload.len();
    }

    /// Queues a shared, already encoded frame by reference (no copy).
    pub fn push_shared(&mut self, frame: &Arc<[u8]>) {
        self.buffered += frame.len();
        self.segs.push_back(Seg::Shared(Arc::clone(frame)));
    }

    /// Queues a shared frame and remembers it under `key`, so that [`replace_keyed`](Self::replace_keyed)
    /// can swap in a newer frame for the same key while this one waits.
    pub fn push_keyed(&mut self, key: ConflationKey, frame: &Arc<[u8]>) {
        self.push_shared(frame);
        let at = self.popped + self.segs.len() as u64 - 1;
        self.keyed.insert(key, at);
    }

    /// Replaces the queued frame remembered under `key` with `frame`, if it is still waiting (not in
    /// flight, not partly sent). Returns whether it was replaced; if not, the caller queues `frame`.
    pub fn replace_keyed(&mut self, key: ConflationKey, frame: &Arc<[u8]>) -> bool {
        let Some(&at) = self.keyed.get(&key) else {
            return false;
        };
        let Some(i) = at.checked_sub(self.popped).map(|i| i as usize) else {
            self.keyed.remove(&key); // already sent
            return false;
        };
        if i < self.in_flight || (i == 0 && self.sent > 0) {
            return false; // being sent: it stays, the newer frame follows it
        }
        let Some(Seg::Shared(old)) = self.segs.get_mut(i) else {
            return false;
        };
        self.buffered = self.buffered - old.len() + frame.len();
        *old = Arc::clone(frame);
        true
    }

    /// Forgets the frame remembered under `key`: a frame for that key is about to be queued behind
    /// it, so replacing the remembered one would put a newer value ahead of an older one.
    pub fn forget_keyed(&mut self, key: ConflationKey) {
        if !self.keyed.is_empty() {
            self.keyed.remove(&key);
        }
    }

    /// Appends raw bytes (an HTTP response) written by `write`.
    pub fn push_raw(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let tail = self.tail();
        let before = tail.len();
        write(tail);
        self.buffered += tail.len() - before;
    }

    /// Starts the next send if none is in flight and bytes are queued.
    ///
    /// The memory the returned operation points to (segments, iovecs, message header) stays valid and
    /// unmodified until [`complete`](Self::complete) or [`abandon`](Self::abandon): while a send is in
    /// flight nothing appends to, moves or frees the covered segments or rebuilds the iovecs, and the
    /// owner keeps the boxed queue alive until then.
    pub fn start_send(&mut self) -> Option<SendOp> {
        if self.in_flight > 0 || self.buffered == 0 {
            return None;
        }
        let count = self.segs.len().min(MAX_IOV);
        if count == 1 {
            self.in_flight = 1;
            let rest = &self.segs[0].bytes()[self.sent..];
            let len = rest.len().min(MAX_SEND);
            return Some(SendOp::Single {
                ptr: rest.as_ptr(),
                len: len as u32,
            });
        }
        self.iov.clear();
        for (i, seg) in self.segs.iter().take(count).enumerate() {
            let bytes = &seg.bytes()[if i == 0 { self.sent } else { 0 }..];
            self.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        self.in_flight = self.iov.len();
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        Some(SendOp::Vectored(&self.msg))
    }

    /// Records a completed send of `n` bytes (possibly partial); the rest goes with the next send.
    pub fn complete(&mut self, n: usize) {
        debug_assert!(self.in_flight > 0);
        self.in_flight = 0;
        let mut left = n.min(self.buffered);
        self.buffered -= left;
        while left > 0 {
            let Some(front) = self.segs.front() else {
                break;
            };
            let rest = front.bytes().len() - self.sent;
            if left < rest {
                self.sent += left;
                break;
            }
            left -= rest;
            self.sent = 0;
            self.popped += 1;
            if let Some(Seg::Owned(done)) = self.segs.pop_front()
                && done.len() < LARGE
                && done.capacity() > self.spare.capacity()
            {
                self.spare = done;
                self.spare.clear();
            }
        }
        if self.segs.is_empty() {
            self.keyed.clear();
        }
    }

    /// Records a failed send: the connection is going away, nothing more will be sent.
    pub fn abandon(&mut self) {
        self.in_flight = 0;
        self.segs.clear();
        self.keyed.clear();
        self.popped = 0;
        self.sent = 0;
        self.buffered = 0;
    }

    /// Every unsent byte, in order (for tests).
    #[cfg(test)]
    pub fn unsent(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            out.extend_from_slice(&seg.bytes()[if i == 0 { self.sent } else { 0 }..]);
        }
        out
    }

    /// Frees buffers above `max_capacity` bytes (after a large message), keeping small ones.
    fn trim(&mut self, max_capacity: usize) {
        if self.spare.capacity() > max_capacity {
            self.spare = Vec::new();
        }
        self.iov = Vec::new();
        self.keyed = HashMap::new();
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

    /// Returns a queue that is no longer needed. It must not be in flight.
    pub fn give(&mut self, mut q: Box<OutQueue>) {
        debug_assert!(!q.in_flight());
        if self.free.len() >= self.max_free {
            return;
        }
        q.abandon();
        q.trim(self.max_capacity);
        self.free.push(q);
    }

    /// Queues currently free, for accounting in tests.
    #[cfg(test)]
    pub fn free_len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes an operation would send, copied out.
    fn bytes_of(op: &SendOp) -> Vec<u8> {
        match *op {
            // SAFETY (test): the queue guarantees the range is valid while the send is in flight.
            SendOp::Single { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr, len as usize).to_vec()
            },
            SendOp::Vectored(msg) => unsafe {
                let msg = &*msg;
                std::slice::from_raw_parts(msg.msg_iov, msg.msg_iovlen)
                    .iter()
                    .flat_map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
                    .copied()
                    .collect()
            },
        }
    }

    fn send(q: &mut OutQueue) -> Vec<u8> {
        bytes_of(&q.start_send().expect("a send starts"))
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
        assert!(matches!(
            q.start_send(),
            Some(SendOp::Single { len: 6, .. })
        ));
        assert!(q.in_flight());
        assert!(q.start_send().is_none(), "one send in flight at a time");
        q.push_frame(OpCode::Text, b"c");
        assert_eq!(q.buffered(), 9);
        q.complete(6);
        assert_eq!(q.buffered(), 3);
        assert_eq!(send(&mut q), b"\x81\x01c");
        q.complete(3);
        assert!(q.is_empty());
        assert!(q.start_send().is_none());
    }

    #[test]
    fn partial_sends_continue_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, b"0123456789");
        assert_eq!(send(&mut q).len(), 12);
        q.complete(5);
        q.push_frame(OpCode::Text, b"z");
        // The rest of the first segment goes first, then what was queued meanwhile, in one send.
        assert_eq!(send(&mut q), b"3456789\x81\x01z");
        q.complete(7);
        assert_eq!(send(&mut q), b"\x81\x01z");
        q.complete(0);
        assert_eq!(send(&mut q), b"\x81\x01z", "a zero-byte send retries");
        q.complete(3);
        assert!(q.is_empty());
    }

    #[test]
    fn in_flight_bytes_are_never_moved() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, &[1; 100]);
        let Some(SendOp::Single { ptr, .. }) = q.start_send() else {
            panic!("single send expected");
        };
        for _ in 0..100 {
            q.push_frame(OpCode::Binary, &[2; 1000]); // a new segment, never the in-flight one
        }
        q.complete(50);
        let Some(SendOp::Vectored(msg)) = q.start_send() else {
            panic!("vectored send expected");
        };
        // SAFETY (test): the message header and its iovecs live in the queue.
        let first = unsafe { *(*msg).msg_iov };
        assert_eq!(first.iov_base as *const u8, ptr.wrapping_add(50));
        assert_eq!(first.iov_len, 52);
    }

    #[test]
    fn large_payloads_get_their_own_exact_segment() {
        let mut q = OutQueue::default();
        let big = vec![9u8; LARGE * 4];
        q.push_frame(OpCode::Text, b"hi");
        q.push_frame(OpCode::Binary, &big);
        q.push_frame(OpCode::Text, b"yo");
        // [small frame + big header] [big payload] [small frame]
        assert_eq!(q.segs.len(), 3);
        let Seg::Owned(own) = &q.segs[1] else {
            panic!("the large payload is an owned segment");
        };
        assert_eq!(own.capacity(), big.len(), "allocated once, at its size");
        let sent = send(&mut q);
        assert_eq!(sent.len(), q.buffered());
        assert_eq!(&sent[..4], b"\x81\x02hi");
        assert_eq!(&sent[4..14], b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00");
        assert_eq!(&sent[sent.len() - 4..], b"\x81\x02yo");
        // A partial send that ends inside the big segment.
        q.complete(20);
        assert_eq!(q.segs.len(), 2);
        assert_eq!(send(&mut q).len(), big.len() - 6 + 4);
        q.complete(big.len() - 6 + 4);
        assert!(q.is_empty() && q.segs.is_empty());
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
        q.complete(11);
        // A large payload (own segment, several mask chunks) unmasks back to the original.
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
        let _ = q.start_send();
        q.complete(102);
        let cap = q.spare.capacity();
        assert!(cap >= 102);
        q.push_frame(OpCode::Text, b"x");
        let Seg::Owned(own) = &q.segs[0] else {
            panic!("small frames go to an owned segment");
        };
        assert_eq!(own.capacity(), cap, "no new allocation");
    }

    #[test]
    fn pool_reuses_and_bounds_memory() {
        let mut pool = Pool::new(2, 1024);
        let mut a = pool.take();
        a.push_frame(OpCode::Binary, &[0; 100]);
        let _ = a.start_send();
        a.complete(102);
        let mut big = pool.take();
        big.push_frame(OpCode::Binary, &[0; 4096]);
        let _ = big.start_send();
        big.complete(4100);
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
        let Some(SendOp::Vectored(msg)) = q.start_send() else {
            panic!("vectored send expected");
        };
        // SAFETY (test): the message header and its iovecs live in the queue.
        let second = unsafe { *(*msg).msg_iov.add(1) };
        assert_eq!(
            second.iov_base as *const u8,
            f.as_ptr(),
            "the iovec points at the shared frame"
        );
        assert_eq!(q.unsent(), b"\x81\x01x\x81\x03abc\x81\x01y");
        q.complete(11);
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
        let _ = q.start_send();
        assert!(!q.replace_keyed((1, 1), &frame(b"bbbb")), "in flight");
        q.complete(2);
        assert!(!q.replace_keyed((1, 1), &frame(b"cccc")), "partly sent");
        q.push_keyed((1, 1), &frame(b"dddd"));
        assert!(
            q.replace_keyed((1, 1), &frame(b"eeee")),
            "the newer entry is replaceable"
        );
        assert_eq!(q.unsent(), b"aaeeee");
        let _ = q.start_send();
        q.complete(6);
        assert!(
            q.is_empty() && q.keyed.is_empty(),
            "the map empties with the queue"
        );
        assert!(
            !q.replace_keyed((1, 1), &frame(b"ffff")),
            "sent frames are gone"
        );
    }

    #[test]
    fn positions_survive_pops() {
        let mut q = OutQueue::default();
        q.push_shared(&frame(b"11"));
        q.push_keyed((3, 3), &frame(b"22"));
        let Some(SendOp::Vectored(_)) = q.start_send() else {
            panic!("vectored send expected");
        };
        q.complete(2); // the first segment is gone; the keyed one moved to the front
        q.push_shared(&frame(b"33"));
        assert!(q.replace_keyed((3, 3), &frame(b"44")));
        assert_eq!(q.unsent(), b"4433");
    }
}
