//! Ctrl-C (SIGINT) and SIGTERM for `ringws top`, without a handler: both are blocked on the
//! process's only thread and taken with `sigtimedwait(2)`, so the pause between two scrapes is also
//! the wait for them. A signal during a scrape stays pending and ends the next pause at once; the
//! view then ends by ordinary returns and drops (the terminal's cursor shown again, exit status 0).
//!
//! The CLI's own use of `libc` (which the engine already depends on): the engine's signal handling
//! belongs to a running `Server`, and a crate such as signal-hook would add a self-pipe and a thread
//! for what one blocking call does.

use std::io;
use std::time::Instant;

/// SIGINT and SIGTERM, blocked on the calling thread from [`StopSignals::block`] on, for good: an
/// unblock with one pending would end the process before it exits cleanly.
pub struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Blocks SIGINT and SIGTERM on the calling thread. Call it before any thread is started (threads
    /// inherit the mask; one without it would take a signal's default action and end the process).
    pub fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data that sigemptyset initializes; sigaddset and pthread_sigmask
        // get pointers to it (and a null old set), valid for the calls; results are checked.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(StopSignals { set })
        }
    }

    /// Waits until `deadline` for SIGINT or SIGTERM (one already pending included) and takes it;
    /// the signal number, or `None` when the deadline passed first.
    pub fn wait_until(&self, deadline: Instant) -> Option<libc::c_int> {
        // Each pass waits for the time left; another signal's handler (EINTR) only shortens one.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = libc::timespec {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            };
            // SAFETY: `self.set` is an initialized sigset_t and `timeout` a valid timespec, both
            // live for the call; a null siginfo pointer is allowed.
            let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
            if signal > 0 {
                return Some(signal);
            }
            if left.is_zero() || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pending_signal_ends_the_wait_and_none_times_out() {
        // On a thread of its own: the mask stays with that thread and dies with it.
        std::thread::spawn(|| {
            let signals = StopSignals::block().unwrap();
            let start = Instant::now();
            assert_eq!(signals.wait_until(start + Duration::from_millis(20)), None);
            assert!(start.elapsed() >= Duration::from_millis(20));
            // SAFETY: pthread_kill gets this live thread's own id and a signal it blocks, so the
            // signal stays pending on it (the process's other threads are not involved).
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
            assert_eq!(rc, 0);
            let far = Instant::now() + Duration::from_secs(60);
            assert_eq!(signals.wait_until(far), Some(libc::SIGTERM));
            assert!(start.elapsed() < Duration::from_secs(30));
        })
        .join()
        .unwrap();
    }
}
