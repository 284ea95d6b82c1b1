//! Server settings: every limit and timer, its default and why, and validation.
//!
//! | setting | default | why |
//! |---|---|---|
//! | `bind` | 127.0.0.1:9001 | loopback unless asked otherwise |
//! | `workers` | CPUs in the affinity mask | one pinned worker per core |
//! | `backlog` | 4096 | absorbs connection bursts per worker listener |
//! | `max_connections` | 100 000 per worker | above it new connections get 503 |
//! | `max_message_size` | 16 MiB | 1009 above it; bounds assembly memory |
//! | `max_header_bytes` | 8 KiB | 431 above it; bounds the handshake buffer |
//! | `max_backpressure` | 1 MiB | per-connection queued output before the policy applies |
//! | `backpressure_policy` | `Drop` | report with [`SendResult::Dropped`](crate::SendResult) |
//! | `buffer_size` | 32 KiB | provided receive buffer size (measured, see below) |
//! | `buffer_count` | 512 | buffers per worker ring (16 MiB per worker, faulted in as used) |
//! | `handshake_timeout` | 10 s | a connection must finish its upgrade request in time |
//! | `idle_timeout` | 120 s | nothing received for this long: Close 1001 (0 disables) |
//! | `ping_interval` | 30 s | nothing received for this long: the server pings (0 disables) |
//! | `pong_timeout` | 30 s | still nothing received this long after a ping: the connection is dropped |
//! | `close_timeout` | 5 s | bound on the close handshake and on draining a rejected request |
//! | `shutdown_timeout` | 5 s | bound on the graceful drain at shutdown |
//! | `ring_entries` | 2048 | submission queue size; the completion queue is 4x |
//! | `share_port` | false | a port other processes listen on is refused as in use, unless asked to join it |
//! | `slow_consumer` | `DropNewest` | pub/sub: what a topic without its own policy does for a subscriber over `max_backpressure` |
//! | `max_topics` | 65 536 | pub/sub: topics are never removed; this bounds what subscriptions to new names can claim |
//! | `max_total_connections` | 0 (none) | over all workers; above it new connections get 503 before their request is read |
//! | `max_connections_per_ip` | 0 (none) | per client address over all workers; above it new connections get 429 |
//! | `allowed_origins` | empty (any) | an upgrade whose `Origin` matches none is answered 403 before `on_upgrade` |
//! | `allow_missing_origin` | true | with an allowlist: accept upgrades without `Origin` (non-browser clients) |
//! | `subprotocols` | empty | the engine selects the first of these the client offers when `on_upgrade` selects none |
//! | `require_subprotocol` | false | refuse (400) upgrades that offer none of `subprotocols` |
//! | `message_rate` / `message_burst` | 0 (none) / 100 | messages per second per connection; over it: Close 1008 |
//! | `ping_rate` / `ping_burst` | 20 / 100 | client pings per second answered; more are ignored, another burst more closes 1008 |
//! | `max_assembly_memory` | 256 MiB | bytes in partial-message buffers over all workers; the connection that passes it gets 1009 |
//! | `message_timeout` | 30 s | a frame or message begun must be complete within it, else Close 1008 (0 disables) |
//! | `deflate` | off | permessage-deflate (RFC 7692) policy; see [`DeflateConfig`] |
//! | `deflate_budget` | 256 MiB | compression contexts kept per connection (context takeover), all workers together; beyond it new connections get no context takeover |
//! | `socket_send_buffer` | `None` (kernel autotuning) | `SO_SNDBUF` of accepted sockets; small keeps a stalled subscriber's backlog in the server's queue, where conflation applies, instead of the kernel's |
//!
//! Receive buffers, measured with the echo server on one pinned worker over loopback, as server CPU
//! time per message (on a shared 2-core machine, so ranges over repeated runs): for 32-byte messages
//! the buffer size makes no difference (~550-750 ns/message, 95% of it in the kernel's TCP stack); for
//! 256 KiB messages, with 512 buffers, 4 KiB buffers cost ~180-300 us/message, 16 KiB ~150-230 us,
//! 32 KiB ~135-170 us, 64 KiB ~130-140 us (fewer completions and decoder calls per message). 32 KiB x
//! 512 (16 MiB per worker) keeps most of the large-message gain at a quarter of the memory of 64 KiB x
//! 1024, with enough buffers for bursts over many connections: a completion holds its buffer only
//! while its callbacks run, so running out takes more than 512 receives in one loop turn, and is
//! recovered from without losing data.

