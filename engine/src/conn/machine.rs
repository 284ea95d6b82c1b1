//! The connection machine: one connection's life as a sans-IO state machine.
//!
//! It holds the phase, the keep-alive and close-handshake flags and the time stamps, and decides;
//! it does no I/O, reads no clock and calls no handler. The worker feeds it what happened (accepted,
//! upgraded, bytes received, a send completed, the peer's FIN, a timer check, a close asked for)
//! with the current [`Time`], and does what the answer says (send a ping, shut the write side,
//! abort, close with a code, arm a timer check so many milliseconds from now, pause or resume
//! reading). Every timer and the close handshake are unit-tested here on a virtual clock.
//!
//! **Phases.** `Free` → `Handshaking` (accepted, or dialing as a client) → `Open` (upgraded) →
//! `Closing` (a final response or Close frame is queued: once everything queued is written the
//! server shuts its write side, then reads until the peer's FIN so that a peer still sending does
//! not get a RST that could destroy the Close it has not read yet; a client waits for the server to
//! close first, RFC 6455 §7.1.1) → `Closed` (closed for the engine; the slot waits for its last
//! in-flight completions) → `Free`.
//!
//! **Timers.** Handshake timeout from accept (or the start of a connect); idle timeout and
//! keep-alive ping from the last byte received; pong deadline from the ping; message timeout from
//! the first byte of an unfinished frame or message; close timeout from entering `Closing`. A
//! deadline is never computed early: stamps are the loop turn's time (the data arrived no later),
//! and a deadline is due when `now - stamp >= timeout`. The worker checks a connection when
//! [`Machine::next_check`] says; checking early is harmless (the answer is "later").
//!
//! **Backpressure.** [`Machine::admit_send`], [`Machine::queued`] and [`Machine::written`] decide
//! what a send does when the connection's queued output is over `max_backpressure` under each
//! [`BackpressurePolicy`].

use super::time::Time;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// The slot is unused.
    #[default]
    Free,
    /// Accepted and waiting for a complete request head; or, for a client, connecting and waiting
    /// for the `101`.
    Handshaking,
    /// Upgraded; frames flow both ways.
    Open,
    /// A final response or Close frame is queued; see the module documentation.
    Closing,
    /// Closed for the engine: the socket is shut down and the slot waits for its last in-flight
    /// completions before it is freed.
    Closed,
}

/// What happens when a send finds the connection's queued output already over `max_backpressure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackpressurePolicy {
    /// Drop the message and report [`SendResult::Dropped`](crate::SendResult::Dropped).
    #[default]
    Drop,
    /// Drop the message and close the connection with 1008 (policy violation): a slow consumer.
    Close,
    /// Never drop: queue the message, and stop reading from the connection while its queued output
    /// is over the limit, so TCP flow control pushes back on the peer; reading resumes (and
    /// `on_drain` runs) once the queue falls back under the limit. For request/response and echo
    /// traffic, where every message must be answered. The queue can overshoot the limit by what the
    /// kernel had already received when reading stopped (at most the worker's receive buffers).
    Pause,
}

/// The timers, in milliseconds. Zero disables the ones that may be disabled (`idle`, `ping`,
/// `message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub handshake: u32,
    pub idle: u32,
    pub ping: u32,
    pub pong: u32,
    pub close: u32,
    pub message: u32,
}

/// The backpressure limit and what to do over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backpressure {
    pub max: usize,
    pub policy: BackpressurePolicy,
}

/// Flag bits.
mod flag {
    /// A keep-alive ping is outstanding.
    pub const PING_OUT: u8 = 1;
    /// A send reported backpressure; `on_drain` is due when the queue falls back under the limit.
    pub const OVER_LIMIT: u8 = 2;
    /// Reading is paused (by the handler, or under `BackpressurePolicy::Pause`).
    pub const PAUSED: u8 = 4;
    /// The write side is shut down (`Closing`).
    pub const SHUT_WR: u8 = 8;
    /// The peer's FIN was received (`Closing`).
    pub const PEER_EOF: u8 = 16;
    /// Opened by this side: frames are masked, and it waits for the server to close TCP first.
    pub const CLIENT: u8 = 32;
    /// A frame or message is partly received (its timeout runs from `message_since`).
    pub const MESSAGE: u8 = 64;
}

