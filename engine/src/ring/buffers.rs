//! The provided-buffer ring (Linux 5.19): the pool multishot receives pick their buffers from.
//!
//! One per worker: `count` buffers of `size` bytes in one anonymous mapping, and a ring of `count`
//! entries the kernel takes buffers from (registered and unregistered by [`Ring`](super::Ring)).
//! A receive completion names the buffer it filled; the worker hands it to [`Buffers::received`],
//! borrows the bytes with [`Buffers::next_piece`], decodes frames in place, and hands the buffer
//! back with [`Buffers::done`] as soon as the callbacks for it returned. Because `next_piece`
//! borrows the pool mutably, no slice of a buffer can outlive its return to the kernel: the borrow
//! checker enforces the rule "a borrowed payload must never outlive its buffer's return to the
//! ring".
//!
//! **A small, hot working set.** The kernel takes buffers from the head of the ring in order, and
//! buffers given back go to its tail, so a ring holding all `count` buffers makes every receive land
//! in the buffer used longest ago: with 512 x 32 KiB, a 16 MiB rotation that the kernel's copy, the
//! unmask and the echo's copy all meet in cold cache. So only `active` buffers sit in the ring at a
//! time; the others wait on a stack of free buffers, and [`Buffers::refill`] (once per loop turn)
//! tops the ring up from the top of that stack, with the buffers returned most recently. `active`
//! follows the load: it grows as soon as a turn takes more than two thirds of it (or a receive finds
//! the ring empty, `ENOBUFS`) and falls back to the busiest turn's need after [`WINDOW`] quieter
//! turns, between [`MIN_ACTIVE`] and `count`. Buffers never taken are never touched, so their pages
//! are never faulted in; the mapping is also kept off transparent huge pages (one huge page would
//! fault in 64 buffers at once).
//!
//! **Incremental consumption** (`IOU_PBUF_RING_INC`, Linux 6.12, when asked for and supported): a
//! receive takes only the bytes it filled from the buffer at the ring's head, not the whole buffer,
//! so many small receives (handshakes, 20-byte messages from hundreds of connections) share one
//! buffer instead of taking one each. A completion then says whether the kernel keeps the buffer
//! (`IORING_CQE_F_BUF_MORE`); the pool tracks how far into each buffer the kernel has written and
//! takes a buffer back only from the completion that finished it. The pool's bytes are then
//! regrouped into [`INC_BUFFER`]-sized buffers, so that messages packed back to back seldom straddle
//! a buffer end (a straddling message is gathered by copying).
//!
//! **Receive bundles** (`IORING_RECVSEND_BUNDLE`, Linux 6.10, when the pool is made for them): one
//! completion may fill several buffers. It names the first (filled from where the pool says the
//! kernel stopped in it, with incremental consumption); the bytes past that buffer's end went into
//! the buffers the pool published after it, in order, each filled from its start. So the pool keeps
//! which buffer it published at each ring position, and splits such a completion into
//! [`Piece`]s, one per buffer, handed to the worker in order by [`Buffers::next_piece`]. Every
//! buffer but the last is finished; the last is kept by the kernel if the completion says so
//! (`IORING_CQE_F_BUF_MORE`, incremental consumption), like a single buffer.
//!
//! Each buffer is in exactly one place: in the ring (the kernel may write to it), out (a completion
//! handed it to the worker) or free (on the stack). A buffer enters the ring only from the free
//! stack, and a completion is honoured only for buffers in the ring and only within the part the
//! kernel has not reported before (for a bundle: each following buffer must be the very one
//! published at the next position, still in the ring and untouched), so the kernel never sees a
//! buffer twice and never writes to bytes the worker holds, whatever a completion says (checked in
//! release builds). A completion that does not fit is refused whole: nothing of it is honoured.
//!
//! **Lending.** A large message echoed or forwarded from the receive buffer it arrived in is sent
//! from there, not copied into the output queue: [`Lending::lend`] hands out a [`Lent`] run of a
//! buffer's received bytes, and a buffer with live leases, once the worker is done with it, is
//! *held* (neither in the ring nor free) until its last lease ends; the next
//! [`refill`](Buffers::refill) frees it. So the kernel never writes to bytes a send may be
//! reading. At most a quarter of the buffers may hold leases at a time (a peer that stops reading
//! cannot pin the pool): past that, the caller copies.
//!
//! The mappings are released with `munmap`, never by an allocator, and only after the ring that
//! used them has unregistered the group (see [`Ring`](super::Ring)'s `Drop`) and the last lease
//! of their bytes has ended (the buffer mapping is shared with the leases).

use std::cell::{Cell, RefCell};
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers the ring holds at least (or `count`, if smaller); 2 with incremental consumption, whose
/// buffers are [`INC_BUFFER`] bytes.
pub(crate) const MIN_ACTIVE: u16 = 8;

/// Size of each buffer with incremental consumption: the pool's bytes are regrouped into buffers this
/// large, so that messages packed back to back seldom straddle a buffer end (a message that does is
/// gathered by copying): a 16 KiB message straddles one time in sixteen instead of one in two.
pub(crate) const INC_BUFFER: u32 = 256 << 10;

/// Loop turns over which the busiest one decides how far `active` shrinks.
const WINDOW: u32 = 512;

