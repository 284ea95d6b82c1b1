//! What the running kernel offers the engine, probed rather than guessed from its version: every
//! io_uring feature the workers use, each tried on a small throwaway ring, and the locked memory
//! (`RLIMIT_MEMLOCK`) the workers' rings are charged.
//!
//! [`Server::build`](crate::Server::build) runs the same probe and refuses to start on the first
//! missing required feature; `ringws check` prints the whole report.
//!
//! ```no_run
//! let report = ringws_engine::ProbeReport::run();
//! if let Some(e) = report.setup_error() {
//!     println!("no io_uring: {e}");
//! }
//! for f in report.features() {
//!     println!("{} (Linux {}): {:?}", f.name, f.kernel, f.support);
//! }
//! ```

use super::sys::page_size;
use super::{Buffers, Ring, TaskRun};
use crate::error::EngineError;
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Whether the running kernel has a feature.
#[derive(Debug)]
pub enum Support {
    /// Probed and present.
    Yes,
    /// Probed and absent: the kernel refused it the way kernels without it do.
    No,
    /// Not probed, because a step it depends on failed (no ring, no opcode probe, no buffer ring,
    /// or the opcode itself is missing).
    Untested,
    /// The probe failed for a reason that says nothing about the feature (an unrelated OS error),
    /// so whether the kernel has it is unknown.
    Unknown(EngineError),
}

/// One io_uring feature the engine uses, and whether this kernel has it.
#[derive(Debug)]
pub struct Feature {
    /// The feature as io_uring names it.
    pub name: &'static str,
    /// The first Linux version that has it.
    pub kernel: &'static str,
    /// Whether the engine refuses to start without it; the others have a fallback.
    pub required: bool,
    /// What the probe found.
    pub support: Support,
}

/// The features, in probe order; the table below gives each its name and kernel.
#[derive(Debug, Clone, Copy)]
enum Id {
    DeferTaskrun,
    RingFd,
    RegisterProbe,
    OpAccept,
    OpRecv,
    OpSend,
    OpSendmsg,
    OpTimeout,
    OpAsyncCancel,
    OpPollAdd,
    PbufRing,
    AcceptMultishot,
    RecvMultishot,
    PbufRingInc,
    NoSqArray,
    CqeSkipSuccess,
    RecvSendBundle,
    OpSendZc,
    OpMsgRing,
    MinTimeout,
    DirectDescriptors,
}

/// Name, first kernel and whether it is required, indexed by [`Id`].
const TABLE: [(&str, &str, bool); 21] = [
    (
        "IORING_SETUP_DEFER_TASKRUN (else COOP_TASKRUN, 5.19)",
        "6.1",
        false,
    ),
    (
        "IORING_REGISTER_RING_FDS (registered ring fd)",
        "5.18",
        false,
    ),
    ("IORING_REGISTER_PROBE", "5.6", true),
    ("IORING_OP_ACCEPT", "5.5", true),
    ("IORING_OP_RECV", "5.6", true),
    ("IORING_OP_SEND", "5.6", true),
    ("IORING_OP_SENDMSG", "5.3", true),
    ("IORING_OP_TIMEOUT", "5.4", true),
    ("IORING_OP_ASYNC_CANCEL", "5.5", true),
    ("IORING_OP_POLL_ADD", "5.1", true),
    (
        "IORING_REGISTER_PBUF_RING (provided buffer rings)",
        "5.19",
        true,
    ),
    ("IORING_ACCEPT_MULTISHOT (multishot accept)", "5.19", true),
    ("IORING_RECV_MULTISHOT (multishot receive)", "6.0", true),
    (
        "IOU_PBUF_RING_INC (incremental buffer consumption)",
        "6.12",
        false,
    ),
    (
        "IORING_SETUP_NO_SQARRAY (no submission index array)",
        "6.6",
        false,
    ),
    (
        "IOSQE_CQE_SKIP_SUCCESS (no completion for a successful cancel)",
        "5.17",
        false,
    ),
    (
        "IORING_RECVSEND_BUNDLE (receive bundles, with --recv-bundles; not on 6.13-6.15.3)",
        "6.10",
        false,
    ),
    (
        "IORING_OP_SEND_ZC (zero-copy sends, --send-zc-threshold)",
        "6.0",
        false,
    ),
    (
        "IORING_OP_MSG_RING (wake-ups between workers; else eventfds)",
        "5.18",
        false,
    ),
    (
        "IORING_FEAT_MIN_TIMEOUT (batched waits, `batch_wait`)",
        "6.12",
        false,
    ),
    (
        "IORING_RSRC_REGISTER_SPARSE (direct descriptors for connections; else descriptors)",
        "5.19",
        false,
    ),
];

