//! Admission and abuse limits: who may open a WebSocket (origin allowlist, subprotocol requirement,
//! connections over all workers and per client address) and how much an open connection may ask of
//! the server (message rate, ping rate, assembly memory over all connections, time to finish a
//! message). The worker calls in at accept, at the upgrade, per decoded event, after each receive,
//! from its timer and at release; every refusal or limit hit is logged through the worker's
//! [`LogLimit`] with the number of lines it suppressed.
//!
//! Per-connection state lives in a side table parallel to the connection slots (two `u64` rate
//! buckets per slot), and in maps that hold only the connections concerned (client addresses when a
//! per-address limit is set, connections with a message in progress), so an idle connection costs 16
//! bytes here.

use crate::config::Config;
use crate::conn::Core;
use crate::handler::HttpResponse;
use crate::ratelimit::{LogLimit, Rate};
use crate::timer::{Tick, ticks};
use crate::worker::peer_addr;
use ringws_protocol::handshake::{Request, is_uri_scheme};
use ringws_protocol::{CloseCode, Event};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tracing::warn;

/// One rule of the origin allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `scheme://host[:port]`, compared whole (ASCII case-insensitively).
    Exact(String),
    /// `scheme://*.domain[:port]`: any subdomain of `domain` (not `domain` itself), same scheme and
    /// port.
    Subdomains {
        scheme: String,
        domain: String,
        port: Option<String>,
    },
}

/// An origin split into its parts (RFC 6454 §6.1 serialization: `scheme "://" host [ ":" port ]`).
struct OriginParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
}

/// Splits `origin` into scheme, host and port; `None` if it is not `scheme://host[:port]` (a path,
/// user info, an empty host or a non-numeric port).
fn split_origin(origin: &str) -> Option<OriginParts<'_>> {
    let (scheme, authority) = origin.split_once("://")?;
    if !is_uri_scheme(scheme)
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[...]` then an optional `:port`.
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let host = &authority[..inside.len() + 2];
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.contains(':') {
                return None;
            }
            (host, port)
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (host.len() > 2 * usize::from(host.starts_with('[')) && port_ok).then_some(OriginParts {
        scheme,
        host,
        port,
    })
}

/// Whether `s` is one or more DNS labels separated by dots (letters, digits, hyphens).
fn is_labels(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

impl OriginRule {
    /// Parses an allowlist entry: `scheme://host[:port]` or `scheme://*.domain[:port]`.
    fn parse(pattern: &str) -> Option<Self> {
        let lower = pattern.to_ascii_lowercase();
        let parts = split_origin(&lower)?;
        match parts.host.strip_prefix("*.") {
            Some(domain) if is_labels(domain) => Some(Self::Subdomains {
                scheme: parts.scheme.to_owned(),
                domain: domain.to_owned(),
                port: parts.port.map(str::to_owned),
            }),
            Some(_) => None,
            None if parts.host.contains('*') => None,
            None => Some(Self::Exact(lower)),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(allowed) => origin.eq_ignore_ascii_case(allowed),
            Self::Subdomains {
                scheme,
                domain,
                port,
            } => {
                let Some(o) = split_origin(origin) else {
                    return false;
                };
                // `sub.` + domain: the byte before the domain must be a dot that ends a non-empty
                // run of labels, so `evil-example.com` and `example.com.evil.net` never match.
                let host = o.host.as_bytes();
                let cut = host.len().checked_sub(domain.len() + 1);
                o.scheme.eq_ignore_ascii_case(scheme)
                    && o.port == port.as_deref()
                    && cut.is_some_and(|cut| {
                        cut > 0
                            && host[cut] == b'.'
                            && o.host[cut + 1..].eq_ignore_ascii_case(domain)
                            && is_labels(&o.host[..cut])
                    })
            }
        }
    }
}

/// Whether `pattern` is a valid `allowed_origins` entry (for [`Config::validate`]).
pub(crate) fn is_origin_pattern(pattern: &str) -> bool {
    OriginRule::parse(pattern).is_some()
}

/// `Some((peer, suppressed))` if a security event may be logged now (see [`LogLimit::admit`]), with
/// the peer of socket `fd`.
fn logged(log: &mut LogLimit, now: Tick, fd: RawFd) -> Option<(Option<SocketAddr>, u64)> {
    log.admit(now).map(|suppressed| (peer_addr(fd), suppressed))
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

/// Rate buckets of one connection slot (see [`crate::ratelimit`]).
#[derive(Debug, Clone, Copy, Default)]
struct SlotRates {
    messages: u64,
    pings: u64,
}

/// A message in progress on one connection: the bytes counted for it and since when.
#[derive(Debug, Clone, Copy)]
struct Assembling {
    bytes: usize,
    since: Tick,
}

/// What [`Guard::after_receive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assembly {
    /// Within the limits.
    Ok,
    /// The connection was closed (1009) for pushing assembly memory over the global cap; its
    /// decoder must be reset to free the buffer.
    OverMemory,
}