use crate::error::EngineError;
use crate::guard;
use crate::pubsub::SlowConsumer;
use ringws_protocol::deflate::DeflateConfig;
use ringws_protocol::handshake::is_token;
use std::net::SocketAddr;
use std::time::Duration;

/// What happens when a send finds the connection's queued output already over `max_backpressure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackpressurePolicy {
    /// Drop the message and report [`SendResult::Dropped`](crate::SendResult::Dropped).
    #[default]
    Drop,
    /// Drop the message and close the connection with 1008 (policy violation): a slow consumer.
    Close,
    /// Never drop: queue the message, and stop reading from the connection while its queued output
    /// is over the limit, so TCP flow control pushes back on the peer; reading resumes (and
    /// `on_drain` runs) once the queue falls back under the limit. For request/response and echo
    /// traffic, where every message must be answered. The queue can overshoot the limit by what the
    /// kernel had already received when reading stopped (at most the worker's receive buffers).
    Pause,
}

/// The resolved, validated settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listening address (every worker binds it with `SO_REUSEPORT`).
    pub bind: SocketAddr,
    /// Worker threads, each with its own ring and listener.
    pub workers: usize,
    /// Pin each worker to one CPU of the process's affinity mask.
    pub pin_workers: bool,
    /// Listen backlog of each worker's listener.
    pub backlog: u32,
    /// Connections per worker; above it new connections are answered 503.
    pub max_connections: usize,
    /// Largest message (and frame) accepted; larger is closed with 1009.
    pub max_message_size: u64,
    /// Largest HTTP request head; larger is answered 431.
    pub max_header_bytes: usize,
    /// Queued output per connection above which the backpressure policy applies.
    pub max_backpressure: usize,
    /// What a send over `max_backpressure` does.
    pub backpressure_policy: BackpressurePolicy,
    /// Size of each provided receive buffer.
    pub buffer_size: u32,
    /// Number of provided receive buffers per worker (a power of two, at most 32768).
    pub buffer_count: u16,
    /// Time allowed from accept to a complete upgrade request.
    pub handshake_timeout: Duration,
    /// Close (1001) a connection after this long without receiving anything; zero disables.
    pub idle_timeout: Duration,
    /// Ping a connection after this long without receiving anything; zero disables.
    pub ping_interval: Duration,
    /// Drop a pinged connection that still sends nothing for this long.
    pub pong_timeout: Duration,
    /// Bound on the close handshake (and on draining a refused request) before the TCP close.
    pub close_timeout: Duration,
    /// Bound on the graceful drain at shutdown.
    pub shutdown_timeout: Duration,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Whether [`Server::run`](crate::Server::run) turns SIGINT/SIGTERM into a graceful shutdown.
    pub handle_signals: bool,
    /// Join a port that other processes of the same user already listen on, instead of refusing it
    /// as in use: all their listeners and ours share it with `SO_REUSEPORT` and the kernel spreads
    /// new connections over them. Runs one server as several processes, e.g. when each process may
    /// only open a limited number of files.
    pub share_port: bool,
    /// The slow-consumer policy of topics created without one of their own.
    pub slow_consumer: SlowConsumer,
    /// Most topics the server holds (topics are never removed).
    pub max_topics: usize,
    /// Accepted connections over all workers (0: no limit beyond `max_connections` per worker);
    /// above it new connections are answered 503 before their request is read.
    pub max_total_connections: usize,
    /// Connections per client IP address over all workers (0: no limit); above it new connections
    /// are answered 429 before their request is read. Off by default: behind a proxy or NAT many
    /// clients share one address.
    pub max_connections_per_ip: usize,
    /// Origins allowed to open a WebSocket, each `scheme://host[:port]` (exact) or
    /// `scheme://*.domain[:port]` (any subdomain of `domain`, not `domain` itself); an upgrade whose
    /// `Origin` matches none is answered 403 before `on_upgrade` runs. Empty (the default): any.
    /// Browsers always send `Origin`; this is the defence against cross-site WebSocket hijacking.
    pub allowed_origins: Vec<String>,
    /// With `allowed_origins` set, whether an upgrade without an `Origin` header is accepted (it
    /// cannot come from a browser page). Default true.
    pub allow_missing_origin: bool,
    /// Subprotocols this server speaks, most preferred first: when `on_upgrade` selects none, the
    /// engine selects the first of these that the client offered.
    pub subprotocols: Vec<String>,
    /// Refuse (400) an upgrade that offers none of `subprotocols`, instead of accepting it without a
    /// subprotocol. Default false.
    pub require_subprotocol: bool,
    /// Messages per second per connection (0, the default: no limit); a connection over the rate
    /// (after a burst of `message_burst`) is closed with 1008.
    pub message_rate: u32,
    /// Messages a connection may send back to back under `message_rate`.
    pub message_burst: u32,
    /// Client pings per second per connection that are answered (0: no limit); pings beyond it
    /// (after a burst of `ping_burst`) are ignored, and once another `ping_burst` of them has
    /// piled up the connection is closed with 1008.
    pub ping_rate: u32,
    /// Pings a connection may send back to back under `ping_rate`.
    pub ping_burst: u32,
    /// Bytes held in the assembly buffers of partly received messages, over all connections of all
    /// workers (0: no limit beyond `max_message_size` per connection); the connection whose
    /// receive takes the total over it is closed with 1009. Checked after each receive, so the
    /// total can pass it by one receive's growth per worker.
    pub max_assembly_memory: usize,
    /// Time allowed to receive a frame or message once its first byte has arrived (0 disables);
    /// past it the connection is closed with 1008 (slow-dribbled fragments).
    pub message_timeout: Duration,
    /// permessage-deflate (RFC 7692): the policy answering clients' offers; `None` (the default)
    /// declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// Bytes of compression contexts that connections may keep between messages (context
    /// takeover), over all workers; once spent, new connections are answered without context
    /// takeover, which costs them nothing between messages.
    pub deflate_budget: usize,
    /// `SO_SNDBUF` of accepted sockets, in bytes (set on each worker's listener, which accepted
    /// sockets inherit on Linux; the kernel doubles it for its bookkeeping and caps it at
    /// `net.core.wmem_max`). `None` (the default) leaves the kernel's autotuning, which lets a
    /// loopback connection buffer several MB. A small buffer keeps what a stalled subscriber has
    /// not read in the server's output queue, where [`SlowConsumer::Conflate`] can replace stale
    /// messages, rather than in the kernel's, where nothing can.
    pub socket_send_buffer: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9001)),
            workers: default_workers(),
            pin_workers: true,
            backlog: 4096,
            max_connections: 100_000,
            max_message_size: 16 << 20,
            max_header_bytes: ringws_protocol::handshake::DEFAULT_MAX_HEADER_BYTES,
            max_backpressure: 1 << 20,
            backpressure_policy: BackpressurePolicy::Drop,
            buffer_size: 32 << 10,
            buffer_count: 512,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            ring_entries: 2048,
            handle_signals: true,
            share_port: false,
            slow_consumer: SlowConsumer::DropNewest,
            max_topics: 1 << 16,
            max_total_connections: 0,
            max_connections_per_ip: 0,
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            message_rate: 0,
            message_burst: 100,
            ping_rate: 20,
            ping_burst: 100,
            max_assembly_memory: 256 << 20,
            message_timeout: Duration::from_secs(30),
            deflate: None,
            deflate_budget: 256 << 20,
            socket_send_buffer: None,
        }
    }
}

