//! Bridges between a node's pub/sub and a message broker, for several `ringws serve` nodes behind a
//! load balancer (`ringws serve --mode feed --bridge nats://HOST:PORT`), and the broker publisher
//! behind `ringws ticker --bridge URL`.
//!
//! The engine's side is [`ringws::Bridge`]: it reports the node's interest (a topic's first
//! subscriber on the node, its last one leaving), queues the node's own publications (bounded,
//! counting what it drops) and takes the broker's publications without sending them back. This
//! module is the broker's side: one thread per node running a current-thread tokio runtime with the
//! broker's client, so the workers never wait on the network and no tokio reaches the library.
//!
//! - **Subjects and channels** are `PREFIX.TOPIC` (`--bridge-prefix`, default `ringws`). A topic
//!   whose name cannot be a NATS subject token sequence (whitespace, `*`, `>`, empty tokens) is not
//!   bridged (logged once).
//! - **Interest**: a node subscribes on the broker to `PREFIX.TOPIC` while one of its connections is
//!   subscribed to the topic, and unsubscribes when the last leaves (forgetting the topic's last
//!   publication, which would go stale: a later subscriber gets the next live one instead); with `--bridge-all` it
//!   subscribes once to everything under the prefix instead (`PREFIX.>` on NATS, `PREFIX.*` on
//!   Redis).
//! - **No loops**: what a node receives is published locally and never forwarded. A node does not
//!   receive its own publications back: NATS connections are made with `no_echo`; on Redis, which
//!   has no such option, the node's publications carry a 12-byte envelope with its origin id and a
//!   node drops messages with its own id ([`redis`]).
//! - **Order**: one broker connection per node, one subscription per topic: a topic's publications
//!   arrive in the order the broker got them, and are published locally in that order.
//! - **Failure**: the broker down at start, restarted, or unreachable: the node keeps serving its
//!   clients, logs each change of the link's state once (`warn`), notices a silent network (no
//!   answer to keep-alive pings every `--bridge-ping`, default 2 s), reconnects with exponential
//!   backoff (10 ms doubling up to `--bridge-max-backoff`, default 2 s), and subscribes again to
//!   what its clients want then. Local publications that cannot reach the broker are counted and
//!   dropped: at most `--bridge-queue` wait in the engine's queue, and none are queued while the
//!   link is down. The count is logged when the link comes back.

pub mod nats;
pub mod publisher;
pub mod redis;

use ringws::{Message, Publisher};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The default prefix of subjects and channels.
pub const DEFAULT_PREFIX: &str = "ringws";
/// The default longest wait between two reconnect attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The default interval of the link's keep-alive pings: a link that stays silent (a network that
/// drops packets without resetting connections) is taken as lost after a few of them.
pub const DEFAULT_PING: Duration = Duration::from_secs(2);
/// How often drops while connected (a broker that does not keep up) are logged at most.
pub const SLOW_LOG_EVERY: Duration = Duration::from_secs(10);
/// The first wait before reconnecting (doubled after each failed attempt).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Which broker a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// NATS core (`nats://`), with the official async-nats client.
    Nats,
    /// Redis pub/sub (`redis://`), with the redis-rs client.
    Redis,
}

/// A broker's URL: `nats://HOST:PORT` or `redis://HOST:PORT[/DB]` (credentials allowed as the
/// clients accept them: `nats://user:pass@host:port`, `redis://:pass@host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The broker.
    pub broker: Broker,
    /// The URL as given.
    pub url: String,
}

/// Why a bridge could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum BridgeError {
    /// The URL's scheme is neither `nats://` nor `redis://`, or it has no host.
    Url(String),
    /// The prefix is empty or not a valid subject token sequence.
    Prefix(String),
    /// The engine refused the bridge (one per server; capacity at least 1).
    Engine(ringws::PubSubError),
    /// The bridge thread or its runtime could not be started.
    Thread(std::io::Error),
    /// The broker's client refused its settings (e.g. a malformed Redis URL).
    Client(String),
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(u) => write!(
                f,
                "{u:?} is not a broker URL: expected nats://HOST:PORT or redis://HOST:PORT"
            ),
            Self::Prefix(p) => write!(
                f,
                "{p:?} is not a subject prefix: expected dot-separated tokens without whitespace, * or >"
            ),
            Self::Engine(e) => write!(f, "cannot attach the bridge: {e}"),
            Self::Thread(e) => write!(f, "cannot start the bridge thread: {e}"),
            Self::Client(e) => write!(f, "the broker client refused its settings: {e}"),
        }
    }
}