/// The opcodes the workers submit.
const OPS: [(Id, u8); 7] = [
    (Id::OpAccept, opcode::AcceptMulti::CODE),
    (Id::OpRecv, opcode::RecvMulti::CODE),
    (Id::OpSend, opcode::Send::CODE),
    (Id::OpSendmsg, opcode::SendMsg::CODE),
    (Id::OpTimeout, opcode::Timeout::CODE),
    (Id::OpAsyncCancel, opcode::AsyncCancel::CODE),
    (Id::OpPollAdd, opcode::PollAdd::CODE),
];

/// How long the probe waits for one of its own completions (they are immediate on a working kernel).
const PROBE_WAIT: Timespec = Timespec::new().sec(1);

/// Everything the probe found: whether a ring could be created at all, then each feature.
#[derive(Debug)]
pub struct ProbeReport {
    setup: Result<TaskRun, EngineError>,
    features: Vec<Feature>,
}

impl ProbeReport {
    /// Probes the running kernel on a throwaway ring (8 entries, a 2-buffer ring, a one-entry file
    /// table, sockets on the Unix domain), on a thread of its own: tearing a ring down queues kernel work to the
    /// thread that created it, which would interrupt that thread's next blocking call.
    pub fn run() -> Self {
        std::thread::scope(|s| s.spawn(probe_here).join()).unwrap_or_else(|_| Self {
            setup: Err(EngineError::io(
                "probing io_uring",
                io::Error::other("probe panicked"),
            )),
            features: collect(Found::default()),
        })
    }

    /// Why no io_uring instance could be created (unsupported, disabled, blocked, out of locked
    /// memory), or `None` when it could; every feature is then [`Support::Untested`].
    pub fn setup_error(&self) -> Option<&EngineError> {
        self.setup.as_ref().err()
    }

    /// Every feature the engine uses, required ones and those with a fallback, in probe order.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Whether workers can wake each other through their rings (`IORING_OP_MSG_RING`).
    pub(crate) fn msg_ring(&self) -> bool {
        matches!(self.features[Id::OpMsgRing as usize].support, Support::Yes)
    }

    /// Whether receives may ask for bundles (`IORING_RECVSEND_BUNDLE`): the kernel has them and
    /// its release is not one of those that returned a bundle's buffers out of order
    /// ([`bundles_misordered`]).
    pub(crate) fn recv_bundles(&self) -> Result<(), BundleRefusal> {
        if !matches!(
            self.features[Id::RecvSendBundle as usize].support,
            Support::Yes
        ) {
            return Err(BundleRefusal::Absent);
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_string())
            .unwrap_or_default();
        match kernel_version(&release) {
            Some(v) if !bundles_misordered(v) => Ok(()),
            _ => Err(BundleRefusal::Misordered { release }),
        }
    }

    /// The ring's task-run mode, or the error the engine refuses to start with: the setup error,
    /// else the first required feature that is missing or could not be probed.
    pub(crate) fn into_result(self) -> Result<TaskRun, EngineError> {
        let mode = self.setup?;
        for f in self.features.into_iter().filter(|f| f.required) {
            match f.support {
                Support::Yes => {}
                Support::Unknown(e) => return Err(e),
                Support::No | Support::Untested => {
                    return Err(EngineError::MissingFeature {
                        feature: f.name,
                        kernel: f.kernel,
                    });
                }
            }
        }
        Ok(mode)
    }
}

/// Why receives do not ask for bundles although the settings want them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BundleRefusal {
    /// The kernel has no `IORING_RECVSEND_BUNDLE` (before Linux 6.10).
    Absent,
    /// The kernel's release (or an unreadable one) is in the range that returned a bundle's
    /// buffers out of order.
    Misordered {
        /// `/proc/sys/kernel/osrelease` (empty if unreadable).
        release: String,
    },
}

impl std::fmt::Display for BundleRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => f.write_str("the kernel has no IORING_RECVSEND_BUNDLE (Linux 6.10)"),
            Self::Misordered { release } => write!(
                f,
                "kernel {release:?} is one that may return a bundle's buffers out of order \
                 (6.13 to 6.15.3)"
            ),
        }
    }
}

