//! Publish/subscribe with encode-once fan-out.
//!
//! A publish encodes its frame (header and payload) once into a reference-counted buffer
//! ([`Publication`]); every subscriber's output queue references that buffer, so fan-out copies no
//! payload in user space (the kernel copies from it once per subscriber socket).
//!
//! The [`Hub`] is shared by every worker and every [`Publisher`]: it names topics, keeps each topic's
//! policy, counters, last publication and how many subscribers each worker has. A publish takes the
//! topic's lock, numbers the publication, keeps it as the topic's last one, and pushes it into the
//! inbox of every worker with subscribers of that topic, waking the worker through its eventfd (read
//! by a multishot poll kept armed on the worker's ring) when its inbox was empty. An eventfd rather
//! than `MSG_RING`: a foreign thread has no ring to send from, so one mechanism serves publishers on
//! workers and elsewhere alike, and the poll was already armed for shutdown. Because the pushes
//! for one topic happen under that topic's lock, each inbox sees a topic's publications in number
//! order: order per topic is kept for every publisher (and across publishers). A publish from a
//! callback ([`Socket::publish`](crate::Socket::publish)) reaches its own worker's subscribers
//! directly, without the inbox.
//!
//! Each worker keeps its own subscriber lists ([`local`]), so delivery takes no lock. A subscriber
//! whose queued output is over `max_backpressure` is behind; the topic's [`SlowConsumer`] policy then
//! decides (conflate, drop, disconnect), and only that subscriber is affected.
//!
//! Every publication has a [`Position`] (`epoch`, `seq`), and a topic may keep a bounded history of
//! its publications' frames, so that a subscriber that reconnects resumes from where it was
//! ([`Socket::subscribe_since`](crate::Socket::subscribe_since); see [`history`]).
//!
//! A [`Bridge`] ([`bridge`]) connects the hub to a message broker for running several nodes: the
//! hub tells it when a topic gains its first or loses its last subscriber on the node, queues local
//! publications for it (bounded), and takes the broker's publications without sending them back.

pub mod bridge;
pub(crate) mod history;
mod inbox;
pub(crate) mod local;

use crate::conn::Message;
use crate::ring::sys::poke;
use bridge::{Bridge, Link};
use history::{Backlog, Budget};
pub use history::{BadPosition, History, NotRecovered, Position, Recovery, parse_epoch};
use inbox::{Inbox, Pushed};
use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

/// Longest topic name, in bytes.
pub const MAX_TOPIC_NAME: usize = 256;

/// What happens to a publication for a subscriber that is behind: one whose queued output is over
/// `max_backpressure` (its socket is not being read fast enough). Subscribers that keep up are never
/// affected, and a slow one never delays the others.
#[derive(Debug, Clone, Copy)]
pub enum SlowConsumer {
    /// Keep only the latest publication per key: a publication whose key matches one still waiting
    /// in the subscriber's queue replaces it in place (same position, newest value), so a subscriber
    /// that resumes reading catches up with current values instead of history. `key` is computed once
    /// per publish from the payload (e.g. the symbol of a quote); keys of different topics never
    /// match. Memory per slow subscriber is bounded by `max_backpressure` plus one frame per key.
    Conflate {
        /// The conflation key of a payload.
        key: fn(&[u8]) -> u64,
    },
    /// Drop the new publication for this subscriber (counted in [`TopicStats::dropped`]).
    DropNewest,
    /// Close the subscriber with 1008 "slow consumer" (counted in [`TopicStats::disconnected`]).
    Disconnect,
}

impl SlowConsumer {
    /// Conflation with one key per topic: a slow subscriber keeps only the topic's latest publication
    /// (the right choice when each topic carries one value, such as one symbol's quote).
    pub const CONFLATE_PER_TOPIC: Self = Self::Conflate { key: whole_topic };

