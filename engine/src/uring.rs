//! Ring creation and the start-up feature probe.
//!
//! Each worker builds its ring on its own thread with `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): completions
//! are produced only when the worker waits for them, never as interrupts in the middle of a callback.
//! Kernels without it fall back to `COOP_TASKRUN` (5.19), then to no flags. [`probe`] runs once before
//! any worker starts and refuses to start, naming the feature and kernel version, if a required
//! feature is missing; the probes themselves live in [`crate::probe`].

use crate::error::EngineError;
use io_uring::IoUring;
use std::io;

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

/// Checks, on a throwaway ring, everything the workers will need (see [`crate::probe`]): io_uring
/// itself, the opcodes, provided buffer rings (5.19), multishot accept (5.19) and receive (6.0).
pub(crate) fn probe() -> Result<TaskRun, EngineError> {
    crate::probe::probe_here().into_result()
}
