//! Real brokers and load balancers for the cluster tests: `nats-server`, `redis-server`, `haproxy`
//! (and `nginx` for the deployment checks), from Debian's packages (`scripts/test.sh` installs
//! them), each started on free ports of 127.0.0.1 and killed when dropped; `ringws ticker`; a plain
//! HTTP/1.0 GET for their monitoring pages; and a feed subscriber that checks `seq` order.
//!
//! Every wait is bounded: a process's readiness, each read, each retry loop.

use super::{
    Frame, READ_TIMEOUT, RawClient, ReadError, binary, eventually, free_port, op, wait_timeout,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How long a broker or proxy may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of `tool`: in one of the system's bin or sbin directories (Debian puts `haproxy` in
/// /usr/sbin, which is not on every user's PATH), else on PATH. Fails the test when it is nowhere,
/// saying which Debian package has it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ]
    .into_iter()
    .map(PathBuf::from)
    .chain(std::env::split_paths(&path))
    .map(|dir| dir.join(tool))
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "{tool} not found: run scripts/test.sh, which installs it, or as root: \
             apt-get install {package}"
        )
    })
}

/// A process started by a test, its output captured (and printed if the test fails), killed on
/// drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with its stdout and stderr captured.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        for out in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until its output contains `text`; panics with the output otherwise.
    pub fn wait_for_output(&self, text: &str, within: Duration) {
        assert!(
            eventually(within, || self.log().contains(text)),
            "{} did not print {text:?} within {within:?}; output:\n{}",
            self.name,
            self.log()
        );
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill {}", self.name);
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `within` for it to exit; its status, `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        wait_timeout(self.child.as_mut().expect("running"), within)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }
}

impl Drop for Proc {
    /// SIGTERM, up to 5 s for it to exit, then SIGKILL: a master process (nginx) takes its workers
    /// with it only when it is let to.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && child.try_wait().ok().flatten().is_none()
        {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) takes plain integers; `pid` is our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = wait_timeout(child, Duration::from_secs(5));
        }
        self.kill();
        if thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.log());
        }
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    assert!(
        eventually(START_TIMEOUT, || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_ok()),
        "{what} not listening on {addr} within {START_TIMEOUT:?}"
    );
}

/// `GET path` over HTTP/1.0 (the server closes after the response): status and body. `None` if
/// the server cannot be reached or answers garbage.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A value of `/metrics` text: the sum of the samples of `name` (any labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `nats-server` on free ports: client port and monitoring port.
pub struct Nats {
    pub port: u16,
    pub monitor: u16,
    /// The address it listens on (its monitoring page too).
    pub host: IpAddr,
    proc: Proc,
}

impl Nats {
    /// Starts one and waits until it accepts clients.
    pub fn start() -> Nats {
        Nats::on(LOCALHOST, free_port(), free_port())
    }

    /// Starts one on client port `port` (e.g. one that nodes already try to reach).
    pub fn start_on(port: u16) -> Nats {
        Nats::on(LOCALHOST, port, free_port())
    }

    /// Starts one listening on `host` (an address of this machine other than 127.0.0.1).
    pub fn start_at(host: IpAddr) -> Nats {
        Nats::on(host, free_port(), free_port())
    }

    fn on(host: IpAddr, port: u16, monitor: u16) -> Nats {
        let exe = require("nats-server", "nats-server");
        let proc = Proc::spawn(
            "nats-server",
            Command::new(exe).args([
                "-a",
                &host.to_string(),
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
            ]),
        );
        wait_listening(SocketAddr::new(host, port), "nats-server");
        wait_listening(SocketAddr::new(host, monitor), "nats-server monitoring");
        Nats {
            port,
            monitor,
            host,
            proc,
        }
    }

    /// `nats://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.host, self.port))
    }

    /// The client connections: name and remote address, from `/connz`.
    pub fn clients(&self) -> Vec<(String, String)> {
        let connz: serde_json::Value =
            serde_json::from_str(&self.monitoring("/connz?limit=1024")).expect("JSON");
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["ip"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Kills it (SIGKILL: connections break without a goodbye).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.proc.kill();
        *self = Nats::on(self.host, self.port, self.monitor);
    }

    fn monitoring(&self, path: &str) -> String {
        let addr = SocketAddr::new(self.host, self.monitor);
        let (status, body) = get(addr, path).unwrap_or_else(|| panic!("GET {path} on nats-server"));
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The subjects subscribed under `prefix.` per client connection name (from `/connz?subs=1`,
    /// checked against `/subsz?subs=1`, the server's own subscription list: read again while a
    /// subscription changes between the two reads).
    pub fn subscriptions(&self, prefix: &str) -> PerConnection {
        let mut last = None;
        for _ in 0..50 {
            let (per_conn, from_connz, from_subsz) = self.read_subscriptions(prefix);
            if from_connz == from_subsz {
                return per_conn;
            }
            last = Some((from_connz, from_subsz));
        }
        panic!("/connz and /subsz keep disagreeing: {last:?}");
    }

    /// One read: per connection, then all subjects from `/connz`, then from `/subsz`.
    fn read_subscriptions(&self, prefix: &str) -> (PerConnection, Vec<String>, Vec<String>) {
        let connz: serde_json::Value =
            serde_json::from_str(&self.monitoring("/connz?subs=1&limit=1024")).expect("JSON");
        let subsz: serde_json::Value =
            serde_json::from_str(&self.monitoring("/subsz?subs=1&acc=%24G&limit=4096"))
                .expect("JSON");
        let mine = |s: &str| s.starts_with(&format!("{prefix}."));
        let mut per_conn = Vec::new();
        let mut from_connz = Vec::new();
        for c in connz["connections"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let mut subs: Vec<String> = c["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .filter(|s| mine(s))
                .map(str::to_owned)
                .collect();
            subs.sort();
            from_connz.extend(subs.iter().cloned());
            per_conn.push((name, subs));
        }
        let mut from_subsz: Vec<String> = subsz["subscriptions_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["subject"].as_str())
            .filter(|s| mine(s))
            .map(str::to_owned)
            .collect();
        from_subsz.sort();
        from_connz.sort();
        (per_conn, from_connz, from_subsz)
    }
}

/// Subjects per client connection name.
pub type PerConnection = Vec<(String, Vec<String>)>;

/// A `redis-server` on a free port, without persistence.
pub struct Redis {
    pub port: u16,
    /// The address it listens on.
    pub host: IpAddr,
    proc: Proc,
}

impl Redis {
    /// Starts one and waits until it accepts clients.
    pub fn start() -> Redis {
        Redis::on(LOCALHOST, free_port())
    }

    /// Starts one listening on `host` (an address of this machine other than 127.0.0.1; protected
    /// mode off, as Redis refuses other hosts' clients without a password otherwise).
    pub fn start_at(host: IpAddr) -> Redis {
        Redis::on(host, free_port())
    }

    fn on(host: IpAddr, port: u16) -> Redis {
        let exe = require("redis-server", "redis-server");
        let proc = Proc::spawn(
            "redis-server",
            Command::new(exe).args([
                "--port",
                &port.to_string(),
                "--bind",
                &host.to_string(),
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        );
        wait_listening(SocketAddr::new(host, port), "redis-server");
        Redis { port, host, proc }
    }

    /// `redis://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", SocketAddr::new(self.host, self.port))
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.proc.kill();
        *self = Redis::on(self.host, self.port);
    }

    /// Sends one command in RESP over a plain socket; the reader, after the reply's first line,
    /// and that line.
    fn command(&self, args: &[&str]) -> (BufReader<TcpStream>, String) {
        let mut s = TcpStream::connect((self.host, self.port)).expect("connect redis");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (r, line)
    }

    /// `PUBSUB NUMPAT`: pattern subscriptions (`PSUBSCRIBE`) on the server.
    pub fn numpat(&self) -> i64 {
        let (_, line) = self.command(&["PUBSUB", "NUMPAT"]);
        line.trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("PUBSUB NUMPAT answered {line:?}"))
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let (mut r, mut line) = self.command(&["PUBSUB", "CHANNELS", pattern]);
        let n: usize = line
            .trim()
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("PUBSUB CHANNELS answered {line:?}"));
        let mut out = Vec::new();
        for _ in 0..n.min(100_000) {
            line.clear();
            r.read_line(&mut line).unwrap(); // $len
            line.clear();
            r.read_line(&mut line).unwrap();
            out.push(line.trim_end().to_owned());
        }
        out.sort();
        out
    }
}

/// HAProxy in front of `backends` (each a WebSocket address and the port of its admin listener),
/// balancing WebSocket connections (leastconn) with a health check on the admin port's `/ready`
/// every 100 ms, and a stats page.
pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    stats: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts it and waits until every backend is up.
    pub fn start(backends: &[(SocketAddr, u16)]) -> Haproxy {
        let exe = require("haproxy", "haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("haproxy");
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, (b, admin))| format!("    server node{} {b} check port {admin}\n", i + 1))
            .collect();
        let cfg = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    \
             timeout server 60s\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\
             frontend ws\n    bind {addr}\n    default_backend nodes\n\
             backend nodes\n    balance leastconn\n    option httpchk\n    \
             http-check send meth GET uri /ready ver HTTP/1.1 hdr Host ringws\n    \
             http-check expect status 200\n    \
             default-server inter 100ms fall 1 rise 1\n{servers}\
             listen stats\n    bind {stats}\n    stats enable\n    stats uri /stats\n"
        );
        let path = dir.path.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let proc = Proc::spawn("haproxy", Command::new(exe).arg("-db").arg("-f").arg(&path));
        wait_listening(addr, "haproxy");
        let h = Haproxy {
            addr,
            stats,
            proc,
            _dir: dir,
        };
        for i in 1..=backends.len() {
            h.wait_state(&format!("node{i}"), "UP");
        }
        h
    }

    /// The state of each server (`UP`, `DOWN`, ...), from the stats page's CSV.
    pub fn states(&self) -> Vec<(String, String)> {
        let Some((200, csv)) = get(self.stats, "/stats;csv") else {
            return Vec::new();
        };
        csv.lines()
            .filter(|l| l.starts_with("nodes,node"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].to_owned(), f.get(17).copied().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Waits (bounded) until `server`'s state starts with `state`.
    pub fn wait_state(&self, server: &str, state: &str) {
        assert!(
            eventually(START_TIMEOUT, || self
                .states()
                .iter()
                .any(|(s, st)| s == server && st.starts_with(state))),
            "haproxy: {server} not {state}: {:?}\n{}",
            self.states(),
            self.proc.log()
        );
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringws-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `ringws ticker --bridge URL --symbols N --rate R`, started and waited for.
pub fn ticker(url: &str, symbols: usize, rate: u64) -> Proc {
    ticker_with(url, symbols, rate, &[])
}

/// [`ticker`] with more options (e.g. `--binary`).
pub fn ticker_with(url: &str, symbols: usize, rate: u64, extra: &[&str]) -> Proc {
    let p = Proc::spawn(
        "ringws ticker",
        Command::new(binary())
            .env("RUST_LOG", "warn")
            .args([
                "ticker",
                "--bridge",
                url,
                "--symbols",
                &symbols.to_string(),
                "--rate",
                &rate.to_string(),
                "--bridge-max-backoff",
                "0.2",
            ])
            .args(extra),
    );
    p.wait_for_output("ticker publishing", START_TIMEOUT);
    p
}

/// What a feed subscriber saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A quote of `symbol` numbered `seq`, published at `ts` (ns since the UNIX epoch).
    Quote { symbol: String, seq: u64, ts: u64 },
    /// A close frame with this code.
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Gone,
}

/// A feed client: subscribes, then reads quotes (answering pings).
pub struct Subscriber {
    pub client: RawClient,
    pub symbols: Vec<String>,
}

impl Subscriber {
    /// Connects to `addr` (a node or the load balancer) and subscribes to `symbols`; `None` if
    /// the connection or the handshake fails (a node going away).
    pub fn connect(addr: SocketAddr, symbols: &[String]) -> Option<Subscriber> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        let mut client = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            RawClient::connect_stream(stream)
        }))
        .ok()?;
        let list: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
        client.send(&Frame::text(format!(
            r#"{{"op":"subscribe","symbols":[{}]}}"#,
            list.join(",")
        )));
        // The acknowledgement comes first (pings may come before it).
        for _ in 0..100 {
            let frame = client.read_frame().ok()?;
            match frame.opcode {
                op::PING => client.send(&Frame::new(true, op::PONG, frame.payload)),
                op::TEXT if frame.payload.starts_with(br#"{"type":"subscribed""#) => {
                    return Some(Subscriber {
                        client,
                        symbols: symbols.to_vec(),
                    });
                }
                _ => return None,
            }
        }
        None
    }

    /// The next quote or the end; acknowledgements are skipped, pings answered. `None` when
    /// nothing came within the read timeout.
    pub fn next(&mut self) -> Option<Seen> {
        for _ in 0..1000 {
            let frame = match self.client.read_frame() {
                Ok(f) => f,
                Err(ReadError::Timeout) => return None,
                Err(_) => return Some(Seen::Gone),
            };
            match frame.opcode {
                op::PING => self.client.send(&Frame::new(true, op::PONG, frame.payload)),
                op::CLOSE => return Some(Seen::Close(frame.close_code())),
                op::TEXT => {
                    let v: serde_json::Value = serde_json::from_slice(&frame.payload)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", frame.payload));
                    match v["type"].as_str() {
                        Some("quote") => {
                            return Some(Seen::Quote {
                                symbol: v["symbol"].as_str().unwrap().to_owned(),
                                seq: v["seq"].as_u64().unwrap(),
                                ts: v["ts"].as_u64().unwrap(),
                            });
                        }
                        Some("subscribed") => {}
                        other => panic!("unexpected message {other:?}: {v}"),
                    }
                }
                op::BINARY => {
                    let q = ringws_cli::feed::Quote::from_binary(&frame.payload)
                        .unwrap_or_else(|| panic!("not a binary quote: {:?}", frame.payload));
                    return Some(Seen::Quote {
                        symbol: q.symbol.to_owned(),
                        seq: q.seq,
                        ts: q.ts,
                    });
                }
                other => panic!("unexpected frame opcode {other}"),
            }
        }
        None
    }
}

