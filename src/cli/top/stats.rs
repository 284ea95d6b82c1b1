//! What `ringws top` shows, computed from scrapes of `/metrics`: the series it reads per worker
//! ([`Scrape`]), and the rates between two scrapes ([`Row`]).
//!
//! Rates are the increase of a counter between two scrapes divided by the seconds between them; a
//! counter that went down was reset (the server restarted), and its whole new value is the increase,
//! as Prometheus's `rate()` takes it. The loop-turn p99 of an interval comes from the increase of each
//! histogram bucket: the upper bound (`le`) of the first bucket that holds 99% of the interval's
//! turns, as `histogram_quantile(0.99, ...)` finds it.

use super::parse::samples;
use std::collections::BTreeMap;

/// The counters and gauges of one worker (or of all, summed) in one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// `ringws_connections_open`.
    pub connections: f64,
    /// `ringws_messages_received_total` of the data messages (text and binary; control frames are
    /// not counted).
    pub messages_in: f64,
    /// `ringws_messages_sent_total`, text and binary.
    pub messages_out: f64,
    /// `ringws_received_bytes_total`, text and binary payload bytes.
    pub bytes_in: f64,
    /// `ringws_sent_bytes_total`, text and binary payload bytes.
    pub bytes_out: f64,
    /// `ringws_deliveries_total`: publications queued to subscribers.
    pub deliveries: f64,
    /// `ringws_backpressure_events_total`.
    pub backpressure: f64,
    /// `ringws_dropped_messages_total`.
    pub dropped: f64,
    /// `ringws_slow_consumer_disconnects_total`.
    pub slow_disconnects: f64,
    /// `ringws_loop_turn_duration_seconds_bucket`: (`le`, cumulative count), sorted by `le`.
    pub loop_turns: Vec<(f64, f64)>,
}

impl Counters {
    /// Adds `other`'s values to these (bucket counts by `le`): the total over workers.
    pub fn add(&mut self, other: &Counters) {
        self.connections += other.connections;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.deliveries += other.deliveries;
        self.backpressure += other.backpressure;
        self.dropped += other.dropped;
        self.slow_disconnects += other.slow_disconnects;
        for &(le, count) in &other.loop_turns {
            add_bucket(&mut self.loop_turns, le, count);
        }
    }
}

/// Adds `count` to the bucket `le` of `buckets` (kept sorted by `le`), creating it if needed.
fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
        Ok(i) => buckets[i].1 += count,
        Err(i) => buckets.insert(i, (le, count)),
    }
}

/// The server-wide values of a scrape; `None` for a series the server did not send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerInfo {
    /// `ringws_build_info{version}`.
    pub version: Option<String>,
    /// `ringws_build_info{kernel}`.
    pub kernel: Option<String>,
    /// `ringws_build_info{io_uring}`.
    pub io_uring: Option<String>,
    /// `process_start_time_seconds`: when the server started, in seconds since the UNIX epoch.
    pub start_time: Option<f64>,
    /// `ringws_ready`: accepting and not draining.
    pub ready: Option<bool>,
    /// `ringws_draining`: a drain started.
    pub draining: Option<bool>,
}

/// What one GET of `/metrics` said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// The server-wide values.
    pub server: ServerInfo,
    /// Each worker's values, by worker index.
    pub workers: BTreeMap<u32, Counters>,
    /// Lines that were not valid samples (skipped).
    pub unparsed: usize,
    /// Whether any `ringws_` series was seen: a page without one is not a ringws server's.
    pub is_ringws: bool,
}

