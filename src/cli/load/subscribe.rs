//! `ringws load --subscribe`: subscribers of a market feed (`ringws serve --mode feed`) that only
//! receive, timed by the publish timestamp every quote carries.
//!
//! Each connection sends `{"op":"subscribe","symbols":[...]}` once it is open (split into several
//! messages if the list is over the feed's control-message limit) and from then on only reads.
//! The feed answers each with `{"type":"subscribed","symbols":[...]}` and then the last quote of
//! each of those symbols (the snapshot): those are counted apart, never timed. Every later quote is
//! a delivery: its latency is the receive time minus its `ts`, both on [`now_ns`] (the same host's
//! clock), read with [`timestamp`] (the last digits of a JSON quote, the first 8 bytes of a binary
//! one), so nothing is parsed on the hot path.
//!
//! Stall (`--stall N`): the first N connections stop reading (`Socket::pause_reading`) from
//! `--stall-at` seconds into the measurement for `--stall-for` seconds, then resume. The others'
//! latencies are the report's `latency_us`, and those inside the stall window are also kept apart;
//! the stalled ones are reported apart: the age of the first quote each receives after resuming (it
//! sat in the kernel's socket buffers), how long until it receives a quote published after it
//! resumed (it has caught up with current prices), and how many quotes it received in between (its
//! backlog: with a conflating feed at most what the socket buffers and the server's queue hold, one
//! per symbol in the queue, rather than everything published while it was stalled, which the live
//! connections' deliveries during the stall show). `--stall 0` with `--stall-at`/`--stall-for`
//! keeps the same window with nobody stalled, the baseline to compare with.

use super::{Gen, Shared, histogram, round};
use hdrhistogram::Histogram;
use ringws::{Connect, Context, Message, Socket};
use ringws_cli::feed::control::MAX_CONTROL;
use ringws_cli::feed::{now_ns, timestamp};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What an echoed subscribe request means.
pub(super) const ECHOED_HINT: &str = "the server echoed the subscribe requests back instead of \
     answering {\"type\":\"subscribed\",...}: is it running `ringws serve --mode feed`?";

/// Bound on fetching `GET /symbols`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `GET /symbols` response accepted (100,000 symbols of up to 32 bytes fit).
const MAX_HTTP: usize = 8 << 20;

/// What the subscribers do, fixed for the run.
#[derive(Debug)]
pub(super) struct Plan {
    /// The symbols, in the order they are handed out.
    symbols: Vec<String>,
    /// Symbols per connection.
    per_conn: usize,
    /// Connections (the first ones) that stall.
    pub stall: usize,
    /// A stall window was asked for (`--stall` over 0, or `--stall-at`/`--stall-for`).
    window: bool,
    /// The stall, in ns from the start of the measurement.
    stall_from: u64,
    stall_until: u64,
}

impl Plan {
    /// Resolves `spec` (a comma-separated list, or `all` for the server's `GET /symbols`) and checks
    /// the options.
    pub fn new(spec: &str, args: &super::LoadArgs, target: &Connect) -> Result<Self, String> {
        let stall = args.stall;
        let window = stall > 0 || args.stall_at.is_some() || args.stall_for.is_some();
        let (stall_at, stall_for) = (args.stall_at.unwrap_or(2.0), args.stall_for.unwrap_or(3.0));
        let symbols: Vec<String> = if spec.trim() == "all" {
            fetch_symbols(target)?
        } else {
            spec.split(',').map(|s| s.trim().to_owned()).collect()
        };
        if symbols.is_empty() || symbols.iter().any(String::is_empty) {
            return Err("--subscribe: an empty symbol".into());
        }
        let per_conn = args.symbols_per_conn.unwrap_or(symbols.len());
        if per_conn == 0 || per_conn > symbols.len() {
            return Err(format!(
                "--symbols-per-conn must be between 1 and the {} symbols",
                symbols.len()
            ));
        }
        if stall > args.connections {
            return Err("--stall cannot exceed --connections".into());
        }
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if window && !(ok(stall_at) && ok(stall_for) && stall_for > 0.0) {
            return Err("--stall-at and --stall-for must be seconds, --stall-for over 0".into());
        }
        if window && stall_at + stall_for >= args.duration {
            return Err("the stall must end before the measurement does (--duration)".into());
        }
        Ok(Self {
            symbols,
            per_conn,
            stall,
            window,
            stall_from: (stall_at * 1e9) as u64,
            stall_until: ((stall_at + stall_for) * 1e9) as u64,
        })
    }

