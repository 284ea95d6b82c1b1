//! The server: builder, listeners, worker threads, shutdown and signals.

use crate::config::{BackpressurePolicy, Config};
use crate::error::EngineError;
use crate::handler::Handler;
use crate::pubsub::{Hub, Publisher, SlowConsumer};
use crate::worker;
use ringws_protocol::deflate::{ContextBudget, DeflateConfig};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tracing::{info, warn};

/// State shared by the workers, the thread in [`Server::run`] and every [`ServerHandle`].
pub(crate) struct Shared {
    /// 0: running; 1: graceful shutdown requested; 2: forced.
    pub level: AtomicU8,
    /// One eventfd per worker, polled by its ring.
    pub wakers: Vec<OwnedFd>,
    /// Wakes the thread waiting in `run` (a worker exited, or shutdown was requested).
    main_wake: OwnedFd,
    /// Workers that have exited.
    exited: AtomicUsize,
    /// Topics, their subscribers per worker, and the workers' inboxes.
    pub hub: Arc<Hub>,
    /// Connection and assembly-memory counts over all workers, for their limits.
    pub guard: crate::guard::Counters,
    /// permessage-deflate contexts kept per connection, over all workers.
    pub deflate_budget: ContextBudget,
}

fn eventfd() -> Result<OwnedFd, EngineError> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(EngineError::io(
            "creating an eventfd",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whoever polls it.
pub(crate) fn poke(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd; a full counter (EAGAIN) is harmless.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

impl Shared {
    /// Raises the shutdown level (never lowers it) and wakes everyone.
    fn request(&self, level: u8) {
        self.level.fetch_max(level, Ordering::AcqRel);
        for w in &self.wakers {
            poke(w.as_raw_fd());
        }
        poke(self.main_wake.as_raw_fd());
    }
}

/// A handle that can stop a running server from any thread.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl ServerHandle {
    /// Starts a graceful shutdown: stop accepting, send Close 1001 to every connection, wait for the
    /// close handshakes up to `shutdown_timeout`, then [`Server::run`] returns. Calling it again forces
    /// the remaining connections closed at once.
    pub fn shutdown(&self) {
        let level = if self.shared.level.load(Ordering::Acquire) == 0 {
            1
        } else {
            2
        };
        self.shared.request(level);
    }

    /// The address the server listens on (with the actual port if it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to publish to the server's topics from any thread.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(Arc::clone(&self.shared.hub))
    }
}

/// Builds a [`Server`]; every setting has a documented default (see [`Config`]).
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder {
    cfg: Config,
    bind_error: Option<EngineError>,
    client_only: bool,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.cfg.$name = value;
            self
        }
    )*};
}

