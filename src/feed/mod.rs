//! A synthetic market-data feed on pub/sub: the server behind `ringws serve --mode feed` and
//! `examples/market_feed.rs`.
//!
//! - One topic per symbol (`BTC-USD`, `ETH-USD`, ... then generated `S00015-USD`...), conflating per
//!   topic: a client that falls behind gets the latest quote of each symbol, not the backlog.
//! - A ticker thread publishes `rate` quotes per second in total, round-robin over the symbols,
//!   through [`Topic`] handles of a [`Publisher`], each stamped with its publish
//!   time ([`Quote`]). With `rate` 0 there is no ticker: a node of several behind a load balancer
//!   gets its quotes from a message broker instead (`--bridge`, fed by `ringws ticker`, which runs
//!   the same [`Ticker`] into the broker).
//! - Each quote has a position (`epoch`, `seq`): the ticker draws an epoch when it starts and
//!   numbers each symbol's quotes from 1, and the topics take those positions (also on nodes fed
//!   through a broker, which carries them). Each symbol keeps its last `history` quotes for at most
//!   `history_age` (1,000 and 60 s by default) as the frames already sent.
//! - Clients send JSON control messages ([`control`]) to subscribe and unsubscribe; a new subscriber
//!   first gets the last quote of each symbol it subscribed to, or, if it says where it was
//!   (`since`: after a reconnect), every quote it missed when the history still holds them all.
//! - `GET /symbols` lists the symbols as a JSON array; `GET /client.js` serves a browser client
//!   (reconnects with backoff and resumes where it was); `GET /` serves a live page on it that
//!   subscribes to a few symbols (or those named in `?symbols=A,B`) and shows their prices, update
//!   counts, the connection's state and what each reconnect recovered.

pub mod control;
mod quote;

pub use quote::{BINARY_HEADER, MAX_SYMBOL, Quote, mark_conflated, timestamp};

use control::{Control, ControlError};
use ringws::{
    EngineError, Handler, History, HttpResponse, Message, Position, Publisher, Request,
    ServerBuilder, SlowConsumer, Socket, Topic,
};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most symbols a feed publishes.
pub const MAX_SYMBOLS: usize = 100_000;
/// Highest publish rate, in quotes per second.
pub const MAX_RATE: u64 = 10_000_000;

/// The live page served at `GET /`.
const PAGE: &str = include_str!("page.html");
/// The browser client served at `GET /client.js`.
const CLIENT_JS: &str = include_str!("client.js");
/// Most quotes a symbol keeps as history.
pub const MAX_HISTORY: usize = 1_000_000;

/// Well-known symbols and a plausible starting mid price for each; further symbols are generated.
const KNOWN: [(&str, f64); 15] = [
    ("BTC-USD", 65_000.0),
    ("ETH-USD", 3_500.0),
    ("SOL-USD", 150.0),
    ("XRP-USD", 0.6),
    ("ADA-USD", 0.45),
    ("DOGE-USD", 0.15),
    ("AVAX-USD", 35.0),
    ("DOT-USD", 7.0),
    ("LINK-USD", 15.0),
    ("LTC-USD", 80.0),
    ("BCH-USD", 450.0),
    ("ATOM-USD", 9.0),
    ("XLM-USD", 0.11),
    ("UNI-USD", 8.0),
    ("NEAR-USD", 6.0),
];

/// The feed's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Number of symbols, 1 to [`MAX_SYMBOLS`] (default 100).
    pub symbols: usize,
    /// Quotes per second over all symbols, up to [`MAX_RATE`] (default 1000); 0: no ticker (the
    /// quotes come from a broker through a bridge).
    pub rate: u64,
    /// Publish quotes as binary frames (layout in [`Quote`]'s module docs) instead of JSON text.
    pub binary: bool,
    /// Quotes each symbol keeps for clients that resume after a reconnect, up to [`MAX_HISTORY`]
    /// (default 1000; 0: none, a resuming client gets the last quote).
    pub history: usize,
    /// How long a kept quote stays at most (default 60 s; zero: no age limit).
    pub history_age: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            symbols: 100,
            rate: 1000,
            binary: false,
            history: 1000,
            history_age: Duration::from_secs(60),
        }
    }
}

impl FeedConfig {
    /// What each symbol's topic keeps.
    fn keep(&self) -> History {
        History {
            max_len: self.history,
            max_age: (!self.history_age.is_zero()).then_some(self.history_age),
        }
    }
}

/// The first `n` symbol names: the well-known ones, then `S00015-USD`, `S00016-USD`, ...
///
/// ```
/// let s = ringws_cli::feed::symbol_names(17);
/// assert_eq!((s[0].as_str(), s[1].as_str(), s[16].as_str()), ("BTC-USD", "ETH-USD", "S00016-USD"));
/// ```
pub fn symbol_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match KNOWN.get(i) {
            Some((name, _)) => (*name).to_owned(),
            None => format!("S{i:05}-USD"),
        })
        .collect()
}