    /// The conflation key of `payload` (0 for the policies that do not conflate).
    fn key(&self, payload: &[u8]) -> u64 {
        match self {
            Self::Conflate { key } => key(payload),
            Self::DropNewest | Self::Disconnect => 0,
        }
    }
}

/// Rewrites a payload so that it says it replaced others (see [`Topic::mark_conflated`]): appends
/// the marked payload to the vector; returns `false` to leave the publication as it is.
pub type ConflatedMark = fn(&[u8], &mut Vec<u8>) -> bool;

/// The key of [`SlowConsumer::CONFLATE_PER_TOPIC`]: the same for every payload.
fn whole_topic(_: &[u8]) -> u64 {
    0
}

/// Why a pub/sub call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PubSubError {
    /// Creating the topic would exceed the server's `max_topics` (topics are never removed, so the
    /// limit bounds the memory that subscribe requests naming new topics can claim).
    TooManyTopics {
        /// The configured limit.
        max: usize,
    },
    /// A topic name must be 1 to [`MAX_TOPIC_NAME`] bytes long.
    InvalidName,
    /// [`Publisher::create_topic`]: the topic already exists (a topic's policy is fixed when it is
    /// created, by this call or by a first subscribe or publish with the server's default).
    TopicExists,
    /// The connection is not open (it is closing or closed): it cannot subscribe.
    NotOpen,
    /// [`Publisher::bridge`]: a bridge is already attached to this server (one per server).
    BridgeAttached,
    /// [`Publisher::bridge`]: the queue's capacity must be at least 1.
    InvalidCapacity,
    /// [`Socket::subscribe_since`](crate::Socket::subscribe_since): the connection is already
    /// subscribed to the topic (nothing was queued).
    AlreadySubscribed,
    /// [`Topic::publish_at`]: the position is not after the topic's latest one in the same epoch
    /// (a duplicate or a reordered publication); it was not published.
    Stale {
        /// The topic's latest position.
        latest: Position,
    },
}

impl fmt::Display for PubSubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyTopics { max } => write!(f, "too many topics (max_topics is {max})"),
            Self::InvalidName => write!(f, "a topic name must be 1 to {MAX_TOPIC_NAME} bytes"),
            Self::TopicExists => write!(f, "the topic already exists"),
            Self::NotOpen => write!(f, "the connection is not open"),
            Self::BridgeAttached => write!(f, "a bridge is already attached to this server"),
            Self::InvalidCapacity => write!(f, "a bridge's queue capacity must be at least 1"),
            Self::AlreadySubscribed => write!(f, "already subscribed to the topic"),
            Self::Stale { latest } => {
                write!(f, "the position is not after the topic's latest ({latest})")
            }
        }
    }
}

impl std::error::Error for PubSubError {}

/// Counters of one topic, summed over every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// Publications made.
    pub published: u64,
    /// Current subscribers.
    pub subscribers: u64,
    /// Publications not delivered to a subscriber that was behind ([`SlowConsumer::DropNewest`]).
    pub dropped: u64,
    /// Queued publications replaced by a newer one for a subscriber that was behind
    /// ([`SlowConsumer::Conflate`]).
    pub conflated: u64,
    /// Subscribers closed for being behind ([`SlowConsumer::Disconnect`]).
    pub disconnected: u64,
    /// Publications that skipped a worker whose inbox was full (its subscribers missed them).
    pub overflowed: u64,
    /// Publications kept as history now.
    pub kept: u64,
    /// Bytes the kept publications are counted as (frames and bookkeeping).
    pub kept_bytes: u64,
}

/// One publication: a frame encoded once, numbered within its topic.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    /// The topic's id.
    pub topic: u32,
    /// Its number within the topic on this server (from 1, never reset): the order of delivery,
    /// whatever the epochs of the positions.
    pub order: u64,
    /// Its position in the topic's stream.
    pub position: Position,
    /// The conflation key (0 unless the topic conflates).
    pub key: u64,
    /// The whole frame, header and payload.
    pub frame: Arc<[u8]>,
}