impl Scrape {
    /// Reads the series `top` shows from a `/metrics` page; malformed lines are counted and skipped.
    pub fn from_text(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for sample in samples(text) {
            let Ok(s) = sample else {
                scrape.unparsed += 1;
                continue;
            };
            scrape.is_ringws |= s.name.starts_with("ringws_");
            let flag = || Some(s.value == 1.0);
            match s.name {
                "ringws_build_info" => {
                    let label = |n| s.label(n).map(str::to_owned);
                    scrape.server.version = label("version");
                    scrape.server.kernel = label("kernel");
                    scrape.server.io_uring = label("io_uring");
                }
                "process_start_time_seconds" => scrape.server.start_time = Some(s.value),
                "ringws_ready" => scrape.server.ready = flag(),
                "ringws_draining" => scrape.server.draining = flag(),
                _ => {}
            }
            let Some(worker) = s.label("worker").and_then(|w| w.parse::<u32>().ok()) else {
                continue;
            };
            let data = matches!(s.label("kind"), Some("text" | "binary"));
            let w = scrape.workers.entry(worker).or_default();
            let v = s.value;
            match s.name {
                "ringws_connections_open" => w.connections += v,
                "ringws_messages_received_total" if data => w.messages_in += v,
                "ringws_messages_sent_total" if data => w.messages_out += v,
                "ringws_received_bytes_total" if data => w.bytes_in += v,
                "ringws_sent_bytes_total" if data => w.bytes_out += v,
                "ringws_deliveries_total" => w.deliveries += v,
                "ringws_backpressure_events_total" => w.backpressure += v,
                "ringws_dropped_messages_total" => w.dropped += v,
                "ringws_slow_consumer_disconnects_total" => w.slow_disconnects += v,
                "ringws_loop_turn_duration_seconds_bucket" => {
                    if let Some(le) = s.label("le").and_then(super::parse::number)
                        && !le.is_nan()
                    {
                        add_bucket(&mut w.loop_turns, le, v);
                    }
                }
                _ => {}
            }
        }
        scrape
    }

    /// The sum over the workers.
    pub fn total(&self) -> Counters {
        let mut total = Counters::default();
        for w in self.workers.values() {
            total.add(w);
        }
        total
    }
}

/// One row of the view: a worker's or the total's gauges, rates per second and p99. Rates are
/// `None` without an earlier scrape to compare with.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Open connections now.
    pub connections: f64,
    /// Data messages received per second.
    pub messages_in: Option<f64>,
    /// Data messages sent per second.
    pub messages_out: Option<f64>,
    /// Payload bytes received per second.
    pub bytes_in: Option<f64>,
    /// Payload bytes sent per second.
    pub bytes_out: Option<f64>,
    /// Publications queued to subscribers per second.
    pub deliveries: Option<f64>,
    /// Sends over `max_backpressure` per second.
    pub backpressure: Option<f64>,
    /// Messages dropped per second.
    pub dropped: Option<f64>,
    /// Slow-consumer disconnects since the server started.
    pub slow_disconnects: f64,
    /// The loop-turn p99 of the interval; `None` without an earlier scrape or without turns.
    pub loop_turn_p99: Option<Bound>,
}

/// A percentile read from histogram buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// At most this many seconds: the `le` of the bucket it falls in.
    AtMost(f64),
    /// Above the largest finite bucket (this many seconds): it fell in `+Inf`.
    Above(f64),
}

impl Row {
    /// The row for `now`, with rates against `before` taken `seconds` earlier.
    pub fn new(before: Option<&Counters>, now: &Counters, seconds: f64) -> Row {
        let rate = |f: fn(&Counters) -> f64| {
            before
                .filter(|_| seconds > 0.0)
                .map(|b| increase(f(b), f(now)) / seconds)
        };
        Row {
            connections: now.connections,
            messages_in: rate(|c| c.messages_in),
            messages_out: rate(|c| c.messages_out),
            bytes_in: rate(|c| c.bytes_in),
            bytes_out: rate(|c| c.bytes_out),
            deliveries: rate(|c| c.deliveries),
            backpressure: rate(|c| c.backpressure),
            dropped: rate(|c| c.dropped),
            slow_disconnects: now.slow_disconnects,
            loop_turn_p99: before.and_then(|b| quantile(0.99, &b.loop_turns, &now.loop_turns)),
        }
    }
}