/// The (major, minor, patch) of a kernel release string (`/proc/sys/kernel/osrelease`):
/// `6.15.4-foo` -> (6, 15, 4); a missing or non-numeric patch level is 0 (`6.15-rc1`). For the
/// checks that depend on a release rather than on a probe (a fix the kernel cannot be asked about).
pub fn kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether kernel `version` is one whose multishot receive bundles may hand buffers back out of
/// the ring's order. "io_uring/net: improve recv bundles" (6.15, backported to 6.13.11 and 6.14)
/// broke the order (liburing issue 1409, fixed by "io_uring/net: only retry recv bundle for a
/// full transfer" in 6.14.9 and 6.15), and with incremental consumption it over-consumed
/// buffers (issues 1423 and 1432, test `recv-inc-ooo`) until "io_uring/net: always use current
/// transfer count for buffer put" (6.16, 6.15.4, 6.12.y; 6.13 and 6.14 had reached their end of
/// life). So everything from 6.13 to 6.15.3 is refused; 6.12.y took the three together.
pub(crate) fn bundles_misordered(version: (u32, u32, u32)) -> bool {
    ((6, 13, 0)..(6, 15, 4)).contains(&version)
}

/// What the probe found so far, indexed by [`Id`]; `None` is untested.
#[derive(Default)]
struct Found([Option<Support>; TABLE.len()]);

impl Found {
    fn set(&mut self, id: Id, support: Support) {
        self.0[id as usize] = Some(support);
    }
}

fn collect(found: Found) -> Vec<Feature> {
    TABLE
        .iter()
        .zip(found.0)
        .map(|(&(name, kernel, required), support)| Feature {
            name,
            kernel,
            required,
            support: support.unwrap_or(Support::Untested),
        })
        .collect()
}

/// `Yes` or `No`.
fn yes_if(present: bool) -> Support {
    if present { Support::Yes } else { Support::No }
}

/// `No` for `EINVAL` (how kernels refuse what they do not know), otherwise an unknown outcome.
fn no_if_einval(context: &'static str, e: io::Error) -> Support {
    if e.raw_os_error() == Some(libc::EINVAL) {
        Support::No
    } else {
        Support::Unknown(EngineError::io(context, e))
    }
}

/// Runs the probe on the calling thread (see [`ProbeReport::run`] for why that should be a thread
/// of its own).
pub(crate) fn probe_here() -> ProbeReport {
    let mut found = Found::default();
    let mut ring = match Ring::new(8, true) {
        Ok(r) => r,
        Err(e) => {
            return ProbeReport {
                setup: Err(e),
                features: collect(found),
            };
        }
    };
    let mode = ring.mode();
    let report = |found| ProbeReport {
        setup: Ok(mode),
        features: collect(found),
    };
    found.set(Id::DeferTaskrun, yes_if(mode == TaskRun::Deferred));
    // The ring is built without the index array where the kernel accepts that (else without the
    // flag, after its EINVAL); the kernel reports the skip-on-success feature at setup.
    found.set(Id::NoSqArray, yes_if(ring.no_sq_array()));
    found.set(
        Id::CqeSkipSuccess,
        yes_if(ring.skip_cancel_completions(true)),
    );
    found.set(
        Id::MinTimeout,
        yes_if(ring.batch_wait(Duration::from_micros(1))),
    );
    found.set(
        Id::RingFd,
        // A throwaway submitter: only whether the kernel takes the registration matters here.
        match ring.uring.submitter().register_ring_fd() {
            Ok(()) => Support::Yes,
            Err(e) => no_if_einval("registering the ring fd", e),
        },
    );
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.uring.submitter().register_probe(&mut probe) {
        found.set(
            Id::RegisterProbe,
            no_if_einval("registering an opcode probe", e),
        );
        return report(found);
    }
    found.set(Id::RegisterProbe, Support::Yes);
    for (id, code) in OPS {
        found.set(id, yes_if(probe.is_supported(code)));
    }
    found.set(
        Id::RecvSendBundle,
        yes_if(ring.uring.params().is_feature_recvsend_bundle()),
    );
    found.set(
        Id::OpSendZc,
        yes_if(probe.is_supported(opcode::SendZc::CODE)),
    );
    found.set(
        Id::OpMsgRing,
        yes_if(probe.is_supported(opcode::MsgRingData::CODE)),
    );
    let registered = Buffers::new(0, 2, 512, false, false).and_then(|b| ring.register_buffers(b));
    if let Err(e) = registered {
        found.set(
            Id::PbufRing,
            no_if_einval("registering a provided buffer ring", e),
        );
        return report(found);
    }
    found.set(Id::PbufRing, Support::Yes);
    if probe.is_supported(opcode::AcceptMulti::CODE) {
        found.set(Id::AcceptMultishot, probe_multishot_accept(&mut ring.uring));
    }
    if probe.is_supported(opcode::RecvMulti::CODE) {
        found.set(
            Id::RecvMultishot,
            probe_multishot_recv(&mut ring.uring, 0, false),
        );
        found.set(
            Id::DirectDescriptors,
            probe_multishot_recv(&mut ring.uring, 0, true),
        );
    }
    found.set(
        Id::PbufRingInc,
        match ring.try_incremental(1) {
            Ok(()) => Support::Yes,
            Err(e) => no_if_einval("registering an incremental buffer ring", e),
        },
    );
    report(found)
}