/// What every worker's handler shares.
struct Shared {
    known: HashSet<Box<str>>,
    /// The `GET /symbols` body.
    symbols_json: Vec<u8>,
}

/// A feed ready to serve.
#[derive(Debug)]
pub struct Feed {
    cfg: FeedConfig,
    names: Vec<String>,
}

/// Where a started server listens, for its ready line.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The WebSocket address (the actual port if bound to port 0).
    pub addr: SocketAddr,
    /// Worker threads.
    pub workers: usize,
    /// The admin listener (`/metrics`, `/health`, `/ready`), if one is configured.
    pub admin: Option<SocketAddr>,
    /// The TLS listener beside the plain one (`tls_bind`), if one is configured.
    pub tls: Option<SocketAddr>,
}

impl Listening {
    /// Where `server` listens.
    pub fn of(server: &ringws::Server) -> Self {
        Self {
            addr: server.local_addr(),
            workers: server.config().workers,
            admin: server.admin_addr(),
            tls: server.tls_addr(),
        }
    }
}

impl Feed {
    /// Checks the settings; the error names the one out of range.
    pub fn new(cfg: FeedConfig) -> Result<Self, EngineError> {
        if !(1..=MAX_SYMBOLS).contains(&cfg.symbols) {
            return Err(EngineError::InvalidConfig {
                setting: "symbols",
                requirement: "between 1 and 100000",
            });
        }
        if cfg.rate > MAX_RATE {
            return Err(EngineError::InvalidConfig {
                setting: "rate",
                requirement: "at most 10000000 quotes per second (0: no ticker)",
            });
        }
        if cfg.history > MAX_HISTORY {
            return Err(EngineError::InvalidConfig {
                setting: "history",
                requirement: "at most 1000000 quotes per symbol (0: none)",
            });
        }
        Ok(Self {
            cfg,
            names: symbol_names(cfg.symbols),
        })
    }

    /// The symbols, in publishing order.
    pub fn symbols(&self) -> &[String] {
        &self.names
    }

    /// Builds the server from `builder` (raising `max_topics` to fit the symbols), creates one
    /// conflating topic per symbol with a first quote each, then serves until shutdown (see
    /// [`Server::run`](ringws::Server::run)) while the ticker publishes. `ready` is called with
    /// where the server listens once every worker accepts.
    pub fn serve(
        self,
        builder: ServerBuilder,
        ready: impl FnOnce(&Listening),
    ) -> Result<(), EngineError> {
        self.serve_with(builder, |on, _| {
            ready(on);
            Ok(())
        })
    }

    /// [`serve`](Self::serve), with `ready` also given the server's [`Publisher`] (e.g. to attach
    /// a broker bridge). It runs on the thread that runs the server, after SIGINT/SIGTERM were
    /// blocked there, so threads it starts inherit that mask. What it returns is dropped once the
    /// server has stopped (e.g. a guard that stops and joins a thread); an error from it shuts
    /// the server down and is returned.
    pub fn serve_with<G>(
        self,
        builder: ServerBuilder,
        ready: impl FnOnce(&Listening, &Publisher) -> Result<G, EngineError>,
    ) -> Result<(), EngineError> {
        let n = self.names.len();
        let server = builder.max_topics(n.max(1 << 16)).build()?;
        let publisher = server.publisher();
        let topics = self
            .names
            .iter()
            .map(|name| publisher.create_topic(name, SlowConsumer::CONFLATE_PER_TOPIC))
            .collect::<Result<Vec<Topic>, _>>()
            .map_err(|_| EngineError::InvalidConfig {
                setting: "max_topics",
                requirement: "room for one new topic per symbol",
            })?;
        for t in &topics {
            t.set_history(self.cfg.keep());
            t.mark_conflated(mark_conflated);
        }
        let mut ticker = Ticker::new(&self.names, self.cfg, topics);
        if self.cfg.rate > 0 {
            ticker.publish_all(); // every symbol has a last quote before the first client arrives
        }
        let shared = Arc::new(Shared {
            known: self.names.iter().map(|s| s.as_str().into()).collect(),
            symbols_json: symbols_json(&self.names),
        });
        let listening = Listening::of(&server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut thread: Option<JoinHandle<()>> = None;
        let mut guard: Option<Result<G, EngineError>> = None;
        let handle = server.handle();
        let result = server.run_with_ready(
            |_| FeedHandler::new(Arc::clone(&shared)),
            || {
                // Spawned from the thread that runs the server, after it blocked SIGINT/SIGTERM,
                // so the ticker inherits the mask and the signals reach the server.
                if self.cfg.rate > 0 {
                    let stop = Arc::clone(&stop);
                    thread = Some(std::thread::spawn(move || {
                        ticker.run(&stop);
                    }));
                }
                let g = ready(&listening, &publisher);
                if g.is_err() {
                    handle.shutdown();
                }
                guard = Some(g);
            },
        );
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = thread {
            let _ = t.join();
        }
        match guard {
            Some(Err(e)) => Err(e),
            Some(Ok(g)) => {
                drop(g);
                result
            }
            None => result,
        }
    }
}

/// `["BTC-USD","ETH-USD",...]`.
fn symbols_json(names: &[String]) -> Vec<u8> {
    let mut out = String::from("[");
    for (i, s) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        control::push_json_str(&mut out, s);
    }
    out.push(']');
    out.into_bytes()
}