impl std::error::Error for BridgeError {}

impl FromStr for BrokerUrl {
    type Err = BridgeError;

    fn from_str(s: &str) -> Result<Self, BridgeError> {
        let (broker, rest) = if let Some(rest) = s.strip_prefix("nats://") {
            (Broker::Nats, rest)
        } else if let Some(rest) = s
            .strip_prefix("redis://")
            .or_else(|| s.strip_prefix("valkey://"))
        {
            (Broker::Redis, rest)
        } else {
            return Err(BridgeError::Url(s.to_owned()));
        };
        let host = rest.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with([':', '/']) {
            return Err(BridgeError::Url(s.to_owned()));
        }
        Ok(Self {
            broker,
            url: s.to_owned(),
        })
    }
}

/// Whether `s` is a dot-separated sequence of non-empty tokens without whitespace or the NATS
/// wildcards `*` and `>` (what a subject a node publishes to must be).
pub fn is_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
        })
}

/// The subject (or channel) of `topic` under `prefix`; `None` if the topic cannot be one.
pub fn subject(prefix: &str, topic: &str) -> Option<String> {
    is_subject(topic).then(|| format!("{prefix}.{topic}"))
}

/// The topic of a subject under `prefix`; `None` for a subject outside it.
pub fn topic_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')
        .filter(|t| !t.is_empty())
}

/// The wait before reconnect attempt `attempt` (1 for the first after a failure): 10 ms doubling,
/// at most `max`.
pub fn backoff(attempt: usize, max: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(20) as u32;
    FIRST_BACKOFF.saturating_mul(1 << shift).min(max)
}

/// A message from the broker as the engine takes it: binary if the broker said so, else text when
/// it is UTF-8 (what other publishers, e.g. a script, send) and binary otherwise.
pub fn message(payload: &[u8], binary: bool) -> Message<'_> {
    match (binary, std::str::from_utf8(payload)) {
        (false, Ok(text)) => Message::Text(text),
        _ => Message::Binary(payload),
    }
}

/// How a bridge or a broker publisher is set up.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The broker.
    pub url: BrokerUrl,
    /// Subjects and channels are `PREFIX.TOPIC`.
    pub prefix: String,
    /// Subscribe to every topic under the prefix instead of following the node's interest.
    pub all: bool,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Keep-alive pings: NATS takes the link as lost after three unanswered ones; on Redis a ping
    /// (or a publish) not answered within this time ends the connection.
    pub ping: Duration,
    /// Local publications waiting for the broker at most (beyond: counted and dropped).
    pub capacity: usize,
    /// The name the connection gives the broker (NATS `CONNECT` name, Redis `CLIENT SETNAME`).
    pub name: String,
}

impl BridgeOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            all: false,
            max_backoff: DEFAULT_MAX_BACKOFF,
            ping: DEFAULT_PING,
            capacity: ringws::DEFAULT_BRIDGE_CAPACITY,
            name: "ringws".to_owned(),
        }
    }

    fn check(&self) -> Result<(), BridgeError> {
        if !is_subject(&self.prefix) {
            return Err(BridgeError::Prefix(self.prefix.clone()));
        }
        Ok(())
    }
}

/// The state of a broker link, logged once per change.
#[derive(Debug, Default)]
pub struct LinkState {
    /// What is logged (`"bridge"` or `"ticker"`) and the broker's URL.
    who: String,
    connected: AtomicBool,
    /// When the link went down (or the start, until the first connect).
    down_since: Mutex<Option<Instant>>,
    /// Publications dropped while the link was down, since it went down.
    dropped_while_down: AtomicU64,
    /// Publications dropped in total.
    dropped: AtomicU64,
    /// Whether the link has ever been up (the first connect is logged differently).
    ever: AtomicBool,
    /// The broker was found unreachable at start and that was logged.
    start_logged: AtomicBool,
    /// When drops while connected (a slow broker) were last logged.
    slow_logged: Mutex<Option<Instant>>,
}

