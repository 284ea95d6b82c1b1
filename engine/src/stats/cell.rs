//! Single-writer cells: a counter, a gauge and a histogram that one thread (the worker owning
//! them) writes and any thread may read.
//!
//! A write is a relaxed load and a relaxed store of the same atomic: on x86-64 and AArch64 that
//! compiles to plain loads and stores, with no locked instruction and no fence, so counting costs
//! what a `u64` field would. It is correct only with one writer per cell, which the engine keeps:
//! each worker writes its own [`WorkerStats`](super::WorkerStats) and nothing else. A second
//! writer could only lose counts, never cause undefined behaviour. Readers (a scrape) see each
//! cell's latest value; cells are not read as one atomic snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (the owning worker only).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one (the owning worker only).
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, or is set.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value (the owning worker only).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Adds one (the owning worker only).
    #[inline]
    pub fn inc(&self) {
        self.set(self.get().wrapping_add(1));
    }

    /// Takes one away (the owning worker only; never below zero).
    #[inline]
    pub fn dec(&self) {
        self.set(self.get().saturating_sub(1));
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the histogram buckets, in microseconds: 5 µs to 10 s in 1-2.5-5 steps (the
/// last bucket, `+Inf`, is implicit). One set for every duration the engine observes, from a loop
/// turn (microseconds) to a handshake (milliseconds to seconds).
pub const BUCKETS_US: [u64; 20] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram of durations over [`BUCKETS_US`] (plus `+Inf`), with their sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [Counter; BUCKETS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_us: Counter,
}

impl Histogram {
    /// Records one duration of `us` microseconds (the owning worker only).
    #[inline]
    pub fn observe_us(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].inc();
        self.sum_us.add(us);
    }

    /// The histogram's current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.each_ref().map(Counter::get),
            sum_us: self.sum_us.get(),
        }
    }
}

/// A histogram as read: observations per bucket and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`BUCKETS_US`] (not cumulative); the last entry counts those
    /// above the last bound.
    pub counts: [u64; BUCKETS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    pub sum_us: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1), `None` when empty or
    /// above the last bound.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BUCKETS_US.get(i).copied();
            }
        }
        None
    }

    /// Adds `other`'s observations (to total several workers).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        for us in [0, 5, 6, 10_000_000, 10_000_001] {
            h.observe_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2, "0 and 5 are <= 5 µs");
        assert_eq!(s.counts[1], 1, "6 is <= 10 µs");
        assert_eq!(s.counts[BUCKETS_US.len() - 1], 1, "10 s is <= 10 s");
        assert_eq!(s.counts[BUCKETS_US.len()], 1, "above 10 s is +Inf");
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_us, 20_000_012);
    }

    #[test]
    fn quantile_bounds() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.observe_us(7);
        }
        h.observe_us(3_000);
        h.observe_us(3_000);
        let s = h.snapshot();
        assert_eq!(s.quantile_bound_us(0.5), Some(10));
        assert_eq!(s.quantile_bound_us(0.98), Some(10));
        assert_eq!(s.quantile_bound_us(0.99), Some(5_000));
        assert_eq!(HistogramSnapshot::default().quantile_bound_us(0.99), None);
    }

    #[test]
    fn counters_and_gauges() {
        let (c, g) = (Counter::default(), Gauge::default());
        c.add(3);
        c.inc();
        g.inc();
        g.inc();
        g.dec();
        g.dec();
        g.dec();
        assert_eq!((c.get(), g.get()), (4, 0));
        g.set(9);
        assert_eq!(g.get(), 9);
    }
}
