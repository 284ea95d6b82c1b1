//! `ringws top` against a real `ringws serve --workers 2`: `--once --json` and the table report its
//! connections and that messages moved; an unreachable server is an error naming the URL with
//! `--once`, and "unreachable, retrying" in the live view, which SIGTERM ends with status 0.

mod common;

use common::{BackgroundEchoer, Frame, RawClient, Server, binary, run_bounded, text};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on one `ringws top --once` run (two scrapes one interval apart take about one interval).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections the test holds open besides the echoer's.
const IDLE: usize = 3;

/// Runs `ringws top ARGS` to its end; its exit code and output (stderr lines prefixed `[stderr] `).
fn top(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("top").args(args);
    let (status, out) = run_bounded(&mut cmd, RUN_TIMEOUT);
    let status = status
        .unwrap_or_else(|| panic!("top {args:?} still running after {RUN_TIMEOUT:?}:\n{out}"));
    (status.code(), out)
}

/// Idle WebSocket connections to `addr`, each having echoed one message (so the server counted
/// them and received and sent on them).
fn idle_clients(addr: SocketAddr) -> Vec<RawClient> {
    (0..IDLE)
        .map(|i| {
            let mut c = RawClient::connect(addr);
            c.echo(Frame::text(text(100, i as u8)));
            c.echo(Frame::binary(common::bytes(1000, i as u8)));
            c
        })
        .collect()
}

#[test]
fn once_json_reports_connections_and_moving_messages() {
    let server = Server::start(&["--workers", "2"]);
    let clients = idle_clients(server.addr);
    // Echoes throughout top's interval, so the rates between its two scrapes are above zero.
    let echoer = BackgroundEchoer::start(server.addr);
    let url = format!("http://{}/metrics", server.addr);
    let (code, out) = top(&["--once", "--json", "--interval", "1", &url]);
    let echoed = echoer.finish();
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object in:\n{out}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));

    assert_eq!(v["url"], url.as_str());
    assert_eq!(v["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"]["ready"], true, "{line}");
    assert_eq!(v["server"]["draining"], false, "{line}");
    assert!(v["interval_seconds"].as_f64().unwrap() >= 0.9, "{line}");
    let workers = v["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{line}");
    assert_eq!(workers[0]["worker"], 0);
    assert_eq!(workers[1]["worker"], 1);

    // The idle clients and the echoer's, and possibly top's own scrape, which the server counts
    // while it answers it.
    let total = &v["total"];
    let connections = total["connections"].as_f64().unwrap();
    let ours = (IDLE + 1) as f64;
    assert!(
        (ours..=ours + 1.0).contains(&connections),
        "{connections} connections, want {ours} (+1 for the scrape): {line}"
    );
    let per_worker: f64 = workers
        .iter()
        .map(|w| w["connections"].as_f64().unwrap())
        .sum();
    assert_eq!(per_worker, connections, "{line}");

    let rate = |key: &str| {
        total[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {line}"))
    };
    assert!(
        rate("messages_in_per_second") > 0.0,
        "echoed {echoed}: {line}"
    );
    assert!(
        rate("messages_out_per_second") > 0.0,
        "echoed {echoed}: {line}"
    );
    assert!(rate("bytes_in_per_second") > 0.0, "{line}");
    assert!(rate("bytes_out_per_second") > 0.0, "{line}");
    assert_eq!(rate("dropped_per_second"), 0.0, "{line}");
    assert_eq!(rate("slow_consumer_disconnects"), 0.0, "{line}");
    // The workers turned during the interval: a p99 from the loop-turn histogram.
    assert!(rate("loop_turn_p99_seconds") > 0.0, "{line}");
    drop(clients);
}

#[test]
fn once_prints_a_table_with_a_row_per_worker() {
    let server = Server::start(&["--workers", "2"]);
    let _clients = idle_clients(server.addr);
    let (code, out) = top(&["--once", "--interval", "0.2", &server.addr.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 5, "{out}");
    assert!(
        lines[0].starts_with(&format!("ringws {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(lines[0].contains(" · ready · "), "{out}");
    assert!(lines[1].starts_with("worker"), "{out}");
    let first = |l: &str| l.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(
        lines[2..5].iter().map(|l| first(l)).collect::<Vec<_>>(),
        ["0", "1", "total"],
        "{out}"
    );
}

/// An address nothing listens on (a port that was free a moment ago).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr")
}

#[test]
fn once_against_nothing_names_the_url_and_fails() {
    let addr = closed_port();
    let (code, out) = top(&["--once", &addr.to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "[stderr] error: cannot read http://{addr}/metrics: cannot connect"
        )),
        "{out}"
    );
}

#[test]
fn the_live_view_retries_and_ends_cleanly_on_sigterm() {
    let addr = closed_port();
    let mut child = Command::new(binary())
        .args(["top", "--interval", "0.2", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringws top");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    // Sends each line until the pipe closes (the process ended).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Two refreshes: the view keeps going (and has blocked the signals before its first one).
    let mut seen = 0;
    while seen < 2 {
        match rx.recv_timeout(common::READ_TIMEOUT) {
            Ok(line) if line.contains("unreachable, retrying") => seen += 1,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{seen} refreshes, then {e:?}");
            }
        }
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) takes plain integers; `pid` is our child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = common::wait_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after SIGTERM"
    );
}