/// Where a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the ring: the kernel may take it and write to it.
    Ring,
    /// Handed to the worker by a completion that finished it.
    Out,
    /// Done with by the worker while sends still read lent bytes of it.
    Held,
    /// On the free stack.
    Free,
}

/// Where each buffer is, how far into it the kernel has written, the free stack and the ring's
/// level: the bookkeeping half of [`Buffers`], kept free of raw memory so it can be tested on its
/// own.
#[derive(Debug)]
pub(crate) struct Accounting {
    place: Vec<Place>,
    /// Bytes of each buffer the kernel reported filled so far (incremental mode; else zero).
    filled: Vec<u32>,
    /// Free buffers; the top (end) is the one returned last.
    free: Vec<u16>,
    size: u32,
    incremental: bool,
    out_count: usize,
    /// Buffers in the ring (published and not finished by a completion).
    in_ring: u16,
    /// How many buffers `refill` keeps in the ring.
    active: u16,
    min_active: u16,
    /// Buffers finished by completions, and receives that found the ring empty, this turn.
    taken: u16,
    dry: u16,
    /// The most any turn of the current window asked for, and the window's turns so far.
    peak: u16,
    turns: u32,
    /// The next tail value to publish (wrapping, as the kernel reads it).
    tail: u16,
    /// Whether a completion may span several buffers (receive bundles).
    bundles: bool,
    /// The buffer last published at each ring entry (by position modulo the ring size), and the
    /// position (the wrapping tail value) each buffer was last published at: a bundle's buffers
    /// after the first are the ones published at the positions following it.
    at: Vec<u16>,
    pos: Vec<u16>,
    /// The pieces of the last completion honoured, in order.
    pieces: Vec<Piece>,
}

/// The bytes one buffer holds of a completion: `start..end` of buffer `bid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// The buffer.
    pub bid: u16,
    /// Where in it the completion's bytes start and end.
    pub start: usize,
    pub end: usize,
}

impl Accounting {
    /// `count` buffers of `size` bytes (`count` a power of two), all free: the first
    /// [`refill`](Self::refill) puts the initial `active` of them in the ring. With `bundles`, a
    /// completion may span several buffers.
    pub fn new(count: u16, size: u32, incremental: bool, bundles: bool) -> Self {
        let min_active = if incremental { 2 } else { MIN_ACTIVE }.min(count);
        Self {
            place: vec![Place::Free; count as usize],
            filled: vec![0; count as usize],
            // Buffer 0 on top.
            free: (0..count).rev().collect(),
            size,
            incremental,
            out_count: 0,
            in_ring: 0,
            active: min_active,
            min_active,
            taken: 0,
            dry: 0,
            peak: 0,
            turns: 0,
            tail: 0,
            bundles,
            at: vec![0; count as usize],
            pos: vec![0; count as usize],
            pieces: Vec::new(),
        }
    }

    /// A completion reported `len` bytes received from buffer `bid` on; `kept` is its
    /// `IORING_CQE_F_BUF_MORE` (the kernel keeps the last buffer for more). Returns the pieces
    /// holding the bytes, in order: one, or with bundles as many as the bytes span (every one but
    /// the first filled from its start, every one but the last to its end). `None`, with nothing
    /// changed, if the completion cannot be trusted: `bid` out of range or not in the ring, or the
    /// bytes overrun the buffer (without bundles) or the buffers published after it (with them: a
    /// following position holds no buffer in the ring, or one the kernel had started). Finished
    /// buffers are out from here on.
    pub fn receive(&mut self, bid: u16, len: usize, kept: bool) -> Option<&[Piece]> {
        self.pieces.clear();
        if self.place.get(bid as usize) != Some(&Place::Ring) {
            return None;
        }
        let mask = self.place.len() - 1;
        let size = self.size as usize;
        let (mut b, mut start, mut left) = (bid, self.filled[bid as usize] as usize, len);
        loop {
            let take = left.min(size - start);
            self.pieces.push(Piece {
                bid: b,
                start,
                end: start + take,
            });
            left -= take;
            if left == 0 {
                break;
            }
            // The bytes go on in the buffer published right after `b`, if it is still there.
            let next_pos = self.pos[b as usize].wrapping_add(1);
            let next = self.at[next_pos as usize & mask];
            let follows = self.bundles
                && self.place[next as usize] == Place::Ring
                && self.pos[next as usize] == next_pos
                && self.filled[next as usize] == 0;
            if !follows {
                self.pieces.clear();
                return None;
            }
            (b, start) = (next, 0);
        }
        let last = self.pieces.len() - 1;
        for (i, p) in self.pieces.iter().enumerate() {
            let b = p.bid as usize;
            if i == last && self.incremental && kept {
                self.filled[b] = p.end as u32;
            } else {
                self.place[b] = Place::Out;
                self.out_count += 1;
                self.in_ring -= 1;
                self.taken = self.taken.saturating_add(1);
            }
        }
        Some(&self.pieces)
    }

