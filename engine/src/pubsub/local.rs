//! A worker's side of pub/sub: its subscriber lists, and delivery into its connections' queues.
//!
//! Lists are per worker and touched only by the worker thread, so delivery takes no lock: for each
//! publication, each subscriber's output queue gets a reference to the shared frame (or the topic's
//! slow-consumer policy applies if the subscriber is behind).

use super::{Hub, PubSubError, Publication, SlowConsumer, TopicInner};
use crate::conn::{Core, Phase, flag};
use crate::handler::Message;
use ringws_protocol::CloseCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// One subscriber of a topic on this worker.
#[derive(Debug, Clone, Copy)]
struct Member {
    slot: u32,
    /// Publications numbered up to this one are not for this subscriber: they were published before
    /// it subscribed (or were sent to it as the topic's last publication).
    after: u64,
}

/// A topic's subscribers on this worker.
struct Subscribers {
    topic: Arc<TopicInner>,
    members: Vec<Member>,
    /// Slot -> index in `members`, for O(1) unsubscribe.
    index: HashMap<u32, u32>,
}

/// A worker's pub/sub state (part of its [`Core`]).
pub(crate) struct Local {
    hub: Arc<Hub>,
    worker: usize,
    /// By topic id; `None` for topics without subscribers here so far.
    topics: Vec<Option<Subscribers>>,
    /// By connection slot: the ids of the topics it subscribes to.
    by_slot: Vec<Vec<u32>>,
    /// The batch being delivered (kept for its capacity).
    batch: Vec<Publication>,
}