/// How much a counter grew from `before` to `now`; a counter that went down was reset, so all of
/// `now` is new.
fn increase(before: f64, now: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// The `q` quantile (0..1) of the observations that arrived between two scrapes of one histogram's
/// cumulative buckets (`(le, count)` sorted by `le`); `None` when none arrived.
fn quantile(q: f64, before: &[(f64, f64)], now: &[(f64, f64)]) -> Option<Bound> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, count)| {
            let was = before
                .iter()
                .find(|(b, _)| b.total_cmp(&le).is_eq())
                .map_or(0.0, |&(_, c)| c);
            (le, increase(was, count))
        })
        .collect();
    // The last (`+Inf`) bucket counts every observation.
    let total = delta.last().map_or(0.0, |&(_, c)| c);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = delta.iter().position(|&(_, c)| c >= rank)?;
    let le = delta[i].0;
    if le.is_finite() {
        Some(Bound::AtMost(le))
    } else {
        // As histogram_quantile does: the largest finite bound, marked as exceeded.
        i.checked_sub(1).map(|j| Bound::Above(delta[j].0))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A `/metrics` page as `ringws serve --workers 2` writes it (the names, labels and buckets of
    /// the metrics spec), at `t` seconds into a steady load: worker 0 echoes 1000 text messages of
    /// 100 bytes per second and 10 binary ones of 10 KiB, worker 1 is idle but for pings.
    pub fn fixture(t: u64) -> String {
        let m = 1000 * t;
        let b = 10 * t;
        let mut text = format!(
            r#"# HELP ringws_build_info Build and host: always 1.
# TYPE ringws_build_info gauge
ringws_build_info{{version="0.1.0",kernel="6.8.0-45-generic",io_uring="multishot,bundles"}} 1
# HELP ringws_ready 1 while accepting and not draining.
# TYPE ringws_ready gauge
ringws_ready 1
# TYPE ringws_draining gauge
ringws_draining 0
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e9
# TYPE ringws_connections_open gauge
ringws_connections_open{{worker="0"}} 12
ringws_connections_open{{worker="1"}} 3
# HELP ringws_messages_received_total Messages received, by kind.
# TYPE ringws_messages_received_total counter
ringws_messages_received_total{{worker="0",kind="text"}} {m}
ringws_messages_received_total{{worker="0",kind="binary"}} {b}
ringws_messages_received_total{{worker="0",kind="ping"}} {t}
ringws_messages_received_total{{worker="1",kind="text"}} 0
ringws_messages_received_total{{worker="1",kind="ping"}} {t}
ringws_received_bytes_total{{worker="0",kind="text"}} {}
ringws_received_bytes_total{{worker="0",kind="binary"}} {}
ringws_received_bytes_total{{worker="1",kind="ping"}} {}
ringws_messages_sent_total{{worker="0",kind="text"}} {m}
ringws_messages_sent_total{{worker="0",kind="binary"}} {b}
ringws_messages_sent_total{{worker="1",kind="pong"}} {t}
ringws_sent_bytes_total{{worker="0",kind="text"}} {}
ringws_sent_bytes_total{{worker="0",kind="binary"}} {}
ringws_closes_total{{worker="0",code="1000",side="peer"}} 4
ringws_upgrades_total{{worker="0",status="101"}} 16
ringws_deliveries_total{{worker="0"}} {}
ringws_deliveries_total{{worker="1"}} 0
ringws_backpressure_events_total{{worker="0"}} {t}
ringws_backpressure_events_total{{worker="1"}} 0
ringws_dropped_messages_total{{worker="0"}} 0
ringws_dropped_messages_total{{worker="1"}} {}
ringws_slow_consumer_disconnects_total{{worker="0"}} 0
ringws_slow_consumer_disconnects_total{{worker="1"}} 2
ringws_published_total 5e3
ringws_topics 3
ringws_worker_heartbeat_age_seconds{{worker="0"}} 1.25e-4
ringws_worker_heartbeat_age_seconds{{worker="1"}} NaN
# TYPE ringws_loop_turn_duration_seconds histogram
"#,
            100 * m,
            10_240 * b,
            4 * t,
            100 * m,
            10_240 * b,
            50 * t,
            3 * t,
        );
        // Worker 0: per second 1000 turns, 989 under 50 µs, 10 more under 250 µs, 1 above 10 s.
        // Worker 1: 100 turns per second, all under 5 µs.
        let les = [
            "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
        ];
        for (i, le) in les.iter().enumerate() {
            let w0 = match i {
                0..3 => 0,
                3..5 => 989 * t,
                5..20 => 999 * t,
                _ => 1000 * t,
            };
            text.push_str(&format!(
                "ringws_loop_turn_duration_seconds_bucket{{worker=\"0\",le=\"{le}\"}} {w0}\n\
                 ringws_loop_turn_duration_seconds_bucket{{worker=\"1\",le=\"{le}\"}} {}\n",
                100 * t
            ));
        }
        text.push_str(&format!(
            "ringws_loop_turn_duration_seconds_sum{{worker=\"0\"}} {}\n\
             ringws_loop_turn_duration_seconds_count{{worker=\"0\"}} {}\n\
             ringws_loop_turn_duration_seconds_sum{{worker=\"1\"}} {}\n\
             ringws_loop_turn_duration_seconds_count{{worker=\"1\"}} {}\n\
             process_resident_memory_bytes 1.2e7\n# EOF\n",
            10.04 * t as f64,
            1000 * t,
            0.0002 * t as f64,
            100 * t
        ));
        text
    }

    #[test]
    fn reads_the_series_of_each_worker_and_the_server() {
        let s = Scrape::from_text(&fixture(10));
        assert!(s.is_ringws);
        assert_eq!(s.unparsed, 0);
        assert_eq!(s.server.version.as_deref(), Some("0.1.0"));
        assert_eq!(s.server.kernel.as_deref(), Some("6.8.0-45-generic"));
        assert_eq!(s.server.start_time, Some(1.7e9));
        assert_eq!(
            (s.server.ready, s.server.draining),
            (Some(true), Some(false))
        );
        assert_eq!(s.workers.keys().copied().collect::<Vec<_>>(), [0, 1]);
        let w0 = &s.workers[&0];
        // Pings are not messages here; the payload bytes are text and binary ones.
        assert_eq!(w0.messages_in, 10_100.0);
        assert_eq!(w0.messages_out, 10_100.0);
        assert_eq!(w0.bytes_in, 1_000_000.0 + 1_024_000.0);
        assert_eq!(w0.connections, 12.0);
        assert_eq!(w0.loop_turns.len(), 21);
        assert_eq!(w0.loop_turns[0], (5e-6, 0.0));
        assert_eq!(w0.loop_turns[20], (f64::INFINITY, 10_000.0));
        let w1 = &s.workers[&1];
        assert_eq!((w1.messages_in, w1.messages_out), (0.0, 0.0));
        assert_eq!((w1.dropped, w1.slow_disconnects), (30.0, 2.0));
        let total = s.total();
        assert_eq!(total.connections, 15.0);
        assert_eq!(total.deliveries, 500.0);
        assert_eq!(total.loop_turns[20], (f64::INFINITY, 11_000.0));
        assert_eq!(total.loop_turns[0], (5e-6, 1_000.0));
    }

    #[test]
    fn rates_are_increases_over_the_elapsed_time() {
        let (a, b) = (
            Scrape::from_text(&fixture(10)),
            Scrape::from_text(&fixture(12)),
        );
        // Two seconds of the fixture's load, scraped 2 s apart, and 4 s apart.
        let row = Row::new(Some(&a.workers[&0]), &b.workers[&0], 2.0);
        assert_eq!(row.connections, 12.0);
        assert_eq!(row.messages_in, Some(1010.0));
        assert_eq!(row.messages_out, Some(1010.0));
        assert_eq!(row.bytes_in, Some(100_000.0 + 102_400.0));
        assert_eq!(row.deliveries, Some(50.0));
        assert_eq!(row.backpressure, Some(1.0));
        assert_eq!(row.dropped, Some(0.0));
        let slow = Row::new(Some(&a.workers[&0]), &b.workers[&0], 4.0);
        assert_eq!(slow.messages_in, Some(505.0));
        let total = Row::new(Some(&a.total()), &b.total(), 2.0);
        assert_eq!(total.messages_in, Some(1010.0));
        assert_eq!(total.dropped, Some(3.0));
        assert_eq!(total.slow_disconnects, 2.0);
        // The first scrape has nothing to compare with.
        let first = Row::new(None, &b.workers[&0], 0.0);
        assert_eq!((first.messages_in, first.loop_turn_p99), (None, None));
        assert_eq!(first.connections, 12.0);
    }

    #[test]
    fn a_reset_counter_counts_from_zero() {
        let (a, b) = (
            Scrape::from_text(&fixture(100)),
            Scrape::from_text(&fixture(3)),
        );
        let row = Row::new(Some(&a.workers[&0]), &b.workers[&0], 3.0);
        assert_eq!(row.messages_in, Some(1010.0));
        assert_eq!(row.loop_turn_p99, Some(Bound::AtMost(0.00025)));
    }

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_holding_it() {
        let (a, b) = (
            Scrape::from_text(&fixture(10)),
            Scrape::from_text(&fixture(11)),
        );
        // Worker 0: 989 of 1000 turns under 50 µs, 999 under 250 µs: the 990th is in (100, 250] µs.
        let p99 = |w: &Counters, v: &Counters| Row::new(Some(w), v, 1.0).loop_turn_p99;
        assert_eq!(
            p99(&a.workers[&0], &b.workers[&0]),
            Some(Bound::AtMost(0.00025))
        );
        assert_eq!(
            p99(&a.workers[&1], &b.workers[&1]),
            Some(Bound::AtMost(5e-6))
        );
        // The total: 1100 turns, rank 1089; 100 + 989 = 1089 are under 50 µs.
        assert_eq!(p99(&a.total(), &b.total()), Some(Bound::AtMost(5e-5)));
        // No turns in the interval: no p99.
        assert_eq!(p99(&b.workers[&0], &b.workers[&0]), None);
    }

    #[test]
    fn quantiles_at_the_edges() {
        let cum = |counts: &[f64]| -> Vec<(f64, f64)> {
            [0.001, 0.01, 0.1, f64::INFINITY]
                .into_iter()
                .zip(counts.iter().copied())
                .collect()
        };
        let zero = cum(&[0.0; 4]);
        assert_eq!(quantile(0.99, &zero, &zero), None);
        assert_eq!(
            quantile(0.99, &zero, &cum(&[1.0, 1.0, 1.0, 1.0])),
            Some(Bound::AtMost(0.001))
        );
        // 98 fast, 2 beyond every finite bucket: p99 is above 0.1 s.
        assert_eq!(
            quantile(0.99, &zero, &cum(&[98.0, 98.0, 98.0, 100.0])),
            Some(Bound::Above(0.1))
        );
        assert_eq!(
            quantile(0.5, &zero, &cum(&[0.0, 0.0, 5.0, 10.0])),
            Some(Bound::AtMost(0.1))
        );
        // Only a +Inf bucket: nothing finite to name.
        assert_eq!(quantile(0.99, &[], &[(f64::INFINITY, 4.0)]), None);
        // A bucket missing before (a new worker) counts from zero.
        assert_eq!(
            quantile(0.99, &[], &cum(&[10.0, 10.0, 10.0, 10.0])),
            Some(Bound::AtMost(0.001))
        );
    }

    #[test]
    fn a_page_of_something_else_is_not_ringws() {
        let s = Scrape::from_text("up 1\nnode_load1 0.5\nbad{ line\n");
        assert!(!s.is_ringws);
        assert!(s.workers.is_empty());
        assert_eq!(s.unparsed, 1);
    }
}
