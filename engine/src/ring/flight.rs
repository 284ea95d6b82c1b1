//! The memory a send reads, owned while the kernel may read it.
//!
//! A send hands the kernel pointers: into the queued bytes (the iovecs), and to the iovec array and
//! message header themselves. Freeing or changing any of it before the send completes would send
//! freed or foreign memory to a peer. So the bytes a send covers are *moved* into a [`Flight`]
//! before [`Submit::send`](super::Submit::send) submits it, and they come back out only through
//! [`Flight::finish`] with the completion's own token: while a flight is in the air nothing can
//! reach its chunks, and a flight dropped while in the air (a worker exiting with sends in flight,
//! or a logic slip) leaks its memory and logs it instead of freeing it. The invariant holds in
//! release builds; it does not rest on a `debug_assert!`.

use super::SendCqe;
use super::buffers::Lent;
use super::token::Token;
use ringws_protocol::MessageBuf;
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::error;

/// Most chunks handed to one send (well under the kernel's `UIO_MAXIOV` of 1024).
pub(crate) const MAX_IOV: usize = 64;

/// The largest plain send handed to the kernel (its length is 32 bits); the rest follows.
const MAX_SEND: usize = 1 << 30;

/// One run of bytes to send.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Bytes of this connection's own: frames appended together, or one large payload.
    Owned(Vec<u8>),
    /// One frame shared with other connections' queues (a publication, encoded once).
    Shared(Arc<[u8]>),
    /// A payload sent from the receive buffer it arrived in (an echo or a forward: no copy).
    Lent(Lent),
    /// A payload that was assembled across receives, sent from the assembly buffer the decoder
    /// gave up (an echo or a forward of a large message: no copy), shared by every queue it went to.
    Message(Arc<MessageBuf>),
}

impl Chunk {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(f) => f,
            Self::Lent(l) => l.bytes(),
            Self::Message(m) => m.bytes(),
        }
    }

    /// Another reference to the same bytes, for the chunks held by reference (a shared frame, a
    /// taken message); `None` for owned and lent ones.
    pub fn share(&self) -> Option<Chunk> {
        match self {
            Self::Shared(f) => Some(Self::Shared(Arc::clone(f))),
            Self::Message(m) => Some(Self::Message(Arc::clone(m))),
            Self::Owned(_) | Self::Lent(_) => None,
        }
    }
}

/// The chunks of a flight, in order: the first one inline (most sends carry one, and moving it
/// then touches no other allocation), the rest in a vector.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    first: Option<Chunk>,
    rest: Vec<Chunk>,
}

impl Chunks {
    /// How many.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// In order.
    pub fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.first.iter().chain(self.rest.iter())
    }

    fn push(&mut self, chunk: Chunk) {
        match self.first {
            None => self.first = Some(chunk),
            Some(_) => self.rest.push(chunk),
        }
    }

    /// Takes the last one.
    pub fn pop(&mut self) -> Option<Chunk> {
        self.rest.pop().or_else(|| self.first.take())
    }
}

/// What a completed flight gives back: the chunks it carried, the offset into the first one at
/// which it started, and how many bytes the kernel wrote (`Err(errno)` if the send failed).
pub(crate) struct Landed<'a> {
    /// The chunks, in order; the owner takes them back.
    pub chunks: &'a mut Chunks,
    /// Bytes of `chunks[0]` that had been sent before this flight.
    pub offset: usize,
    /// Bytes written, or the send's error number.
    pub result: Result<usize, i32>,
    /// A zero-copy send whose notification is due: every chunk goes to [`Flight::hold`], none is
    /// reused or dropped, and bytes not sent are queued again as copies.
    pub hold: bool,
}

/// What [`Flight::finish`] made of a completion.
pub(crate) enum Finish<'a> {
    /// The send in the air landed.
    Landed(Landed<'a>),
    /// A zero-copy send's notification: nothing lands.
    Released,
    /// The completion belongs to no send in the air (logged); nothing changed.
    Foreign,
}

/// The chunks of one send, and the iovecs and message header the kernel reads.
pub(crate) struct Flight {
    chunks: Chunks,
    offset: usize,
    iov: Vec<libc::iovec>,
    /// The message header and the zero-copy sends' held memory, boxed.
    pinned: Box<Pinned>,
    /// The token of the send in the air, if one is.
    busy: Option<Token>,
}