/// A timer that expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No complete upgrade (or `101`) within `handshake`: abort.
    Handshake,
    /// Nothing received for `idle`: close with 1001.
    Idle,
    /// Nothing received for `pong` after a keep-alive ping: abort (half-open TCP).
    Pong,
    /// An unfinished frame or message older than `message`: close with 1008.
    Message,
    /// The close handshake or final response not done within `close`: abort.
    Close,
}

/// The answer to a timer check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing due; check again in this many milliseconds (`None`: no timer armed).
    Later(Option<u32>),
    /// Send a keep-alive ping now (the pong deadline starts); check again in this many ms.
    Ping(u32),
    /// A timer expired; the phase is left to the action the caller takes.
    Expired(Expired),
}

/// What a send may do, decided before it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Queue it.
    Queue,
    /// Drop it (not open, or over the limit under [`BackpressurePolicy::Drop`]).
    Drop,
    /// Drop it and close the connection with 1008 (over the limit under
    /// [`BackpressurePolicy::Close`]).
    DropAndClose,
}

/// What the closing handshake needs now (see [`Machine::close_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CloseStep {
    /// Shut the write side down (everything queued is written).
    pub shut_write: bool,
    /// Done: close the connection.
    pub done: bool,
}

/// One connection's machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Machine {
    phase: Phase,
    flags: u8,
    /// `Handshaking`: when it started. `Open`: when something was last received. `Closing`: when
    /// closing started.
    since: Time,
    /// When the outstanding keep-alive ping was sent.
    ping_sent: Time,
    /// When the unfinished frame or message began.
    message_since: Time,
}

impl Machine {
    /// A connection accepted at `now` (`client`: being dialed at `now`), waiting for its handshake.
    pub fn start(now: Time, client: bool) -> Self {
        Self {
            phase: Phase::Handshaking,
            flags: if client { flag::CLIENT } else { 0 },
            since: now,
            ..Self::default()
        }
    }

    fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether this side opened the connection.
    pub fn is_client(&self) -> bool {
        self.has(flag::CLIENT)
    }

