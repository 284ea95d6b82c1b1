//! Rate limits as a generic cell rate algorithm (GCRA): the token bucket in one number per bucket.
//!
//! A bucket is its *theoretical arrival time* `tat`: the instant at which it would be full again.
//! Each event moves `tat` on by one `interval`; an event conforms while `tat` runs ahead of the
//! clock by no more than the burst allows. One `u64` per bucket (no token count, no refill stamp)
//! keeps the per-connection side table small, and refilling is implicit in the clock.

/// A rate: so many events per second, with a burst of so many back to back. Times are in the
/// caller's clock units (microseconds for connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Clock units per event.
    interval: u64,
    /// How far `tat` may run ahead of the clock: `(burst - 1) * interval`.
    tolerance: u64,
    /// The burst, in events.
    burst: u64,
}

impl Rate {
    /// `per_second` events a second with bursts of `burst`, on a clock of `units_per_second`;
    /// `None` if `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32, units_per_second: u64) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let interval = (units_per_second / u64::from(per_second)).max(1);
        let burst = u64::from(burst.max(1));
        Some(Self {
            interval,
            tolerance: (burst - 1) * interval,
            burst,
        })
    }

    /// The burst, in events.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Charges one event at `now` whether or not it conforms, and returns by how many events the
    /// bucket is now over its burst (0: conforming). Charging non-conforming events too is what lets
    /// a caller tell a short excess (ignore it) from a sustained flood (the count keeps growing).
    pub fn charge(&self, tat: &mut u64, now: u64) -> u64 {
        let start = (*tat).max(now);
        *tat = start.saturating_add(self.interval);
        let ahead = start - now;
        if ahead <= self.tolerance {
            0
        } else {
            (ahead - self.tolerance).div_ceil(self.interval)
        }
    }

    /// Takes one event at `now` if it conforms (and returns `true`); a refused event costs nothing.
    pub fn conforms(&self, tat: &mut u64, now: u64) -> bool {
        let before = *tat;
        if self.charge(tat, now) == 0 {
            return true;
        }
        *tat = before;
        false
    }
}

/// Rate limit for a worker's log lines about peers (violations, refusals, limit hits): a burst of
/// 20, then one a second, counting the lines it suppressed so the next one can report them.
pub(crate) struct LogLimit {
    tat: u64,
    suppressed: u64,
}

impl LogLimit {
    /// Lines per second once the burst is spent.
    const PER_SECOND: u32 = 1;
    /// Lines allowed back to back.
    const BURST: u32 = 20;

    /// A full bucket.
    pub fn new() -> Self {
        Self {
            tat: 0,
            suppressed: 0,
        }
    }

    fn rate() -> Rate {
        Rate::new(Self::PER_SECOND, Self::BURST, 1000).expect("a non-zero rate")
    }

    /// Whether a line may be written at `now_ms` (milliseconds on the worker's clock).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        self.admit(now_ms).is_some()
    }

    /// `Some(n)` if a line may be written at `now_ms`, `n` being the lines suppressed since the
    /// last one allowed (to be reported with it); `None` if this one is suppressed too.
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if Self::rate().conforms(&mut self.tat, now_ms) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_is_no_limit() {
        assert_eq!(Rate::new(0, 10, 1_000_000), None);
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 10 a second, bursts of 5, on a millisecond clock.
        let r = Rate::new(10, 5, 1000).unwrap();
        let mut tat = 0;
        assert_eq!((0..8).filter(|_| r.conforms(&mut tat, 1000)).count(), 5);
        assert!(
            !r.conforms(&mut tat, 1050),
            "half an interval later: still full"
        );
        assert!(r.conforms(&mut tat, 1100), "one interval later: one more");
        assert!(!r.conforms(&mut tat, 1100));
        // A long pause refills the whole burst, no more.
        assert_eq!((0..8).filter(|_| r.conforms(&mut tat, 60_000)).count(), 5);
    }

    #[test]
    fn charge_counts_the_excess_of_a_flood() {
        let r = Rate::new(10, 5, 1000).unwrap();
        let mut tat = 0;
        let over: Vec<u64> = (0..9).map(|_| r.charge(&mut tat, 0)).collect();
        assert_eq!(over, [0, 0, 0, 0, 0, 1, 2, 3, 4]);
        // The excess drains at the rate: 400 ms later four intervals are paid back.
        assert_eq!(r.charge(&mut tat, 400), 1);
    }

    #[test]
    fn log_limit_allows_a_burst_then_one_a_second_and_counts_the_rest() {
        let mut l = LogLimit::new();
        assert_eq!((0..30).filter(|_| l.allow(0)).count(), 20);
        assert!(!l.allow(500));
        assert_eq!(
            l.admit(1000),
            Some(11),
            "one second later, with the 11 suppressed"
        );
        assert_eq!(l.admit(1000), None);
        assert_eq!(l.admit(2000), Some(1));
    }
}
