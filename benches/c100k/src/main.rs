//! `c100k-client`: the client side of `benches/c100k.sh`. One process holds many WebSocket
//! connections (non-blocking sockets on one epoll instance) and prints one JSON line per phase:
//!
//! - **established**: connects `--connections N` to `--url` (a `ws://IPv4:port/path` URL), at most
//!   `--dial K` at a time, each from the next address of the `--source-ips` block (bound with
//!   `IP_BIND_ADDRESS_NO_PORT`, so the port is picked per destination at connect time and every
//!   address has the whole ephemeral range for each destination), and reports once every connection
//!   is open or has failed;
//! - **ping** (on SIGUSR1): one masked binary message of `--message-size` bytes over every open
//!   connection, each timed until its echo is back; percentiles on the line, and with
//!   `--latencies FILE` every round trip in nanoseconds, one per line, so that several processes'
//!   samples can be merged exactly;
//! - **closed** (on SIGINT or SIGTERM): a Close (1000) on every connection, then the server's Close
//!   and its end of the TCP connection are awaited (RFC 6455 §7.1.1: the server closes TCP first).
//!
//! Pings from the server are answered with pongs throughout. The exit status is 0 only when every
//! connection opened, echoed (if asked) and closed cleanly; the whole run is bounded by `--timeout`.
//! The handshake, frame headers, masking and close payloads are `ringws-protocol`'s.

use ringws_protocol::close::{CloseCode, CloseFrame};
use ringws_protocol::frame::{DecodeRules, Decoded, MAX_HEADER_LEN, decode_header, encode_header};
use ringws_protocol::handshake::{ClientHandshake, ResponseParse};
use ringws_protocol::mask::unmask;
use ringws_protocol::{OpCode, Role};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The epoll token of the signal descriptor; connections use their index.
const SIGNAL_TOKEN: u64 = u64::MAX;
/// Timed messages sent per loop turn before the next poll for echoes.
const PING_BATCH: usize = 64;
/// Largest response head accepted from the server.
const MAX_HEAD: usize = 8192;

/// Command-line settings.
struct Args {
    addr: SocketAddrV4,
    host: String,
    path: String,
    connections: usize,
    sources: Vec<Ipv4Addr>,
    dial: usize,
    message_size: usize,
    timeout: Duration,
    latencies: Option<String>,
}

const USAGE: &str = "usage: c100k-client --url ws://IPv4:PORT/PATH --connections N \
[--source-ips A[-B]] [--dial K] [--message-size B] [--timeout SECONDS] [--latencies FILE]";

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut args = Args {
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        host: String::new(),
        path: String::new(),
        connections: 0,
        sources: vec![Ipv4Addr::LOCALHOST],
        dial: 512,
        message_size: 32,
        timeout: Duration::from_secs(600),
        latencies: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String, max: usize| match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("{flag} takes a number from 1 to {max}, not {v:?}")),
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--connections" => args.connections = number(value()?, 1 << 20)?,
            "--dial" => args.dial = number(value()?, 1 << 16)?,
            "--message-size" => args.message_size = number(value()?, 1 << 20)?,
            "--timeout" => args.timeout = Duration::from_secs(number(value()?, 86400)? as u64),
            "--latencies" => args.latencies = Some(value()?),
            "--source-ips" => args.sources = parse_ips(&value()?)?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("ws://")
        .ok_or("--url must start with ws://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    args.addr = authority
        .parse()
        .map_err(|_| format!("--url needs an IPv4 address and port, not {authority:?}"))?;
    args.host = authority.to_string();
    args.path = if path.is_empty() { "/" } else { path }.to_string();
    if args.connections == 0 {
        return Err("--connections is required".into());
    }
    Ok(args)
}

/// `127.0.0.2` or `127.0.0.2-127.0.0.9` (at most 65536 addresses).
fn parse_ips(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| format!("--source-ips: not an IPv4 address: {s:?}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if b < a || b - a >= 1 << 16 {
        return Err(format!(
            "--source-ips: {spec:?} is not a range of at most 65536 addresses"
        ));
    }
    Ok((a..=b).map(Ipv4Addr::from).collect())
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Open,
    /// Our Close is queued or sent; waiting for the server's Close, then its FIN.
    Closing,
    Closed,
    Failed,
}

struct Conn {
    fd: Option<OwnedFd>,
    state: State,
    handshake: ClientHandshake,
    input: Vec<u8>,
    output: Vec<u8>,
    /// When the timed message was queued, until its echo arrives.
    sent: Option<Instant>,
    /// The server's Close arrived.
    close_seen: bool,
}

