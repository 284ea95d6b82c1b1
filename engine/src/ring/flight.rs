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
}

impl Chunk {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(f) => f,
            Self::Lent(l) => l.bytes(),
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
}

/// The chunks of one send, and the iovecs and message header the kernel reads.
pub(crate) struct Flight {
    chunks: Chunks,
    offset: usize,
    iov: Vec<libc::iovec>,
    /// Boxed, so it stays put when the flight moves (the kernel may read it after submission).
    msg: Box<libc::msghdr>,
    /// The token of the send in the air, if one is.
    busy: Option<Token>,
    /// What the zero-copy send in the air has reported so far (it lands once it reported both its
    /// result and its notification).
    zero_copy: ZeroCopy,
}

/// What a zero-copy send in the air has reported, in four bytes (they fit in the flight's padding):
/// nothing yet, its result (bytes written, or a negative errno), or its notification alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ZeroCopy(i32);

impl ZeroCopy {
    const NOTHING: Self = Self(i32::MIN);
    const RELEASED: Self = Self(i32::MIN + 1);

    /// A result as stored: errno values end at 4095, so no result is mistaken for a sentinel.
    fn result(result: i32) -> Self {
        Self(result.max(-4095))
    }
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
            msg: Box::new(empty_msghdr()),
            busy: None,
            zero_copy: ZeroCopy::NOTHING,
        }
    }
}

