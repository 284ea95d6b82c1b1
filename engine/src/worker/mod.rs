//! The event loop of one worker: one ring, one listener, one buffer pool, one slab of connections.
//!
//! A loop turn: submit and wait for at least one completion; read the clock; route every completion
//! available to its handler (receive buffers are decoded in place and given back to the kernel right
//! after their callbacks); fire the timer wheel's due checks; then flush: every connection that
//! queued output during the turn gets one send (corking), receives that ran out of buffers or were
//! paused or resumed are armed or cancelled.
//!
//! This module translates between completions and the layers below; the decisions live there: the
//! connection machine (phases, timers, close handshake, backpressure), the policy (admission and
//! abuse limits), pub/sub. The rest of the worker is split by what it handles: [`recv`] (bytes in:
//! the handshake and the decode loop), [`upgrade`] (the server's HTTP side), [`dial`] (client
//! connections), [`close`] (sends done, closing, aborting, freeing), [`callbacks`] (calling the
//! handler, guarded against panics) and [`lifecycle`] (accept, timers, shutdown).
//!
//! Operations in flight per connection are at most one multishot receive, one send and, for a
//! client, one connect. A slot is freed only when all have completed, so a completion can never
//! reach a reused slot; the generation in its token is checked anyway.

mod callbacks;
mod close;
mod dial;
mod lifecycle;
mod recv;
mod tls;
mod upgrade;

use crate::config::Config;
use crate::conn::Slab;
use crate::error::EngineError;
use crate::handler::Handler;
use crate::ops::Ops;
use crate::policy::{Counters, Policy};
use crate::pubsub::Hub;
use crate::pubsub::local::Local;
use crate::ring::probe::ProbeReport;
use crate::ring::sys::{self, poke};
use crate::ring::{Buffers, Clock, Cqe, Op, Ring, Submit, TaskRun, Token};
use crate::state::Core;
use io_uring::cqueue::CompletionQueue;
use ringws_protocol::deflate::ContextBudget;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// State shared by the workers, the thread in `Server::run` and every `ServerHandle`.
pub(crate) struct Shared {
    /// 0: running; 1: graceful shutdown requested; 2: forced.
    pub level: AtomicU8,
    /// One eventfd per worker, polled by its ring.
    pub wakers: Vec<OwnedFd>,
    /// Whether workers wake each other through their rings (`msg_ring` and the kernel has
    /// `IORING_OP_MSG_RING`).
    pub msg_ring: bool,
    /// Whether receives ask for bundles (`recv_bundles` and the kernel takes them, see
    /// [`ProbeReport::recv_bundles`]).
    pub recv_bundles: bool,
    /// With `msg_ring`, a descriptor of each running worker's ring, which other workers post
    /// wake-ups to. A worker puts its own here once its ring exists and takes it out (closing it)
    /// before the ring is dropped; a poster holds the read lock until the kernel took its
    /// reference to the ring, so a descriptor is never posted to after it was closed. (If the
    /// kernel defers the submission, `EBUSY`, the message goes with the poster's next one: a
    /// target closed in between fails it, and the poster then writes the eventfd.)
    pub rings: Box<[RwLock<Option<OwnedFd>>]>,
    /// Wakes the thread waiting in `run` (a worker exited, or shutdown was requested).
    pub main_wake: OwnedFd,
    /// Workers that have exited.
    pub exited: AtomicUsize,
    /// Topics, their subscribers per worker, and the workers' inboxes.
    pub hub: Arc<Hub>,
    /// Connection and assembly-memory counts over all workers, for their limits.
    pub counters: Counters,
    /// permessage-deflate contexts kept per connection, over all workers.
    pub deflate_budget: ContextBudget,
    /// The workers' counters, readiness and the endpoints that show them.
    pub ops: Ops,
}

