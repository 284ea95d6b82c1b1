//! The `ringws` command line's messages to a user who got something wrong: each test runs the binary
//! the way a newcomer would and checks that the message names the option and says what to do.
//! Also: the feed's start-up lines, `load`'s report of permessage-deflate, output into a pipe
//! whose reader has gone, and `--log-format json`.

mod common;

use common::{Server, binary, eventually};
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on one run of the binary (usage errors return at once; `load` runs take ~2 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `ringws ARGS` with a deadline, keeping stdout and stderr apart.
fn ringws(args: &[&str]) -> Output {
    common::output_bounded(Command::new(binary()).args(args), RUN_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Asserts a usage error (exit 2, nothing on stdout) whose message contains every one of `want`
/// and none of `not`.
fn usage_error(args: &[&str], want: &[&str], not: &[&str]) -> String {
    let out = ringws(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    let err = stderr(&out);
    for w in want {
        assert!(err.contains(w), "{args:?}: no {w:?} in:\n{err}");
    }
    for n in not {
        assert!(!err.contains(n), "{args:?}: {n:?} in:\n{err}");
    }
    err
}

#[test]
fn an_address_without_a_port_names_the_value_and_the_form() {
    usage_error(
        &["serve", "--addr", "127.0.0.1"],
        &[
            "'127.0.0.1'",
            "--addr",
            "expected HOST:PORT (e.g. 127.0.0.1:9001",
        ],
        &[],
    );
    for bad in ["9001", "::1", "127.0.0.1:99999"] {
        usage_error(
            &["serve", "--addr", bad],
            &[&format!("'{bad}'"), "expected HOST:PORT"],
            &[],
        );
    }
}

#[test]
fn port_and_host_options_point_to_addr() {
    for args in [
        &["serve", "--port", "9001"][..],
        &["serve", "--port=9001"],
        &["serve", "--host", "0.0.0.0"],
    ] {
        usage_error(
            args,
            &[
                "unexpected argument",
                "--addr HOST:PORT",
                "Usage: ringws serve",
            ],
            &["--subprotocol"],
        );
    }
    usage_error(
        &["load", "--port", "9001"],
        &["--url ws://HOST:PORT/PATH"],
        &[],
    );
}

#[test]
fn out_of_range_settings_name_the_option() {
    // The engine refuses these at start-up (exit 1); port 0 so nothing is ever in the way.
    for (args, want) in [
        (
            &["--buffer-count", "1000"][..],
            "error: invalid --buffer-count: it must be a power of two between 1 and 32768",
        ),
        (
            &["--ring-entries", "4"],
            "error: invalid --ring-entries: it must be between 8 and 32768",
        ),
        (
            &["--send-buffer", "10"],
            "error: invalid --send-buffer: it must be between 1 KiB and 1 GiB",
        ),
        (
            &["--max-assembly-memory", "1000"],
            "error: invalid --max-assembly-memory: it must be at least --max-message-size",
        ),
        (
            &["--mode", "feed", "--symbols", "0"],
            "error: invalid --symbols: it must be between 1 and 100000",
        ),
        (
            &["--mode", "feed", "--history", "2000000"],
            "error: invalid --history: it must be at most 1000000 quotes per symbol (0: none)",
        ),
    ] {
        let mut all = vec!["serve", "--addr", "127.0.0.1:0", "--workers", "1"];
        all.extend_from_slice(args);
        let out = ringws(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: want {want:?} in:\n{err}");
        assert!(!err.contains("invalid setting"), "{args:?}: {err}");
    }
    // `check` validates the same settings; its bad options are usage errors.
    usage_error(
        &["check", "--buffer-count", "1000"],
        &["error: invalid --buffer-count: it must be a power of two"],
        &["buffer_count"],
    );
    // `load` builds an engine too (exit 1 like serve).
    let out = ringws(&["load", "--url", "ws://127.0.0.1:9/", "--workers", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("error: invalid --workers: it must be between 1 and 1024"),
        "{}",
        describe(&out)
    );
}

#[test]
fn feed_options_are_refused_outside_the_feed() {
    usage_error(
        &["serve", "--symbols", "5"],
        &["--symbols is an option of the market feed: add --mode feed"],
        &[],
    );
    usage_error(
        &["serve", "--history", "5"],
        &["--history is an option of the market feed: add --mode feed"],
        &[],
    );
    usage_error(
        &["serve", "--mode", "echo", "--rate", "10", "--binary"],
        &["--rate and --binary are options of the market feed: add --mode feed"],
        &[],
    );
    // Deflate settings without --deflate would be ignored the same way.
    usage_error(
        &["serve", "--deflate-takeover", "both"],
        &["--deflate"],
        &[],
    );
    usage_error(
        &[
            "load",
            "--url",
            "ws://127.0.0.1:9/",
            "--deflate-window-bits",
            "10",
        ],
        &["--deflate"],
        &[],
    );
}

#[test]
fn the_feed_prints_its_page_url_after_the_ready_line() {
    let server = Server::start(&["--mode", "feed", "--symbols", "5"]);
    let page = format!("feed page: http://{}/", server.addr);
    assert!(
        eventually(Duration::from_secs(5), || server.log().contains(&page)),
        "no {page:?} in:\n{}",
        server.log()
    );
    let log = server.log();
    let lines: Vec<&str> = log.lines().take(2).collect();
    assert_eq!(
        lines,
        [
            format!("listening on {} (1 workers)", server.addr).as_str(),
            page.as_str()
        ],
        "{log}"
    );
    // The page is there.
    let (head, body) = common::http_get(server.addr, "/");
    assert_eq!(head.status, 200);
    assert!(!body.is_empty());
}

/// `ringws load --workers 1 --connections C --duration 1 --warmup 0 --url URL ARGS`.
fn load(url: &str, connections: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "load",
        "--workers",
        "1",
        "--connections",
        connections,
        "--duration",
        "1",
        "--warmup",
        "0",
        "--url",
        url,
    ];
    all.extend_from_slice(args);
    ringws(&all)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

#[test]
fn subscribing_to_an_echo_server_says_it_is_not_a_feed() {
    let server = Server::start(&[]);
    let url = format!("ws://{}/", server.addr);
    let hint = "the server echoed the subscribe requests back instead of answering \
                {\"type\":\"subscribed\",...}: is it running `ringws serve --mode feed`?";

    let out = load(&url, "5", &["--subscribe", "BTC-USD"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("mismatch 5"), "{}", describe(&out));
    assert!(
        text.contains(&format!("  5 mismatches: {hint}")),
        "{}",
        describe(&out)
    );

    let out = load(&url, "3", &["--subscribe", "BTC-USD", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let v = json(&out);
    assert_eq!(v["subscribe"]["echoed_requests"], 3, "{v}");
    assert_eq!(v["errors"]["mismatch"], 3, "{v}");
    assert!(
        stderr(&out).contains(&format!("warning: {hint}")),
        "{}",
        describe(&out)
    );

    // Against a feed nothing is echoed.
    let feed = Server::start(&["--mode", "feed", "--symbols", "5", "--rate", "100"]);
    let out = load(
        &format!("ws://{}/", feed.addr),
        "2",
        &["--subscribe", "BTC-USD", "--json"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(json(&out)["subscribe"]["echoed_requests"], 0);
}

#[test]
fn load_says_whether_deflate_was_agreed() {
    let plain = Server::start(&[]);
    let deflate = Server::start(&["--deflate"]);
    let url = |s: &Server| format!("ws://{}/", s.addr);
    let agreed = "permessage-deflate; server_no_context_takeover";

    let out = load(&url(&deflate), "3", &["--deflate"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains(&format!(
            "deflate      {agreed} (agreed on all 3 connections)"
        )),
        "{}",
        describe(&out)
    );
    let out = load(&url(&deflate), "3", &["--deflate", "--json"]);
    let v = json(&out);
    assert_eq!(v["deflate"], agreed, "{v}");
    assert_eq!(v["deflate_connections"], 3, "{v}");

    // A server without --deflate answers without the extension: said, not an error.
    let out = load(&url(&plain), "2", &["--deflate"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out)
            .contains("deflate      not agreed: the server answered without permessage-deflate"),
        "{}",
        describe(&out)
    );
    let out = load(&url(&plain), "2", &["--deflate", "--json"]);
    let v = json(&out);
    assert_eq!(v["deflate"], Value::Null, "{v}");
    assert_eq!(v["deflate_connections"], 0, "{v}");

    // Not offered: no deflate line, null in JSON.
    let out = load(&url(&deflate), "2", &[]);
    assert!(!stdout(&out).contains("deflate "), "{}", describe(&out));
    assert_eq!(
        json(&load(&url(&deflate), "2", &["--json"]))["deflate"],
        Value::Null
    );
}

/// Runs `ringws ARGS` with stdout a pipe whose reader is gone before anything is written, and
/// returns the exit code and stderr.
fn into_a_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("ringws {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    for args in [
        &["check", "--connections", "1000"][..],
        &["check", "--connections", "1000", "--json"],
        &["--help"],
    ] {
        let (code, err) = into_a_closed_pipe(args);
        assert!(
            matches!(code, Some(0 | 1)),
            "{args:?}: exit {code:?}\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
    let server = Server::start(&[]);
    let url = format!("ws://{}/", server.addr);
    for json in [false, true] {
        let mut args = vec![
            "load",
            "--workers",
            "1",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--url",
            &url,
        ];
        if json {
            args.push("--json");
        }
        let (code, err) = into_a_closed_pipe(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `ringws serve --help` is written from the engine's settings table: every option that sets an
/// engine setting shows that setting's default and requirement, as `Config::SETTINGS` has them.
#[test]
fn serve_help_shows_the_engines_defaults() {
    let out = ringws(&["serve", "--help"]);
    assert!(out.status.success(), "{}", describe(&out));
    let help = stdout(&out);
    let mut checked = 0;
    for (name, flag) in ringws_cli::settings::FLAGS {
        let Some(s) = ringws::Config::SETTINGS.iter().find(|s| s.name == *name) else {
            continue; // the feed's and deflate's own options
        };
        let start = help
            .find(&format!("  {flag} "))
            .or_else(|| help.find(&format!("  {flag}\n")))
            .unwrap_or_else(|| panic!("{flag} is not in serve --help:\n{help}"));
        // The option's section runs to the next option.
        let section = &help[start..];
        let end = section[2..]
            .find("\n      --")
            .map_or(section.len(), |i| i + 2);
        let section = &section[..end];
        assert!(
            section.contains(&format!("[default: {}]", s.default)),
            "{flag}: no `[default: {}]` in:\n{section}",
            s.default
        );
        assert!(
            section.contains(s.requirement),
            "{flag}: no requirement `{}` in:\n{section}",
            s.requirement
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} options checked");
}

/// A server whose stderr reader went away (a pipe into `head`, a supervisor that died) still shuts
/// down on SIGTERM: the log line it writes about the signal must not take it down half-way.
#[test]
fn serve_shuts_down_when_its_stderr_is_a_broken_pipe() {
    use std::io::BufRead;
    let mut child = Command::new(binary())
        .args(["serve", "--addr", "127.0.0.1:0", "--workers", "1"])
        .args(["--drain-delay", "0"]) // the shutdown is under test, not the drain before it
        .env("RUST_LOG", "info") // the signal's log line goes to the broken pipe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line");
        }
    }
    drop(stderr); // the reader goes away
    // SAFETY: signals the child we spawned and have not waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    let exited = eventually(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no exit within 10 s of SIGTERM");
    }
    let status = status.unwrap();
    assert!(status.success(), "exit {status}");
}

/// Starts `ringws serve` with RUST_LOG=info and `args`, stops it with SIGINT (which shuts down at
/// once, logging "shutting down" at info) and returns its stderr lines once that line is in, without
/// the ready line (`listening on ...`, which stays plain text in every log format: scripts wait for
/// it).
fn log_lines_until_shutdown(args: &[&str]) -> Vec<String> {
    let mut server = Server::start_with(args, |cmd| {
        cmd.env("RUST_LOG", "info");
    });
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after SIGINT"
    );
    // The process has exited; its last lines are copied from the pipe by another thread.
    assert!(
        eventually(Duration::from_secs(10), || server
            .log()
            .contains("shutting down")),
        "no shutdown line:\n{}",
        server.log()
    );
    server
        .log()
        .lines()
        .filter(|l| !l.starts_with("listening on "))
        .map(str::to_owned)
        .collect()
}

/// `--log-format json` writes every log line as one JSON object with the message in
/// `fields.message`; the default stays text.
#[test]
fn log_format_json_writes_one_object_per_line() {
    let lines = log_lines_until_shutdown(&["--log-format", "json"]);
    let events: Vec<Value> = lines
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}; all: {lines:#?}"));
            assert!(v["timestamp"].is_string(), "no timestamp: {line}");
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(
                v["fields"]["message"].is_string(),
                "no fields.message: {line}"
            );
            v
        })
        .collect();
    let shutdown = events
        .iter()
        .find(|v| v["fields"]["message"] == "shutting down")
        .unwrap_or_else(|| panic!("no shutdown event in {lines:#?}"));
    assert_eq!(shutdown["level"], "INFO");
    assert_eq!(shutdown["fields"]["signal"], libc::SIGINT);

    let text = log_lines_until_shutdown(&[]);
    let line = text.iter().find(|l| l.contains("shutting down")).unwrap();
    assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
    assert!(line.contains("INFO"), "{line}");
}
