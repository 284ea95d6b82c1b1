//! The server: start-up (validate, probe, bind), worker threads, shutdown and signals.

use crate::config::{Config, ServerBuilder};
use crate::error::EngineError;
use crate::handler::Handler;
use crate::ops::admin;
use crate::pubsub::Publisher;
use crate::ring::probe::probe_here;
use crate::ring::sys::{self, Signals};
use crate::stats::Stats;
use crate::worker::{self, Shared};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;
use tracing::{info, warn};

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

    /// Every worker's counters and the shared ones, read now: what `/metrics` exposes, as a typed
    /// value for an embedding service to export its own way. Reading costs the workers nothing
    /// (each counter is a cell its worker writes and this thread reads).
    pub fn stats(&self) -> Stats {
        self.shared.ops.stats()
    }

    /// Starts a drain, as SIGTERM does: `/ready` answers 503 at once while connections are still
    /// served (and accepted) for `drain_delay`, so load balancers stop sending new clients; then
    /// the graceful shutdown of [`shutdown`](Self::shutdown) follows. Calling it again, or
    /// `shutdown`, ends the delay early.
    pub fn drain(&self) {
        if self.shared.ops.draining.swap(true, Ordering::AcqRel) {
            self.shutdown();
        } else {
            sys::poke(self.shared.main_wake.as_fd());
        }
    }
}

