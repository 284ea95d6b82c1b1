//! Ring creation and the start-up feature probe.
//!
//! Each worker builds its ring on its own thread with `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): completions
//! are produced only when the worker waits for them, never as interrupts in the middle of a callback.
//! Kernels without it fall back to `COOP_TASKRUN` (5.19), then to no flags. [`probe`] runs once before
//! any worker starts and refuses to start, naming the feature and kernel version, if a required
//! feature is missing.

use crate::error::EngineError;
use io_uring::{IoUring, Probe, cqueue, opcode, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How a ring was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskRun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1).
    Deferred,
    /// `COOP_TASKRUN` (Linux 5.19).
    Cooperative,
    /// Neither.
    Plain,
}

/// Creates a ring with `entries` submission entries and four times as many completion entries, with
/// the best task-run mode the kernel accepts.
pub(crate) fn new_ring(entries: u32) -> Result<(IoUring, TaskRun), EngineError> {
    let cq = entries.saturating_mul(4);
    let attempts = [TaskRun::Deferred, TaskRun::Cooperative, TaskRun::Plain];
    let mut last = None;
    for mode in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        match mode {
            TaskRun::Deferred => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            TaskRun::Cooperative => {
                b.setup_coop_taskrun();
            }
            TaskRun::Plain => {}
        }
        match b.build(entries) {
            Ok(ring) => return Ok((ring, mode)),
            // EINVAL: this kernel does not know the flag; try the next mode.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(EngineError::from_setup(e)),
        }
    }
    Err(EngineError::from_setup(last.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

/// Opcodes the engine submits, with the kernel that introduced each.
const REQUIRED_OPS: [(u8, &str, &str); 6] = [
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT", "5.4"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD", "5.1"),
];

/// Checks, on a throwaway ring, everything the workers will need: io_uring itself, the opcodes,
/// provided buffer rings (5.19) and multishot receive (6.0, which implies multishot accept, 5.19).
pub(crate) fn probe() -> Result<TaskRun, EngineError> {
    let (mut ring, mode) = new_ring(8)?;
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Err(EngineError::MissingFeature {
            feature: "IORING_REGISTER_PROBE",
            kernel: "5.6",
        });
    }
    for (code, feature, kernel) in REQUIRED_OPS {
        if !probe.is_supported(code) {
            return Err(EngineError::MissingFeature { feature, kernel });
        }
    }
    let bufs = crate::bufring::BufRing::new(&ring.submitter(), 0, 2, 512).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            EngineError::MissingFeature {
                feature: "IORING_REGISTER_PBUF_RING (provided buffer rings)",
                kernel: "5.19",
            }
        } else {
            EngineError::io("registering a provided buffer ring", e)
        }
    })?;
    probe_multishot_recv(&mut ring, bufs.group())?;
    drop(ring); // the ring goes before the buffers it may reference
    drop(bufs);
    Ok(mode)
}

/// Arms a multishot receive on one end of a socket pair, writes a byte into the other, and checks the
/// completion carries the byte and `IORING_CQE_F_MORE`.
fn probe_multishot_recv(ring: &mut IoUring, group: u16) -> Result<(), EngineError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid 2-element array for socketpair to fill.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(EngineError::io(
            "creating a probe socket pair",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let sqe = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), group)
        .build()
        .user_data(1);
    // SAFETY: the receive references no user memory (it picks a provided buffer from the registered
    // ring) and holds its own reference to the socket; dropping the ring cancels it.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| {
        EngineError::io("probing multishot receive", io::Error::other("queue full"))
    })?;
    // SAFETY: writes one byte from a valid one-byte buffer to an open socket.
    if unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) } != 1 {
        return Err(EngineError::io(
            "probing multishot receive",
            io::Error::last_os_error(),
        ));
    }
    ring.submit_and_wait(1)
        .map_err(|e| EngineError::io("probing multishot receive", e))?;
    let cqe = ring.completion().next();
    match cqe {
        Some(c) if c.result() == 1 && cqueue::more(c.flags()) => Ok(()),
        Some(c) if c.result() == -libc::EINVAL || (c.result() == 1 && !cqueue::more(c.flags())) => {
            Err(EngineError::MissingFeature {
                feature: "IORING_RECV_MULTISHOT (multishot receive)",
                kernel: "6.0",
            })
        }
        Some(c) => Err(EngineError::io(
            "probing multishot receive",
            io::Error::from_raw_os_error(-c.result()),
        )),
        None => Err(EngineError::io(
            "probing multishot receive",
            io::Error::other("no completion"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_passes_the_probe_with_deferred_task_run() {
        // The development and benchmark machines run Linux 6.18; older kernels would name the feature.
        assert_eq!(probe().unwrap(), TaskRun::Deferred);
    }
}
