//! Ring creation.
//!
//! Each worker builds its ring on its own thread with `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): completions
//! are produced only when the worker waits for them, never as interrupts in the middle of a callback.
//! Kernels without it fall back to `COOP_TASKRUN` (5.19), then to no flags. Where the kernel has it
//! (6.6) the ring also leaves out the submission queue's index array (`IORING_SETUP_NO_SQARRAY`,
//! setting `no_sq_array`).
//!
//! The environment variable `RINGWS_RING_MODE` (`deferred`, `cooperative` or `plain`) caps the mode
//! tried first: a diagnostic and test knob that runs the fallbacks on a kernel that has everything.

use crate::error::EngineError;
use io_uring::IoUring;
use std::io;

/// How a ring was set up, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskRun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1).
    Deferred,
    /// `COOP_TASKRUN` (Linux 5.19).
    Cooperative,
    /// Neither.
    Plain,
}

impl TaskRun {
    /// The best mode allowed by `RINGWS_RING_MODE` (unset or unknown: [`TaskRun::Deferred`]).
    fn allowed() -> Self {
        match std::env::var("RINGWS_RING_MODE").as_deref() {
            Ok("cooperative") => Self::Cooperative,
            Ok("plain") => Self::Plain,
            _ => Self::Deferred,
        }
    }
}

/// Creates a ring with `entries` submission entries and four times as many completion entries, with
/// the best task-run mode the kernel accepts (and `RINGWS_RING_MODE` allows), and without the
/// submission queue's index array (`IORING_SETUP_NO_SQARRAY`, Linux 6.6) if `no_sq_array` asks
/// for it and the kernel accepts it. Returns the ring, its mode and whether the array was left out.
pub(crate) fn new_ring(
    entries: u32,
    no_sq_array: bool,
) -> Result<(IoUring, TaskRun, bool), EngineError> {
    let cq = entries.saturating_mul(4);
    let allowed = TaskRun::allowed();
    let modes = [TaskRun::Deferred, TaskRun::Cooperative, TaskRun::Plain];
    let arrays: &[bool] = if no_sq_array {
        &[true, false]
    } else {
        &[false]
    };
    let mut last = None;
    for mode in modes.into_iter().filter(|m| *m >= allowed) {
        for &no_array in arrays {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp();
            if no_array {
                b.setup_no_sqarray();
            }
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
                Ok(ring) => return Ok((ring, mode, no_array)),
                // EINVAL: this kernel does not know a flag; try the next combination.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(EngineError::from_setup(e)),
            }
        }
    }
    Err(EngineError::from_setup(last.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}
