//! Per-connection output queue, flushed with one send per connection per loop turn (corking).
//!
//! Two byte buffers: `front` is what the kernel is sending (or what is left of it after a partial
//! send) and is never touched while a send is in flight; `back` collects every frame queued since.
//! When the in-flight send completes and `front` is used up, the buffers swap and everything queued
//! during the loop turn leaves in one send. A payload is copied once, into `back`.
//!
//! Queues are boxed and come from a per-worker [`Pool`]: a connection takes one when it first queues
//! bytes and gives it back once everything is sent, so an idle connection owns no send memory and echo
//! does not allocate per message.
//!
//! Pub/sub will add a third part: a list of shared, reference-counted frame segments (`Arc<[u8]>`)
//! behind `back`, sent together with the private bytes by one `writev`, so a published frame is
//! encoded once and never copied per subscriber.

use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};

/// The largest single send handed to the kernel; longer queues go out in several sends.
const MAX_SEND: usize = 1 << 30;

/// Bytes waiting to be sent on one connection.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    /// Bytes handed (or about to be handed) to the kernel; `front[sent..]` is still to go.
    front: Vec<u8>,
    sent: usize,
    /// Bytes queued since `front` was handed over.
    back: Vec<u8>,
    in_flight: bool,
}

impl OutQueue {
    /// Bytes queued and not yet acknowledged by a send completion.
    pub fn buffered(&self) -> usize {
        self.front.len() - self.sent + self.back.len()
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// Whether a send of `front` is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Queues one unmasked, unfragmented server frame.
    pub fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, None, payload.len() as u64);
        self.back.reserve(n + payload.len());
        self.back.extend_from_slice(&header[..n]);
        self.back.extend_from_slice(payload);
    }

    /// The buffer new bytes are appended to (HTTP responses are written straight into it).
    pub fn back_mut(&mut self) -> &mut Vec<u8> {
        &mut self.back
    }

    /// Starts the next send if none is in flight: returns the bytes to hand to the kernel.
    ///
    /// The returned slice stays valid and unmodified until [`complete`](Self::complete) is called,
    /// because nothing writes to `front` while a send is in flight and the queue's memory is not freed
    /// while it is in flight (the owner keeps the box until then).
    pub fn start_send(&mut self) -> Option<&[u8]> {
        if self.in_flight {
            return None;
        }
        if self.sent == self.front.len() {
            if self.back.is_empty() {
                return None;
            }
            self.front.clear();
            self.sent = 0;
            std::mem::swap(&mut self.front, &mut self.back);
        }
        self.in_flight = true;
        let end = self.front.len().min(self.sent + MAX_SEND);
        Some(&self.front[self.sent..end])
    }

    /// Records a completed send of `n` bytes (possibly partial); the rest goes with the next send.
    pub fn complete(&mut self, n: usize) {
        debug_assert!(self.in_flight);
        self.in_flight = false;
        self.sent = (self.sent + n).min(self.front.len());
        if self.sent == self.front.len() {
            self.front.clear();
            self.sent = 0;
        }
    }

    /// Records a failed send: the connection is going away, nothing more will be sent.
    pub fn abandon(&mut self) {
        self.in_flight = false;
        self.front.clear();
        self.back.clear();
        self.sent = 0;
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
    /// Buffer capacity kept at most per queue half; larger buffers (a big message) are freed.
    max_capacity: usize,
}

impl Pool {
    /// A pool keeping up to `max_free` queues with buffers of up to `max_capacity` bytes each.
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
        debug_assert!(!q.in_flight);
        if self.free.len() >= self.max_free {
            return;
        }
        q.abandon();
        for buf in [&mut q.front, &mut q.back] {
            if buf.capacity() > self.max_capacity {
                *buf = Vec::new();
            }
        }
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

    #[test]
    fn frames_are_encoded_unmasked() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"Hello");
        q.push_frame(OpCode::Binary, &[7; 256]);
        assert_eq!(q.buffered(), 7 + 4 + 256);
        let sent = q.start_send().unwrap().to_vec();
        assert_eq!(&sent[..7], b"\x81\x05Hello");
        assert_eq!(&sent[7..11], b"\x82\x7e\x01\x00");
        assert!(sent[11..].iter().all(|&b| b == 7));
    }

    #[test]
    fn one_send_per_turn_and_nothing_while_in_flight() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Text, b"a");
        q.push_frame(OpCode::Text, b"b");
        assert_eq!(q.start_send().unwrap(), b"\x81\x01a\x81\x01b");
        assert!(q.in_flight());
        assert_eq!(q.start_send(), None, "one send in flight at a time");
        q.push_frame(OpCode::Text, b"c");
        assert_eq!(q.buffered(), 9);
        q.complete(6);
        assert_eq!(q.buffered(), 3);
        assert_eq!(q.start_send().unwrap(), b"\x81\x01c");
        q.complete(3);
        assert!(q.is_empty());
        assert_eq!(q.start_send(), None);
    }

    #[test]
    fn partial_sends_continue_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, b"0123456789");
        assert_eq!(q.start_send().unwrap().len(), 12);
        q.complete(5);
        q.push_frame(OpCode::Text, b"z");
        // The rest of the first buffer goes first, then what was queued meanwhile.
        assert_eq!(q.start_send().unwrap(), b"3456789");
        q.complete(7);
        assert_eq!(q.start_send().unwrap(), b"\x81\x01z");
        q.complete(0);
        assert_eq!(
            q.start_send().unwrap(),
            b"\x81\x01z",
            "a zero-byte send retries"
        );
        q.complete(3);
        assert!(q.is_empty());
    }

    #[test]
    fn in_flight_bytes_are_never_moved() {
        let mut q = OutQueue::default();
        q.push_frame(OpCode::Binary, &[1; 100]);
        let ptr = q.start_send().unwrap().as_ptr();
        for _ in 0..100 {
            q.push_frame(OpCode::Binary, &[2; 1000]); // grows `back`, never `front`
        }
        q.complete(50);
        assert_eq!(q.start_send().unwrap().as_ptr(), ptr.wrapping_add(50));
    }

    #[test]
    fn pool_reuses_and_bounds_memory() {
        let mut pool = Pool::new(2, 1024);
        let mut a = pool.take();
        a.push_frame(OpCode::Binary, &[0; 100]);
        let big = {
            let mut b = pool.take();
            b.push_frame(OpCode::Binary, &[0; 4096]);
            b
        };
        pool.give(a);
        pool.give(big);
        pool.give(Box::default());
        assert_eq!(pool.free_len(), 2, "keeps at most max_free");
        let q = pool.take();
        assert!(q.is_empty());
        assert_eq!(q.back.capacity(), 0, "a big buffer is freed, not pooled");
        let q2 = pool.take();
        assert!(q2.back.capacity() >= 100, "a small buffer is reused");
    }
}
