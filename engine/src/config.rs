//! Server settings: each one declared once, in the [`settings!`] table below, with its type, its
//! default, the range it must lie in and what it does. From that one declaration come the
//! [`Config`] field and its doc, the default, the check in [`Config::validate`], the
//! [`ServerBuilder`](crate::ServerBuilder) setter and its doc, and the row of [`Config::SETTINGS`]
//! that `ringws serve --help` and the README's settings table are written from (a test checks the
//! README against it).
//!
//! `Config` is plain data: the layers below it (connections, policy, pub/sub) never see it; they
//! get their own settings from it ([`Config::slab_config`], [`Config::policy_config`]).
//!
//! Receive buffers (`buffer_size`, `buffer_count`), measured with the echo server on one pinned
//! worker over loopback, as server CPU time per message (on a shared 2-core machine, so ranges over
//! repeated runs): for 32-byte messages the buffer size makes no difference (~550-750 ns/message, 95%
//! of it in the kernel's TCP stack); for 256 KiB messages, with 512 buffers, 4 KiB buffers cost
//! ~180-300 us/message, 16 KiB ~150-230 us, 32 KiB ~135-170 us, 64 KiB ~130-140 us (fewer
//! completions and decoder calls per message). 32 KiB x 512 (16 MiB per worker) keeps most of the
//! large-message gain at a quarter of the memory of 64 KiB x 1024, with enough buffers for bursts
//! over many connections: a completion holds its buffer only while its callbacks run, so running
//! out takes more than 512 receives in one loop turn, and is recovered from without losing data.

use crate::conn::{Backpressure, BackpressurePolicy, SlabConfig, Timeouts};
use crate::error::EngineError;
use crate::policy::{PolicyConfig, is_origin_pattern};
use crate::pubsub::SlowConsumer;
use crate::ring::probe::MemlockNeed;
use crate::tls::TlsConfig;
use ringws_protocol::deflate::DeflateConfig;
use ringws_protocol::handshake::is_token;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// One setting, as documentation and command lines show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The name: the [`Config`] field and the [`ServerBuilder`](crate::ServerBuilder) method.
    pub name: &'static str,
    /// The default, as written for people.
    pub default: &'static str,
    /// What a value must be.
    pub requirement: &'static str,
    /// What the setting does (the field's doc comment).
    pub doc: &'static str,
}

/// The largest timer setting: keeps the clock arithmetic far from overflow.
const MAX_TIMER: Duration = Duration::from_secs(7 * 24 * 3600);

fn timer(d: &Duration) -> bool {
    *d <= MAX_TIMER
}

fn nonzero_timer(d: &Duration) -> bool {
    !d.is_zero() && *d <= MAX_TIMER
}

/// The number of CPUs this process may run on (honours `taskset` and cgroup CPU sets).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Declares the settings. Each entry: doc comment, `name: Type = default`, `"default as text"`,
/// `check |value| predicate`, `"requirement"`, and `setter` (a builder method taking the field's
/// type is generated) or `custom` (the builder method is written by hand in `server.rs`).
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty = $default:expr, $default_text:literal,
        check $check:expr, $requirement:literal, $setter:ident;
    )*) => {
        /// The resolved settings of a server: every limit and timer. Build one with
        /// [`Server::builder`](crate::Server::builder) (or start from `Config::default()` and set
        /// fields); [`Config::validate`] checks it and the server refuses invalid settings.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                pub $name: $ty,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self {
                    $($name: $default,)*
                }
            }
        }

        impl Config {
            /// Every setting: name, default, requirement and doc, in declaration order.
            pub const SETTINGS: &'static [Setting] = &[
                $(Setting {
                    name: stringify!($name),
                    default: $default_text,
                    requirement: $requirement,
                    doc: concat!($($doc, "\n"),*),
                },)*
            ];

            /// Checks each setting against its own range (the checks across settings follow).
            fn validate_each(&self) -> Result<(), EngineError> {
                $(
                    let check: fn(&$ty) -> bool = $check;
                    if !check(&self.$name) {
                        return Err(invalid(stringify!($name), $requirement));
                    }
                )*
                Ok(())
            }
        }

        impl ServerBuilder {
            $(settings!(@setter $setter $name $ty, $default_text, $($doc)*);)*
        }
    };
    (@setter setter $name:ident $ty:ty, $default_text:literal, $($doc:literal)*) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = concat!("Default: ", $default_text, ".")]
        pub fn $name(mut self, value: $ty) -> Self {
            self.cfg.$name = value;
            self
        }
    };
    (@setter custom $name:ident $ty:ty, $default_text:literal, $($doc:literal)*) => {};
}