    /// The worker is done with the bytes of `bid`'s last completion: a finished buffer goes on top
    /// of the free stack (true), or is held while `leased` (false); one the kernel kept, or one not
    /// out, stays where it is (false).
    pub fn done(&mut self, bid: u16, leased: bool) -> bool {
        match self.place.get_mut(bid as usize) {
            Some(p @ Place::Out) => {
                self.out_count -= 1;
                if leased {
                    *p = Place::Held;
                    return false;
                }
                *p = Place::Free;
                self.filled[bid as usize] = 0;
                self.free.push(bid);
                true
            }
            _ => false,
        }
    }

    /// The last lease of `bid` ended: a held buffer goes on top of the free stack (true); a buffer
    /// anywhere else stays there (it is freed by `done` as usual).
    pub fn unheld(&mut self, bid: u16) -> bool {
        match self.place.get_mut(bid as usize) {
            Some(p @ Place::Held) => {
                *p = Place::Free;
                self.filled[bid as usize] = 0;
                self.free.push(bid);
                true
            }
            _ => false,
        }
    }

    /// A receive found the ring empty (`ENOBUFS`).
    pub fn ran_dry(&mut self) {
        self.dry = self.dry.saturating_add(1);
    }

    /// The end of a loop turn: adapts `active` to what the turn took and moves buffers from the top
    /// of the free stack into the ring until it holds `active`, calling `put(position, bid)` for
    /// each; returns how many were put.
    pub fn refill(&mut self, mut put: impl FnMut(u16, u16)) -> u16 {
        let count = self.place.len() as u16;
        let need = self.taken.saturating_add(self.dry);
        let want = need.saturating_add(need / 2).clamp(self.min_active, count);
        if want > self.active {
            self.active = want;
        }
        self.peak = self.peak.max(want);
        self.turns += 1;
        if self.turns >= WINDOW {
            self.active = self.peak;
            self.peak = 0;
            self.turns = 0;
        }
        self.taken = 0;
        self.dry = 0;
        let mut put_count = 0;
        while self.in_ring < self.active {
            let Some(bid) = self.free.pop() else { break };
            self.place[bid as usize] = Place::Ring;
            self.at[self.tail as usize & (count as usize - 1)] = bid;
            self.pos[bid as usize] = self.tail;
            put(self.tail, bid);
            self.tail = self.tail.wrapping_add(1);
            self.in_ring += 1;
            put_count += 1;
        }
        put_count
    }

    /// Buffers currently handed out to the worker.
    pub fn out_count(&self) -> usize {
        self.out_count
    }

    /// How many buffers the ring is kept at.
    #[cfg(test)]
    pub fn active(&self) -> u16 {
        self.active
    }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes; with `no_huge`, kept off transparent huge pages (best effort).
    fn new(len: usize, no_huge: bool) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the result
        // is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if no_huge {
            // SAFETY: advice on exactly the mapping just created; MADV_NOHUGEPAGE changes no
            // contents. A failure (a kernel without THP) leaves the mapping as it was.
            unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `new`, unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The layout of one ring entry as the kernel reads it (`struct io_uring_buf`): the tail the
/// kernel reads lives in the `resv` field of entry 0.
#[repr(C)]
struct RawEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(size_of::<RawEntry>() == size_of::<io_uring::types::BufRingEntry>());

/// The addresses of a [`Buffers`]' entry ring and buffers, and their shape.
#[derive(Clone, Copy)]
struct Layout {
    entries: NonNull<RawEntry>,
    buffers: NonNull<u8>,
    size: u32,
    mask: u16,
}

impl Layout {
    /// The entry at ring position `pos` (modulo the ring size), as a raw pointer.
    fn entry(self, pos: u16) -> *mut RawEntry {
        // SAFETY: `pos & mask` < count, so the offset stays inside the entry mapping (the layout
        // is taken from a live `Buffers`, which owns the mapping).
        unsafe { self.entries.as_ptr().add((pos & self.mask) as usize) }
    }

    /// Writes ring entry `pos` to point at the whole of buffer `bid`.
    fn write_entry(self, pos: u16, bid: u16) {
        let addr = self.buffers.as_ptr() as u64 + bid as u64 * self.size as u64;
        let e = self.entry(pos);
        // SAFETY: `e` points inside the entry mapping (see `entry`). The kernel only reads (and, in
        // incremental mode, updates) entries between its head and our published tail, and this
        // position is past the tail (published afterwards), so nothing accesses these fields
        // concurrently. The fields are written through the raw pointer, one by one: no reference to
        // the entry is formed, because entry 0 also holds the tail (`resv`), which the kernel may
        // read at any time.
        unsafe {
            std::ptr::addr_of_mut!((*e).addr).write(addr);
            std::ptr::addr_of_mut!((*e).len).write(self.size);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
    }
}

/// The buffer mapping and its leases: shared by [`Buffers`], the worker's [`Lending`] handle and
/// every [`Lent`] run, so the bytes stay mapped while any send may read them.
struct Book {
    buffers: Mapping,
    /// Live leases per buffer.
    leases: Box<[Cell<u32>]>,
    /// Buffers with at least one live lease, and the most there may be.
    leased: Cell<u16>,
    max_leased: u16,
    /// Buffers whose last lease ended since the last refill.
    ended: RefCell<Vec<u16>>,
}

/// The worker's handle for lending received bytes to sends (see the module docs). It knows the
/// receive being handled (its buffer and bytes), set with [`set_window`](Self::set_window), and
/// lends only bytes inside it.
pub(crate) struct Lending {
    book: Rc<Book>,
    /// The buffer and the address range of the receive being handled, if one is.
    window: Option<(u16, usize, usize)>,
}

impl Lending {
    /// Marks `bytes` (of buffer `bid`, from [`Buffers::next_piece`]) as the receive being handled,
    /// or none (`None`) once it is handled.
    pub fn set_window(&mut self, window: Option<(u16, &[u8])>) {
        self.window = window.map(|(bid, b)| {
            let start = b.as_ptr() as usize;
            (bid, start, start + b.len())
        });
    }

