//! The provided-buffer ring (Linux 5.19): the pool multishot receives pick their buffers from.
//!
//! One per worker: `count` buffers of `size` bytes in one anonymous mapping, and a ring of `count`
//! entries the kernel takes buffers from (registered and unregistered by [`Ring`](super::Ring)).
//! A receive completion names the buffer it filled; the worker borrows the bytes with
//! [`Buffers::received`], decodes frames in place, and hands the buffer back with
//! [`Buffers::done`] as soon as the callbacks for it returned. Because `received` borrows the pool
//! mutably, no slice of a buffer can outlive its return to the kernel: the borrow checker enforces
//! the rule "a borrowed payload must never outlive its buffer's return to the ring".
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
//! Each buffer is in exactly one place: in the ring (the kernel may write to it), out (a completion
//! handed it to the worker) or free (on the stack). A buffer enters the ring only from the free
//! stack, and a completion is honoured only for a buffer in the ring and only within the part the
//! kernel has not reported before, so the kernel never sees a buffer twice and never writes to bytes
//! the worker holds, whatever a completion says (checked in release builds).
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
}

impl Accounting {
    /// `count` buffers of `size` bytes, all free: the first [`refill`](Self::refill) puts the
    /// initial `active` of them in the ring.
    pub fn new(count: u16, size: u32, incremental: bool) -> Self {
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
        }
    }

    /// A completion reported `len` bytes received into `bid`; `kept` is its
    /// `IORING_CQE_F_BUF_MORE` (the kernel keeps the buffer for more). Returns the range of the
    /// buffer holding the bytes, or `None` if the completion cannot be trusted: `bid` out of range
    /// or not in the ring, or the bytes overrun the buffer. A finished buffer is out from here on.
    pub fn receive(&mut self, bid: u16, len: usize, kept: bool) -> Option<(usize, usize)> {
        if self.place.get(bid as usize) != Some(&Place::Ring) {
            return None;
        }
        let start = self.filled[bid as usize] as usize;
        let end = start.checked_add(len)?;
        if end > self.size as usize {
            return None;
        }
        if self.incremental && kept {
            self.filled[bid as usize] = end as u32;
        } else {
            self.place[bid as usize] = Place::Out;
            self.out_count += 1;
            self.in_ring -= 1;
            self.taken = self.taken.saturating_add(1);
        }
        Some((start, end))
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
    /// Marks `bytes` (of buffer `bid`, from [`Buffers::received`]) as the receive being handled,
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
}