impl LinkState {
    /// A link of `who` (e.g. `"bridge to nats://127.0.0.1:4222"`), down until it connects.
    pub fn new(who: String) -> Self {
        Self {
            who,
            down_since: Mutex::new(Some(Instant::now())),
            ..Self::default()
        }
    }

    /// Whether the link is up now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Publications dropped in total.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` publications dropped: the link is down (reported when it comes back), or the
    /// broker is too slow to take them (logged at once, then at most every [`SLOW_LOG_EVERY`]).
    pub fn drop_publications(&self, n: u64) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if !self.is_connected() {
            self.dropped_while_down.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let mut last = self
            .slow_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= SLOW_LOG_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            tracing::warn!(
                dropped_total = total,
                "{}: the broker does not keep up; publications dropped ({total} in total)",
                self.who
            );
        }
    }

    /// The link is up: logged (`warn`) if it had been down or found unreachable, `info` for a
    /// first connect that simply worked.
    pub fn up(&self) {
        if self.connected.swap(true, Ordering::AcqRel) {
            return;
        }
        let since = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let down = since.map_or(Duration::ZERO, |t| t.elapsed());
        let dropped = self.dropped_while_down.swap(0, Ordering::Relaxed);
        if self.ever.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                down_ms = down.as_millis() as u64,
                dropped,
                dropped_total = self.dropped(),
                "{}: connected again after {:.1} s; {dropped} publications dropped meanwhile",
                self.who,
                down.as_secs_f64(),
            );
        } else if self.start_logged.load(Ordering::Acquire) {
            // It was logged as unreachable: its coming up is a change worth a warning too.
            tracing::warn!(
                down_ms = down.as_millis() as u64,
                dropped,
                "{}: connected, {:.1} s after start; {dropped} publications dropped meanwhile",
                self.who,
                down.as_secs_f64(),
            );
        } else {
            tracing::info!(dropped, "{}: connected", self.who);
        }
    }

    /// The link is down; logged if it was up.
    pub fn down(&self, why: &dyn fmt::Display) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        *self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        tracing::warn!(
            "{}: disconnected ({why}); serving local clients, reconnecting with backoff, dropping \
             publications until then",
            self.who
        );
    }

    /// Logs, once, that the broker is not reachable at start (a failure before the first
    /// connect).
    pub fn unreachable_at_start(&self, why: &dyn fmt::Display) {
        if self.ever.load(Ordering::Acquire) || self.start_logged.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            "{}: broker not reachable ({why}); serving local clients, retrying with backoff",
            self.who
        );
    }
}

/// A broker link's thread, running its client on a current-thread tokio runtime; dropping it
/// tells the client to stop and joins the thread.
#[derive(Debug)]
pub(crate) struct LinkThread {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    link: Arc<LinkState>,
}

impl LinkThread {
    /// Runs `client(stopped)` on a thread named `name`; `stopped` turns true when this is dropped.
    pub(crate) fn spawn<F, Fut>(
        name: &str,
        link: Arc<LinkState>,
        client: F,
    ) -> Result<Self, BridgeError>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BridgeError::Thread)?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || runtime.block_on(client(stopped)))
            .map_err(BridgeError::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            link,
        })
    }

    /// The link's state.
    pub(crate) fn link(&self) -> &LinkState {
        &self.link
    }
}

impl Drop for LinkThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BrokerUrl {
    /// Fails early on a URL the broker's client cannot use (Redis parses it up front).
    pub(crate) fn check_client(&self) -> Result<(), BridgeError> {
        if self.broker == Broker::Redis {
            ::redis::Client::open(self.url.as_str())
                .map_err(|e| BridgeError::Client(e.to_string()))?;
        }
        Ok(())
    }
}

/// A running bridge: a thread with the broker's client, attached to a server's [`Publisher`].
/// Dropping it stops the thread (its broker connection closes; the engine stops queueing).
#[derive(Debug)]
pub struct BridgeThread(LinkThread);

