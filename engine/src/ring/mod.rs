//! The ring layer: the io_uring wrapper and the few raw system calls the engine makes. All of the
//! engine's `unsafe` code lives in this module and its children, each block with its `// SAFETY:`
//! reason; everything above it is safe Rust.
//!
//! - [`Ring`]: one io_uring instance and its provided-buffer ring, torn down in the safe order
//!   (the buffer group is unregistered, then the ring is closed, then the buffers are unmapped).
//! - [`Submit`]: builds and queues submissions. Every operation that points the kernel at memory
//!   owns or pins that memory until its completion: sends carry a [`Flight`], connects keep their
//!   address, timeouts keep their `timespec` until submitted. Nothing here can hand the kernel
//!   memory that safe code could free early.
//! - Direct descriptors: a ring may register a sparse file table ([`Ring::register_direct`]) in
//!   which each connection's socket is installed at its slot's index ([`Submit::install`]); the
//!   slot's receives and sends then name the table entry, and the kernel skips a file lookup per
//!   operation. `Submit` records which descriptor each entry holds and names an entry only for the
//!   very socket installed there (checked on every submission, in release builds too), so no
//!   operation can reach another connection's socket through a stale entry.
//! - [`Cqe`]: a completion, with its [`Token`] decoded.
//! - [`Buffers`]: the receive buffer pool; [`Flight`]/[`Chunk`]: the bytes of a send;
//!   [`Landing`]: a buffer of the engine's own that one receive writes into (a large frame's).
//! - [`probe`]: what the running kernel supports; [`sys`]: eventfds, signals, CPU affinity, the
//!   monotonic clock, the descriptor limit and a socket option.

mod buffers;
mod flight;
mod landing;
pub mod probe;
mod setup;
pub(crate) mod sys;
mod token;

pub(crate) use buffers::{Buffers, Lending};
#[cfg(test)]
pub(crate) use flight::MAX_IOV;
pub(crate) use flight::{Chunk, Finish, Flight};
pub(crate) use landing::Landing;
pub use setup::TaskRun;
pub(crate) use token::{GENERATION_BITS, Op, Token};

use crate::error::EngineError;
use flight::Armed;
use io_uring::cqueue::{self, CompletionQueue};
use io_uring::squeue::{self, SubmissionQueue};
use io_uring::types::{self, TimeoutFlags, Timespec};
use io_uring::{IoUring, Submitter, opcode};
use socket2::SockAddr;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use tracing::error;

/// `IOU_PBUF_RING_INC` (include/uapi/linux/io_uring.h): the flag registering a provided-buffer
/// ring for incremental consumption; the `io-uring` crate keeps its raw constants private.
const IOU_PBUF_RING_INC: u16 = 2;

/// How many completions a batch wait ([`Ring::batch_wait`]) holds out for: about what one turn of
/// a busy worker handles, so that under load the wait ends at once.
pub(crate) const BATCH_WAIT_COMPLETIONS: usize = 16;
/// `IORING_SEND_ZC_REPORT_USAGE` (include/uapi/linux/io_uring.h): a zero-copy send's notification
/// says whether the kernel had to copy the bytes after all.
const SEND_ZC_REPORT_USAGE: u16 = 8;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in such a notification's result when the kernel copied.
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;
/// `IORING_MAX_FIXED_FILES` (io_uring/rsrc.h): the largest file table a ring may register.
const MAX_FIXED_FILES: u32 = 1 << 20;

/// One io_uring instance and its registered provided-buffer ring.
pub(crate) struct Ring {
    /// Declared before `bufs`: dropped (the ring closed) before the buffers are unmapped.
    uring: IoUring,
    mode: TaskRun,
    /// Whether the ring was set up without the submission queue's index array.
    no_sq_array: bool,
    /// Whether successful cancels post no completion (`IOSQE_CQE_SKIP_SUCCESS`).
    skip_cancel_completions: bool,
    /// How long a wait may hold out for a batch of completions, in µs (0: wake at the first).
    batch_wait_us: u32,
    /// Sends of at least this many bytes go zero-copy (`SEND_ZC`; 0: none do).
    zero_copy_from: usize,
    /// The receive buffers, once registered.
    bufs: Option<Buffers>,
    /// Entries of the registered (sparse) file table; 0 without one.
    direct: u32,
}

