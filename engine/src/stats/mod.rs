//! What the engine counts, per worker, with no atomic read-modify-write and no lock on the hot
//! path: each worker owns one [`WorkerStats`] block of single-writer [`cell`]s and is the only
//! thread that writes it; a scrape ([`ServerHandle::stats`](crate::ServerHandle::stats), the
//! `/metrics` endpoint) reads every worker's block from its own thread.
//!
//! The blocks are cache-line aligned and allocated apart, so one worker's counting never touches
//! a line another worker writes. [`WorkerSnapshot`] and [`Stats`] are the values a scrape returns.

mod cell;
mod labels;

pub use cell::{BUCKETS_US, HistogramSnapshot};
pub(crate) use cell::{Counter, Gauge, Histogram};
pub use labels::{CloseStatus, HttpStatus, Label, MessageKind, Rejection, Side, TimerKind};

use std::marker::PhantomData;

/// One count per value of label `L`.
#[derive(Debug)]
pub(crate) struct PerLabel<L: Label, const N: usize> {
    cells: [Counter; N],
    _label: PhantomData<L>,
}

impl<L: Label, const N: usize> Default for PerLabel<L, N> {
    fn default() -> Self {
        Self {
            cells: std::array::from_fn(|_| Counter::default()),
            _label: PhantomData,
        }
    }
}

impl<L: Label, const N: usize> PerLabel<L, N> {
    /// Adds `n` to `label`'s count (the owning worker only).
    #[inline]
    pub fn add(&self, label: L, n: u64) {
        self.cells[label.index()].add(n);
    }

    /// Adds one to `label`'s count (the owning worker only).
    #[inline]
    pub fn inc(&self, label: L) {
        self.add(label, 1);
    }

    fn snapshot(&self) -> Counts<L> {
        Counts {
            values: self.cells.iter().map(Counter::get).collect(),
            _label: PhantomData,
        }
    }
}

/// Counts by label value, as read by a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts<L: Label> {
    values: Vec<u64>,
    _label: PhantomData<L>,
}

impl<L: Label> Default for Counts<L> {
    fn default() -> Self {
        Self {
            values: vec![0; L::ALL.len()],
            _label: PhantomData,
        }
    }
}

impl<L: Label> Counts<L> {
    /// The count of `label`.
    pub fn get(&self, label: L) -> u64 {
        self.values.get(label.index()).copied().unwrap_or(0)
    }

    /// Every label value with its count, in the label's order.
    pub fn iter(&self) -> impl Iterator<Item = (L, u64)> + '_ {
        L::ALL.iter().copied().zip(self.values.iter().copied())
    }

    /// The sum over every label value.
    pub fn total(&self) -> u64 {
        self.values.iter().sum()
    }

    /// Adds `other`'s counts (to total several workers).
    pub fn merge(&mut self, other: &Counts<L>) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
    }
}

const KINDS: usize = MessageKind::ALL.len();

/// The counts of one worker. Written only by that worker's thread (see [`cell`]).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    pub connections_open: Gauge,
    pub accepted: Counter,
    pub rejected: PerLabel<Rejection, { Rejection::ALL.len() }>,
    pub upgrades: PerLabel<HttpStatus, { HttpStatus::COUNT }>,
    pub closes_local: PerLabel<CloseStatus, { CloseStatus::COUNT }>,
    pub closes_peer: PerLabel<CloseStatus, { CloseStatus::COUNT }>,
    pub violations: PerLabel<CloseStatus, { CloseStatus::COUNT }>,
    pub received: PerLabel<MessageKind, KINDS>,
    pub received_bytes: PerLabel<MessageKind, KINDS>,
    pub sent: PerLabel<MessageKind, KINDS>,
    pub sent_bytes: PerLabel<MessageKind, KINDS>,
    pub socket_received_bytes: Counter,
    pub socket_sent_bytes: Counter,
    pub backpressure_events: Counter,
    pub queued_bytes: Gauge,
    pub dropped: Counter,
    pub slow_consumer_disconnects: Counter,
    pub deliveries: Counter,
    pub conflated: Counter,
    pub deflate_sent_uncompressed: Counter,
    pub deflate_sent_compressed: Counter,
    pub deflate_received_uncompressed: Counter,
    pub deflate_received_compressed: Counter,
    pub buffers_exhausted: Counter,
    pub receive_rearms: Counter,
    pub zero_copy_sends: Counter,
    pub zero_copy_copied: Counter,
    pub receive_bundles: Counter,
    pub sent_lent: Counter,
    pub sent_taken: Counter,
    pub received_into_message: Counter,
    pub sqes_submitted: Gauge,
    pub enters: Gauge,
    pub timers: PerLabel<TimerKind, { TimerKind::ALL.len() }>,
    pub handshake: Histogram,
    pub loop_turn: Histogram,
    pub fanout: Histogram,
    /// `CLOCK_MONOTONIC` in milliseconds when the worker last finished a loop turn (0: not yet).
    pub heartbeat_ms: Gauge,
}