/// What stays put when a flight moves: the message header, which the kernel may read after
/// submission, and, in the same allocation (a queue is no larger for it), the memory of
/// zero-copy sends the kernel may still read.
struct Pinned {
    msg: libc::msghdr,
    held: Held,
}

impl Pinned {
    fn new() -> Box<Self> {
        // SAFETY: msghdr is plain data (integers and null pointers) for which all-zero is the
        // empty value.
        let msg = unsafe { std::mem::zeroed() };
        Box::new(Self {
            msg,
            held: Held::default(),
        })
    }
}

/// Most zero-copy sends of one connection whose memory is held at a time: beyond it sends copy
/// until every notification came. A notification waits for the peer's acknowledgement of the
/// bytes (the kernel keeps them for retransmission), so this is how many sends go out zero-copy
/// per round trip.
pub(crate) const MAX_ZERO_COPY_HELD: u8 = 8;

/// The memory of a connection's zero-copy sends: a zero-copy send completes twice, with its
/// result (the queue goes on from there) and with a notification once the kernel no longer reads
/// its memory. The chunks of sends whose result came wait here until no notification is due, and
/// only then are dropped (notifications are not matched to sends: all are counted, and the memory
/// goes when none is outstanding, whatever their order).
#[derive(Debug, Default)]
struct Held {
    /// Notifications still to come, one per zero-copy send armed.
    due: u8,
    /// Zero-copy sends armed since the held chunks were last dropped.
    sends: u8,
    /// Whether the send in the air is zero-copy.
    in_air: bool,
    /// Chunks of zero-copy sends whose result came.
    chunks: Vec<Chunk>,
}

/// What [`Flight::arm`] tells the ring to submit.
pub(super) enum Armed {
    /// A plain send of `len` bytes at `ptr`.
    Single { ptr: *const u8, len: u32 },
    /// A `sendmsg` of the flight's message header.
    Vectored(*const libc::msghdr),
}

impl Default for Flight {
    fn default() -> Self {
        Self {
            chunks: Chunks::default(),
            offset: 0,
            iov: Vec::new(),
            pinned: Pinned::new(),
            busy: None,
        }
    }
}

impl Flight {
    /// Whether a send is in the air (the kernel may be reading this flight's memory).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Loads up to [`MAX_IOV`] chunks from the front of `from` (the first one already sent up to
    /// `offset` bytes). Returns how many were moved; 0 (and nothing moved) if a send is in the air.
    pub fn load(&mut self, from: &mut VecDeque<Chunk>, offset: usize) -> usize {
        if self.busy.is_some() || !self.chunks.is_empty() {
            return 0;
        }
        let n = from.len().min(MAX_IOV);
        // One chunk at a time: cheaper than a drain for the one or two chunks of a typical send.
        for chunk in std::iter::from_fn(|| from.pop_front()).take(n) {
            self.chunks.push(chunk);
        }
        self.offset = if n > 0 { offset } else { 0 };
        n
    }

