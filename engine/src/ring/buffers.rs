//! The provided-buffer ring (Linux 5.19): the pool multishot receives pick their buffers from.
//!
//! One per worker: `count` buffers of `size` bytes in one anonymous mapping, and a ring of `count`
//! entries the kernel takes buffers from (registered and unregistered by [`Ring`](super::Ring)).
//! A receive completion names the buffer it filled; the worker borrows it with [`Buffers::buffer`], decodes frames in place, and gives it back with
//! [`Buffers::recycle`] as soon as the callbacks for it returned. Because `buffer` borrows the ring
//! mutably, no slice of a buffer can outlive its return to the kernel: the borrow checker enforces the
//! rule "a borrowed payload must never outlive its buffer's return to the ring".
//!
//! A bitmap records which buffers the kernel handed out; recycling a buffer that is not out (a stale or
//! duplicated id) is refused, so the kernel never sees the same buffer twice.
//!
//! The mappings are released with `munmap`, never by an allocator, and only after the ring that
//! used them has unregistered the group (see [`Ring`](super::Ring)'s `Drop`).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Which buffers are handed out, and the ring's tail: the bookkeeping half of [`Buffers`], kept free
/// of raw memory so it can be tested on its own.
#[derive(Debug)]
pub(crate) struct Accounting {
    out: Vec<u64>,
    out_count: usize,
    /// The next tail value to publish (wrapping, as the kernel reads it).
    tail: u16,
}

impl Accounting {
    /// `count` buffers, all in the ring.
    pub fn new(count: u16) -> Self {
        Self {
            out: vec![0; (count as usize).div_ceil(64)],
            out_count: 0,
            tail: count,
        }
    }

    /// Marks `bid` as handed out by the kernel; false if it already was (or is out of range).
    pub fn take(&mut self, bid: u16) -> bool {
        let (word, bit) = (bid as usize / 64, 1u64 << (bid % 64));
        match self.out.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                self.out_count += 1;
                true
            }
            _ => false,
        }
    }

    /// Marks `bid` as back in the ring and returns the ring position to write it at; `None` if it was
    /// not handed out.
    pub fn give_back(&mut self, bid: u16) -> Option<u16> {
        let (word, bit) = (bid as usize / 64, 1u64 << (bid % 64));
        match self.out.get_mut(word) {
            Some(w) if *w & bit != 0 => {
                *w &= !bit;
                self.out_count -= 1;
                let pos = self.tail;
                self.tail = self.tail.wrapping_add(1);
                Some(pos)
            }
            _ => None,
        }
    }

    /// Buffers currently handed out to the worker.
    pub fn out_count(&self) -> usize {
        self.out_count
    }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
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

/// A provided-buffer ring and its buffers: the memory side. [`Ring`](super::Ring) registers it with
/// the kernel, and unregisters it before the mappings go away.
pub(crate) struct Buffers {
    entries: Mapping,
    buffers: Mapping,
    size: u32,
    mask: u16,
    bgid: u16,
    acct: Accounting,
}

