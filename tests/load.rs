//! `ringws load` end to end: the binary against a `ringws serve` (or against a small in-process
//! server that corrupts or closes), its `--json` object parsed and checked. Every run is bounded
//! (`RUN_TIMEOUT`) and short: the whole file takes well under 30 s.

mod common;

use common::{Server, binary, run_bounded};
use ringws::{CloseCode, Handler, Message, ServerHandle, Socket};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bound on one `ringws load` run.
const RUN_TIMEOUT: Duration = Duration::from_secs(25);

/// Runs `ringws load --json --workers 1 <args>` and returns its exit status, its JSON object and
/// everything it printed.
fn load(url: &str, args: &[&str]) -> (ExitStatus, Value, String) {
    let mut cmd = Command::new(binary());
    cmd.args(["load", "--json", "--workers", "1", "--url", url])
        .args(args);
    let (status, output) = run_bounded(&mut cmd, RUN_TIMEOUT);
    let status = status.unwrap_or_else(|| panic!("ringws load did not finish:\n{output}"));
    let json: Vec<&str> = output.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(
        json.len(),
        1,
        "exactly one JSON object on stdout:\n{output}"
    );
    let value = serde_json::from_str(json[0]).unwrap_or_else(|e| panic!("{e}: {}", json[0]));
    (status, value, output)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Checks a clean closed-loop or open-loop run: every connection up, echoes counted, no error of
/// any kind, sane percentiles, exit status 0.
fn assert_clean(status: ExitStatus, v: &Value, output: &str, connections: u64) {
    assert!(status.success(), "exit {status}:\n{output}");
    assert_eq!(u(v, "connections"), connections, "{v}");
    assert_eq!(u(v, "connections_established"), connections, "{v}");
    assert_eq!(u(v, "connections_failed"), 0, "{v}");
    assert!(f(v, "connect_rate_per_s") > 0.0, "{v}");
    assert!(u(v, "messages") > 0, "{v}");
    assert!(f(v, "msgs_per_s") > 0.0 && f(v, "mb_per_s") > 0.0, "{v}");
    for kind in ["mismatch", "closed", "connect", "timeout", "dropped"] {
        assert_eq!(v["errors"][kind], 0, "errors.{kind} in {v}");
    }
    let l = &v["latency_us"];
    let p = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency_us.{k} in {v}"))
    };
    assert!(p("p50") > 0.0, "{v}");
    assert!(
        p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max"),
        "percentiles out of order: {l}"
    );
    // Every message sent was echoed and verified (the run drains before closing).
    assert_eq!(u(v, "sent"), u(v, "echoes"), "{v}");
}

