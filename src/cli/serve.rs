//! `ringws serve`: the benchmark echo server, or the market-data feed (`--mode feed`).

use super::bridge::BridgeArgs;
use super::deflate::DeflateArgs;
use super::limits::LimitArgs;
use super::{given, note};
use clap::{Args, ValueEnum};
use ringws::{BackpressurePolicy, EngineError, Handler, Message, Server, ServerBuilder, Socket};
use ringws_cli::bridge::BridgeThread;
use ringws_cli::feed::{Feed, FeedConfig, Listening};
use ringws_cli::settings::{help, long_help};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What the server does with messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Send every message back as it came (the benchmark and conformance server).
    Echo,
    /// Publish synthetic quotes; clients subscribe with JSON control messages; `GET /` is a live
    /// page, `GET /symbols` the symbol list.
    Feed,
}

/// Options of `ringws serve`; unset ones keep the engine's defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What to do with messages.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr, help = help("bind"), long_help = long_help("bind", None))]
    addr: Option<String>,
    #[arg(long, help = help("workers"), long_help = long_help("workers", None))]
    workers: Option<usize>,
    #[arg(long, value_name = "BYTES", help = help("max_message_size"), long_help = long_help("max_message_size", Some("bytes")))]
    max_message_size: Option<u64>,
    #[arg(long, value_name = "SECONDS", help = help("idle_timeout"), long_help = long_help("idle_timeout", Some("seconds")))]
    idle_timeout: Option<u64>,
    #[arg(long, value_name = "SECONDS", help = help("ping_interval"), long_help = long_help("ping_interval", Some("seconds")))]
    ping_interval: Option<u64>,
    #[arg(long, value_name = "SECONDS", help = help("pong_timeout"), long_help = long_help("pong_timeout", Some("seconds")))]
    pong_timeout: Option<u64>,
    #[arg(long, value_name = "BYTES", help = help("buffer_size"), long_help = long_help("buffer_size", Some("bytes")))]
    buffer_size: Option<u32>,
    #[arg(long, help = help("buffer_count"), long_help = long_help("buffer_count", None))]
    buffer_count: Option<u16>,
    #[arg(long, value_name = "BOOL", help = help("incremental_buffers"), long_help = long_help("incremental_buffers", None))]
    incremental_buffers: Option<bool>,
    #[arg(long, value_name = "BOOL", help = help("recv_bundles"), long_help = long_help("recv_bundles", None))]
    recv_bundles: Option<bool>,
    #[arg(long, value_name = "BOOL", help = help("no_sq_array"), long_help = long_help("no_sq_array", None))]
    no_sq_array: Option<bool>,
    #[arg(long, value_name = "BOOL", help = help("skip_cancel_completions"), long_help = long_help("skip_cancel_completions", None))]
    skip_cancel_completions: Option<bool>,
    #[arg(long, value_name = "BOOL", help = help("msg_ring"), long_help = long_help("msg_ring", None))]
    msg_ring: Option<bool>,
    #[arg(long, value_name = "MICROSECONDS", help = help("batch_wait"), long_help = long_help("batch_wait", Some("microseconds")))]
    batch_wait: Option<u64>,
    #[arg(long, value_name = "BOOL", help = help("direct_descriptors"), long_help = long_help("direct_descriptors", None))]
    direct_descriptors: Option<bool>,
    #[arg(long, value_name = "BYTES", help = help("send_zc_threshold"), long_help = long_help("send_zc_threshold", Some("bytes")))]
    send_zc_threshold: Option<usize>,
    #[arg(long, value_name = "BYTES", help = help("recv_into_threshold"), long_help = long_help("recv_into_threshold", Some("bytes")))]
    recv_into_threshold: Option<usize>,
    #[arg(long, help = help("backlog"), long_help = long_help("backlog", None))]
    backlog: Option<u32>,
    #[arg(long, help = help("max_connections"), long_help = long_help("max_connections", None))]
    max_connections: Option<usize>,
    #[arg(long, value_name = "BYTES", help = help("max_backpressure"), long_help = long_help("max_backpressure", Some("bytes")))]
    max_backpressure: Option<usize>,
    #[arg(long, help = help("ring_entries"), long_help = long_help("ring_entries", None))]
    ring_entries: Option<u32>,
    #[arg(long, value_name = "BYTES", help = help("socket_send_buffer"), long_help = long_help("socket_send_buffer", Some("bytes")))]
    send_buffer: Option<usize>,
    #[arg(long, help = help("share_port"), long_help = long_help("share_port", None))]
    share_port: bool,
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr, help = help("admin_addr"), long_help = long_help("admin_addr", None))]
    admin_addr: Option<String>,
    /// Do not answer /metrics, /health and /ready at all (they are on by default).
    #[arg(long, conflicts_with = "admin_addr")]
    no_ops_endpoints: bool,
    /// wss://: the certificate chain (PEM, leaf first); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// wss://: the private key (PEM: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519); with
    /// --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr, requires = "tls_cert", help = help("tls_bind"), long_help = long_help("tls_bind", None))]
    tls_addr: Option<String>,
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, help = help("drain_delay"), long_help = long_help("drain_delay", Some("seconds, fractions allowed")))]
    drain_delay: Option<Duration>,
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, help = help("health_timeout"), long_help = long_help("health_timeout", Some("seconds, fractions allowed")))]
    health_timeout: Option<Duration>,
    #[arg(long, help = format!(
        "With --mode feed: number of symbols (BTC-USD, ETH-USD, ... then generated names), 1 to \
         100000 [default: {}]",
        FeedConfig::default().symbols
    ))]
    symbols: Option<usize>,
    #[arg(long, help = format!(
        "With --mode feed: quotes published per second over all symbols, up to 10000000; 0: no \
         ticker (a node fed by `ringws ticker` through --bridge) [default: {}]",
        FeedConfig::default().rate
    ))]
    rate: Option<u64>,
    /// With --mode feed: publish quotes as binary frames instead of JSON text (layout in docs/cli.md).
    #[arg(long)]
    binary: bool,
    #[arg(long, value_name = "QUOTES", help = format!(
        "With --mode feed: quotes each symbol keeps for clients that resume after a reconnect, up \
         to 1000000; 0: none [default: {}]",
        FeedConfig::default().history
    ))]
    history: Option<usize>,
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, help = format!(
        "With --mode feed: how long a kept quote stays at most, in seconds; 0: no age limit \
         [default: {}]",
        FeedConfig::default().history_age.as_secs()
    ))]
    history_age: Option<Duration>,
    #[arg(long, value_name = "MIB", help = help("max_history_memory"), long_help = long_help("max_history_memory", Some("MiB")))]
    max_history_memory: Option<usize>,
    #[command(flatten)]
    deflate: DeflateArgs,
    #[arg(long, value_name = "MIB", requires = "deflate", help = help("deflate_budget"), long_help = long_help("deflate_budget", Some("MiB")))]
    deflate_budget: Option<usize>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    bridge: BridgeArgs,
}