impl Shared {
    /// The shared state of `cfg.workers` workers, on a kernel the `probe` describes.
    pub fn new(cfg: &Config, probe: &ProbeReport) -> Result<Self, EngineError> {
        let eventfd = || sys::eventfd().map_err(|e| EngineError::io("creating an eventfd", e));
        let wakers: Vec<OwnedFd> = (0..cfg.workers)
            .map(|_| eventfd())
            .collect::<Result<_, _>>()?;
        // The hub wakes workers through duplicates of the same eventfds.
        let hub_wakers = wakers
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<io::Result<_>>()
            .map_err(|e| EngineError::io("duplicating an eventfd", e))?;
        let hub = Arc::new(Hub::new(
            hub_wakers,
            cfg.slow_consumer,
            cfg.max_topics,
            cfg.max_history_memory,
        ));
        Ok(Self {
            level: AtomicU8::new(0),
            rings: wakers.iter().map(|_| RwLock::new(None)).collect(),
            wakers,
            msg_ring: cfg.msg_ring && probe.msg_ring(),
            recv_bundles: cfg.recv_bundles
                && probe.recv_bundles().map_or_else(
                    |why| {
                        info!("receive bundles unavailable: {why}; one buffer per completion");
                        false
                    },
                    |()| true,
                ),
            main_wake: eventfd()?,
            exited: AtomicUsize::new(0),
            ops: Ops::new(cfg, Arc::clone(&hub), probe),
            hub,
            counters: Counters::new(),
            deflate_budget: ContextBudget::new(cfg.deflate_budget),
        })
    }

    /// Raises the shutdown level (never lowers it) and wakes everyone.
    pub fn request(&self, level: u8) {
        self.ops.accepting.store(false, Ordering::Release);
        self.level.fetch_max(level, Ordering::AcqRel);
        for w in &self.wakers {
            poke(w.as_fd());
        }
        poke(self.main_wake.as_fd());
    }
}

/// The worker's clock: milliseconds since it started, on `CLOCK_MONOTONIC`.
struct WorkerClock {
    /// `CLOCK_MONOTONIC` when the worker started.
    origin: Duration,
}

impl WorkerClock {
    fn now_ms(&self) -> u64 {
        self.ms_at(sys::monotonic())
    }

    /// `CLOCK_MONOTONIC` reading `t` on this clock.
    fn ms_at(&self, t: Duration) -> u64 {
        t.saturating_sub(self.origin).as_millis() as u64
    }

    /// The `CLOCK_MONOTONIC` time of `ms` on this clock (for absolute ring timeouts).
    fn absolute(&self, ms: u64) -> Duration {
        self.origin + Duration::from_millis(ms)
    }
}

/// Everything of a worker but its receive buffers (kept apart so that a borrowed buffer and
/// `&mut Engine` can coexist).
struct Engine<'r, H: Handler> {
    ring: Submit<'r>,
    handler: H,
    core: Core<H::State>,
    policy: Policy,
    cfg: &'r Config,
    shared: &'r Shared,
    index: usize,
    clock: WorkerClock,
    /// The worker's listeners (none for a client-only engine): the WebSocket port and, with
    /// `tls_bind`, the TLS port; a listener's index is its accept token's slot.
    listeners: Vec<Listener>,
    /// Accepting paused after running out of descriptors, since this time; resumed a tick later.
    accept_paused: Option<u64>,
    /// Connections beyond this are closed at once instead of being answered 503.
    hard_cap: usize,
    /// Wheel entries due this turn (kept for its capacity).
    due: Vec<crate::conn::wheel::Entry>,
    /// Slots whose receive ended for lack of buffers, to re-arm after this turn.
    starved: Vec<u32>,
    /// Connections being set up that have something for the kernel (a receive just armed, a
    /// handshake answer or TLS flight queued): handed over after the batch of completions that
    /// produced it instead of at the end of the turn (see [`Engine::hurry`]).
    setting_up: Vec<u32>,
    /// When the queued-bytes gauge was last refreshed (worker ms).
    queued_refreshed: u64,
    /// Set when shutting down: the time by which every connection must be gone.
    shutdown_deadline: Option<u64>,
    forced: bool,
    fatal: Option<io::Error>,
    /// Quiet-spell tracking for [`Handler::on_idle`]: whether a completion other than the tick
    /// came since the last tick, and whether any came since the last quiet spell began.
    quiet: Quiet,
    /// Client connects in flight and the wake-up timer.
    dial: dial::Dialer,
    /// TLS scratch buffers.
    tls: tls::Scratch,
}

/// What [`Engine::on_tick`] knows of the worker's recent traffic.
#[derive(Default)]
struct Quiet {
    /// A completion other than the tick came since the last tick.
    stirred: bool,
    /// Traffic came since the last quiet spell began.
    busy: bool,
}

/// One of a worker's listening sockets.
pub(crate) struct Listener {
    /// The socket (`None` once shutting down: its accept, cancelled, holds its own reference).
    pub fd: Option<OwnedFd>,
    /// Connections accepted here speak TLS.
    pub tls: bool,
    /// Its multishot accept is armed.
    pub armed: bool,
}

/// Completions handled between two looks at the connections being set up ([`Engine::hurry`]):
/// a new connection waits for at most this many other completions' work before its receive is
/// armed or its handshake answer sent, instead of the rest of a turn that may hold thousands.
const BATCH: usize = 128;