/// Submits `sqe` and returns its completion, skipping completions of earlier probes; waits at most
/// [`PROBE_WAIT`] per completion and looks at no more than four.
fn complete(
    ring: &mut IoUring,
    sqe: &io_uring::squeue::Entry,
    context: &'static str,
) -> Result<cqueue::Entry, EngineError> {
    let want = sqe.get_user_data();
    // SAFETY: callers build `sqe` from descriptors that stay open until it completes or the ring is
    // dropped (which cancels it), and buffers only from the registered buffer ring.
    unsafe { ring.submission().push(sqe) }
        .map_err(|_| EngineError::io(context, io::Error::other("submission queue full")))?;
    for _ in 0..4 {
        let args = SubmitArgs::new().timespec(&PROBE_WAIT);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                return Err(EngineError::io(
                    context,
                    io::Error::other("no completion within 1 s"),
                ));
            }
            Err(e) => return Err(EngineError::io(context, e)),
        }
        if let Some(cqe) = ring.completion().find(|c| c.user_data() == want) {
            return Ok(cqe);
        }
    }
    Err(EngineError::io(
        context,
        io::Error::other("completion never arrived"),
    ))
}

/// Classifies a multishot completion that should carry `expect(result)` and `IORING_CQE_F_MORE`:
/// kernels without the multishot flag reject the request with `EINVAL` or complete it once.
fn multishot_outcome(
    cqe: Result<cqueue::Entry, EngineError>,
    context: &'static str,
    expect: impl Fn(i32) -> bool,
) -> Support {
    match cqe {
        Ok(c) if expect(c.result()) => yes_if(cqueue::more(c.flags())),
        Ok(c) if c.result() == -libc::EINVAL => Support::No,
        Ok(c) => Support::Unknown(EngineError::io(
            context,
            io::Error::from_raw_os_error(-c.result()),
        )),
        Err(e) => Support::Unknown(e),
    }
}

/// Arms a multishot accept on a listening Unix socket with one connection waiting, and checks the
/// completion carries a descriptor and `IORING_CQE_F_MORE`. Unix sockets keep the probe off the
/// network (a container may have no loopback); the abstract namespace keeps it off the filesystem.
fn probe_multishot_accept(ring: &mut IoUring) -> Support {
    const CONTEXT: &str = "probing multishot accept";
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ringws-probe-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let listen = || -> io::Result<(UnixListener, UnixStream)> {
        let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let client = UnixStream::connect_addr(&addr)?;
        Ok((listener, client))
    };
    let (listener, _client) = match listen() {
        Ok(pair) => pair,
        Err(e) => return Support::Unknown(EngineError::io(CONTEXT, e)),
    };
    let sqe = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(2);
    let cqe = complete(ring, &sqe, CONTEXT);
    if let Ok(c) = &cqe
        && c.result() >= 0
    {
        // SAFETY: a non-negative accept result is a new descriptor this process owns and nothing
        // else refers to; wrapping it closes it.
        drop(unsafe { OwnedFd::from_raw_fd(c.result()) });
    }
    multishot_outcome(cqe, CONTEXT, |r| r >= 0)
}