/// Checks `--addr`: `HOST:PORT`, where HOST is an IP address (IPv6 in brackets) or a name to
/// resolve. The engine resolves it when it binds.
fn parse_addr(s: &str) -> Result<String, String> {
    let hostname_and_port = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains([':', '[', ']', '/']) && port.parse::<u16>().is_ok()
    });
    if s.parse::<SocketAddr>().is_ok() || hostname_and_port {
        Ok(s.to_owned())
    } else {
        Err("expected HOST:PORT (e.g. 127.0.0.1:9001, or [::1]:9001 for IPv6)".to_owned())
    }
}

/// A duration in seconds, fractions allowed (`0.5`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| "expected a number of seconds (e.g. 5 or 0.5)".to_owned())
}

impl ServeArgs {
    /// Options that only mean something in another mode: refused rather than silently ignored.
    pub fn check(&self) -> Result<(), String> {
        let feed_only = [
            ("--symbols", self.symbols.is_some()),
            ("--rate", self.rate.is_some()),
            ("--binary", self.binary),
            ("--history", self.history.is_some()),
            ("--history-age", self.history_age.is_some()),
            ("--bridge", self.bridge.bridge.is_some()),
        ];
        let given: Vec<&str> = feed_only
            .iter()
            .filter(|(_, given)| *given)
            .map(|(flag, _)| *flag)
            .collect();
        if self.mode != Mode::Feed && !given.is_empty() {
            let (list, are) = match given.len() {
                1 => (given[0].to_owned(), "is an option"),
                _ => (given.join(" and "), "are options"),
            };
            return Err(format!(
                "{list} {are} of the market feed: add --mode feed (the echo server publishes nothing)"
            ));
        }
        Ok(())
    }
}