impl Ring {
    /// Creates a ring of `entries` submission entries (four times as many completion entries) in
    /// the best task-run mode the kernel supports, without the submission queue's index array if
    /// `no_sq_array` asks for it and the kernel has `IORING_SETUP_NO_SQARRAY` (Linux 6.6).
    pub fn new(entries: u32, no_sq_array: bool) -> Result<Self, EngineError> {
        let (uring, mode, no_sq_array) = setup::new_ring(entries, no_sq_array)?;
        Ok(Self {
            uring,
            mode,
            no_sq_array,
            skip_cancel_completions: false,
            batch_wait_us: 0,
            zero_copy_from: 0,
            bufs: None,
            direct: 0,
        })
    }

    /// How the ring was set up.
    pub fn mode(&self) -> TaskRun {
        self.mode
    }

    /// Whether the ring was set up without the submission queue's index array.
    pub fn no_sq_array(&self) -> bool {
        self.no_sq_array
    }

    /// Asks (`on`) for no completion of cancels that succeed, where the kernel has
    /// `IOSQE_CQE_SKIP_SUCCESS` (`IORING_FEAT_CQE_SKIP`, Linux 5.17); returns whether it does.
    pub fn skip_cancel_completions(&mut self, on: bool) -> bool {
        self.skip_cancel_completions = on && self.uring.params().is_feature_skip_cqe_on_success();
        self.skip_cancel_completions
    }

    /// Lets each wait hold out up to `wait` for [`BATCH_WAIT_COMPLETIONS`] completions before it
    /// returns with those there are (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12); returns whether the
    /// kernel has it. A zero `wait` (or a kernel without it) wakes at the first completion.
    pub fn batch_wait(&mut self, wait: Duration) -> bool {
        let present = self.uring.params().is_feature_min_timeout();
        let us = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        self.batch_wait_us = if present { us } else { 0 };
        present
    }

    /// Makes sends of at least `from` bytes zero-copy (`IORING_OP_SEND_ZC` and
    /// `IORING_OP_SENDMSG_ZC`, Linux 6.0/6.1) where the kernel has both; returns whether it does. A
    /// zero `from` (or a kernel without them) copies every send into the socket.
    pub fn zero_copy_sends(&mut self, from: usize) -> bool {
        let mut probe = io_uring::Probe::new();
        let present = self.uring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::SendZc::CODE)
            && probe.is_supported(opcode::SendMsgZc::CODE);
        self.zero_copy_from = if present { from } else { 0 };
        present
    }

    /// A second descriptor of this ring, for other workers' rings to post wake-ups to
    /// ([`Submit::msg_ring`]). It keeps the ring's file open: its holder closes it before the ring
    /// is dropped.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: the ring's descriptor stays open as long as `self` (registering the ring fd keeps
        // the plain one), and the borrow ends here after the duplicate is made.
        unsafe { BorrowedFd::borrow_raw(self.uring.as_raw_fd()) }.try_clone_to_owned()
    }

    /// Registers `bufs` as the ring's receive buffers (Linux 5.19), for incremental consumption
    /// (`IOU_PBUF_RING_INC`, Linux 6.12) if `bufs` asks for it.
    pub fn register_buffers(&mut self, bufs: Buffers) -> io::Result<()> {
        let flags = if bufs.incremental() {
            IOU_PBUF_RING_INC
        } else {
            0
        };
        self.register_buf_ring(&bufs, flags)?;
        self.bufs = Some(bufs);
        Ok(())
    }

    /// Whether the kernel registers a buffer ring for incremental consumption (`EINVAL`: it has no
    /// such flag), tried with a throwaway buffer group `bgid` that is unregistered at once.
    pub fn try_incremental(&self, bgid: u16) -> io::Result<()> {
        let bufs = Buffers::new(bgid, 2, 512, true, false)?;
        self.register_buf_ring(&bufs, IOU_PBUF_RING_INC)?;
        if let Err(e) = self.uring.submitter().unregister_buf_ring(bgid) {
            // Still registered: the mapping must outlive the ring, so it is never unmapped.
            std::mem::forget(bufs);
            return Err(e);
        }
        Ok(())
    }

    /// Registers the entry ring of `bufs` with `flags`.
    fn register_buf_ring(&self, bufs: &Buffers, flags: u16) -> io::Result<()> {
        // SAFETY: the entry ring is a page-aligned mapping of `count` entries, owned by `bufs`,
        // which the ring keeps (`register_buffers` stores it on success) until its `Drop` has
        // unregistered the group (and the ring itself is closed before the mapping goes: field
        // order); a failed registration leaves nothing registered.
        unsafe {
            self.uring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.count(),
                bufs.group(),
                flags,
            )
        }
    }

    /// Registers an empty (sparse) file table of up to `entries` direct descriptors (Linux 5.19),
    /// for [`Submit::install`]; returns how many it has: `entries` capped by the kernel's
    /// `IORING_MAX_FIXED_FILES` and by the soft `RLIMIT_NOFILE` (the kernel refuses a larger
    /// table). Slots beyond it keep using their descriptors.
    pub fn register_direct(&mut self, entries: u32) -> io::Result<u32> {
        let nofile = u32::try_from(sys::nofile_limit()).unwrap_or(u32::MAX);
        let n = entries.min(MAX_FIXED_FILES).min(nofile);
        if n == 0 {
            return Err(io::Error::other("RLIMIT_NOFILE allows no file table"));
        }
        self.uring.submitter().register_files_sparse(n)?;
        self.direct = n;
        Ok(n)
    }

    /// The submission side, the receive buffers and the completion queue, to use together; `None`
    /// if no buffers are registered.
    pub fn split(&mut self) -> Option<(Submit<'_>, &mut Buffers, CompletionQueue<'_>)> {
        let bufs = self.bufs.as_mut()?;
        let group = bufs.group();
        let modes = Modes {
            bundles: bufs.bundles(),
            skip_cancel: self.skip_cancel_completions,
            batch_wait_us: self.batch_wait_us,
            zero_copy_from: self.zero_copy_from,
        };
        let direct = self.direct;
        let (submitter, sq, cq) = self.uring.split();
        let submit = Submit::new(submitter, sq, group, modes, direct);
        Some((submit, bufs, cq))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Some(bufs) = &self.bufs
            && let Err(e) = self.uring.submitter().unregister_buf_ring(bufs.group())
        {
            error!(error = %e, "unregistering the receive buffers failed");
        }
    }
}