settings! {
    /// The listening address; every worker binds it with `SO_REUSEPORT`.
    bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9001)), "127.0.0.1:9001",
        check |_| true, "an address of this host", custom;
    /// Worker threads, each with its own ring and listener.
    workers: usize = default_workers(), "the CPUs this process may run on",
        check |v| (1..=1024).contains(v), "between 1 and 1024", setter;
    /// Pin each worker to one CPU of the process's affinity mask.
    pin_workers: bool = true, "true",
        check |_| true, "true or false", setter;
    /// Listen backlog of each worker's listener: absorbs connection bursts.
    backlog: u32 = 4096, "4096",
        check |v| (1..=65535).contains(v), "between 1 and 65535", setter;
    /// Connections per worker; above it new connections are answered 503 before their request
    /// is read (and far above it closed without an answer).
    max_connections: usize = 100_000, "100,000",
        check |v| (1..=1 << 24).contains(v), "between 1 and 16777216", setter;
    /// Largest message (and frame) accepted, in bytes; larger is closed with 1009, decided from the
    /// frame header before anything is allocated.
    max_message_size: u64 = 16 << 20, "16 MiB",
        check |v| (1..=1 << 40).contains(v), "between 1 byte and 1 TiB", setter;
    /// Largest HTTP request head, in bytes; larger is answered 431.
    max_header_bytes: usize = ringws_protocol::handshake::DEFAULT_MAX_HEADER_BYTES, "8 KiB",
        check |v| (256..=1 << 20).contains(v), "between 256 bytes and 1 MiB", setter;
    /// Queued output per connection, in bytes, above which `backpressure_policy` applies (and a
    /// pub/sub subscriber counts as behind).
    max_backpressure: usize = 1 << 20, "1 MiB",
        check |v| *v >= 1, "at least 1 byte", setter;
    /// What a send over `max_backpressure` does: drop and report it, close the connection (1008),
    /// or pause reading until the queue drains.
    backpressure_policy: BackpressurePolicy = BackpressurePolicy::Drop, "Drop",
        check |_| true, "Drop, Close or Pause", setter;
    /// Size of each provided receive buffer, in bytes.
    buffer_size: u32 = 32 << 10, "32 KiB",
        check |v| (512..=1 << 20).contains(v), "between 512 bytes and 1 MiB", setter;
    /// Provided receive buffers per worker; the ring empty, a receive waits for buffers to return
    /// (no data is lost).
    buffer_count: u16 = 512, "512",
        check |v| v.is_power_of_two() && *v <= 1 << 15, "a power of two between 1 and 32768", setter;
    /// Let receives share a receive buffer, each taking only the bytes it filled
    /// (`IOU_PBUF_RING_INC`, Linux 6.12; ignored on older kernels): small receives from many
    /// connections (a burst of handshakes) fill one buffer instead of one buffer each, and the
    /// pool's bytes are regrouped into 256 KiB buffers so that messages seldom straddle two. Off,
    /// every receive takes a whole buffer (more memory per idle connection after a burst).
    incremental_buffers: bool = true, "true",
        check |_| true, "true or false", setter;
    /// Let one receive completion carry several receive buffers (`IORING_RECVSEND_BUNDLE`, Linux
    /// 6.10; ignored, with a log line, on kernels without it and on 6.13 to 6.15.3, some of which
    /// returned a bundle's buffers out of order): a connection with a lot waiting in its socket
    /// gets it in one completion instead of one per buffer, and the frames in it are decoded
    /// buffer by buffer as usual. Off by default: it cost up to 12% more CPU per message here
    /// (the kernel ends the multishot receive whenever a bundle takes every buffer in the ring,
    /// which the pool keeps small) and gained nothing measurable (docs/benchmarks.md).
    recv_bundles: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Leave out the submission queue's index array (`IORING_SETUP_NO_SQARRAY`, Linux 6.6; ignored
    /// on older kernels): the kernel takes entries from the queue in order, one indirection and
    /// 4 bytes per entry less. Off by default: no gain measured here (docs/benchmarks.md).
    no_sq_array: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Post no completion for a cancel that succeeds (`IOSQE_CQE_SKIP_SUCCESS`, Linux 5.17; ignored
    /// on older kernels): the worker has nothing to do on it, and a failed cancel still completes.
    /// Off by default: no gain measured here (docs/benchmarks.md).
    skip_cancel_completions: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Wake another worker for the publications of a callback through its ring
    /// (`IORING_OP_MSG_RING`, Linux 5.18; ignored on older kernels): the publishing worker's ring
    /// posts a completion to the subscriber's worker's ring instead of writing its eventfd, and
    /// the woken worker has no eventfd to read. Publishers outside the workers and shutdown still
    /// write the eventfd.
    msg_ring: bool = true, "true",
        check |_| true, "true or false", setter;
    /// How long a worker may wait for a batch of completions before it handles the ones it has
    /// (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12; ignored on older kernels): instead of waking at the
    /// first completion, the worker sleeps until 16 are ready or this long has passed, then handles
    /// whatever is there. Under partial load that is fewer wake-ups and more work per turn (less
    /// CPU per message) when the wait spans several arrivals, and more CPU when it is shorter than
    /// the gap between them (its timer is one more wake-up); the price is up to this much latency
    /// added to a message that arrives while the worker is idle. Zero (the default) wakes at the
    /// first completion.
    batch_wait: Duration = Duration::ZERO, "0 (off)",
        check |v| *v <= Duration::from_millis(10), "at most 10 ms (0: off)", setter;
    /// Install each connection's socket in its worker ring's file table (direct descriptors,
    /// `IORING_RSRC_REGISTER_SPARSE`, Linux 5.19; ignored on older kernels): receives and sends
    /// name the table entry, and the kernel skips a file lookup per operation. Everything else
    /// (socket options, shutdown, the peer's address, TLS) still uses the descriptor. The table
    /// has an entry per slot up to the soft `RLIMIT_NOFILE` (8 bytes of kernel memory each), and
    /// every connection costs two `io_uring_register` calls. Off by default: the lookup it saves
    /// (about 1% of the server's CPU) was below this machine's noise (docs/benchmarks.md).
    direct_descriptors: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Send zero-copy (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`, Linux 6.0/6.1; ignored on older kernels)
    /// every send of at least this many bytes: the kernel pins the queued bytes and the NIC reads
    /// them, instead of copying them into the socket. Such a send completes twice (its result,
    /// then a notification once the peer acknowledged the bytes and the kernel lets go of them);
    /// the queue goes on at the result and the memory is held until the notification (up to 8
    /// such sends per connection, then sends copy until they are released). A connection closed
    /// with such bytes unacknowledged keeps its slot until the peer acknowledges them or TCP gives
    /// up on it (`net.ipv4.tcp_retries2`, about 15 minutes). It pays only for large sends to a remote peer over a device
    /// with scatter-gather: to a peer on the same host (loopback, a local proxy) the kernel copies
    /// anyway and each send costs a second completion (`ringws_zero_copy_copied_total` counts the
    /// sends it copied). Zero (the default) copies every send: no gain could be measured here,
    /// where every peer is on loopback (docs/benchmarks.md).
    send_zc_threshold: usize = 0, "0 (off)",
        check |v| *v <= 1 << 30, "at most 1 GiB (0: off)", setter;
    /// Receive the rest of a large frame straight into its message's assembly buffer once at
    /// least this many of its payload bytes are still to come (plain, uncompressed connections):
    /// the worker stops the connection's multishot receive and reads into the buffer with
    /// one-shot receives until the frame's end, instead of receiving into the provided buffers
    /// and copying from there (a message's bytes are then copied once by the kernel and not
    /// again). The buffer still grows as bytes arrive, never beyond twice what it holds. Zero:
    /// off, every byte goes through the provided buffers.
    recv_into_threshold: usize = 256 << 10, "256 KiB",
        check |v| *v <= 1 << 30, "at most 1 GiB (0: off)", setter;
    /// Time allowed from accept to a complete upgrade request (for a client, from the start of the
    /// connect to the `101`).
    handshake_timeout: Duration = Duration::from_secs(10), "10 s",
        check nonzero_timer, "between 1 ms and 7 days", setter;
    /// Close (1001) a connection after this long without receiving anything; zero disables.
    idle_timeout: Duration = Duration::from_secs(120), "120 s",
        check timer, "at most 7 days (0 disables)", setter;
    /// Ping a connection after this long without receiving anything; zero disables.
    ping_interval: Duration = Duration::from_secs(30), "30 s",
        check timer, "at most 7 days (0 disables)", setter;
    /// Drop a pinged connection that still sends nothing for this long (half-open TCP).
    pong_timeout: Duration = Duration::from_secs(30), "30 s",
        check nonzero_timer, "between 1 ms and 7 days", setter;
    /// Bound on the close handshake (and on draining a refused request) before the TCP close.
    close_timeout: Duration = Duration::from_secs(5), "5 s",
        check nonzero_timer, "between 1 ms and 7 days", setter;
    /// Bound on the graceful drain at shutdown.
    shutdown_timeout: Duration = Duration::from_secs(5), "5 s",
        check timer, "at most 7 days", setter;
    /// Submission queue entries per ring (the completion queue gets four times as many).
    ring_entries: u32 = 2048, "2048",
        check |v| (8..=1 << 15).contains(v), "between 8 and 32768", setter;
    /// Whether [`Server::run`](crate::Server::run) turns SIGINT/SIGTERM into a graceful shutdown
    /// (signals are then blocked on the calling thread and read from a signalfd). Off in a library
    /// by default, so that embedding never takes the process's signals over unasked; `ringws
    /// serve` turns it on.
    handle_signals: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Join a port that other processes of the same user already listen on, instead of refusing it
    /// as in use: all their listeners and ours share it with `SO_REUSEPORT` and the kernel spreads
    /// new connections over them. Runs one server as several processes, e.g. when each process may
    /// only open a limited number of files.
    share_port: bool = false, "false",
        check |_| true, "true or false", setter;
    /// Pub/sub: the slow-consumer policy of topics created without one of their own.
    slow_consumer: SlowConsumer = SlowConsumer::DropNewest, "DropNewest",
        check |_| true, "a SlowConsumer", setter;
    /// Pub/sub: most topics the server holds; topics are never removed, so this bounds what
    /// subscriptions to new names can claim.
    max_topics: usize = 1 << 16, "65,536",
        check |v| (1..=1 << 24).contains(v), "between 1 and 16777216", setter;
    /// Pub/sub: bytes of history (publications kept for subscribers that resume from a position)
    /// over all topics; a publication that finds it spent makes room by dropping its own topic's
    /// oldest. Only topics given a history keep any (none by default).
    max_history_memory: usize = 64 << 20, "64 MiB",
        check |v| *v <= 1 << 40, "at most 1 TiB", setter;
    /// Accepted connections over all workers (0: no limit beyond `max_connections` per worker);
    /// above it new connections are answered 503 before their request is read.
    max_total_connections: usize = 0, "0 (none)",
        check |v| *v <= 1 << 30, "at most 2^30 (0: none)", setter;
    /// Connections per client IP address over all workers (0: no limit); above it new connections
    /// are answered 429 before their request is read. Off by default: behind a proxy or NAT many
    /// clients share one address.
    max_connections_per_ip: usize = 0, "0 (none)",
        check |v| *v <= 1 << 24, "at most 16777216 (0: none)", setter;
    /// Origins allowed to open a WebSocket, each `scheme://host[:port]` (exact) or
    /// `scheme://*.domain[:port]` (any subdomain of `domain`, not `domain` itself); an upgrade whose
    /// `Origin` matches none is answered 403 before `on_upgrade` runs. Empty: any. Browsers always
    /// send `Origin`; this is the defence against cross-site WebSocket hijacking.
    allowed_origins: Vec<String> = Vec::new(), "empty (any origin)",
        check |v| v.iter().all(|p| is_origin_pattern(p)),
        "a list of scheme://host[:port] or scheme://*.domain[:port]", custom;
    /// With `allowed_origins` set, whether an upgrade without an `Origin` header is accepted (it
    /// cannot come from a browser page).
    allow_missing_origin: bool = true, "true",
        check |_| true, "true or false", setter;
    /// Subprotocols this server speaks, most preferred first: when `on_upgrade` selects none, the
    /// engine selects the first of these that the client offered.
    subprotocols: Vec<String> = Vec::new(), "empty",
        check |v| v.iter().all(|p| is_token(p)), "a list of tokens (RFC 6455 §4.1)", custom;
    /// Refuse (400) an upgrade that offers none of `subprotocols`, instead of accepting it without
    /// a subprotocol.
    require_subprotocol: bool = false, "false",
        check |_| true, "set only with at least one subprotocol", setter;
    /// Messages per second per connection (0: no limit); a connection over the rate (after a burst
    /// of `message_burst`) is closed with 1008.
    message_rate: u32 = 0, "0 (none)",
        check |v| *v <= 1_000_000, "at most 1000000 per second (0: none)", setter;
    /// Messages a connection may send back to back under `message_rate`.
    message_burst: u32 = 100, "100",
        check |v| *v >= 1, "at least 1", setter;
    /// Client pings per second per connection that are answered (0: no limit); pings beyond it
    /// (after a burst of `ping_burst`) are neither answered nor passed to `on_ping`, and once
    /// another `ping_burst` of them has piled up the connection is closed with 1008.
    ping_rate: u32 = 20, "20",
        check |v| *v <= 1_000_000, "at most 1000000 per second (0: none)", setter;
    /// Pings a connection may send back to back under `ping_rate`.
    ping_burst: u32 = 100, "100",
        check |v| *v >= 1, "at least 1", setter;
    /// Bytes held in the assembly buffers of partly received messages, over all connections of all
    /// workers (0: no limit beyond `max_message_size` per connection); the connection whose
    /// receive takes the total over it is closed with 1009. Checked after each receive, so the
    /// total can pass it by one receive's growth per worker.
    max_assembly_memory: usize = 256 << 20, "256 MiB",
        check |_| true, "at least max_message_size (0: none)", setter;
    /// Time allowed to receive a frame or message once its first byte has arrived (0 disables);
    /// past it the connection is closed with 1008 (slowly dribbled fragments).
    message_timeout: Duration = Duration::from_secs(30), "30 s",
        check timer, "at most 7 days (0 disables)", setter;
    /// permessage-deflate (RFC 7692): the policy answering clients' offers; `None` declines every
    /// offer.
    deflate: Option<DeflateConfig> = None, "off",
        check |d| d.as_ref().is_none_or(deflate_ok),
        "window bits 8-15, level 0-9, max_inflate_ratio at least 1", custom;
    /// Bytes of compression contexts that connections may keep between messages (context
    /// takeover), over all workers; once spent, new connections are answered without context
    /// takeover, which costs them nothing between messages.
    deflate_budget: usize = 256 << 20, "256 MiB",
        check |_| true, "any number of bytes", setter;
    /// Answer `GET /metrics` (Prometheus text format), `/health` and `/ready` — on the admin
    /// listener if `admin_addr` is set, else on the WebSocket port, before `on_http` sees them.
    ops_endpoints: bool = true, "true",
        check |_| true, "true or false", setter;
    /// A separate listener for `/metrics`, `/health` and `/ready` (served by a thread of its own,
    /// which a stuck worker cannot hold up), so that the public port need not expose them.
    /// `None`: they are on the WebSocket port.
    admin_addr: Option<SocketAddr> = None, "None (the WebSocket port)",
        check |_| true, "an address of this host", custom;
    /// `/health` answers 503 while a worker has not finished a loop turn for this long (an idle
    /// worker turns every 100 ms; a callback that blocks stops its worker's turns).
    health_timeout: Duration = Duration::from_secs(2), "2 s",
        check nonzero_timer, "between 1 ms and 7 days", setter;
    /// On SIGTERM (with `handle_signals`) or [`ServerHandle::drain`](crate::ServerHandle::drain):
    /// how long `/ready` answers 503 while connections are still served and accepted, so that
    /// load balancers and readiness probes stop sending new clients, before the graceful shutdown
    /// (Close 1001 to every connection). Zero shuts down at once.
    drain_delay: Duration = Duration::from_secs(5), "5 s",
        check timer, "at most 7 days (0: none)", setter;
    /// wss://: serve TLS with this certificate and key (TLS 1.3 and 1.2, ALPN `http/1.1`,
    /// session tickets). `None`: plain ws://.
    tls: Option<TlsConfig> = None, "None (plain ws://)",
        check |_| true, "a TlsConfig", custom;
    /// With `tls`: the address that serves TLS, while `bind` stays plain ws:// (both at once,
    /// each worker with a listener on each). `None`: `bind` itself serves TLS.
    tls_bind: Option<SocketAddr> = None, "None (bind serves TLS)",
        check |_| true, "an address of this host, with tls set", custom;
    /// `SO_SNDBUF` of accepted sockets, in bytes (set on each worker's listener, which accepted
    /// sockets inherit on Linux; the kernel doubles it for its bookkeeping and caps it at
    /// `net.core.wmem_max`). `None` leaves the kernel's autotuning, which lets a loopback
    /// connection buffer several MB. A small buffer keeps what a stalled subscriber has not read
    /// in the server's output queue, where [`SlowConsumer::Conflate`] can replace stale messages,
    /// rather than in the kernel's, where nothing can.
    socket_send_buffer: Option<usize> = None, "None (kernel autotuning)",
        check |b| b.is_none_or(|b| (1024..=1 << 30).contains(&b)),
        "between 1 KiB and 1 GiB (None: kernel autotuning)", custom;
}

/// Builds a [`Server`](crate::Server): every setting of [`Config`] has a method of the same name,
/// with the setting's default written in its doc; [`build`](Self::build) validates, probes the
/// kernel and binds.
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder {
    pub(crate) cfg: Config,
    pub(crate) bind_error: Option<EngineError>,
    pub(crate) client_only: bool,
}

impl ServerBuilder {
    /// A builder with every default.
    pub(crate) fn new() -> Self {
        Self {
            cfg: Config::default(),
            bind_error: None,
            client_only: false,
        }
    }

    /// The settings so far (not yet validated).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The first address `addr` resolves to; a failure is kept for [`build`](Self::build) to
    /// report, naming `setting` (or `what` was being resolved).
    fn resolve(
        &mut self,
        addr: impl ToSocketAddrs,
        setting: &'static str,
        what: &'static str,
    ) -> Option<SocketAddr> {
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                self.bind_error = Some(EngineError::InvalidConfig {
                    setting,
                    requirement: "an address that resolves",
                });
                None
            }
            Err(e) => {
                self.bind_error = Some(EngineError::io(what, e));
                None
            }
        }
    }

    /// [`Config::bind`]: the listening address; the first address `addr` resolves to is used.
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> Self {
        if let Some(a) = self.resolve(addr, "bind", "resolving the bind address") {
            self.cfg.bind = a;
        }
        self
    }

    /// Workers without a listener: the engine only opens client connections
    /// ([`Context::connect`](crate::Context::connect), typically from
    /// [`Handler::on_start`](crate::Handler::on_start)); `bind` is ignored. It runs until
    /// [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) or a signal, like a server.
    pub fn client_only(mut self) -> Self {
        self.client_only = true;
        self
    }

    /// [`Config::deflate`]: accepts permessage-deflate (RFC 7692) offers under `policy`. With the
    /// default [`DeflateConfig`] the server compresses without context takeover (one compressor
    /// per worker, none per connection) and lets clients keep theirs.
    pub fn deflate(mut self, policy: DeflateConfig) -> Self {
        self.cfg.deflate = Some(policy);
        self
    }

    /// [`Config::admin_addr`]: serve `/metrics`, `/health` and `/ready` on this address (and not
    /// on the WebSocket port). An address that does not resolve fails [`build`](Self::build).
    pub fn admin_addr(mut self, addr: impl ToSocketAddrs) -> Self {
        self.cfg.admin_addr = self
            .resolve(addr, "admin_addr", "resolving the admin address")
            .or(self.cfg.admin_addr);
        self
    }

    /// [`Config::tls`]: serve wss:// with `tls` (see [`TlsConfig::from_pem_files`]).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.cfg.tls = Some(tls);
        self
    }

    /// [`Config::tls_bind`]: serve TLS on `addr` and keep [`bind`](Self::bind) plain. An address
    /// that does not resolve fails [`build`](Self::build).
    pub fn tls_bind(mut self, addr: impl ToSocketAddrs) -> Self {
        self.cfg.tls_bind = self
            .resolve(addr, "tls_bind", "resolving the TLS address")
            .or(self.cfg.tls_bind);
        self
    }

    /// [`Config::socket_send_buffer`]: `SO_SNDBUF` of accepted sockets, in bytes.
    pub fn socket_send_buffer(mut self, bytes: usize) -> Self {
        self.cfg.socket_send_buffer = Some(bytes);
        self
    }

    /// [`Config::allowed_origins`]: origins allowed to open a WebSocket, `scheme://host[:port]`
    /// exactly or `scheme://*.domain[:port]` for any subdomain of `domain`.
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

    /// [`Config::subprotocols`]: the subprotocols this server speaks, most preferred first.
    pub fn subprotocols<T: Into<String>>(mut self, protocols: impl IntoIterator<Item = T>) -> Self {
        self.cfg.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

/// Whether a permessage-deflate policy is within range.
fn deflate_ok(d: &DeflateConfig) -> bool {
    (8..=15).contains(&d.server_max_window_bits)
        && (8..=15).contains(&d.client_max_window_bits)
        && d.level <= 9
        && d.max_inflate_ratio != Some(0)
}

fn invalid(setting: &'static str, requirement: &'static str) -> EngineError {
    EngineError::InvalidConfig {
        setting,
        requirement,
    }
}

impl Config {
    /// The requirement of setting `name` (from [`Config::SETTINGS`]).
    fn requirement(name: &str) -> &'static str {
        Self::SETTINGS
            .iter()
            .find(|s| s.name == name)
            .map_or("valid", |s| s.requirement)
    }

    /// Checks every setting; the error names the first one out of range and what it must be.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.validate_each()?;
        if self.tls_bind.is_some() && self.tls.is_none() {
            return Err(invalid("tls_bind", Self::requirement("tls_bind")));
        }
        if self.require_subprotocol && self.subprotocols.is_empty() {
            return Err(invalid(
                "require_subprotocol",
                Self::requirement("require_subprotocol"),
            ));
        }
        if self.max_assembly_memory != 0
            && (self.max_assembly_memory as u64) < self.max_message_size
        {
            return Err(invalid(
                "max_assembly_memory",
                Self::requirement("max_assembly_memory"),
            ));
        }
        Ok(())
    }

    /// The settings of the worker's connections.
    pub(crate) fn slab_config(&self) -> SlabConfig {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        SlabConfig {
            limits: ringws_protocol::Limits {
                max_frame_size: self.max_message_size,
                max_message_size: self.max_message_size,
            },
            timeouts: Timeouts {
                handshake: ms(self.handshake_timeout),
                idle: ms(self.idle_timeout),
                ping: ms(self.ping_interval),
                pong: ms(self.pong_timeout),
                close: ms(self.close_timeout),
                message: ms(self.message_timeout),
            },
            backpressure: Backpressure {
                max: self.max_backpressure,
                policy: self.backpressure_policy,
            },
        }
    }

    /// The settings of the admission and abuse limits.
    pub(crate) fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            allowed_origins: self.allowed_origins.clone(),
            allow_missing_origin: self.allow_missing_origin,
            subprotocols: self.subprotocols.clone(),
            require_subprotocol: self.require_subprotocol,
            max_total_connections: self.max_total_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_assembly_memory: self.max_assembly_memory,
            message_rate: self.message_rate,
            message_burst: self.message_burst,
            ping_rate: self.ping_rate,
            ping_burst: self.ping_burst,
        }
    }
}

