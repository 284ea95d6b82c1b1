//! Operations against real `ringws serve` processes and the real tools that consume them:
//!
//! - `/metrics` counts exactly what a scripted client did, read back with Python's official
//!   `prometheus_client` text parser (the scrape's own connection accounted for); a backpressure
//!   drop counted exactly, in-process with `ServerHandle::stats()` and `/metrics`;
//! - `promtool check metrics` accepts the exposition of a server that has served traffic;
//! - a real Prometheus server scrapes the admin listener and sees the open connections;
//! - the drain: `/ready` answers 503 within 100 ms of SIGTERM while an open connection still
//!   echoes for `--drain-delay`, which then gets Close 1001, and the process exits 0;
//! - a real HAProxy in front of two backends takes the draining one out (`option httpchk GET
//!   /ready`), sends every new WebSocket to the other, and keeps the old tunnel until its 1001;
//! - `--admin-addr` moves the endpoints off the WebSocket port; `--no-ops-endpoints` removes them;
//!   `/health` names a stuck worker;
//! - every metric family a live server exposes is documented in `docs/operations.md`, whose
//!   HAProxy snippet `haproxy -c` accepts.
//!
//! The tools come from `scripts/test.sh` (the Python venv at `tests/interop/.venv`, Debian's
//! `prometheus` and `haproxy`); without them the tests fail and say how to install them. Every
//! wait is bounded, and every child process is killed when its test ends.

mod common;

use common::brokers::{self, Proc};
use common::{
    Frame, InProcess, RawClient, Server, bytes, eventually, http_get, http_request, repo_root,
    run_bounded, text, upgrade_request, wait_timeout,
};
use ringws::{BackpressurePolicy, Handler, Message, SendResult, Socket};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on one run of a helper program (the Python parser, promtool).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a daemon (Prometheus, HAProxy) becoming ready, on a loaded machine.
const DAEMON_READY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------
// Reading /metrics

/// One sample as `prometheus_client` parsed it.
#[derive(Debug, Clone)]
struct Sample {
    /// The series name (`_total`, `_bucket`, ... included).
    name: String,
    /// Its labels.
    labels: BTreeMap<String, String>,
    /// Its value.
    value: f64,
}

/// An exposition as `prometheus_client` parsed it: family names (without `_total` for counters,
/// as the parser names them) with their types, and every sample.
#[derive(Debug)]
struct Exposition {
    /// Family name to type (`counter`, `gauge`, `histogram`).
    families: BTreeMap<String, String>,
    /// Every sample, in the order of the text.
    samples: Vec<Sample>,
}

impl Exposition {
    /// The samples named `name` whose labels include every pair of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample `name{labels...}`; fails the test if there is none or several.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() == 1,
            "want exactly one sample {name}{labels:?}, found {}: {found:?}",
            found.len()
        );
        found[0].value
    }

    /// The sum over every sample `name{labels...}` (0 when there is none: counters by code or
    /// status leave out the values never seen).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families` (through
/// `tests/interop/python/metrics_json.py`); a text the parser rejects fails the test.
fn parse(text: &str) -> Exposition {
    let mut child = common::python("metrics_json.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the venv's python");
    // Written from a thread so that a parser that stops reading cannot block the test.
    let mut stdin = child.stdin.take().expect("piped");
    let input = text.to_owned();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let (out_tx, out_rx) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = out_tx.send((out, err));
    });
    let status = wait_timeout(&mut child, TOOL_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the metrics parser did not finish within {TOOL_TIMEOUT:?}");
    }
    let _ = writer.join();
    let (out, err) = out_rx
        .recv_timeout(TOOL_TIMEOUT)
        .expect("the parser's output");
    let status = status.expect("exited");
    assert!(
        status.success(),
        "prometheus_client could not parse /metrics ({status}):\n{err}\n--- input ---\n{text}"
    );
    let json: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("the parser printed no JSON ({e}):\n{out}\n{err}"));
    let families = json["families"]
        .as_array()
        .expect("families")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_owned(),
                f["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    let samples = json["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_owned(),
            labels: s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_owned()))
                .collect(),
            value: s["value"]
                .as_str()
                .expect("value")
                .parse()
                .expect("a float"),
        })
        .collect();
    Exposition { families, samples }
}

/// `GET /metrics` from `addr`: asserts a 200 in the 0.0.4 text format and returns the body.
fn scrape(addr: SocketAddr) -> String {
    let (resp, body) = http_get(addr, "/metrics");
    assert_eq!(resp.status, 200, "GET /metrics on {addr}");
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "GET /metrics on {addr}"
    );
    String::from_utf8(body).expect("/metrics is UTF-8")
}

/// The value of the sample line `series` (`name{labels}` exactly as the server writes it) in an
/// exposition: a quick read for polling loops (the exact checks go through `prometheus_client`).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