    /// A lease on `payload` if it lies in the receive being handled and the pool can spare the
    /// buffer; `None` and the caller copies.
    pub fn lend(&self, payload: &[u8]) -> Option<Lent> {
        let (bid, start, end) = self.window?;
        let at = payload.as_ptr() as usize;
        if at < start || at + payload.len() > end {
            return None;
        }
        let book = &self.book;
        let count = &book.leases[bid as usize];
        if count.get() == 0 {
            if book.leased.get() >= book.max_leased {
                return None;
            }
            book.leased.set(book.leased.get() + 1);
        }
        count.set(count.get() + 1);
        Some(Lent {
            book: Rc::clone(book),
            bid,
            offset: at - book.buffers.ptr.as_ptr() as usize,
            len: payload.len(),
        })
    }
}

/// Received bytes lent to a send: the buffer holding them stays out of the ring until this is
/// dropped.
pub(crate) struct Lent {
    book: Rc<Book>,
    bid: u16,
    /// Into the buffer mapping.
    offset: usize,
    len: usize,
}

impl Lent {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `offset..offset + len` lies inside buffer `bid` of the mapping (checked against
        // the receive's own bytes in `Lending::lend`), which `self.book` keeps mapped. Those bytes
        // were reported written by a completion, and the kernel does not write them while this
        // lease lives: a buffer it finished is held out of the ring until the lease count drops
        // to zero (`Buffers::done`/`refill`), and one it kept (incremental) is written only past
        // what it reported. The worker does not write them either: in-place decoding only touches
        // bytes of frames not yet delivered, and these were a delivered payload.
        unsafe {
            std::slice::from_raw_parts(self.book.buffers.ptr.as_ptr().add(self.offset), self.len)
        }
    }
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let book = &self.book;
        let count = &book.leases[self.bid as usize];
        count.set(count.get() - 1);
        if count.get() == 0 {
            book.leased.set(book.leased.get() - 1);
            book.ended.borrow_mut().push(self.bid);
        }
    }
}

/// A provided-buffer ring and its buffers: the memory side. [`Ring`](super::Ring) registers it with
/// the kernel, and unregisters it before the mappings go away.
pub(crate) struct Buffers {
    entries: Mapping,
    book: Rc<Book>,
    size: u32,
    mask: u16,
    bgid: u16,
    acct: Accounting,
    /// The first piece of the last completion ([`Accounting::receive`]) not yet handed out.
    next: usize,
}

impl Buffers {
    /// Maps `count` buffers of `size` bytes and a ring of `count` entries and puts the first
    /// buffers in the ring, for buffer group `bgid`; `incremental` asks for incremental
    /// consumption (the kernel must have it: [`Ring::try_incremental`](super::Ring::try_incremental)),
    /// for which the same bytes are regrouped into buffers of [`INC_BUFFER`]; `bundles` makes
    /// the pool take completions that span several buffers, and the ring's receives ask for them
    /// (the kernel must have them: [`ProbeReport`](super::probe::ProbeReport)). Not yet registered.
    ///
    /// `count` must be a power of two of at most 32768 (validated by the config; checked here too).
    pub fn new(
        bgid: u16,
        count: u16,
        size: u32,
        incremental: bool,
        bundles: bool,
    ) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let total = u64::from(count) * u64::from(size);
        let (count, size) =
            if incremental && size < INC_BUFFER && total >= 2 * u64::from(INC_BUFFER) {
                // At least 2 and at most `count` (size < INC_BUFFER): fits u16.
                let regrouped = 1u64 << (total / u64::from(INC_BUFFER)).ilog2();
                (regrouped as u16, INC_BUFFER)
            } else {
                (count, size)
            };
        let entries = Mapping::new(count as usize * size_of::<RawEntry>(), false)?;
        let book = Rc::new(Book {
            buffers: Mapping::new(count as usize * size as usize, true)?,
            leases: (0..count).map(|_| Cell::new(0)).collect(),
            leased: Cell::new(0),
            max_leased: (count / 4).max(1),
            ended: RefCell::new(Vec::new()),
        });
        let mut ring = Self {
            entries,
            book,
            size,
            mask: count - 1,
            bgid,
            acct: Accounting::new(count, size, incremental, bundles),
            next: 0,
        };
        ring.refill();
        Ok(ring)
    }

    /// The address of the entry ring, to register it.
    pub fn ring_addr(&self) -> u64 {
        self.entries.ptr.as_ptr() as u64
    }

    /// Entries in the ring (= buffers).
    pub fn count(&self) -> u16 {
        self.mask + 1
    }

    /// The buffer group id receives name to pick from this ring.
    pub fn group(&self) -> u16 {
        self.bgid
    }

