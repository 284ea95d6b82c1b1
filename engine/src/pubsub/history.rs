//! Sequenced topics and their bounded history: where a publication stands in its topic's stream
//! ([`Position`]), what a topic keeps of its past ([`History`]), and what a subscriber that resumes
//! from a position gets ([`Recovery`]).
//!
//! Every publication has a position (`epoch`, `seq`): `seq` counts the topic's publications from 1,
//! and `epoch` names the stream they belong to. A server draws one epoch at start for the topics it
//! numbers itself; a publisher that numbers its own stream ([`Topic::publish_at`](super::Topic::publish_at),
//! a broker bridge passing on another node's numbering) brings its own. Positions of a previous
//! stream (a restarted publisher) therefore never pass for current ones.
//!
//! A topic that keeps history holds its last publications as the frames already encoded for its
//! subscribers (a replay re-encodes nothing), within three bounds: a count and an age per topic
//! ([`History`]), and a byte budget over all topics of the server (`max_history_memory`): a
//! publication that finds the budget spent makes room by dropping its own topic's oldest entries,
//! so the total stays within the budget (plus one entry per concurrent publisher) however many
//! topics keep history. History is contiguous: a publication that does not follow the last one
//! (another epoch, or a `seq` that skips) starts it afresh.

use super::Publication;
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a publication stands in its topic's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// The stream: drawn when the numbering publisher starts, so it changes when the publisher
    /// restarts (a `seq` of another epoch says nothing about this one).
    pub epoch: u64,
    /// The publication's number within its epoch, from 1 (0: none yet).
    pub seq: u64,
}

/// `EPOCH:SEQ`, the epoch as 16 hex digits: `187d2c1f0a3b4c5d:42`.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}", self.epoch, self.seq)
    }
}

/// A [`Position`] could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPosition;

impl fmt::Display for BadPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a position EPOCH:SEQ (EPOCH in 1 to 16 hex digits, SEQ decimal)")
    }
}

impl std::error::Error for BadPosition {}

/// Parses what [`Display`](fmt::Display) writes.
impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, BadPosition> {
        let (epoch, seq) = s.split_once(':').ok_or(BadPosition)?;
        Ok(Self {
            epoch: parse_epoch(epoch).ok_or(BadPosition)?,
            seq: seq.parse().map_err(|_| BadPosition)?,
        })
    }
}

/// An epoch written as 1 to 16 hex digits (how positions show it).
pub fn parse_epoch(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

impl Position {
    /// A new epoch for a publisher that numbers its own stream: the time in nanoseconds since the
    /// UNIX epoch, made distinct within the process (never 0), so a restarted publisher's positions
    /// never pass for its previous ones.
    pub fn new_epoch() -> u64 {
        new_epoch()
    }
}

/// A new epoch: the time in nanoseconds, made distinct within the process, never 0.
pub(crate) fn new_epoch() -> u64 {
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Strictly increasing within the process, even for two draws in the same nanosecond.
    let mut prev = DRAWN.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match DRAWN.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// What a topic keeps of its past for subscribers that resume from a position
/// ([`Socket::subscribe_since`](crate::Socket::subscribe_since)). Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    /// The last publications kept at most (0: no history).
    pub max_len: usize,
    /// Publications older than this are dropped (`None`: no age limit).
    pub max_age: Option<Duration>,
}

impl History {
    /// No history (the default).
    pub const OFF: Self = Self {
        max_len: 0,
        max_age: None,
    };
}

/// What [`Socket::subscribe_since`](crate::Socket::subscribe_since) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Every publication after the position was queued (`replayed` of them, possibly none), in
    /// order, and live ones follow with no gap and no duplicate.
    Recovered {
        /// Publications queued from the history.
        replayed: usize,
    },
    /// The publications after the position cannot be given: the topic's last publication (if
    /// any) was queued instead as a snapshot, and live ones follow.
    NotRecovered {
        /// Why.
        reason: NotRecovered,
    },
}

/// Why a position could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotRecovered {
    /// The topic keeps no history, and the position is not its latest.
    NoHistory,
    /// The position is of another epoch (the publisher restarted, or it is another stream).
    OtherEpoch,
    /// Some publications after the position are no longer kept (beyond the history's bounds).
    TooOld,
    /// The position is past the topic's latest publication (e.g. a node that lags behind the one
    /// the subscriber came from).
    Ahead,
}

impl NotRecovered {
    /// A short name: `no_history`, `other_epoch`, `too_old`, `ahead`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoHistory => "no_history",
            Self::OtherEpoch => "other_epoch",
            Self::TooOld => "too_old",
            Self::Ahead => "ahead",
        }
    }
}

impl fmt::Display for NotRecovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kept publication.
#[derive(Debug)]
struct Kept {
    at: Instant,
    item: Publication,
}

/// The bytes one kept publication is counted as: its frame, the frame's reference count header
/// and the entry itself.
fn cost(item: &Publication) -> usize {
    item.frame.len() + 2 * size_of::<usize>() + size_of::<Kept>()
}

