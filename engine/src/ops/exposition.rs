//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Not `prometheus-client`: that crate writes only OpenMetrics text (`# EOF`, counters typed
//! without their `_total`, `# UNIT` lines), which Debian's `promtool check metrics` (2.42) rejects
//! and which parsers of the classic format (Python `prometheus_client`'s text parser, agents that
//! scrape `text/plain`) misread; Prometheus itself reads both. The classic format is a few lines
//! of `# HELP`, `# TYPE` and samples, and the engine already holds its values as plain numbers,
//! so a registry of metric objects would only be copied into on every scrape.

use crate::stats::{
    BUCKETS_US, CloseStatus, Counts, HistogramSnapshot, Label, Stats, WorkerSnapshot,
};
use std::fmt::Write as _;

/// The content type of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A text exposition being written.
pub(crate) struct Writer {
    out: String,
}

impl Writer {
    pub fn new() -> Self {
        Self {
            out: String::with_capacity(32 << 10),
        }
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// Starts the family `name`: its help line and type.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one sample per worker.
    fn per_worker(
        &mut self,
        stats: &Stats,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&WorkerSnapshot) -> u64,
    ) {
        self.family(name, kind, help);
        for w in &stats.workers {
            self.sample(name, &[("worker", &w.index.to_string())], value(w));
        }
    }

    /// A family with one sample per worker and value of label `L`; with `nonzero`, values never
    /// seen are left out (long label sets such as close codes).
    fn per_label<L: Label>(
        &mut self,
        stats: &Stats,
        name: &str,
        extra: &[(&str, &str)],
        nonzero: bool,
        counts: impl Fn(&WorkerSnapshot) -> &Counts<L>,
    ) {
        for w in &stats.workers {
            let worker = w.index.to_string();
            for (label, n) in counts(w).iter() {
                if nonzero && n == 0 {
                    continue;
                }
                let mut labels = vec![("worker", worker.as_str()), (L::KEY, label.name())];
                labels.extend_from_slice(extra);
                self.sample(name, &labels, n);
            }
        }
    }

    /// A histogram family in seconds, one per worker.
    fn histogram(
        &mut self,
        stats: &Stats,
        name: &str,
        help: &str,
        h: impl Fn(&WorkerSnapshot) -> &HistogramSnapshot,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for w in &stats.workers {
            let worker = w.index.to_string();
            let snap = h(w);
            let mut cumulative = 0;
            for (i, n) in snap.counts.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS_US
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |us| (*us as f64 / 1e6).to_string());
                self.sample(&bucket, &[("worker", &worker), ("le", &le)], cumulative);
            }
            self.sample(
                &format!("{name}_sum"),
                &[("worker", &worker)],
                snap.sum_us as f64 / 1e6,
            );
            self.sample(&format!("{name}_count"), &[("worker", &worker)], cumulative);
        }
    }
}

/// A per-worker family: name, help and how to read its value.
type PerWorker = (&'static str, &'static str, fn(&WorkerSnapshot) -> u64);