/// What the topic's lock guards.
struct Latest {
    /// The order of the last publication (0: none yet).
    order: u64,
    /// The position of the last publication (`seq` 0 in the server's epoch: none yet).
    position: Position,
    /// The last publication, kept for subscribers that ask for it.
    last: Option<Publication>,
    /// The publications kept as history.
    backlog: Backlog,
}

/// A topic as the hub knows it.
pub(crate) struct TopicInner {
    pub id: u32,
    name: Box<str>,
    pub policy: SlowConsumer,
    /// Subscribers per worker: a publish skips workers without any.
    subscribers: Box<[AtomicU32]>,
    /// Subscribers over all workers: its changes from and to zero are the node's interest, which
    /// a [`Bridge`] reports.
    node: AtomicU32,
    /// The topic waits in the bridge's queue of interest changes (queued once until polled).
    interest_pending: AtomicBool,
    latest: Mutex<Latest>,
    /// How a conflating topic marks the publication that replaced others, if it does.
    pub mark: OnceLock<ConflatedMark>,
    published: AtomicU64,
    pub dropped: AtomicU64,
    pub conflated: AtomicU64,
    pub disconnected: AtomicU64,
    overflowed: AtomicU64,
}

impl TopicInner {
    /// Records one more (`true`) or one fewer subscriber on `worker`. Returns whether the node's
    /// interest changed: the topic gained its first subscriber on the node or lost its last.
    pub fn count(&self, worker: usize, subscribed: bool) -> bool {
        if subscribed {
            self.subscribers[worker].fetch_add(1, Ordering::AcqRel);
            self.node.fetch_add(1, Ordering::AcqRel) == 0
        } else {
            self.subscribers[worker].fetch_sub(1, Ordering::AcqRel);
            self.node.fetch_sub(1, Ordering::AcqRel) == 1
        }
    }

    /// Forgets `n` subscribers of `worker` at once (the worker is exiting). Returns whether the
    /// node's interest changed (it lost its last subscribers).
    pub fn uncount(&self, worker: usize, n: u32) -> bool {
        self.subscribers[worker].fetch_sub(n, Ordering::AcqRel);
        n > 0 && self.node.fetch_sub(n, Ordering::AcqRel) == n
    }

    /// Subscribers of the topic over all workers.
    pub fn node_subscribers(&self) -> u32 {
        self.node.load(Ordering::Acquire)
    }

    /// Forgets the last publication (its number stays): a subscriber gets no snapshot until the
    /// next publication.
    pub fn forget_last(&self) {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last = None;
    }

    /// The order of the last publication and the publication itself. A subscriber registered (and
    /// counted) before this call receives every later publication.
    pub fn latest(&self) -> (u64, Option<Publication>) {
        let l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        (l.order, l.last.clone())
    }

    /// For a subscriber registered (and counted) before this call that was at `since`: the order
    /// of the last publication, and either the publications after `since` (into `replay`) or,
    /// if they cannot be given, the last publication as a snapshot.
    pub fn resume(
        &self,
        since: Position,
        budget: &Budget,
        replay: &mut Vec<Publication>,
    ) -> (u64, Recovery) {
        let mut l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = l.position;
        let recovery = l.backlog.recover(since, latest, budget, replay);
        if let Recovery::NotRecovered { .. } = recovery {
            replay.extend(l.last.clone());
        }
        (l.order, recovery)
    }

    /// The position of the last publication.
    pub fn position(&self) -> Position {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .position
    }

    /// Sets what the topic keeps of its past, trimming what it keeps now to the new bounds.
    pub fn set_history(&self, keep: History, budget: &Budget) {
        let mut l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        l.backlog.keep = keep;
        if keep.max_len == 0 {
            l.backlog.clear(budget);
        } else {
            l.backlog.trim(std::time::Instant::now(), budget);
        }
    }