impl MemlockNeed {
    /// The locked memory `cfg`'s workers' rings are charged: their submission queue entries, their
    /// SQ/CQ rings and their provided-buffer rings.
    ///
    /// ```
    /// let need = ringws_engine::MemlockNeed::of(&ringws_engine::Config::default());
    /// assert!(need.total >= need.per_worker + need.probe);
    /// ```
    pub fn of(cfg: &Config) -> Self {
        Self::new(
            cfg.workers,
            cfg.ring_entries,
            cfg.buffer_count,
            cfg.no_sq_array,
        )
    }
}

/// The settings table as Markdown (name, default, requirement), as the README shows it.
pub fn settings_table() -> String {
    let mut out = String::from("| setting | default | valid values |\n| --- | --- | --- |\n");
    for s in Config::SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            s.name, s.default, s.requirement
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    fn setting_of(c: Config) -> &'static str {
        match c.validate() {
            Err(EngineError::InvalidConfig { setting, .. }) => setting,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let d = Config::default;
        assert_eq!(setting_of(Config { workers: 0, ..d() }), "workers");
        assert_eq!(setting_of(Config { backlog: 0, ..d() }), "backlog");
        assert_eq!(
            setting_of(Config {
                buffer_count: 1000,
                ..d()
            }),
            "buffer_count"
        );
        assert_eq!(
            setting_of(Config {
                buffer_size: 100,
                ..d()
            }),
            "buffer_size"
        );
        assert_eq!(
            setting_of(Config {
                max_message_size: 0,
                ..d()
            }),
            "max_message_size"
        );
        assert_eq!(
            setting_of(Config {
                socket_send_buffer: Some(100),
                ..d()
            }),
            "socket_send_buffer"
        );
        assert_eq!(
            setting_of(Config {
                close_timeout: Duration::ZERO,
                ..d()
            }),
            "close_timeout"
        );
        let deflate = |level| {
            Some(DeflateConfig {
                level,
                ..DeflateConfig::default()
            })
        };
        assert_eq!(
            setting_of(Config {
                deflate: deflate(10),
                ..d()
            }),
            "deflate"
        );
        Config {
            deflate: deflate(9),
            ..d()
        }
        .validate()
        .unwrap();
        assert_eq!(
            setting_of(Config {
                idle_timeout: Duration::from_secs(8 * 24 * 3600),
                ..d()
            }),
            "idle_timeout"
        );
    }

    #[test]
    fn admission_limits_are_checked() {
        let d = Config::default;
        let origins = |o: &[&str]| o.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            setting_of(Config {
                allowed_origins: origins(&["https://ok.example", "example.com"]),
                ..d()
            }),
            "allowed_origins"
        );
        assert_eq!(
            setting_of(Config {
                subprotocols: origins(&["two words"]),
                ..d()
            }),
            "subprotocols"
        );
        assert_eq!(
            setting_of(Config {
                require_subprotocol: true,
                ..d()
            }),
            "require_subprotocol"
        );
        assert_eq!(
            setting_of(Config {
                max_assembly_memory: 1 << 20,
                ..d()
            }),
            "max_assembly_memory"
        );
        assert_eq!(
            setting_of(Config {
                ping_burst: 0,
                ..d()
            }),
            "ping_burst"
        );
        Config {
            allowed_origins: origins(&["https://*.example.com", "http://localhost:3000"]),
            subprotocols: origins(&["v1.feed"]),
            require_subprotocol: true,
            max_assembly_memory: 0,
            message_timeout: Duration::ZERO,
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn zero_disables_idle_and_ping() {
        Config {
            idle_timeout: Duration::ZERO,
            ping_interval: Duration::ZERO,
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn error_text_names_setting_and_range() {
        let e = Config {
            buffer_count: 3,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting buffer_count: it must be a power of two between 1 and 32768"
        );
    }

    #[test]
    fn every_setting_is_in_the_table_once_with_a_doc() {
        let mut names: Vec<&str> = Config::SETTINGS.iter().map(|s| s.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a setting declared twice");
        for s in Config::SETTINGS {
            assert!(!s.doc.trim().is_empty(), "{} has no doc", s.name);
            assert!(!s.default.is_empty() && !s.requirement.is_empty());
        }
        assert!(settings_table().contains("| `buffer_count` | 512 | a power of two"));
    }

    #[test]
    fn the_library_leaves_signals_alone_by_default() {
        assert!(!Config::default().handle_signals);
    }

    #[test]
    fn lower_layers_get_their_settings_in_their_units() {
        let c = Config::default().slab_config();
        assert_eq!(c.timeouts.handshake, 10_000);
        assert_eq!(c.timeouts.idle, 120_000);
        assert_eq!(c.backpressure.max, 1 << 20);
        let p = Config::default().policy_config();
        assert_eq!((p.ping_rate, p.ping_burst), (20, 100));
    }
}
