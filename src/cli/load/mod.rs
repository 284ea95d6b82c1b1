//! `ringws load`: a WebSocket load generator on the engine's own workers (io_uring, no tokio), so it
//! can outrun the server it measures.
//!
//! Connections are spread over the workers (and over `--source-ips`). Each message carries a
//! sequence number in its first bytes (8 bytes little-endian for binary, 8 hex digits, least
//! significant first, for text)
//! followed by a pattern that depends on the sequence number; every echo is compared byte for byte
//! with what was sent, in order (a mismatch is counted, never trusted). Latency is recorded in one
//! HDR histogram per worker (nanoseconds, 3 significant digits), merged for the report.
//!
//! Timeline: connect everything; once every connection is up or has failed, `--warmup` seconds of
//! traffic that is not counted, then `--duration` seconds measured (echoes received in the window);
//! then sending stops, outstanding echoes get up to one second to arrive (the rest count as
//! timeouts), every connection is closed with 1000 and the close replies are awaited briefly.
//!
//! Closed loop (default): `--in-flight` messages outstanding per connection, a new one sent per echo;
//! latency from the send. Open loop (`--rate`): each connection sends on its own schedule (the total
//! rate split evenly, connection starts staggered), latency measured from the *scheduled* time, so
//! a stalled server shows up in the percentiles instead of slowing the sender down (coordinated
//! omission corrected); `--in-flight` then caps the outstanding messages per connection (default
//! 1024), and a capped connection catches up on its schedule when echoes return.
//!
//! `--hold` opens the connections, reports, keeps them idle for `--duration` (or until SIGINT), then
//! closes them; `--ping-once BYTES` makes every connection send one message once all are up and
//! checks its echo (in this mode `messages` and the latencies are those echoes). With `--json` the
//! phases are also reported as JSON lines on stderr
//! (`{"phase":"established",...}`, `{"phase":"ping",...}`) for scripts such as `benches/c100k.sh`.
//!
//! `--subscribe SYMBOLS` loads a market feed (`ringws serve --mode feed`) instead of an echo
//! server: every connection subscribes and then only receives; deliveries and publish-to-receive
//! latencies come from the quotes' timestamps, and `--stall N` makes N subscribers stop reading for
//! a while ([`subscribe`]).
//!
//! Exit status: 0 when every connection was established and nothing went wrong; 1 when the run
//! completed with failures (connect errors, mismatches, unexpected closes, timeouts, dropped sends;
//! the report says which) or could not run (2 for invalid options, from the argument parser).

mod subscribe;