impl BridgeThread {
    /// Attaches a bridge to `publisher`'s server and starts its thread. The broker need not be
    /// up: the thread connects (and reconnects) in the background.
    pub fn start(publisher: &Publisher, opts: BridgeOptions) -> Result<Self, BridgeError> {
        opts.check()?;
        let wake = Arc::new(Notify::new());
        let w = Arc::clone(&wake);
        let bridge = publisher
            .bridge(opts.capacity, Box::new(move || w.notify_one()))
            .map_err(BridgeError::Engine)?;
        opts.url.check_client()?;
        let link = Arc::new(LinkState::new(format!("bridge to {}", opts.url.url)));
        let l = Arc::clone(&link);
        let bridge = Arc::new(bridge);
        let thread = LinkThread::spawn("ringws-bridge", link, move |stopped| async move {
            let node = Node {
                bridge,
                wake,
                opts,
                link: l,
                stopped,
            };
            match node.opts.url.broker {
                Broker::Nats => nats::node(node).await,
                Broker::Redis => redis::node(node).await,
            }
        })?;
        Ok(Self(thread))
    }

    /// The link's state.
    pub fn link(&self) -> &LinkState {
        self.0.link()
    }
}

/// What a node's bridge thread works with.
pub(crate) struct Node {
    pub bridge: Arc<ringws::Bridge>,
    pub wake: Arc<Notify>,
    pub opts: BridgeOptions,
    pub link: Arc<LinkState>,
    pub stopped: watch::Receiver<bool>,
}

/// Logs once per topic that it cannot be bridged.
pub(crate) fn unbridgeable(topic: &str, seen: &mut std::collections::HashSet<Arc<str>>) {
    if seen.len() < 1024 && seen.insert(topic.into()) {
        tracing::warn!(
            topic,
            "topic not bridged: its name is not a subject (whitespace, '*', '>' or an empty token)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_broker() {
        let b = |s: &str| s.parse::<BrokerUrl>().map(|u| u.broker).ok();
        assert_eq!(b("nats://127.0.0.1:4222"), Some(Broker::Nats));
        assert_eq!(b("nats://u:p@h:1"), Some(Broker::Nats));
        assert_eq!(b("redis://127.0.0.1:6379/0"), Some(Broker::Redis));
        for bad in [
            "",
            "http://x:1",
            "nats://",
            "nats://:4222",
            "redis:///0",
            "127.0.0.1:4222",
        ] {
            assert_eq!(b(bad), None, "{bad}");
        }
    }

    #[test]
    fn subjects_map_both_ways() {
        assert_eq!(
            subject("ringws", "BTC-USD").as_deref(),
            Some("ringws.BTC-USD")
        );
        assert_eq!(subject("a.b", "x.y").as_deref(), Some("a.b.x.y"));
        for bad in ["", "a b", "a..b", ".a", "a.", "*", "a.>", "tab\t"] {
            assert_eq!(subject("p", bad), None, "{bad:?}");
        }
        assert_eq!(topic_of("ringws", "ringws.BTC-USD"), Some("BTC-USD"));
        assert_eq!(topic_of("ringws", "ringwsX.BTC"), None);
        assert_eq!(topic_of("ringws", "ringws."), None);
        assert_eq!(topic_of("ringws", "other.BTC"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(2);
        let waits: Vec<u64> = (1..=10)
            .map(|a| backoff(a, max).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1280, 2000, 2000]);
        assert_eq!(backoff(usize::MAX, max), max);
    }

    #[test]
    fn drops_are_counted_apart_by_the_state_of_the_link() {
        let link = LinkState::new("test".into());
        link.drop_publications(3); // down since the start
        link.up();
        assert_eq!(
            link.dropped_while_down.load(Ordering::Relaxed),
            0,
            "reported by up"
        );
        link.drop_publications(2); // up: the broker is slow
        assert_eq!(link.dropped_while_down.load(Ordering::Relaxed), 0);
        link.down(&"gone");
        link.drop_publications(4);
        assert_eq!(link.dropped_while_down.load(Ordering::Relaxed), 4);
        assert_eq!(link.dropped(), 9);
        assert!(!link.is_connected());
    }

    #[test]
    fn broker_payloads_are_text_when_they_can_be() {
        assert!(matches!(message(b"{}", false), Message::Text("{}")));
        assert!(matches!(message(b"{}", true), Message::Binary(b"{}")));
        assert!(matches!(message(&[0xff], false), Message::Binary(_)));
    }
}