/// A worker: its engine and its receive buffers.
struct Worker<'r, H: Handler> {
    bufs: &'r mut Buffers,
    eng: Engine<'r, H>,
}

impl<H: Handler> Worker<'_, H> {
    /// Routes one completion.
    fn handle(&mut self, cqe: Cqe) {
        let Some(token) = cqe.token else {
            error!(result = cqe.result, "completion with unknown user data");
            return;
        };
        if token.op == Op::Tick {
            self.eng.on_tick();
        } else {
            self.eng.quiet.stirred = true;
        }
        match token.op {
            Op::Recv => self.on_recv(token, cqe),
            Op::Send => self.eng.on_send(token, cqe.send()),
            Op::Accept => self.eng.on_accept(cqe),
            Op::Tick => self.eng.arm_tick(),
            Op::Wake => self.eng.on_wake(cqe.more()),
            Op::Cancel => {}
            Op::Connect => self.eng.on_connect(token, cqe.result),
            Op::Wakeup => self.eng.on_wakeup(token.generation),
            Op::Woken => self.eng.woken(),
            Op::Posted => self.eng.on_posted(token.slot, cqe.result),
        }
    }

    /// Whether the loop is done: shutting down and every connection (and the accept) is gone.
    fn finished(&self) -> bool {
        self.eng.shutdown_deadline.is_some()
            && self.eng.core.slab.live() == 0
            && self.eng.listeners.iter().all(|l| !l.armed)
    }

    /// Runs the loop until shutdown (or a fatal ring error).
    fn run(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        ready: impl FnOnce(),
    ) -> Result<(), EngineError> {
        let result = self.serve(cq, ready);
        // Subscribers of this worker stop counting, so publishers stop queueing for it. Output
        // queues with sends in the air are leaked when the slab drops (see `ring::Flight`).
        self.eng.core.pubsub.detach();
        result
    }

    fn serve(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        ready: impl FnOnce(),
    ) -> Result<(), EngineError> {
        self.eng.arm_wake();
        self.eng.arm_tick();
        self.eng.arm_accept();
        self.eng
            .ring
            .submit()
            .map_err(|e| EngineError::io("arming the listener", e))?;
        // The first heartbeat: the worker is serving from here on (a probe right after the ready
        // line must not find it stalled before its first turn ends).
        self.eng.end_turn(sys::monotonic());
        ready();
        self.eng.start_client();
        let mut batch: Vec<Cqe> = Vec::with_capacity(1024);
        let mut forced_at: Option<Instant> = None;
        loop {
            self.eng
                .ring
                .submit_and_wait(1)
                .map_err(|e| EngineError::io("waiting for completions", e))?;
            // The turn's time: every completion handled below was produced before it (with
            // DEFER_TASKRUN completions are produced only inside that wait).
            let woke = sys::monotonic();
            let now = self.eng.clock.ms_at(woke);
            self.eng.core.slab.set_now(now);
            loop {
                Cqe::drain(cq, &mut batch, BATCH);
                if batch.is_empty() {
                    break;
                }
                for cqe in batch.drain(..) {
                    self.handle(cqe);
                }
                self.eng.post_wakes();
                self.eng.hurry();
            }
            debug_assert_eq!(
                self.bufs.out_count(),
                0,
                "every receive buffer is back in the pool"
            );
            self.bufs.refill();
            self.eng.tick();
            self.eng.flush();
            self.eng.post_wakes();
            self.eng.end_turn(woke);
            if let Some(e) = self.eng.fatal.take().or_else(|| self.eng.ring.take_fatal()) {
                return Err(EngineError::io("submitting to the ring", e));
            }
            if self.finished() {
                break;
            }
            if self.eng.forced {
                // Aborted connections complete their operations promptly; do not wait forever.
                let at = *forced_at.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_secs(1) {
                    warn!(
                        worker = self.eng.index,
                        live = self.eng.core.slab.live(),
                        "exiting with operations in flight"
                    );
                    break;
                }
            }
        }
        Ok(())
    }
}