/// Which stored `timespec` a timeout reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The worker's tick timer (absolute, `CLOCK_MONOTONIC`).
    Tick = 0,
    /// The handler's wake-up (relative).
    Wakeup = 1,
}

/// How a [`Submit`] builds its entries and waits, as the [`Ring`] was told and the kernel allows.
#[derive(Debug, Clone, Copy)]
struct Modes {
    /// Whether receives ask for bundles (`IORING_RECVSEND_BUNDLE`): set when the buffers take
    /// them ([`Buffers::bundles`]).
    bundles: bool,
    /// Whether cancels carry `IOSQE_CQE_SKIP_SUCCESS`.
    skip_cancel: bool,
    /// How long a wait holds out for [`BATCH_WAIT_COMPLETIONS`], in µs (0: not at all).
    batch_wait_us: u32,
    /// Sends of at least this many bytes go zero-copy (0: none).
    zero_copy_from: usize,
}

/// The submission side of a ring: typed operations, each tagged with a [`Token`].
///
/// A submission that cannot be queued because the queue stays full, or a failed `io_uring_enter`,
/// is recorded as fatal ([`take_fatal`](Self::take_fatal)): the worker then stops.
pub(crate) struct Submit<'r> {
    submitter: Submitter<'r>,
    sq: SubmissionQueue<'r>,
    group: u16,
    modes: Modes,
    /// The `timespec`s timeouts read, by [`Clock`]. The kernel reads one when the timeout is
    /// submitted, so each is rewritten only after the previous timeout using it was submitted.
    timespecs: [Box<Timespec>; 2],
    /// Which `timespecs` are referenced by a queued, not yet submitted timeout.
    unsubmitted: [bool; 2],
    /// The addresses of connects in flight, by token, kept until their completion.
    connects: HashMap<u64, Box<SockAddr>>,
    /// What each entry of the ring's file table holds, by slot: the descriptor of the socket
    /// installed there, or -1 (or nothing, past the highest slot installed so far: it grows with
    /// the slots used, not with the table). An operation of slot `i` on descriptor `fd` names
    /// entry `i` only if `direct[i] == fd`; entries are recorded only once the kernel took them
    /// and cleared before their descriptor is closed (so a reused descriptor number never matches
    /// a stale entry).
    direct: Vec<RawFd>,
    /// Entries of the ring's file table (0: none).
    table: u32,
    fatal: Option<io::Error>,
    counts: Counts,
}