/// Reads `sub` until each of its symbols has `want` quotes after the first, each `seq` one more
/// than the one before (no gap, no repeat, no reordering), or `within` passes. `Err` describes
/// what went wrong.
pub fn expect_in_order(sub: &mut Subscriber, want: usize, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last: std::collections::HashMap<String, (u64, usize)> = Default::default();
    while Instant::now() < deadline {
        let done = sub
            .symbols
            .iter()
            .all(|s| last.get(s).is_some_and(|(_, n)| *n >= want));
        if done {
            return Ok(());
        }
        match sub.next() {
            Some(Seen::Quote { symbol, seq, .. }) => {
                if !sub.symbols.contains(&symbol) {
                    return Err(format!("a quote of {symbol}, not subscribed"));
                }
                match last.get_mut(&symbol) {
                    // The first one may be the node's last quote, older than the live ones.
                    None => {
                        last.insert(symbol, (seq, 0));
                    }
                    Some((prev, n)) if *n == 0 && seq > *prev => {
                        *prev = seq;
                        *n = 1;
                    }
                    Some((prev, n)) if seq == *prev + 1 => {
                        *prev = seq;
                        *n += 1;
                    }
                    Some((prev, _)) => {
                        return Err(format!("{symbol}: seq {seq} after {prev}"));
                    }
                }
            }
            Some(other) => return Err(format!("{other:?} while reading quotes")),
            None => {}
        }
    }
    Err(format!(
        "not {want} quotes per symbol within {within:?}: {last:?}"
    ))
}