/// The URL of the feed's page for a server listening on `addr`: an unspecified address (0.0.0.0,
/// [::]) is reached on the loopback address from this host.
fn page_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

/// Echoes every message.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        // Never dropped: the server runs with `BackpressurePolicy::Pause`, so a client that sends
        // faster than it reads its echoes is slowed down by TCP instead of losing echoes.
        let _ = ws.send(msg);
    }

    fn on_idle(&mut self, _ctx: &mut ringws::Context<'_, ()>) {
        crate::collect_freed_memory();
    }
}

/// Builds the server, prints the ready line once every worker accepts, serves until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), EngineError> {
    let mut b = Server::builder().handle_signals(true);
    if let Some(addr) = &args.addr {
        b = b.bind(addr.as_str());
    }
    if args.mode == Mode::Echo {
        // Every message is answered: pause reading under backpressure instead of dropping echoes.
        b = b.backpressure_policy(BackpressurePolicy::Pause);
    }
    b = given(b, args.workers, ServerBuilder::workers);
    b = given(b, args.max_message_size, ServerBuilder::max_message_size);
    b = given(
        b,
        args.idle_timeout.map(Duration::from_secs),
        ServerBuilder::idle_timeout,
    );
    b = given(
        b,
        args.ping_interval.map(Duration::from_secs),
        ServerBuilder::ping_interval,
    );
    b = given(
        b,
        args.pong_timeout.map(Duration::from_secs),
        ServerBuilder::pong_timeout,
    );
    b = given(b, args.buffer_size, ServerBuilder::buffer_size);
    b = given(b, args.buffer_count, ServerBuilder::buffer_count);
    b = given(
        b,
        args.incremental_buffers,
        ServerBuilder::incremental_buffers,
    );
    b = given(b, args.recv_bundles, ServerBuilder::recv_bundles);
    b = given(b, args.no_sq_array, ServerBuilder::no_sq_array);
    b = given(
        b,
        args.skip_cancel_completions,
        ServerBuilder::skip_cancel_completions,
    );
    b = given(b, args.msg_ring, ServerBuilder::msg_ring);
    b = given(
        b,
        args.batch_wait.map(Duration::from_micros),
        ServerBuilder::batch_wait,
    );
    b = given(
        b,
        args.direct_descriptors,
        ServerBuilder::direct_descriptors,
    );
    b = given(b, args.send_zc_threshold, ServerBuilder::send_zc_threshold);
    b = given(
        b,
        args.recv_into_threshold,
        ServerBuilder::recv_into_threshold,
    );
    b = given(b, args.backlog, ServerBuilder::backlog);
    b = given(b, args.max_connections, ServerBuilder::max_connections);
    b = given(b, args.max_backpressure, ServerBuilder::max_backpressure);
    b = given(b, args.ring_entries, ServerBuilder::ring_entries);
    b = given(b, args.send_buffer, ServerBuilder::socket_send_buffer);
    if args.share_port {
        b = b.share_port(true);
    }
    if let Some(addr) = &args.admin_addr {
        b = b.admin_addr(addr.as_str());
    }
    if args.no_ops_endpoints {
        b = b.ops_endpoints(false);
    }
    b = given(b, args.drain_delay, ServerBuilder::drain_delay);
    if let Some(addr) = &args.tls_addr {
        b = b.tls_bind(addr.as_str());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match ringws::TlsConfig::from_pem_files(cert, key) {
            Ok(tls) => b = b.tls(tls),
            Err(e) => {
                return Err(EngineError::Io {
                    context: "loading the TLS certificate",
                    source: std::io::Error::other(e),
                });
            }
        }
    }
    b = given(b, args.health_timeout, ServerBuilder::health_timeout);
    if let Some(policy) = args.deflate.policy() {
        b = b.deflate(policy);
    }
    if let Some(mib) = args.max_history_memory {
        b = b.max_history_memory(mib.saturating_mul(1 << 20));
    }
    if let Some(mib) = args.deflate_budget {
        b = b.deflate_budget(mib.saturating_mul(1 << 20));
    }
    b = args.limits.apply(b);
    let bridge = args
        .bridge
        .options(format!(
            "ringws serve {}",
            args.addr.as_deref().unwrap_or("127.0.0.1:9001")
        ))
        .map_err(|e| EngineError::Io {
            context: "reading the --bridge options",
            source: std::io::Error::other(e),
        })?;
    // Tests and scripts wait for exactly this line, printed first.
    let ready = |on: &Listening| {
        note!("listening on {} ({} workers)", on.addr, on.workers);
        if let Some(tls) = on.tls {
            note!("TLS (wss://) on {tls}");
        }
        if let Some(admin) = on.admin {
            note!("admin endpoints on http://{admin}/ (/metrics, /health, /ready)");
        }
    };
    match args.mode {
        Mode::Echo => {
            let server = b.build()?;
            let on = Listening::of(&server);
            server.run_with_ready(|_| Echo, || ready(&on))
        }
        Mode::Feed => {
            let defaults = FeedConfig::default();
            let feed = Feed::new(FeedConfig {
                symbols: args.symbols.unwrap_or(defaults.symbols),
                rate: args.rate.unwrap_or(defaults.rate),
                binary: args.binary,
                history: args.history.unwrap_or(defaults.history),
                history_age: args.history_age.unwrap_or(defaults.history_age),
            })?;
            feed.serve_with(b, |on, publisher| {
                ready(on);
                note!("feed page: {}", page_url(on.addr));
                let Some(opts) = bridge else {
                    return Ok(None);
                };
                let url = opts.url.url.clone();
                let thread = BridgeThread::start(publisher, opts).map_err(|e| EngineError::Io {
                    context: "starting the broker bridge",
                    source: std::io::Error::other(e.to_string()),
                })?;
                note!("bridged to {url}");
                Ok(Some(thread))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for ok in [
            "127.0.0.1:9001",
            "0.0.0.0:0",
            "[::1]:9001",
            "localhost:9001",
            "ws.example.com:443",
        ] {
            assert_eq!(parse_addr(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "127.0.0.1",
            "9001",
            ":9001",
            "::1",
            "::1:9001",
            "127.0.0.1:99999",
            "localhost:",
            "",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_page_url_is_reachable_from_this_host() {
        let url = |a: &str| page_url(a.parse().unwrap());
        assert_eq!(url("127.0.0.1:9001"), "http://127.0.0.1:9001/");
        assert_eq!(url("0.0.0.0:9001"), "http://127.0.0.1:9001/");
        assert_eq!(url("[::]:80"), "http://[::1]:80/");
        assert_eq!(url("10.1.2.3:8080"), "http://10.1.2.3:8080/");
    }
}
