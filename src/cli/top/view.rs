//! How `ringws top` shows a [`Frame`]: a compact table for people, one JSON object for scripts.

use super::stats::{Bound, Row, ServerInfo};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Everything one refresh shows.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The URL scraped.
    pub url: &'a str,
    /// Seconds between the two scrapes the rates come from (`None`: the first scrape).
    pub seconds: Option<f64>,
    /// The server's build, uptime and state.
    pub server: &'a ServerInfo,
    /// Seconds since the UNIX epoch now, for the uptime.
    pub now: f64,
    /// Lines of the page that were not valid samples.
    pub unparsed: usize,
    /// Each worker's row, by worker index.
    pub workers: Vec<(u32, Row)>,
    /// The sum of the workers.
    pub total: Row,
}

/// The table's columns: heading and width (the first, left-aligned, is the worker).
const COLUMNS: [(&str, usize); 11] = [
    ("worker", 6),
    ("conns", 7),
    ("msg/s in", 9),
    ("msg/s out", 10),
    ("B/s in", 9),
    ("B/s out", 9),
    ("deliv/s", 8),
    ("bp/s", 7),
    ("drop/s", 7),
    ("slow", 6),
    ("turn p99", 9),
];

impl Frame<'_> {
    /// The header line and the table, with a row per worker and a total row.
    pub fn table(&self) -> String {
        let mut out = self.header();
        out.push('\n');
        let (first, width) = COLUMNS[0];
        let _ = write!(out, "{first:<width$}");
        for (heading, width) in &COLUMNS[1..] {
            let _ = write!(out, " {heading:>width$}");
        }
        out.push('\n');
        for (worker, row) in &self.workers {
            line(&mut out, &worker.to_string(), row);
        }
        line(&mut out, "total", &self.total);
        out
    }

    /// `ringws 0.1.0 · kernel ... · up 1h02m · ready · URL · every 1s` (what is known of it).
    fn header(&self) -> String {
        let s = self.server;
        let mut parts = vec![match &s.version {
            Some(v) => format!("ringws {v}"),
            None => "ringws".to_owned(),
        }];
        if let Some(kernel) = &s.kernel {
            parts.push(format!("kernel {kernel}"));
        }
        if let Some(io_uring) = &s.io_uring {
            // The features without their common prefix: `SETUP_DEFER_TASKRUN,REGISTER_RING_FDS`.
            parts.push(format!("io_uring {}", io_uring.replace("IORING_", "")));
        }
        if let Some(up) = uptime(s, self.now) {
            parts.push(format!("up {}", duration(up)));
        }
        parts.push(
            match (s.ready, s.draining) {
                (_, Some(true)) => "DRAINING",
                (Some(true), _) => "ready",
                (Some(false), _) => "NOT READY",
                (None, _) => "state unknown",
            }
            .to_owned(),
        );
        parts.push(self.url.to_owned());
        parts.push(match self.seconds {
            Some(secs) => format!("over {secs:.1}s"),
            None => "rates from the next refresh".to_owned(),
        });
        if self.unparsed > 0 {
            parts.push(format!("{} lines unparsed", self.unparsed));
        }
        parts.join(" · ")
    }

    /// The frame as one JSON object: the server, each worker's row and the total's (`null` where a
    /// value is unknown).
    pub fn json(&self) -> Value {
        let s = self.server;
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|(worker, row)| {
                let mut v = row_json(row);
                v["worker"] = json!(worker);
                v
            })
            .collect();
        json!({
            "url": self.url,
            "interval_seconds": self.seconds,
            "server": {
                "version": s.version,
                "kernel": s.kernel,
                "io_uring": s.io_uring,
                "uptime_seconds": uptime(s, self.now),
                "ready": s.ready,
                "draining": s.draining,
            },
            "unparsed_lines": self.unparsed,
            "workers": workers,
            "total": row_json(&self.total),
        })
    }
}