impl WorkerStats {
    /// Reads every cell; `subscriptions` comes from pub/sub, which counts them per worker.
    pub fn snapshot(&self, index: usize, now_ms: u64, subscriptions: u64) -> WorkerSnapshot {
        let beat = self.heartbeat_ms.get();
        WorkerSnapshot {
            index,
            connections_open: self.connections_open.get(),
            accepted: self.accepted.get(),
            rejected: self.rejected.snapshot(),
            upgrades: self.upgrades.snapshot(),
            closes_local: self.closes_local.snapshot(),
            closes_peer: self.closes_peer.snapshot(),
            violations: self.violations.snapshot(),
            messages_received: self.received.snapshot(),
            received_bytes: self.received_bytes.snapshot(),
            messages_sent: self.sent.snapshot(),
            sent_bytes: self.sent_bytes.snapshot(),
            socket_received_bytes: self.socket_received_bytes.get(),
            socket_sent_bytes: self.socket_sent_bytes.get(),
            backpressure_events: self.backpressure_events.get(),
            queued_bytes: self.queued_bytes.get(),
            dropped: self.dropped.get(),
            slow_consumer_disconnects: self.slow_consumer_disconnects.get(),
            deliveries: self.deliveries.get(),
            conflated: self.conflated.get(),
            subscriptions,
            deflate: DeflateBytes {
                sent_uncompressed: self.deflate_sent_uncompressed.get(),
                sent_compressed: self.deflate_sent_compressed.get(),
                received_uncompressed: self.deflate_received_uncompressed.get(),
                received_compressed: self.deflate_received_compressed.get(),
            },
            buffers_exhausted: self.buffers_exhausted.get(),
            receive_rearms: self.receive_rearms.get(),
            zero_copy_sends: self.zero_copy_sends.get(),
            zero_copy_copied: self.zero_copy_copied.get(),
            receive_bundles: self.receive_bundles.get(),
            sent_lent: self.sent_lent.get(),
            sent_taken: self.sent_taken.get(),
            received_into_message: self.received_into_message.get(),
            sqes_submitted: self.sqes_submitted.get(),
            io_uring_enters: self.enters.get(),
            timers_fired: self.timers.snapshot(),
            handshake_duration: self.handshake.snapshot(),
            loop_turn_duration: self.loop_turn.snapshot(),
            fanout_duration: self.fanout.snapshot(),
            heartbeat_age_ms: (beat != 0).then(|| now_ms.saturating_sub(beat)),
        }
    }
}

/// permessage-deflate bytes: message payloads before and after compression, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeflateBytes {
    /// Payload bytes of compressed messages sent, before compression.
    pub sent_uncompressed: u64,
    /// The same messages' payload bytes after compression (what went on the wire).
    pub sent_compressed: u64,
    /// Payload bytes of compressed messages received, after decompression.
    pub received_uncompressed: u64,
    /// The same messages' payload bytes as received (compressed).
    pub received_compressed: u64,
}