/// The server's history budget: bytes kept over all topics, and the most there may be.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes kept now over all topics.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.max
    }
}

/// One topic's kept publications, oldest first, contiguous in position.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    pub keep: History,
    entries: VecDeque<Kept>,
    bytes: usize,
}

impl Backlog {
    /// Publications kept now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes they are counted as.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `item` (if history is on), after forgetting everything if it does not follow the
    /// last kept publication, then trims to the bounds.
    pub fn keep(&mut self, item: &Publication, budget: &Budget) {
        if self.keep.max_len == 0 {
            return;
        }
        if let Some(last) = self.entries.back()
            && (last.item.position.epoch != item.position.epoch
                || last.item.position.seq + 1 != item.position.seq)
        {
            self.clear(budget);
        }
        let c = cost(item);
        self.bytes += c;
        budget.used.fetch_add(c, Ordering::Relaxed);
        let now = Instant::now();
        self.entries.push_back(Kept {
            at: now,
            item: item.clone(),
        });
        self.trim(now, budget);
    }

    /// Drops entries beyond the count or the age, and, while the server's budget is spent,
    /// this topic's oldest.
    pub fn trim(&mut self, now: Instant, budget: &Budget) {
        while let Some(front) = self.entries.front() {
            let old = self
                .keep
                .max_age
                .is_some_and(|age| now.saturating_duration_since(front.at) > age);
            if !(self.entries.len() > self.keep.max_len || old || budget.over()) {
                break;
            }
            self.pop(budget);
        }
    }