    /// Bytes loaded and not yet sent.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.bytes().len()).sum::<usize>() - self.offset
    }

    /// Marks the flight in the air under `token` and describes what to submit, and whether as a
    /// zero-copy send (it carries at least `zero_copy_from` bytes, `zero_copy_from` is not zero,
    /// and fewer than [`MAX_ZERO_COPY_HELD`] zero-copy sends hold memory); `None` if it is already
    /// in the air or carries nothing.
    pub(super) fn arm(&mut self, token: Token, zero_copy_from: usize) -> Option<(Armed, bool)> {
        if self.busy.is_some() || self.chunks.is_empty() {
            return None;
        }
        let zero_copy = zero_copy_from > 0
            && self.len() >= zero_copy_from
            && self.pinned.held.sends < MAX_ZERO_COPY_HELD;
        if zero_copy {
            let held = &mut self.pinned.held;
            held.in_air = true;
            held.due += 1;
            held.sends += 1;
        }
        let single = self.chunks.rest.is_empty();
        let armed = if let (Some(first), true) = (&self.chunks.first, single) {
            let rest = &first.bytes()[self.offset..];
            Armed::Single {
                ptr: rest.as_ptr(),
                len: rest.len().min(MAX_SEND) as u32,
            }
        } else {
            self.iov.clear();
            for (i, chunk) in self.chunks.iter().enumerate() {
                let bytes = &chunk.bytes()[if i == 0 { self.offset } else { 0 }..];
                self.iov.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
            }
            self.pinned.msg.msg_iov = self.iov.as_mut_ptr();
            self.pinned.msg.msg_iovlen = self.iov.len();
            Armed::Vectored(&self.pinned.msg)
        };
        self.busy = Some(token);
        Some((armed, zero_copy))
    }

    /// Undoes [`arm`](Self::arm) for a send that was never submitted.
    pub(super) fn disarm(&mut self, token: Token) {
        if self.busy == Some(token) {
            self.busy = None;
            let held = &mut self.pinned.held;
            if held.in_air {
                held.in_air = false;
                held.due -= 1;
                held.sends -= 1;
            }
        }
    }

    /// Whether the kernel may still read memory of this flight's: a send is in the air, or a
    /// zero-copy send's notification is due.
    pub fn holds_kernel_memory(&self) -> bool {
        self.busy.is_some() || self.pinned.held.due > 0
    }

    /// Takes a completion of a send with `token`: a send's result lands it (its chunks come
    /// back), a zero-copy send's notification releases what sends held once none is due. A
    /// result with no send with that token in the air is foreign: the flight stays in the air
    /// (its memory leaked when dropped), since a completion that does not belong here must never
    /// release memory the kernel may still read.
    pub fn finish(&mut self, token: Token, cqe: SendCqe) -> Finish<'_> {
        let result = match cqe {
            SendCqe::Released { .. } => {
                let held = &mut self.pinned.held;
                if held.due == 0 {
                    error!(?token, "a zero-copy notification none was due for");
                } else {
                    held.due -= 1;
                    if held.due == 0 {
                        held.chunks.clear();
                        held.sends = u8::from(held.in_air);
                    }
                }
                return Finish::Released;
            }
            SendCqe::Done(result) | SendCqe::Sent(result) => result,
        };
        if self.busy != Some(token) {
            error!(
                ?token,
                busy = ?self.busy,
                "send completion for a send not in the air; keeping its memory"
            );
            return Finish::Foreign;
        }
        self.busy = None;
        let mut hold = false;
        let held = &mut self.pinned.held;
        if held.in_air {
            held.in_air = false;
            match cqe {
                // The notification follows: the chunks wait for it (and any other due).
                SendCqe::Sent(_) => hold = true,
                // A zero-copy send that ended without one (refused before it started).
                _ => {
                    held.due -= 1;
                    held.sends -= 1;
                }
            }
        }
        let offset = std::mem::take(&mut self.offset);
        Finish::Landed(Landed {
            chunks: &mut self.chunks,
            offset,
            result: if result < 0 {
                Err(-result)
            } else {
                Ok(result as usize)
            },
            hold,
        })
    }

    /// Keeps `chunks` of a landed zero-copy send until no notification is due (drops them now if
    /// none is).
    pub fn hold(&mut self, chunks: impl Iterator<Item = Chunk>) {
        let held = &mut self.pinned.held;
        if held.due > 0 {
            held.chunks.extend(chunks);
        } else {
            chunks.for_each(drop);
        }
    }

    /// The chunks loaded (for tests: what a send would carry).
    #[cfg(test)]
    pub fn loaded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            out.extend_from_slice(&c.bytes()[if i == 0 { self.offset } else { 0 }..]);
        }
        out
    }

    /// Arms the flight as a send would, for tests of the owner's bookkeeping; returns the token.
    #[cfg(test)]
    pub fn arm_for_test(&mut self, zero_copy_from: usize) -> Option<Token> {
        let token = Token::new(super::Op::Send, 0, 0);
        self.arm(token, zero_copy_from).map(|_| token)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.holds_kernel_memory() {
            error!(
                token = ?self.busy,
                "a send's memory is dropped while the kernel may read it; leaking it"
            );
            std::mem::forget(std::mem::take(&mut self.chunks));
            std::mem::forget(std::mem::take(&mut self.iov));
            std::mem::forget(std::mem::replace(&mut self.pinned, Pinned::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Op;

    fn owned(b: &[u8]) -> Chunk {
        Chunk::Owned(b.to_vec())
    }

    fn landed(finish: Finish<'_>) -> Landed<'_> {
        match finish {
            Finish::Landed(l) => l,
            _ => panic!("expected the send to land"),
        }
    }

    #[test]
    fn a_single_chunk_is_a_plain_send_from_the_offset() {
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [owned(b"hello")].into();
        assert_eq!(f.load(&mut q, 2), 1);
        assert_eq!(f.len(), 3);
        let t = Token::new(Op::Send, 1, 1);
        match f.arm(t, 0) {
            // SAFETY (test): the flight owns the chunk and is in the air, so the range is valid.
            Some((Armed::Single { ptr, len }, false)) => unsafe {
                assert_eq!(std::slice::from_raw_parts(ptr, len as usize), b"llo");
            },
            _ => panic!("expected a single send"),
        }
        assert!(f.is_busy());
        let mut more: VecDeque<Chunk> = [owned(b"x")].into();
        assert_eq!(f.load(&mut more, 0), 0, "nothing loads while in the air");
        assert!(f.arm(t, 0).is_none(), "armed once");
        let landed = landed(f.finish(t, SendCqe::Done(3)));
        assert_eq!((landed.offset, landed.result), (2, Ok(3)));
        assert_eq!(landed.chunks.len(), 1);
    }

    #[test]
    fn several_chunks_are_one_vectored_send() {
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = (0..MAX_IOV + 3).map(|i| owned(&[i as u8])).collect();
        assert_eq!(f.load(&mut q, 0), MAX_IOV);
        assert_eq!(q.len(), 3);
        let t = Token::new(Op::Send, 0, 7);
        let Some((Armed::Vectored(msg), false)) = f.arm(t, 0) else {
            panic!("expected a vectored send");
        };
        // SAFETY (test): the header and the iovecs live in the flight while it is in the air.
        let iovlen = unsafe { (*msg).msg_iovlen };
        assert_eq!(iovlen, MAX_IOV);
        assert_eq!(
            landed(f.finish(t, SendCqe::Done(-libc::EPIPE))).result,
            Err(libc::EPIPE)
        );
    }

    #[test]
    fn a_foreign_completion_never_lands_the_flight() {
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [owned(b"abc")].into();
        f.load(&mut q, 0);
        let t = Token::new(Op::Send, 3, 1);
        f.arm(t, 0).unwrap();
        assert!(
            matches!(
                f.finish(Token::new(Op::Send, 3, 2), SendCqe::Done(3)),
                Finish::Foreign
            ),
            "stale generation"
        );
        assert!(f.is_busy(), "still in the air");
        landed(f.finish(t, SendCqe::Done(3)));
        assert!(
            matches!(f.finish(t, SendCqe::Done(3)), Finish::Foreign),
            "landed once"
        );
    }

    /// A flight loaded with one shared frame (its references count what holds it).
    fn loaded_with(f: &mut Flight, frame: &Arc<[u8]>) {
        let mut q: VecDeque<Chunk> = [Chunk::Shared(Arc::clone(frame))].into();
        assert_eq!(f.load(&mut q, 0), 1);
    }

    /// Lands the one-chunk send in the air with `cqe` and does with its chunk what the queue
    /// does: holds it if the landing says so (else drops it). Returns whether it was held.
    fn land_one(f: &mut Flight, t: Token, cqe: SendCqe) -> bool {
        let l = landed(f.finish(t, cqe));
        let hold = l.hold;
        let c = l.chunks.pop().expect("one chunk");
        if hold {
            f.hold(std::iter::once(c));
        }
        hold
    }

    #[test]
    fn a_zero_copy_sends_memory_is_held_until_no_notification_is_due() {
        let t = Token::new(Op::Send, 2, 1);
        let released = SendCqe::Released { copied: true };
        let frame: Arc<[u8]> = Arc::from(&b"abcd"[..]);
        let mut f = Flight::default();
        // Below the threshold: a plain send.
        loaded_with(&mut f, &frame);
        assert!(matches!(f.arm(t, 5), Some((_, false))));
        let l = landed(f.finish(t, SendCqe::Done(4)));
        assert!(!l.hold);
        while l.chunks.pop().is_some() {}
        // At it: zero-copy; the result lands the send (the queue goes on) and the chunk is held.
        for sent in 1..=2 {
            loaded_with(&mut f, &frame);
            assert!(matches!(f.arm(t, 4), Some((_, true))));
            let l = landed(f.finish(t, SendCqe::Sent(4)));
            assert_eq!((l.result, l.hold), (Ok(4), true));
            let mut chunks = Vec::new();
            while let Some(c) = l.chunks.pop() {
                chunks.push(c);
            }
            f.hold(chunks.into_iter());
            assert!(!f.is_busy(), "the next send need not wait");
            assert!(f.holds_kernel_memory());
            assert_eq!(Arc::strong_count(&frame), 1 + sent, "held, not dropped");
        }
        // One notification of two: everything stays held (notifications are not matched).
        assert!(matches!(f.finish(t, released), Finish::Released));
        assert_eq!(Arc::strong_count(&frame), 3);
        assert!(f.holds_kernel_memory());
        assert!(matches!(f.finish(t, released), Finish::Released));
        assert_eq!(Arc::strong_count(&frame), 1, "dropped once none is due");
        assert!(!f.holds_kernel_memory());
        // A notification that comes before its send's result: the chunks go at the result.
        loaded_with(&mut f, &frame);
        assert!(matches!(f.arm(t, 1), Some((_, true))));
        assert!(matches!(f.finish(t, released), Finish::Released));
        assert!(f.is_busy(), "still in the air until its result");
        assert!(land_one(&mut f, t, SendCqe::Sent(4)));
        assert_eq!(Arc::strong_count(&frame), 1);
        assert!(!f.holds_kernel_memory());
    }

    #[test]
    fn zero_copy_holds_at_most_its_bound_of_sends() {
        let t = Token::new(Op::Send, 2, 1);
        let frame: Arc<[u8]> = Arc::from(&b"abcd"[..]);
        let mut f = Flight::default();
        let mut zero_copy = 0;
        for _ in 0..2 * MAX_ZERO_COPY_HELD {
            loaded_with(&mut f, &frame);
            let (_, zc) = f.arm(t, 1).unwrap();
            zero_copy += u8::from(zc);
            let cqe = if zc {
                SendCqe::Sent(4)
            } else {
                SendCqe::Done(4)
            };
            assert_eq!(land_one(&mut f, t, cqe), zc);
        }
        assert_eq!(zero_copy, MAX_ZERO_COPY_HELD, "then copies until released");
        assert_eq!(
            Arc::strong_count(&frame),
            1 + usize::from(MAX_ZERO_COPY_HELD)
        );
        for _ in 0..MAX_ZERO_COPY_HELD {
            f.finish(t, SendCqe::Released { copied: false });
        }
        assert_eq!(Arc::strong_count(&frame), 1);
        loaded_with(&mut f, &frame);
        assert!(matches!(f.arm(t, 1), Some((_, true))), "zero-copy again");
    }

    #[test]
    fn a_zero_copy_send_refused_without_a_notification_holds_nothing() {
        let t = Token::new(Op::Send, 2, 1);
        let frame: Arc<[u8]> = Arc::from(&b"abcd"[..]);
        let mut f = Flight::default();
        loaded_with(&mut f, &frame);
        assert!(matches!(f.arm(t, 1), Some((_, true))));
        let l = landed(f.finish(t, SendCqe::Done(-libc::EINVAL)));
        assert_eq!((l.result, l.hold), (Err(libc::EINVAL), false));
        while l.chunks.pop().is_some() {}
        assert!(!f.holds_kernel_memory());
    }

    #[test]
    fn dropping_a_flight_holding_zero_copy_memory_leaks_it() {
        let t = Token::new(Op::Send, 2, 1);
        let frame: Arc<[u8]> = Arc::from(&b"abcd"[..]);
        let mut f = Flight::default();
        loaded_with(&mut f, &frame);
        f.arm(t, 1).unwrap();
        assert!(land_one(&mut f, t, SendCqe::Sent(4)));
        drop(f);
        assert_eq!(Arc::strong_count(&frame), 2, "leaked, not dropped");
    }

    #[test]
    fn dropping_a_flight_in_the_air_leaks_instead_of_freeing() {
        let shared: Arc<[u8]> = Arc::from(&b"frame"[..]);
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [Chunk::Shared(Arc::clone(&shared)), owned(b"x")].into();
        f.load(&mut q, 0);
        f.arm(Token::new(Op::Send, 0, 0), 0).unwrap();
        drop(f);
        assert_eq!(
            Arc::strong_count(&shared),
            2,
            "the flight's reference was leaked, not dropped"
        );
    }
}