/// The limits of one worker and the per-connection state they need.
pub(crate) struct Guard {
    worker: usize,
    origins: Vec<OriginRule>,
    allow_missing_origin: bool,
    max_total: usize,
    max_per_ip: usize,
    max_assembly: usize,
    /// Zero: no timeout.
    message_timeout: Tick,
    messages: Option<Rate>,
    pings: Option<Rate>,
    /// Parallel to the connection slots.
    rates: Vec<SlotRates>,
    /// The client address of each slot counted per address.
    ips: HashMap<u32, IpAddr>,
    /// Connections with a message (or frame) in progress.
    assembling: HashMap<u32, Assembling>,
    epoch: Instant,
    /// Microseconds since `epoch`, read once per loop turn when a rate needs it.
    clock: Option<u64>,
    /// A data message was delivered since the last [`after_receive`](Self::after_receive).
    delivered: bool,
}

/// Ticks from `since` to the message timeout.
fn due(since: Tick, timeout: Tick) -> Tick {
    since.saturating_add(timeout)
}

impl Guard {
    /// The limits of `cfg` for worker `worker` (the settings are validated).
    pub fn new(cfg: &Config, worker: usize) -> Self {
        Self {
            worker,
            origins: cfg
                .allowed_origins
                .iter()
                .filter_map(|p| OriginRule::parse(p))
                .collect(),
            allow_missing_origin: cfg.allow_missing_origin,
            max_total: cfg.max_total_connections,
            max_per_ip: cfg.max_connections_per_ip,
            max_assembly: cfg.max_assembly_memory,
            message_timeout: ticks(cfg.message_timeout),
            messages: Rate::new(cfg.message_rate, cfg.message_burst, 1_000_000),
            pings: Rate::new(cfg.ping_rate, cfg.ping_burst, 1_000_000),
            rates: Vec::new(),
            ips: HashMap::new(),
            assembling: HashMap::new(),
            epoch: Instant::now(),
            clock: None,
            delivered: false,
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

    /// A slot was (re)allocated: full rate buckets.
    pub fn on_alloc(&mut self, slot: u32) {
        let i = slot as usize;
        if i >= self.rates.len() {
            self.rates.resize(i + 1, SlotRates::default());
        }
        self.rates[i] = SlotRates::default();
    }

    /// Counts a just-accepted connection `slot` (socket `fd`) and decides whether to refuse it
    /// before reading its request: 503 over the per-worker (`over_worker`) or the global limit, 429
    /// over the per-address limit. Refused connections stay counted until released, like every
    /// socket the server holds.
    pub fn admit(
        &mut self,
        counters: &Counters,
        log: &mut LogLimit,
        now: Tick,
        slot: u32,
        fd: RawFd,
        over_worker: bool,
    ) -> Option<u16> {
        let total = if self.max_total > 0 {
            counters.total.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let mut per_ip = 0;
        if self.max_per_ip > 0
            && let Some(addr) = peer_addr(fd)
        {
            let canonical = addr.ip().to_canonical();
            self.ips.insert(slot, canonical);
            per_ip = counters.add_ip(canonical) as usize;
        }
        let (status, what) = if over_worker {
            (503, "max_connections (per worker)")
        } else if self.max_total > 0 && total > self.max_total {
            (503, "max_total_connections")
        } else if self.max_per_ip > 0 && per_ip > self.max_per_ip {
            (429, "max_connections_per_ip")
        } else {
            return None;
        };
        if let Some((peer, suppressed)) = logged(log, now, fd) {
            warn!(
                worker = self.worker,
                ?peer,
                status,
                suppressed,
                "connection refused: over {what}"
            );
        }
        Some(status)
    }

    /// Checks an upgrade request against the origin allowlist and the subprotocol requirement,
    /// before `on_upgrade` runs. `Ok` carries the server's preferred subprotocol among those the
    /// client offered (from `cfg.subprotocols`), `Err` the refusal to send: 403 for an origin not
    /// allowed, 400 when `require_subprotocol` is set and no offered subprotocol is supported.
    pub fn check_upgrade<'c>(
        &mut self,
        cfg: &'c Config,
        log: &mut LogLimit,
        now: Tick,
        fd: RawFd,
        req: &Request<'_>,
    ) -> Result<Option<&'c str>, HttpResponse> {
        if !self.origins.is_empty() {
            let allowed = match req.origin() {
                Some(origin) => self.origins.iter().any(|r| r.matches(origin)),
                None => self.allow_missing_origin,
            };
            if !allowed {
                if let Some((peer, suppressed)) = logged(log, now, fd) {
                    warn!(
                        worker = self.worker,
                        ?peer,
                        origin = req.origin(),
                        suppressed,
                        "upgrade refused: origin not allowed (403)"
                    );
                }
                return Err(HttpResponse::text(403, "origin not allowed"));
            }
        }
        let chosen = cfg
            .subprotocols
            .iter()
            .find(|p| req.subprotocols().any(|o| o == p.as_str()))
            .map(String::as_str);
        if chosen.is_none() && cfg.require_subprotocol {
            if let Some((peer, suppressed)) = logged(log, now, fd) {
                warn!(
                    worker = self.worker,
                    ?peer,
                    suppressed,
                    "upgrade refused: no supported subprotocol offered (400)"
                );
            }
            let supported = cfg.subprotocols.join(", ");
            return Err(HttpResponse::text(
                400,
                &format!("no supported subprotocol offered; this server speaks: {supported}"),
            ));
        }
        Ok(chosen)
    }

    /// Applies the message and ping rates to a decoded event of `slot`: `true` to deliver it.
    /// A message over the rate closes the connection with 1008; a ping over the rate is neither
    /// answered nor delivered, and once the excess reaches another burst (a sustained flood) the
    /// connection is closed with 1008.
    pub fn admit_event<S: Default>(
        &mut self,
        core: &mut Core<S>,
        log: &mut LogLimit,
        slot: u32,
        event: &Event<'_>,
    ) -> bool {
        let data = matches!(event, Event::Text(_) | Event::Binary(_));
        self.delivered |= data;
        let (rate, what) = match event {
            Event::Text(_) | Event::Binary(_) => match self.messages {
                Some(rate) => (rate, "message rate limit"),
                None => return true,
            },
            Event::Ping(_) => match self.pings {
                Some(rate) => (rate, "ping rate limit"),
                None => return true,
            },
            Event::Pong(_) | Event::Close(_) => return true,
        };
        let now = self.now_us();
        let bucket = &mut self.rates[slot as usize];
        let over = if matches!(event, Event::Ping(_)) {
            match rate.charge(&mut bucket.pings, now) {
                0 => return true,
                n if n <= rate.burst() => return false,
                n => n,
            }
        } else if rate.conforms(&mut bucket.messages, now) {
            return true;
        } else {
            1
        };
        if let Some((peer, suppressed)) = logged(log, core.now, core.conns[slot as usize].fd) {
            warn!(
                worker = self.worker,
                ?peer,
                over,
                suppressed,
                "{what}: closing with 1008"
            );
        }
        core.close(slot, CloseCode::POLICY_VIOLATION, what);
        false
    }

    /// Accounts the assembly memory of `slot` after its input was decoded (`bytes` held in its
    /// assembly buffers, `busy`: a frame or message is partly received) against
    /// `max_assembly_memory`, and starts (schedules) or stops its message timeout.
    pub fn after_receive<S: Default>(
        &mut self,
        counters: &Counters,
        core: &mut Core<S>,
        log: &mut LogLimit,
        slot: u32,
        bytes: usize,
        busy: bool,
    ) -> Assembly {
        // A message delivered during this receive: one still in progress began in it.
        let delivered = std::mem::take(&mut self.delivered);
        let tracked = !self.assembling.is_empty() && self.assembling.contains_key(&slot);
        if (!busy && bytes == 0 && !tracked)
            || (self.max_assembly == 0 && self.message_timeout == 0)
        {
            return Assembly::Ok;
        }
        let now = core.now;
        if !busy && bytes == 0 {
            self.forget(counters, slot);
            return Assembly::Ok;
        }
        let (entry, fresh) = match self.assembling.entry(slot) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (
                e.insert(Assembling {
                    bytes: 0,
                    since: now,
                }),
                true,
            ),
        };
        if (fresh || delivered) && self.message_timeout > 0 {
            entry.since = now;
            core.schedule(slot, due(now, self.message_timeout));
        }
        if self.max_assembly == 0 {
            return Assembly::Ok;
        }
        let old = std::mem::replace(&mut entry.bytes, bytes);
        if bytes <= old {
            counters.assembly.fetch_sub(old - bytes, Ordering::Relaxed);
            return Assembly::Ok;
        }
        let total = counters.assembly.fetch_add(bytes - old, Ordering::Relaxed) + (bytes - old);
        if total <= self.max_assembly {
            return Assembly::Ok;
        }
        if let Some((peer, suppressed)) = logged(log, now, core.conns[slot as usize].fd) {
            warn!(
                worker = self.worker,
                ?peer,
                bytes,
                total,
                suppressed,
                "assembly memory over max_assembly_memory: closing with 1009"
            );
        }
        core.close(
            slot,
            CloseCode::MESSAGE_TOO_BIG,
            "server assembly memory full",
        );
        self.forget(counters, slot);
        Assembly::OverMemory
    }