    /// The subscribe messages of connection `global`: symbols `global * per_conn ..`, wrapping, each
    /// message under the feed's control-message limit.
    fn messages(&self, global: usize) -> Vec<String> {
        let n = self.symbols.len();
        let head = r#"{"op":"subscribe","symbols":["#;
        let mut out = Vec::new();
        let mut msg = String::from(head);
        for k in 0..self.per_conn {
            let name = json!(self.symbols[(global * self.per_conn + k) % n]).to_string();
            if msg.len() > head.len() && msg.len() + name.len() + 3 > MAX_CONTROL {
                msg.push_str("]}");
                out.push(std::mem::replace(&mut msg, String::from(head)));
            }
            if msg.len() > head.len() {
                msg.push(',');
            }
            msg.push_str(&name);
        }
        msg.push_str("]}");
        out.push(msg);
        out
    }

    /// Subscribers per symbol on average.
    fn fan_out(&self, connections: usize) -> f64 {
        (connections * self.per_conn) as f64 / self.symbols.len() as f64
    }
}

/// `GET /symbols` from the server at `target` (a JSON array of names).
fn fetch_symbols(target: &Connect) -> Result<Vec<String>, String> {
    let addr = target.addr();
    let fail = |e: &dyn std::fmt::Display| format!("GET http://{addr}/symbols: {e}");
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| fail(&e))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| fail(&e))?;
    write!(
        s,
        "GET /symbols HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(&e))?;
    let mut response = Vec::new();
    s.take(MAX_HTTP as u64)
        .read_to_end(&mut response)
        .map_err(|e| fail(&e))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail(&"no complete response"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    if head.split(' ').nth(1) != Some("200") {
        let status = head.lines().next().unwrap_or("");
        return Err(fail(&format!(
            "{status} (is it `ringws serve --mode feed`?)"
        )));
    }
    serde_json::from_slice(&response[split + 4..]).map_err(|e| fail(&e))
}

/// A subscriber's state.
#[derive(Debug, Default)]
pub(super) struct Sub {
    /// One of the `--stall` connections.
    stalled: bool,
    /// Snapshot quotes still to come after the acks received so far.
    snapshots_left: u32,
    /// Since resuming, until caught up: the resume time (ns since the epoch), 0 otherwise.
    resumed_at: u64,
    /// Quotes received since resuming, while not caught up.
    backlog: u32,
}

/// Where the stall is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Before,
    Stalled,
    Over,
}

/// One worker's view of the stall window.
#[derive(Debug, Default)]
pub(super) struct Window {
    stage: Stage,
    /// The live connections' latencies during the stall, not yet published.
    live: Option<Histogram<u64>>,
}

/// One worker's subscriber counters, read by the controller thread and the report.
pub(super) struct Stats {
    /// Snapshot quotes received.
    snapshots: AtomicU64,
    /// Payload bytes of the deliveries in the measurement window.
    bytes: AtomicU64,
    /// Deliveries to stalled connections in the window.
    stalled_messages: AtomicU64,
    /// Deliveries to live connections while the others were stalled.
    live_during_stall: AtomicU64,
    /// Their latencies (ns).
    live_stall_latency: Mutex<Histogram<u64>>,
    /// Feed error replies (`{"type":"error",...}`).
    feed_errors: AtomicU64,
    /// Our own subscribe requests sent back (an echo server, not a feed); also mismatches.
    echoed: AtomicU64,
    /// Stalled connections that paused, and that resumed.
    paused: AtomicU64,
    resumed: AtomicU64,
    /// Stalled connections that caught up, and their backlogs in total.
    caught_up: AtomicU64,
    backlog: AtomicU64,
    /// After resuming: the age of the first quote, and the time until a current one (ns).
    first_age: Mutex<Histogram<u64>>,
    catch_up: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            snapshots: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            stalled_messages: AtomicU64::new(0),
            live_during_stall: AtomicU64::new(0),
            live_stall_latency: Mutex::new(histogram()),
            feed_errors: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            first_age: Mutex::new(histogram()),
            catch_up: Mutex::new(histogram()),
        }
    }
}