    fn pop(&mut self, budget: &Budget) {
        if let Some(k) = self.entries.pop_front() {
            let c = cost(&k.item);
            self.bytes -= c;
            budget.used.fetch_sub(c, Ordering::Relaxed);
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self, budget: &Budget) {
        budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.entries.clear();
    }

    /// What a subscriber at `since` gets from a topic whose latest position is `latest`: the
    /// publications to replay (into `replay`) or why not.
    pub fn recover(
        &mut self,
        since: Position,
        latest: Position,
        budget: &Budget,
        replay: &mut Vec<Publication>,
    ) -> Recovery {
        let not = |reason| Recovery::NotRecovered { reason };
        if since.epoch != latest.epoch {
            return not(NotRecovered::OtherEpoch);
        }
        if since.seq > latest.seq {
            return not(NotRecovered::Ahead);
        }
        if since.seq == latest.seq {
            return Recovery::Recovered { replayed: 0 };
        }
        if self.keep.max_len == 0 {
            return not(NotRecovered::NoHistory);
        }
        self.trim(Instant::now(), budget);
        // Kept entries are contiguous and end at the latest publication (a publication that does
        // not follow clears them first), so the first one says whether `since + 1` is still here.
        match self.entries.front() {
            Some(first)
                if first.item.position.epoch == since.epoch
                    && first.item.position.seq <= since.seq + 1 =>
            {
                let skip = (since.seq + 1 - first.item.position.seq) as usize;
                replay.extend(self.entries.iter().skip(skip).map(|k| k.item.clone()));
                Recovery::Recovered {
                    replayed: replay.len(),
                }
            }
            _ => not(NotRecovered::TooOld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn item(epoch: u64, seq: u64, len: usize) -> Publication {
        Publication {
            topic: 0,
            order: seq,
            position: Position { epoch, seq },
            key: 0,
            frame: Arc::from(vec![0u8; len]),
        }
    }

    fn seqs(v: &[Publication]) -> Vec<u64> {
        v.iter().map(|p| p.position.seq).collect()
    }

    fn backlog(max_len: usize) -> Backlog {
        Backlog {
            keep: History {
                max_len,
                max_age: None,
            },
            ..Backlog::default()
        }
    }

    #[test]
    fn recovers_within_the_window_and_says_why_not_outside() {
        let budget = Budget::new(1 << 20);
        let mut b = backlog(3);
        for s in 1..=5 {
            b.keep(&item(7, s, 10), &budget);
        }
        assert_eq!(b.len(), 3, "count bound");
        let latest = Position { epoch: 7, seq: 5 };
        let mut r = Vec::new();
        let at = |seq| Position { epoch: 7, seq };
        assert_eq!(
            b.recover(at(2), latest, &budget, &mut r),
            Recovery::Recovered { replayed: 3 }
        );
        assert_eq!(seqs(&r), [3, 4, 5]);
        r.clear();
        assert_eq!(
            b.recover(at(4), latest, &budget, &mut r),
            Recovery::Recovered { replayed: 1 }
        );
        r.clear();
        assert_eq!(
            b.recover(at(5), latest, &budget, &mut r),
            Recovery::Recovered { replayed: 0 }
        );
        let not = |reason| Recovery::NotRecovered { reason };
        assert_eq!(
            b.recover(at(1), latest, &budget, &mut r),
            not(NotRecovered::TooOld)
        );
        assert_eq!(
            b.recover(at(6), latest, &budget, &mut r),
            not(NotRecovered::Ahead)
        );
        let other = Position { epoch: 8, seq: 4 };
        assert_eq!(
            b.recover(other, latest, &budget, &mut r),
            not(NotRecovered::OtherEpoch)
        );
        assert!(r.is_empty());
        let mut off = backlog(0);
        off.keep(&item(7, 1, 10), &budget);
        assert_eq!(off.len(), 0, "history off keeps nothing");
        assert_eq!(
            off.recover(at(1), latest, &budget, &mut r),
            not(NotRecovered::NoHistory)
        );
    }

    #[test]
    fn positions_read_back_what_they_write() {
        let p = Position {
            epoch: 0x187d_2c1f_0a3b_4c5d,
            seq: 42,
        };
        assert_eq!(p.to_string(), "187d2c1f0a3b4c5d:42");
        assert_eq!(p.to_string().parse(), Ok(p));
        assert_eq!("ff:1".parse(), Ok(Position { epoch: 255, seq: 1 }));
        for bad in [
            "",
            ":",
            "ff",
            "ff:",
            ":1",
            "x:1",
            "11111111111111111:1",
            "ff:-1",
            "+f:1",
        ] {
            assert_eq!(bad.parse::<Position>(), Err(BadPosition), "{bad:?}");
        }
        assert!(new_epoch() < new_epoch());
    }

    #[test]
    fn a_publication_that_does_not_follow_restarts_the_history() {
        let budget = Budget::new(1 << 20);
        let mut b = backlog(10);
        for s in 1..=3 {
            b.keep(&item(1, s, 10), &budget);
        }
        b.keep(&item(1, 5, 10), &budget); // 4 never came
        assert_eq!(b.len(), 1);
        b.keep(&item(2, 1, 10), &budget); // a new epoch
        assert_eq!(b.len(), 1);
        let mut r = Vec::new();
        let latest = Position { epoch: 2, seq: 1 };
        assert_eq!(
            b.recover(Position { epoch: 2, seq: 0 }, latest, &budget, &mut r),
            Recovery::Recovered { replayed: 1 }
        );
        assert_eq!(budget.used(), b.bytes());
        b.clear(&budget);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_age_bound_applies_when_publishing_and_when_recovering() {
        let budget = Budget::new(1 << 20);
        let mut b = Backlog {
            keep: History {
                max_len: 100,
                max_age: Some(Duration::ZERO),
            },
            ..Backlog::default()
        };
        b.keep(&item(1, 1, 10), &budget);
        // An entry older than zero seconds is gone as soon as any time passes.
        let later = Instant::now() + Duration::from_millis(1);
        b.trim(later, &budget);
        assert_eq!((b.len(), budget.used()), (0, 0));
    }

    /// Resident bytes of this process (`/proc/self/statm`).
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Memory per topic of a full 1,000-entry history of 100-byte quotes, as counted against
    /// `max_history_memory` and as the process's resident size grows, over 1,000 topics
    /// published through the hub (`cargo test -p ringws-engine --release --lib
    /// measurement_history_memory -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check: run with --ignored --nocapture in release mode"]
    fn measurement_history_memory() {
        use crate::conn::Message;
        use crate::pubsub::{Hub, SlowConsumer};
        const TOPICS: usize = 1000;
        const ENTRIES: usize = 1000;
        let hub = Hub::new(
            vec![crate::ring::sys::eventfd().unwrap()],
            SlowConsumer::DropNewest,
            TOPICS,
            1 << 40,
        );
        let keep = History {
            max_len: ENTRIES,
            max_age: None,
        };
        let topics: Vec<_> = (0..TOPICS)
            .map(|i| {
                let t = hub.topic(&format!("t{i}")).unwrap();
                t.set_history(keep, &hub.budget);
                t
            })
            .collect();
        let payload = [b'q'; 100];
        let before = rss();
        for _ in 0..ENTRIES {
            for t in &topics {
                hub.publish(t, Message::Binary(&payload), None);
            }
        }
        let grown = rss() - before;
        println!(
            "{TOPICS} topics x {ENTRIES} entries of 100 B: counted {} B per topic ({} B per \
             entry), resident {} B per topic ({} B per entry)",
            hub.budget.used() / TOPICS,
            hub.budget.used() / TOPICS / ENTRIES,
            grown / TOPICS,
            grown / TOPICS / ENTRIES
        );
    }

    #[test]
    fn many_topics_stay_within_the_budget() {
        let cap = 64 << 10;
        let budget = Budget::new(cap);
        let mut topics: Vec<Backlog> = (0..100).map(|_| backlog(1000)).collect();
        for s in 1..=200 {
            for t in &mut topics {
                t.keep(&item(1, s, 100), &budget);
                assert!(budget.used() <= cap, "{} over {cap}", budget.used());
            }
        }
        let sum: usize = topics.iter().map(Backlog::bytes).sum();
        assert_eq!(sum, budget.used());
        assert!(topics.iter().all(|t| t.len() >= 1), "each keeps its latest");
        for t in &mut topics {
            t.clear(&budget);
        }
        assert_eq!(budget.used(), 0);
    }
}