    /// Whether the connection is open (sends are accepted).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection is live: handshaking, open or closing.
    pub fn is_live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshaking | Phase::Open | Phase::Closing
        )
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.has(flag::PAUSED)
    }

    /// Whether a receive should be armed: live and not paused.
    pub fn wants_recv(&self) -> bool {
        self.is_live() && !self.is_paused()
    }

    /// The handshake completed at `now`: the connection is open. Returns how long the handshake
    /// took (ms since the accept or the start of the connect), if it was handshaking.
    pub fn open(&mut self, now: Time) -> Option<u32> {
        if self.phase != Phase::Handshaking {
            return None;
        }
        let took = now.since(self.since);
        self.phase = Phase::Open;
        self.since = now;
        Some(took)
    }

    /// Bytes were received at `now`. On an open connection this is activity: the idle and ping
    /// timers restart and an outstanding keep-alive ping counts as answered.
    pub fn received(&mut self, now: Time) {
        if self.phase == Phase::Open {
            self.since = now;
            self.flags &= !flag::PING_OUT;
        }
    }

    /// After a receive was decoded at `now`: `busy`, a frame or message is left unfinished;
    /// `delivered`, a data message was delivered from this receive. Returns whether a message
    /// timeout started (the caller makes sure the connection is checked by then).
    pub fn message_progress(&mut self, now: Time, busy: bool, delivered: bool) -> bool {
        if !busy {
            self.flags &= !flag::MESSAGE;
            return false;
        }
        // Unfinished and new (nothing was in progress, or a message completed in this receive and
        // another began): its time runs from now.
        if !self.has(flag::MESSAGE) || delivered {
            self.flags |= flag::MESSAGE;
            self.message_since = now;
            return true;
        }
        false
    }

    /// Enters `Closing` at `now` (a final response or Close frame was just queued); no-op unless
    /// handshaking or open. Returns true if reading was paused and must resume (closing reads until
    /// the peer's FIN).
    pub fn begin_closing(&mut self, now: Time) -> bool {
        if !matches!(self.phase, Phase::Handshaking | Phase::Open) {
            return false;
        }
        let resume = self.has(flag::PAUSED);
        self.phase = Phase::Closing;
        self.since = now;
        self.flags &= !(flag::OVER_LIMIT | flag::PING_OUT | flag::PAUSED | flag::MESSAGE);
        resume
    }

    /// The peer's FIN (or a reset) arrived. Returns the closing step if the connection was
    /// closing; `None` if it was handshaking or open (the caller aborts it).
    pub fn peer_eof(&mut self, drained: bool) -> Option<CloseStep> {
        match self.phase {
            Phase::Closing => {
                self.flags |= flag::PEER_EOF;
                Some(self.close_progress(drained))
            }
            Phase::Handshaking | Phase::Open => None,
            Phase::Free | Phase::Closed => Some(CloseStep::default()),
        }
    }

    /// In `Closing`, with `drained` (everything queued is written and no send is in flight): what
    /// to do next. The server shuts its write side once; the connection is done once the peer's
    /// FIN is in too.
    pub fn close_progress(&mut self, drained: bool) -> CloseStep {
        if self.phase != Phase::Closing || !drained {
            return CloseStep::default();
        }
        let shut_write = !self.has(flag::SHUT_WR) && !self.is_client();
        if shut_write {
            self.flags |= flag::SHUT_WR;
        }
        CloseStep {
            shut_write,
            done: self.has(flag::PEER_EOF),
        }
    }

    /// Closes the connection for the engine now (abort, or the close handshake is done); returns
    /// the phase it was in (`Closed` or `Free` if it already was).
    pub fn close_now(&mut self) -> Phase {
        let was = self.phase;
        if self.phase != Phase::Free {
            self.phase = Phase::Closed;
        }
        was
    }

    /// Checks the timers at `now`.
    pub fn check(&mut self, now: Time, t: &Timeouts) -> Check {
        match self.phase {
            Phase::Handshaking => match now.until(self.since, t.handshake) {
                0 => Check::Expired(Expired::Handshake),
                left => Check::Later(Some(left)),
            },
            Phase::Closing => match now.until(self.since, t.close) {
                0 => Check::Expired(Expired::Close),
                left => Check::Later(Some(left)),
            },
            Phase::Open => {
                if self.has(flag::MESSAGE)
                    && t.message > 0
                    && now.until(self.message_since, t.message) == 0
                {
                    return Check::Expired(Expired::Message);
                }
                if t.idle > 0 && now.until(self.since, t.idle) == 0 {
                    return Check::Expired(Expired::Idle);
                }
                if self.has(flag::PING_OUT) && now.until(self.ping_sent, t.pong) == 0 {
                    return Check::Expired(Expired::Pong);
                }
                if !self.has(flag::PING_OUT) && t.ping > 0 && now.until(self.since, t.ping) == 0 {
                    self.flags |= flag::PING_OUT;
                    self.ping_sent = now;
                    return Check::Ping(self.open_next(now, t).unwrap_or(t.pong));
                }
                Check::Later(self.open_next(now, t))
            }
            Phase::Free | Phase::Closed => Check::Later(None),
        }
    }

    /// Milliseconds from `now` to the earliest deadline, if a timer is armed.
    pub fn next_check(&self, now: Time, t: &Timeouts) -> Option<u32> {
        match self.phase {
            Phase::Handshaking => Some(now.until(self.since, t.handshake)),
            Phase::Closing => Some(now.until(self.since, t.close)),
            Phase::Open => self.open_next(now, t),
            Phase::Free | Phase::Closed => None,
        }
    }

    fn open_next(&self, now: Time, t: &Timeouts) -> Option<u32> {
        let idle = (t.idle > 0).then(|| now.until(self.since, t.idle));
        let ping = if self.has(flag::PING_OUT) {
            Some(now.until(self.ping_sent, t.pong))
        } else {
            (t.ping > 0).then(|| now.until(self.since, t.ping))
        };
        let message = (self.has(flag::MESSAGE) && t.message > 0)
            .then(|| now.until(self.message_since, t.message));
        [idle, ping, message].into_iter().flatten().min()
    }

    /// Decides a data send on a connection with `buffered` bytes queued.
    pub fn admit_send(&self, buffered: usize, bp: &Backpressure) -> Admit {
        if self.phase != Phase::Open {
            return Admit::Drop;
        }
        if buffered <= bp.max {
            return Admit::Queue;
        }
        match bp.policy {
            BackpressurePolicy::Pause => Admit::Queue,
            BackpressurePolicy::Drop => Admit::Drop,
            BackpressurePolicy::Close => Admit::DropAndClose,
        }
    }

    /// A data send was queued, leaving `buffered` bytes queued. Returns `None` if within the limit,
    /// else `Some(pause)`: over the limit (the send reports backpressure), and `pause` if reading
    /// must stop now (under [`BackpressurePolicy::Pause`]).
    pub fn queued(&mut self, buffered: usize, bp: &Backpressure) -> Option<bool> {
        if buffered <= bp.max {
            return None;
        }
        self.flags |= flag::OVER_LIMIT;
        let pause = bp.policy == BackpressurePolicy::Pause && !self.has(flag::PAUSED);
        if pause {
            self.flags |= flag::PAUSED;
        }
        Some(pause)
    }

    /// A publication was queued, leaving `buffered` bytes queued: over `max`, `on_drain` becomes
    /// due once it drains (reading is never paused for what others publish).
    pub fn publication_queued(&mut self, buffered: usize, max: usize) {
        if buffered > max {
            self.flags |= flag::OVER_LIMIT;
        }
    }

    /// A send completed, leaving `buffered` bytes queued. Returns `None` unless the queue fell back
    /// within the limit after a send reported backpressure: then `Some(resume)`, `on_drain` is
    /// due, and `resume` if reading paused by [`BackpressurePolicy::Pause`] must restart.
    pub fn written(&mut self, buffered: usize, bp: &Backpressure) -> Option<bool> {
        if self.phase != Phase::Open || !self.has(flag::OVER_LIMIT) || buffered > bp.max {
            return None;
        }
        self.flags &= !flag::OVER_LIMIT;
        // Only a pause under backpressure ends here, not one the handler asked for.
        let resume = self.has(flag::PAUSED) && bp.policy == BackpressurePolicy::Pause;
        if resume {
            self.flags &= !flag::PAUSED;
        }
        Some(resume)
    }

    /// The handler pauses (`true`) or resumes reading; returns whether anything changed (only an
    /// open connection can be paused).
    pub fn set_paused(&mut self, paused: bool) -> bool {
        if self.phase != Phase::Open || self.has(flag::PAUSED) == paused {
            return false;
        }
        self.flags ^= flag::PAUSED;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        handshake: 10_000,
        idle: 120_000,
        ping: 30_000,
        pong: 30_000,
        close: 5_000,
        message: 30_000,
    };

    fn at(ms: u32) -> Time {
        Time(ms)
    }

    fn open_at(ms: u32) -> Machine {
        let mut m = Machine::start(at(0), false);
        let _ = m.open(at(ms));
        m
    }

    /// Checks `m` at every millisecond from `from` until something other than `Later` comes,
    /// returning when and what (a virtual clock run at the finest resolution).
    fn first_action(m: &mut Machine, from: u32, t: &Timeouts) -> (u32, Check) {
        for i in 0..10_000_000 {
            let ms = from.wrapping_add(i);
            match m.check(at(ms), t) {
                Check::Later(_) => {}
                other => return (ms, other),
            }
        }
        panic!("nothing happened");
    }

    #[test]
    fn the_handshake_timeout_fires_at_its_value_not_before() {
        let mut m = Machine::start(at(1_000), false);
        assert_eq!(m.next_check(at(1_000), &T), Some(10_000));
        assert_eq!(m.check(at(10_999), &T), Check::Later(Some(1)));
        assert_eq!(
            first_action(&mut m, 1_000, &T),
            (11_000, Check::Expired(Expired::Handshake))
        );
        // A client's connect and upgrade share the same timeout.
        let mut c = Machine::start(at(0), true);
        assert!(c.is_client());
        assert_eq!(
            first_action(&mut c, 0, &T),
            (10_000, Check::Expired(Expired::Handshake))
        );
    }

    #[test]
    fn the_idle_timeout_runs_from_the_last_byte_received() {
        let t = Timeouts { ping: 0, ..T };
        let mut m = open_at(500);
        m.received(at(60_000));
        assert_eq!(m.next_check(at(60_000), &t), Some(120_000));
        assert_eq!(
            first_action(&mut m, 60_000, &t),
            (180_000, Check::Expired(Expired::Idle))
        );
        let mut off = open_at(0);
        let none = Timeouts { idle: 0, ..t };
        assert_eq!(off.next_check(at(0), &none), None, "no timer armed");
        assert_eq!(off.check(at(1 << 30), &none), Check::Later(None));
    }

    #[test]
    fn a_ping_goes_out_after_silence_and_an_unanswered_one_aborts() {
        let mut m = open_at(0);
        let (when, what) = first_action(&mut m, 0, &T);
        assert_eq!(when, 30_000);
        assert_eq!(what, Check::Ping(30_000), "next: the pong deadline");
        // Unanswered: the pong deadline, not the idle timeout (at 120 s), ends it.
        assert_eq!(
            first_action(&mut m, 30_001, &T),
            (60_000, Check::Expired(Expired::Pong))
        );
    }

    #[test]
    fn any_byte_received_answers_the_ping() {
        let mut m = open_at(0);
        assert_eq!(m.check(at(30_000), &T), Check::Ping(30_000));
        m.received(at(45_000));
        assert_eq!(m.next_check(at(45_000), &T), Some(30_000), "the next ping");
        assert_eq!(
            first_action(&mut m, 45_000, &T),
            (75_000, Check::Ping(30_000))
        );
    }

    #[test]
    fn the_idle_timeout_wins_when_it_is_shorter_than_ping_and_pong() {
        let t = Timeouts { idle: 40_000, ..T };
        let mut m = open_at(0);
        assert_eq!(m.check(at(30_000), &t), Check::Ping(10_000), "idle is next");
        assert_eq!(
            first_action(&mut m, 30_000, &t),
            (40_000, Check::Expired(Expired::Idle))
        );
    }

    #[test]
    fn an_unfinished_message_times_out_from_its_first_byte() {
        let t = Timeouts {
            ping: 0,
            idle: 0,
            ..T
        };
        let mut m = open_at(0);
        assert!(
            m.message_progress(at(1_000), true, false),
            "a message began"
        );
        m.received(at(20_000));
        assert!(
            !m.message_progress(at(20_000), true, false),
            "the same one goes on"
        );
        assert_eq!(m.next_check(at(20_000), &t), Some(11_000));
        assert_eq!(
            first_action(&mut m, 20_000, &t),
            (31_000, Check::Expired(Expired::Message))
        );
        // A message delivered and a new one begun in the same receive: the new one's time.
        let mut m = open_at(0);
        m.message_progress(at(1_000), true, false);
        assert!(m.message_progress(at(25_000), true, true));
        assert_eq!(m.next_check(at(25_000), &t), Some(30_000));
        // Finished: no timer.
        assert!(!m.message_progress(at(26_000), false, true));
        assert_eq!(m.next_check(at(26_000), &t), None);
    }

    #[test]
    fn closing_is_bounded_by_the_close_timeout() {
        let mut m = open_at(0);
        m.begin_closing(at(7_000));
        assert_eq!(m.phase(), Phase::Closing);
        assert_eq!(
            first_action(&mut m, 7_000, &T),
            (12_000, Check::Expired(Expired::Close))
        );
    }

    #[test]
    fn timers_survive_the_clock_wrapping() {
        let start = u32::MAX - 2_000;
        let mut m = Machine::start(at(start), false);
        let _ = m.open(at(start));
        let t = Timeouts { ping: 0, ..T };
        let (when, what) = first_action(&mut m, start, &t);
        assert_eq!(
            (when, what),
            (start.wrapping_add(120_000), Check::Expired(Expired::Idle))
        );
    }

    #[test]
    fn the_server_shuts_its_write_side_then_waits_for_the_fin() {
        let mut m = open_at(0);
        assert!(!m.begin_closing(at(1)));
        assert_eq!(m.close_progress(false), CloseStep::default(), "not drained");
        assert_eq!(
            m.close_progress(true),
            CloseStep {
                shut_write: true,
                done: false
            }
        );
        assert_eq!(m.close_progress(true), CloseStep::default(), "once");
        assert_eq!(
            m.peer_eof(true),
            Some(CloseStep {
                shut_write: false,
                done: true
            })
        );
    }

    #[test]
    fn a_fin_before_the_queue_drains_waits_for_the_drain() {
        let mut m = open_at(0);
        m.begin_closing(at(1));
        assert_eq!(m.peer_eof(false), Some(CloseStep::default()));
        assert_eq!(
            m.close_progress(true),
            CloseStep {
                shut_write: true,
                done: true
            }
        );
    }

    #[test]
    fn a_client_never_shuts_its_write_side_first() {
        let mut m = Machine::start(at(0), true);
        let _ = m.open(at(1));
        m.begin_closing(at(2));
        assert_eq!(m.close_progress(true), CloseStep::default());
        assert_eq!(
            m.peer_eof(true),
            Some(CloseStep {
                shut_write: false,
                done: true
            })
        );
    }

    #[test]
    fn a_fin_while_open_or_handshaking_is_an_abort() {
        assert_eq!(open_at(0).peer_eof(true), None);
        assert_eq!(Machine::start(at(0), false).peer_eof(true), None);
        let mut m = open_at(0);
        assert_eq!(m.close_now(), Phase::Open);
        assert_eq!(m.phase(), Phase::Closed);
        assert!(!m.wants_recv());
    }

    fn bp(policy: BackpressurePolicy) -> Backpressure {
        Backpressure { max: 100, policy }
    }

    #[test]
    fn over_the_limit_each_policy_decides() {
        let m = open_at(0);
        for (policy, over) in [
            (BackpressurePolicy::Drop, Admit::Drop),
            (BackpressurePolicy::Close, Admit::DropAndClose),
            (BackpressurePolicy::Pause, Admit::Queue),
        ] {
            assert_eq!(m.admit_send(100, &bp(policy)), Admit::Queue, "at the limit");
            assert_eq!(m.admit_send(101, &bp(policy)), over, "{policy:?}");
        }
        let mut closing = open_at(0);
        closing.begin_closing(at(1));
        assert_eq!(
            closing.admit_send(0, &bp(BackpressurePolicy::Drop)),
            Admit::Drop
        );
    }

    #[test]
    fn pause_policy_stops_reading_until_the_queue_drains() {
        let b = bp(BackpressurePolicy::Pause);
        let mut m = open_at(0);
        assert_eq!(m.queued(50, &b), None);
        assert_eq!(m.queued(150, &b), Some(true), "over: pause now");
        assert_eq!(m.queued(250, &b), Some(false), "already paused");
        assert!(!m.wants_recv());
        assert_eq!(m.written(120, &b), None, "still over");
        assert_eq!(
            m.written(80, &b),
            Some(true),
            "drained: resume and on_drain"
        );
        assert!(m.wants_recv());
        assert_eq!(m.written(10, &b), None, "on_drain once");
    }

    #[test]
    fn a_handler_pause_outlives_a_drain() {
        let b = bp(BackpressurePolicy::Drop);
        let mut m = open_at(0);
        assert!(m.set_paused(true));
        assert!(!m.set_paused(true), "no change");
        assert_eq!(m.queued(150, &b), Some(false));
        assert_eq!(
            m.written(0, &b),
            Some(false),
            "on_drain, but reading stays paused"
        );
        assert!(m.is_paused());
        assert!(m.begin_closing(at(5)), "closing resumes reading");
        assert!(m.wants_recv());
        assert!(!m.set_paused(true), "only an open connection pauses");
    }
}