/// Records `v` (ns) in a shared histogram (rare: once per stalled connection).
fn record(h: &Mutex<Histogram<u64>>, v: u64) {
    h.lock()
        .expect("histogram lock")
        .saturating_record(v.max(1));
}

impl Gen {
    /// The subscriber plan (only called in `--subscribe` mode).
    fn sub_plan(&self) -> &Plan {
        self.plan.subscribe.as_ref().expect("--subscribe mode")
    }

    /// A new connection subscribes.
    pub(super) fn subscribe(&mut self, ws: &mut Socket<'_, super::Conn>) {
        let global = ws.state().global as usize;
        ws.state_mut().sub.stalled = global < self.sub_plan().stall;
        for m in self.sub_plan().messages(global) {
            if ws.send_text(&m) == ringws::SendResult::Dropped {
                self.stats().dropped.fetch_add(1, Relaxed);
                return;
            }
            self.stats().sent.fetch_add(1, Relaxed);
        }
    }

    /// A message from the feed: an ack, a snapshot quote, a delivery, or an error reply.
    pub(super) fn receive(&mut self, ws: &mut Socket<'_, super::Conn>, msg: Message<'_>, now: u64) {
        let Some(ts) = timestamp(msg) else {
            return self.reply(ws, msg);
        };
        let wall = now_ns();
        let stats = &self.shared.workers[self.index];
        let st = &mut ws.state_mut().sub;
        if st.snapshots_left > 0 {
            st.snapshots_left -= 1;
            stats.sub.snapshots.fetch_add(1, Relaxed);
            return;
        }
        stats.echoes.fetch_add(1, Relaxed);
        let age = wall.saturating_sub(ts);
        let start = self.shared.start_ns.load(Relaxed);
        let in_window = (start..self.shared.end_ns.load(Relaxed)).contains(&now);
        if in_window {
            stats.messages.fetch_add(1, Relaxed);
            stats
                .sub
                .bytes
                .fetch_add(msg.as_bytes().len() as u64, Relaxed);
        }
        if st.stalled {
            if in_window {
                stats.sub.stalled_messages.fetch_add(1, Relaxed);
            }
            if st.resumed_at != 0 {
                if st.backlog == 0 {
                    record(&stats.sub.first_age, age);
                }
                if ts >= st.resumed_at {
                    record(&stats.sub.catch_up, wall - st.resumed_at);
                    stats.sub.caught_up.fetch_add(1, Relaxed);
                    stats.sub.backlog.fetch_add(u64::from(st.backlog), Relaxed);
                    st.resumed_at = 0;
                } else {
                    st.backlog += 1;
                }
            }
        } else if in_window {
            self.hist.saturating_record(age.max(1));
            if self.stall.stage == Stage::Stalled {
                stats.sub.live_during_stall.fetch_add(1, Relaxed);
                self.stall
                    .live
                    .get_or_insert_with(histogram)
                    .saturating_record(age.max(1));
            }
        }
    }

    /// A message without a timestamp: an ack (announcing its snapshot), an error reply, or
    /// something a feed does not send (a mismatch).
    fn reply(&mut self, ws: &mut Socket<'_, super::Conn>, msg: Message<'_>) {
        let stats = &self.shared.workers[self.index];
        match msg {
            Message::Text(t) if t.starts_with(r#"{"type":"subscribed","symbols":["#) => {
                // Symbol names hold no quote: every symbol is two of them.
                let n = t.bytes().filter(|&b| b == b'"').count().saturating_sub(6) / 2;
                ws.state_mut().sub.snapshots_left += n as u32;
            }
            Message::Text(t) if t.starts_with(r#"{"type":"error""#) => {
                stats.sub.feed_errors.fetch_add(1, Relaxed);
            }
            Message::Text(t) if t.starts_with(r#"{"op":"subscribe""#) => {
                stats.sub.echoed.fetch_add(1, Relaxed);
                stats.mismatch.fetch_add(1, Relaxed);
            }
            _ => {
                stats.mismatch.fetch_add(1, Relaxed);
            }
        }
    }

