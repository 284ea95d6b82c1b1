//! The hook between this node's pub/sub and a message broker (NATS, Redis, ...), for running
//! several nodes behind a load balancer that all deliver the same publications.
//!
//! The engine knows no broker: it hands a [`Bridge`] (one per server) the two things a broker
//! client needs and takes back the one thing it brings.
//!
//! - **Interest out.** When a topic gains its first subscriber on this node (over all workers) or
//!   loses its last, the topic is queued as an interest change; [`Bridge::poll`] reports it with
//!   whether the node wants it *now* (level, not edge: changes that race between workers settle on
//!   the current count), so the client subscribes on the broker only to what local clients want.
//!   A topic is queued at most once until polled, so this queue is bounded by `max_topics`.
//! - **Publications out.** A publication made on this node ([`Topic::publish`](super::Topic::publish),
//!   [`Socket::publish`](crate::Socket::publish), [`Publisher::publish`](super::Publisher::publish))
//!   is queued once for the broker, under the topic's lock, so the broker sees each topic's
//!   publications in publish order. The queue holds at most `capacity` publications: beyond it a
//!   publication is counted as dropped and not queued, so a broker that is down or slow costs
//!   bounded memory and never blocks the publisher (a worker's callback or any thread).
//! - **Publications in.** [`Bridge::publish`] publishes what came from the broker to this node's
//!   subscribers (encoded once for the node) and never queues it for the broker again: no loops.
//!
//! The broker client (a thread of the application: `ringws serve --bridge` runs one with the
//! official NATS or Redis client) is woken through the `wake` function given to
//! [`Publisher::bridge`](super::Publisher::bridge) whenever the queue goes from empty to not empty;
//! it must not block (it runs on the publishing thread, a worker included).

use super::{Hub, Position, PubSubError, TopicInner};
use crate::conn::Message;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Publications a [`Bridge`] queues for the broker by default before it drops (about 6 MiB of
/// frame references at most; the frames themselves are shared with the local subscribers).
pub const DEFAULT_BRIDGE_CAPACITY: usize = 1 << 16;

/// A publication made on this node, on its way to the broker.
#[derive(Clone)]
pub struct BridgePublication {
    topic: Arc<TopicInner>,
    frame: Arc<[u8]>,
    /// Where the payload starts in `frame` (after the WebSocket header).
    start: usize,
    binary: bool,
    position: Position,
}

impl BridgePublication {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// The payload (without the WebSocket frame header).
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.start..]
    }

    /// Whether it was published as a binary message (else text).
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// Its position in the topic's stream, for the broker to carry, so that every node gives it
    /// the same one ([`Bridge::publish_at`]).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The message, borrowing the payload.
    pub fn message(&self) -> Message<'_> {
        if self.binary {
            Message::Binary(self.payload())
        } else {
            // Text publications were `&str` when published; the frame holds those bytes unchanged.
            match std::str::from_utf8(self.payload()) {
                Ok(s) => Message::Text(s),
                Err(_) => Message::Binary(self.payload()),
            }
        }
    }
}

impl fmt::Debug for BridgePublication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgePublication")
            .field("topic", &self.topic())
            .field("len", &self.payload().len())
            .field("binary", &self.binary)
            .finish()
    }
}

/// What [`Bridge::poll`] reports.
#[derive(Debug, Clone)]
pub enum BridgeEvent {
    /// The node's interest in a topic changed: subscribe on the broker (`wanted`) or unsubscribe.
    /// Reported with the count read when polled, so a `wanted: false` may follow a `wanted: false`
    /// already acted on (treat both as idempotent).
    Interest {
        /// The topic's name.
        topic: Arc<str>,
        /// Whether any connection on this node is subscribed to it now.
        wanted: bool,
    },
    /// A publication made on this node, to send to the broker once.
    Publish(BridgePublication),
}

pub use crate::stats::BridgeStats;

#[derive(Default)]
struct Pending {
    out: VecDeque<BridgePublication>,
    /// Topics whose interest changed since the last poll, each at most once.
    interest: Vec<Arc<TopicInner>>,
    /// Polling stopped: the bridge was dropped.
    closed: bool,
}