/// The clock quotes are stamped with: nanoseconds since the UNIX epoch (`CLOCK_REALTIME`, 0 if the
/// clock is before it). A client on the same host subtracts a quote's `ts` ([`timestamp`]) from this
/// clock's reading at receipt to get the publish-to-receive latency.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Where a [`Ticker`] publishes: the topics of a local server, or a message broker.
pub trait QuoteSink {
    /// Publishes `msg`, the quote of symbol number `index` (named `symbol`) at `position` (its
    /// epoch and seq, as the quote says). Must not block for long: the ticker keeps its rate by
    /// publishing between 1 ms sleeps.
    fn publish(&mut self, index: usize, symbol: &str, position: Position, msg: Message<'_>);
}

/// The feed's own topics, one per symbol in symbol order.
impl QuoteSink for Vec<Topic> {
    fn publish(&mut self, index: usize, _symbol: &str, position: Position, msg: Message<'_>) {
        // Positions only move forward: the ticker numbers each symbol's quotes one by one.
        let _ = self[index].publish_at(position, msg);
    }
}

/// One symbol's price state.
struct Book {
    symbol: Box<str>,
    mid: f64,
    seq: u64,
}

/// Publishes synthetic quotes: a random walk per symbol, round-robin at a fixed total rate, each
/// stamped here with its position (the ticker's `epoch`, drawn when it starts, and its symbol's
/// `seq`) and the publish time `ts`, so that every node behind a broker delivers the same position
/// for the same quote.
pub struct Ticker<S> {
    sink: S,
    books: Vec<Book>,
    cfg: FeedConfig,
    epoch: u64,
    /// xorshift64 state (never zero).
    rng: u64,
    next: usize,
    text: String,
    bytes: Vec<u8>,
}

impl<S> fmt::Debug for Ticker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticker")
            .field("symbols", &self.books.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<S: QuoteSink> Ticker<S> {
    /// A ticker for the symbols `names` (see [`symbol_names`]) publishing into `sink`.
    pub fn new(names: &[String], cfg: FeedConfig, sink: S) -> Self {
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        let books = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mid = KNOWN.get(i).map_or_else(
                    || 1.0 + (xorshift(&mut rng) % 50_000) as f64 / 100.0,
                    |k| k.1,
                );
                Book {
                    symbol: name.as_str().into(),
                    mid,
                    seq: 0,
                }
            })
            .collect();
        Self {
            sink,
            books,
            cfg,
            epoch: Position::new_epoch(),
            rng,
            next: 0,
            text: String::new(),
            bytes: Vec::new(),
        }
    }