/// An empty message header.
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data (integers and null pointers) for which all-zero is the empty value.
    unsafe { std::mem::zeroed() }
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

    /// Marks the flight in the air under `token` and describes what to submit; `None` if it is
    /// already in the air or carries nothing.
    pub(super) fn arm(&mut self, token: Token) -> Option<Armed> {
        if self.busy.is_some() || self.chunks.is_empty() {
            return None;
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
            self.msg.msg_iov = self.iov.as_mut_ptr();
            self.msg.msg_iovlen = self.iov.len();
            Armed::Vectored(&*self.msg)
        };
        self.busy = Some(token);
        Some(armed)
    }

    /// Undoes [`arm`](Self::arm) for a send that was never submitted.
    pub(super) fn disarm(&mut self, token: Token) {
        if self.busy == Some(token) {
            self.busy = None;
            self.zero_copy = ZeroCopy::NOTHING;
        }
    }

    /// Takes a completion of the send with `token`, and lands it (handing the chunks back) once
    /// the kernel is done with its memory: at a plain send's completion, or when a zero-copy send
    /// has reported both its result and its notification (`None` before that). `None`, with the
    /// flight left in the air (and its memory leaked when dropped), if no send with that token is
    /// in the air: a completion that does not belong here must never release memory the kernel may
    /// still read.
    pub fn finish(&mut self, token: Token, cqe: SendCqe) -> Option<Landed<'_>> {
        if self.busy != Some(token) {
            error!(
                ?token,
                busy = ?self.busy,
                "send completion for a send not in the air; keeping its memory"
            );
            return None;
        }
        let result = match cqe {
            SendCqe::Done(result) => result,
            SendCqe::Sent(result) if self.zero_copy == ZeroCopy::RELEASED => result,
            SendCqe::Sent(result) => {
                self.zero_copy = ZeroCopy::result(result);
                return None;
            }
            SendCqe::Released { .. } if self.zero_copy == ZeroCopy::NOTHING => {
                self.zero_copy = ZeroCopy::RELEASED;
                return None;
            }
            SendCqe::Released { .. } => self.zero_copy.0,
        };
        self.busy = None;
        self.zero_copy = ZeroCopy::NOTHING;
        let offset = std::mem::take(&mut self.offset);
        Some(Landed {
            chunks: &mut self.chunks,
            offset,
            result: if result < 0 {
                Err(-result)
            } else {
                Ok(result as usize)
            },
        })
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
    pub fn arm_for_test(&mut self) -> Option<Token> {
        let token = Token::new(super::Op::Send, 0, 0);
        self.arm(token).map(|_| token)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(token) = self.busy {
            error!(
                ?token,
                "a send's memory is dropped while the send may be in the air; leaking it"
            );
            std::mem::forget(std::mem::take(&mut self.chunks));
            std::mem::forget(std::mem::take(&mut self.iov));
            std::mem::forget(std::mem::replace(&mut self.msg, Box::new(empty_msghdr())));
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

    #[test]
    fn a_single_chunk_is_a_plain_send_from_the_offset() {
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [owned(b"hello")].into();
        assert_eq!(f.load(&mut q, 2), 1);
        assert_eq!(f.len(), 3);
        let t = Token::new(Op::Send, 1, 1);
        match f.arm(t) {
            // SAFETY (test): the flight owns the chunk and is in the air, so the range is valid.
            Some(Armed::Single { ptr, len }) => unsafe {
                assert_eq!(std::slice::from_raw_parts(ptr, len as usize), b"llo");
            },
            _ => panic!("expected a single send"),
        }
        assert!(f.is_busy());
        let mut more: VecDeque<Chunk> = [owned(b"x")].into();
        assert_eq!(f.load(&mut more, 0), 0, "nothing loads while in the air");
        assert!(f.arm(t).is_none(), "armed once");
        let landed = f.finish(t, SendCqe::Done(3)).unwrap();
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
        let Some(Armed::Vectored(msg)) = f.arm(t) else {
            panic!("expected a vectored send");
        };
        // SAFETY (test): the header and the iovecs live in the flight while it is in the air.
        let iovlen = unsafe { (*msg).msg_iovlen };
        assert_eq!(iovlen, MAX_IOV);
        assert!(
            matches!(f.finish(t, SendCqe::Done(-libc::EPIPE)), Some(l) if l.result == Err(libc::EPIPE))
        );
    }

    #[test]
    fn a_foreign_completion_never_lands_the_flight() {
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [owned(b"abc")].into();
        f.load(&mut q, 0);
        let t = Token::new(Op::Send, 3, 1);
        f.arm(t).unwrap();
        assert!(
            f.finish(Token::new(Op::Send, 3, 2), SendCqe::Done(3))
                .is_none(),
            "stale generation"
        );
        assert!(f.is_busy(), "still in the air");
        assert!(f.finish(t, SendCqe::Done(3)).is_some());
        assert!(f.finish(t, SendCqe::Done(3)).is_none(), "landed once");
    }

    #[test]
    fn a_zero_copy_send_lands_only_with_its_result_and_its_notification() {
        let t = Token::new(Op::Send, 2, 1);
        let released = SendCqe::Released { copied: true };
        // In the kernel's order (result, then notification) and in the other.
        for (first, second) in [(SendCqe::Sent(3), released), (released, SendCqe::Sent(3))] {
            let mut f = Flight::default();
            let mut q: VecDeque<Chunk> = [owned(b"abc")].into();
            f.load(&mut q, 0);
            f.arm(t).unwrap();
            assert!(
                f.finish(t, first).is_none(),
                "{first:?} alone lands nothing"
            );
            assert!(f.is_busy(), "the kernel may still read the bytes");
            let landed = f.finish(t, second).expect("both reported");
            assert_eq!(landed.result, Ok(3));
            assert!(!f.is_busy());
            // The next send starts afresh: its notification alone does not land it.
            f.load(&mut [owned(b"d")].into(), 0);
            f.arm(t).unwrap();
            assert!(f.finish(t, released).is_none());
            assert!(
                matches!(f.finish(t, SendCqe::Sent(-libc::EPIPE)), Some(l) if l.result == Err(libc::EPIPE))
            );
        }
    }

    #[test]
    fn dropping_a_flight_in_the_air_leaks_instead_of_freeing() {
        let shared: Arc<[u8]> = Arc::from(&b"frame"[..]);
        let mut f = Flight::default();
        let mut q: VecDeque<Chunk> = [Chunk::Shared(Arc::clone(&shared)), owned(b"x")].into();
        f.load(&mut q, 0);
        f.arm(Token::new(Op::Send, 0, 0)).unwrap();
        drop(f);
        assert_eq!(
            Arc::strong_count(&shared),
            2,
            "the flight's reference was leaked, not dropped"
        );
    }
}