use super::deflate::DeflateArgs;
use super::{describe, note, print_or_report};
use clap::Args;
use hdrhistogram::Histogram;
use ringws::{
    CloseCode, ConnId, Connect, ConnectError, Context, Handler, Message, SendResult, Server,
    ServerHandle, Socket,
};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Options of `ringws load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The server to load: ws://HOST:PORT/PATH, or wss://HOST:PORT/PATH (TLS; the certificate
    /// checked against the Mozilla roots unless --ca or --insecure).
    #[arg(long)]
    url: String,
    /// wss://: trust only the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// wss://: accept any certificate without verifying it (test servers with throwaway
    /// certificates only: the traffic is encrypted but not authenticated).
    #[arg(long)]
    insecure: bool,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Message payload size, in bytes (at most 16 MiB).
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Seconds measured after the warm-up (with --hold: how long to hold the connections).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before the measurement, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Worker threads, one io_uring each (default: the CPUs this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Messages outstanding per connection; 1 = ping-pong (default 1; with --rate, the cap on
    /// outstanding messages, default 1024).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Open loop: send this many messages per second in total, each connection on its own schedule;
    /// latency is measured from the scheduled send time (coordinated omission corrected).
    #[arg(long, conflicts_with = "hold")]
    rate: Option<f64>,
    /// Binary messages (the default).
    #[arg(long, conflicts_with = "text")]
    binary: bool,
    /// Text messages (ASCII, so any size is valid UTF-8).
    #[arg(long)]
    text: bool,
    /// Local addresses to connect from, spread over the connections: a range
    /// (127.0.0.1-127.0.0.8), a comma-separated list, or one address. Passes the ~28k ephemeral
    /// ports of a single address.
    #[arg(long)]
    source_ips: Option<String>,
    /// Open the connections and keep them idle: report, wait for --duration (or SIGINT), close.
    #[arg(long, conflicts_with = "in_flight")]
    hold: bool,
    /// With --hold: once all connections are up, each sends one message of this many bytes and
    /// checks its echo.
    #[arg(long, requires = "hold")]
    ping_once: Option<usize>,
    /// Print one JSON object on stdout at the end instead of the summary.
    #[arg(long)]
    json: bool,
    /// Subscribe to a market feed (`ringws serve --mode feed`) and only receive: SYMBOLS is a
    /// comma-separated list, or `all` for every symbol the server lists at `GET /symbols`. Reports
    /// deliveries/s and publish-to-receive latency from the quotes' timestamps.
    #[arg(long, conflicts_with_all = ["hold", "rate", "in_flight", "text", "binary"])]
    subscribe: Option<String>,
    /// With --subscribe: symbols per connection, dealt out in turn (connection i gets symbols i*K
    /// to i*K+K-1 of the list, wrapping), so N symbols over C connections get C*K/N subscribers
    /// each (default: the whole list for every connection).
    #[arg(long, requires = "subscribe")]
    symbols_per_conn: Option<usize>,
    /// With --subscribe: this many connections (the first ones) stop reading during the
    /// measurement, then resume; reported apart from the others. `--stall 0` with --stall-at /
    /// --stall-for reports the same window without stalling anyone (the baseline).
    #[arg(long, requires = "subscribe", default_value_t = 0)]
    stall: usize,
    /// Seconds into the measurement when the stall starts (default 2).
    #[arg(long, requires = "stall")]
    stall_at: Option<f64>,
    /// Seconds the stalled connections do not read (default 3).
    #[arg(long, requires = "stall")]
    stall_for: Option<f64>,
    /// SO_RCVBUF of every connection in bytes, set before connecting (Linux doubles it; default:
    /// receive autotuning, up to several MB per loopback connection). Small makes a stalled
    /// subscriber leave its backlog at the server, where the feed conflates it.
    #[arg(long, value_name = "BYTES")]
    recv_buffer: Option<usize>,
    #[command(flatten)]
    deflate: DeflateArgs,
}

/// Largest payload accepted (the engine's default message limit).
const MAX_SIZE: usize = 16 << 20;
/// Default cap on outstanding messages per connection with --rate.
const RATE_IN_FLIGHT: usize = 1024;
/// How often each worker runs its housekeeping (stop check, histogram publication).
const HOUSEKEEPING: Duration = Duration::from_millis(20);
/// How often a worker adds its latencies to the shared histogram.
const PUBLISH_NS: u64 = 100_000_000;
/// After the measurement, how long outstanding echoes may take before they count as timeouts.
const DRAIN_NS: u64 = 1_000_000_000;
/// After stopping, how long to wait for the connections to close before shutting the engine down.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// With --ping-once, how long the echoes may take before the phase is reported anyway.
const PING_WAIT: Duration = Duration::from_secs(10);
/// Sequence-number bytes at the start of each payload.
const SEQ_BYTES: usize = 8;
/// Period of the payload pattern (prime, so consecutive messages differ everywhere).
const PERIOD: usize = 251;
/// Most paced sends one wake-up performs before letting the loop turn.
const SEND_BUDGET: usize = 65_536;

/// Message contents: a sequence number, then a pattern offset by it.
struct Payload {
    text: bool,
    size: usize,
    /// `size - SEQ_BYTES + PERIOD` pattern bytes (ASCII letters for text).
    pattern: Vec<u8>,
}

impl Payload {
    fn new(size: usize, text: bool) -> Self {
        let n = size.saturating_sub(SEQ_BYTES) + PERIOD;
        let pattern = (0..n)
            .map(|i| {
                if text {
                    b'a' + (i % 26) as u8
                } else {
                    (i * 7 + 3) as u8
                }
            })
            .collect();
        Self {
            text,
            size,
            pattern,
        }
    }

    /// The sequence-number bytes of message `seq`.
    fn seq_bytes(&self, seq: u64) -> [u8; SEQ_BYTES] {
        if !self.text {
            return seq.to_le_bytes();
        }
        let mut out = [0u8; SEQ_BYTES];
        for (i, b) in out.iter_mut().enumerate() {
            // Least significant digit first, so a payload shorter than 8 bytes still tells
            // consecutive messages apart.
            *b = b"0123456789abcdef"[(seq >> (4 * i) & 0xf) as usize];
        }
        out
    }

    /// The body (after the sequence number) of message `seq`.
    fn body(&self, seq: u64) -> &[u8] {
        let off = (seq % PERIOD as u64) as usize;
        &self.pattern[off..off + self.size.saturating_sub(SEQ_BYTES)]
    }

    /// Writes message `seq` into `out`.
    fn write(&self, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        let n = SEQ_BYTES.min(self.size);
        out.extend_from_slice(&self.seq_bytes(seq)[..n]);
        out.extend_from_slice(self.body(seq));
    }

    /// Whether `got` is exactly message `seq`, of the right type.
    fn matches(&self, seq: u64, msg: &Message<'_>) -> bool {
        let got = msg.as_bytes();
        let n = SEQ_BYTES.min(self.size);
        matches!(msg, Message::Text(_)) == self.text
            && got.len() == self.size
            && got[..n] == self.seq_bytes(seq)[..n]
            && got[n..] == *self.body(seq)
    }
}

/// What every worker needs to know, fixed for the run.
struct Plan {
    connections: usize,
    workers: usize,
    /// One target per source address (or one without).
    targets: Vec<Connect>,
    payload: Payload,
    /// Closed loop: outstanding messages per connection. Open loop: their cap.
    in_flight: usize,
    /// Open loop: each connection's send interval, in ns.
    interval_ns: Option<u64>,
    hold: bool,
    ping_once: bool,
    /// `--subscribe`: the subscribers' plan.
    subscribe: Option<subscribe::Plan>,
}

/// One worker's counters, read by the controller thread. Aligned so workers never share a line.
#[repr(align(128))]
struct Stats {
    established: AtomicU64,
    failed: AtomicU64,
    /// Open right now.
    live: AtomicU64,
    /// Closed by the server (or the network) before we closed them.
    closed: AtomicU64,
    sent: AtomicU64,
    /// Echoes verified (with --subscribe: quotes received, snapshots aside), at any time.
    echoes: AtomicU64,
    /// Echoes verified (with --subscribe: quotes received) during the measurement window.
    messages: AtomicU64,
    mismatch: AtomicU64,
    timeout: AtomicU64,
    dropped: AtomicU64,
    /// When this worker started connecting, and when its last connection opened (ns since `base`).
    first_dial_ns: AtomicU64,
    last_open_ns: AtomicU64,
    /// Latencies of the measurement window, published every `PUBLISH_NS`.
    hist: Mutex<Histogram<u64>>,
    /// Connect failures by kind: count and one example.
    connect_errors: Mutex<BTreeMap<&'static str, (u64, String)>>,
    /// Connections that agreed on permessage-deflate, by the parameters agreed (as the server's
    /// `Sec-WebSocket-Extensions` said them).
    deflate: Mutex<BTreeMap<String, u64>>,
    /// `--subscribe` counters.
    sub: subscribe::Stats,
}

impl Stats {
    fn new() -> Self {
        Self {
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            live: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            mismatch: AtomicU64::new(0),
            timeout: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            first_dial_ns: AtomicU64::new(u64::MAX),
            last_open_ns: AtomicU64::new(0),
            hist: Mutex::new(histogram()),
            connect_errors: Mutex::new(BTreeMap::new()),
            deflate: Mutex::new(BTreeMap::new()),
            sub: subscribe::Stats::new(),
        }
    }
}

/// A latency histogram: 1 ns to 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// State shared by the workers, the controller thread and `run`.
struct Shared {
    /// Time zero of every `_ns` value.
    base: Instant,
    /// The measurement window, once known (`u64::MAX` before).
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    /// Stop sending, drain and close (end of the run, or the end of --hold).
    stop: AtomicBool,
    /// --ping-once: send the message now.
    ping_go: AtomicBool,
    /// `run` returned (the engine stopped, e.g. on SIGINT).
    finished: AtomicBool,
    workers: Vec<Stats>,
}

impl Shared {
    fn ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    fn sum(&self, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// The merged latency histogram published so far.
    fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.workers {
            all.add(&*s.hist.lock().expect("histogram lock"))
                .expect("histograms share their bounds");
        }
        all
    }
}

/// Per-connection state.
#[derive(Debug, Default)]
struct Conn {
    /// Index among this worker's connections.
    local: u32,
    /// Index among all connections.
    global: u32,
    next_seq: u64,
    /// Outstanding messages: sequence number and the time latency is measured from.
    inflight: VecDeque<(u64, u64)>,
    /// Open loop: when the next message is due (ns).
    next_due: u64,
    /// Open loop: at the cap, waiting for echoes to catch up.
    blocked: bool,
    /// We started the close.
    closing: bool,
    /// `--subscribe`: the subscriber's state.
    sub: subscribe::Sub,
}

/// One worker's generator.
struct Gen {
    index: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    /// Latencies not yet published.
    hist: Histogram<u64>,
    next_publish: u64,
    /// This worker's open connections, by local index.
    open: Vec<Option<ConnId>>,
    /// Open loop: (due time, local index), earliest first.
    schedule: BinaryHeap<Reverse<(u64, u32)>>,
    scratch: Vec<u8>,
    stopping: bool,
    drain_until: u64,
    drained: bool,
    pinged: bool,
    /// `--subscribe --stall`: where the stall is.
    stall: subscribe::Window,
}

impl Gen {
    fn stats(&self) -> &Stats {
        &self.shared.workers[self.index]
    }

    /// Enters the stopping state when asked to or when the measurement is over.
    fn should_stop(&mut self, now: u64) -> bool {
        if !self.stopping
            && (self.shared.stop.load(Relaxed) || now >= self.shared.end_ns.load(Relaxed))
        {
            self.stopping = true;
            self.drain_until = now + DRAIN_NS;
        }
        self.stopping
    }

    /// Sends the connection's next message, measured from `t`.
    fn send(&mut self, ws: &mut Socket<'_, Conn>, t: u64) {
        let seq = {
            let st = ws.state_mut();
            st.next_seq += 1;
            st.next_seq - 1
        };
        self.plan.payload.write(seq, &mut self.scratch);
        let result = if self.plan.payload.text {
            let text = std::str::from_utf8(&self.scratch).expect("text payloads are ASCII");
            ws.send_text(text)
        } else {
            ws.send_binary(&self.scratch)
        };
        if result == SendResult::Dropped {
            if ws.is_open() {
                self.stats().dropped.fetch_add(1, Relaxed);
            }
            return;
        }
        ws.state_mut().inflight.push_back((seq, t));
        self.stats().sent.fetch_add(1, Relaxed);
    }

    fn close(ws: &mut Socket<'_, Conn>) {
        ws.state_mut().closing = true;
        ws.close(CloseCode::NORMAL, "done");
    }

    /// Checks an echo against the oldest outstanding message and records its latency.
    fn verify(&mut self, ws: &mut Socket<'_, Conn>, msg: &Message<'_>, now: u64) {
        let Some((seq, t)) = ws.state_mut().inflight.pop_front() else {
            self.stats().mismatch.fetch_add(1, Relaxed);
            return;
        };
        if !self.plan.payload.matches(seq, msg) {
            self.stats().mismatch.fetch_add(1, Relaxed);
            return;
        }
        self.stats().echoes.fetch_add(1, Relaxed);
        let window = self.shared.start_ns.load(Relaxed)..self.shared.end_ns.load(Relaxed);
        if window.contains(&now) {
            self.stats().messages.fetch_add(1, Relaxed);
            self.hist.saturating_record(now.saturating_sub(t).max(1));
        }
    }

    /// Open loop: sends what is due, up to the cap per connection and `SEND_BUDGET` per call.
    fn paced_sends(&mut self, ctx: &mut Context<'_, Conn>, now: u64) {
        let Some(interval) = self.plan.interval_ns else {
            return;
        };
        for _ in 0..SEND_BUDGET {
            let Some(&Reverse((due, k))) = self.schedule.peek() else {
                break;
            };
            if due > now {
                break;
            }
            self.schedule.pop();
            let Some(mut ws) = self.open[k as usize].and_then(|id| ctx.socket(id)) else {
                continue;
            };
            if ws.state().inflight.len() >= self.plan.in_flight {
                let st = ws.state_mut();
                st.blocked = true;
                st.next_due = due;
                continue;
            }
            self.send(&mut ws, due);
            ws.state_mut().next_due = due + interval;
            self.schedule.push(Reverse((due + interval, k)));
        }
    }

    /// Adds the unpublished latencies to the shared histogram.
    fn publish(&mut self) {
        self.publish_window();
        if self.hist.is_empty() {
            return;
        }
        let mut shared = self.shared.workers[self.index]
            .hist
            .lock()
            .expect("histogram lock");
        shared
            .add(&self.hist)
            .expect("histograms share their bounds");
        self.hist.reset();
    }

    /// The open connections' ids.
    fn open_ids(&self) -> Vec<ConnId> {
        self.open.iter().flatten().copied().collect()
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        self.publish();
    }
}

impl Handler for Gen {
    type State = Conn;

    fn on_start(&mut self, ctx: &mut Context<'_, Conn>) {
        let now = self.shared.ns();
        self.stats().first_dial_ns.fetch_min(now, Relaxed);
        let plan = self.plan.clone();
        for (k, j) in (self.index..plan.connections)
            .step_by(plan.workers)
            .enumerate()
        {
            self.open.push(None);
            let conn = Conn {
                local: k as u32,
                global: j as u32,
                ..Conn::default()
            };
            ctx.connect(&plan.targets[j % plan.targets.len()], conn);
        }
        ctx.wake_at(Instant::now() + HOUSEKEEPING);
    }

    fn on_open(&mut self, ws: &mut Socket<'_, Conn>) {
        let now = self.shared.ns();
        let stats = self.stats();
        stats.established.fetch_add(1, Relaxed);
        stats.live.fetch_add(1, Relaxed);
        stats.last_open_ns.fetch_max(now, Relaxed);
        if let Some(params) = ws.permessage_deflate() {
            *stats
                .deflate
                .lock()
                .expect("deflate map lock")
                .entry(params.to_string())
                .or_default() += 1;
        }
        self.open[ws.state().local as usize] = Some(ws.id());
        if self.plan.hold {
            return;
        }
        if self.should_stop(now) {
            return Self::close(ws);
        }
        if self.plan.subscribe.is_some() {
            return self.subscribe(ws);
        }
        match self.plan.interval_ns {
            None => {
                for _ in 0..self.plan.in_flight {
                    self.send(ws, now);
                }
            }
            Some(interval) => {
                // Stagger the schedules so the connections' sends spread over the interval.
                let offset = (u128::from(ws.state().global) * u128::from(interval)
                    / self.plan.connections as u128) as u64;
                let due = now + offset;
                ws.state_mut().next_due = due;
                self.schedule.push(Reverse((due, ws.state().local)));
                ws.context().wake_at(self.shared.instant(due));
            }
        }
    }

    fn on_message(&mut self, ws: &mut Socket<'_, Conn>, msg: Message<'_>) {
        let now = self.shared.ns();
        if self.plan.subscribe.is_some() {
            self.receive(ws, msg, now);
        } else {
            self.verify(ws, &msg, now);
        }
        if self.plan.hold {
            return;
        }
        if self.should_stop(now) {
            if ws.state().inflight.is_empty() && !ws.state().closing {
                Self::close(ws);
            }
            return;
        }
        if self.plan.subscribe.is_some() {
            return;
        }
        match self.plan.interval_ns {
            None => self.send(ws, now),
            Some(interval) if ws.state().blocked => {
                // Catch up on the schedule: every message still due goes now, timed from when it
                // was due.
                ws.state_mut().blocked = false;
                let mut due = ws.state().next_due;
                while due <= now && ws.state().inflight.len() < self.plan.in_flight {
                    self.send(ws, due);
                    due += interval;
                }
                ws.state_mut().next_due = due;
                self.schedule.push(Reverse((due, ws.state().local)));
                ws.context().wake_at(self.shared.instant(due));
            }
            Some(_) => {}
        }
    }

    fn on_close(&mut self, ws: &mut Socket<'_, Conn>, _code: CloseCode, _reason: &str) {
        self.open[ws.state().local as usize] = None;
        self.stats().live.fetch_sub(1, Relaxed);
        let ours = ws.state().closing || ws.context().is_shutting_down();
        if !ours {
            self.stats().closed.fetch_add(1, Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: &mut Context<'_, Conn>, _: Conn, error: &ConnectError) {
        let stats = self.stats();
        stats.failed.fetch_add(1, Relaxed);
        let mut errors = stats.connect_errors.lock().expect("error map lock");
        errors
            .entry(error.kind())
            .or_insert_with(|| (0, error.to_string()))
            .0 += 1;
    }

    fn on_wake(&mut self, ctx: &mut Context<'_, Conn>) {
        let now = self.shared.ns();
        if now >= self.next_publish {
            self.publish();
            self.next_publish = now + PUBLISH_NS;
        }
        if self.plan.ping_once && !self.pinged && self.shared.ping_go.load(Relaxed) {
            self.pinged = true;
            for id in self.open_ids() {
                if let Some(mut ws) = ctx.socket(id) {
                    self.send(&mut ws, now);
                }
            }
        }
        let was_stopping = self.stopping;
        if self.should_stop(now) {
            let drained = now >= self.drain_until && !self.drained;
            if !was_stopping || drained {
                self.drained |= drained;
                self.publish();
                for id in self.open_ids() {
                    let Some(mut ws) = ctx.socket(id) else {
                        continue;
                    };
                    let outstanding = ws.state().inflight.len() as u64;
                    if ws.state().closing || (outstanding > 0 && !drained) {
                        continue;
                    }
                    self.stats().timeout.fetch_add(outstanding, Relaxed);
                    Self::close(&mut ws);
                }
            }
        } else {
            self.paced_sends(ctx, now);
        }
        let mut next = now + HOUSEKEEPING.as_nanos() as u64;
        if let Some(due) = self.stall_tick(ctx, now) {
            next = next.min(due);
        }
        if !self.stopping
            && let Some(&Reverse((due, _))) = self.schedule.peek()
        {
            next = next.min(due);
        }
        ctx.wake_at(self.shared.instant(next));
    }
}

/// Parses `--source-ips`: `A-B` (IPv4, inclusive, at most 65536 addresses), `A,B,C`, or `A`.
fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if let Some((a, b)) = part.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("{s:?} is not an IPv4 address"))
            };
            let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
            if b < a || b - a >= 1 << 16 {
                return Err(format!(
                    "{part:?}: the range must go up and span at most 65536 addresses"
                ));
            }
            out.extend((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            out.push(
                part.parse()
                    .map_err(|_| format!("{part:?} is not an IP address"))?,
            );
        }
    }
    if out.is_empty() {
        return Err("no source address".into());
    }
    Ok(out)
}

/// The CPU time this process has used (user + system), from `/proc/self/stat` (clock ticks of
/// `USER_HZ`, 100 on every Linux architecture ringws runs on).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits`.
fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What the controller thread saw, for the report.
#[derive(Debug, Default)]
struct Timeline {
    /// When the measurement actually stopped (ns), if it did before `run` returned.
    stopped_ns: Option<u64>,
    cpu_at_start: Option<Duration>,
    cpu_at_end: Option<Duration>,
}

