//! Time as the connection machine sees it: milliseconds on the worker's monotonic clock, passed in
//! by the caller (the worker reads the clock once per loop turn; tests pass a virtual clock).
//!
//! A [`Time`] is 32 bits and wraps every ~49.7 days, like the kernel's jiffies: stamps are compared
//! by their wrapping difference, which is exact for intervals under ~24.8 days. Every timer is at
//! most 7 days (validated by the configuration), and a stamp is only compared while one of its
//! timers is armed, so a connection idle for months with every timer off is never misjudged.

/// A point on the worker's clock, in milliseconds (wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time(pub u32);

impl Time {
    /// The point `ms` milliseconds after the clock's origin (wrapping).
    pub fn from_ms(ms: u64) -> Self {
        Self(ms as u32)
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is in the future).
    pub fn since(self, earlier: Time) -> u32 {
        let d = self.0.wrapping_sub(earlier.0);
        if d > i32::MAX as u32 { 0 } else { d }
    }

    /// Milliseconds from `self` until `earlier + after` (0 if that has passed).
    pub fn until(self, earlier: Time, after: u32) -> u32 {
        after.saturating_sub(self.since(earlier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_survive_the_wrap() {
        let before = Time(u32::MAX - 500);
        let after = Time(499);
        assert_eq!(after.since(before), 1000);
        assert_eq!(after.until(before, 1500), 500);
        assert_eq!(after.until(before, 800), 0, "passed");
        assert_eq!(
            before.since(after),
            0,
            "a stamp in the future is no time ago"
        );
        assert_eq!(Time::from_ms((1u64 << 32) + 7), Time(7));
    }
}