/// The number of CPUs this process may run on (honours `taskset` and cgroup CPU sets).
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Largest timer setting: keeps tick arithmetic far from `u32` overflow.
const MAX_TIMER: Duration = Duration::from_secs(7 * 24 * 3600);

fn invalid(setting: &'static str, requirement: &'static str) -> EngineError {
    EngineError::InvalidConfig {
        setting,
        requirement,
    }
}

impl Config {
    /// Checks every setting; the error names the first one out of range and its valid range.
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(1..=1024).contains(&self.workers) {
            return Err(invalid("workers", "between 1 and 1024"));
        }
        if !(1..=65535).contains(&self.backlog) {
            return Err(invalid("backlog", "between 1 and 65535"));
        }
        if !(1..=1 << 24).contains(&self.max_connections) {
            return Err(invalid("max_connections", "between 1 and 16777216"));
        }
        if !(1..=1 << 40).contains(&self.max_message_size) {
            return Err(invalid("max_message_size", "between 1 byte and 1 TiB"));
        }
        if !(256..=1 << 20).contains(&self.max_header_bytes) {
            return Err(invalid("max_header_bytes", "between 256 bytes and 1 MiB"));
        }
        if self.max_backpressure == 0 {
            return Err(invalid("max_backpressure", "at least 1 byte"));
        }
        if !(512..=1 << 20).contains(&self.buffer_size) {
            return Err(invalid("buffer_size", "between 512 bytes and 1 MiB"));
        }
        if !self.buffer_count.is_power_of_two() || self.buffer_count > 1 << 15 {
            return Err(invalid(
                "buffer_count",
                "a power of two between 1 and 32768",
            ));
        }
        if !(8..=1 << 15).contains(&self.ring_entries) {
            return Err(invalid("ring_entries", "between 8 and 32768"));
        }
        if self
            .socket_send_buffer
            .is_some_and(|b| !(1024..=1 << 30).contains(&b))
        {
            return Err(invalid(
                "socket_send_buffer",
                "between 1 KiB and 1 GiB (None: kernel autotuning)",
            ));
        }
        if !(1..=1 << 24).contains(&self.max_topics) {
            return Err(invalid("max_topics", "between 1 and 16777216"));
        }
        if let Some(d) = &self.deflate {
            if !(8..=15).contains(&d.server_max_window_bits) {
                return Err(invalid(
                    "deflate.server_max_window_bits",
                    "between 8 and 15",
                ));
            }
            if !(8..=15).contains(&d.client_max_window_bits) {
                return Err(invalid(
                    "deflate.client_max_window_bits",
                    "between 8 and 15",
                ));
            }
            if d.level > 9 {
                return Err(invalid("deflate.level", "between 0 and 9"));
            }
            if d.max_inflate_ratio == Some(0) {
                return Err(invalid(
                    "deflate.max_inflate_ratio",
                    "at least 1 (None disables)",
                ));
            }
        }
        self.validate_guard()?;
        let timers = [
            ("message_timeout", self.message_timeout, true),
            ("handshake_timeout", self.handshake_timeout, false),
            ("idle_timeout", self.idle_timeout, true),
            ("ping_interval", self.ping_interval, true),
            ("pong_timeout", self.pong_timeout, false),
            ("close_timeout", self.close_timeout, false),
            ("shutdown_timeout", self.shutdown_timeout, true),
        ];
        for (setting, value, zero_ok) in timers {
            if value > MAX_TIMER || (!zero_ok && value.is_zero()) {
                return Err(invalid(
                    setting,
                    if zero_ok {
                        "at most 7 days (0 disables)"
                    } else {
                        "between 1 ms and 7 days"
                    },
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Checks the admission and abuse limits (see [`crate::guard`]).
    fn validate_guard(&self) -> Result<(), EngineError> {
        if self.max_total_connections > 1 << 30 {
            return Err(invalid("max_total_connections", "at most 2^30 (0: none)"));
        }
        if self.max_connections_per_ip > 1 << 24 {
            return Err(invalid(
                "max_connections_per_ip",
                "at most 16777216 (0: none)",
            ));
        }
        if !self
            .allowed_origins
            .iter()
            .all(|p| guard::is_origin_pattern(p))
        {
            return Err(invalid(
                "allowed_origins",
                "a list of scheme://host[:port] or scheme://*.domain[:port]",
            ));
        }
        if !self.subprotocols.iter().all(|p| is_token(p)) {
            return Err(invalid("subprotocols", "a list of tokens (RFC 6455 §4.1)"));
        }
        if self.require_subprotocol && self.subprotocols.is_empty() {
            return Err(invalid(
                "require_subprotocol",
                "set only with at least one subprotocol",
            ));
        }
        if self.message_burst == 0 {
            return Err(invalid("message_burst", "at least 1"));
        }
        if self.ping_burst == 0 {
            return Err(invalid("ping_burst", "at least 1"));
        }
        if self.message_rate > 1_000_000 || self.ping_rate > 1_000_000 {
            return Err(invalid(
                if self.message_rate > 1_000_000 {
                    "message_rate"
                } else {
                    "ping_rate"
                },
                "at most 1000000 per second (0: none)",
            ));
        }
        if self.max_assembly_memory != 0
            && (self.max_assembly_memory as u64) < self.max_message_size
        {
            return Err(invalid(
                "max_assembly_memory",
                "at least max_message_size (0: none)",
            ));
        }
        Ok(())
    }
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
            "deflate.level"
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
}