impl<H: Handler> Engine<'_, H> {
    /// Hands what connections being set up queued to the kernel now, mid-turn: their sends
    /// start and the ring is submitted (the receive armed at accept goes with it). Under full
    /// load a turn handles thousands of completions; a new connection whose accept, request and
    /// 101 each waited for a turn's end took several turns to upgrade (milliseconds), where an
    /// epoll server answers within one iteration. Established connections keep one send per
    /// turn (corking); this costs one extra `io_uring_enter` per batch that set up connections.
    fn hurry(&mut self) {
        if self.setting_up.is_empty() {
            return;
        }
        let mut slots = std::mem::take(&mut self.setting_up);
        for slot in slots.drain(..) {
            self.send_queued(slot);
        }
        self.setting_up = slots;
        if let Err(e) = self.ring.submit() {
            self.fatal.get_or_insert(e);
        }
    }

    /// The end of a loop turn that woke at `woke` (`CLOCK_MONOTONIC`): its duration, the ring's
    /// counts and the heartbeat go to the worker's counters.
    fn end_turn(&mut self, woke: Duration) {
        let end = sys::monotonic();
        let stats = &self.core.slab.stats;
        stats
            .loop_turn
            .observe_us(end.saturating_sub(woke).as_micros() as u64);
        let counts = self.ring.counts();
        stats.sqes_submitted.set(counts.sqes);
        stats.enters.set(counts.enters);
        stats.heartbeat_ms.set(end.as_millis() as u64);
    }

    /// Arms the multishot poll on the worker's wake-up eventfd.
    fn arm_wake(&mut self) {
        let fd = self.shared.wakers[self.index].as_fd();
        self.ring.poll_multi(fd, Token::worker(Op::Wake));
    }

    /// Arms the tick timer for the next tick boundary (absolute, so the wheel is never more than
    /// one tick late however long the turn took).
    /// The tick fired: a whole tick without other completions after some traffic starts a quiet
    /// spell, which the handler hears of once ([`Handler::on_idle`]).
    fn on_tick(&mut self) {
        let q = &mut self.quiet;
        if q.stirred {
            q.stirred = false;
            q.busy = true;
        } else if q.busy {
            q.busy = false;
            self.call_ctx(|h, ctx| h.on_idle(ctx));
        }
    }

    fn arm_tick(&mut self) {
        use crate::conn::wheel::TICK_MS;
        let next = (self.clock.now_ms() / TICK_MS + 1) * TICK_MS;
        let at = self.clock.absolute(next);
        self.ring.timeout(Clock::Tick, at, Token::worker(Op::Tick));
    }

    /// The worker's eventfd was written: publications arrived, or shutdown was requested.
    fn on_wake(&mut self, more: bool) {
        sys::drain_eventfd(self.shared.wakers[self.index].as_fd());
        self.woken();
        if !more {
            self.arm_wake();
        }
    }

    /// The worker was woken (eventfd or ring message): publications arrived, or shutdown was
    /// requested.
    fn woken(&mut self) {
        let core = &mut self.core;
        core.pubsub.drain_inbox(&mut core.slab);
        self.deliver_closes();
        match self.shared.level.load(Ordering::Acquire) {
            0 => {}
            1 => self.begin_shutdown(),
            _ => self.force_close(),
        }
    }

    /// Wakes the workers whose inboxes this worker's publications made non-empty: through their
    /// rings (`IORING_OP_MSG_RING`, submitted at once), or the eventfd of one without a ring
    /// (not yet running, or exited). Called after each batch of completions and at the end of the
    /// turn, so a wake-up waits for at most one batch's work.
    fn post_wakes(&mut self) {
        let Some(wakes) = self.core.pubsub.wakes() else {
            return;
        };
        for w in wakes.drain(..) {
            let ring = self.shared.rings[w]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match ring.as_ref() {
                Some(fd) => self.ring.msg_ring(
                    fd.as_fd(),
                    Token::worker(Op::Woken),
                    Token::new(Op::Posted, w as u32, 0),
                ),
                None => poke(self.shared.wakers[w].as_fd()),
            }
        }
    }

    /// A wake-up posted to worker `target`'s ring completed with `result`: if it failed (the
    /// target's ring is gone or full), the worker is woken through its eventfd instead.
    fn on_posted(&mut self, target: u32, result: i32) {
        if result >= 0 {
            return;
        }
        debug!(
            worker = self.index,
            target, result, "ring wake-up failed; writing the eventfd"
        );
        if let Some(fd) = self.shared.wakers.get(target as usize) {
            poke(fd.as_fd());
        }
    }
}