/// The admin listener's address, from the line `ringws serve --admin-addr` prints after its
/// ready line (waited for, bounded).
fn admin_addr(server: &Server) -> SocketAddr {
    const PREFIX: &str = "admin endpoints on http://";
    let mut found = None;
    let printed = eventually(Duration::from_secs(10), || {
        found = server.log().lines().find_map(|l| {
            let rest = l.strip_prefix(PREFIX)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        found.is_some()
    });
    assert!(printed, "no `{PREFIX}...` line; output:\n{}", server.log());
    found.expect("found")
}

/// A plain `GET path` whose status and body are returned (the server closes after answering).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (resp, body) = http_get(addr, path);
    (resp.status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------------------
// a. Counters move by exactly what a client did

/// Text messages the scripted client sends.
const N: usize = 25;
/// Bytes of each text message.
const M: usize = 200;
/// Binary messages the scripted client sends.
const B: usize = 3;
/// Bytes of each binary message.
const BL: usize = 300;
/// `--max-message-size` of the counting test.
const LIMIT: usize = 1024;

/// Every counter a scripted client can move moves by exactly what it did, as Python's official
/// parser reads `/metrics`: echoes, a ping, a clean close, a 1009, a 403 and a 400 on one worker,
/// with the scrapes' own connections accounted for. Exact values catch double counting, counting
/// the wrong side or kind, and counters that never move.
#[test]
fn counters_move_by_exactly_what_the_clients_did() {
    let server = Server::start(&[
        "--allow-origin",
        "https://example.com",
        "--max-message-size",
        &LIMIT.to_string(),
    ]);
    let addr = server.addr;

    // 1. N text and B binary messages echoed, a ping answered, a clean close (1000) by the client.
    let mut c = RawClient::connect(addr);
    for i in 0..N {
        c.echo(Frame::text(text(M, i as u8)));
    }
    for i in 0..B {
        c.echo(Frame::binary(bytes(BL, i as u8)));
    }
    c.send(&Frame::ping(b"ping".to_vec()));
    c.expect_pong(b"ping");
    c.send(&Frame::close(1000, b""));
    let echoed_close = c.expect_close_frame(Some(1000));
    c.expect_closed();
    // The server waits (up to close_timeout) for the client's side of the TCP close.
    drop(c);

    // 2. A message over the limit: closed with 1009 by the server; the client answers the Close.
    let mut big = RawClient::connect(addr);
    big.send(&Frame::text(text(LIMIT + 1, 7)));
    let close_1009 = big.expect_close_frame(Some(1009));
    big.send(&Frame::close(1009, b""));
    big.expect_closed();
    drop(big);

    // 3. An upgrade from an Origin not allowed: 403.
    let wrong_origin =
        upgrade_request(addr).replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n");
    let (resp, head) = http_request(addr, wrong_origin.as_bytes());
    assert_eq!(resp.status, 403, "{head}");

    // 4. An upgrade without Sec-WebSocket-Key: 400.
    let no_key = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let (resp, head) = http_request(addr, no_key.as_bytes());
    assert_eq!(resp.status, 400, "{head}");
    let clients = 4.0;

    // The scrape is itself a connection of the WebSocket port, open while it is answered: the
    // others are gone once only it is open (each scrape is counted as accepted).
    let mut scrapes = 0.0;
    let mut text = String::new();
    let settled = eventually(Duration::from_secs(10), || {
        text = scrape(addr);
        scrapes += 1.0;
        sample(&text, r#"ringws_connections_open{worker="0"}"#) == 1.0
    });
    assert!(settled, "connections still open:\n{text}");
    let m = parse(&text);
    let w = ("worker", "0");
    let v = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![w];
        all.extend_from_slice(labels);
        m.value(name, &all)
    };

    assert_eq!(v("ringws_connections_open", &[]), 1.0, "the scrape itself");
    assert_eq!(
        v("ringws_connections_accepted_total", &[]),
        clients + scrapes,
        "4 clients and {scrapes} scrapes"
    );
    // Upgrades: two accepted, one 403, one 400; the scrapes are no upgrades.
    assert_eq!(v("ringws_upgrades_total", &[("status", "101")]), 2.0);
    assert_eq!(v("ringws_upgrades_total", &[("status", "403")]), 1.0);
    assert_eq!(v("ringws_upgrades_total", &[("status", "400")]), 1.0);
    assert_eq!(m.sum("ringws_upgrades_total", &[]), 4.0);
    assert_eq!(
        v("ringws_connections_rejected_total", &[("reason", "origin")]),
        1.0
    );
    assert_eq!(
        v(
            "ringws_connections_rejected_total",
            &[("reason", "handshake_error")]
        ),
        1.0
    );
    assert_eq!(m.sum("ringws_connections_rejected_total", &[]), 2.0);
    // The oversized message: one violation, one close by this side with its code.
    assert_eq!(
        v("ringws_protocol_violations_total", &[("code", "1009")]),
        1.0
    );
    assert_eq!(m.sum("ringws_protocol_violations_total", &[]), 1.0);
    assert_eq!(
        v(
            "ringws_closes_total",
            &[("code", "1009"), ("side", "local")]
        ),
        1.0
    );
    assert_eq!(
        v("ringws_closes_total", &[("code", "1000"), ("side", "peer")]),
        1.0
    );
    assert_eq!(m.sum("ringws_closes_total", &[]), 2.0);
    // Received: the messages, the ping, the first client's Close (a 2-byte payload). The
    // oversized message was refused from its header and is not counted, and so is the second
    // client's answering Close: after a frame it refused, the server decodes nothing more of the
    // stream (what follows is the refused frame's payload).
    let received = |kind| v("ringws_messages_received_total", &[("kind", kind)]);
    let received_bytes = |kind| v("ringws_received_bytes_total", &[("kind", kind)]);
    assert_eq!(received("text"), N as f64);
    assert_eq!(received_bytes("text"), (N * M) as f64);
    assert_eq!(received("binary"), B as f64);
    assert_eq!(received_bytes("binary"), (B * BL) as f64);
    assert_eq!(received("ping"), 1.0);
    assert_eq!(received_bytes("ping"), 4.0);
    assert_eq!(received("pong"), 0.0);
    assert_eq!(received("close"), 1.0);
    assert_eq!(received_bytes("close"), 2.0);
    // Sent: the echoes, the pong, the two Close frames as the clients received them.
    let sent = |kind| v("ringws_messages_sent_total", &[("kind", kind)]);
    let sent_bytes = |kind| v("ringws_sent_bytes_total", &[("kind", kind)]);
    assert_eq!(sent("text"), N as f64);
    assert_eq!(sent_bytes("text"), (N * M) as f64);
    assert_eq!(sent("binary"), B as f64);
    assert_eq!(sent_bytes("binary"), (B * BL) as f64);
    assert_eq!(sent("pong"), 1.0);
    assert_eq!(sent_bytes("pong"), 4.0);
    assert_eq!(sent("ping"), 0.0);
    assert_eq!(sent("close"), 2.0);
    assert_eq!(
        sent_bytes("close"),
        (echoed_close.payload.len() + close_1009.payload.len()) as f64
    );
    // Nothing was dropped or over backpressure; the handshake histogram saw the two upgrades.
    assert_eq!(v("ringws_backpressure_events_total", &[]), 0.0);
    assert_eq!(v("ringws_dropped_messages_total", &[]), 0.0);
    assert_eq!(
        v("ringws_handshake_duration_seconds_count", &[]),
        2.0,
        "one observation per 101"
    );
    assert_eq!(
        v(
            "ringws_handshake_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(m.value("ringws_ready", &[]), 1.0);
    assert_eq!(m.value("ringws_draining", &[]), 0.0);
    assert_eq!(
        m.value(
            "ringws_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The types as the parser read them (it names counter families without `_total`).
    for (family, kind) in [
        ("ringws_connections_open", "gauge"),
        ("ringws_connections_accepted", "counter"),
        ("ringws_messages_received", "counter"),
        ("ringws_handshake_duration_seconds", "histogram"),
        ("ringws_loop_turn_duration_seconds", "histogram"),
        ("ringws_build_info", "gauge"),
        ("process_cpu_seconds", "counter"),
    ] {
        assert_eq!(
            m.families.get(family).map(String::as_str),
            Some(kind),
            "type of {family}"
        );
    }
    // No series appears twice.
    let mut seen = std::collections::BTreeSet::new();
    for s in &m.samples {
        assert!(
            seen.insert((s.name.clone(), s.labels.clone())),
            "duplicate series {s:?}"
        );
    }
}

/// Floods its connection with 16 KiB binary messages when told `flood`, counting what each send
/// returned; `Drop` policy, so sends over `max_backpressure` are dropped.
struct Flood {
    /// Shared with the test.
    counts: Arc<FloodCounts>,
}

/// What [`Flood`]'s sends returned, and how many floods are done.
#[derive(Default)]
struct FloodCounts {
    /// Sends that returned `Queued`.
    queued: AtomicU64,
    /// Sends that returned `Backpressure` (queued, over the limit now).
    backpressure: AtomicU64,
    /// Sends that returned `Dropped`.
    dropped: AtomicU64,
    /// Floods finished (the counts above are final for them).
    floods: AtomicU64,
}

/// Messages per flood (together far over the 64 KiB `max_backpressure`).
const FLOOD: usize = 200;
/// Bytes of each flood message.
const FLOOD_SIZE: usize = 16 << 10;

impl Handler for Flood {
    type State = ();

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        if msg != Message::Text("flood") {
            return;
        }
        let payload = vec![0x5a; FLOOD_SIZE];
        let c = &self.counts;
        for _ in 0..FLOOD {
            let counter = match ws.send_binary(&payload) {
                SendResult::Queued => &c.queued,
                SendResult::Backpressure => &c.backpressure,
                SendResult::Dropped => &c.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        c.floods.fetch_add(1, Ordering::Release);
    }
}

/// A handler that sends into a connection whose reader is stalled, under `BackpressurePolicy::Drop`:
/// `stats()` and `/metrics` count exactly the sends that returned `Dropped` (and the
/// `Backpressure` ones as events), and dropped messages are not counted as sent. In-process,
/// because the echo server of the CLI never drops (it pauses).
#[test]
fn backpressure_drops_are_counted_exactly() {
    let counts = Arc::new(FloodCounts::default());
    let server = InProcess::builder(1)
        .backpressure_policy(BackpressurePolicy::Drop)
        .max_backpressure(64 << 10)
        .socket_send_buffer(4096)
        .build()
        .expect("build");
    let server = {
        let counts = Arc::clone(&counts);
        InProcess::run(server, move |_| Flood {
            counts: Arc::clone(&counts),
        })
    };
    // A client that never reads, with a small receive buffer: what the server sends stays queued.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect_timeout(&server.addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut stalled = RawClient::connect_stream(s.into());
    for round in 1..=2 {
        stalled.send(&Frame::text("flood"));
        assert!(
            eventually(Duration::from_secs(10), || counts
                .floods
                .load(Ordering::Acquire)
                == round),
            "flood {round} not done"
        );
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (queued, over, dropped) = (
        load(&counts.queued),
        load(&counts.backpressure),
        load(&counts.dropped),
    );
    assert_eq!(queued + over + dropped, 2 * FLOOD as u64);
    assert!(
        dropped >= FLOOD as u64,
        "a stalled reader's queue stays over the limit: {queued} queued, {over} over, {dropped} dropped"
    );

    let stats = server.handle.stats();
    let w = &stats.workers[0];
    assert_eq!(w.dropped, dropped, "{w:?}");
    assert_eq!(w.backpressure_events, over + dropped, "{w:?}");
    assert_eq!(
        w.messages_sent.get(ringws::engine::MessageKind::Binary),
        queued + over,
        "dropped messages are not sent"
    );
    assert_eq!(
        w.sent_bytes.get(ringws::engine::MessageKind::Binary),
        (queued + over) * FLOOD_SIZE as u64
    );
    assert_eq!(w.slow_consumer_disconnects, 0, "Drop does not disconnect");

    // /metrics (on the WebSocket port of the library's server) says the same.
    let m = parse(&scrape(server.addr));
    let v = |name| m.value(name, &[("worker", "0")]);
    assert_eq!(v("ringws_dropped_messages_total"), dropped as f64);
    assert_eq!(
        v("ringws_backpressure_events_total"),
        (over + dropped) as f64
    );
    assert_eq!(
        m.value(
            "ringws_messages_sent_total",
            &[("worker", "0"), ("kind", "binary")]
        ),
        (queued + over) as f64
    );
    drop(stalled);
}

// ---------------------------------------------------------------------------------------------------
// b. promtool

/// A server that has echoed, refused and closed: every kind of series has values.
fn busy_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--allow-origin",
        "https://example.com",
        "--max-message-size",
        "1024",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let mut c = RawClient::connect(server.addr);
    for i in 0..10 {
        c.echo(Frame::text(text(100, i)));
        c.echo(Frame::binary(bytes(100, i)));
    }
    c.close_normally();
    let mut big = RawClient::connect(server.addr);
    big.send(&Frame::binary(bytes(2000, 1)));
    big.expect_close(Some(1009));
    let wrong_origin = upgrade_request(server.addr)
        .replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n");
    let (resp, _) = http_request(server.addr, wrong_origin.as_bytes());
    assert_eq!(resp.status, 403);
    server
}

/// `promtool check metrics` (Prometheus's own linter) finds nothing to say about the exposition of a
/// server that has served traffic (so that the label sets shown only when non-zero are there).
#[test]
fn promtool_accepts_the_exposition() {
    let promtool = brokers::require("promtool", "prometheus");
    let server = busy_server(&[]);
    let text = scrape(server.addr);
    assert!(
        text.contains(r#"ringws_protocol_violations_total{worker="0",code="1009"} 1"#),
        "the scrape should show the traffic:\n{text}"
    );
    let dir = brokers::TempDir::new("promtool");
    let file = dir.path.join("metrics.txt");
    fs::write(&file, &text).expect("writing the exposition");
    // promtool reads the exposition from stdin only; run_bounded gives its programs none.
    let (status, out) = run_bounded(
        Command::new("sh")
            .args(["-c", "exec \"$1\" check metrics < \"$2\"", "sh"])
            .arg(&promtool)
            .arg(&file),
        TOOL_TIMEOUT,
    );
    let status = status.unwrap_or_else(|| panic!("promtool did not finish:\n{out}"));
    assert!(
        status.success() && out.trim().is_empty(),
        "promtool check metrics ({status}) found problems:\n{out}\n--- exposition ---\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------------
// c. A real Prometheus

/// The value of the instant query `query` on the Prometheus at `web`; `None` while the query has
/// no result (nothing scraped yet) or Prometheus does not answer.
fn prometheus_query(web: SocketAddr, query: &str) -> Option<f64> {
    let (status, body) = brokers::get(web, &format!("/api/v1/query?query={query}"))?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(json["status"], "success", "query {query}: {body}");
    json["data"]["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// A real Prometheus server scraping the admin listener every second sees `sum(ringws_connections_open)`
/// go from 0 to the K connections a client opened, then down as they close: the exposition works
/// end to end with the consumer it is written for.
#[test]
fn prometheus_scrapes_the_open_connections() {
    let prometheus_bin = brokers::require("prometheus", "prometheus");
    // Two workers: the query sums their series. The scrapes go to the admin listener, so they
    // are no connections of the WebSocket port.
    let server = Server::start(&["--workers", "2", "--admin-addr", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let dir = brokers::TempDir::new("prometheus");
    let config = dir.path.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ringws\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("writing prometheus.yml");
    let web = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut prometheus = Proc::spawn(
        "prometheus",
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}")),
    );
    let ready = eventually(DAEMON_READY, || {
        assert!(
            prometheus.is_running(),
            "prometheus exited:\n{}",
            prometheus.log()
        );
        brokers::get(web, "/-/ready").is_some_and(|(status, _)| status == 200)
    });
    assert!(ready, "Prometheus not ready within {DAEMON_READY:?}");

    const QUERY: &str = "sum(ringws_connections_open)";
    let mut last = None;
    let mut sees = |want: f64, within: Duration| {
        let seen = eventually(within, || {
            last = prometheus_query(web, QUERY);
            last == Some(want)
        });
        assert!(
            seen,
            "Prometheus never had {QUERY} == {want} (last: {last:?}); ringws's /metrics now:\n{}",
            scrape(admin)
        );
    };
    // The first scrape: nothing open.
    sees(0.0, DAEMON_READY);
    const K: usize = 5;
    let mut clients: Vec<RawClient> = (0..K).map(|_| RawClient::connect(server.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.echo(Frame::text(format!("client {i}")));
    }
    let opened = Instant::now();
    sees(K as f64, Duration::from_secs(30));
    println!(
        "Prometheus saw {K} connections {:?} after they opened",
        opened.elapsed()
    );
    // And follows them down.
    for mut c in clients.drain(..2) {
        c.close_normally();
    }
    sees((K - 2) as f64, Duration::from_secs(30));
    assert!(
        prometheus.is_running(),
        "prometheus exited:\n{}",
        prometheus.log()
    );
}

// ---------------------------------------------------------------------------------------------------
// d. The drain

/// The drain as a load balancer sees it: `/ready` turns 503 within 100 ms of SIGTERM while `/health`
/// stays 200; an open connection echoes and new ones are accepted through `--drain-delay`; then
/// every connection gets Close 1001 (not before the delay) and the process exits 0.
#[test]
fn sigterm_drains_then_closes_with_1001_and_exits_0() {
    const DELAY: Duration = Duration::from_secs(2);
    let mut server = Server::start(&["--drain-delay", "2"]);
    let addr = server.addr;
    assert_eq!(get(addr, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/ready"), (200, "ready\n".to_owned()));
    let mut c = RawClient::connect(addr);
    c.echo(Frame::text("before the signal"));

    server.signal(libc::SIGTERM);
    let sent = Instant::now();
    // /ready turns 503 at once: polled from the signal on (each poll is a new connection, which
    // the draining server still accepts).
    let mut polls = 0;
    let first_503 = loop {
        let (status, body) = get(addr, "/ready");
        polls += 1;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break sent.elapsed();
        }
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "/ready still 200 {:?} after SIGTERM",
            sent.elapsed()
        );
    };
    println!("/ready answered 503 {first_503:?} after SIGTERM ({polls} polls)");
    assert!(
        first_503 <= Duration::from_millis(100),
        "/ready answered 503 only {first_503:?} after SIGTERM"
    );

    // During the delay: the open connection is served, new ones are accepted, /health is 200.
    c.echo(Frame::text("during the drain"));
    assert_eq!(get(addr, "/health"), (200, "ok\n".to_owned()));
    let mut late = RawClient::connect(addr);
    late.echo(Frame::text("connected during the drain"));
    let m = scrape(addr);
    assert_eq!(sample(&m, "ringws_draining"), 1.0);
    assert_eq!(sample(&m, "ringws_ready"), 0.0);
    // Nothing arrives for the first second of the delay, and the connection still echoes then.
    let quiet_until = sent + DELAY / 2;
    assert!(
        !c.wait_readable(quiet_until.saturating_duration_since(Instant::now())),
        "the server sent something {:?} into a drain of {DELAY:?}",
        sent.elapsed()
    );
    c.echo(Frame::text("half-way through the drain"));
    let echoed_at = sent.elapsed();
    assert!(echoed_at < DELAY, "the check came too late: {echoed_at:?}");

    // Then the graceful shutdown: Close 1001 to both, and a clean exit.
    c.expect_close_frame(Some(1001));
    let closed_at = sent.elapsed();
    println!("Close 1001 {closed_at:?} after SIGTERM");
    assert!(
        closed_at >= DELAY - Duration::from_millis(50),
        "Close 1001 came {closed_at:?} after SIGTERM, before the {DELAY:?} drain delay"
    );
    c.send(&Frame::close(1001, b""));
    c.expect_closed();
    late.expect_close(Some(1001));
    // The shutdown waits (up to shutdown_timeout) for the clients' side of the TCP close.
    let closed = Instant::now();
    drop((c, late));
    let status = server.wait_exit(Duration::from_secs(10));
    println!("exited {:?} after the clients closed", closed.elapsed());
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after the drain: {status:?}\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------------------------
// e. HAProxy in front of two backends

/// One row per proxy and server of HAProxy's `show stat`, by column name; `None` while the
/// socket does not answer (HAProxy starting).
fn haproxy_stat(socket: &Path) -> Option<Vec<BTreeMap<String, String>>> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"show stat\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
    Some(
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                header
                    .iter()
                    .zip(l.split(','))
                    .map(|(k, v)| (k.to_string(), v.to_owned()))
                    .collect()
            })
            .collect(),
    )
}

/// The check status (`UP`, `DOWN`, ...) HAProxy gives server `name` of backend `ringws`.
fn haproxy_status(socket: &Path, name: &str) -> Option<String> {
    haproxy_stat(socket)?
        .into_iter()
        .find(|row| {
            row.get("pxname").map(String::as_str) == Some("ringws")
                && row.get("svname").map(String::as_str) == Some(name)
        })?
        .remove("status")
}

/// Upgrades a backend accepted so far, read from its admin listener (the health checks go there
/// too, so they are not counted).
fn upgrades(admin: SocketAddr) -> f64 {
    let text = scrape(admin);
    // Statuses never answered are left out of the exposition.
    text.lines()
        .find_map(|l| l.strip_prefix(r#"ringws_upgrades_total{worker="0",status="101"} "#))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

/// A real HAProxy with the backend of docs/operations.md in front of two servers: SIGTERM to one
/// makes HAProxy mark it DOWN (its `/ready` check fails) during the drain, every new WebSocket then
/// lands on the other (told apart by each backend's upgrade count), and a tunnel already open to
/// the draining one keeps echoing until its Close 1001.
#[test]
fn haproxy_takes_a_draining_backend_out() {
    let haproxy_bin = brokers::require("haproxy", "haproxy");
    const DELAY: Duration = Duration::from_secs(3);
    let mut a = Server::start(&["--admin-addr", "127.0.0.1:0", "--drain-delay", "3"]);
    let b = Server::start(&["--admin-addr", "127.0.0.1:0", "--drain-delay", "3"]);
    let (a_admin, b_admin) = (admin_addr(&a), admin_addr(&b));
    let dir = brokers::TempDir::new("haproxy");
    let socket = dir.path.join("haproxy.sock");
    let config = dir.path.join("haproxy.cfg");
    let front = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    // The backend of docs/operations.md: health checks on /ready of the admin listener (every
    // 100 ms here), one failure takes a server out; WebSocket tunnels may idle for an hour.
    fs::write(
        &config,
        format!(
            "global\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   timeout tunnel 1h\n\
             frontend websocket\n\
             \x20   bind {front}\n\
             \x20   default_backend ringws\n\
             backend ringws\n\
             \x20   balance leastconn\n\
             \x20   option httpchk GET /ready\n\
             \x20   http-check expect status 200\n\
             \x20   default-server inter 100ms fall 1 rise 1\n\
             \x20   server a {} check port {}\n\
             \x20   server b {} check port {}\n",
            a.addr,
            a_admin.port(),
            b.addr,
            b_admin.port(),
            socket = socket.display(),
        ),
    )
    .expect("writing haproxy.cfg");
    let mut haproxy = Proc::spawn(
        "haproxy",
        Command::new(haproxy_bin).arg("-db").arg("-f").arg(&config),
    );
    let up = eventually(DAEMON_READY, || {
        assert!(haproxy.is_running(), "haproxy exited:\n{}", haproxy.log());
        ["a", "b"]
            .iter()
            .all(|s| haproxy_status(&socket, s).is_some_and(|st| st.starts_with("UP")))
    });
    assert!(
        up,
        "HAProxy did not report both backends UP within {DAEMON_READY:?}: {:?}",
        haproxy_stat(&socket)
    );

    // Clients through HAProxy, each traced to its backend by the backends' upgrade counts.
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    let (mut seen_a, mut seen_b) = (upgrades(a_admin), upgrades(b_admin));
    for i in 0..4u8 {
        let mut c = RawClient::connect(front);
        c.echo(Frame::text(format!("client {i}")));
        let (now_a, now_b) = (upgrades(a_admin), upgrades(b_admin));
        match (now_a - seen_a, now_b - seen_b) {
            (1.0, 0.0) => on_a.push(c),
            (0.0, 1.0) => on_b.push(c),
            other => panic!("client {i}: upgrade counts moved by {other:?}"),
        }
        (seen_a, seen_b) = (now_a, now_b);
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "leastconn should use both backends: {} on a, {} on b",
        on_a.len(),
        on_b.len()
    );

    // Drain a: HAProxy sees /ready fail and marks it DOWN well within the delay.
    a.signal(libc::SIGTERM);
    let sent = Instant::now();
    let down = eventually(DELAY / 2, || {
        haproxy_status(&socket, "a").is_some_and(|st| st.starts_with("DOWN"))
    });
    let down_after = sent.elapsed();
    assert!(
        down,
        "HAProxy did not mark the draining backend DOWN within {:?}: {:?}",
        DELAY / 2,
        haproxy_stat(&socket)
    );
    println!("HAProxy marked the draining backend DOWN {down_after:?} after SIGTERM");
    assert!(a.is_running(), "the backend should still be draining");
    assert_eq!(get(a_admin, "/ready"), (503, "draining\n".to_owned()));

    // New connections all go to b.
    const NEW: usize = 6;
    let mut new = Vec::new();
    for i in 0..NEW {
        let mut c = RawClient::connect(front);
        c.echo(Frame::text(format!("new client {i}")));
        new.push(c);
    }
    assert_eq!(
        upgrades(a_admin),
        seen_a,
        "a new connection went to the draining backend"
    );
    assert_eq!(upgrades(b_admin), seen_b + NEW as f64);
    // ... while a's connections are still served (the drain is not over).
    for c in &mut on_a {
        c.echo(Frame::text("still on the draining backend"));
    }
    let served_at = sent.elapsed();
    assert!(
        served_at < DELAY,
        "the checks took longer than the drain ({served_at:?})"
    );
    assert_eq!(
        haproxy_status(&socket, "b").as_deref(),
        Some("UP"),
        "{:?}",
        haproxy_stat(&socket)
    );

    // At the end of the delay a's connections get 1001 through the tunnel; b's keep echoing.
    for c in &mut on_a {
        c.expect_close_frame(Some(1001));
        let at = sent.elapsed();
        assert!(
            at >= DELAY - Duration::from_millis(50),
            "Close 1001 {at:?} after SIGTERM, before the {DELAY:?} delay"
        );
        c.send(&Frame::close(1001, b""));
        c.expect_closed();
    }
    drop(on_a);
    let status = a.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "backend a: {status:?}");
    for c in on_b.iter_mut().chain(&mut new) {
        c.echo(Frame::text("b serves on"));
        c.close_normally();
    }
    assert!(haproxy.is_running(), "haproxy exited:\n{}", haproxy.log());
}

// ---------------------------------------------------------------------------------------------------
// f. The admin listener, and no endpoints at all

/// With `--admin-addr` the endpoints are answered there only (anything else there is 404), the
/// WebSocket port hands the same paths to the handler (the echo server's 426), and scrapes of the
/// admin listener are not counted as connections of the WebSocket port.
#[test]
fn admin_addr_moves_the_endpoints_off_the_websocket_port() {
    let server = Server::start(&["--admin-addr", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    assert_ne!(admin.port(), server.addr.port());
    // On the admin listener: the three endpoints, nothing else.
    let text = scrape(admin);
    assert!(
        text.contains("# TYPE ringws_connections_open gauge"),
        "{text}"
    );
    assert_eq!(get(admin, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(get(admin, "/ready"), (200, "ready\n".to_owned()));
    assert_eq!(get(admin, "/").0, 404);
    let (resp, _) = http_request(
        admin,
        format!("POST /metrics HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 404, "only GET is answered");
    // On the WebSocket port they are the handler's: the echo server answers 426.
    for path in ["/metrics", "/health", "/ready"] {
        let (resp, body) = http_get(server.addr, path);
        assert_eq!(resp.status, 426, "GET {path} on the WebSocket port");
        assert_eq!(resp.header("upgrade"), Some("websocket"));
        assert!(!String::from_utf8_lossy(&body).contains("ringws_"));
    }
    let mut c = RawClient::connect(server.addr);
    c.echo(Frame::text("hello"));
    c.close_normally();
    drop(c);
    // The admin scrapes are no connections of the WebSocket port: 3 plain requests and 1
    // WebSocket there, however often the admin listener was asked.
    let mut text = String::new();
    let closed = eventually(Duration::from_secs(10), || {
        text = scrape(admin);
        sample(&text, r#"ringws_connections_open{worker="0"}"#) == 0.0
    });
    assert!(closed, "connections still open:\n{text}");
    let m = parse(&text);
    assert_eq!(
        m.value("ringws_connections_accepted_total", &[("worker", "0")]),
        4.0
    );
    assert_eq!(
        m.value(
            "ringws_upgrades_total",
            &[("worker", "0"), ("status", "101")]
        ),
        1.0
    );
}

/// `--no-ops-endpoints` answers none of the three paths itself, and refuses `--admin-addr` with it.
#[test]
fn no_ops_endpoints_leaves_every_path_to_the_handler() {
    let server = Server::start(&["--no-ops-endpoints"]);
    for path in ["/metrics", "/health", "/ready"] {
        assert_eq!(get(server.addr, path).0, 426, "GET {path}");
    }
    assert!(
        !server.log().contains("admin endpoints"),
        "{}",
        server.log()
    );
    // --admin-addr with it makes no sense: refused.
    let (status, out) = run_bounded(
        Command::new(common::binary()).args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-ops-endpoints",
            "--admin-addr",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(20),
    );
    assert!(
        status.is_some_and(|s| s.code() == Some(2)),
        "--no-ops-endpoints with --admin-addr: {status:?}\n{out}"
    );
    assert!(out.contains("cannot be used with"), "{out}");
}

// ---------------------------------------------------------------------------------------------------
// /health and a stuck worker

/// Blocks its worker in `on_message` until the test says so (bounded): a stuck callback.
struct Stuck {
    /// A message on it lets the blocked callback return.
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Handler for Stuck {
    type State = ();

    fn on_message(&mut self, _ws: &mut Socket<'_, ()>, _msg: Message<'_>) {
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
    }
}

/// `/health` on the admin listener answers 503 naming the worker whose callback blocks (the admin
/// thread does not depend on it), as `Stats::stalled` does, and 200 again once it turns; and 200
/// right after start (a worker that has not finished a turn yet is not stalled).
#[test]
fn health_names_a_stuck_worker_until_it_turns_again() {
    let (release_tx, release_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(release_rx));
    let server = InProcess::builder(2)
        .admin_addr("127.0.0.1:0")
        .health_timeout(Duration::from_millis(300))
        .build()
        .expect("build");
    let admin = server.admin_addr().expect("an admin listener");
    let server = InProcess::run(server, move |_| Stuck {
        release: Arc::clone(&release),
    });
    assert_eq!(get(admin, "/health"), (200, "ok\n".to_owned()));
    let mut c = RawClient::connect(server.addr);
    let stuck = server
        .handle
        .stats()
        .workers
        .iter()
        .find(|w| w.connections_open == 1)
        .map(|w| w.index)
        .expect("the worker holding the connection");
    c.send(&Frame::text("block"));
    // The admin thread answers although a worker is stuck, and names it.
    let mut last = (0, String::new());
    let named = eventually(Duration::from_secs(10), || {
        last = get(admin, "/health");
        last.0 == 503
    });
    assert!(named, "/health never answered 503: {last:?}");
    assert_eq!(
        last.1,
        format!("stalled workers (no loop turn for over 300 ms): {stuck}\n")
    );
    assert!(
        server.handle.stats().stalled(300).contains(&stuck),
        "stats() agrees"
    );
    release_tx.send(()).expect("releasing the worker");
    let healthy = eventually(Duration::from_secs(10), || {
        last = get(admin, "/health");
        last.0 == 200
    });
    assert!(
        healthy,
        "/health still {last:?} after the worker turned again"
    );
    drop(c);
}

// ---------------------------------------------------------------------------------------------------
// The documentation

/// Every family of a live server's `/metrics` (each `# HELP` line) is named in docs/operations.md,
/// so the reference cannot fall behind the code.
#[test]
fn every_metric_family_is_documented() {
    let path = repo_root().join("docs/operations.md");
    let doc =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let server = Server::start(&[]);
    let text = scrape(server.addr);
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    assert!(families.len() >= 30, "too few families:\n{text}");
    let missing: Vec<&&str> = families
        .iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "families of /metrics missing from docs/operations.md (as `name`): {missing:?}"
    );
}

/// The HAProxy snippet of docs/operations.md is a configuration `haproxy -c` accepts, with the
/// `/ready` check and the tunnel timeout in it.
#[test]
fn the_documented_haproxy_config_is_valid() {
    let haproxy = brokers::require("haproxy", "haproxy");
    let path = repo_root().join("docs/operations.md");
    let doc =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config: String = doc
        .split("```haproxy\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no ```haproxy block in {}", path.display()))
        .to_owned();
    for line in [
        "option httpchk GET /ready",
        "http-check expect status 200",
        "timeout tunnel",
    ] {
        assert!(
            config.contains(line),
            "the HAProxy snippet lacks `{line}`:\n{config}"
        );
    }
    let dir = brokers::TempDir::new("haproxy-doc");
    let file = dir.path.join("haproxy.cfg");
    fs::write(&file, &config).expect("writing the snippet");
    let (status, out) = run_bounded(
        Command::new(haproxy).arg("-c").arg("-f").arg(&file),
        TOOL_TIMEOUT,
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "haproxy -c rejects the snippet of docs/operations.md ({status:?}):\n{out}\n{config}"
    );
}
