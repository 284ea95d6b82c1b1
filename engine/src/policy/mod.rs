//! Admission and abuse limits: who may open a WebSocket (origin allowlist, subprotocol requirement,
//! connections over all workers and per client address) and how much an open connection may ask of
//! the server (message rate, ping rate, assembly memory over all connections).
//!
//! The policy decides; the worker acts on the decision (answers the status, closes with the code).
//! The worker calls in at accept, at the upgrade, per decoded event, after each receive and at
//! release; every refusal or limit hit is logged here through the worker's [`LogLimit`] with the
//! number of lines it suppressed, and carries a stable reason.
//!
//! Per-connection state lives in the connection's slot: two `u64` rate buckets, and the counted
//! client address in its extras when a per-address limit is set.

mod origin;
pub(crate) mod rate;

pub(crate) use origin::is_origin_pattern;
pub(crate) use rate::LogLimit;

use crate::conn::Slot;
use crate::stats::{Label, Rejection};
use origin::OriginRule;
use rate::Rate;
use ringws_protocol::Event;
use ringws_protocol::handshake::Request;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tracing::warn;

/// The peer address of a connected socket, if it still has one.
pub(crate) fn peer_addr<S>(slot: &Slot<S>) -> Option<SocketAddr> {
    let fd = slot.socket()?;
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// The settings of the limits (from the server's configuration).
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyConfig {
    /// `scheme://host[:port]` or `scheme://*.domain[:port]` entries (validated).
    pub allowed_origins: Vec<String>,
    pub allow_missing_origin: bool,
    /// The server's subprotocols, most preferred first.
    pub subprotocols: Vec<String>,
    pub require_subprotocol: bool,
    /// 0: none.
    pub max_total_connections: usize,
    /// 0: none.
    pub max_connections_per_ip: usize,
    /// 0: none.
    pub max_assembly_memory: usize,
    /// Per second; 0: none.
    pub message_rate: u32,
    pub message_burst: u32,
    /// Per second; 0: none.
    pub ping_rate: u32,
    pub ping_burst: u32,
}

/// Counters shared by every worker of a server.
pub(crate) struct Counters {
    /// Accepted (server-side) connections held, over all workers; counted only when
    /// `max_total_connections` is set.
    total: AtomicUsize,
    /// Bytes held in message assembly buffers, over all workers; counted only when
    /// `max_assembly_memory` is set.
    assembly: AtomicUsize,
    /// Connections per client address, in shards by address hash so workers rarely contend; an
    /// address is removed when its count falls to zero, so the maps hold only live clients.
    per_ip: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

/// Shards of the per-address map.
const IP_SHARDS: usize = 16;

impl Counters {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self {
            total: AtomicUsize::new(0),
            assembly: AtomicUsize::new(0),
            per_ip: (0..IP_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The shard of `ip`: the same for every worker (a fixed-key hash; each shard's map hashes with
    /// random keys).
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(ip) as usize;
        &self.per_ip[h % IP_SHARDS]
    }

    /// Counts one more connection from `ip`; returns the new count.
    fn add_ip(&self, ip: IpAddr) -> u32 {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        *n += 1;
        *n
    }

    /// Counts one connection from `ip` less.
    fn remove_ip(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// An upgrade the policy refuses: the status to answer with and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub body: String,
    /// The reason, as the rejection counter and the log line carry it.
    pub reason: Rejection,
}

/// What to do with a decoded event (see [`Policy::admit_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it.
    Deliver,
    /// Neither answer nor deliver it (a ping over the rate).
    Ignore,
    /// Close the connection with 1008 and this reason.
    Close(&'static str),
}

/// The limits of one worker.
pub(crate) struct Policy {
    worker: usize,
    origins: Vec<OriginRule>,
    allow_missing_origin: bool,
    subprotocols: Vec<String>,
    require_subprotocol: bool,
    max_total: usize,
    max_per_ip: usize,
    max_assembly: usize,
    messages: Option<Rate>,
    pings: Option<Rate>,
    epoch: Instant,
    /// Microseconds since `epoch`, read once per loop turn when a rate needs it.
    clock: Option<u64>,
    /// The worker's limit on log lines about peers (violations, refusals, limit hits).
    pub log: LogLimit,
}

impl Policy {
    /// The limits of `cfg` for worker `worker` (the settings are validated).
    pub fn new(cfg: &PolicyConfig, worker: usize) -> Self {
        Self {
            worker,
            origins: cfg
                .allowed_origins
                .iter()
                .filter_map(|p| OriginRule::parse(p))
                .collect(),
            allow_missing_origin: cfg.allow_missing_origin,
            subprotocols: cfg.subprotocols.clone(),
            require_subprotocol: cfg.require_subprotocol,
            max_total: cfg.max_total_connections,
            max_per_ip: cfg.max_connections_per_ip,
            max_assembly: cfg.max_assembly_memory,
            messages: Rate::new(cfg.message_rate, cfg.message_burst, 1_000_000),
            pings: Rate::new(cfg.ping_rate, cfg.ping_burst, 1_000_000),
            epoch: Instant::now(),
            clock: None,
            log: LogLimit::new(),
        }
    }

    /// A new loop turn: the rate clock is read again when next needed.
    pub fn new_turn(&mut self) {
        self.clock = None;
    }

    fn now_us(&mut self) -> u64 {
        let epoch = self.epoch;
        *self
            .clock
            .get_or_insert_with(|| epoch.elapsed().as_micros() as u64)
    }

    /// `Some((peer, suppressed))` if a security event may be logged at `now_ms`, with the peer of
    /// `slot`.
    fn logged<S>(&mut self, now_ms: u64, slot: &Slot<S>) -> Option<(Option<SocketAddr>, u64)> {
        self.log
            .admit(now_ms)
            .map(|suppressed| (peer_addr(slot), suppressed))
    }

    /// Counts a just-accepted connection `slot` and decides whether to refuse it before reading its
    /// request: 503 over the per-worker (`over_worker`) or the global limit, 429 over the
    /// per-address limit, with the reason. Refused connections stay counted until released, like
    /// every socket the server holds.
    pub fn admit<S>(
        &mut self,
        counters: &Counters,
        now_ms: u64,
        slot: &mut Slot<S>,
        over_worker: bool,
    ) -> Option<(u16, Rejection)> {
        let total = if self.max_total > 0 {
            counters.total.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let mut per_ip = 0;
        if self.max_per_ip > 0
            && let Some(addr) = peer_addr(slot)
        {
            let canonical = addr.ip().to_canonical();
            slot.extra().counted_ip = Some(canonical);
            per_ip = counters.add_ip(canonical) as usize;
        }
        let (status, reason, what) = if over_worker {
            (503, Rejection::Limit, "max_connections (per worker)")
        } else if self.max_total > 0 && total > self.max_total {
            (503, Rejection::Limit, "max_total_connections")
        } else if self.max_per_ip > 0 && per_ip > self.max_per_ip {
            (429, Rejection::PerIp, "max_connections_per_ip")
        } else {
            return None;
        };
        if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
            warn!(
                worker = self.worker,
                ?peer,
                status,
                reason = reason.name(),
                suppressed,
                "connection refused: over {what}"
            );
        }
        Some((status, reason))
    }

    /// Checks an upgrade request against the origin allowlist and the subprotocol requirement,
    /// before `on_upgrade` runs. `Ok` carries the server's preferred subprotocol among those the
    /// client offered, `Err` the refusal to send: 403 for an origin not allowed, 400 when
    /// `require_subprotocol` is set and no offered subprotocol is supported.
    pub fn check_upgrade<S>(
        &mut self,
        now_ms: u64,
        slot: &Slot<S>,
        req: &Request<'_>,
    ) -> Result<Option<&str>, Refusal> {
        if !self.origins.is_empty() {
            let allowed = match req.origin() {
                Some(origin) => self.origins.iter().any(|r| r.matches(origin)),
                None => self.allow_missing_origin,
            };
            if !allowed {
                if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
                    warn!(
                        worker = self.worker,
                        ?peer,
                        origin = req.origin(),
                        reason = Rejection::Origin.name(),
                        suppressed,
                        "upgrade refused: origin not allowed (403)"
                    );
                }
                return Err(Refusal {
                    status: 403,
                    body: "origin not allowed".into(),
                    reason: Rejection::Origin,
                });
            }
        }
        let chosen = self
            .subprotocols
            .iter()
            .position(|p| req.subprotocols().any(|o| o == p.as_str()));
        if chosen.is_none() && self.require_subprotocol {
            if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
                warn!(
                    worker = self.worker,
                    ?peer,
                    reason = Rejection::Subprotocol.name(),
                    suppressed,
                    "upgrade refused: no supported subprotocol offered (400)"
                );
            }
            let supported = self.subprotocols.join(", ");
            return Err(Refusal {
                status: 400,
                body: format!("no supported subprotocol offered; this server speaks: {supported}"),
                reason: Rejection::Subprotocol,
            });
        }
        Ok(chosen.map(|i| self.subprotocols[i].as_str()))
    }

    /// Applies the message and ping rates to a decoded event of `slot`. A message over the rate
    /// closes the connection with 1008; a ping over the rate is neither answered nor delivered, and
    /// once the excess reaches another burst (a sustained flood) the connection is closed with
    /// 1008.
    pub fn admit_event<S>(
        &mut self,
        now_ms: u64,
        slot: &mut Slot<S>,
        event: &Event<'_>,
    ) -> Verdict {
        let (rate, what) = match event {
            Event::Text(_) | Event::Binary(_) => match self.messages {
                Some(rate) => (rate, "message rate limit"),
                None => return Verdict::Deliver,
            },
            Event::Ping(_) => match self.pings {
                Some(rate) => (rate, "ping rate limit"),
                None => return Verdict::Deliver,
            },
            Event::Pong(_) | Event::Close(_) => return Verdict::Deliver,
        };
        let now = self.now_us();
        let over = if matches!(event, Event::Ping(_)) {
            match rate.charge(&mut slot.rates.pings, now) {
                0 => return Verdict::Deliver,
                n if n <= rate.burst() => return Verdict::Ignore,
                n => n,
            }
        } else if rate.conforms(&mut slot.rates.messages, now) {
            return Verdict::Deliver;
        } else {
            1
        };
        if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
            warn!(
                worker = self.worker,
                ?peer,
                over,
                suppressed,
                "{what}: closing with 1008"
            );
        }
        Verdict::Close(what)
    }

    /// Accounts a change of `slot`'s assembly memory (bytes held in its decoder's buffers) from
    /// `before` to `after` against `max_assembly_memory`. Returns false if the total is now over
    /// the cap (and the growth was this connection's): the caller closes it with 1009 and resets
    /// its decoder, reporting that change too.
    pub fn assembly<S>(
        &mut self,
        counters: &Counters,
        now_ms: u64,
        slot: &Slot<S>,
        before: usize,
        after: usize,
    ) -> bool {
        if self.max_assembly == 0 || before == after {
            return true;
        }
        if after < before {
            counters
                .assembly
                .fetch_sub(before - after, Ordering::Relaxed);
            return true;
        }
        let total = counters
            .assembly
            .fetch_add(after - before, Ordering::Relaxed)
            + (after - before);
        if total <= self.max_assembly {
            return true;
        }
        if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
            warn!(
                worker = self.worker,
                ?peer,
                bytes = after,
                total,
                suppressed,
                "assembly memory over max_assembly_memory: closing with 1009"
            );
        }
        false
    }

    /// Logs that `slot`'s unfinished message passed `message_timeout` (the caller closes with
    /// 1008).
    pub fn message_overdue<S>(&mut self, now_ms: u64, slot: &Slot<S>) {
        if let Some((peer, suppressed)) = self.logged(now_ms, slot) {
            warn!(
                worker = self.worker,
                ?peer,
                suppressed,
                "message not completed within message_timeout: closing with 1008"
            );
        }
    }

    /// A slot is being freed: uncount it (a server-side connection) and whatever it still held
    /// (`assembly` bytes in its decoder).
    pub fn release<S>(&mut self, counters: &Counters, slot: &mut Slot<S>, assembly: usize) {
        if self.max_assembly > 0 && assembly > 0 {
            counters.assembly.fetch_sub(assembly, Ordering::Relaxed);
        }
        if slot.machine.is_client() {
            return;
        }
        if self.max_total > 0 {
            counters.total.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = slot.extra.as_mut().and_then(|e| e.counted_ip.take()) {
            counters.remove_ip(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_fall_back_to_nothing() {
        let c = Counters::new();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(c.add_ip(ip), 1);
        assert_eq!(c.add_ip(ip), 2);
        c.remove_ip(ip);
        c.remove_ip(ip);
        assert!(c.per_ip.iter().all(|m| m.lock().unwrap().is_empty()));
    }

    #[test]
    fn assembly_memory_is_counted_across_connections_and_capped() {
        let c = Counters::new();
        let cfg = PolicyConfig {
            max_assembly_memory: 1000,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(&cfg, 0);
        let mut slab = crate::conn::Slab::<()>::new(crate::conn::test_config(
            1 << 20,
            crate::conn::BackpressurePolicy::Drop,
        ));
        let a = slab.alloc(crate::conn::test_fd(), false);
        assert!(p.assembly(&c, 0, slab.get(a), 0, 600));
        assert!(p.assembly(&c, 0, slab.get(a), 600, 900));
        assert!(!p.assembly(&c, 0, slab.get(a), 900, 1100), "over the cap");
        assert!(p.assembly(&c, 0, slab.get(a), 1100, 0), "freed");
        assert_eq!(c.assembly.load(Ordering::Relaxed), 0);
        p.release(&c, slab.get_mut(a), 0);
    }
}
