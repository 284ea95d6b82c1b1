//! Fixed-rate (open-loop) runs: the `--rate` option's entries, the rate each message size gets, and
//! whether a run achieved it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A run whose achieved message rate falls short of its target by more than this many percent did
/// not keep up: the server (or the generator) was saturated, so its CPU per message is not
/// comparable with that of a server that served the whole load.
pub const SHORTFALL_PCT: f64 = 3.0;

/// One `--rate` entry: `RATE` (every size not listed otherwise) or `SIZE=RATE` (that size only),
/// in messages per second in total over all connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEntry {
    /// The message size in bytes this entry is for; `None` for the default.
    pub size: Option<usize>,
    /// Messages per second, all connections together.
    pub msgs_per_s: f64,
}

impl FromStr for RateEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (size, rate) = match s.split_once('=') {
            Some((size, rate)) => {
                let size = size
                    .trim()
                    .parse::<usize>()
                    .map_err(|e| format!("{s:?}: size {size:?}: {e}"))?;
                (Some(size), rate)
            }
            None => (None, s),
        };
        let msgs_per_s = rate
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("{s:?}: rate {rate:?}: {e}"))?;
        if !(msgs_per_s.is_finite() && msgs_per_s > 0.0) {
            return Err(format!("{s:?}: the rate must be > 0 messages per second"));
        }
        Ok(RateEntry { size, msgs_per_s })
    }
}

/// Why `--rate` does not fit `--sizes`.
#[derive(Debug, PartialEq)]
pub enum RateError {
    /// More than one bare rate.
    TwoDefaults,
    /// A size given twice.
    Duplicate(usize),
    /// A size `--sizes` does not run: its rate would be ignored.
    NotRun(usize),
    /// Sizes with neither their own rate nor a default.
    Missing(Vec<usize>),
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateError::TwoDefaults => {
                f.write_str("--rate has more than one bare RATE (the default for every size)")
            }
            RateError::Duplicate(size) => write!(f, "--rate gives size {size} twice"),
            RateError::NotRun(size) => write!(
                f,
                "--rate gives a rate for size {size}, which --sizes does not run"
            ),
            RateError::Missing(sizes) => write!(
                f,
                "--rate has no rate for size(s) {sizes:?}: give SIZE=RATE for each, or a bare RATE \
                 for all"
            ),
        }
    }
}

/// The target rate of one message size, as recorded in compare.json.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizeRate {
    /// Message size, bytes.
    pub size: usize,
    /// Target messages per second, all connections together.
    pub msgs_per_s: f64,
}

/// The target rate of every size in `sizes` (in that order) from the `--rate` entries.
pub fn resolve(entries: &[RateEntry], sizes: &[usize]) -> Result<Vec<SizeRate>, RateError> {
    let mut default = None;
    let mut listed: Vec<(usize, f64)> = Vec::new();
    for entry in entries {
        match entry.size {
            None if default.is_some() => return Err(RateError::TwoDefaults),
            None => default = Some(entry.msgs_per_s),
            Some(size) if listed.iter().any(|(s, _)| *s == size) => {
                return Err(RateError::Duplicate(size));
            }
            Some(size) if !sizes.contains(&size) => return Err(RateError::NotRun(size)),
            Some(size) => listed.push((size, entry.msgs_per_s)),
        }
    }
    let mut missing = Vec::new();
    let mut rates = Vec::new();
    for &size in sizes {
        let own = listed.iter().find(|(s, _)| *s == size).map(|(_, r)| *r);
        match own.or(default) {
            Some(msgs_per_s) => rates.push(SizeRate { size, msgs_per_s }),
            None => missing.push(size),
        }
    }
    if missing.is_empty() {
        Ok(rates)
    } else {
        Err(RateError::Missing(missing))
    }
}

/// A fixed-rate run's achieved rate against its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateCheck {
    /// The rate the generator was asked for, messages per second.
    pub target_msgs_per_s: f64,
    /// Echoes verified per second of the measured window (`None` without a generator report).
    pub achieved_msgs_per_s: Option<f64>,
    /// `achieved ÷ target`, in %.
    pub achieved_pct: Option<f64>,
    /// The run fell short of the target by more than [`SHORTFALL_PCT`] % (or has no report): the
    /// server could not keep up, and its CPU per message is not comparable.
    pub short: bool,
}

impl RateCheck {
    /// Compares the `achieved` rate with the `target`.
    pub fn new(target: f64, achieved: Option<f64>) -> RateCheck {
        let achieved_pct = achieved.map(|a| 100.0 * a / target);
        RateCheck {
            target_msgs_per_s: target,
            achieved_msgs_per_s: achieved,
            achieved_pct,
            short: achieved_pct.is_none_or(|p| p < 100.0 - SHORTFALL_PCT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[&str]) -> Vec<RateEntry> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_entries() {
        assert_eq!(
            "40000".parse::<RateEntry>().unwrap(),
            RateEntry {
                size: None,
                msgs_per_s: 40_000.0
            }
        );
        assert_eq!(
            "1024=5e4".parse::<RateEntry>().unwrap(),
            RateEntry {
                size: Some(1024),
                msgs_per_s: 50_000.0
            }
        );
        for bad in ["", "0", "-5", "inf", "1k=100", "1024=", "=100", "1024=fast"] {
            assert!(bad.parse::<RateEntry>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolves_one_rate_a_list_or_a_default_with_exceptions() {
        let rate = |size, msgs_per_s| SizeRate { size, msgs_per_s };
        let sizes = [1024, 16384, 65536];
        assert_eq!(
            resolve(&entries(&["30000"]), &sizes).unwrap(),
            [rate(1024, 3e4), rate(16384, 3e4), rate(65536, 3e4)]
        );
        assert_eq!(
            resolve(
                &entries(&["65536=8000", "1024=40000", "16384=20000"]),
                &sizes
            )
            .unwrap(),
            [rate(1024, 4e4), rate(16384, 2e4), rate(65536, 8e3)],
            "in --sizes order"
        );
        assert_eq!(
            resolve(&entries(&["65536=8000", "30000"]), &sizes).unwrap(),
            [rate(1024, 3e4), rate(16384, 3e4), rate(65536, 8e3)]
        );
        assert_eq!(
            resolve(&entries(&["1024=40000"]), &sizes),
            Err(RateError::Missing(vec![16384, 65536]))
        );
        assert_eq!(
            resolve(&entries(&["1", "2"]), &sizes),
            Err(RateError::TwoDefaults)
        );
        assert_eq!(
            resolve(&entries(&["1024=1", "1024=2"]), &sizes),
            Err(RateError::Duplicate(1024))
        );
        assert_eq!(
            resolve(&entries(&["20=1", "5"]), &sizes),
            Err(RateError::NotRun(20))
        );
    }

    #[test]
    fn short_below_the_tolerance() {
        let met = RateCheck::new(10_000.0, Some(9_800.0));
        assert_eq!(met.achieved_pct, Some(98.0));
        assert!(!met.short);
        assert!(RateCheck::new(10_000.0, Some(9_600.0)).short);
        assert!(RateCheck::new(10_000.0, None).short, "no report");
    }
}