    /// Pauses the stalled connections when the stall starts and resumes them when it ends.
    /// Returns when the next change is due (ns), if any.
    pub(super) fn stall_tick(
        &mut self,
        ctx: &mut Context<'_, super::Conn>,
        now: u64,
    ) -> Option<u64> {
        let plan = self.plan.subscribe.as_ref()?;
        let start = self.shared.start_ns.load(Relaxed);
        if !plan.window || start == u64::MAX {
            return None;
        }
        let (from, until) = (start + plan.stall_from, start + plan.stall_until);
        let next = match self.stall.stage {
            Stage::Before if now >= from => {
                self.stall.stage = Stage::Stalled;
                until
            }
            Stage::Before => return Some(from),
            Stage::Stalled if now >= until => {
                self.stall.stage = Stage::Over;
                self.publish_window();
                u64::MAX
            }
            Stage::Stalled => return Some(until),
            Stage::Over => return None,
        };
        let resumed_at = now_ns();
        let stats = &self.shared.workers[self.index];
        for id in self.open_ids() {
            let Some(mut ws) = ctx.socket(id) else {
                continue;
            };
            if !ws.state().sub.stalled || !ws.is_open() {
                continue;
            }
            if self.stall.stage == Stage::Stalled {
                ws.pause_reading();
                stats.sub.paused.fetch_add(1, Relaxed);
            } else {
                ws.resume_reading();
                ws.state_mut().sub.resumed_at = resumed_at;
                stats.sub.resumed.fetch_add(1, Relaxed);
            }
        }
        (next != u64::MAX).then_some(next)
    }

    /// Adds the live connections' latencies during the stall to the shared histogram.
    pub(super) fn publish_window(&mut self) {
        if let Some(h) = self.stall.live.take() {
            let stats = &self.shared.workers[self.index];
            let mut shared = stats.sub.live_stall_latency.lock().expect("histogram lock");
            shared.add(&h).expect("histograms share their bounds");
        }
    }
}

/// Feed error replies over all workers (they count as errors).
pub(super) fn feed_errors(shared: &Shared) -> u64 {
    shared
        .workers
        .iter()
        .map(|s| s.sub.feed_errors.load(Relaxed))
        .sum()
}

/// Subscribe requests the server sent back over all workers (it echoes: not a feed).
pub(super) fn echoed_requests(shared: &Shared) -> u64 {
    shared
        .workers
        .iter()
        .map(|s| s.sub.echoed.load(Relaxed))
        .sum()
}

/// Payload bytes delivered in the measurement window, over all workers.
pub(super) fn bytes(shared: &Shared) -> u64 {
    shared
        .workers
        .iter()
        .map(|s| s.sub.bytes.load(Relaxed))
        .sum()
}