#[test]
fn closed_loop_binary_against_ringws_serve() {
    let server = Server::start(&[]);
    let url = format!("ws://{}/", server.addr);
    let (status, v, out) = load(
        &url,
        &[
            "--connections",
            "8",
            "--size",
            "20",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert_clean(status, &v, &out, 8);
    assert_eq!(v["url"], url.as_str());
    assert_eq!((u(&v, "size"), u(&v, "in_flight")), (20, 1));
    assert_eq!(v["mode"], "binary");
    let d = f(&v, "duration_s");
    assert!((1.9..2.2).contains(&d), "measured {d} s");
    // A live progress line each second on stderr.
    assert!(out.contains("[stderr] [") && out.contains("msg/s"), "{out}");
}

#[test]
fn text_messages_and_four_in_flight() {
    let server = Server::start(&[]);
    let url = format!("ws://{}/chat", server.addr);
    let (status, v, out) = load(
        &url,
        &[
            "--connections",
            "4",
            "--size",
            "1000",
            "--text",
            "--in-flight",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert_clean(status, &v, &out, 4);
    assert_eq!(v["mode"], "text");
    assert_eq!(u(&v, "in_flight"), 4);

    let (status, v, out) = load(
        &url,
        &[
            "--connections",
            "2",
            "--binary",
            "--size",
            "70000",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
    );
    assert_clean(status, &v, &out, 2);
}

#[test]
fn open_loop_keeps_its_rate() {
    let server = Server::start(&[]);
    let (status, v, out) = load(
        &format!("ws://{}/", server.addr),
        &[
            "--connections",
            "10",
            "--rate",
            "2000",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert_clean(status, &v, &out, 10);
    let rate = f(&v, "msgs_per_s");
    assert!(
        (1700.0..2300.0).contains(&rate),
        "asked for 2000 msg/s, measured {rate}: {v}"
    );
    assert_eq!(f(&v, "rate"), 2000.0);
}

#[test]
fn hold_opens_pings_once_and_closes() {
    let server = Server::start(&[]);
    let (status, v, out) = load(
        &format!("ws://{}/", server.addr),
        &[
            "--connections",
            "64",
            "--hold",
            "--ping-once",
            "32",
            "--duration",
            "1",
            "--source-ips",
            "127.0.0.1-127.0.0.4",
        ],
    );
    assert!(status.success(), "{out}");
    assert_eq!(u(&v, "connections_established"), 64, "{v}");
    assert_eq!(u(&v, "echoes"), 64, "one verified echo per connection: {v}");
    assert_eq!(v["errors"]["mismatch"], 0);
    assert!(out.contains(r#""phase":"established""#), "{out}");
    assert!(out.contains(r#""phase":"ping""#), "{out}");
}

#[test]
fn hold_ends_cleanly_on_sigint() {
    let server = Server::start(&[]);
    let mut child = Command::new(binary())
        .args([
            "load",
            "--json",
            "--workers",
            "1",
            "--hold",
            "--duration",
            "60",
        ])
        .args([
            "--connections",
            "20",
            "--url",
            &format!("ws://{}/", server.addr),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringws load");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(r#""phase":"established""#) {
                let _ = tx.send(());
            }
        }
    });
    let up = rx.recv_timeout(Duration::from_secs(10));
    // SAFETY: sends SIGINT to the child we spawned (still ours: it has not been waited for).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let Some(status) = common::wait_timeout(&mut child, Duration::from_secs(10)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ringws load did not exit on SIGINT");
    };
    up.expect("the established phase was reported");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(status.success(), "exit {status}: {v}");
    assert_eq!(u(&v, "connections_established"), 20, "{v}");
    assert_eq!(v["errors"]["closed"], 0, "{v}");
}

/// A connection storm while a worker echoes flat out (what a load generator or a reconnect
/// storm after a deploy does): 200 connections keep 4 messages each in flight while 3,000 more
/// connect at once, and every one of them is upgraded, with no echo lost meanwhile. One worker,
/// so the storm and the echo traffic meet in the same loop turns.
#[test]
fn a_connection_storm_during_full_speed_echo_upgrades_every_connection() {
    let server = Server::start(&["--workers", "1"]);
    let url = format!("ws://{}/", server.addr);
    let mut echo = Command::new(binary())
        .args(["load", "--json", "--workers", "1", "--url", &url])
        .args(["--connections", "200", "--in-flight", "4", "--size", "64"])
        .args(["--warmup", "0.2", "--duration", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringws load");
    let stderr = echo.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(r#""phase":"established""#) {
                let _ = tx.send(());
            }
        }
    });
    let echoing = rx.recv_timeout(Duration::from_secs(10));
    let storm = echoing.is_ok().then(|| {
        load(
            &url,
            &[
                "--connections",
                "3000",
                "--hold",
                "--duration",
                "0.5",
                "--source-ips",
                "127.0.0.1-127.0.0.4",
            ],
        )
    });
    let Some(status) = common::wait_timeout(&mut echo, RUN_TIMEOUT) else {
        let _ = echo.kill();
        let _ = echo.wait();
        panic!("the echo load did not finish");
    };
    echoing.expect("the echo connections were established");
    let (storm_status, storm, storm_out) = storm.unwrap();
    assert!(storm_status.success(), "{storm_out}");
    assert_eq!(u(&storm, "connections_established"), 3000, "{storm}");
    assert_eq!(u(&storm, "connections_failed"), 0, "{storm}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut echo.stdout.take().unwrap(), &mut stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(status.success(), "exit {status}: {v}");
    assert_eq!(u(&v, "connections_established"), 200, "{v}");
    assert!(u(&v, "messages") > 0, "{v}");
    for error in ["mismatch", "closed", "timeout"] {
        assert_eq!(v["errors"][error], 0, "{error}: {v}");
    }
}

/// An in-process server that misbehaves: on `/flip` it echoes with the last byte changed, on
/// `/close` it closes each connection (4000) after its fifth message.
struct Evil;

impl Handler for Evil {
    /// Messages received.
    type State = (bool, u32);

    fn on_upgrade<'r>(&mut self, req: &ringws::Request<'r>) -> ringws::Decision<'r, (bool, u32)> {
        ringws::Decision::accept((req.path() == "/flip", 0))
    }

    fn on_message(&mut self, ws: &mut Socket<'_, (bool, u32)>, msg: Message<'_>) {
        ws.state_mut().1 += 1;
        let (flip, n) = *ws.state();
        if !flip && n == 5 {
            return ws.close(CloseCode(4000), "enough");
        }
        let mut bytes = msg.as_bytes().to_vec();
        if flip && let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let _ = ws.send_binary(&bytes);
    }
}

/// Runs `Evil` on 127.0.0.1 until the returned handle shuts it down.
fn evil_server() -> (SocketAddr, ServerHandle, thread::JoinHandle<()>) {
    let server = ringws::Server::builder()
        .bind("127.0.0.1:0")
        .workers(1)
        .pin_workers(false)
        .handle_signals(false)
        .build()
        .expect("server");
    let (addr, handle) = (server.local_addr(), server.handle());
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        server
            .run_with_ready(|_| Evil, || tx.send(()).unwrap())
            .expect("server run");
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("ready");
    (addr, handle, thread)
}

#[test]
fn corrupted_echoes_and_server_closes_are_errors() {
    let (addr, handle, thread) = evil_server();
    let (status, v, out) = load(
        &format!("ws://{addr}/flip"),
        &["--connections", "4", "--duration", "1", "--warmup", "0"],
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(u(&v["errors"], "mismatch") > 0, "{v}");
    assert_eq!(u(&v, "messages"), 0, "nothing corrupted is counted: {v}");

    let (status, v, out) = load(
        &format!("ws://{addr}/close"),
        &["--connections", "4", "--duration", "1", "--warmup", "0"],
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert_eq!(u(&v["errors"], "closed"), 4, "{v}");
    assert_eq!(u(&v["errors"], "mismatch"), 0, "{v}");
    handle.shutdown();
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn connection_refused_is_reported_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let (status, v, out) = load(
        &format!("ws://127.0.0.1:{port}/"),
        &["--connections", "5", "--duration", "10"],
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert_eq!(u(&v, "connections_established"), 0, "{v}");
    assert_eq!(u(&v, "connections_failed"), 5, "{v}");
    assert_eq!(u(&v["errors"], "connect"), 5, "{v}");
    assert_eq!(u(&v["connect_errors"], "refused"), 5, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "nothing to measure: no waiting out --duration"
    );
}

/// The latency percentiles of `l`, checked to be in order and plausible for a run on one host: over
/// zero, and far below the clock's epoch value (a `ts` read wrongly would give ~1.7e9 s).
fn assert_latencies(l: &Value, max_us: f64) {
    let p = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
    assert!(p("p50") > 0.0, "{l}");
    assert!(
        p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999"),
        "{l}"
    );
    assert!(p("p999") <= p("max") && p("max") < max_us, "{l}");
}

#[test]
fn subscribers_of_a_json_feed_measure_publish_to_receive_latency() {
    // 20 symbols at 2000 quotes/s: 100/s per symbol. 8 connections x 5 symbols = 2 subscribers per
    // symbol, 40 subscriptions: 4000 deliveries/s.
    let server = Server::start(&["--mode", "feed", "--symbols", "20", "--rate", "2000"]);
    let url = format!("ws://{}/", server.addr);
    let (status, v, out) = load(
        &url,
        &[
            "--subscribe",
            "all",
            "--symbols-per-conn",
            "5",
            "--connections",
            "8",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(v["mode"], "subscribe");
    assert_eq!(u(&v, "connections_established"), 8, "{v}");
    assert_eq!(u(&v, "sent"), 8, "one subscribe message each: {v}");
    let s = &v["subscribe"];
    assert_eq!((u(s, "symbols"), u(s, "symbols_per_conn")), (20, 5), "{v}");
    assert_eq!(f(s, "subscribers_per_symbol"), 2.0, "{v}");
    // One snapshot quote per subscription, none of them timed.
    assert_eq!(u(s, "snapshots"), 40, "{v}");
    assert_eq!((u(s, "feed_errors"), s["stall"].clone()), (0, Value::Null));
    let rate = f(&v, "msgs_per_s");
    assert!((2000.0..6000.0).contains(&rate), "{rate} deliveries/s: {v}");
    assert!(f(&v, "mb_per_s") > 0.0, "{v}");
    for kind in ["mismatch", "closed", "connect", "timeout", "dropped"] {
        assert_eq!(v["errors"][kind], 0, "errors.{kind} in {v}");
    }
    assert_latencies(&v["latency_us"], 2e6);
}

/// Runs a binary feed with `feed_args` and a generator subscribed with `load_args` whose first two
/// connections stall from 0.3 s to 1.3 s of a 3 s run; returns its JSON report.
fn stalled_run(feed_args: &[&str], load_args: &[&str]) -> Value {
    let mut serve = vec!["--mode", "feed", "--binary"];
    serve.extend_from_slice(feed_args);
    let server = Server::start(&serve);
    let url = format!("ws://{}/", server.addr);
    let mut args = load_args.to_vec();
    args.extend_from_slice(&[
        "--stall",
        "2",
        "--stall-at",
        "0.3",
        "--stall-for",
        "1",
        "--duration",
        "3",
        "--warmup",
        "0.3",
    ]);
    let (status, v, out) = load(&url, &args);
    assert!(status.success(), "exit {status}:\n{out}");
    v
}

#[test]
fn stalled_subscribers_of_a_binary_feed_resume_and_catch_up() {
    let v = stalled_run(
        &["--symbols", "4", "--rate", "4000"],
        &["--subscribe", "BTC-USD,ETH-USD", "--connections", "6"],
    );
    let st = &v["subscribe"]["stall"];
    assert_eq!(u(st, "connections"), 2, "{v}");
    assert_eq!(
        (u(st, "paused"), u(st, "resumed"), u(st, "caught_up")),
        (2, 2, 2),
        "{v}"
    );
    // The first quote after resuming waited in the socket buffers since the stall began.
    let age = f(&st["first_age_ms"], "p50");
    assert!(
        (500.0..5000.0).contains(&age),
        "first quote {age} ms old: {v}"
    );
    // Both stalled connections were still receiving after the stall; a live one got about
    // 2 symbols x 1000/s x 1 s while they were stalled.
    assert!(u(st, "messages") > 0, "{v}");
    let live = f(st, "live_messages_during_stall_per_conn");
    assert!((1000.0..3000.0).contains(&live), "{v}");
    assert!(f(st, "backlog_per_conn") > 0.0, "{v}");
    // Caught up well before the end (1.7 s after resuming), on a loaded machine too.
    assert!(f(&st["catch_up_ms"], "max") < 1700.0, "{v}");
    // The live connections' latencies while the others were stalled, reported apart.
    let during = &st["live_latency_during_stall_us"];
    assert!(
        f(during, "p50") > 0.0 && f(during, "p50") <= f(during, "p99"),
        "{v}"
    );
    assert_latencies(&v["latency_us"], 1e6);
}

#[test]
fn with_small_socket_buffers_stalled_subscribers_skip_most_of_the_backlog() {
    // 4 KiB asked for (8 KiB for Linux) on the server's sockets (`serve --send-buffer`) and on
    // the subscribers' (`load --recv-buffer`): what a stalled one has not read waits in the
    // server's queue (8 KiB), where each symbol's topic conflates it to its latest quote.
    let v = stalled_run(
        &[
            "--symbols",
            "2",
            "--rate",
            "20000",
            "--send-buffer",
            "4096",
            "--max-backpressure",
            "8192",
        ],
        &[
            "--subscribe",
            "all",
            "--connections",
            "4",
            "--recv-buffer",
            "4096",
        ],
    );
    let st = &v["subscribe"]["stall"];
    assert_eq!(u(st, "caught_up"), 2, "{v}");
    // A live connection received ~20,000 quotes during the stall; a stalled one read only what
    // three 8 KiB buffers of ~42-byte frames hold (~600) before a current quote. With the
    // kernel's autotuned buffers it would read them all.
    let (owed, backlog) = (
        f(st, "live_messages_during_stall_per_conn"),
        f(st, "backlog_per_conn"),
    );
    assert!(owed > 5000.0, "{v}");
    assert!(
        backlog < 1500.0,
        "{backlog} stale quotes before a current one: {v}"
    );
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["--url", "https://127.0.0.1:1/", "--connections", "1"][..],
        &["--url", "ws://127.0.0.1:1/", "--connections", "0"],
        &[
            "--url",
            "ws://127.0.0.1:1/",
            "--source-ips",
            "127.0.0.9-127.0.0.1",
        ],
        &["--url", "ws://127.0.0.1:1/", "--size", "99999999"],
        &["--url", "ws://127.0.0.1:1/", "--subscribe", "A,,B"],
        &[
            "--url",
            "ws://127.0.0.1:1/",
            "--subscribe",
            "A",
            "--connections",
            "1",
            "--stall",
            "2",
        ],
        &[
            "--url",
            "ws://127.0.0.1:1/",
            "--subscribe",
            "A",
            "--stall",
            "1",
            "--stall-for",
            "20",
        ],
        // `all` asks the server for its symbols: nothing listens on port 1.
        &["--url", "ws://127.0.0.1:1/", "--subscribe", "all"],
    ] {
        let (status, output) = run_bounded(
            Command::new(binary()).arg("load").args(args),
            Duration::from_secs(10),
        );
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{args:?}: {output}");
        assert!(output.contains("error:"), "{output}");
    }
}