impl Buffers {
    /// Maps `count` buffers of `size` bytes and a ring of `count` entries and puts the first
    /// buffers in the ring, for buffer group `bgid`; `incremental` asks for incremental
    /// consumption (the kernel must have it: [`Ring::try_incremental`](super::Ring::try_incremental)),
    /// for which the same bytes are regrouped into buffers of [`INC_BUFFER`]. Not yet registered.
    ///
    /// `count` must be a power of two of at most 32768 (validated by the config; checked here too).
    pub fn new(bgid: u16, count: u16, size: u32, incremental: bool) -> io::Result<Self> {
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
            acct: Accounting::new(count, size, incremental),
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

    /// Borrows the `len` bytes a receive completion reported in buffer `bid`; `kept` is the
    /// completion's `IORING_CQE_F_BUF_MORE`. Give the buffer back with [`done`](Self::done) once
    /// the bytes are handled.
    ///
    /// Returns `None` (and keeps the buffer away from the caller) if the completion cannot be
    /// trusted: `bid` out of range or not in the ring, or the bytes overrun the buffer.
    pub fn received(&mut self, bid: u16, len: usize, kept: bool) -> Option<&mut [u8]> {
        let (start, end) = self.acct.receive(bid, len, kept)?;
        // SAFETY: `bid` < count (it has a place) and `start <= end <= size`, so the range lies
        // inside the buffer mapping. The kernel has reported these bytes written and never writes
        // them again: a finished buffer is out of the ring until `done` (which needs `&mut self`,
        // so this borrow ends first), and a kept one is written only past `end`, the point its
        // next completion starts from. The `&mut self` borrow makes the slice exclusive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.book
                    .buffers
                    .ptr
                    .as_ptr()
                    .add(bid as usize * self.size as usize + start),
                end - start,
            )
        })
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
        if !self.acct.incremental && self.acct.receive(bid, 0, false).is_some() {
            self.done(bid);
        }
    }

    /// A receive found the ring empty (`ENOBUFS`): the next refill grows the ring.
    pub fn ran_dry(&mut self) {
        self.acct.ran_dry();
    }

    /// The end of a loop turn: adapts how many buffers the ring holds to the turn's need and tops
    /// it up with the buffers returned last.
    pub fn refill(&mut self) {
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

    /// Refills `a` and returns the (position, bid) pairs it put in the ring.
    fn refill(a: &mut Accounting) -> Vec<(u16, u16)> {
        let mut put = Vec::new();
        a.refill(|pos, bid| put.push((pos, bid)));
        put
    }

    #[test]
    fn only_active_buffers_are_in_the_ring_and_only_those_are_honoured() {
        let mut a = Accounting::new(64, 1024, false);
        let put = refill(&mut a);
        assert_eq!(put.len(), MIN_ACTIVE as usize);
        assert_eq!(put[0], (0, 0), "buffer 0 first, at position 0");
        assert_eq!(
            a.receive(MIN_ACTIVE, 10, false),
            None,
            "a free buffer is not in the ring"
        );
        assert_eq!(a.receive(64, 10, false), None, "out of range");
        assert_eq!(a.receive(3, 2048, false), None, "over the buffer size");
        assert_eq!(a.receive(3, 100, false), Some((0, 100)));
        assert_eq!(a.receive(3, 100, false), None, "already out");
        assert_eq!(a.out_count(), 1);
        assert!(a.done(3, false));
        assert!(!a.done(3, false), "a buffer is given back once");
        assert_eq!(a.out_count(), 0);
    }

    #[test]
    fn the_buffer_returned_last_goes_into_the_ring_first() {
        let mut a = Accounting::new(64, 1024, false);
        refill(&mut a);
        for bid in [2, 5] {
            a.receive(bid, 1, false).unwrap();
        }
        assert!(a.done(2, false) && a.done(5, false));
        // Two taken in a turn: no growth; the ring is topped up with 5, then 2.
        assert_eq!(refill(&mut a), vec![(8, 5), (9, 2)]);
    }

    #[test]
    fn the_ring_grows_with_the_turns_need_and_shrinks_after_a_quiet_window() {
        let mut a = Accounting::new(1024, 1024, false);
        refill(&mut a);
        for bid in 0..8 {
            a.receive(bid, 1, false).unwrap();
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
        let mut b = Accounting::new(4, 1024, false);
        assert_eq!(refill(&mut b).len(), 4, "never beyond count");
        b.ran_dry();
        refill(&mut b);
        assert_eq!(b.active(), 4);
    }

    #[test]
    fn incremental_receives_share_a_buffer_until_it_is_finished() {
        let mut a = Accounting::new(8, 1000, true);
        refill(&mut a);
        assert_eq!(a.receive(0, 300, true), Some((0, 300)));
        assert!(!a.done(0, false), "a kept buffer stays in the ring");
        assert_eq!(a.receive(0, 600, true), Some((300, 900)));
        assert_eq!(a.receive(0, 200, false), None, "past the buffer's end");
        assert_eq!(a.receive(0, 100, false), Some((900, 1000)));
        assert_eq!(a.out_count(), 1);
        assert!(a.done(0, false));
        a.refill(|_, _| {});
        assert_eq!(
            a.receive(0, 10, false),
            Some((0, 10)),
            "a new round starts at 0"
        );
    }

    #[test]
    fn incremental_pools_are_regrouped_into_large_buffers() {
        let inc = Buffers::new(0, 512, 32 << 10, true).unwrap();
        assert_eq!((inc.count(), inc.acct.size), (64, INC_BUFFER));
        let whole = Buffers::new(0, 512, 32 << 10, false).unwrap();
        assert_eq!((whole.count(), whole.acct.size), (512, 32 << 10));
        let small = Buffers::new(0, 4, 1024, true).unwrap();
        assert_eq!(small.count(), 4, "too small to regroup");
    }

    #[test]
    fn lent_bytes_hold_their_buffer_until_the_last_lease_ends() {
        let mut br = Buffers::new(0, 8, 1024, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received(0, 100, false).unwrap();
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
        let mut br = Buffers::new(0, 8, 1024, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received(0, 100, false).unwrap();
        lending.set_window(Some((0, buf)));
        drop(lending.lend(&buf[..50]));
        assert!(br.done(0), "no lease left: freed");
        br.refill();
        assert_eq!(br.acct.place[0], Place::Ring);
    }

    #[test]
    fn at_most_a_quarter_of_the_buffers_hold_leases() {
        let mut br = Buffers::new(0, 8, 1024, false).unwrap();
        let mut lending = br.lending();
        let mut leases = Vec::new();
        for bid in 0..3 {
            let buf = br.received(bid, 100, false).unwrap();
            lending.set_window(Some((bid, buf)));
            leases.push(lending.lend(&buf[..10]));
            leases.push(lending.lend(&buf[10..20]));
        }
        let granted: Vec<bool> = leases.iter().map(Option::is_some).collect();
        assert_eq!(granted, [true, true, true, true, false, false]);
    }

    #[test]
    fn lent_bytes_stay_mapped_after_the_pool_is_gone() {
        let mut br = Buffers::new(0, 8, 1024, false).unwrap();
        let mut lending = br.lending();
        let buf = br.received(0, 4, false).unwrap();
        buf.copy_from_slice(b"kept");
        lending.set_window(Some((0, buf)));
        let lent = lending.lend(buf).unwrap();
        drop(br);
        drop(lending);
        assert_eq!(lent.bytes(), b"kept");
    }

    #[test]
    fn buffers_are_handed_out_and_taken_back() {
        let mut br = Buffers::new(7, 4, 1024, false).unwrap();
        assert!(Buffers::new(7, 3, 1024, false).is_err(), "a power of two");
        assert_eq!(br.group(), 7);
        assert!(br.received(4, 10, false).is_none(), "bid out of range");
        assert!(
            br.received(1, 2048, false).is_none(),
            "len over the buffer size"
        );
        let buf = br.received(1, 1024, false).unwrap();
        buf.fill(0xab);
        assert_eq!(br.out_count(), 1);
        assert!(br.received(1, 1, false).is_none(), "already out");
        assert!(br.done(1));
        assert!(!br.done(1));
        assert_eq!(br.out_count(), 0);
        br.unused(2);
        assert_eq!(br.out_count(), 0);
        br.refill();
        let mut inc = Buffers::new(7, 4, 1024, true).unwrap();
        inc.received(0, 10, true).unwrap().fill(1);
        inc.unused(0);
        assert_eq!(
            inc.received(0, 10, true).map(|b| b[0]),
            Some(0),
            "the next bytes, untouched"
        );
    }
}