    pub(crate) fn stats(&self) -> TopicStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (kept, kept_bytes) = {
            let l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            (l.backlog.len() as u64, l.backlog.bytes() as u64)
        };
        TopicStats {
            kept,
            kept_bytes,
            published: load(&self.published),
            subscribers: self
                .subscribers
                .iter()
                .map(|n| u64::from(n.load(Ordering::Relaxed)))
                .sum(),
            dropped: load(&self.dropped),
            conflated: load(&self.conflated),
            disconnected: load(&self.disconnected),
            overflowed: load(&self.overflowed),
        }
    }
}

/// What a scrape reads of the hub.
pub(crate) struct HubSummary {
    pub topics: u64,
    pub published: u64,
    /// Bytes of history kept over all topics.
    pub history_bytes: u64,
    /// Subscriptions held by each worker's connections.
    pub subscriptions: Vec<u64>,
    /// The attached broker bridge's counters.
    pub bridge: Option<bridge::BridgeStats>,
}

/// The pub/sub state shared by the workers and every [`Publisher`].
pub(crate) struct Hub {
    /// Every topic by name; ids are assigned in creation order and never reused (topics are never
    /// removed, see `max_topics`).
    topics: RwLock<HashMap<Box<str>, Arc<TopicInner>>>,
    inboxes: Box<[Inbox]>,
    /// Duplicates of the workers' wake-up eventfds (same eventfd objects).
    wakers: Box<[OwnedFd]>,
    default_policy: SlowConsumer,
    max_topics: usize,
    /// The epoch of the positions this server numbers itself (drawn at start).
    epoch: u64,
    /// Bytes of history over all topics, and the most allowed.
    pub(crate) budget: Budget,
    /// The attached broker bridge, if any.
    bridge: OnceLock<Arc<Link>>,
}

impl Hub {
    /// A hub for one worker per waker, with `max_history_memory` bytes of history over all topics.
    pub fn new(
        wakers: Vec<OwnedFd>,
        default_policy: SlowConsumer,
        max_topics: usize,
        max_history_memory: usize,
    ) -> Self {
        Self {
            topics: RwLock::default(),
            inboxes: wakers.iter().map(|_| Inbox::default()).collect(),
            wakers: wakers.into(),
            default_policy,
            max_topics,
            epoch: history::new_epoch(),
            budget: Budget::new(max_history_memory),
            bridge: OnceLock::new(),
        }
    }

    /// Tells the bridge (if one is attached) that `topic`'s interest on this node changed.
    pub fn interest_changed(&self, topic: &Arc<TopicInner>) {
        if let Some(link) = self.bridge.get() {
            link.interest(topic);
        }
    }