    /// When the message in progress on `slot` times out (`None`: no message in progress, or no
    /// timeout).
    pub fn message_due(&self, slot: u32) -> Option<Tick> {
        if self.message_timeout == 0 {
            return None;
        }
        let a = self.assembling.get(&slot)?;
        Some(due(a.since, self.message_timeout))
    }

    /// Closes `slot` with 1008 if its message in progress is overdue at `now`; returns whether it
    /// did (the caller resets the decoder to free the buffer).
    pub fn message_overdue<S: Default>(
        &mut self,
        counters: &Counters,
        core: &mut Core<S>,
        log: &mut LogLimit,
        slot: u32,
    ) -> bool {
        let now = core.now;
        if self.message_due(slot).is_none_or(|at| now < at) {
            return false;
        }
        if let Some((peer, suppressed)) = logged(log, now, core.conns[slot as usize].fd) {
            warn!(
                worker = self.worker,
                ?peer,
                suppressed,
                "message not completed within message_timeout: closing with 1008"
            );
        }
        core.close(slot, CloseCode::POLICY_VIOLATION, "message timeout");
        self.forget(counters, slot);
        true
    }

    /// Stops accounting a message in progress on `slot`.
    fn forget(&mut self, counters: &Counters, slot: u32) {
        if let Some(a) = self.assembling.remove(&slot)
            && self.max_assembly > 0
        {
            counters.assembly.fetch_sub(a.bytes, Ordering::Relaxed);
        }
    }

