//! The part of a worker that callbacks reach, through [`Socket`](crate::Socket) and
//! [`Context`](crate::Context): its connections, its pub/sub state and the client requests waiting
//! for the end of the loop turn.

use crate::conn::Slab;
use crate::connect::Connect;
use crate::pubsub::local::Local;
use std::collections::VecDeque;
use std::time::Instant;

/// The per-worker state callbacks may touch, through [`Socket`] and [`Context`].
pub(crate) struct Core<S> {
    /// The worker's connections.
    pub slab: Slab<S>,
    /// The worker's topic subscriptions.
    pub pubsub: Local,
    /// Client connections and the wake-up asked for by callbacks, for the end of the turn.
    pub outbound: Outbound<S>,
}

impl<S: Default> Core<S> {
    /// A core over `slab` and `pubsub`.
    pub fn new(slab: Slab<S>, pubsub: Local) -> Self {
        Self {
            slab,
            pubsub,
            outbound: Outbound::default(),
        }
    }

    /// After `on_close`: the connection's state and subscriptions go.
    pub fn forget(&mut self, slot: u32) {
        self.slab.get_mut(slot).state = S::default();
        self.pubsub.unsubscribe_all(&mut self.slab, slot);
    }

    /// Frees a closed slot whose operations have all completed: its subscriptions go (a reused
    /// slot must never inherit one), then the slot is reset. False if the slot cannot be freed yet.
    pub fn release(&mut self, slot: u32) -> bool {
        self.pubsub.unsubscribe_all(&mut self.slab, slot);
        self.slab.release(slot)
    }
}

/// Client requests made by callbacks, waiting for the end of the loop turn: connections to open and
/// the earliest wake-up asked for.
pub(crate) struct Outbound<S> {
    /// Connections to open, with their states, in request order.
    pub dials: VecDeque<(Connect, S)>,
    /// When `on_wake` is due, if asked for.
    pub wake: Option<Instant>,
    /// The worker is shutting down (set before its connections are closed).
    pub shutting_down: bool,
}

impl<S> Default for Outbound<S> {
    fn default() -> Self {
        Self {
            dials: VecDeque::new(),
            wake: None,
            shutting_down: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Message;
    use crate::conn::{BackpressurePolicy, test_config, test_open};
    use crate::pubsub::{Hub, SlowConsumer};
    use crate::ring::sys::eventfd;
    use std::sync::Arc;

    #[test]
    fn a_reused_slot_inherits_no_subscription() {
        let hub = Arc::new(Hub::new(
            vec![eventfd().unwrap()],
            SlowConsumer::DropNewest,
            16,
            1 << 20,
        ));
        let slab = Slab::new(test_config(1 << 20, BackpressurePolicy::Drop));
        let mut core: Core<()> = Core::new(slab, Local::new(Arc::clone(&hub), 0));
        let slot = test_open(&mut core.slab);
        core.pubsub
            .subscribe(&mut core.slab, slot, "t", false)
            .unwrap();
        // Gone without `on_close` (its subscription is live), then freed.
        core.slab.get_mut(slot).machine.close_now();
        assert!(core.release(slot));
        assert_eq!(hub.topic("t").unwrap().stats().subscribers, 0);
        let again = test_open(&mut core.slab);
        assert_eq!(again, slot);
        core.pubsub
            .publish(&mut core.slab, "t", Message::Text("x"))
            .unwrap();
        assert!(core.slab.get(again).out.is_none(), "nothing queued for it");
    }
}