/// Arms a multishot receive on one end of a socket pair, writes a byte into the other, and checks the
/// completion carries the byte and `IORING_CQE_F_MORE`. With `direct`, the receiving end is first
/// installed at index 0 of a one-entry sparse file table (as the workers install connections) and
/// the receive names that entry; a kernel without sparse tables refuses the table with `EINVAL`.
fn probe_multishot_recv(ring: &mut IoUring, group: u16, direct: bool) -> Support {
    const CONTEXT: &str = "probing multishot receive";
    const DIRECT: &str = "probing direct descriptors";
    let (a, mut b) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => return Support::Unknown(EngineError::io(CONTEXT, e)),
    };
    if let Err(e) = io::Write::write_all(&mut b, b"x") {
        return Support::Unknown(EngineError::io(CONTEXT, e));
    }
    // Distinct user data: the plain probe's receive may complete again (its pair is gone: EOF).
    let (sqe, context) = if direct {
        let submitter = ring.submitter();
        if let Err(e) = submitter.register_files_sparse(1) {
            return no_if_einval(DIRECT, e);
        }
        if let Err(e) = submitter.register_files_update(0, &[a.as_raw_fd()]) {
            return Support::Unknown(EngineError::io(DIRECT, e));
        }
        let sqe = opcode::RecvMulti::new(types::Fixed(0), group).build();
        (sqe.user_data(3), DIRECT)
    } else {
        let sqe = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), group).build();
        (sqe.user_data(1), CONTEXT)
    };
    multishot_outcome(complete(ring, &sqe, context), context, |r| r == 1)
}

/// Locked memory the engine's io_uring memory is charged against `RLIMIT_MEMLOCK`, which kernels
/// before 5.12 and from 6.14 on enforce for processes without `CAP_IPC_LOCK` (5.12 to 6.13 charge
/// the memory cgroup instead). The charge is per user: all of one user's rings count together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockNeed {
    /// Bytes per worker: its submission queue entries, its SQ/CQ rings and its provided-buffer ring,
    /// each rounded up to whole pages as the kernel charges them.
    pub per_worker: u64,
    /// Bytes of the start-up probe's ring, which may still be charged while the workers start: the
    /// kernel frees a ring's memory asynchronously after it is closed.
    pub probe: u64,
    /// The whole server: `workers x per_worker + probe`.
    pub total: u64,
}

impl MemlockNeed {
    /// The charge for `workers` rings of `ring_entries` with `buffer_count` provided buffers each,
    /// computed the way the kernel sizes the memory (`IORING_SETUP_CLAMP`, power-of-two queues,
    /// 64-byte SQEs, 16-byte CQEs and buffer ring entries, 4-byte SQ index unless `no_sq_array`).
    /// `MemlockNeed::of` computes it for a `Config`.
    ///
    /// `no_sq_array` is taken as granted: every kernel that charges `RLIMIT_MEMLOCK` and runs the
    /// engine (6.14 on; 5.12 to 6.13 charge the cgroup, and multishot receive needs 6.0) has
    /// `IORING_SETUP_NO_SQARRAY` (6.6).
    pub(crate) fn new(
        workers: usize,
        ring_entries: u32,
        buffer_count: u16,
        no_sq_array: bool,
    ) -> Self {
        let page = page_size();
        let per_worker = ring_bytes(ring_entries, page, !no_sq_array)
            + round_up(u64::from(buffer_count) * 16, page);
        // The probe: an 8-entry ring without the index array and a 2-entry buffer ring.
        let probe = ring_bytes(8, page, false) + round_up(2 * 16, page);
        let workers = u64::try_from(workers).unwrap_or(u64::MAX);
        Self {
            per_worker,
            probe,
            total: workers.saturating_mul(per_worker).saturating_add(probe),
        }
    }
}

fn round_up(bytes: u64, page: u64) -> u64 {
    bytes.div_ceil(page) * page
}