impl ServerBuilder {
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
        let probe = std::thread::scope(|s| s.spawn(probe_here).join())
            .map_err(|_| EngineError::io("probing io_uring", io::Error::other("probe panicked")))?;
        let shared = Arc::new(Shared::new(&cfg, &probe)?);
        probe.into_result()?;
        let listeners = if self.client_only {
            Vec::new()
        } else {
            bind_listeners(&cfg)?
        };
        let admin = match cfg.admin_addr.filter(|_| cfg.ops_endpoints) {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr).map_err(|e| EngineError::from_bind(addr, e))?,
            ),
            None => None,
        };
        let local_addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .and_then(|a| a.as_socket())
            .unwrap_or(cfg.bind);
        Ok(Server {
            cfg,
            listeners,
            admin,
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
    /// The admin listener (`admin_addr`), if any.
    admin: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Server {
    /// A builder with every default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
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

    /// The address of the admin listener (`/metrics`, `/health`, `/ready`), if one is
    /// configured (with the actual port if it was bound to port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
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
    /// Shutdown comes from a [`ServerHandle`] or, with `handle_signals`, from a signal: SIGTERM
    /// first drains for `drain_delay` (`/ready` answers 503 while connections are still served),
    /// SIGINT does not; then stop accepting, Close 1001 to every connection, wait up to
    /// `shutdown_timeout` for the close handshakes, return `Ok`. Another signal skips the drain,
    /// a further one forces the remaining connections closed. SIGHUP reloads the TLS certificate.
    /// Signals are blocked on the calling thread (and so on the workers) and read from a
    /// signalfd, so call `run` from the main thread before starting others for them to reach it.
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
            Some(Signals::block().map_err(|e| EngineError::io("blocking signals", e))?)
        } else {
            None
        };
        let cpus = sys::allowed_cpus();
        let Self {
            cfg,
            listeners,
            admin,
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
        let admin_stop = AdminStop::new()?;
        std::thread::scope(|scope| {
            // If this thread unwinds (the `ready` callback or a log subscriber panicked), the
            // workers are told to stop at once: the scope joins them before the panic goes on, and
            // they would otherwise serve forever.
            let _stop = StopOnUnwind(&shared);
            let mut threads = Vec::with_capacity(n);
            for (index, listener) in listeners.enumerate() {
                let (cfg, shared, factory, tx) = (&cfg, &*shared, &factory, tx.clone());
                let cpu = (cfg.pin_workers && !cpus.is_empty()).then(|| cpus[index % cpus.len()]);
                let spawned = std::thread::Builder::new()
                    .name(format!("ringws-w{index}"))
                    .spawn_scoped(scope, move || {
                        let _exit = ExitGuard(shared);
                        if let Some(cpu) = cpu
                            && let Err(e) = sys::pin_to(cpu)
                        {
                            warn!(worker = index, cpu, error = %e, "could not pin the worker");
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
            let ops = &shared.ops;
            if shared.level.load(Ordering::Acquire) == 0 {
                ops.accepting.store(true, Ordering::Release);
            }
            // The admin listener's thread, told to stop (and then joined by the scope) whichever
            // way this closure returns.
            let _stop_admin = StopAdmin(&admin_stop);
            if let Some(listener) = admin.as_ref() {
                let stop = &admin_stop;
                std::thread::Builder::new()
                    .name("ringws-admin".into())
                    .spawn_scoped(scope, move || {
                        admin::serve(listener, ops, &stop.flag, stop.wake.as_fd())
                    })
                    .map_err(|e| EngineError::io("spawning the admin thread", e))?;
            }
            ready();
            // Wait for signals, drains and worker exits.
            let mut drain_until: Option<Instant> = None;
            while shared.exited.load(Ordering::Acquire) < n {
                let timeout = drain_until.map(|t| t.saturating_duration_since(Instant::now()));
                sys::wait_readable(
                    shared.main_wake.as_fd(),
                    signals.as_ref().map(Signals::fd),
                    timeout,
                );
                sys::drain_eventfd(shared.main_wake.as_fd());
                let running = shared.level.load(Ordering::Acquire) == 0;
                let signal = signals.as_ref().and_then(Signals::take);
                if signal == Some(libc::SIGHUP as u32) {
                    reload_tls(&cfg);
                } else if let Some(sig) = signal {
                    let drain = sig == libc::SIGTERM as u32
                        && running
                        && drain_until.is_none()
                        && !cfg.drain_delay.is_zero();
                    if drain {
                        ops.draining.store(true, Ordering::Release);
                    } else {
                        let level = if running { 1 } else { 2 };
                        info!(
                            signal = sig,
                            "shutting down{}",
                            if level == 2 { " now" } else { "" }
                        );
                        shared.request(level);
                    }
                }
                if drain_until.is_none() && running && ops.draining.load(Ordering::Acquire) {
                    info!(
                        delay = ?cfg.drain_delay,
                        "draining: /ready answers 503; shutting down after the delay"
                    );
                    drain_until = Some(Instant::now() + cfg.drain_delay);
                }
                if drain_until.is_some_and(|t| Instant::now() >= t)
                    && shared.level.load(Ordering::Acquire) == 0
                {
                    info!("drain delay over; shutting down");
                    shared.request(1);
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

/// SIGHUP: the TLS certificate is read again (new handshakes use it; a bad file keeps the old
/// one, logged).
fn reload_tls(cfg: &Config) {
    match cfg.tls.as_ref().map(crate::tls::TlsConfig::reload) {
        Some(Ok(())) => info!("SIGHUP: TLS certificate reloaded"),
        Some(Err(e)) => {
            warn!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the old one")
        }
        None => info!("SIGHUP: nothing to reload (no TLS)"),
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
        sys::poke(self.0.main_wake.as_fd());
    }
}

/// How the admin listener's thread is told to stop.
struct AdminStop {
    flag: AtomicBool,
    wake: OwnedFd,
}

impl AdminStop {
    fn new() -> Result<Self, EngineError> {
        Ok(Self {
            flag: AtomicBool::new(false),
            wake: sys::eventfd().map_err(|e| EngineError::io("creating an eventfd", e))?,
        })
    }
}

/// Tells the admin listener's thread to stop when dropped.
struct StopAdmin<'a>(&'a AdminStop);

impl Drop for StopAdmin<'_> {
    fn drop(&mut self) {
        self.0.flag.store(true, Ordering::Release);
        sys::poke(self.0.wake.as_fd());
    }
}

/// Forces the workers down if the thread in [`Server::run`] unwinds.
struct StopOnUnwind<'a>(&'a Shared);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.request(2);
        }
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