/// One worker's counts, as read by [`ServerHandle::stats`](crate::ServerHandle::stats). Counters
/// only grow over the server's life; gauges (`connections_open`, `queued_bytes`,
/// `subscriptions`) are current values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// The worker's index.
    pub index: usize,
    /// Connections live on the worker (server and client, handshaking to closing).
    pub connections_open: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections refused before they opened, by reason.
    pub rejected: Counts<Rejection>,
    /// Upgrade requests answered, by HTTP status (`101` for the accepted ones).
    pub upgrades: Counts<HttpStatus>,
    /// Open connections this side started closing, by close code (1006: dropped without a
    /// close handshake, e.g. on a timeout).
    pub closes_local: Counts<CloseStatus>,
    /// Open connections the peer started closing, by close code (1005: a Close without a code;
    /// 1006: the TCP connection ended without one).
    pub closes_peer: Counts<CloseStatus>,
    /// Connections closed for a protocol violation or a limit, by the close code sent.
    pub violations: Counts<CloseStatus>,
    /// Messages and control frames received, by kind.
    pub messages_received: Counts<MessageKind>,
    /// Their payload bytes (after decompression), by kind.
    pub received_bytes: Counts<MessageKind>,
    /// Messages and control frames queued for sending (publications included), by kind.
    pub messages_sent: Counts<MessageKind>,
    /// Their payload bytes (before compression), by kind.
    pub sent_bytes: Counts<MessageKind>,
    /// Bytes the kernel handed to receives (frames and HTTP, as on the wire).
    pub socket_received_bytes: u64,
    /// Bytes sends wrote to sockets.
    pub socket_sent_bytes: u64,
    /// Sends that found or left a connection's queue over `max_backpressure`.
    pub backpressure_events: u64,
    /// Bytes queued for sending, over the worker's connections (refreshed every second).
    pub queued_bytes: u64,
    /// Messages not queued: dropped under backpressure or a slow-consumer policy.
    pub dropped: u64,
    /// Connections closed (1008) for being too slow: the `Close` backpressure policy or the
    /// `Disconnect` slow-consumer policy.
    pub slow_consumer_disconnects: u64,
    /// Publications queued to subscribers.
    pub deliveries: u64,
    /// Publications that replaced an older one still queued (conflation).
    pub conflated: u64,
    /// Topic subscriptions held by the worker's connections.
    pub subscriptions: u64,
    /// permessage-deflate bytes.
    pub deflate: DeflateBytes,
    /// Receives that ended because the provided-buffer ring was empty (`ENOBUFS`).
    pub buffers_exhausted: u64,
    /// Multishot receives armed again after ending (buffers exhausted, or reading resumed).
    pub receive_rearms: u64,
    /// Zero-copy sends (`send_zc_threshold`) whose memory the kernel released.
    pub zero_copy_sends: u64,
    /// Those of them the kernel copied after all (a local peer, such as loopback, or a device
    /// without scatter-gather): when this is most of them, zero-copy saves nothing.
    pub zero_copy_copied: u64,
    /// Receive completions that carried several buffers (receive bundles, `recv_bundles`).
    pub receive_bundles: u64,
    /// Large payloads queued from the receive buffer they arrived in instead of copied (an echo
    /// or a forward of a message that lay whole in one receive buffer).
    pub sent_lent: u64,
    /// Large messages assembled across receives queued from their assembly buffer instead of
    /// copied (an echo or a forward; each queue it went to counts).
    pub sent_taken: u64,
    /// Receives of a large frame's bytes straight into its message's assembly buffer
    /// (`recv_into_threshold`) that brought bytes.
    pub received_into_message: u64,
    /// Submission queue entries submitted to the kernel.
    pub sqes_submitted: u64,
    /// `io_uring_enter` system calls.
    pub io_uring_enters: u64,
    /// Connection timers that fired, by kind.
    pub timers_fired: Counts<TimerKind>,
    /// Accept to `101`, at the worker clock's millisecond resolution (client connections: start
    /// of the connect to the `101`).
    pub handshake_duration: HistogramSnapshot,
    /// Event-loop turns: from the wake-up to the end of the flush (how late the worker answers).
    pub loop_turn_duration: HistogramSnapshot,
    /// Queueing one publication to the worker's subscribers.
    pub fanout_duration: HistogramSnapshot,
    /// Milliseconds since the worker last finished a loop turn (`None` before its first). A
    /// worker idles at most one 100 ms timer tick, so a large age means it is stuck in a
    /// callback.
    pub heartbeat_age_ms: Option<u64>,
}

/// A broker bridge's counters ([`Bridge::stats`](crate::Bridge::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Local publications queued for the broker.
    pub queued: u64,
    /// Local publications dropped because the queue was full (the broker was down or slow), plus
    /// those the broker client reported lost ([`Bridge::count_dropped`](crate::Bridge::count_dropped)).
    pub dropped: u64,
    /// Publications received from the broker and published on this node.
    pub received: u64,
}

/// The server's counts: every worker's, and what the workers share. Returned by
/// [`ServerHandle::stats`](crate::ServerHandle::stats), and what `/metrics` exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Per worker, by index.
    pub workers: Vec<WorkerSnapshot>,
    /// Publications made, over all topics.
    pub published: u64,
    /// Topics that exist.
    pub topics: u64,
    /// Bytes of history kept over all topics (bounded by `max_history_memory`).
    pub history_bytes: u64,
    /// Whether the server accepts connections and is not draining (what `/ready` answers).
    pub ready: bool,
    /// Whether a drain has started ([`ServerHandle::drain`](crate::ServerHandle::drain) or
    /// SIGTERM).
    pub draining: bool,
    /// The broker bridge's counters, if a bridge is attached.
    pub bridge: Option<BridgeStats>,
}

impl Stats {
    /// Connections live over all workers.
    pub fn connections_open(&self) -> u64 {
        self.workers.iter().map(|w| w.connections_open).sum()
    }

    /// The workers whose heartbeat is older than `bound_ms` (stuck, or not started).
    pub fn stalled(&self, bound_ms: u64) -> Vec<usize> {
        self.workers
            .iter()
            .filter(|w| w.heartbeat_age_ms.is_none_or(|age| age > bound_ms))
            .map(|w| w.index)
            .collect()
    }
}