/// Prints a JSON line on stderr (phases, for scripts).
fn phase(value: serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{value}");
}

/// The connect rate so far: established connections over the time from the first connect to the
/// last open.
fn connect_rate(shared: &Shared) -> f64 {
    let established = shared.sum(|s| &s.established);
    let first = shared
        .workers
        .iter()
        .map(|s| s.first_dial_ns.load(Relaxed))
        .min()
        .unwrap_or(0);
    let last = shared
        .workers
        .iter()
        .map(|s| s.last_open_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    if established == 0 || secs <= 0.0 {
        0.0
    } else {
        established as f64 / secs
    }
}

/// Runs the timeline while the engine runs: fixes the measurement window once every connection is
/// resolved, prints progress every second, stops at the end, waits for the closes, then shuts the
/// engine down. Returns early when `run` has returned (SIGINT).
fn control(
    shared: &Shared,
    plan: &Plan,
    args: &LoadArgs,
    handle: &ServerHandle,
    timeline: &Mutex<Timeline>,
) {
    let total = plan.connections as u64;
    let mut resolved_at: Option<u64> = None;
    let mut ping_reported = !plan.ping_once;
    let mut next_progress = 1_000_000_000u64;
    let (mut last_echoes, mut last_t) = (0u64, 0u64);
    let mut stopped_at: Option<u64> = None;
    while !shared.finished.load(Relaxed) {
        thread::sleep(Duration::from_millis(20));
        let now = shared.ns();
        let established = shared.sum(|s| &s.established);
        let failed = shared.sum(|s| &s.failed);
        if resolved_at.is_none() && established + failed >= total {
            resolved_at = Some(now);
            let start = if plan.hold || established == 0 {
                now
            } else {
                now + (args.warmup * 1e9) as u64
            };
            // Nothing to measure without a connection: stop at once.
            let duration = if established == 0 {
                0
            } else {
                (args.duration * 1e9) as u64
            };
            shared.end_ns.store(start + duration, Relaxed);
            shared.start_ns.store(start, Relaxed);
            let rate = connect_rate(shared);
            if args.json {
                phase(json!({
                    "phase": "established",
                    "connections_established": established,
                    "connections_failed": failed,
                    "connect_rate_per_s": round(rate, 1),
                }));
            } else {
                note!(
                    "established {established}/{total} connections ({failed} failed), {rate:.0} connections/s"
                );
            }
            if plan.ping_once {
                shared.ping_go.store(true, Relaxed);
            }
        }
        let start = shared.start_ns.load(Relaxed);
        if now >= start {
            let mut t = timeline.lock().expect("timeline lock");
            if t.cpu_at_start.is_none() {
                t.cpu_at_start = cpu_time();
            }
        }
        if !ping_reported && let Some(at) = resolved_at {
            let answered = shared.sum(|s| &s.echoes) + shared.sum(|s| &s.mismatch);
            if answered >= established || now >= at + PING_WAIT.as_nanos() as u64 {
                ping_reported = true;
                let (ok, mismatch) = (shared.sum(|s| &s.echoes), shared.sum(|s| &s.mismatch));
                if args.json {
                    phase(json!({
                        "phase": "ping",
                        "ok": ok,
                        "mismatch": mismatch,
                        "missing": established.saturating_sub(ok + mismatch),
                    }));
                } else {
                    note!("ping: {ok} echoes verified, {mismatch} mismatched");
                }
            }
        }
        if now >= next_progress {
            next_progress += 1_000_000_000;
            let echoes = shared.sum(|s| &s.echoes);
            let rate = (echoes - last_echoes) as f64 * 1e9 / (now - last_t).max(1) as f64;
            (last_echoes, last_t) = (echoes, now);
            let stage = match resolved_at {
                None => "connecting",
                Some(_) if stopped_at.is_some() => "closing",
                Some(_) if plan.hold => "holding",
                Some(_) if now < start => "warm-up",
                Some(_) => "measuring",
            };
            let p99 = shared.merged().value_at_quantile(0.99) as f64 / 1e3;
            let errors = failed
                + subscribe::feed_errors(shared)
                + shared.sum(|s| &s.mismatch)
                + shared.sum(|s| &s.closed)
                + shared.sum(|s| &s.timeout)
                + shared.sum(|s| &s.dropped);
            note!(
                "[{:6.1}s] {stage:10} up {}/{total} | {rate:9.0} msg/s | p99 {p99:8.1} us | errors {errors}",
                now as f64 / 1e9,
                shared.sum(|s| &s.live),
            );
        }
        if stopped_at.is_none() && now >= shared.end_ns.load(Relaxed) {
            stopped_at = Some(now);
            shared.stop.store(true, Relaxed);
            let mut t = timeline.lock().expect("timeline lock");
            t.stopped_ns = Some(now);
            t.cpu_at_end = cpu_time();
        }
        if let Some(at) = stopped_at {
            let waited = Duration::from_nanos(now - at);
            if shared.sum(|s| &s.live) == 0 || waited >= CLOSE_WAIT {
                handle.shutdown();
                return;
            }
        }
    }
}

/// The summary's permessage-deflate line: what was agreed on how many of the `established`
/// connections (`agreed`: parameters and connections, most first).
fn deflate_line(agreed: &[(String, u64)], established: u64) -> String {
    let total: u64 = agreed.iter().map(|(_, n)| n).sum();
    match agreed {
        [] => "deflate      not agreed: the server answered without permessage-deflate (is it \
               started with --deflate?)"
            .to_owned(),
        [(params, _)] if total == established => {
            format!("deflate      {params} (agreed on all {established} connections)")
        }
        _ => {
            let each: Vec<String> = agreed
                .iter()
                .map(|(params, n)| format!("{params} on {n}"))
                .collect();
            format!(
                "deflate      agreed on {total} of {established} connections: {}",
                each.join(", ")
            )
        }
    }
}

/// Rounds to `digits` decimals (for the report).
fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Checks the options and builds the plan.
fn plan(args: &LoadArgs) -> Result<Plan, String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.size > MAX_SIZE || args.ping_once.is_some_and(|n| n > MAX_SIZE) {
        return Err(format!("message sizes are limited to {MAX_SIZE} bytes"));
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        return Err("--warmup must be zero or more seconds".into());
    }
    let in_flight = args.in_flight.unwrap_or(if args.rate.is_some() {
        RATE_IN_FLIGHT
    } else {
        1
    });
    if !(1..=1 << 16).contains(&in_flight) {
        return Err("--in-flight must be between 1 and 65536".into());
    }
    let interval_ns = match args.rate {
        None => None,
        Some(r) if r.is_finite() && r > 0.0 => {
            Some(((args.connections as f64 / r) * 1e9).max(1.0) as u64)
        }
        Some(_) => return Err("--rate must be a positive number of messages per second".into()),
    };
    let mut target = Connect::new(&args.url).map_err(|e| format!("--url {}: {e}", args.url))?;
    if let Some(ca) = &args.ca {
        let trust = ringws::TlsClient::with_ca_file(ca).map_err(|e| format!("--ca: {e}"))?;
        target = target.tls(trust);
    } else if args.insecure {
        target = target.tls(ringws::TlsClient::dangerous_accept_any_certificate());
    }
    if let Some(policy) = args.deflate.policy() {
        target = target.deflate(policy);
    }
    if let Some(bytes) = args.recv_buffer {
        if !(1024..=1 << 30).contains(&bytes) {
            return Err("--recv-buffer must be between 1024 and 1 GiB".into());
        }
        target = target.recv_buffer(bytes);
    }
    let subscribe = match &args.subscribe {
        Some(spec) => Some(subscribe::Plan::new(spec, args, &target)?),
        None => None,
    };
    let targets = match &args.source_ips {
        None => vec![target],
        Some(spec) => parse_sources(spec)
            .map_err(|e| format!("--source-ips: {e}"))?
            .into_iter()
            .map(|ip| target.clone().source(ip))
            .collect(),
    };
    let workers = args
        .workers
        .unwrap_or_else(|| ringws::engine::Config::default().workers);
    Ok(Plan {
        connections: args.connections,
        workers,
        targets,
        payload: Payload::new(args.ping_once.unwrap_or(args.size), args.text),
        in_flight,
        interval_ns,
        hold: args.hold,
        ping_once: args.ping_once.is_some(),
        subscribe,
    })
}

