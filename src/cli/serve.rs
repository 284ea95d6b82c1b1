//! `ringws serve`: the benchmark echo server, or the market-data feed (`--mode feed`).

use super::deflate::DeflateArgs;
use super::limits::LimitArgs;
use super::{given, note};
use clap::{Args, ValueEnum};
use ringws::{BackpressurePolicy, EngineError, Handler, Message, Server, ServerBuilder, Socket};
use ringws_cli::feed::{Feed, FeedConfig};
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
    /// Address to listen on: HOST:PORT, e.g. 0.0.0.0:9001 for every IPv4 address, [::1]:9001,
    /// or localhost:9001 (port 0: any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9001", value_parser = parse_addr)]
    addr: String,
    /// Worker threads, one ring each (default: the CPUs this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Largest message accepted, in bytes (default 16 MiB); larger closes with 1009.
    #[arg(long)]
    max_message_size: Option<u64>,
    /// Close connections that receive nothing for this many seconds; 0 disables (default 120).
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Ping a connection that sent nothing for this many seconds; 0 disables (default 30).
    #[arg(long)]
    ping_interval: Option<u64>,
    /// Drop a connection that still sent nothing this many seconds after a ping (default 30).
    #[arg(long)]
    pong_timeout: Option<u64>,
    /// Size of each provided receive buffer, in bytes (default 32768).
    #[arg(long)]
    buffer_size: Option<u32>,
    /// Provided receive buffers per worker, a power of two up to 32768 (default 512).
    #[arg(long)]
    buffer_count: Option<u16>,
    /// Listen backlog per worker (default 4096).
    #[arg(long)]
    backlog: Option<u32>,
    /// Connections per worker before new ones get 503 (default 100000).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Bytes queued per connection before its backpressure (and, for a feed subscriber,
    /// conflation) applies (default 1 MiB).
    #[arg(long)]
    max_backpressure: Option<usize>,
    /// Submission queue entries per worker ring, 8 to 32768 (default 2048); the completion queue
    /// is 4x. A fan-out to more subscribers than the completion queue holds can overflow it (the
    /// kernel then keeps the extra completions aside, at a cost).
    #[arg(long)]
    ring_entries: Option<u32>,
    /// SO_SNDBUF of accepted connections in bytes, 1024 to 1 GiB (default: kernel autotuning; Linux
    /// doubles the value and caps it at net.core.wmem_max). Small keeps a stalled feed subscriber's
    /// backlog in the server's conflating queue instead of the kernel's socket buffer.
    #[arg(long, value_name = "BYTES")]
    send_buffer: Option<usize>,
    /// Join other `ringws serve` processes (same user) already listening on the port: the kernel
    /// spreads connections over all of them (SO_REUSEPORT). Without it a taken port is an error.
    #[arg(long)]
    share_port: bool,
    /// With --mode feed: number of symbols (BTC-USD, ETH-USD, ... then generated names), 1 to 100000
    /// (default 100).
    #[arg(long)]
    symbols: Option<usize>,
    /// With --mode feed: quotes published per second over all symbols, 1 to 10000000 (default 1000).
    #[arg(long)]
    rate: Option<u64>,
    /// With --mode feed: publish quotes as binary frames instead of JSON text (layout in the README).
    #[arg(long)]
    binary: bool,
    #[command(flatten)]
    deflate: DeflateArgs,
    /// With --deflate: MiB of compression contexts kept between messages over all connections
    /// (default 256); beyond it new connections get no context takeover.
    #[arg(long, requires = "deflate")]
    deflate_budget: Option<usize>,
    #[command(flatten)]
    limits: LimitArgs,
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

impl ServeArgs {
    /// Options that only mean something in another mode: refused rather than silently ignored.
    pub fn check(&self) -> Result<(), String> {
        let feed_only = [
            ("--symbols", self.symbols.is_some()),
            ("--rate", self.rate.is_some()),
            ("--binary", self.binary),
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
}

/// Builds the server, prints the ready line once every worker accepts, serves until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), EngineError> {
    let mut b = Server::builder()
        .bind(args.addr.as_str())
        .handle_signals(true);
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
    b = given(b, args.backlog, ServerBuilder::backlog);
    b = given(b, args.max_connections, ServerBuilder::max_connections);
    b = given(b, args.max_backpressure, ServerBuilder::max_backpressure);
    b = given(b, args.ring_entries, ServerBuilder::ring_entries);
    b = given(b, args.send_buffer, ServerBuilder::socket_send_buffer);
    if args.share_port {
        b = b.share_port(true);
    }
    if let Some(policy) = args.deflate.policy() {
        b = b.deflate(policy);
    }
    if let Some(mib) = args.deflate_budget {
        b = b.deflate_budget(mib.saturating_mul(1 << 20));
    }
    b = args.limits.apply(b);
    // Tests and scripts wait for exactly this line, printed first.
    let ready = |addr, workers| note!("listening on {addr} ({workers} workers)");
    match args.mode {
        Mode::Echo => {
            let server = b.build()?;
            let (addr, workers) = (server.local_addr(), server.config().workers);
            server.run_with_ready(|_| Echo, || ready(addr, workers))
        }
        Mode::Feed => {
            let defaults = FeedConfig::default();
            let feed = Feed::new(FeedConfig {
                symbols: args.symbols.unwrap_or(defaults.symbols),
                rate: args.rate.unwrap_or(defaults.rate),
                binary: args.binary,
            })?;
            feed.serve(b, |addr, workers| {
                ready(addr, workers);
                note!("feed page: {}", page_url(addr));
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