/// One table line.
fn line(out: &mut String, name: &str, row: &Row) {
    let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), count);
    let bytes = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), bytes);
    let cells = [
        count(row.connections),
        rate(row.messages_in),
        rate(row.messages_out),
        bytes(row.bytes_in),
        bytes(row.bytes_out),
        rate(row.deliveries),
        rate(row.backpressure),
        rate(row.dropped),
        count(row.slow_disconnects),
        row.loop_turn_p99.map_or_else(|| "-".to_owned(), bound),
    ];
    let _ = write!(out, "{name:<width$}", width = COLUMNS[0].1);
    for (cell, (_, width)) in cells.iter().zip(&COLUMNS[1..]) {
        let _ = write!(out, " {cell:>width$}");
    }
    out.push('\n');
}

/// A row as JSON; the p99 in seconds (for a p99 above every finite bucket, that bound, as
/// Prometheus's `histogram_quantile` reports it, with `loop_turn_p99_above: true`).
fn row_json(row: &Row) -> Value {
    let (p99, above) = match row.loop_turn_p99 {
        Some(Bound::AtMost(s)) => (Some(s), false),
        Some(Bound::Above(s)) => (Some(s), true),
        None => (None, false),
    };
    json!({
        "connections": row.connections,
        "messages_in_per_second": row.messages_in,
        "messages_out_per_second": row.messages_out,
        "bytes_in_per_second": row.bytes_in,
        "bytes_out_per_second": row.bytes_out,
        "deliveries_per_second": row.deliveries,
        "backpressure_events_per_second": row.backpressure,
        "dropped_per_second": row.dropped,
        "slow_consumer_disconnects": row.slow_disconnects,
        "loop_turn_p99_seconds": p99,
        "loop_turn_p99_above": above,
    })
}

/// Seconds the server has been up, from its start time.
fn uptime(s: &ServerInfo, now: f64) -> Option<f64> {
    s.start_time
        .filter(|start| start.is_finite() && *start <= now)
        .map(|start| now - start)
}

/// A count or rate in 4 to 5 characters: `0`, `7.5`, `42`, `950`, `12.3k`, `4.1M`, `2.0G`.
fn count(v: f64) -> String {
    scaled(v, 1000.0, ["", "k", "M", "G", "T"])
}

/// A byte rate: `512`, `1.5Ki`, `20.0Mi` (bytes per second, binary prefixes).
fn bytes(v: f64) -> String {
    scaled(v, 1024.0, ["", "Ki", "Mi", "Gi", "Ti"])
}

/// `v` divided by `base` until it is under it, with one decimal below 100 (none for whole small
/// numbers), and the unit prefix of that step.
fn scaled(v: f64, base: f64, prefixes: [&str; 5]) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let mut v = v;
    let mut step = 0;
    while v.abs() >= base && step + 1 < prefixes.len() {
        v /= base;
        step += 1;
    }
    let prefix = prefixes[step];
    if step == 0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() < 100.0 {
        format!("{v:.1}{prefix}")
    } else {
        format!("{v:.0}{prefix}")
    }
}

/// A histogram bound: `≤5us`, `≤2.5ms`, `≤1s`, `>10s`.
fn bound(b: Bound) -> String {
    match b {
        Bound::AtMost(s) => format!("≤{}", seconds(s)),
        Bound::Above(s) => format!(">{}", seconds(s)),
    }
}

/// A short duration with the largest unit that keeps it at 1 or more: `5us`, `250us`, `2.5ms`, `1s`.
fn seconds(s: f64) -> String {
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else {
        (s * 1e6, "us")
    };
    // Bucket bounds have at most two significant digits; this drops float noise (2.4999999 ms).
    let v = (v * 100.0).round() / 100.0;
    format!("{v}{unit}")
}