/// What a ring has submitted, for the worker's metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Submission queue entries the kernel took.
    pub sqes: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
}

impl<'r> Submit<'r> {
    fn new(
        submitter: Submitter<'r>,
        sq: SubmissionQueue<'r>,
        group: u16,
        modes: Modes,
        direct: u32,
    ) -> Self {
        Self {
            submitter,
            sq,
            group,
            modes,
            timespecs: [Box::new(Timespec::new()), Box::new(Timespec::new())],
            unsubmitted: [false; 2],
            connects: HashMap::new(),
            direct: Vec::new(),
            table: direct,
            fatal: None,
            counts: Counts::default(),
        }
    }

    /// Queues `entry`, submitting first if the queue is full.
    ///
    /// # Safety
    /// Memory the entry points to must stay valid (and, for sends, unmodified) until its
    /// completion, or for a timeout's `timespec` until it is submitted.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..16 {
            // SAFETY: forwarded from the caller.
            if unsafe { self.sq.push(entry) }.is_ok() {
                return true;
            }
            if let Err(e) = self.submit() {
                self.fatal = Some(e);
                return false;
            }
        }
        self.fatal = Some(io::Error::other("the submission queue stays full"));
        false
    }

    /// Registers the ring's own descriptor (Linux 5.18), so that `io_uring_enter` (and the
    /// registrations of [`install`](Self::install)) skip a file lookup per call. The `Submitter`
    /// that registered it is the one that remembers the registered index and enters through it,
    /// so it is registered here, on the submitter this `Submit` keeps.
    pub fn register_ring_fd(&mut self) -> io::Result<()> {
        self.submitter.register_ring_fd()
    }

    /// Submits what is queued. `EINTR`, `EAGAIN` and `EBUSY` (the kernel is short of resources or
    /// has completions to hand back first) are not errors: what was not taken stays queued; nor is
    /// `ETIME`, a wait whose time ran out.
    pub fn submit(&mut self) -> io::Result<()> {
        self.sq.sync();
        let r = self.submitter.submit();
        self.after_submit(r)
    }

    /// Submits what is queued and waits for at least `want` completions (or a signal). With a
    /// batch wait ([`Ring::batch_wait`]) the wait holds out that long for
    /// [`BATCH_WAIT_COMPLETIONS`], then returns with what there is, or at the first completion
    /// after that.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        self.sq.sync();
        let r = if self.modes.batch_wait_us == 0 {
            self.submitter.submit_and_wait(want)
        } else {
            // Without a general timeout the kernel would end the wait when the batch's time is up
            // even with nothing to hand back (`ETIME`); with one, it waits on for the first
            // completion. The worker's tick completes well within it.
            const AFTER_BATCH: Timespec = Timespec::new().sec(60);
            let args = types::SubmitArgs::new()
                .min_wait_usec(self.modes.batch_wait_us)
                .timespec(&AFTER_BATCH);
            self.submitter
                .submit_with_args(want.max(BATCH_WAIT_COMPLETIONS), &args)
        };
        self.after_submit(r)
    }

    /// What has been submitted so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn after_submit(&mut self, r: io::Result<usize>) -> io::Result<()> {
        self.counts.enters += 1;
        if let Ok(n) = r {
            self.counts.sqes += n as u64;
        }
        self.sq.sync();
        if self.sq.is_empty() {
            self.unsubmitted = [false; 2];
        }
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The error that made a submission impossible, if one did.
    pub fn take_fatal(&mut self) -> Option<io::Error> {
        self.fatal.take()
    }

    /// A multishot accept on `listener` (Linux 5.19); accepted sockets are close-on-exec.
    pub fn accept_multi(&mut self, listener: BorrowedFd<'_>, token: Token) {
        let e = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.encode());
        // SAFETY: an accept references no user memory.
        unsafe { self.push(&e) };
    }

    /// Installs `fd`, the socket of slot `slot`, in the ring's file table at index `slot` (a
    /// synchronous `IORING_REGISTER_FILES_UPDATE`, Linux 5.5): the slot's receives and sends name
    /// the entry from now on. `Ok(false)` without a table or for a slot beyond it; on `Ok(false)`
    /// and on an error the slot keeps using `fd`. The entry holds its own reference to the socket
    /// until [`uninstall`](Self::uninstall), which must come before `fd` is closed.
    pub fn install(&mut self, slot: u32, fd: BorrowedFd<'_>) -> io::Result<bool> {
        if slot >= self.table {
            return Ok(false);
        }
        let i = slot as usize;
        if i >= self.direct.len() {
            self.direct.resize(i + 1, -1);
        }
        // Unrecorded until the kernel has the new socket: a failed update leaves the slot on `fd`.
        self.direct[i] = -1;
        self.submitter
            .register_files_update(slot, &[fd.as_raw_fd()])?;
        self.direct[i] = fd.as_raw_fd();
        Ok(true)
    }

    /// Clears slot `slot`'s entry of the file table, if it holds a socket: the kernel drops its
    /// reference (operations still in flight keep theirs), so closing the slot's descriptor next
    /// really closes the socket. Called before the descriptor is closed.
    pub fn uninstall(&mut self, slot: u32) {
        let Some(entry) = self.direct.get_mut(slot as usize).filter(|e| **e >= 0) else {
            return;
        };
        *entry = -1;
        if let Err(e) = self.submitter.register_files_update(slot, &[-1]) {
            // The entry keeps the socket open until the slot's next install replaces it; nothing
            // names it meanwhile (unrecorded).
            error!(slot, error = %e, "clearing a direct descriptor failed");
        }
    }

    /// What an operation of slot `slot` on `fd` names: the slot's table entry if it holds this
    /// very socket, else the descriptor.
    fn target(&self, slot: u32, fd: BorrowedFd<'_>) -> Target {
        let fd = fd.as_raw_fd();
        if self.direct.get(slot as usize) == Some(&fd) {
            Target::Fixed(types::Fixed(slot))
        } else {
            Target::Fd(types::Fd(fd))
        }
    }

    /// A multishot receive on `fd` (slot `token.slot`'s socket, through its direct descriptor if
    /// it has one) into the registered buffers (Linux 6.0), asking for bundles (several buffers
    /// per completion, `IORING_RECVSEND_BUNDLE`, Linux 6.10) if the buffers take them.
    pub fn recv_multi(&mut self, fd: BorrowedFd<'_>, token: Token) {
        let group = self.group;
        let target = self.target(token.slot, fd);
        let e = if self.modes.bundles {
            on_target!(target, |f| opcode::RecvMultiBundle::new(f, group).build())
        } else {
            on_target!(target, |f| opcode::RecvMulti::new(f, group).build())
        };
        let e = e.user_data(token.encode());
        // SAFETY: the receive picks buffers from the registered ring, which the `Ring` keeps mapped
        // until after it is closed; it references no other memory.
        unsafe { self.push(&e) };
    }

    /// A one-shot receive on `fd` (slot `token.slot`'s socket, through its direct descriptor if
    /// it has one) into `landing`'s room; the landing is in the air until [`Landing::land`] with
    /// `token` gives its buffer back. Returns false if nothing was submitted (no room, already in
    /// the air, or the queue failed).
    pub fn recv_into(&mut self, fd: BorrowedFd<'_>, token: Token, landing: &mut Landing) -> bool {
        let target = self.target(token.slot, fd);
        let Some((ptr, len)) = landing.arm(token) else {
            return false;
        };
        let e = on_target!(target, |f| opcode::Recv::new(f, ptr, len).build());
        // SAFETY: the entry points at `len` bytes of the landing's buffer's spare capacity. The
        // landing is now in the air under `token`: it gives the buffer back only to `land` with
        // this token (this receive's completion) and leaks it if dropped in the air, so the memory
        // stays valid and nothing else reads or writes it until the kernel is done with it.
        if unsafe { self.push(&e.user_data(token.encode())) } {
            true
        } else {
            landing.disarm(token);
            false
        }
    }

    /// Sends what `flight` carries on `fd` (slot `token.slot`'s socket, through its direct
    /// descriptor if it has one); the flight is in the air until [`Flight::finish`] with `token`
    /// lands it. A flight of at least [`Ring::zero_copy_sends`]' bytes may go zero-copy: the
    /// kernel then reads its memory until the send's notification, and the flight holds it until
    /// then (the queue goes on at the send's result). Returns false if nothing was submitted (the
    /// flight is empty or already in the air, or the queue failed).
    pub fn send(&mut self, fd: BorrowedFd<'_>, token: Token, flight: &mut Flight) -> bool {
        let target = self.target(token.slot, fd);
        let e = match flight.arm(token, self.modes.zero_copy_from) {
            None => return false,
            Some((Armed::Single { ptr, len }, false)) => on_target!(target, |f| {
                opcode::Send::new(f, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }),
            Some((Armed::Vectored(msg), false)) => on_target!(target, |f| {
                opcode::SendMsg::new(f, msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }),
            Some((Armed::Single { ptr, len }, true)) => on_target!(target, |f| {
                opcode::SendZc::new(f, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .zc_flags(SEND_ZC_REPORT_USAGE)
                    .build()
            }),
            Some((Armed::Vectored(msg), true)) => on_target!(target, |f| {
                opcode::SendMsgZc::new(f, msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .ioprio(SEND_ZC_REPORT_USAGE)
                    .build()
            }),
        };
        // SAFETY: the entry points into `flight`: its chunks' heap bytes, its iovec array and its
        // boxed message header. The flight is now in the air under `token`: it refuses to load or
        // re-arm and hands its chunks back only to `finish` with this token (this send's result),
        // and leaks them if dropped in the air. The iovecs and header are read by the kernel only
        // until the result; a zero-copy send's chunks are then held by the flight (`Landed::hold`)
        // until no notification is due, and leaked with it if it is dropped before. So the memory
        // stays valid and unmodified until the kernel is done with it.
        if unsafe { self.push(&e.user_data(token.encode())) } {
            true
        } else {
            flight.disarm(token);
            false
        }
    }

    /// A multishot poll for input on `fd` (an eventfd).
    pub fn poll_multi(&mut self, fd: BorrowedFd<'_>, token: Token) {
        let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token.encode());
        // SAFETY: a poll references no user memory.
        unsafe { self.push(&e) };
    }

    /// A timeout on `clock`: at `when` on `CLOCK_MONOTONIC` ([`Clock::Tick`], absolute, see
    /// [`sys::monotonic`]) or after `when` ([`Clock::Wakeup`], relative).
    pub fn timeout(&mut self, clock: Clock, when: Duration, token: Token) {
        let i = clock as usize;
        if self.unsubmitted[i] {
            // The queued timeout still reads the stored value: submit it before rewriting it.
            if let Err(e) = self.submit() {
                self.fatal = Some(e);
                return;
            }
            if self.unsubmitted[i] {
                self.fatal = Some(io::Error::other("a timeout could not be submitted"));
                return;
            }
        }
        *self.timespecs[i] = Timespec::from(when);
        let mut op = opcode::Timeout::new(&*self.timespecs[i]);
        if matches!(clock, Clock::Tick) {
            op = op.flags(TimeoutFlags::ABS);
        }
        self.unsubmitted[i] = true;
        // SAFETY: the kernel copies the boxed timespec when the entry is submitted; it is rewritten
        // only once no queued entry references it (`unsubmitted`), and the box lives as long as
        // this `Submit`.
        unsafe { self.push(&op.build().user_data(token.encode())) };
    }

    /// Posts a completion tagged `data` (result 0) to the ring `target` (`IORING_OP_MSG_RING`,
    /// Linux 5.18) and submits at once: a wake-up must not wait for this ring's next turn. The
    /// kernel takes its reference to `target` when the entry is submitted, so the caller keeps the
    /// descriptor open until this returns. A successful post completes nothing here
    /// (`IOSQE_CQE_SKIP_SUCCESS`, 5.17); a failed one completes under `token`.
    pub fn msg_ring(&mut self, target: BorrowedFd<'_>, data: Token, token: Token) {
        let e = opcode::MsgRingData::new(types::Fd(target.as_raw_fd()), 0, data.encode(), None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(token.encode());
        // SAFETY: a message references no user memory.
        if unsafe { self.push(&e) }
            && let Err(e) = self.submit()
        {
            self.fatal = Some(e);
        }
    }

    /// A no-op that completes at once (a wake-up that is already due).
    pub fn nop(&mut self, token: Token) {
        // SAFETY: a no-op references nothing.
        unsafe { self.push(&opcode::Nop::new().build().user_data(token.encode())) };
    }

    /// Cancels the operation tagged `target`. Nothing waits for the cancel's own completion (the
    /// target's completion reports the outcome), so where the ring allows it a successful cancel
    /// posts none (`IOSQE_CQE_SKIP_SUCCESS`); a failed one (the target already finished) still does.
    pub fn cancel(&mut self, target: Token) {
        let flags = if self.modes.skip_cancel {
            squeue::Flags::SKIP_SUCCESS
        } else {
            squeue::Flags::empty()
        };
        let e = opcode::AsyncCancel::new(target.encode())
            .build()
            .flags(flags)
            .user_data(Token::new(Op::Cancel, target.slot, 0).encode());
        // SAFETY: a cancel references no user memory.
        unsafe { self.push(&e) };
    }

    /// Connects `fd` to `addr` (Linux 5.5). The address is kept until
    /// [`connect_done`](Self::connect_done) with the same token.
    pub fn connect(&mut self, fd: BorrowedFd<'_>, addr: SockAddr, token: Token) {
        let addr = Box::new(addr);
        let e = opcode::Connect::new(
            types::Fd(fd.as_raw_fd()),
            addr.as_ptr().cast::<libc::sockaddr>(),
            addr.len(),
        )
        .build()
        .user_data(token.encode());
        // SAFETY: the boxed address is kept in `connects` until this connect's completion calls
        // `connect_done` (or leaked if the ring side is dropped first), so it stays valid while
        // the kernel may read it.
        if unsafe { self.push(&e) } {
            self.connects.insert(token.encode(), addr);
        } else {
            std::mem::forget(addr);
        }
    }

    /// The connect tagged `token` completed: its address may go.
    pub fn connect_done(&mut self, token: Token) {
        self.connects.remove(&token.encode());
    }
}

impl Drop for Submit<'_> {
    fn drop(&mut self) {
        // A worker that exits with connects in flight leaks their addresses rather than free
        // memory the kernel may still read.
        for (_, addr) in self.connects.drain() {
            std::mem::forget(addr);
        }
    }
}

/// What a connection's operation names: its direct descriptor or its descriptor.
/// Builds an entry with `$build` on either kind of [`Target`]: the `io-uring` opcodes take a
/// descriptor or a table entry through a sealed trait, so the two are separate types.
macro_rules! on_target {
    ($target:expr, |$f:ident| $build:expr) => {
        match $target {
            Target::Fixed($f) => $build,
            Target::Fd($f) => $build,
        }
    };
}
use on_target;

#[derive(Debug, Clone, Copy)]
enum Target {
    Fixed(types::Fixed),
    Fd(types::Fd),
}

/// One completion. Not `Clone`: the socket of an accept completion is taken once.
#[derive(Debug)]
pub(crate) struct Cqe {
    /// The operation, decoded from the user data (`None`: unknown user data).
    pub token: Option<Token>,
    /// The result: a count or descriptor, or a negative errno.
    pub result: i32,
    flags: u32,
}

/// One completion of a send. A plain send completes once; a zero-copy send twice: its result,
/// then a notification once the kernel no longer reads its memory (`IORING_CQE_F_NOTIF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendCqe {
    /// The send is over: bytes written, or a negative errno.
    Done(i32),
    /// A zero-copy send's result (bytes or a negative errno); its memory is still the kernel's
    /// until the notification.
    Sent(i32),
    /// A zero-copy send's notification: the kernel is done with the memory. `copied`: it copied
    /// the bytes after all (a loopback or otherwise local peer, or a device without
    /// scatter-gather), so zero-copy saved nothing.
    Released { copied: bool },
}

impl Cqe {
    /// Takes up to `max` completions from `cq` into `into`.
    pub fn drain(cq: &mut CompletionQueue<'_>, into: &mut Vec<Cqe>, max: usize) {
        cq.sync();
        into.extend(cq.by_ref().take(max).map(|c| Cqe {
            token: Token::decode(c.user_data()),
            result: c.result(),
            flags: c.flags(),
        }));
        cq.sync();
    }

    /// Whether the multishot operation stays armed (`IORING_CQE_F_MORE`).
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// What a send's completion says about the send ([`Flight::finish`] takes it).
    pub fn send(&self) -> SendCqe {
        if cqueue::notif(self.flags) {
            SendCqe::Released {
                copied: self.result & NOTIF_USAGE_ZC_COPIED != 0,
            }
        } else if cqueue::more(self.flags) {
            SendCqe::Sent(self.result)
        } else {
            SendCqe::Done(self.result)
        }
    }

    /// The provided buffer the completion filled (or consumed), if any; for a receive bundle, the
    /// first of the buffers it filled.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether the kernel keeps the completion's buffer for more receives
    /// (`IORING_CQE_F_BUF_MORE`, incremental consumption only).
    pub fn buffer_kept(&self) -> bool {
        cqueue::buffer_more(self.flags)
    }

    /// The socket an accept completion delivered, owned by the caller from now on; `None` for
    /// other completions and failed accepts.
    pub fn accepted(self) -> Option<OwnedFd> {
        let is_accept = self.token.is_some_and(|t| t.op == Op::Accept);
        (is_accept && self.result >= 0).then(|| {
            // SAFETY: a non-negative result of an accept is a new descriptor that nothing else in
            // this process refers to; a `Cqe` is made once per completion and consumed here.
            unsafe { OwnedFd::from_raw_fd(self.result) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// The table index an operation of `slot` on `fd` names, if any.
    fn fixed(submit: &Submit<'_>, slot: u32, fd: BorrowedFd<'_>) -> Option<u32> {
        match submit.target(slot, fd) {
            Target::Fixed(f) => Some(f.0),
            Target::Fd(f) => {
                assert_eq!(f.0, fd.as_raw_fd());
                None
            }
        }
    }

    #[test]
    fn a_slot_names_its_entry_only_for_the_socket_installed_there() {
        let mut ring = Ring::new(8, false).unwrap();
        ring.register_buffers(Buffers::new(0, 2, 512, false, false).unwrap())
            .unwrap();
        assert_eq!(ring.register_direct(4).unwrap(), 4);
        let (a, b) = UnixStream::pair().unwrap();
        // An io_uring descriptor: the kernel refuses to install one in a file table.
        let refused = ring.try_clone_fd().unwrap();
        let (mut submit, _, _) = ring.split().unwrap();
        assert!(submit.install(1, a.as_fd()).unwrap());
        assert_eq!(fixed(&submit, 1, a.as_fd()), Some(1));
        // Another socket at that slot (a stale slot, a reused descriptor number) or the socket at
        // another slot: the descriptor.
        assert_eq!(fixed(&submit, 1, b.as_fd()), None);
        assert_eq!(fixed(&submit, 2, a.as_fd()), None);
        // Beyond the table: not installed, the descriptor.
        assert!(!submit.install(4, b.as_fd()).unwrap());
        assert_eq!(fixed(&submit, 4, b.as_fd()), None);
        // Cleared: the descriptor again, and the entry can take another socket.
        submit.uninstall(1);
        assert_eq!(fixed(&submit, 1, a.as_fd()), None);
        assert!(submit.install(1, b.as_fd()).unwrap());
        assert_eq!(fixed(&submit, 1, b.as_fd()), Some(1));
        // A descriptor the kernel refuses leaves the slot on its descriptor.
        assert!(submit.install(2, refused.as_fd()).is_err());
        assert_eq!(fixed(&submit, 2, refused.as_fd()), None);
    }

    #[test]
    fn without_a_table_every_operation_names_its_descriptor() {
        let mut ring = Ring::new(8, false).unwrap();
        ring.register_buffers(Buffers::new(0, 2, 512, false, false).unwrap())
            .unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let (mut submit, _, _) = ring.split().unwrap();
        assert!(!submit.install(0, a.as_fd()).unwrap());
        assert_eq!(fixed(&submit, 0, a.as_fd()), None);
        submit.uninstall(0);
    }
}