    /// A slot is being freed: uncount it (a server-side connection, `client` false) and whatever
    /// it still held.
    pub fn release(&mut self, counters: &Counters, slot: u32, client: bool) {
        self.forget(counters, slot);
        if client {
            return;
        }
        if self.max_total > 0 {
            counters.total.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = self.ips.remove(&slot) {
            counters.remove_ip(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        OriginRule::parse(pattern)
            .unwrap_or_else(|| panic!("{pattern} parses"))
            .matches(origin)
    }

    #[test]
    fn exact_origins_match_whole_and_case_insensitively() {
        assert!(allows("https://example.com", "https://example.com"));
        assert!(allows("https://example.com", "HTTPS://Example.COM"));
        assert!(!allows("https://example.com", "http://example.com"));
        assert!(!allows("https://example.com", "https://example.com:8443"));
        assert!(!allows(
            "https://example.com",
            "https://example.com.evil.net"
        ));
        assert!(allows("http://localhost:3000", "http://localhost:3000"));
        assert!(allows("http://[::1]:8080", "http://[::1]:8080"));
    }

    #[test]
    fn wildcards_match_subdomains_only_with_scheme_and_port() {
        let p = "https://*.example.com";
        assert!(allows(p, "https://app.example.com"));
        assert!(allows(p, "https://a.b.example.com"));
        assert!(allows(p, "https://APP.Example.com"));
        assert!(
            !allows(p, "https://example.com"),
            "the apex is not a subdomain"
        );
        assert!(!allows(p, "https://evil-example.com"));
        assert!(!allows(p, "https://example.com.evil.net"));
        assert!(!allows(p, "https://app.example.com.evil.net"));
        assert!(!allows(p, "http://app.example.com"), "scheme");
        assert!(!allows(p, "https://app.example.com:8443"), "port");
        assert!(!allows(p, "https://.example.com"), "empty label");
        assert!(!allows(p, "https://a..example.com"));
        assert!(!allows(p, "https://app.example.com/path"));
        assert!(!allows(p, "https://user@app.example.com"));
        assert!(!allows(p, "null"));
        assert!(allows(
            "https://*.example.com:8443",
            "https://app.example.com:8443"
        ));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "example.com",
            "*.example.com",
            "https://",
            "https://example.com/",
            "https://*.",
            "https://a.*.example.com",
            "https://*example.com",
            "https://example.com:port",
            "*",
            "null",
        ] {
            assert!(!is_origin_pattern(bad), "{bad}");
        }
        for good in [
            "https://example.com",
            "https://*.example.com:443",
            "http://127.0.0.1:9001",
        ] {
            assert!(is_origin_pattern(good), "{good}");
        }
    }

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
    fn side_table_is_small() {
        assert_eq!(size_of::<SlotRates>(), 16);
    }
}