/// Masking keys from the kernel's CSPRNG (RFC 6455 §5.3: unpredictable, fresh per frame), fetched
/// 4 KiB at a time.
struct Keys {
    buf: Vec<u8>,
    used: usize,
}

impl Keys {
    fn new() -> Self {
        Self {
            buf: vec![0; 4096],
            used: 4096,
        }
    }

    fn next(&mut self) -> [u8; 4] {
        if self.used == self.buf.len() {
            let mut filled = 0;
            while filled < self.buf.len() {
                let rest = &mut self.buf[filled..];
                // SAFETY: getrandom writes at most `rest.len()` bytes into the live slice `rest`.
                let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
                assert!(
                    n > 0 || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted,
                    "getrandom failed: {}",
                    io::Error::last_os_error()
                );
                filled += n.max(0) as usize;
            }
            self.used = 0;
        }
        let key = self.buf[self.used..self.used + 4]
            .try_into()
            .expect("4 bytes");
        self.used += 4;
        key
    }
}

/// Appends a masked frame with `payload` to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(
        &mut header,
        true,
        0,
        opcode,
        Some(key),
        payload.len() as u64,
    );
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], key, 0);
}

/// The process-wide phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Dialing,
    Holding,
    Pinging,
    Closing,
}

struct Client {
    args: Args,
    epoll: OwnedFd,
    signals: OwnedFd,
    conns: Vec<Conn>,
    keys: Keys,
    phase: Phase,
    start: Instant,
    phase_start: Instant,
    dialing: usize,
    open: usize,
    failed: usize,
    awaiting_echo: usize,
    ping_requested: bool,
    /// The next connection the timed message goes to.
    ping_next: usize,
    pattern: Vec<u8>,
    rtts: Vec<u64>,
    errors: BTreeMap<String, usize>,
    rules: DecodeRules,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

/// An epoll instance and a signalfd for SIGINT, SIGTERM and SIGUSR1 (blocked for the process).
fn setup() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
    let ep = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    // SAFETY: `ep` is a fresh descriptor nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
    // SAFETY: an all-zero sigset_t is a valid argument for sigemptyset, which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t for every call; the signal numbers are valid.
    let sfd = unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        check(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            "pthread_sigmask",
        )?;
        check(
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC),
            "signalfd",
        )?
    };
    // SAFETY: `sfd` is a fresh descriptor nothing else owns.
    let signals = unsafe { OwnedFd::from_raw_fd(sfd) };
    add(
        epoll.as_raw_fd(),
        signals.as_raw_fd(),
        libc::EPOLLIN as u32,
        SIGNAL_TOKEN,
    )?;
    Ok((epoll, signals))
}

fn add(epoll: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a live epoll_event; both descriptors are open.
    check(
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        "epoll_ctl",
    )
    .map(drop)
}

/// A non-blocking TCP socket bound to `source` (port chosen at connect time), connecting to `dest`.
fn dial(source: Ipv4Addr, dest: SocketAddrV4) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call.
    let raw = check(unsafe { libc::socket(libc::AF_INET, flags, 0) }, "socket")?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    for (level, name) in [
        (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    ] {
        // SAFETY: the option value is a live c_int of the given size.
        check(
            unsafe {
                libc::setsockopt(
                    raw,
                    level,
                    name,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            },
            "setsockopt",
        )?;
    }
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let src = sockaddr(SocketAddrV4::new(source, 0));
    // SAFETY: `src` is a live sockaddr_in of `len` bytes.
    check(
        unsafe { libc::bind(raw, (&src as *const libc::sockaddr_in).cast(), len) },
        "bind",
    )?;
    let dst = sockaddr(dest);
    // SAFETY: `dst` is a live sockaddr_in of `len` bytes.
    let rc = unsafe { libc::connect(raw, (&dst as *const libc::sockaddr_in).cast(), len) };
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("connect: {}", io::Error::last_os_error()),
        ));
    }
    Ok(fd)
}

