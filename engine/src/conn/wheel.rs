//! A hashed timer wheel over coarse ticks, one per worker, driven by one ring timeout that fires at
//! each tick boundary.
//!
//! Connections keep their time stamps in their [`Machine`](super::Machine) (last activity, ping
//! sent, closing start) and have at most one *live* wheel entry: the tick by which the machine's
//! earliest deadline has passed. Activity only updates a stamp and never touches the wheel; when the
//! entry fires, the machine is checked and either acts or names its next deadline. An entry is
//! `(slot, tick)`, 8 bytes (one per idle connection); one whose slot has moved on (its live entry is
//! at another tick) is stale and ignored, so cancelling is free. An entry left by an earlier
//! connection of the slot that happens to share the new connection's tick only checks the new
//! connection at its own tick, so entries carry no generation.
//!
//! A deadline at `d` ms is filed under tick `ceil(d / TICK_MS)`, which fires once the clock passes
//! `tick * TICK_MS >= d`: never early, and at most one tick late when the worker wakes at each tick
//! boundary (its ring timeout is absolute, at the next boundary).

/// Wheel resolution, in milliseconds. Timeouts are seconds-scale; 100 ms keeps them accurate to a
/// tenth of a second at the cost of ten idle wake-ups a second per worker.
pub(crate) const TICK_MS: u64 = 100;

/// Wheel size (a power of two): 51.2 s of ticks. Later deadlines sit in their slot and are skipped
/// until their round comes.
const SLOTS: usize = 512;

/// Entries a bucket keeps room for after draining (512 bytes); more capacity is given back.
const KEEP_CAPACITY: usize = 64;

/// A wheel tick: time since the worker started, in [`TICK_MS`] units (13 years fit).
pub(crate) type Tick = u32;

/// The first tick at or after `ms` milliseconds: where a deadline at `ms` is filed.
pub(crate) fn tick_at_or_after(ms: u64) -> Tick {
    Tick::try_from(ms.div_ceil(TICK_MS)).unwrap_or(Tick::MAX)
}

/// The last tick at or before `ms`: how far the wheel may advance at time `ms`.
pub(crate) fn tick_at_or_before(ms: u64) -> Tick {
    Tick::try_from(ms / TICK_MS).unwrap_or(Tick::MAX)
}

/// One scheduled check of a connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The connection slot.
    pub slot: u32,
    /// The tick the entry is due at.
    pub at: Tick,
}

/// The wheel: `SLOTS` buckets of entries, indexed by due tick modulo `SLOTS`.
pub(crate) struct Wheel {
    buckets: Vec<Vec<Entry>>,
    /// The last tick whose bucket was processed.
    current: Tick,
}

impl Wheel {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Self {
            buckets: (0..SLOTS).map(|_| Vec::new()).collect(),
            current: 0,
        }
    }

    /// Schedules `entry`. An entry due at or before the current tick fires on the next advance.
    pub fn schedule(&mut self, mut entry: Entry) {
        entry.at = entry.at.max(self.current + 1);
        self.buckets[entry.at as usize % SLOTS].push(entry);
    }

    /// Moves the wheel to tick `now`, appending every entry due at or before it to `due`.
    ///
    /// Visits at most `SLOTS` buckets however far `now` jumps: after a full turn every bucket has been
    /// seen, and each is filtered by due tick, so nothing late is missed.
    pub fn advance(&mut self, now: Tick, due: &mut Vec<Entry>) {
        if now <= self.current {
            return;
        }
        let steps = (now - self.current).min(SLOTS as Tick);
        for step in 1..=steps {
            let bucket = &mut self.buckets[(self.current + step) as usize % SLOTS];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].at <= now {
                    due.push(bucket.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            // A burst (thousands of connections closing within a tick) leaves its bucket's
            // capacity behind; give it back once the bucket has drained, so the wheel's memory
            // follows the entries it holds rather than its high-water mark.
            if bucket.capacity() > KEEP_CAPACITY && bucket.len() < bucket.capacity() / 4 {
                bucket.shrink_to(KEEP_CAPACITY.max(bucket.len() * 2));
            }
        }
        self.current = now;
    }

    /// Entries currently held (live and stale), for accounting in tests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u32, at: Tick) -> Entry {
        Entry { slot, at }
    }

    fn fire(w: &mut Wheel, now: Tick) -> Vec<u32> {
        let mut due = Vec::new();
        w.advance(now, &mut due);
        let mut slots: Vec<u32> = due.iter().map(|e| e.slot).collect();
        slots.sort();
        slots
    }

    #[test]
    fn deadlines_round_up_and_the_clock_rounds_down() {
        assert_eq!(tick_at_or_after(0), 0);
        assert_eq!(tick_at_or_after(1), 1);
        assert_eq!(tick_at_or_after(100), 1);
        assert_eq!(tick_at_or_after(101), 2);
        assert_eq!(tick_at_or_after(10_000), 100);
        assert_eq!(tick_at_or_before(99), 0);
        assert_eq!(tick_at_or_before(100), 1);
        assert_eq!(tick_at_or_before(199), 1);
    }

    #[test]
    fn entries_fire_at_their_tick_not_before() {
        let mut w = Wheel::new();
        w.schedule(entry(1, 5));
        w.schedule(entry(2, 3));
        assert_eq!(fire(&mut w, 2), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 3), vec![2]);
        assert_eq!(fire(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 9), vec![1]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut w = Wheel::new();
        assert_eq!(fire(&mut w, 10), Vec::<u32>::new());
        w.schedule(entry(7, 4));
        assert_eq!(
            fire(&mut w, 10),
            Vec::<u32>::new(),
            "same tick: nothing new"
        );
        assert_eq!(fire(&mut w, 11), vec![7]);
    }

    #[test]
    fn a_drained_burst_gives_its_capacity_back() {
        let mut w = Wheel::new();
        for slot in 0..10_000 {
            w.schedule(entry(slot, 3));
        }
        w.schedule(entry(10_000, 3 + SLOTS as Tick));
        let bucket = 3 % SLOTS;
        assert!(w.buckets[bucket].capacity() >= 10_001);
        assert_eq!(fire(&mut w, 3).len(), 10_000);
        assert_eq!(w.buckets[bucket].len(), 1, "the next round's entry stays");
        assert_eq!(w.buckets[bucket].capacity(), KEEP_CAPACITY);
        assert_eq!(fire(&mut w, 3 + SLOTS as Tick), vec![10_000]);
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_for_their_round() {
        let mut w = Wheel::new();
        let far = SLOTS as Tick * 2 + 7;
        w.schedule(entry(1, far));
        w.schedule(entry(2, 7));
        assert_eq!(fire(&mut w, 7), vec![2]);
        // Passes the far entry's bucket twice without firing it.
        for t in (8..far).step_by(50) {
            assert_eq!(fire(&mut w, t), Vec::<u32>::new(), "tick {t}");
        }
        assert_eq!(fire(&mut w, far), vec![1]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let mut w = Wheel::new();
        for slot in 0..2000 {
            w.schedule(entry(slot, 1 + slot * 3));
        }
        let fired = fire(&mut w, 3000);
        assert_eq!(fired.len(), 1000, "entries due at ticks 1..=2998");
        assert_eq!(w.len(), 1000);
        assert_eq!(fire(&mut w, 100_000).len(), 1000);
    }
}