impl ServerBuilder {
    /// The listening address (default `127.0.0.1:9001`); the first address it resolves to is used.
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> Self {
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => self.cfg.bind = a,
            Ok(None) => {
                self.bind_error = Some(EngineError::InvalidConfig {
                    setting: "bind",
                    requirement: "an address that resolves",
                })
            }
            Err(e) => self.bind_error = Some(EngineError::io("resolving the bind address", e)),
        }
        self
    }

    /// Workers without a listener: the engine only opens client connections
    /// ([`Context::connect`](crate::Context::connect), typically from
    /// [`Handler::on_start`](crate::Handler::on_start)); `bind` is ignored. It runs until
    /// [`ServerHandle::shutdown`] or a signal, like a server.
    pub fn client_only(mut self) -> Self {
        self.client_only = true;
        self
    }

    setters! {
        /// Worker threads (default: the CPUs this process may run on).
        workers: usize;
        /// Pin each worker to one CPU (default true).
        pin_workers: bool;
        /// Listen backlog per worker (default 4096).
        backlog: u32;
        /// Connections per worker before new ones are answered 503 (default 100 000).
        max_connections: usize;
        /// Largest message accepted, in bytes; larger closes with 1009 (default 16 MiB).
        max_message_size: u64;
        /// Largest HTTP request head, in bytes; larger is answered 431 (default 8 KiB).
        max_header_bytes: usize;
        /// Queued output per connection before the backpressure policy applies (default 1 MiB).
        max_backpressure: usize;
        /// What a send over `max_backpressure` does (default: drop and report).
        backpressure_policy: BackpressurePolicy;
        /// Size of each provided receive buffer (default 32 KiB).
        buffer_size: u32;
        /// Provided receive buffers per worker, a power of two up to 32768 (default 512).
        buffer_count: u16;
        /// Time from accept to a complete upgrade request (default 10 s).
        handshake_timeout: Duration;
        /// Close (1001) after this long without receiving anything; zero disables (default 120 s).
        idle_timeout: Duration;
        /// Ping after this long without receiving anything; zero disables (default 30 s).
        ping_interval: Duration;
        /// Drop a pinged connection that sends nothing for this long (default 30 s).
        pong_timeout: Duration;
        /// Bound on the close handshake before the TCP close (default 5 s).
        close_timeout: Duration;
        /// Bound on the graceful drain at shutdown (default 5 s).
        shutdown_timeout: Duration;
        /// Submission queue entries per ring (default 2048).
        ring_entries: u32;
        /// Turn SIGINT/SIGTERM into a graceful shutdown while `run` blocks (default true).
        handle_signals: bool;
        /// Join a port other processes of this user already listen on (`SO_REUSEPORT`) instead of
        /// reporting it in use (default false).
        share_port: bool;
        /// Pub/sub: the slow-consumer policy of topics created without their own (default
        /// [`SlowConsumer::DropNewest`]).
        slow_consumer: SlowConsumer;
        /// Pub/sub: most topics the server holds; topics are never removed (default 65 536).
        max_topics: usize;
        /// Accepted connections over all workers before new ones are answered 503; 0 (the
        /// default): no limit beyond `max_connections` per worker.
        max_total_connections: usize;
        /// Connections per client IP address before new ones are answered 429; 0 (the default): no
        /// limit.
        max_connections_per_ip: usize;
        /// With [`allowed_origins`](Self::allowed_origins) set, accept upgrades that carry no
        /// `Origin` (default true: non-browser clients send none).
        allow_missing_origin: bool;
        /// Refuse (400) upgrades offering none of [`subprotocols`](Self::subprotocols) (default
        /// false).
        require_subprotocol: bool;
        /// Messages per second per connection, over it Close 1008; 0 (the default): no limit.
        message_rate: u32;
        /// Messages back to back under `message_rate` (default 100).
        message_burst: u32;
        /// Client pings answered per second per connection (default 20); more are ignored, and a
        /// further `ping_burst` of them closes with 1008. 0: no limit.
        ping_rate: u32;
        /// Pings back to back under `ping_rate` (default 100).
        ping_burst: u32;
        /// Bytes of partly received messages held over all workers before the connection that
        /// passes it is closed with 1009 (default 256 MiB; 0: no limit).
        max_assembly_memory: usize;
        /// Time to receive a frame or message once begun, else Close 1008 (default 30 s; zero
        /// disables).
        message_timeout: Duration;
        /// permessage-deflate: bytes of compression contexts connections may keep between
        /// messages, over all workers (default 256 MiB); beyond it new connections are answered
        /// without context takeover.
        deflate_budget: usize;
    }

    /// Accepts permessage-deflate (RFC 7692) offers under `policy` (default: declined). With the
    /// default [`DeflateConfig`] the server compresses without context takeover (one compressor
    /// per worker, none per connection) and lets clients keep theirs.
    pub fn deflate(mut self, policy: DeflateConfig) -> Self {
        self.cfg.deflate = Some(policy);
        self
    }

    /// `SO_SNDBUF` of accepted sockets in bytes, 1 KiB to 1 GiB (default: the kernel's
    /// autotuning). Small values keep a stalled subscriber's backlog in the server's queue, where
    /// [`SlowConsumer::Conflate`] replaces stale messages, instead of in the kernel's socket buffer.
    pub fn socket_send_buffer(mut self, bytes: usize) -> Self {
        self.cfg.socket_send_buffer = Some(bytes);
        self
    }

    /// Origins allowed to open a WebSocket: `scheme://host[:port]` exactly, or
    /// `scheme://*.domain[:port]` for any subdomain of `domain`; others are answered 403 before
    /// `on_upgrade` runs. Default: none listed, any origin accepted.
    ///
    /// ```
    /// let b = ringws_engine::Server::builder()
    ///     .allowed_origins(["https://example.com", "https://*.example.com"]);
    /// ```
    pub fn allowed_origins<T: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = T>,
    ) -> Self {
        self.cfg.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Subprotocols this server speaks, most preferred first: when `on_upgrade` selects none, the
    /// engine answers with the first of these the client offered (default: none).
    pub fn subprotocols<T: Into<String>>(mut self, protocols: impl IntoIterator<Item = T>) -> Self {
        self.cfg.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Validates the settings, probes io_uring and binds one `SO_REUSEPORT` listener per worker.
    ///
    /// Errors name the cause and the fix: io_uring unavailable or blocked, a missing kernel feature,
    /// the address in use, a setting out of range.
    pub fn build(self) -> Result<Server, EngineError> {
        if let Some(e) = self.bind_error.filter(|_| !self.client_only) {
            return Err(e);
        }
        let cfg = self.cfg;
        cfg.validate()?;
        // On its own thread: tearing a ring down queues kernel task work to the thread that created
        // it, which would interrupt that thread's next blocking socket call with EINTR.
        std::thread::scope(|s| s.spawn(crate::uring::probe).join()).map_err(|_| {
            EngineError::io("probing io_uring", io::Error::other("probe panicked"))
        })??;
        let listeners = if self.client_only {
            Vec::new()
        } else {
            bind_listeners(&cfg)?
        };
        let local_addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .and_then(|a| a.as_socket())
            .unwrap_or(cfg.bind);
        let wakers: Vec<OwnedFd> = (0..cfg.workers)
            .map(|_| eventfd())
            .collect::<Result<_, _>>()?;
        // The hub wakes workers through duplicates of the same eventfds.
        let hub_wakers = wakers
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<io::Result<_>>()
            .map_err(|e| EngineError::io("duplicating an eventfd", e))?;
        let hub = Arc::new(Hub::new(hub_wakers, cfg.slow_consumer, cfg.max_topics));
        let shared = Arc::new(Shared {
            level: AtomicU8::new(0),
            wakers,
            main_wake: eventfd()?,
            exited: AtomicUsize::new(0),
            hub,
            guard: crate::guard::Counters::new(),
            deflate_budget: ContextBudget::new(cfg.deflate_budget),
        });
        Ok(Server {
            cfg,
            listeners,
            shared,
            local_addr,
        })
    }
}

/// Binds the listeners: every worker gets its own socket on the same address (`SO_REUSEPORT`), so the
/// kernel spreads connections over them. With port 0 the first socket picks the port and the others
/// join it.
fn bind_listeners(cfg: &Config) -> Result<Vec<Socket>, EngineError> {
    let mut addr = cfg.bind;
    if addr.port() != 0 && !cfg.share_port {
        // SO_REUSEPORT would let us join another process's listeners of the same user silently; a
        // plain bind first reports a port that is taken, unless joining is what was asked for.
        let probe = new_socket(addr, false).map_err(|e| EngineError::io("creating a socket", e))?;
        probe
            .bind(&SockAddr::from(addr))
            .map_err(|e| EngineError::from_bind(addr, e))?;
    }
    let mut out = Vec::with_capacity(cfg.workers);
    for _ in 0..cfg.workers {
        let s = new_socket(addr, true).map_err(|e| EngineError::io("creating a socket", e))?;
        // Accepted sockets inherit SO_SNDBUF (and with it the lock that ends autotuning).
        if let Some(bytes) = cfg.socket_send_buffer {
            s.set_send_buffer_size(bytes)
                .map_err(|e| EngineError::io("setting SO_SNDBUF", e))?;
        }
        s.bind(&SockAddr::from(addr))
            .map_err(|e| EngineError::from_bind(addr, e))?;
        s.listen(cfg.backlog as i32)
            .map_err(|e| EngineError::io("listening", e))?;
        if addr.port() == 0
            && let Some(bound) = s.local_addr().ok().and_then(|a| a.as_socket())
        {
            addr = bound;
        }
        out.push(s);
    }
    Ok(out)
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: no setsockopt per accept.
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// A bound, not yet running server. [`run`](Self::run) serves until shutdown.
pub struct Server {
    cfg: Config,
    listeners: Vec<Socket>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Server {
    /// A builder with every default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            cfg: Config::default(),
            bind_error: None,
            client_only: false,
        }
    }

    /// The address the server listens on (the actual port if bound to port 0); for a
    /// [`client_only`](ServerBuilder::client_only) engine, the unused `bind` setting.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The validated settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A handle to publish to the server's topics from any thread, before or during `run`.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(Arc::clone(&self.shared.hub))
    }

    /// A handle to shut the server down from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
            local_addr: self.local_addr,
        }
    }

    /// Serves until shutdown, blocking the calling thread. `factory` builds each worker's handler on
    /// that worker's thread (its argument is the worker index).
    ///
    /// Shutdown comes from a [`ServerHandle`] or, with `handle_signals` (the default), from SIGINT or
    /// SIGTERM: stop accepting, Close 1001 to every connection, drain up to `shutdown_timeout`, return
    /// `Ok`. A second signal forces the remaining connections closed. Signals are blocked on the
    /// calling thread (and so on the workers) and read from a signalfd, so call `run` from the main
    /// thread before starting others for them to reach it.
    pub fn run<H, F>(self, factory: F) -> Result<(), EngineError>
    where
        H: Handler,
        F: Fn(usize) -> H + Sync,
    {
        self.run_with_ready(factory, || {})
    }

    /// Like [`run`](Self::run), calling `ready` once every worker is accepting.
    pub fn run_with_ready<H, F>(self, factory: F, ready: impl FnOnce()) -> Result<(), EngineError>
    where
        H: Handler,
        F: Fn(usize) -> H + Sync,
    {
        let signals = if self.cfg.handle_signals {
            Some(Signals::block()?)
        } else {
            None
        };
        let cpus = allowed_cpus();
        let Self {
            cfg,
            listeners,
            shared,
            ..
        } = self;
        let n = cfg.workers;
        // A client-only engine has no listeners: every worker gets `None`.
        let listeners = listeners
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None))
            .take(n);
        // Each worker reports once: started (Ok) or failed before starting (Err; the error comes from join).
        let (tx, rx) = mpsc::channel::<Result<(), ()>>();
        std::thread::scope(|scope| {
            let mut threads = Vec::with_capacity(n);
            for (index, listener) in listeners.enumerate() {
                let (cfg, shared, factory, tx) = (&cfg, &*shared, &factory, tx.clone());
                let cpu = (cfg.pin_workers && !cpus.is_empty()).then(|| cpus[index % cpus.len()]);
                let spawned = std::thread::Builder::new()
                    .name(format!("ringws-w{index}"))
                    .spawn_scoped(scope, move || {
                        let _exit = ExitGuard(shared);
                        if let Some(cpu) = cpu {
                            pin_to(cpu, index);
                        }
                        let handler = factory(index);
                        let ready_tx = tx.clone();
                        let result = worker::run(
                            index,
                            cfg,
                            listener.map(Into::into),
                            shared,
                            handler,
                            move || {
                                let _ = ready_tx.send(Ok(()));
                            },
                        );
                        if result.is_err() {
                            let _ = tx.send(Err(()));
                        }
                        result
                    });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        shared.request(2);
                        return finish(
                            threads,
                            Err(EngineError::io("spawning a worker thread", e)),
                        );
                    }
                }
            }
            drop(tx);
            // Wait until every worker accepts (or one fails to start).
            let mut started = 0;
            while started < n {
                match rx.recv() {
                    Ok(Ok(())) => started += 1,
                    Ok(Err(_)) | Err(_) => {
                        shared.request(2);
                        return finish(threads, Ok(()));
                    }
                }
            }
            ready();
            // Wait for signals and worker exits.
            while shared.exited.load(Ordering::Acquire) < n {
                wait_readable(
                    shared.main_wake.as_raw_fd(),
                    signals.as_ref().map(|s| s.fd()),
                );
                let mut counter = 0u64;
                // SAFETY: reads 8 bytes into a u64 from a non-blocking eventfd.
                unsafe { libc::read(shared.main_wake.as_raw_fd(), (&raw mut counter).cast(), 8) };
                if let Some(sig) = signals.as_ref().and_then(Signals::take) {
                    let level = if shared.level.load(Ordering::Acquire) == 0 {
                        1
                    } else {
                        2
                    };
                    info!(
                        signal = sig,
                        "shutting down{}",
                        if level == 2 { " now" } else { "" }
                    );
                    shared.request(level);
                }
                if shared.exited.load(Ordering::Acquire) > 0
                    && shared.level.load(Ordering::Acquire) == 0
                {
                    warn!("a worker stopped; shutting the others down");
                    shared.request(1);
                }
            }
            finish(threads, Ok(()))
        })
    }
}