    /// Whether the ring is (to be) registered for incremental consumption.
    pub fn incremental(&self) -> bool {
        self.acct.incremental
    }

    /// Whether receives into this pool ask for bundles (several buffers per completion).
    pub fn bundles(&self) -> bool {
        self.acct.bundles
    }

    /// Where the ring's entries and buffers are: what writing an entry needs, copied out so that
    /// [`Accounting::refill`] can write entries while the accounting is borrowed.
    fn layout(&self) -> Layout {
        Layout {
            entries: self.entries.ptr.cast(),
            buffers: self.book.buffers.ptr,
            size: self.size,
            mask: self.mask,
        }
    }

    /// Makes every entry written so far visible to the kernel.
    fn publish_tail(&self) {
        let e = self.layout().entry(0);
        // SAFETY: the tail is the `resv` field of entry 0, inside the mapping and 2-byte aligned
        // (the mapping is page aligned); it is only ever accessed atomically, by us and by the
        // kernel, and the atomic lives as long as the mapping (`self`). The release store orders
        // the entry writes before it (the kernel reads it with acquire semantics).
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*e).resv)) };
        tail.store(self.acct.tail, Ordering::Release);
    }

    /// Takes in a receive completion that reported `len` bytes from buffer `bid` on; `kept` is
    /// its `IORING_CQE_F_BUF_MORE`. On `true`, [`next_piece`](Self::next_piece) hands out its
    /// bytes, one buffer at a time; give each buffer back with [`done`](Self::done) once its bytes
    /// are handled. Pieces of an earlier completion not handed out are given back first.
    ///
    /// Returns `false` (and honours nothing of it) if the completion cannot be trusted: `bid` out
    /// of range or not in the ring, or the bytes overrun the buffer, or with bundles the buffers
    /// published after it ([`Accounting::receive`]).
    pub fn received(&mut self, bid: u16, len: usize, kept: bool) -> bool {
        self.give_back_pending();
        self.next = 0;
        self.acct.receive(bid, len, kept).is_some()
    }

    /// The next piece of the last completion [`received`](Self::received): its buffer and the
    /// bytes it holds, borrowed until the next call on the pool.
    pub fn next_piece(&mut self) -> Option<(u16, &mut [u8])> {
        let p = *self.acct.pieces.get(self.next)?;
        self.next += 1;
        // SAFETY: `p.bid` < count (it had a place) and `p.start <= p.end <= size`, so the range
        // lies inside the buffer mapping. The kernel has reported these bytes written and never
        // writes them again: a finished buffer is out of the ring until `done`, and a kept one is
        // written only past `p.end`, the point its next completion starts from. Neither can be
        // back in the ring yet: only `refill` puts buffers there, and it (like `received`) first
        // gives back the pieces not handed out, which are never handed out after that. Each piece
        // is handed out once (`next` only grows), and the `&mut self` borrow makes the slice
        // exclusive.
        Some((p.bid, unsafe {
            std::slice::from_raw_parts_mut(
                self.book
                    .buffers
                    .ptr
                    .as_ptr()
                    .add(p.bid as usize * self.size as usize + p.start),
                p.end - p.start,
            )
        }))
    }

    /// [`received`](Self::received) for a completion expected to fit one buffer, and its bytes.
    #[cfg(test)]
    pub fn received_one(&mut self, bid: u16, len: usize, kept: bool) -> Option<&mut [u8]> {
        if !self.received(bid, len, kept) || self.acct.pieces.len() != 1 {
            return None;
        }
        self.next_piece().map(|(_, b)| b)
    }

    /// Gives back the buffers of pieces of the last completion not handed out (their bytes are
    /// dropped).
    fn give_back_pending(&mut self) {
        while let Some(p) = self.acct.pieces.get(self.next).copied() {
            self.next += 1;
            self.done(p.bid);
        }
    }

    /// The bytes of `bid`'s last completion are handled: a buffer the kernel finished goes back to
    /// the free stack (and into the ring at the next [`refill`](Self::refill)), or is held while
    /// sends read bytes lent from it. Ids not out are ignored (returns false).
    pub fn done(&mut self, bid: u16) -> bool {
        let leased = self
            .book
            .leases
            .get(bid as usize)
            .is_some_and(|c| c.get() > 0);
        self.acct.done(bid, leased)
    }

    /// The handle that lends received bytes to sends (one per worker).
    pub fn lending(&self) -> Lending {
        Lending {
            book: Rc::clone(&self.book),
            window: None,
        }
    }

    /// A completion that carried no usable data (an error result) named buffer `bid`: without
    /// incremental consumption the kernel consumed it, so it goes straight back; with it, the
    /// kernel only ever advances a buffer by bytes it reports, so the buffer stays in the ring.
    pub fn unused(&mut self, bid: u16) {
        if !self.acct.incremental && self.received(bid, 0, false) {
            self.give_back_pending();
        }
    }

    /// A receive found the ring empty (`ENOBUFS`): the next refill grows the ring.
    pub fn ran_dry(&mut self) {
        self.acct.ran_dry();
    }

    /// The end of a loop turn: adapts how many buffers the ring holds to the turn's need and tops
    /// it up with the buffers returned last.
    pub fn refill(&mut self) {
        self.give_back_pending();
        for bid in self.book.ended.borrow_mut().drain(..) {
            if self.book.leases[bid as usize].get() == 0 {
                self.acct.unheld(bid);
            }
        }
        let layout = self.layout();
        if self.acct.refill(|pos, bid| layout.write_entry(pos, bid)) > 0 {
            self.publish_tail();
        }
    }

    /// Buffers currently borrowed from the ring (zero between completions).
    pub fn out_count(&self) -> usize {
        self.acct.out_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion expected to fill part of one buffer: the range it got.
    fn one(a: &mut Accounting, bid: u16, len: usize, kept: bool) -> Option<(usize, usize)> {
        let pieces = a.receive(bid, len, kept)?;
        assert_eq!(pieces.len(), 1, "one buffer");
        assert_eq!(pieces[0].bid, bid);
        Some((pieces[0].start, pieces[0].end))
    }

    /// Refills `a` and returns the (position, bid) pairs it put in the ring.
    fn refill(a: &mut Accounting) -> Vec<(u16, u16)> {
        let mut put = Vec::new();
        a.refill(|pos, bid| put.push((pos, bid)));
        put
    }

    #[test]
    fn only_active_buffers_are_in_the_ring_and_only_those_are_honoured() {
        let mut a = Accounting::new(64, 1024, false, false);
        let put = refill(&mut a);
        assert_eq!(put.len(), MIN_ACTIVE as usize);
        assert_eq!(put[0], (0, 0), "buffer 0 first, at position 0");
        assert_eq!(
            one(&mut a, MIN_ACTIVE, 10, false),
            None,
            "a free buffer is not in the ring"
        );
        assert_eq!(one(&mut a, 64, 10, false), None, "out of range");
        assert_eq!(one(&mut a, 3, 2048, false), None, "over the buffer size");
        assert_eq!(one(&mut a, 3, 100, false), Some((0, 100)));
        assert_eq!(one(&mut a, 3, 100, false), None, "already out");
        assert_eq!(a.out_count(), 1);
        assert!(a.done(3, false));
        assert!(!a.done(3, false), "a buffer is given back once");
        assert_eq!(a.out_count(), 0);
    }

    #[test]
    fn the_buffer_returned_last_goes_into_the_ring_first() {
        let mut a = Accounting::new(64, 1024, false, false);
        refill(&mut a);
        for bid in [2, 5] {
            one(&mut a, bid, 1, false).unwrap();
        }
        assert!(a.done(2, false) && a.done(5, false));
        // Two taken in a turn: no growth; the ring is topped up with 5, then 2.
        assert_eq!(refill(&mut a), vec![(8, 5), (9, 2)]);
    }

    #[test]
    fn the_ring_grows_with_the_turns_need_and_shrinks_after_a_quiet_window() {
        let mut a = Accounting::new(1024, 1024, false, false);
        refill(&mut a);
        for bid in 0..8 {
            one(&mut a, bid, 1, false).unwrap();
            a.done(bid, false);
        }
        a.ran_dry();
        a.ran_dry();
        // 10 asked for: the ring is kept at 15.
        assert_eq!(refill(&mut a).len(), 15);
        assert_eq!(a.active(), 15);
        // The window that saw the busy turn keeps 15; the next, quiet one shrinks it.
        for _ in 0..2 * WINDOW {
            refill(&mut a);
        }
        assert_eq!(a.active(), MIN_ACTIVE, "a quiet window shrinks the ring");
        let mut b = Accounting::new(4, 1024, false, false);
        assert_eq!(refill(&mut b).len(), 4, "never beyond count");
        b.ran_dry();
        refill(&mut b);
        assert_eq!(b.active(), 4);
    }

    #[test]
    fn incremental_receives_share_a_buffer_until_it_is_finished() {
        let mut a = Accounting::new(8, 1000, true, false);
        refill(&mut a);
        assert_eq!(one(&mut a, 0, 300, true), Some((0, 300)));
        assert!(!a.done(0, false), "a kept buffer stays in the ring");
        assert_eq!(one(&mut a, 0, 600, true), Some((300, 900)));
        assert_eq!(one(&mut a, 0, 200, false), None, "past the buffer's end");
        assert_eq!(one(&mut a, 0, 100, false), Some((900, 1000)));
        assert_eq!(a.out_count(), 1);
        assert!(a.done(0, false));
        a.refill(|_, _| {});
        assert_eq!(
            one(&mut a, 0, 10, false),
            Some((0, 10)),
            "a new round starts at 0"
        );
    }

    /// The (bid, start, end) of each piece of a completion, or `None` if it was refused.
    fn split(
        a: &mut Accounting,
        bid: u16,
        len: usize,
        kept: bool,
    ) -> Option<Vec<(u16, usize, usize)>> {
        let pieces = a.receive(bid, len, kept)?;
        Some(pieces.iter().map(|p| (p.bid, p.start, p.end)).collect())
    }

    #[test]
    fn a_bundle_spans_the_buffers_published_after_its_first_in_that_order() {
        let mut a = Accounting::new(8, 1000, false, true);
        refill(&mut a);
        // Buffers 0..8 at positions 0..8. Buffer 0 comes back and is published at position 8.
        assert_eq!(one(&mut a, 0, 10, false), Some((0, 10)));
        assert!(a.done(0, false));
        assert_eq!(refill(&mut a), vec![(8, 0)]);
        assert_eq!(
            split(&mut a, 6, 2500, false),
            Some(vec![(6, 0, 1000), (7, 0, 1000), (0, 0, 500)]),
            "across the ring's wrap, in published order, not by id"
        );
        assert_eq!(a.out_count(), 3, "whole buffers: every one is finished");
        assert_eq!(
            one(&mut a, 1, 1000, false),
            Some((0, 1000)),
            "exactly one buffer"
        );
        for bid in [6, 7, 0, 1] {
            assert!(a.done(bid, false));
        }
        assert_eq!(a.out_count(), 0);
    }

    #[test]
    fn a_completion_that_does_not_fit_the_published_order_is_refused_whole() {
        let mut a = Accounting::new(8, 1000, false, true);
        refill(&mut a);
        assert_eq!(split(&mut a, 8, 10, false), None, "out of range");
        // Past the last buffer published: position 8 holds nothing yet.
        assert_eq!(
            split(&mut a, 6, 2001, false),
            None,
            "beyond the ring's tail"
        );
        assert_eq!(
            split(&mut a, 0, 8001, false),
            None,
            "more than every buffer in the ring"
        );
        // The buffer after 2 is out: the kernel cannot have written to it.
        assert_eq!(one(&mut a, 3, 10, false), Some((0, 10)));
        assert_eq!(
            split(&mut a, 2, 1500, false),
            None,
            "the next buffer is out"
        );
        assert!(a.done(3, false));
        assert_eq!(
            split(&mut a, 2, 1500, false),
            None,
            "or free (not republished)"
        );
        // Republished: at position 8, not right after 2.
        refill(&mut a);
        assert_eq!(
            split(&mut a, 2, 1500, false),
            None,
            "or elsewhere in the ring"
        );
        assert_eq!(
            a.out_count(),
            0,
            "nothing of a refused completion is honoured"
        );
        // What is honoured is exactly what the accounting allows.
        assert_eq!(
            split(&mut a, 4, 3500, false),
            Some(vec![(4, 0, 1000), (5, 0, 1000), (6, 0, 1000), (7, 0, 500)])
        );
        let mut off = Accounting::new(8, 1000, false, false);
        refill(&mut off);
        assert_eq!(
            split(&mut off, 0, 1001, false),
            None,
            "without bundles: one buffer"
        );
    }

    #[test]
    fn an_incremental_bundle_starts_where_the_kernel_stopped_and_may_keep_its_last_buffer() {
        let mut a = Accounting::new(4, 1000, true, true);
        for _ in 0..4 {
            a.ran_dry();
        }
        assert_eq!(refill(&mut a).len(), 4);
        assert_eq!(split(&mut a, 0, 300, true), Some(vec![(0, 0, 300)]));
        assert_eq!(
            split(&mut a, 0, 1500, true),
            Some(vec![(0, 300, 1000), (1, 0, 800)]),
            "from the offset the kernel reached"
        );
        assert_eq!(a.out_count(), 1, "the first is finished, the last kept");
        assert!(a.done(0, false));
        assert!(!a.done(1, false), "kept: stays in the ring");
        assert_eq!(
            split(&mut a, 1, 1200, false),
            Some(vec![(1, 800, 1000), (2, 0, 1000)]),
            "a last buffer filled to its end is finished"
        );
        assert_eq!(a.out_count(), 2);
        // A following buffer the kernel had started cannot be the continuation of a bundle.
        assert!(a.done(1, false) && a.done(2, false));
        assert_eq!(split(&mut a, 3, 10, true), Some(vec![(3, 0, 10)]));
        // Returned last, published first: 2, 1, 0 follow 3.
        assert_eq!(refill(&mut a), vec![(4, 2), (5, 1), (6, 0)]);
        assert_eq!(
            split(&mut a, 3, 2000, true),
            Some(vec![(3, 10, 1000), (2, 0, 1000), (1, 0, 10)])
        );
        assert_eq!(split(&mut a, 1, 5, true), Some(vec![(1, 10, 15)]));
        let mut b = Accounting::new(4, 1000, true, true);
        b.ran_dry();
        b.ran_dry();
        refill(&mut b);
        assert_eq!(split(&mut b, 1, 100, true), Some(vec![(1, 0, 100)]));
        assert_eq!(split(&mut b, 0, 1500, true), None, "buffer 1 was started");
        assert_eq!(
            split(&mut b, 1, 1000, true),
            Some(vec![(1, 100, 1000), (2, 0, 100)])
        );
    }

    #[test]
    fn a_bundles_pieces_are_handed_out_in_order_and_given_back() {
        let mut br = Buffers::new(0, 8, 1024, false, true).unwrap();
        assert!(br.received(0, 2048 + 10, false));
        let mut seen = Vec::new();
        while let Some((bid, bytes)) = br.next_piece() {
            bytes.fill(bid as u8 + 1);
            seen.push((bid, bytes.len()));
            assert!(br.done(bid));
        }
        assert_eq!(seen, [(0, 1024), (1, 1024), (2, 10)]);
        assert_eq!(br.out_count(), 0);
        // Pieces not handed out go back at the next completion or refill.
        assert!(br.received(3, 1500, false));
        assert_eq!(br.next_piece().map(|(b, s)| (b, s.len())), Some((3, 1024)));
        assert!(br.done(3));
        assert_eq!(br.out_count(), 1, "buffer 4 is pending");
        br.refill();
        assert_eq!(br.out_count(), 0);
        assert!(br.next_piece().is_none());
        assert!(!br.received(8, 10, false), "out of range");
        assert!(
            br.next_piece().is_none(),
            "a refused completion hands out nothing"
        );
    }

    #[test]
    fn incremental_pools_are_regrouped_into_large_buffers() {
        let inc = Buffers::new(0, 512, 32 << 10, true, false).unwrap();
        assert_eq!((inc.count(), inc.acct.size), (64, INC_BUFFER));
        let whole = Buffers::new(0, 512, 32 << 10, false, false).unwrap();
        assert_eq!((whole.count(), whole.acct.size), (512, 32 << 10));
        let small = Buffers::new(0, 4, 1024, true, false).unwrap();
        assert_eq!(small.count(), 4, "too small to regroup");
    }

    #[test]
    fn lent_bytes_hold_their_buffer_until_the_last_lease_ends() {
        let mut br = Buffers::new(0, 8, 1024, false, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received_one(0, 100, false).unwrap();
        buf.fill(5);
        buf[10] = 9;
        lending.set_window(Some((0, buf)));
        let (inside, outside) = (&buf[10..60], [5u8; 50]);
        let a = lending.lend(inside).expect("inside the receive");
        let b = lending.lend(&buf[60..100]).expect("a second lease");
        assert!(lending.lend(&outside).is_none(), "not in the receive");
        assert!(
            lending
                .lend(&buf[90..])
                .is_some_and(|l| l.bytes().len() == 10)
        );
        assert_eq!(a.bytes(), inside);
        assert!(!br.done(0), "held, not freed, while leased");
        assert_eq!(br.acct.place[0], Place::Held);
        assert_eq!(br.out_count(), 0, "a held buffer is not out");
        lending.set_window(None);
        assert!(lending.lend(&outside).is_none(), "no receive being handled");
        drop(a);
        br.refill();
        assert_eq!(br.acct.place[0], Place::Held, "one lease left");
        drop(b);
        br.refill();
        assert_eq!(br.acct.place[0], Place::Ring, "back in the ring");
    }

    #[test]
    fn a_lease_ended_before_its_buffer_is_done_frees_it_as_usual() {
        let mut br = Buffers::new(0, 8, 1024, false, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received_one(0, 100, false).unwrap();
        lending.set_window(Some((0, buf)));
        drop(lending.lend(&buf[..50]));
        assert!(br.done(0), "no lease left: freed");
        br.refill();
        assert_eq!(br.acct.place[0], Place::Ring);
    }

    #[test]
    fn at_most_a_quarter_of_the_buffers_hold_leases() {
        let mut br = Buffers::new(0, 8, 1024, false, false).unwrap();
        let mut lending = br.lending();
        let mut leases = Vec::new();
        for bid in 0..3 {
            let buf = br.received_one(bid, 100, false).unwrap();
            lending.set_window(Some((bid, buf)));
            leases.push(lending.lend(&buf[..10]));
            leases.push(lending.lend(&buf[10..20]));
        }
        let granted: Vec<bool> = leases.iter().map(Option::is_some).collect();
        assert_eq!(granted, [true, true, true, true, false, false]);
    }

    #[test]
    fn lent_bytes_stay_mapped_after_the_pool_is_gone() {
        let mut br = Buffers::new(0, 8, 1024, false, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received_one(0, 4, false).unwrap();
        buf.copy_from_slice(b"kept");
        lending.set_window(Some((0, buf)));
        let lent = lending.lend(buf).unwrap();
        drop(br);
        drop(lending);
        assert_eq!(lent.bytes(), b"kept");
    }

    #[test]
    fn buffers_are_handed_out_and_taken_back() {
        let mut br = Buffers::new(7, 4, 1024, false, false).unwrap();
        assert!(
            Buffers::new(7, 3, 1024, false, false).is_err(),
            "a power of two"
        );
        assert_eq!(br.group(), 7);
        assert!(br.received_one(4, 10, false).is_none(), "bid out of range");
        assert!(
            br.received_one(1, 2048, false).is_none(),
            "len over the buffer size"
        );
        let buf = br.received_one(1, 1024, false).unwrap();
        buf.fill(0xab);
        assert_eq!(br.out_count(), 1);
        assert!(br.received_one(1, 1, false).is_none(), "already out");
        assert!(br.done(1));
        assert!(!br.done(1));
        assert_eq!(br.out_count(), 0);
        br.unused(2);
        assert_eq!(br.out_count(), 0);
        br.refill();
        let mut inc = Buffers::new(7, 4, 1024, true, false).unwrap();
        inc.received_one(0, 10, true).unwrap().fill(1);
        inc.unused(0);
        assert_eq!(
            inc.received_one(0, 10, true).map(|b| b[0]),
            Some(0),
            "the next bytes, untouched"
        );
    }
}