impl Buffers {
    /// Maps `count` buffers of `size` bytes and a ring of `count` entries and fills the ring with
    /// every buffer, for buffer group `bgid`. Not yet registered.
    ///
    /// `count` must be a power of two of at most 32768 (validated by the config; checked here too).
    pub fn new(bgid: u16, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let entries = Mapping::new(count as usize * size_of::<RawEntry>())?;
        let buffers = Mapping::new(count as usize * size as usize)?;
        let mut ring = Self {
            entries,
            buffers,
            size,
            mask: count - 1,
            bgid,
            acct: Accounting::new(count),
        };
        for bid in 0..count {
            ring.write_entry(bid, bid);
        }
        ring.publish_tail();
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

    /// The entry at ring position `pos` (modulo the ring size), as a raw pointer.
    fn entry(&self, pos: u16) -> *mut RawEntry {
        // SAFETY: `pos & mask` < count, so the offset stays inside the entry mapping.
        unsafe {
            self.entries
                .ptr
                .as_ptr()
                .cast::<RawEntry>()
                .add((pos & self.mask) as usize)
        }
    }

    /// Writes ring entry `pos` to point at buffer `bid`.
    fn write_entry(&mut self, pos: u16, bid: u16) {
        let addr = self.buffers.ptr.as_ptr() as u64 + bid as u64 * self.size as u64;
        let e = self.entry(pos);
        // SAFETY: `e` points inside the entry mapping (see `entry`). The kernel only reads entries
        // between its head and our published tail, and this position is past the tail (published
        // afterwards), so nothing reads these fields concurrently. The fields are written through
        // the raw pointer, one by one: no reference to the entry is formed, because entry 0 also
        // holds the tail (`resv`), which the kernel may read at any time.
        unsafe {
            std::ptr::addr_of_mut!((*e).addr).write(addr);
            std::ptr::addr_of_mut!((*e).len).write(self.size);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
    }

    /// Makes every entry written so far visible to the kernel.
    fn publish_tail(&self) {
        let e = self.entry(0);
        // SAFETY: the tail is the `resv` field of entry 0, inside the mapping and 2-byte aligned
        // (the mapping is page aligned); it is only ever accessed atomically, by us and by the
        // kernel, and the atomic lives as long as the mapping (`self`). The release store orders
        // the entry writes before it (the kernel reads it with acquire semantics).
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*e).resv)) };
        tail.store(self.acct.tail, Ordering::Release);
    }

    /// Borrows buffer `bid`, which a receive completion reported filled with `len` bytes.
    ///
    /// Returns `None` (and keeps the buffer away from the caller) if `bid` is out of range, already
    /// handed out, or `len` exceeds the buffer size: a completion that cannot be trusted.
    pub fn buffer(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        if len > self.size as usize || bid > self.mask || !self.acct.take(bid) {
            return None;
        }
        // SAFETY: `bid` < count and `len` <= size, so the range lies inside the buffer mapping.
        // Callers pass only ids taken from receive completions, so the kernel has removed this
        // buffer from the ring, and the bitmap shows we have not given it back: the kernel does
        // not write to it. The `&mut self` borrow makes the slice exclusive and ends before
        // `recycle` can return it.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(bid as usize * self.size as usize),
                len,
            )
        })
    }

    /// Gives buffer `bid` back to the kernel. Ids not handed out are ignored (returns false).
    pub fn recycle(&mut self, bid: u16) -> bool {
        match self.acct.give_back(bid) {
            Some(pos) => {
                self.write_entry(pos, bid);
                self.publish_tail();
                true
            }
            None => false,
        }
    }

    /// Marks a buffer the kernel handed out with a completion that carried no usable data (an error
    /// result that still consumed a buffer), then gives it straight back.
    pub fn recycle_unused(&mut self, bid: u16) {
        if bid <= self.mask && self.acct.take(bid) {
            self.recycle(bid);
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

    #[test]
    fn accounting_tracks_out_buffers_and_tail() {
        let mut a = Accounting::new(8);
        assert_eq!(a.tail, 8);
        assert!(a.take(3));
        assert!(!a.take(3), "a buffer cannot be handed out twice");
        assert!(!a.take(64), "out of range");
        assert_eq!(a.out_count(), 1);
        assert_eq!(a.give_back(3), Some(8));
        assert_eq!(a.give_back(3), None, "double recycle is refused");
        assert_eq!(a.out_count(), 0);
        assert!(a.take(0) && a.take(7));
        assert_eq!(a.give_back(7), Some(9));
        assert_eq!(a.give_back(0), Some(10));
    }

    #[test]
    fn accounting_tail_wraps() {
        let mut a = Accounting::new(1 << 15);
        a.tail = u16::MAX;
        assert!(a.take(1));
        assert_eq!(a.give_back(1), Some(u16::MAX));
        assert_eq!(a.tail, 0);
    }

    #[test]
    fn buffers_are_handed_out_and_taken_back() {
        let mut br = Buffers::new(7, 4, 1024).unwrap();
        assert!(Buffers::new(7, 3, 1024).is_err(), "a power of two");
        assert_eq!(br.group(), 7);
        assert!(br.buffer(4, 10).is_none(), "bid out of range");
        assert!(br.buffer(1, 2048).is_none(), "len over the buffer size");
        let buf = br.buffer(1, 1024).unwrap();
        buf.fill(0xab);
        assert_eq!(br.out_count(), 1);
        assert!(br.buffer(1, 1).is_none(), "already out");
        assert!(br.recycle(1));
        assert!(!br.recycle(1));
        assert_eq!(br.out_count(), 0);
        br.recycle_unused(2);
        assert_eq!(br.out_count(), 0);
    }
}