impl Local {
    /// Worker `worker`'s state on `hub`.
    pub fn new(hub: Arc<Hub>, worker: usize) -> Self {
        Self {
            hub,
            worker,
            topics: Vec::new(),
            by_slot: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// The hub, for [`Publisher`](super::Publisher) handles.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Removes every subscriber of this worker from the hub's counts (the worker is exiting), so that
    /// publishers stop queueing for it.
    pub fn detach(&mut self) {
        for s in self.topics.iter_mut().flatten() {
            s.topic.uncount(self.worker, s.members.len() as u32);
            s.members.clear();
            s.index.clear();
        }
        self.by_slot.clear();
    }

    /// A worker of a one-worker hub of its own, for unit tests of the core.
    #[cfg(test)]
    pub fn standalone() -> Self {
        let hub = Hub::new(vec![tests::eventfd()], SlowConsumer::DropNewest, 16);
        Self::new(Arc::new(hub), 0)
    }
}

/// What [`Core::offer`] did with a publication for one subscriber.
enum Offer {
    /// Queued (or the connection is no longer open and it was skipped).
    Queued,
    Dropped,
    Conflated,
    Disconnected,
}

impl<S: Default> Core<S> {
    /// Subscribes connection `slot` to the topic `name` (created with the default policy if needed).
    /// With `with_last`, the topic's last publication (if any) is queued first. Returns `false` if it
    /// was already subscribed.
    pub(crate) fn subscribe(
        &mut self,
        slot: u32,
        name: &str,
        with_last: bool,
    ) -> Result<bool, PubSubError> {
        if self.conns[slot as usize].phase != Phase::Open {
            return Err(PubSubError::NotOpen);
        }
        let topic = self.pubsub.hub.topic(name)?;
        let (id, worker) = (topic.id as usize, self.pubsub.worker);
        if self.pubsub.topics.len() <= id {
            self.pubsub.topics.resize_with(id + 1, || None);
        }
        let subs = self.pubsub.topics[id].get_or_insert_with(|| Subscribers {
            topic: Arc::clone(&topic),
            members: Vec::new(),
            index: HashMap::new(),
        });
        if subs.index.contains_key(&slot) {
            return Ok(false);
        }
        // Counted before reading the topic's number: a publish numbered after `seq` sees the count
        // (the topic's lock orders the two) and is queued for this worker.
        topic.count(worker, true);
        let (seq, last) = topic.latest();
        subs.index.insert(slot, subs.members.len() as u32);
        subs.members.push(Member { slot, after: seq });
        let by_slot = &mut self.pubsub.by_slot;
        if by_slot.len() <= slot as usize {
            by_slot.resize_with(slot as usize + 1, Vec::new);
        }
        by_slot[slot as usize].push(id as u32);
        if with_last && let Some(last) = last {
            let _ = self.offer(slot, &last, topic.policy);
        }
        Ok(true)
    }

    /// Unsubscribes connection `slot` from the topic `name`; `false` if it was not subscribed.
    pub(crate) fn unsubscribe(&mut self, slot: u32, name: &str) -> bool {
        let Some(ids) = self.pubsub.by_slot.get_mut(slot as usize) else {
            return false;
        };
        let topics = &self.pubsub.topics;
        let found = ids.iter().position(|&id| {
            topics[id as usize]
                .as_ref()
                .is_some_and(|s| &*s.topic.name == name)
        });
        let Some(at) = found else {
            return false;
        };
        let id = ids.swap_remove(at);
        self.remove_member(id, slot);
        true
    }

    /// Unsubscribes connection `slot` from everything (it left the open state).
    pub(crate) fn unsubscribe_all(&mut self, slot: u32) {
        let Some(ids) = self.pubsub.by_slot.get_mut(slot as usize) else {
            return;
        };
        for id in std::mem::take(ids) {
            self.remove_member(id, slot);
        }
    }

    fn remove_member(&mut self, id: u32, slot: u32) {
        let Some(subs) = self.pubsub.topics[id as usize].as_mut() else {
            return;
        };
        let Some(i) = subs.index.remove(&slot) else {
            return;
        };
        subs.members.swap_remove(i as usize);
        if let Some(moved) = subs.members.get(i as usize) {
            subs.index.insert(moved.slot, i);
        }
        subs.topic.count(self.pubsub.worker, false);
    }

    /// Publishes from a callback on this worker: other workers get it through their inboxes, this
    /// worker's subscribers at once.
    pub(crate) fn publish(&mut self, name: &str, msg: Message<'_>) -> Result<(), PubSubError> {
        let topic = self.pubsub.hub.topic(name)?;
        let item = self
            .pubsub
            .hub
            .publish(&topic, msg, Some(self.pubsub.worker));
        self.deliver(&item);
        Ok(())
    }

    /// Delivers everything waiting in this worker's inbox. Connections closed by a `Disconnect`
    /// policy are in `closed` afterwards.
    pub(crate) fn drain_inbox(&mut self) {
        let mut batch = std::mem::take(&mut self.pubsub.batch);
        self.pubsub.hub.drain(self.pubsub.worker, &mut batch);
        for item in batch.drain(..) {
            self.deliver(&item);
        }
        self.pubsub.batch = batch;
    }

    /// Queues `item` for every subscriber of its topic on this worker.
    fn deliver(&mut self, item: &Publication) {
        let Some(Some(subs)) = self.pubsub.topics.get_mut(item.topic as usize) else {
            return;
        };
        // Taken out for the loop: delivery never changes membership (a disconnect only records the
        // close; unsubscribing happens when `on_close` is delivered, after this returns).
        let members = std::mem::take(&mut subs.members);
        let topic = Arc::clone(&subs.topic);
        let (mut dropped, mut conflated, mut disconnected) = (0, 0, 0);
        for m in &members {
            if item.seq <= m.after {
                continue;
            }
            match self.offer(m.slot, item, topic.policy) {
                Offer::Queued => {}
                Offer::Dropped => dropped += 1,
                Offer::Conflated => conflated += 1,
                Offer::Disconnected => disconnected += 1,
            }
        }
        if let Some(Some(subs)) = self.pubsub.topics.get_mut(item.topic as usize) {
            subs.members = members;
        }
        for (counter, n) in [
            (&topic.dropped, dropped),
            (&topic.conflated, conflated),
            (&topic.disconnected, disconnected),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Queues `item` for one subscriber, or applies `policy` if the subscriber is behind (its queued
    /// output is over `max_backpressure`).
    fn offer(&mut self, slot: u32, item: &Publication, policy: SlowConsumer) -> Offer {
        let c = &self.conns[slot as usize];
        if c.phase != Phase::Open {
            return Offer::Queued;
        }
        let max = self.limits.max_backpressure;
        if c.buffered() > max {
            match policy {
                SlowConsumer::DropNewest => return Offer::Dropped,
                SlowConsumer::Disconnect => {
                    self.close(slot, CloseCode::POLICY_VIOLATION, "slow consumer");
                    return Offer::Disconnected;
                }
                SlowConsumer::Conflate { .. } => {
                    let compressed = self.compressed_publication(slot, item, true);
                    let frame = compressed.as_ref().unwrap_or(&item.frame);
                    let q = self.out(slot);
                    let key = (item.topic, item.key);
                    if q.replace_keyed(key, frame) {
                        return Offer::Conflated;
                    }
                    q.push_keyed(key, frame);
                    return Offer::Queued;
                }
            }
        }
        let compressed = self.compressed_publication(slot, item, false);
        let q = self.out(slot);
        if let SlowConsumer::Conflate { .. } = policy {
            // Queued in order behind any frame kept for this key from an earlier time behind, which
            // therefore must no longer take newer values.
            q.forget_keyed((item.topic, item.key));
        }
        q.push_shared(compressed.as_ref().unwrap_or(&item.frame));
        if q.buffered() > max {
            self.conns[slot as usize].flags |= flag::OVER_LIMIT;
        }
        Offer::Queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conn::Limits;
    use std::os::fd::{FromRawFd, OwnedFd};

    pub(crate) fn eventfd() -> OwnedFd {
        // SAFETY: eventfd takes no pointers; the result is checked and owned by nobody else.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// A core of worker 0 of a two-worker hub, with `n` open connections.
    fn core(policy: SlowConsumer, max_backpressure: usize, n: u32) -> (Core<()>, Arc<Hub>) {
        let hub = Arc::new(Hub::new(vec![eventfd(), eventfd()], policy, 16));
        let cfg = Config {
            max_backpressure,
            ..Config::default()
        };
        let mut core = Core::new(Limits::new(&cfg), Local::new(Arc::clone(&hub), 0));
        for _ in 0..n {
            let s = core.alloc(-1);
            core.conns[s as usize].phase = Phase::Open;
        }
        (core, hub)
    }

    fn unsent(core: &Core<()>, slot: u32) -> Vec<u8> {
        core.conns[slot as usize]
            .out
            .as_ref()
            .map_or(Vec::new(), |q| q.unsent())
    }

    #[test]
    fn one_frame_is_shared_by_every_subscriber() {
        let (mut core, _hub) = core(SlowConsumer::DropNewest, 1 << 20, 3);
        assert_eq!(core.subscribe(0, "t", false), Ok(true));
        assert_eq!(core.subscribe(0, "t", false), Ok(false), "once");
        assert_eq!(core.subscribe(1, "t", false), Ok(true));
        core.publish("t", Message::Text("hi")).unwrap();
        assert_eq!(unsent(&core, 0), b"\x81\x02hi");
        assert_eq!(unsent(&core, 1), b"\x81\x02hi");
        assert!(unsent(&core, 2).is_empty(), "not subscribed");
    }

    #[test]
    fn unsubscribe_and_close_stop_delivery_and_counts() {
        let (mut core, hub) = core(SlowConsumer::DropNewest, 1 << 20, 3);
        for s in 0..3 {
            core.subscribe(s, "t", false).unwrap();
        }
        let topic = hub.topic("t").unwrap();
        assert_eq!(topic.stats().subscribers, 3);
        assert!(core.unsubscribe(0, "t"));
        assert!(!core.unsubscribe(0, "t"));
        core.unsubscribe_all(1);
        assert_eq!(topic.stats().subscribers, 1);
        core.publish("t", Message::Binary(b"x")).unwrap();
        assert!(unsent(&core, 0).is_empty() && unsent(&core, 1).is_empty());
        assert_eq!(
            unsent(&core, 2),
            b"\x82\x01x",
            "the moved member is still found"
        );
        core.pubsub.detach();
        assert_eq!(topic.stats().subscribers, 0);
    }

    #[test]
    fn other_workers_get_publications_through_their_inbox_in_order() {
        let (mut core, hub) = core(SlowConsumer::DropNewest, 1 << 20, 1);
        core.subscribe(0, "t", false).unwrap();
        let topic = hub.topic("t").unwrap();
        topic.count(1, true); // a subscriber on worker 1
        for i in 0..3u8 {
            hub.publish(&topic, Message::Binary(&[i]), None);
        }
        let mut batch = Vec::new();
        hub.drain(1, &mut batch);
        assert_eq!(batch.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3]);
        core.drain_inbox();
        assert_eq!(unsent(&core, 0), b"\x82\x01\x00\x82\x01\x01\x82\x01\x02");
    }

    #[test]
    fn a_late_subscriber_gets_the_last_publication_once() {
        let (mut core, hub) = core(SlowConsumer::DropNewest, 1 << 20, 1);
        let topic = hub.topic("t").unwrap();
        topic.count(0, true); // someone else here, so the publication waits in the inbox
        hub.publish(&topic, Message::Text("1"), None);
        hub.publish(&topic, Message::Text("2"), None);
        core.subscribe(0, "t", true).unwrap();
        core.drain_inbox(); // 1 and 2 are older than the subscription: skipped
        hub.publish(&topic, Message::Text("3"), None);
        core.drain_inbox();
        assert_eq!(unsent(&core, 0), b"\x81\x012\x81\x013");
    }

    #[test]
    fn slow_subscribers_follow_the_policy_and_fast_ones_get_everything() {
        for policy in [
            SlowConsumer::DropNewest,
            SlowConsumer::Disconnect,
            SlowConsumer::CONFLATE_PER_TOPIC,
        ] {
            let (mut core, hub) = core(policy, 10, 2);
            core.subscribe(0, "t", false).unwrap();
            core.subscribe(1, "t", false).unwrap();
            for i in 0..5u8 {
                core.publish("t", Message::Binary(&[i; 8])).unwrap();
                // Slot 1 keeps up: its queue is sent after every publish.
                if let Some(q) = core.conns[1].out.as_mut() {
                    let _ = q.start_send();
                    q.complete(10);
                }
            }
            let stats = hub.topic("t").unwrap().stats();
            let slow = unsent(&core, 0);
            match policy {
                SlowConsumer::DropNewest => {
                    assert_eq!(
                        slow.len(),
                        20,
                        "two frames fit, then over the limit: {policy:?}"
                    );
                    assert_eq!(stats.dropped, 3);
                }
                SlowConsumer::Disconnect => {
                    assert_eq!(core.conns[0].phase, Phase::Closing);
                    assert!(slow.ends_with(b"slow consumer"));
                    assert_eq!(core.closed[0].code, CloseCode::POLICY_VIOLATION);
                    assert_eq!(stats.disconnected, 1);
                }
                SlowConsumer::Conflate { .. } => {
                    // Two sent-order frames, then the third was keyed and replaced twice.
                    assert_eq!(
                        &slow[..20],
                        [
                            [0x82, 8, 0, 0, 0, 0, 0, 0, 0, 0],
                            [0x82, 8, 1, 1, 1, 1, 1, 1, 1, 1]
                        ]
                        .concat()
                    );
                    assert_eq!(&slow[20..], [0x82, 8, 4, 4, 4, 4, 4, 4, 4, 4]);
                    assert_eq!(stats.conflated, 2);
                }
            }
            assert!(
                unsent(&core, 1).is_empty(),
                "the fast subscriber got all: {policy:?}"
            );
        }
    }

    #[test]
    fn conflation_never_puts_a_newer_value_before_an_older_one() {
        let (mut core, hub) = core(SlowConsumer::CONFLATE_PER_TOPIC, 10, 1);
        core.subscribe(0, "t", false).unwrap();
        let frame = |i: u8| [0x82, 8, i, i, i, i, i, i, i, i];
        for i in 0..3u8 {
            core.publish("t", Message::Binary(&[i; 8])).unwrap();
        }
        // 0 and 1 queued in order; 2 found the subscriber behind and was kept for conflation.
        let q = core.conns[0].out.as_mut().unwrap();
        let _ = q.start_send();
        q.complete(20); // 0 and 1 sent: 2 waits at the front, below the limit again
        core.publish("t", Message::Binary(&[3; 8])).unwrap(); // queued in order, behind 2
        core.publish("t", Message::Binary(&[4; 8])).unwrap(); // behind again: must follow 3
        assert_eq!(unsent(&core, 0), [frame(2), frame(3), frame(4)].concat());
        assert_eq!(hub.topic("t").unwrap().stats().conflated, 0);
    }

    #[test]
    fn a_reused_slot_inherits_no_subscription() {
        let (mut core, hub) = core(SlowConsumer::DropNewest, 1 << 20, 1);
        core.subscribe(0, "t", false).unwrap();
        core.conns[0].phase = Phase::Zombie; // gone without `on_close` (its subscription is live)
        core.release(0);
        assert_eq!(hub.topic("t").unwrap().stats().subscribers, 0);
        let again = core.alloc(-1);
        assert_eq!(again, 0);
        core.conns[0].phase = Phase::Open;
        core.publish("t", Message::Text("x")).unwrap();
        assert!(unsent(&core, 0).is_empty());
    }

    #[test]
    fn closed_connections_cannot_subscribe() {
        let (mut core, _hub) = core(SlowConsumer::DropNewest, 1 << 20, 1);
        core.close(0, CloseCode::NORMAL, "");
        assert_eq!(core.subscribe(0, "t", false), Err(PubSubError::NotOpen));
    }
}