/// The engine's own families: everything in `stats`.
pub(crate) fn engine_metrics(w: &mut Writer, stats: &Stats) {
    w.per_worker(
        stats,
        "ringws_connections_open",
        "gauge",
        "Connections live on the worker (handshaking to closing, server and client).",
        |s| s.connections_open,
    );
    w.per_worker(
        stats,
        "ringws_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        |s| s.accepted,
    );
    w.family(
        "ringws_connections_rejected_total",
        "counter",
        "Connections refused before they opened, by reason.",
    );
    w.per_label(
        stats,
        "ringws_connections_rejected_total",
        &[],
        false,
        |s| &s.rejected,
    );
    w.family(
        "ringws_upgrades_total",
        "counter",
        "Upgrade requests answered, by HTTP status (101: accepted).",
    );
    w.per_label(stats, "ringws_upgrades_total", &[], true, |s| &s.upgrades);
    w.family(
        "ringws_closes_total",
        "counter",
        "Open connections closed, by close code and by the side that started the close (1006: no close handshake).",
    );
    w.per_label(
        stats,
        "ringws_closes_total",
        &[("side", "local")],
        true,
        |s| &s.closes_local,
    );
    w.per_label(
        stats,
        "ringws_closes_total",
        &[("side", "peer")],
        true,
        |s| &s.closes_peer,
    );
    w.family(
        "ringws_protocol_violations_total",
        "counter",
        "Connections closed for a protocol violation or a limit, by the close code sent.",
    );
    w.per_label::<CloseStatus>(stats, "ringws_protocol_violations_total", &[], true, |s| {
        &s.violations
    });
    for (name, help, counts) in [
        (
            "ringws_messages_received_total",
            "Messages and control frames received, by kind.",
            (|s: &WorkerSnapshot| &s.messages_received) as fn(&WorkerSnapshot) -> &Counts<_>,
        ),
        (
            "ringws_received_bytes_total",
            "Payload bytes of messages and control frames received (after decompression), by kind.",
            |s| &s.received_bytes,
        ),
        (
            "ringws_messages_sent_total",
            "Messages and control frames queued for sending through a connection (publications are ringws_deliveries_total), by kind.",
            |s| &s.messages_sent,
        ),
        (
            "ringws_sent_bytes_total",
            "Payload bytes of messages and control frames queued for sending (before compression), by kind.",
            |s| &s.sent_bytes,
        ),
    ] {
        w.family(name, "counter", help);
        w.per_label(stats, name, &[], false, counts);
    }
    let counters: [PerWorker; 19] = [
        (
            "ringws_socket_received_bytes_total",
            "Bytes received from sockets (frames and HTTP, as on the wire).",
            |s| s.socket_received_bytes,
        ),
        (
            "ringws_socket_sent_bytes_total",
            "Bytes written to sockets.",
            |s| s.socket_sent_bytes,
        ),
        (
            "ringws_backpressure_events_total",
            "Sends that found or left a connection's queue over max_backpressure.",
            |s| s.backpressure_events,
        ),
        (
            "ringws_dropped_messages_total",
            "Messages not queued: dropped under backpressure or a slow-consumer policy.",
            |s| s.dropped,
        ),
        (
            "ringws_slow_consumer_disconnects_total",
            "Connections closed (1008) for being too slow.",
            |s| s.slow_consumer_disconnects,
        ),
        (
            "ringws_deliveries_total",
            "Publications queued to subscribers.",
            |s| s.deliveries,
        ),
        (
            "ringws_conflated_total",
            "Publications that replaced an older one still queued.",
            |s| s.conflated,
        ),
        (
            "ringws_buffers_exhausted_total",
            "Receives that ended because the provided-buffer ring was empty (ENOBUFS).",
            |s| s.buffers_exhausted,
        ),
        (
            "ringws_receive_rearms_total",
            "Multishot receives armed again after ending.",
            |s| s.receive_rearms,
        ),
        (
            "ringws_zero_copy_sends_total",
            "Zero-copy sends whose memory the kernel released.",
            |s| s.zero_copy_sends,
        ),
        (
            "ringws_zero_copy_copied_total",
            "Zero-copy sends the kernel copied after all (a local peer or no scatter-gather).",
            |s| s.zero_copy_copied,
        ),
        (
            "ringws_receive_bundles_total",
            "Receive completions that carried several buffers (receive bundles).",
            |s| s.receive_bundles,
        ),
        (
            "ringws_sent_lent_total",
            "Large payloads sent from the receive buffer they arrived in, not copied.",
            |s| s.sent_lent,
        ),
        (
            "ringws_sent_taken_total",
            "Large assembled messages sent from their assembly buffer, not copied.",
            |s| s.sent_taken,
        ),
        (
            "ringws_received_into_message_total",
            "Receives of a large frame straight into its message's buffer, not copied.",
            |s| s.received_into_message,
        ),
        (
            "ringws_sqes_submitted_total",
            "io_uring submission queue entries submitted.",
            |s| s.sqes_submitted,
        ),
        (
            "ringws_io_uring_enter_total",
            "io_uring_enter system calls.",
            |s| s.io_uring_enters,
        ),
        (
            "ringws_deflate_sent_uncompressed_bytes_total",
            "permessage-deflate: payload bytes of compressed messages sent, before compression.",
            |s| s.deflate.sent_uncompressed,
        ),
        (
            "ringws_deflate_sent_compressed_bytes_total",
            "permessage-deflate: the same messages' frame bytes after compression.",
            |s| s.deflate.sent_compressed,
        ),
    ];
    for (name, help, value) in counters {
        w.per_worker(stats, name, "counter", help, value);
    }
    w.per_worker(
        stats,
        "ringws_deflate_received_compressed_bytes_total",
        "counter",
        "permessage-deflate: compressed payload bytes received.",
        |s| s.deflate.received_compressed,
    );
    w.per_worker(
        stats,
        "ringws_deflate_received_uncompressed_bytes_total",
        "counter",
        "permessage-deflate: the bytes they inflated to.",
        |s| s.deflate.received_uncompressed,
    );
    w.per_worker(
        stats,
        "ringws_queued_bytes",
        "gauge",
        "Bytes queued for sending over the worker's connections (refreshed every second).",
        |s| s.queued_bytes,
    );
    w.per_worker(
        stats,
        "ringws_subscriptions",
        "gauge",
        "Topic subscriptions held by the worker's connections.",
        |s| s.subscriptions,
    );
    w.family(
        "ringws_timers_fired_total",
        "counter",
        "Connection timers that fired, by kind.",
    );
    w.per_label(stats, "ringws_timers_fired_total", &[], false, |s| {
        &s.timers_fired
    });
    w.histogram(
        stats,
        "ringws_handshake_duration_seconds",
        "Accept (or connect) to 101, at the worker clock's millisecond resolution.",
        |s| &s.handshake_duration,
    );
    w.histogram(
        stats,
        "ringws_loop_turn_duration_seconds",
        "Event-loop turns, from the wake-up to the end of the flush.",
        |s| &s.loop_turn_duration,
    );
    w.histogram(
        stats,
        "ringws_fanout_duration_seconds",
        "Queueing one publication to the worker's subscribers.",
        |s| &s.fanout_duration,
    );
    w.family(
        "ringws_worker_heartbeat_age_seconds",
        "gauge",
        "Time since the worker last finished a loop turn (an idle worker turns every 100 ms).",
    );
    for s in &stats.workers {
        let age = s
            .heartbeat_age_ms
            .map_or(f64::INFINITY, |ms| ms as f64 / 1e3);
        let worker = s.index.to_string();
        w.sample(
            "ringws_worker_heartbeat_age_seconds",
            &[("worker", &worker)],
            Float(age),
        );
    }
    w.family("ringws_published_total", "counter", "Publications made.");
    w.sample("ringws_published_total", &[], stats.published);
    w.family("ringws_topics", "gauge", "Topics that exist.");
    w.sample("ringws_topics", &[], stats.topics);
    w.family(
        "ringws_history_bytes",
        "gauge",
        "Bytes of history kept over all topics (bounded by max_history_memory).",
    );
    w.sample("ringws_history_bytes", &[], stats.history_bytes);
    w.family(
        "ringws_ready",
        "gauge",
        "1 while the server accepts connections and is not draining (what /ready answers).",
    );
    w.sample("ringws_ready", &[], u8::from(stats.ready));
    w.family("ringws_draining", "gauge", "1 once a drain has started.");
    w.sample("ringws_draining", &[], u8::from(stats.draining));
    if let Some(b) = stats.bridge {
        for (name, help, value) in [
            (
                "ringws_bridge_queued_total",
                "Local publications queued for the broker.",
                b.queued,
            ),
            (
                "ringws_bridge_dropped_total",
                "Local publications dropped for the broker (its queue full, or lost by the client).",
                b.dropped,
            ),
            (
                "ringws_bridge_received_total",
                "Publications received from the broker and published on this node.",
                b.received,
            ),
        ] {
            w.family(name, "counter", help);
            w.sample(name, &[], value);
        }
    }
}

/// An `f64` as the format writes it (`+Inf`, `-Inf`, `NaN`).
pub(crate) struct Float(pub f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v if v.is_nan() => f.write_str("NaN"),
            v => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer::new();
        w.family("x", "gauge", "a \\ help\nline");
        w.sample("x", &[("a", "q\"\\\n")], 1);
        assert_eq!(
            w.finish(),
            "# HELP x a \\\\ help\\nline\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn floats() {
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(5e-6).to_string(), "0.000005");
    }
}