/// Bytes charged for a ring built by [`Ring::new`]`(entries, !sq_array)`: the SQE array, and the
/// region holding the ring header (one 64-byte cache line), the CQEs and, if `sq_array`, the SQ
/// index array.
fn ring_bytes(entries: u32, page: u64, sq_array: bool) -> u64 {
    const MAX_ENTRIES: u32 = 32768; // IORING_MAX_ENTRIES
    const MAX_CQ_ENTRIES: u32 = 2 * MAX_ENTRIES;
    let sq = u64::from(entries.clamp(1, MAX_ENTRIES).next_power_of_two());
    let cq = u64::from(
        entries
            .saturating_mul(4)
            .clamp(1, MAX_CQ_ENTRIES)
            .next_power_of_two(),
    );
    let index = if sq_array { sq * 4 } else { 0 };
    let rings = (64 + cq * 16).next_multiple_of(64) + index;
    round_up(sq * 64, page) + round_up(rings, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_refused_on_the_kernels_that_misordered_them() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(kernel_version("6.15-rc1"), Some((6, 15, 0)));
        assert_eq!(kernel_version("6.14.11+"), Some((6, 14, 11)));
        assert_eq!(kernel_version("garbage"), None);
        for ok in [
            (6, 10, 0),
            (6, 12, 40),
            (6, 15, 4),
            (6, 16, 0),
            (6, 18, 2),
            (7, 0, 0),
        ] {
            assert!(!bundles_misordered(ok), "{ok:?}");
        }
        for bad in [(6, 13, 0), (6, 13, 11), (6, 14, 11), (6, 15, 0), (6, 15, 3)] {
            assert!(bundles_misordered(bad), "{bad:?}");
        }
    }

    #[test]
    fn this_kernel_has_every_feature() {
        // The development and benchmark machines run Linux 6.18, which has all of them.
        let report = ProbeReport::run();
        assert!(report.setup_error().is_none(), "{:?}", report.setup_error());
        assert_eq!(report.features().len(), TABLE.len());
        for f in report.features() {
            assert!(matches!(f.support, Support::Yes), "{f:?}");
        }
        assert_eq!(report.recv_bundles(), Ok(()), "6.18 takes receive bundles");
        assert_eq!(report.into_result().unwrap(), TaskRun::Deferred);
    }

    #[test]
    fn a_missing_required_feature_is_the_start_up_error() {
        let mut found = Found::default();
        found.set(Id::DeferTaskrun, Support::No); // optional: not an error
        for (id, _) in OPS {
            found.set(id, Support::Yes);
        }
        found.set(Id::RegisterProbe, Support::Yes);
        found.set(Id::PbufRing, Support::No);
        let report = ProbeReport {
            setup: Ok(TaskRun::Cooperative),
            features: collect(found),
        };
        assert_eq!(
            report.features()[Id::RecvMultishot as usize].name,
            TABLE[Id::RecvMultishot as usize].0
        );
        assert!(matches!(
            report.features()[Id::RecvMultishot as usize].support,
            Support::Untested
        ));
        match report.into_result() {
            Err(EngineError::MissingFeature { feature, kernel }) => {
                assert!(
                    feature.starts_with("IORING_REGISTER_PBUF_RING"),
                    "{feature}"
                );
                assert_eq!(kernel, "5.19");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_setup_leaves_every_feature_untested() {
        let report = ProbeReport {
            setup: Err(EngineError::IoUringBlocked),
            features: collect(Found::default()),
        };
        assert!(
            report
                .features()
                .iter()
                .all(|f| matches!(f.support, Support::Untested))
        );
        assert!(matches!(
            report.into_result(),
            Err(EngineError::IoUringBlocked)
        ));
    }

    #[test]
    fn memlock_of_the_defaults_matches_the_measured_charge() {
        // Measured on Linux 6.18 as an unprivileged user (tuning/README.md): 268 KiB for a 2048/8192
        // ring, 16 KiB for a 1024-entry buffer ring. The default buffer ring has 512 entries: 8 KiB.
        if page_size() != 4096 {
            eprintln!("SKIP memlock_of_the_defaults...: the measurement used 4 KiB pages");
            return;
        }
        // Without the SQ index array (8 KiB of it) the ring region is 2 pages smaller: 260 KiB.
        assert_eq!(ring_bytes(2048, 4096, true), 268 << 10);
        assert_eq!(ring_bytes(2048, 4096, false), 260 << 10);
        let need = MemlockNeed::new(2, 2048, 512, false);
        assert_eq!(need.per_worker, (268 + 8) << 10);
        assert_eq!(need.probe, 12 << 10);
        assert_eq!(need.total, 2 * need.per_worker + need.probe);
        let bigger = MemlockNeed::new(2, 2048, 1024, false);
        assert_eq!(bigger.per_worker, (268 + 16) << 10);
        assert_eq!(
            MemlockNeed::new(2, 2048, 512, true).per_worker,
            (260 + 8) << 10
        );
    }

    #[test]
    fn ring_sizes_round_and_clamp_like_the_kernel() {
        // 3 entries become 4 SQEs (1 page) and 16 CQEs; 32768 clamps the CQ to 65536 entries.
        assert_eq!(ring_bytes(3, 4096, true), 4096 + 4096);
        assert_eq!(ring_bytes(3, 4096, false), 4096 + 4096);
        assert_eq!(
            ring_bytes(32768, 4096, true),
            32768 * 64 + (64 + 65536 * 16 + 32768 * 4_u64).next_multiple_of(4096)
        );
    }
}