/// Joins the workers; the first error (or panic) wins over `start`.
fn finish(
    threads: Vec<std::thread::ScopedJoinHandle<'_, Result<(), EngineError>>>,
    start: Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mut result = start;
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().unwrap_or(Err(EngineError::WorkerPanicked(i)));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Counts a worker's exit and wakes the waiting thread, even if the worker panicked.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::AcqRel);
        poke(self.0.main_wake.as_raw_fd());
    }
}

/// Blocks until `fd` or `extra` is readable (or a signal interrupts).
fn wait_readable(fd: RawFd, extra: Option<RawFd>) {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: extra.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd structs (a negative fd is ignored by poll).
    unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
}

/// SIGINT and SIGTERM blocked on this thread and read from a signalfd; the old mask is restored on drop.
struct Signals {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl Signals {
    fn block() -> Result<Self, EngineError> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it; pthread_sigmask and
        // signalfd receive valid pointers; results are checked.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            if rc != 0 {
                return Err(EngineError::io(
                    "blocking signals",
                    io::Error::from_raw_os_error(rc),
                ));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                let e = io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(EngineError::io("creating a signalfd", e));
            }
            Ok(Self {
                fd: OwnedFd::from_raw_fd(fd),
                old,
            })
        }
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A pending signal's number, if any.
    fn take(&self) -> Option<u32> {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let n = libc::read(
                self.fd.as_raw_fd(),
                (&raw mut info).cast(),
                size_of::<libc::signalfd_siginfo>(),
            );
            (n == size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo)
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`; a failure is logged, not fatal.
fn pin_to(cpu: usize, index: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        warn!(worker = index, cpu, error = %io::Error::last_os_error(), "could not pin the worker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port_and_accepted_sockets_inherit_nodelay() {
        let cfg = Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 3,
            ..Config::default()
        };
        let listeners = bind_listeners(&cfg).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().as_socket().unwrap().port())
            .collect();
        assert!(
            ports[0] != 0 && ports.iter().all(|&p| p == ports[0]),
            "{ports:?}"
        );
        // Connect until the kernel routes one to the first listener, then check its accepted socket.
        listeners[0].set_nonblocking(true).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let mut clients = Vec::new();
        let accepted = (0..64).find_map(|_| {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            listeners[0].accept().ok()
        });
        let (sock, _) = accepted.expect("one of 64 connections reaches listener 0");
        assert!(sock.tcp_nodelay().unwrap(), "TCP_NODELAY is inherited");
    }

    /// `SO_SNDBUF` as seen on a socket accepted by a listener bound with `socket_send_buffer`.
    fn accepted_send_buffer(socket_send_buffer: Option<usize>) -> usize {
        let listeners = bind_listeners(&Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            socket_send_buffer,
            ..Config::default()
        })
        .unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr.as_socket().unwrap()).unwrap();
        let (sock, _) = listeners[0].accept().unwrap();
        sock.send_buffer_size().unwrap()
    }

    #[test]
    fn accepted_sockets_inherit_the_send_buffer_size() {
        // Linux doubles the value set (bookkeeping overhead) and reports the doubled size.
        assert_eq!(accepted_send_buffer(Some(48 << 10)), 96 << 10);
        // Without it the kernel sizes the buffer itself (~3.9 MB for loopback on Linux 6.18).
        assert_ne!(accepted_send_buffer(None), 96 << 10);
    }

    #[test]
    fn a_taken_port_is_refused_unless_sharing_is_asked_for() {
        let first = bind_listeners(&Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            ..Config::default()
        })
        .unwrap();
        let port = first[0].local_addr().unwrap().as_socket().unwrap().port();
        let cfg = |share_port| Config {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            workers: 2,
            share_port,
            ..Config::default()
        };
        assert!(matches!(
            bind_listeners(&cfg(false)),
            Err(EngineError::AddrInUse(_))
        ));
        let joined = bind_listeners(&cfg(true)).unwrap();
        assert_eq!(joined.len(), 2);
        for l in &joined {
            assert_eq!(l.local_addr().unwrap().as_socket().unwrap().port(), port);
        }
    }
}