/// An uptime: `45s`, `12m05s`, `3h07m`, `2d04h`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::{Scrape, tests::fixture};
    use super::*;

    fn frame_of<'a>(before: &Scrape, now: &'a Scrape, seconds: f64) -> Frame<'a> {
        Frame {
            url: "http://127.0.0.1:9001/metrics",
            seconds: Some(seconds),
            server: &now.server,
            now: 1.7e9 + 3725.0,
            unparsed: now.unparsed,
            workers: now
                .workers
                .iter()
                .map(|(w, c)| (*w, Row::new(before.workers.get(w), c, seconds)))
                .collect(),
            total: Row::new(Some(&before.total()), &now.total(), seconds),
        }
    }

    #[test]
    fn the_table_has_a_header_a_row_per_worker_and_a_total() {
        let (a, b) = (
            Scrape::from_text(&fixture(10)),
            Scrape::from_text(&fixture(11)),
        );
        let table = frame_of(&a, &b, 1.0).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(
            lines[0],
            "ringws 0.1.0 · kernel 6.8.0-45-generic · io_uring multishot,bundles · up 1h02m · \
             ready · http://127.0.0.1:9001/metrics · over 1.0s"
        );
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(cells(1)[0], "worker");
        assert_eq!(
            cells(2),
            [
                "0", "12", "1.0k", "1.0k", "198Ki", "198Ki", "50", "1", "0", "0", "≤250us"
            ]
        );
        assert_eq!(
            cells(3),
            ["1", "3", "0", "0", "0", "0", "0", "0", "3", "2", "≤5us"]
        );
        assert_eq!(
            cells(4),
            [
                "total", "15", "1.0k", "1.0k", "198Ki", "198Ki", "50", "1", "3", "2", "≤50us"
            ]
        );
        // The columns line up: every line as wide as the heading.
        let width = lines[1].chars().count();
        assert!(
            lines[2..].iter().all(|l| l.chars().count() == width),
            "{table}"
        );
    }

    #[test]
    fn the_json_has_the_same_fields() {
        let (a, b) = (
            Scrape::from_text(&fixture(10)),
            Scrape::from_text(&fixture(12)),
        );
        let v = frame_of(&a, &b, 2.0).json();
        assert_eq!(v["server"]["version"], "0.1.0");
        assert_eq!(v["server"]["ready"], true);
        assert_eq!(v["server"]["uptime_seconds"], 3725.0);
        assert_eq!(v["interval_seconds"], 2.0);
        assert_eq!(v["workers"].as_array().unwrap().len(), 2);
        let w0 = &v["workers"][0];
        assert_eq!(w0["worker"], 0);
        assert_eq!(w0["connections"], 12.0);
        assert_eq!(w0["messages_in_per_second"], 1010.0);
        assert_eq!(w0["bytes_out_per_second"], 202_400.0);
        assert_eq!(w0["loop_turn_p99_seconds"], 0.00025);
        assert_eq!(w0["loop_turn_p99_above"], false);
        assert_eq!(v["total"]["dropped_per_second"], 3.0);
        assert_eq!(v["total"]["slow_consumer_disconnects"], 2.0);
        assert!(v["total"].get("worker").is_none());
    }

    #[test]
    fn the_first_frame_has_no_rates() {
        let b = Scrape::from_text(&fixture(1));
        let frame = Frame {
            seconds: None,
            workers: vec![(0, Row::new(None, &b.workers[&0], 0.0))],
            total: Row::new(None, &b.total(), 0.0),
            ..frame_of(&b, &b, 1.0)
        };
        let table = frame.table();
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .ends_with("rates from the next refresh")
        );
        assert_eq!(
            table
                .lines()
                .nth(2)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["0", "12", "-", "-", "-", "-", "-", "-", "-", "0", "-"]
        );
        assert_eq!(frame.json()["total"]["messages_in_per_second"], Value::Null);
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(7.5), "7.5");
        assert_eq!(count(0.26), "0.3");
        assert_eq!(count(950.0), "950");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(count(999_999.0), "1000k");
        assert_eq!(count(4.1e6), "4.1M");
        assert_eq!(count(f64::NAN), "NaN");
        assert_eq!(bytes(512.0), "512");
        assert_eq!(bytes(1536.0), "1.5Ki");
        assert_eq!(bytes(20.0 * 1024.0 * 1024.0), "20.0Mi");
        assert_eq!(seconds(5e-6), "5us");
        assert_eq!(seconds(2.5e-5), "25us");
        assert_eq!(seconds(0.0025), "2.5ms");
        assert_eq!(seconds(1.0), "1s");
        assert_eq!(bound(Bound::Above(10.0)), ">10s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(3.0 * 86400.0 + 7200.0), "3d02h");
    }
}