impl Client {
    fn new(args: Args) -> io::Result<Self> {
        let (epoll, signals) = setup()?;
        let now = Instant::now();
        Ok(Self {
            rules: DecodeRules {
                role: Role::Client,
                max_frame_size: args.message_size.max(125) as u64,
                allowed_rsv: 0,
            },
            pattern: (0..args.message_size).map(|i| (i % 251) as u8).collect(),
            conns: Vec::with_capacity(args.connections),
            args,
            epoll,
            signals,
            keys: Keys::new(),
            phase: Phase::Dialing,
            start: now,
            phase_start: now,
            dialing: 0,
            open: 0,
            failed: 0,
            awaiting_echo: 0,
            ping_requested: false,
            ping_next: 0,
            rtts: Vec::new(),
            errors: BTreeMap::new(),
        })
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Fails connection `i`: closes it and counts `kind`.
    fn fail(&mut self, i: usize, kind: String) {
        let c = &mut self.conns[i];
        match c.state {
            State::Connecting | State::Upgrading => self.dialing -= 1,
            State::Open | State::Closing => self.open -= 1,
            State::Closed | State::Failed => return,
        }
        if c.sent.take().is_some() {
            self.awaiting_echo -= 1;
        }
        c.state = State::Failed;
        c.fd = None;
        c.input = Vec::new();
        c.output = Vec::new();
        self.failed += 1;
        self.error(kind);
    }

    /// Starts connections until `--dial` are in progress or all are started.
    fn dial_more(&mut self) {
        while self.dialing < self.args.dial && self.conns.len() < self.args.connections {
            let i = self.conns.len();
            let source = self.args.sources[i % self.args.sources.len()];
            let fd = dial(source, self.args.addr).and_then(|fd| {
                let events =
                    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                add(self.epoll.as_raw_fd(), fd.as_raw_fd(), events, i as u64).map(|()| fd)
            });
            self.dialing += 1;
            self.conns.push(Conn {
                fd: None,
                state: State::Connecting,
                handshake: ClientHandshake::new(),
                input: Vec::new(),
                output: Vec::new(),
                sent: None,
                close_seen: false,
            });
            match fd {
                Ok(fd) => self.conns[i].fd = Some(fd),
                Err(e) => self.fail(i, e.to_string()),
            }
        }
    }

    /// Writes as much queued output of `i` as the socket takes.
    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(fd) = &c.fd else { return };
        let fd = fd.as_raw_fd();
        while !c.output.is_empty() {
            // SAFETY: writes from the live `output` buffer to an open socket.
            let n = unsafe {
                libc::send(
                    fd,
                    c.output.as_ptr().cast(),
                    c.output.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => return self.fail(i, format!("send: {e}")),
                }
            }
            c.output.drain(..n as usize);
        }
    }