    /// The topic named `name` if it exists (never creates one).
    fn existing(&self, name: &str) -> Option<Arc<TopicInner>> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.get(name).cloned()
    }

    /// Every topic, for the bridge.
    fn topics_snapshot(&self) -> Vec<Arc<TopicInner>> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.values().cloned().collect()
    }

    /// The topic named `name`, created with `policy` (or the default) if it does not exist.
    /// With `exclusive`, an existing topic is an error.
    fn topic_with(
        &self,
        name: &str,
        policy: Option<SlowConsumer>,
        exclusive: bool,
    ) -> Result<Arc<TopicInner>, PubSubError> {
        if name.is_empty() || name.len() > MAX_TOPIC_NAME {
            return Err(PubSubError::InvalidName);
        }
        let existing = |t: &Arc<TopicInner>| {
            if exclusive {
                Err(PubSubError::TopicExists)
            } else {
                Ok(Arc::clone(t))
            }
        };
        if let Some(t) = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return existing(t);
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = topics.get(name) {
            return existing(t);
        }
        if topics.len() >= self.max_topics {
            return Err(PubSubError::TooManyTopics {
                max: self.max_topics,
            });
        }
        let t = Arc::new(TopicInner {
            id: topics.len() as u32,
            name: name.into(),
            policy: policy.unwrap_or(self.default_policy),
            subscribers: self.inboxes.iter().map(|_| AtomicU32::new(0)).collect(),
            node: AtomicU32::new(0),
            interest_pending: AtomicBool::new(false),
            latest: Mutex::new(Latest {
                order: 0,
                position: Position {
                    epoch: self.epoch,
                    seq: 0,
                },
                last: None,
                backlog: Backlog::default(),
            }),
            mark: OnceLock::new(),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        });
        topics.insert(name.into(), Arc::clone(&t));
        Ok(t)
    }

    /// For a scrape: topics, publications over all of them, and subscriptions per worker.
    pub fn summary(&self) -> HubSummary {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = HubSummary {
            topics: topics.len() as u64,
            published: 0,
            history_bytes: self.budget.used() as u64,
            subscriptions: vec![0; self.inboxes.len()],
            bridge: self.bridge.get().map(|l| l.stats()),
        };
        for t in topics.values() {
            out.published += t.published.load(Ordering::Relaxed);
            for (n, c) in out.subscriptions.iter_mut().zip(t.subscribers.iter()) {
                *n += u64::from(c.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// The topic named `name`, created with the default policy if it does not exist.
    pub fn topic(&self, name: &str) -> Result<Arc<TopicInner>, PubSubError> {
        self.topic_with(name, None, false)
    }

    /// Encodes `msg` once and delivers it to every worker with subscribers of `topic`, except
    /// `local` (the calling worker, which delivers the returned publication itself), and queues it
    /// for the bridge if one is attached.
    pub fn publish(
        &self,
        topic: &Arc<TopicInner>,
        msg: Message<'_>,
        local: Option<usize>,
    ) -> Publication {
        self.publish_collecting(topic, msg, local, None)
    }

    /// [`publish`](Self::publish); with `wakes` (a worker that wakes the others itself, through
    /// its ring), the workers to wake are pushed there instead of their eventfds written.
    pub fn publish_collecting(
        &self,
        topic: &Arc<TopicInner>,
        msg: Message<'_>,
        local: Option<usize>,
        wakes: Option<&mut Vec<usize>>,
    ) -> Publication {
        match self.publish_waking(topic, msg, local, true, None, wakes) {
            Ok(item) => item,
            Err(_) => unreachable!("a publication numbered by the hub is never stale"),
        }
    }

    /// [`publish`](Self::publish); `forward`: queue it for the bridge (false for what came from
    /// the broker, which must not go back); `at`: its position, given by a publisher that numbers
    /// its own stream (else the next `seq` in the topic's current epoch).
    /// [`PubSubError::Stale`] (nothing published) for a position not after the latest one in the
    /// same epoch.
    pub fn publish_from(
        &self,
        topic: &Arc<TopicInner>,
        msg: Message<'_>,
        local: Option<usize>,
        forward: bool,
        at: Option<Position>,
    ) -> Result<Publication, PubSubError> {
        self.publish_waking(topic, msg, local, forward, at, None)
    }

    /// [`publish_from`](Self::publish_from); a worker whose inbox the publication made non-empty
    /// is pushed to `wakes` if given, else woken through its eventfd.
    fn publish_waking(
        &self,
        topic: &Arc<TopicInner>,
        msg: Message<'_>,
        local: Option<usize>,
        forward: bool,
        at: Option<Position>,
        mut wakes: Option<&mut Vec<usize>>,
    ) -> Result<Publication, PubSubError> {
        let binary = matches!(msg, Message::Binary(_));
        let (opcode, payload) = match msg {
            Message::Text(s) => (OpCode::Text, s.as_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
        };
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, None, payload.len() as u64);
        // One allocation at the exact size (the iterator's length is known), written once.
        let frame: Arc<[u8]> = header[..n].iter().chain(payload).copied().collect();
        let key = topic.policy.key(payload);
        let mut latest = topic.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let position = match at {
            None => Position {
                epoch: latest.position.epoch,
                seq: latest.position.seq + 1,
            },
            Some(p) if p.epoch == latest.position.epoch && p.seq <= latest.position.seq => {
                return Err(PubSubError::Stale {
                    latest: latest.position,
                });
            }
            Some(p) => p,
        };
        latest.order += 1;
        latest.position = position;
        let item = Publication {
            topic: topic.id,
            order: latest.order,
            position,
            key,
            frame,
        };
        latest.last = Some(item.clone());
        latest.backlog.keep(&item, &self.budget);
        if forward && let Some(link) = self.bridge.get() {
            // Under the topic's lock: the broker gets a topic's publications in number order.
            link.forward(topic, &item.frame, n, binary, position);
        }
        for (w, inbox) in self.inboxes.iter().enumerate() {
            if Some(w) == local || topic.subscribers[w].load(Ordering::Acquire) == 0 {
                continue;
            }
            match inbox.push(item.clone()) {
                Pushed::First => match wakes.as_deref_mut() {
                    Some(wakes) => wakes.push(w),
                    None => poke(self.wakers[w].as_fd()),
                },
                Pushed::Queued => {}
                Pushed::Full => {
                    topic.overflowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(latest);
        topic.published.fetch_add(1, Ordering::Relaxed);
        Ok(item)
    }

    /// Moves worker `worker`'s pending publications into `into` (empty), in arrival order.
    pub fn drain(&self, worker: usize, into: &mut Vec<Publication>) {
        self.inboxes[worker].drain(into);
    }
}

/// Publishes to the server's topics from any thread: `Clone + Send + Sync`, obtained from
/// [`Server::publisher`](crate::Server::publisher) or
/// [`ServerHandle::publisher`](crate::ServerHandle::publisher), before or after `run`.
///
/// ```no_run
/// use ringws_engine::{Message, Server, SlowConsumer};
/// let server = Server::builder().bind("127.0.0.1:9001").build()?;
/// let publisher = server.publisher();
/// let btc = publisher.create_topic("BTC-USD", SlowConsumer::CONFLATE_PER_TOPIC).unwrap();
/// std::thread::spawn(move || loop {
///     btc.publish(Message::Text(r#"{"bid":1.0,"ask":1.1}"#));
///     std::thread::sleep(std::time::Duration::from_millis(10));
/// });
/// # Ok::<(), ringws_engine::EngineError>(())
/// ```
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("workers", &self.hub.inboxes.len())
            .finish()
    }
}

impl Publisher {
    /// A publisher on `hub`.
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The topic named `name`, created with the server's default [`SlowConsumer`] policy if it does
    /// not exist yet.
    pub fn topic(&self, name: &str) -> Result<Topic, PubSubError> {
        Ok(Topic {
            inner: self.hub.topic(name)?,
            hub: Arc::clone(&self.hub),
        })
    }

    /// Creates the topic `name` with its own slow-consumer `policy`; [`PubSubError::TopicExists`] if
    /// it already exists (create topics before clients can subscribe to them).
    pub fn create_topic(&self, name: &str, policy: SlowConsumer) -> Result<Topic, PubSubError> {
        Ok(Topic {
            inner: self.hub.topic_with(name, Some(policy), true)?,
            hub: Arc::clone(&self.hub),
        })
    }

    /// Publishes `msg` to the topic named `name` (created if needed). For repeated publishing keep a
    /// [`Topic`] instead: it skips the name lookup.
    pub fn publish(&self, name: &str, msg: Message<'_>) -> Result<(), PubSubError> {
        self.topic(name)?.publish(msg);
        Ok(())
    }

    /// Bytes of history kept now over all topics (at most the server's `max_history_memory`, plus
    /// one publication per publishing thread while it makes room).
    pub fn history_bytes(&self) -> usize {
        self.hub.budget.used()
    }

    /// Attaches this server's [`Bridge`] to a message broker (see [`Bridge`] for what it carries):
    /// from now on the node's interest changes and its local publications are queued for the
    /// broker client, at most `capacity` publications (beyond that they are counted as dropped;
    /// [`DEFAULT_BRIDGE_CAPACITY`](bridge::DEFAULT_BRIDGE_CAPACITY) is a sensible value), and `wake` is called (on the
    /// publishing thread: it must not block) whenever the queue goes from empty to not empty.
    /// One bridge per server: [`PubSubError::BridgeAttached`] for a second one.
    pub fn bridge(
        &self,
        capacity: usize,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Bridge, PubSubError> {
        Bridge::attach(&self.hub, capacity, wake)
    }
}

/// A handle on one topic, for publishing without a name lookup and for reading its counters.
#[derive(Clone)]
pub struct Topic {
    hub: Arc<Hub>,
    inner: Arc<TopicInner>,
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name())
            .field("policy", &self.inner.policy)
            .finish()
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The topic's slow-consumer policy.
    pub fn policy(&self) -> SlowConsumer {
        self.inner.policy
    }

    /// Publishes `msg` to every subscriber on every worker. The frame is encoded once; delivery is
    /// asynchronous (each worker picks it up from its inbox on its next loop turn). Publications of
    /// one topic reach each subscriber in publish order (except those a slow-consumer policy drops
    /// or conflates). The topic keeps the last one for [`Socket::subscribe_with_last`](crate::Socket::subscribe_with_last).
    pub fn publish(&self, msg: Message<'_>) {
        self.hub.publish(&self.inner, msg, None);
    }

    /// Publishes `msg` at `position`, for a publisher that numbers its own stream (a feed stamping
    /// its quotes, a bridge passing on the origin's numbering): the topic takes the position's
    /// epoch, and later [`publish`](Self::publish) calls go on from it. A position that does not
    /// directly follow the latest one (a new epoch, a `seq` that skips) starts the history
    /// afresh; one not after the latest in the same epoch is refused with
    /// [`PubSubError::Stale`] and not published.
    pub fn publish_at(&self, position: Position, msg: Message<'_>) -> Result<(), PubSubError> {
        self.hub
            .publish_from(&self.inner, msg, None, true, Some(position))
            .map(drop)
    }

    /// On a conflating topic: lets a subscriber that was behind tell a policy gap from a loss. When
    /// a publication replaces others still queued for a subscriber, that subscriber gets it
    /// rewritten by `mark` (e.g. with `"conflated":true` added), encoded at most once per worker
    /// and publication, and only when it happens; everyone else gets the frame as published. Not
    /// applied to connections that negotiated permessage-deflate (they get the plain publication).
    /// Set once: `false` if a mark was already set.
    pub fn mark_conflated(&self, mark: ConflatedMark) -> bool {
        self.inner.mark.set(mark).is_ok()
    }

    /// The position of the topic's latest publication (`seq` 0: none yet).
    pub fn position(&self) -> Position {
        self.inner.position()
    }

    /// Sets what the topic keeps of its past for subscribers that resume from a position
    /// ([`Socket::subscribe_since`](crate::Socket::subscribe_since)); [`History::OFF`] (the
    /// default) keeps nothing. Kept publications count against the server's
    /// `max_history_memory`.
    ///
    /// ```no_run
    /// use ringws_engine::{History, Server, SlowConsumer};
    /// use std::time::Duration;
    /// let server = Server::builder().bind("127.0.0.1:9001").build()?;
    /// let btc = server.publisher().create_topic("BTC-USD", SlowConsumer::CONFLATE_PER_TOPIC).unwrap();
    /// btc.set_history(History { max_len: 1000, max_age: Some(Duration::from_secs(60)) });
    /// # Ok::<(), ringws_engine::EngineError>(())
    /// ```
    pub fn set_history(&self, keep: History) {
        self.inner.set_history(keep, &self.hub.budget);
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        self.inner.stats()
    }
}