/// Network namespaces that stand for separate hosts, one veth each into a bridge of the test's own
/// in the root namespace, on a /24 of 10.213.0.0/16 picked from the process id and a count of the
/// process's `Hosts`: the root namespace
/// is `.1` (where brokers and HAProxy reach them), host `i` is `.(11 + i)`. Made by the test and
/// removed when dropped (root only).
pub struct Hosts {
    ip: PathBuf,
    tag: String,
    bridge: String,
    namespaces: Vec<String>,
    /// Each host's end of its veth.
    links: Vec<String>,
    /// The root namespace's address on the bridge.
    pub gateway: IpAddr,
    /// Each host's address.
    pub addrs: Vec<IpAddr>,
}

/// Runs `ip ARGS`, failing the test with its output if it fails.
fn ip(args: &[&str]) {
    let exe = require("ip", "iproute2");
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}{} (network namespaces need root with CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    /// `n` hosts (at most 200).
    pub fn new(n: usize) -> Hosts {
        assert!(n <= 200);
        // Unique per test (a counter) and per process (the pid), in names and subnets alike.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n_made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 10_000, n_made % 10);
        let net = 1 + ((pid % 50) * 5 + n_made % 5) % 250;
        let mut hosts = Hosts {
            ip: require("ip", "iproute2"),
            bridge: format!("rwb{tag}"),
            namespaces: Vec::new(),
            links: Vec::new(),
            gateway: IpAddr::V4(Ipv4Addr::new(10, 213, net as u8, 1)),
            addrs: Vec::new(),
            tag,
        };
        let gw = format!("{}/24", hosts.gateway);
        ip(&["link", "add", &hosts.bridge, "type", "bridge"]);
        ip(&["addr", "add", &gw, "dev", &hosts.bridge]);
        ip(&["link", "set", &hosts.bridge, "up"]);
        for i in 0..n {
            let ns = format!("ringws-{}-{i}", hosts.tag);
            ip(&["netns", "add", &ns]);
            hosts.namespaces.push(ns.clone());
            let (outer, inner) = (
                format!("rwh{}x{i}", hosts.tag),
                format!("rwn{}x{i}", hosts.tag),
            );
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ]);
            ip(&["link", "set", &outer, "master", &hosts.bridge]);
            ip(&["link", "set", &outer, "up"]);
            let addr = Ipv4Addr::new(10, 213, net as u8, 11 + i as u8);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            hosts.addrs.push(IpAddr::V4(addr));
            hosts.links.push(inner);
        }
        hosts
    }

    /// Takes host `i`'s network link down (`false`: its packets are dropped, no connection is
    /// reset) or up again.
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.namespaces[i],
            "link",
            "set",
            &self.links[i],
            state,
        ]);
    }

    /// A command that runs `program` on host `i` (in its namespace).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.namespaces[i]]).arg(program);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so its peer, once nothing
        // holds the namespace any more (a socket closing late can): delete the outer ends too.
        for (i, ns) in self.namespaces.iter().enumerate() {
            let outer = format!("rwh{}x{i}", self.tag);
            let _ = Command::new(&self.ip)
                .args(["link", "del", &outer])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new(&self.ip).args(["netns", "del", ns]).status();
        }
        let _ = Command::new(&self.ip)
            .args(["link", "del", &self.bridge])
            .status();
    }
}