/// Runs `ringws load`.
pub fn run(args: LoadArgs) -> ExitCode {
    let plan = match plan(&args) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            note!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(limit) = nofile_limit()
        && limit < plan.connections as u64 + 64
    {
        note!(
            "warning: the open-file limit is {limit}, too low for {} connections (ulimit -n, or tuning/ulimit.sh)",
            plan.connections
        );
    }
    let engine = match Server::builder()
        .client_only()
        .workers(plan.workers)
        // Ctrl-C ends the run early with a report of what was measured.
        .handle_signals(true)
        .idle_timeout(Duration::ZERO)
        .close_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            note!("error: {}", describe(&e));
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        start_ns: AtomicU64::new(u64::MAX),
        end_ns: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        ping_go: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        workers: (0..plan.workers).map(|_| Stats::new()).collect(),
    });
    let handle = engine.handle();
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let controller = Mutex::new(None);
    let result = engine.run_with_ready(
        |index| Gen {
            index,
            plan: plan.clone(),
            shared: shared.clone(),
            hist: histogram(),
            next_publish: 0,
            open: Vec::new(),
            schedule: BinaryHeap::new(),
            scratch: Vec::new(),
            stopping: false,
            drain_until: u64::MAX,
            drained: false,
            pinged: false,
            stall: subscribe::Window::default(),
        },
        || {
            let (shared, plan, timeline) = (shared.clone(), plan.clone(), timeline.clone());
            let handle = handle.clone();
            let args = args.clone();
            *controller.lock().expect("controller lock") = Some(thread::spawn(move || {
                control(&shared, &plan, &args, &handle, &timeline)
            }));
        },
    );
    let finished_ns = shared.ns();
    shared.finished.store(true, Relaxed);
    if let Some(t) = controller.into_inner().expect("controller lock") {
        let _ = t.join();
    }
    if let Err(e) = result {
        note!("error: {}", describe(&e));
        return ExitCode::FAILURE;
    }
    report(
        &args,
        &plan,
        &shared,
        &timeline.lock().expect("timeline lock"),
        finished_ns,
    )
}