/// The engine's side of an attached bridge, kept by the hub.
pub(crate) struct Link {
    pending: Mutex<Pending>,
    capacity: usize,
    wake: Box<dyn Fn() + Send + Sync>,
    queued: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
}

impl Link {
    /// The counters, read now.
    pub(crate) fn stats(&self) -> BridgeStats {
        BridgeStats {
            queued: self.queued.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    /// Queues a local publication for the broker; counts it as dropped if the queue is full.
    /// Called under the topic's lock (so the broker gets a topic's publications in order).
    pub(super) fn forward(
        &self,
        topic: &Arc<TopicInner>,
        frame: &Arc<[u8]>,
        start: usize,
        binary: bool,
        position: Position,
    ) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.closed {
            return;
        }
        if p.out.len() >= self.capacity {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = p.out.is_empty() && p.interest.is_empty();
        p.out.push_back(BridgePublication {
            topic: Arc::clone(topic),
            frame: Arc::clone(frame),
            start,
            binary,
            position,
        });
        drop(p);
        self.queued.fetch_add(1, Ordering::Relaxed);
        if was_empty {
            (self.wake)();
        }
    }

    /// Queues `topic`'s interest change unless it already waits.
    pub(super) fn interest(&self, topic: &Arc<TopicInner>) {
        if topic.interest_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.closed {
            return;
        }
        let was_empty = p.out.is_empty() && p.interest.is_empty();
        p.interest.push(Arc::clone(topic));
        drop(p);
        if was_empty {
            (self.wake)();
        }
    }
}

/// This node's end of a bridge to a message broker (NATS, Redis, ...), for several nodes behind a
/// load balancer that all deliver the same publications. Obtained once per server from
/// [`Publisher::bridge`](super::Publisher::bridge); `Send + Sync`, for the broker client's thread.
/// Dropping it detaches the bridge: local publications are no longer queued.
///
/// - **Interest out**: when a topic gains its first subscriber on this node (over all workers) or
///   loses its last, [`poll`](Self::poll) reports a [`BridgeEvent::Interest`] with whether the
///   node wants the topic *now* (level, not edge), so the client subscribes on the broker only to
///   what local clients want. [`wanted`](Self::wanted) lists them all (after a reconnect).
/// - **Publications out**: each publication made on this node is reported once as a
///   [`BridgeEvent::Publish`], in publish order per topic. At most `capacity` wait; beyond that a
///   publication is counted as dropped and not queued, so a broker that is down or slow costs
///   bounded memory and never blocks the publisher (a worker's callback or any thread).
/// - **Publications in**: [`publish`](Self::publish) publishes what came from the broker to this
///   node's subscribers (encoded once for the node) and never reports it back: no loops.
///
/// The client is woken through the `wake` function given to `Publisher::bridge` whenever the
/// queue goes from empty to not empty.
pub struct Bridge {
    hub: Arc<Hub>,
    link: Arc<Link>,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("capacity", &self.link.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Bridge {
    /// Attaches a bridge to `hub`: every topic that has subscribers now is queued as an interest
    /// change, so the client starts from the node's current interest.
    pub(super) fn attach(
        hub: &Arc<Hub>,
        capacity: usize,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, PubSubError> {
        if capacity == 0 {
            return Err(PubSubError::InvalidCapacity);
        }
        let link = Arc::new(Link {
            pending: Mutex::default(),
            capacity,
            wake,
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        hub.bridge
            .set(Arc::clone(&link))
            .map_err(|_| PubSubError::BridgeAttached)?;
        for topic in hub.topics_snapshot() {
            if topic.node_subscribers() > 0 {
                link.interest(&topic);
            }
        }
        Ok(Self {
            hub: Arc::clone(hub),
            link,
        })
    }

    /// Moves what is waiting into `into`, interest changes first, then publications in publish
    /// order. Call it after each wake-up (and once at start); it never blocks.
    pub fn poll(&self, into: &mut Vec<BridgeEvent>) {
        let mut p = self
            .link
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let interest = std::mem::take(&mut p.interest);
        let out = std::mem::take(&mut p.out);
        drop(p);
        for topic in interest {
            // Cleared before reading the count: a change after this read queues the topic again.
            topic.interest_pending.store(false, Ordering::Release);
            into.push(BridgeEvent::Interest {
                topic: Arc::from(&*topic.name),
                wanted: topic.node_subscribers() > 0,
            });
        }
        into.extend(out.into_iter().map(BridgeEvent::Publish));
    }

    /// The topics this node's connections are subscribed to now (to subscribe again on the broker
    /// after a reconnect that lost the subscriptions).
    pub fn wanted(&self) -> Vec<Arc<str>> {
        self.hub
            .topics_snapshot()
            .into_iter()
            .filter(|t| t.node_subscribers() > 0)
            .map(|t| Arc::from(&*t.name))
            .collect()
    }

    /// Publishes `msg`, received from the broker, to this node's subscribers of `topic` (created
    /// with the server's default policy if needed). Encoded once for the node; never queued for
    /// the broker.
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> Result<(), PubSubError> {
        self.publish_from(topic, msg, None)
    }

    /// [`publish`](Self::publish) at the position the origin gave it (carried by the broker with
    /// the message): every node then gives a publication the same position, so a subscriber can
    /// resume on any of them from where it was on another. [`PubSubError::Stale`] (not published)
    /// for a position not after the topic's latest in the same epoch, e.g. one the broker
    /// delivered twice.
    pub fn publish_at(
        &self,
        topic: &str,
        msg: Message<'_>,
        position: Position,
    ) -> Result<(), PubSubError> {
        self.publish_from(topic, msg, Some(position))
    }

    fn publish_from(
        &self,
        topic: &str,
        msg: Message<'_>,
        at: Option<Position>,
    ) -> Result<(), PubSubError> {
        let t = self.hub.topic(topic)?;
        self.hub.publish_from(&t, msg, None, false, at)?;
        self.link.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets `topic`'s last publication (kept for
    /// [`Socket::subscribe_with_last`](crate::Socket::subscribe_with_last)): call it when the node
    /// stops receiving the topic from the broker (its last local subscriber left), so that a later
    /// subscriber is not handed a value that went stale meanwhile; it gets the next live one
    /// instead. Does nothing for a topic that does not exist.
    pub fn forget_last(&self, topic: &str) {
        if let Some(t) = self.hub.existing(topic) {
            t.forget_last();
        }
    }

    /// Counts `n` local publications that the broker client took from the queue but could not
    /// deliver to the broker (it was disconnected), so that [`stats`](Self::stats) reports every
    /// loss in one place.
    pub fn count_dropped(&self, n: u64) {
        self.link.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The bridge's counters.
    pub fn stats(&self) -> BridgeStats {
        self.link.stats()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let mut p = self
            .link
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.closed = true;
        p.out.clear();
        p.interest.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{BackpressurePolicy, Slab, test_config, test_open};
    use crate::pubsub::local::Local;
    use crate::pubsub::{Publisher, SlowConsumer};
    use crate::ring::sys::eventfd;
    use std::sync::atomic::AtomicUsize;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(
            vec![eventfd().unwrap(), eventfd().unwrap()],
            SlowConsumer::DropNewest,
            16,
            1 << 20,
        ))
    }

    fn bridge(hub: &Arc<Hub>, capacity: usize) -> (Bridge, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        let b = Publisher::new(Arc::clone(hub))
            .bridge(
                capacity,
                Box::new(move || {
                    w.fetch_add(1, Ordering::Relaxed);
                }),
            )
            .unwrap();
        (b, wakes)
    }

    fn events(b: &Bridge) -> Vec<String> {
        let mut ev = Vec::new();
        b.poll(&mut ev);
        ev.iter()
            .map(|e| match e {
                BridgeEvent::Interest { topic, wanted } => format!("{topic}:{wanted}"),
                BridgeEvent::Publish(o) => {
                    format!("{}={}", o.topic(), String::from_utf8_lossy(o.payload()))
                }
            })
            .collect()
    }

    #[test]
    fn interest_follows_the_first_and_last_subscriber_of_the_node() {
        let hub = hub();
        let (b, wakes) = bridge(&hub, 8);
        let mut slabs: Vec<Slab<()>> = (0..2)
            .map(|_| Slab::new(test_config(1 << 20, BackpressurePolicy::Drop)))
            .collect();
        for slab in &mut slabs {
            test_open(slab);
            test_open(slab);
        }
        let mut locals: Vec<Local> = (0..2).map(|w| Local::new(Arc::clone(&hub), w)).collect();
        locals[0].subscribe(&mut slabs[0], 0, "t", false).unwrap();
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        // More subscribers on either worker: no further change.
        locals[0].subscribe(&mut slabs[0], 1, "t", false).unwrap();
        locals[1].subscribe(&mut slabs[1], 0, "t", false).unwrap();
        assert_eq!(events(&b), ["t:true"]);
        locals[0].unsubscribe_all(&mut slabs[0], 0);
        locals[0].unsubscribe(&mut slabs[0], 1, "t");
        assert!(events(&b).is_empty(), "worker 1 still has one");
        locals[1].detach();
        assert_eq!(events(&b), ["t:false"]);
        // A change and its reversal before a poll: reported once, as the count is now.
        locals[0].subscribe(&mut slabs[0], 0, "t", false).unwrap();
        locals[0].unsubscribe(&mut slabs[0], 0, "t");
        assert_eq!(events(&b), ["t:false"]);
        assert_eq!(b.wanted(), Vec::<Arc<str>>::new());
    }

    #[test]
    fn local_publications_go_out_once_in_order_and_broker_ones_never() {
        let hub = hub();
        let (b, _) = bridge(&hub, 8);
        let p = Publisher::new(Arc::clone(&hub));
        let t = p.topic("t").unwrap();
        t.publish(Message::Text("1"));
        p.publish("t", Message::Binary(b"2")).unwrap();
        b.publish("t", Message::Text("from the broker")).unwrap();
        t.publish(Message::Text("3"));
        let mut ev = Vec::new();
        b.poll(&mut ev);
        let out: Vec<(String, bool)> = ev
            .iter()
            .map(|e| match e {
                BridgeEvent::Publish(o) => (
                    String::from_utf8_lossy(o.payload()).into_owned(),
                    o.is_binary(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            out,
            [("1".into(), false), ("2".into(), true), ("3".into(), false)]
        );
        assert_eq!(
            b.stats(),
            BridgeStats {
                queued: 3,
                dropped: 0,
                received: 1
            }
        );
        assert_eq!(t.stats().published, 4, "all four were published here");
        assert_eq!(t.inner.latest().1.map(|p| p.order), Some(4));
        b.forget_last("t");
        let (seq, last) = t.inner.latest();
        assert!(
            seq == 4 && last.is_none(),
            "forgotten; the numbering goes on"
        );
        b.forget_last("no such topic"); // not created
        assert!(hub.existing("no such topic").is_none());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_one_bridge_per_server() {
        let hub = hub();
        let (b, wakes) = bridge(&hub, 2);
        let p = Publisher::new(Arc::clone(&hub));
        for i in 0..5 {
            p.publish("t", Message::Text(&i.to_string())).unwrap();
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "one wake per batch");
        assert_eq!(events(&b), ["t=0", "t=1"]);
        b.count_dropped(4);
        assert_eq!(b.stats().dropped, 7);
        assert!(matches!(
            p.bridge(1, Box::new(|| {})),
            Err(PubSubError::BridgeAttached)
        ));
        drop(b);
        p.publish("t", Message::Text("after")).unwrap(); // not queued, nothing to poll it
    }

    #[test]
    fn attaching_reports_the_current_interest() {
        let hub = hub();
        let mut slab: Slab<()> = Slab::new(test_config(1 << 20, BackpressurePolicy::Drop));
        test_open(&mut slab);
        let mut local = Local::new(Arc::clone(&hub), 0);
        local.subscribe(&mut slab, 0, "a", false).unwrap();
        local.subscribe(&mut slab, 0, "b", false).unwrap();
        local.unsubscribe(&mut slab, 0, "b");
        let (b, _) = bridge(&hub, 8);
        assert_eq!(events(&b), ["a:true"]);
        assert_eq!(b.wanted(), vec![Arc::<str>::from("a")]);
    }
}
