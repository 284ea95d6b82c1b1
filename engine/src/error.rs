//! Start-up and run-time errors of the engine.
//!
//! Every variant is something an operator can act on, so its `Display` text names the cause and, where
//! there is one, the fix, in one line: the `ringws` binary prints exactly that and exits 1.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why the server could not start, or why a worker stopped.
#[non_exhaustive]
#[derive(Debug)]
pub enum EngineError {
    /// The kernel has no io_uring (`ENOSYS`): built without `CONFIG_IO_URING`, or too old (< 5.1).
    IoUringUnsupported,
    /// io_uring is switched off by the `kernel.io_uring_disabled` sysctl (Linux 6.6+); holds its value.
    IoUringDisabled(u8),
    /// io_uring calls are refused with `EPERM` although the sysctl allows them: a seccomp filter
    /// (containers' default profiles block io_uring) or an LSM policy.
    IoUringBlocked,
    /// Creating the ring failed with `ENOMEM`: ring and buffer-ring memory counts against
    /// `RLIMIT_MEMLOCK` for users without `CAP_IPC_LOCK` on kernels before 5.12 and again from 6.14
    /// (about 276 KiB per worker with the default sizes, plus 12 KiB for the start-up probe;
    /// `ringws check` computes it).
    IoUringNoMemory,
    /// The kernel lacks an io_uring feature the engine requires.
    MissingFeature {
        /// The feature, as io_uring names it.
        feature: &'static str,
        /// The first Linux version that has it.
        kernel: &'static str,
    },
    /// The listening address is already taken by another socket.
    AddrInUse(SocketAddr),
    /// The listening address is not an address of this host.
    AddrNotAvailable(SocketAddr),
    /// Binding the listening address needs a privilege the process lacks (ports below 1024).
    BindPermission(SocketAddr),
    /// A builder setting is out of range.
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// What it must be.
        requirement: &'static str,
    },
    /// Any other operating-system error, with what the engine was doing.
    Io {
        /// What failed.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A worker thread panicked outside a user callback (in the handler factory, or an engine bug).
    WorkerPanicked(usize),
}

impl EngineError {
    /// Wraps an OS error with what the engine was doing when it happened.
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Self::Io { context, source }
    }

    /// Maps a failed `io_uring_setup` to the error that explains it.
    pub(crate) fn from_setup(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSYS) => Self::IoUringUnsupported,
            Some(libc::EPERM) => match read_io_uring_disabled() {
                Some(v) if v != 0 => Self::IoUringDisabled(v),
                _ => Self::IoUringBlocked,
            },
            Some(libc::ENOMEM) => Self::IoUringNoMemory,
            _ => Self::io("creating the io_uring instance", err),
        }
    }

    /// Maps a failed `bind` of `addr` to the error that explains it.
    pub(crate) fn from_bind(addr: SocketAddr, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EADDRINUSE) => Self::AddrInUse(addr),
            Some(libc::EADDRNOTAVAIL) => Self::AddrNotAvailable(addr),
            Some(libc::EACCES) | Some(libc::EPERM) => Self::BindPermission(addr),
            _ => Self::io("binding the listening socket", err),
        }
    }
}

/// The value of `kernel.io_uring_disabled`, if the sysctl exists (Linux 6.6+).
fn read_io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoUringUnsupported => f.write_str(
                "io_uring is not available: the kernel returned ENOSYS (built without \
                 CONFIG_IO_URING, older than Linux 5.1, or the syscall is filtered); run on Linux 6.1 \
                 or later with io_uring enabled",
            ),
            Self::IoUringDisabled(v) => write!(
                f,
                "io_uring is disabled by the sysctl kernel.io_uring_disabled={v}; enable it with \
                 `sysctl -w kernel.io_uring_disabled=0` (or add this user to the group in \
                 kernel.io_uring_group when the value is 1)"
            ),
            Self::IoUringBlocked => f.write_str(
                "io_uring is blocked (EPERM), most likely by a seccomp profile (Docker and other \
                 container runtimes block it by default); allow the io_uring_setup, io_uring_enter \
                 and io_uring_register syscalls, e.g. `docker run --security-opt seccomp=unconfined`",
            ),
            Self::IoUringNoMemory => f.write_str(
                "creating the io_uring failed with ENOMEM: ring memory counts against the locked-memory \
                 limit (kernels before 5.12 and from 6.14, users without CAP_IPC_LOCK); raise it \
                 (`ulimit -l unlimited`, see `ringws check` and tuning/ulimit.sh) or use fewer workers",
            ),
            Self::MissingFeature { feature, kernel } => write!(
                f,
                "the kernel lacks the io_uring feature {feature}, which needs Linux {kernel} or later; \
                 upgrade the kernel"
            ),
            Self::AddrInUse(addr) => write!(
                f,
                "address {addr} is already in use by another process; stop it or choose another \
                 port with --addr"
            ),
            Self::AddrNotAvailable(addr) => write!(
                f,
                "address {addr} is not an address of this host; choose a local address with --addr"
            ),
            Self::BindPermission(addr) => write!(
                f,
                "permission denied binding {addr}: ports below 1024 need CAP_NET_BIND_SERVICE; \
                 choose a port >= 1024"
            ),
            Self::InvalidConfig {
                setting,
                requirement,
            } => write!(f, "invalid setting {setting}: it must be {requirement}"),
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::WorkerPanicked(i) => write!(f, "worker {i} panicked (the panic message is above)"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_name_cause_and_fix() {
        let e = EngineError::from_setup(io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(matches!(e, EngineError::IoUringUnsupported));
        assert!(e.to_string().contains("ENOSYS"));
        let e = EngineError::from_setup(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(e.to_string().contains("ulimit -l"));
        let e = EngineError::from_setup(io::Error::from_raw_os_error(libc::EPERM));
        // Which EPERM variant depends on this host's sysctl; both name a fix.
        let text = e.to_string();
        assert!(
            text.contains("seccomp") || text.contains("io_uring_disabled"),
            "{text}"
        );
    }

    #[test]
    fn bind_errors_name_the_address() {
        let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let e = EngineError::from_bind(addr, io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert!(matches!(e, EngineError::AddrInUse(_)));
        assert!(e.to_string().contains("127.0.0.1:9001 is already in use"));
        let e = EngineError::from_bind(addr, io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.to_string().contains("CAP_NET_BIND_SERVICE"));
    }
}