/// Prints the summary (or the JSON object) and picks the exit status.
fn report(
    args: &LoadArgs,
    plan: &Plan,
    shared: &Shared,
    timeline: &Timeline,
    finished_ns: u64,
) -> ExitCode {
    let start = shared.start_ns.load(Relaxed);
    let end = shared
        .end_ns
        .load(Relaxed)
        .min(timeline.stopped_ns.unwrap_or(finished_ns))
        .min(finished_ns);
    let duration_s = end.saturating_sub(start) as f64 / 1e9;
    let per_s = |n: u64| {
        if duration_s > 0.0 {
            n as f64 / duration_s
        } else {
            0.0
        }
    };
    let established = shared.sum(|s| &s.established);
    let failed = shared.sum(|s| &s.failed);
    let messages = shared.sum(|s| &s.messages);
    let (mismatch, closed) = (shared.sum(|s| &s.mismatch), shared.sum(|s| &s.closed));
    let (timeout, dropped) = (shared.sum(|s| &s.timeout), shared.sum(|s| &s.dropped));
    let hist = shared.merged();
    let us = |ns: u64| round(ns as f64 / 1e3, 1);
    let q = |x: f64| {
        if hist.is_empty() {
            0.0
        } else {
            us(hist.value_at_quantile(x))
        }
    };
    let max = if hist.is_empty() { 0.0 } else { us(hist.max()) };
    let mut by_kind: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    for s in &shared.workers {
        for (kind, (n, example)) in s.connect_errors.lock().expect("error map lock").iter() {
            let e = by_kind.entry(kind).or_insert_with(|| (0, example.clone()));
            e.0 += n;
        }
    }
    let cpu = match (timeline.cpu_at_start, timeline.cpu_at_end) {
        (Some(a), Some(b)) if duration_s > 0.0 => {
            round((b.saturating_sub(a)).as_secs_f64() / duration_s * 100.0, 1)
        }
        _ => 0.0,
    };
    let mode = match (&plan.subscribe, plan.payload.text) {
        (Some(_), _) => "subscribe",
        (None, true) => "text",
        (None, false) => "binary",
    };
    let feed_errors = subscribe::feed_errors(shared);
    let ok = established == plan.connections as u64
        && failed + mismatch + closed + timeout + dropped + feed_errors == 0;
    let sub = plan
        .subscribe
        .as_ref()
        .map(|p| subscribe::report(p, shared, plan.connections));
    let bytes = match plan.subscribe {
        Some(_) => subscribe::bytes(shared),
        None => messages * plan.payload.size as u64,
    };
    let mb_per_s = per_s(bytes) / 1e6;
    // permessage-deflate: the parameters agreed, most connections first.
    let mut deflate: BTreeMap<String, u64> = BTreeMap::new();
    for s in &shared.workers {
        for (params, n) in s.deflate.lock().expect("deflate map lock").iter() {
            *deflate.entry(params.clone()).or_default() += n;
        }
    }
    let mut deflate: Vec<(String, u64)> = deflate.into_iter().collect();
    deflate.sort_by_key(|(_, n)| Reverse(*n));
    let deflate_agreed: u64 = deflate.iter().map(|(_, n)| n).sum();
    let echoed = subscribe::echoed_requests(shared);
    let mut out = String::new();
    if args.json {
        let connect_errors: serde_json::Map<String, serde_json::Value> = by_kind
            .iter()
            .map(|(k, (n, _))| ((*k).to_owned(), json!(n)))
            .collect();
        let mut object = json!({
            "url": args.url,
            "connections": plan.connections,
            "size": args.size,
            "in_flight": plan.in_flight,
            "duration_s": round(duration_s, 3),
            "connections_established": established,
            "connections_failed": failed,
            "connect_rate_per_s": round(connect_rate(shared), 1),
            "messages": messages,
            "msgs_per_s": round(per_s(messages), 1),
            "mb_per_s": round(mb_per_s, 2),
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": max,
            },
            "errors": {
                "mismatch": mismatch, "closed": closed, "connect": failed, "timeout": timeout,
                "dropped": dropped,
            },
            "connect_errors": connect_errors,
            "mode": mode,
            "workers": plan.workers,
            "rate": args.rate,
            "warmup_s": args.warmup,
            "hold": plan.hold,
            "sent": shared.sum(|s| &s.sent),
            "echoes": shared.sum(|s| &s.echoes),
            "load_cpu_percent": cpu,
            "deflate": deflate.first().map(|(params, _)| params),
            "deflate_connections": deflate_agreed,
        });
        if let Some((value, _)) = sub {
            object["subscribe"] = value;
        }
        let _ = writeln!(out, "{object}");
        if echoed > 0 {
            note!("warning: {}", subscribe::ECHOED_HINT);
        }
    } else {
        let loop_kind = match args.rate {
            Some(r) => format!("open loop at {r} msg/s (cap {} in flight)", plan.in_flight),
            None => format!("in-flight {}", plan.in_flight),
        };
        if plan.subscribe.is_some() {
            let _ = writeln!(
                out,
                "ringws load {}: {} subscribers, {} workers",
                args.url, plan.connections, plan.workers
            );
        } else {
            let _ = writeln!(
                out,
                "ringws load {}: {} connections x {} B {mode}, {loop_kind}, {} workers",
                args.url, plan.connections, plan.payload.size, plan.workers
            );
        }
        let _ = writeln!(
            out,
            "connections  {established} established, {failed} failed, {:.1}/s",
            connect_rate(shared)
        );
        if args.deflate.deflate {
            let _ = writeln!(out, "{}", deflate_line(&deflate, established));
        }
        if !plan.hold {
            let _ = writeln!(
                out,
                "messages     {messages} in {duration_s:.2} s = {:.1} msg/s, {mb_per_s:.2} MB/s (load CPU {cpu}%)",
                per_s(messages),
            );
            let _ = writeln!(
                out,
                "latency us   p50 {}  p90 {}  p99 {}  p99.9 {}  max {max}",
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999)
            );
        }
        let _ = writeln!(
            out,
            "errors       mismatch {mismatch}, closed {closed}, connect {failed}, timeout {timeout}, dropped {dropped}"
        );
        for (kind, (n, example)) in &by_kind {
            let _ = writeln!(out, "  connect {kind}: {n} (e.g. {example})");
        }
        for line in sub.iter().flat_map(|(_, lines)| lines) {
            let _ = writeln!(out, "{line}");
        }
    }
    if !print_or_report(&out) {
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_every_byte_counts() {
        for (size, text) in [
            (0, false),
            (3, false),
            (8, false),
            (20, false),
            (1024, true),
            (5, true),
        ] {
            let p = Payload::new(size, text);
            let mut buf = Vec::new();
            for seq in [0u64, 1, 250, 251, 0x1234_5678_9abc] {
                p.write(seq, &mut buf);
                assert_eq!(buf.len(), size);
                let msg = if text {
                    Message::Text(std::str::from_utf8(&buf).expect("ASCII"))
                } else {
                    Message::Binary(&buf)
                };
                assert!(p.matches(seq, &msg), "size {size} seq {seq}");
                if size > 0 {
                    assert!(
                        !p.matches(seq + 1, &msg) || size < 2,
                        "seq {seq} vs {}",
                        seq + 1
                    );
                }
                for i in 0..size {
                    let mut bad = buf.clone();
                    bad[i] ^= 0x20;
                    assert!(!p.matches(seq, &Message::Binary(&bad)), "flip at {i}");
                }
            }
            // Wrong type, wrong length.
            p.write(7, &mut buf);
            let wrong = if text {
                Message::Binary(&buf)
            } else {
                Message::Text("")
            };
            assert!(!p.matches(7, &wrong));
            buf.push(0);
            assert!(!p.matches(7, &Message::Binary(&buf)));
        }
    }

    #[test]
    fn source_ranges_and_lists_parse() {
        let ips = parse_sources("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.2, ::1").unwrap().len(), 2);
        assert_eq!(parse_sources("10.0.0.255-10.0.1.1").unwrap().len(), 3);
        for bad in [
            "",
            "127.0.0.8-127.0.0.1",
            "x",
            "10.0.0.0-10.1.0.0",
            "::1-::2",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_time_reads_this_process() {
        let before = cpu_time().expect("/proc/self/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(cpu_time().unwrap() > before);
    }
}