    /// Moves symbol `i`'s price and publishes its quote.
    fn publish(&mut self, i: usize) {
        // A uniform step of up to ±0.02% of the mid; the spread is 0.01% of it.
        let step = (xorshift(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let book = &mut self.books[i];
        book.mid = (book.mid * (1.0 + step * 4e-4)).max(1e-6);
        book.seq += 1;
        let half = book.mid * 5e-5;
        let quote = Quote {
            symbol: &book.symbol,
            bid: book.mid - half,
            ask: book.mid + half,
            seq: book.seq,
            epoch: self.epoch,
            conflated: false,
            ts: now_ns(),
        };
        let at = Position {
            epoch: self.epoch,
            seq: book.seq,
        };
        if self.cfg.binary {
            self.bytes.clear();
            quote.write_binary(&mut self.bytes);
            self.sink
                .publish(i, &book.symbol, at, Message::Binary(&self.bytes));
        } else {
            self.text.clear();
            quote.write_json(&mut self.text);
            self.sink
                .publish(i, &book.symbol, at, Message::Text(&self.text));
        }
    }

    /// One quote for every symbol.
    pub fn publish_all(&mut self) {
        for i in 0..self.books.len() {
            self.publish(i);
        }
    }

    /// Publishes at `cfg.rate` quotes per second until `stop`, checking it every millisecond. After
    /// a stall it catches up at most one second's worth. Returns the sink.
    pub fn run(mut self, stop: &AtomicBool) -> S {
        let (start, rate, n) = (Instant::now(), u128::from(self.cfg.rate), self.books.len());
        let mut sent: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_nanos() * rate / 1_000_000_000) as u64;
            sent = sent.max(due.saturating_sub(self.cfg.rate));
            while sent < due {
                self.publish(self.next);
                self.next = (self.next + 1) % n;
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.sink
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The feed's callbacks: control messages, the page and `/symbols`.
struct FeedHandler {
    shared: Arc<Shared>,
    /// A private copy of the control message being parsed (simd-json parses in place).
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    reply: String,
}

impl FeedHandler {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            scratch: Vec::new(),
            buffers: simd_json::Buffers::default(),
            reply: String::new(),
        }
    }

    /// Applies one control message; the reply (ack or error) is left in `self.reply`. Subscribing
    /// queues the reply first, then each symbol's last quote.
    fn control(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        self.reply.clear();
        let payload = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(_) => return control::error(&mut self.reply, &ControlError::Binary),
        };
        if payload.len() > control::MAX_CONTROL {
            return control::error(&mut self.reply, &ControlError::TooLarge);
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let parsed = match control::parse(&mut self.scratch, &mut self.buffers) {
            Ok(c) => c,
            Err(e) => return control::error(&mut self.reply, &e),
        };
        let (subscribe, symbols, since) = match parsed {
            Control::Subscribe { symbols, since } => (true, symbols, since),
            Control::Unsubscribe(symbols) => (false, symbols, Vec::new()),
        };
        if let Some(bad) = symbols.iter().find(|s| !self.shared.known.contains(&***s)) {
            let e = ControlError::UnknownSymbol(control::clip(bad));
            return control::error(&mut self.reply, &e);
        }
        if !subscribe {
            control::ack(&mut self.reply, false, &symbols);
            let _ = ws.send_text(&self.reply);
            self.reply.clear();
            for s in &symbols {
                ws.unsubscribe(s);
            }
            return;
        }
        // Each symbol from where the client was, if it said, else from its last quote; the reply
        // (which says what was recovered) goes before any of the quotes.
        let starts: Vec<(&str, Option<Position>)> = symbols
            .iter()
            .map(|s| {
                let at = since.iter().find(|(name, _)| name == s).map(|(_, p)| *p);
                (&**s, at)
            })
            .collect();
        let asked: Vec<bool> = starts.iter().map(|(_, at)| at.is_some()).collect();
        let reply = &mut self.reply;
        ws.subscribe_many(&starts, |outcomes| {
            control::subscribed(reply, &symbols, &asked, outcomes);
            Some(std::mem::take(reply))
        });
    }
}

impl Handler for FeedHandler {
    type State = ();

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        self.control(ws, msg);
        if !self.reply.is_empty() {
            let _ = ws.send_text(&self.reply);
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> HttpResponse {
        match req.path() {
            "/" | "/index.html" => HttpResponse::new(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .header("Cache-Control", "no-store")
                .body(PAGE.as_bytes().to_vec()),
            "/client.js" => HttpResponse::new(200)
                .header("Content-Type", "text/javascript; charset=utf-8")
                .header("Cache-Control", "no-store")
                .body(CLIENT_JS.as_bytes().to_vec()),
            "/symbols" => HttpResponse::new(200)
                .header("Content-Type", "application/json")
                .body(self.shared.symbols_json.clone()),
            _ => HttpResponse::text(404, "not found: try /, /symbols or /client.js"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_fit_the_binary_layout_and_are_unique() {
        let names = symbol_names(MAX_SYMBOLS);
        assert!(names.iter().all(|s| s.len() <= MAX_SYMBOL));
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), MAX_SYMBOLS);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let bad = |cfg| match Feed::new(cfg) {
            Err(EngineError::InvalidConfig { setting, .. }) => setting,
            other => panic!("{other:?}"),
        };
        let d = FeedConfig::default();
        assert_eq!(bad(FeedConfig { symbols: 0, ..d }), "symbols");
        assert_eq!(
            bad(FeedConfig {
                symbols: MAX_SYMBOLS + 1,
                ..d
            }),
            "symbols"
        );
        assert_eq!(
            bad(FeedConfig {
                rate: MAX_RATE + 1,
                ..d
            }),
            "rate"
        );
        assert!(Feed::new(FeedConfig { rate: 0, ..d }).is_ok(), "no ticker");
        assert!(Feed::new(d).is_ok());
    }

    #[test]
    fn symbols_json_is_a_json_array() {
        let mut body = symbols_json(&symbol_names(3));
        assert_eq!(body, br#"["BTC-USD","ETH-USD","SOL-USD"]"#);
        assert!(simd_json::to_owned_value(&mut body).is_ok());
    }
}