/// Runs worker `index` on the calling thread until shutdown. `ready` is called once the listener is
/// armed; errors before that are returned without calling it.
pub(crate) fn run<H: Handler>(
    index: usize,
    cfg: &Config,
    listeners: Vec<Listener>,
    shared: &Shared,
    handler: H,
    ready: impl FnOnce(),
) -> Result<(), EngineError> {
    let mut ring = Ring::new(cfg.ring_entries, cfg.no_sq_array)?;
    if ring.mode() != TaskRun::Deferred {
        info!(
            worker = index,
            mode = ?ring.mode(),
            "DEFER_TASKRUN unavailable; using a fallback"
        );
    }
    if cfg.no_sq_array && !ring.no_sq_array() {
        info!(
            worker = index,
            "IORING_SETUP_NO_SQARRAY unavailable; keeping the index array"
        );
    }
    if cfg.skip_cancel_completions && !ring.skip_cancel_completions(true) {
        info!(
            worker = index,
            "IOSQE_CQE_SKIP_SUCCESS unavailable; cancels complete"
        );
    }
    if !cfg.batch_wait.is_zero() && !ring.batch_wait(cfg.batch_wait) {
        info!(
            worker = index,
            "IORING_FEAT_MIN_TIMEOUT unavailable; waking at the first completion"
        );
    }
    if cfg.send_zc_threshold > 0 && !ring.zero_copy_sends(cfg.send_zc_threshold) {
        info!(
            worker = index,
            "IORING_OP_SEND_ZC unavailable; copying every send"
        );
    }
    // Incremental consumption where asked for and the kernel has it (a kernel without it refuses
    // the throwaway registration with EINVAL).
    let incremental = cfg.incremental_buffers && ring.try_incremental(1).is_ok();
    if cfg.incremental_buffers && !incremental {
        info!(
            worker = index,
            "incremental buffer consumption unavailable; one buffer per receive"
        );
    }
    let bufs = Buffers::new(
        0,
        cfg.buffer_count,
        cfg.buffer_size,
        incremental,
        shared.recv_bundles,
    )
    .map_err(|e| EngineError::io("mapping the receive buffers", e))?;
    ring.register_buffers(bufs)
        .map_err(|e| EngineError::io("registering the provided buffer ring", e))?;
    let hard_cap = cfg.max_connections + cfg.max_connections / 8 + 64;
    if cfg.direct_descriptors {
        // One entry per slot a server connection can take (client connections beyond it, and
        // every slot past a table capped by RLIMIT_NOFILE, keep their descriptors).
        let want = u32::try_from(hard_cap).unwrap_or(u32::MAX);
        match ring.register_direct(want) {
            Ok(n) if n < want => {
                info!(
                    worker = index,
                    entries = n,
                    "direct descriptors for the first {n} slots"
                );
            }
            Ok(_) => {}
            Err(e) => {
                info!(worker = index, error = %e, "direct descriptors unavailable; sockets used by descriptor");
            }
        }
    }
    if shared.msg_ring {
        match ring.try_clone_fd() {
            Ok(fd) => {
                *shared.rings[index]
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(fd);
            }
            Err(e) => {
                debug!(worker = index, error = %e, "duplicating the ring fd failed; woken by eventfd");
            }
        }
    } else if cfg.msg_ring {
        info!(
            worker = index,
            "IORING_OP_MSG_RING unavailable; workers wake each other by eventfd"
        );
    }
    let Some((mut submit, bufs, mut cq)) = ring.split() else {
        return Err(EngineError::io(
            "splitting the ring",
            io::Error::other("no receive buffers registered"),
        ));
    };
    if let Err(e) = submit.register_ring_fd() {
        debug!(worker = index, error = %e, "registering the ring fd failed; using the plain fd");
    }
    let mut slab = Slab::new(cfg.slab_config());
    slab.stats = Arc::clone(&shared.ops.workers[index]);
    slab.lending = Some(bufs.lending());
    let mut local = Local::new(shared.hub.clone(), index);
    if shared.msg_ring {
        local.wake_through_ring();
    }
    let core = Core::new(slab, local);
    let mut worker = Worker {
        bufs,
        eng: Engine {
            ring: submit,
            handler,
            core,
            policy: Policy::new(&cfg.policy_config(), index),
            cfg,
            shared,
            index,
            clock: WorkerClock {
                origin: sys::monotonic(),
            },
            listeners,
            accept_paused: None,
            hard_cap,
            due: Vec::new(),
            starved: Vec::new(),
            setting_up: Vec::new(),
            queued_refreshed: 0,
            shutdown_deadline: None,
            forced: false,
            fatal: None,
            quiet: Quiet::default(),
            dial: dial::Dialer::default(),
            tls: tls::Scratch::default(),
        },
    };
    let result = worker.run(&mut cq, ready);
    // Closed before the ring is dropped: nothing posts to it from here on.
    drop(
        shared.rings[index]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
    result
}