/// The subscriber part of the report: one JSON object, and the same as summary lines.
pub(super) fn report(
    plan: &Plan,
    shared: &Shared,
    connections: usize,
) -> (serde_json::Value, Vec<String>) {
    let sum = |f: fn(&Stats) -> &AtomicU64| -> u64 {
        shared.workers.iter().map(|s| f(&s.sub).load(Relaxed)).sum()
    };
    let merged = |f: fn(&Stats) -> &Mutex<Histogram<u64>>| {
        let mut all = histogram();
        for s in &shared.workers {
            all.add(&*f(&s.sub).lock().expect("histogram lock"))
                .expect("histograms share their bounds");
        }
        all
    };
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            round(h.value_at_quantile(q) as f64 / 1e6, 2)
        }
    };
    let (first_age, catch_up) = (merged(|s| &s.first_age), merged(|s| &s.catch_up));
    let live_stall = merged(|s| &s.live_stall_latency);
    let us = |q: f64| {
        if live_stall.is_empty() {
            0.0
        } else {
            round(live_stall.value_at_quantile(q) as f64 / 1e3, 1)
        }
    };
    let stalled_messages = sum(|s| &s.stalled_messages);
    let live = connections - plan.stall;
    let caught_up = sum(|s| &s.caught_up);
    let per = |n: u64, d: u64| {
        if d == 0 {
            0.0
        } else {
            round(n as f64 / d as f64, 1)
        }
    };
    let backlog = per(sum(|s| &s.backlog), caught_up);
    let live_during = per(sum(|s| &s.live_during_stall), live as u64);
    let stall = plan.window.then(|| {
        json!({
            "connections": plan.stall,
            "at_s": plan.stall_from as f64 / 1e9,
            "for_s": (plan.stall_until - plan.stall_from) as f64 / 1e9,
            "paused": sum(|s| &s.paused),
            "resumed": sum(|s| &s.resumed),
            "caught_up": caught_up,
            "messages": stalled_messages,
            "first_age_ms": { "p50": ms(&first_age, 0.5), "max": ms(&first_age, 1.0) },
            "catch_up_ms": {
                "p50": ms(&catch_up, 0.5), "p99": ms(&catch_up, 0.99), "max": ms(&catch_up, 1.0),
            },
            "backlog_per_conn": backlog,
            "live_messages_during_stall_per_conn": live_during,
            "live_latency_during_stall_us": { "p50": us(0.5), "p99": us(0.99), "p999": us(0.999) },
        })
    });
    let value = json!({
        "symbols": plan.symbols.len(),
        "symbols_per_conn": plan.per_conn,
        "subscribers_per_symbol": round(plan.fan_out(connections), 2),
        "snapshots": sum(|s| &s.snapshots),
        "feed_errors": sum(|s| &s.feed_errors),
        "echoed_requests": sum(|s| &s.echoed),
        "stall": stall,
    });
    let mut lines = vec![format!(
        "subscribed   {} symbols, {} per connection, {:.1} subscribers per symbol; {} snapshot quotes (not timed), {} feed errors",
        plan.symbols.len(),
        plan.per_conn,
        plan.fan_out(connections),
        value["snapshots"],
        value["feed_errors"],
    )];
    if sum(|s| &s.echoed) > 0 {
        lines.push(format!(
            "  {} mismatches: {ECHOED_HINT}",
            sum(|s| &s.echoed)
        ));
    }
    if plan.window {
        lines.push(format!(
            "  live connections during the stall: p50 {} us, p99 {} us, p99.9 {} us",
            us(0.5),
            us(0.99),
            us(0.999)
        ));
    }
    if plan.stall > 0 {
        lines.push(format!(
            "stall        {} connections stopped reading {:.1}-{:.1} s into the measurement; {} resumed, {} caught up",
            plan.stall,
            plan.stall_from as f64 / 1e9,
            plan.stall_until as f64 / 1e9,
            sum(|s| &s.resumed),
            caught_up,
        ));
        lines.push(format!(
            "  after resuming: first quote {} ms old (p50, max {}); a quote published after the resume within {} ms (p50, p99 {}, max {}), {backlog} older quotes first (live connections got {live_during} quotes each during the stall)",
            ms(&first_age, 0.5),
            ms(&first_age, 1.0),
            ms(&catch_up, 0.5),
            ms(&catch_up, 0.99),
            ms(&catch_up, 1.0),
        ));
    }
    (value, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(symbols: &[&str], per_conn: usize) -> Plan {
        Plan {
            symbols: symbols.iter().map(|s| (*s).to_owned()).collect(),
            per_conn,
            stall: 0,
            window: false,
            stall_from: 0,
            stall_until: 0,
        }
    }

    #[test]
    fn symbols_are_dealt_out_in_turn_and_wrap() {
        let p = plan(&["A", "B", "C"], 2);
        assert_eq!(p.messages(0), [r#"{"op":"subscribe","symbols":["A","B"]}"#]);
        assert_eq!(p.messages(1), [r#"{"op":"subscribe","symbols":["C","A"]}"#]);
        assert_eq!(p.fan_out(3), 2.0);
    }

    #[test]
    fn long_lists_are_split_under_the_control_limit() {
        let names: Vec<String> = ringws_cli::feed::symbol_names(5000);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = plan(&refs, 5000);
        let msgs = p.messages(0);
        assert!(msgs.len() > 1);
        let mut all = Vec::new();
        for m in &msgs {
            assert!(m.len() <= MAX_CONTROL, "{}", m.len());
            let v: serde_json::Value = serde_json::from_str(m).unwrap();
            assert_eq!(v["op"], "subscribe");
            all.extend(v["symbols"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(all.len(), 5000);
        assert_eq!(all[4999], "S04999-USD");
    }
}