    fn on_event(&mut self, i: usize, events: u32) {
        if self.conns[i].state == State::Connecting {
            let Some(fd) = &self.conns[i].fd else { return };
            let mut err: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `err` and `len` are live and sized for SO_ERROR's int.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if rc < 0 || err != 0 {
                let e = if rc < 0 {
                    io::Error::last_os_error()
                } else {
                    io::Error::from_raw_os_error(err)
                };
                return self.fail(i, format!("connect: {e}"));
            }
            if events & (libc::EPOLLOUT as u32) == 0 {
                return; // not connected yet
            }
            let c = &mut self.conns[i];
            c.state = State::Upgrading;
            c.handshake.write_request(
                &mut c.output,
                &self.args.host,
                &self.args.path,
                &[],
                None,
                &[],
            );
        }
        if events & (libc::EPOLLOUT as u32) != 0 {
            self.flush(i);
        }
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            self.read(i);
        }
    }

    /// Reads everything available on `i` and handles it.
    fn read(&mut self, i: usize) {
        let mut buf = [0u8; 16384];
        let limit = MAX_HEAD + MAX_HEADER_LEN + self.args.message_size.max(125);
        loop {
            let Some(fd) = &self.conns[i].fd else { return };
            // SAFETY: reads into the live stack buffer `buf`, at most its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => return self.fail(i, format!("recv: {e}")),
                }
            }
            if n == 0 {
                let c = &mut self.conns[i];
                if c.state == State::Closing && c.close_seen {
                    c.state = State::Closed;
                    c.fd = None;
                    c.input = Vec::new();
                    self.open -= 1;
                } else {
                    self.fail(i, "the server closed without a Close".into());
                }
                return;
            }
            self.conns[i].input.extend_from_slice(&buf[..n as usize]);
            if self.conns[i].input.len() > limit {
                return self.fail(i, "more input than expected".into());
            }
            self.process(i);
        }
    }

    /// Handles the buffered input of `i`: the 101, then frames.
    fn process(&mut self, i: usize) {
        if self.conns[i].state == State::Upgrading {
            let c = &mut self.conns[i];
            match c.handshake.parse_response(&c.input, &[], None, MAX_HEAD) {
                Ok(ResponseParse::Partial) => return,
                Ok(ResponseParse::Complete(r)) => {
                    let head = r.head_len;
                    c.input.drain(..head);
                    c.state = State::Open;
                    self.dialing -= 1;
                    self.open += 1;
                }
                Err(e) => return self.fail(i, format!("handshake: {e}")),
            }
        }
        loop {
            let c = &mut self.conns[i];
            if !matches!(c.state, State::Open | State::Closing) {
                return;
            }
            let h = match decode_header(&c.input, &self.rules) {
                Ok(Decoded::Header(h)) => h,
                Ok(Decoded::Partial(_)) => return,
                Err(e) => return self.fail(i, format!("frame: {e}")),
            };
            let (start, end) = (
                h.header_len as usize,
                h.header_len as usize + h.payload_len as usize,
            );
            if c.input.len() < end {
                return;
            }
            let payload = c.input[start..end].to_vec();
            c.input.drain(..end);
            match h.opcode {
                OpCode::Ping => {
                    let key = self.keys.next();
                    let c = &mut self.conns[i];
                    push_frame(&mut c.output, OpCode::Pong, &payload, key);
                    self.flush(i);
                }
                OpCode::Pong => {}
                OpCode::Binary if h.fin && self.conns[i].sent.is_some() => {
                    let sent = self.conns[i].sent.take().expect("checked");
                    self.awaiting_echo -= 1;
                    if payload == self.pattern {
                        self.rtts.push(sent.elapsed().as_nanos() as u64);
                    } else {
                        self.error("echo differs from the message".into());
                    }
                }
                OpCode::Close => {
                    if self.conns[i].state == State::Closing {
                        self.conns[i].close_seen = true;
                    } else {
                        let code = match CloseFrame::parse(&payload) {
                            Ok(Some(f)) => f.code.0.to_string(),
                            Ok(None) => "no code".into(),
                            Err(_) => "invalid".into(),
                        };
                        return self.fail(i, format!("the server closed with {code}"));
                    }
                }
                other => return self.fail(i, format!("unexpected {other:?} frame")),
            }
        }
    }

    fn on_signal(&mut self) {
        loop {
            // SAFETY: an all-zero signalfd_siginfo is valid; read fills at most its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads into the live `info`, at most its size.
            let n = unsafe {
                libc::read(
                    self.signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return;
            }
            match info.ssi_signo as i32 {
                libc::SIGUSR1 => self.ping_requested = true,
                _ => self.start_closing(),
            }
        }
    }

    /// Queues one timed message on every open connection.
    fn start_ping(&mut self) {
        self.ping_requested = false;
        self.phase = Phase::Pinging;
        self.phase_start = Instant::now();
        self.rtts.clear();
        self.ping_next = 0;
    }

    /// Sends the timed message on the next [`PING_BATCH`] connections. Sending in batches between
    /// polls keeps echoes from waiting behind this process's own sends, so a round trip measures the
    /// server and the kernel rather than this loop.
    fn ping_batch(&mut self) {
        let end = (self.ping_next + PING_BATCH).min(self.conns.len());
        for i in self.ping_next..end {
            if self.conns[i].state != State::Open {
                continue;
            }
            let key = self.keys.next();
            let c = &mut self.conns[i];
            push_frame(&mut c.output, OpCode::Binary, &self.pattern, key);
            c.sent = Some(Instant::now());
            self.awaiting_echo += 1;
            self.flush(i);
        }
        self.ping_next = end;
    }

    /// Sends Close (1000) on every open connection; abandons connections still being set up.
    fn start_closing(&mut self) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.phase_start = Instant::now();
        let mut payload = [0u8; 125];
        let n = CloseFrame {
            code: CloseCode::NORMAL,
            reason: "",
        }
        .encode(&mut payload);
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Connecting | State::Upgrading => {
                    self.fail(i, "closed before it opened".into())
                }
                State::Open => {
                    let key = self.keys.next();
                    let c = &mut self.conns[i];
                    push_frame(&mut c.output, OpCode::Close, &payload[..n], key);
                    c.state = State::Closing;
                    self.flush(i);
                }
                _ => {}
            }
        }
    }

    fn errors_json(&self) -> String {
        let items: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        format!("{{{}}}", items.join(","))
    }

    fn report(&self, phase: &str, extra: &str) {
        let total: usize = self.errors.values().sum();
        let line = format!(
            "{{\"phase\":\"{phase}\",\"connections\":{},\"open\":{},\"failed\":{},\"seconds\":{:.3},\"total_seconds\":{:.3},\"errors\":{total},\"error_kinds\":{}{extra}}}",
            self.args.connections,
            self.open,
            self.failed,
            self.phase_start.elapsed().as_secs_f64(),
            self.start.elapsed().as_secs_f64(),
            self.errors_json(),
        );
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn report_ping(&mut self) {
        self.rtts.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.rtts.is_empty() {
                return 0.0;
            }
            let idx = ((p * self.rtts.len() as f64).ceil() as usize).clamp(1, self.rtts.len()) - 1;
            self.rtts[idx] as f64 / 1000.0
        };
        let extra = format!(
            ",\"messages\":{},\"message_size\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}",
            self.rtts.len(),
            self.args.message_size,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            pct(1.0)
        );
        if let Some(path) = &self.args.latencies {
            let text: String = self.rtts.iter().map(|n| format!("{n}\n")).collect();
            if let Err(e) = std::fs::write(path, text) {
                self.error(format!("writing {path}: {e}"));
            }
        }
        self.report("ping", &extra);
    }

    fn run(&mut self) -> io::Result<bool> {
        let deadline = self.start + self.args.timeout;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            if self.phase == Phase::Dialing {
                self.dial_more();
                if self.conns.len() == self.args.connections && self.dialing == 0 {
                    self.report("established", "");
                    self.phase = Phase::Holding;
                    self.phase_start = Instant::now();
                }
            }
            if self.phase == Phase::Holding && self.ping_requested {
                self.start_ping();
            }
            let sending = self.phase == Phase::Pinging && self.ping_next < self.conns.len();
            if sending {
                self.ping_batch();
            }
            if self.phase == Phase::Pinging && !sending && self.awaiting_echo == 0 {
                self.report_ping();
                self.phase = Phase::Holding;
                self.phase_start = Instant::now();
            }
            if self.phase == Phase::Closing && self.open == 0 && self.dialing == 0 {
                self.report("closed", "");
                return Ok(self.errors.is_empty());
            }
            let now = Instant::now();
            if now >= deadline {
                self.error("timeout".into());
                self.report("timeout", "");
                return Ok(false);
            }
            let wait = if sending {
                0
            } else {
                (deadline - now).min(Duration::from_millis(100)).as_millis() as libc::c_int
            };
            // SAFETY: `events` is a live array of `events.len()` entries for the kernel to fill.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    wait,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (token, bits) = (ev.u64, ev.events);
                if token == SIGNAL_TOKEN {
                    self.on_signal();
                } else {
                    self.on_event(token as usize, bits);
                }
            }
        }
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("c100k-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = Client::new(args).and_then(|mut c| c.run());
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("c100k-client: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_blocks() {
        assert_eq!(
            parse_ips("127.0.0.2").unwrap(),
            [Ipv4Addr::new(127, 0, 0, 2)]
        );
        let block = parse_ips("127.0.0.254-127.0.1.1").unwrap();
        assert_eq!(block.len(), 4);
        assert_eq!(block[3], Ipv4Addr::new(127, 0, 1, 1));
        assert!(parse_ips("127.0.0.3-127.0.0.2").is_err());
        assert!(parse_ips("127.0.0.0-127.1.0.0").is_err(), "more than 65536");
        assert!(parse_ips("localhost").is_err());
    }

    #[test]
    fn frames_are_masked_with_the_key() {
        let mut out = Vec::new();
        push_frame(&mut out, OpCode::Binary, b"abcd", [1, 2, 3, 4]);
        // FIN + binary, MASK + length 4, the key, then each byte XOR its key byte (RFC 6455 §5.3).
        assert_eq!(
            out,
            [
                0x82,
                0x84,
                1,
                2,
                3,
                4,
                b'a' ^ 1,
                b'b' ^ 2,
                b'c' ^ 3,
                b'd' ^ 4
            ]
        );
    }

    #[test]
    fn keys_come_fresh() {
        let mut keys = Keys::new();
        let drawn: Vec<[u8; 4]> = (0..3000).map(|_| keys.next()).collect();
        let mut unique = drawn.clone();
        unique.sort_unstable();
        unique.dedup();
        // 3000 draws from 2^32 collide with probability ~0.1%; a stuck generator repeats at once.
        assert!(
            unique.len() >= 2998,
            "{} distinct keys of 3000",
            unique.len()
        );
    }
}
