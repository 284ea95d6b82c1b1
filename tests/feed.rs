//! `ringws serve --mode feed` end to end: `/symbols`, the page and `/client.js`, the JSON control
//! protocol (good and malformed input), the last quote first for new subscribers, live quotes in
//! order with publish timestamps, unsubscribe, binary quotes, and resuming after a reconnect from
//! an independent client (Python `websockets`, `tests/interop/python/resume.py`): within the
//! history window with no gap and no duplicate, beyond it or after a ticker restart with a
//! snapshot.

mod common;

use common::{Frame, RawClient, Server, http_get, op};
use ringws::Message;
use ringws_cli::feed::{Quote, timestamp};
use simd_json::OwnedValue;
use simd_json::prelude::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn feed(extra: &[&str]) -> Server {
    let mut args = vec!["--mode", "feed", "--symbols", "20"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn json(bytes: &[u8]) -> OwnedValue {
    simd_json::to_owned_value(&mut bytes.to_vec())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The next message, which must be text, parsed.
fn next_json(c: &mut RawClient) -> OwnedValue {
    let (opcode, payload) = c.expect_message();
    assert_eq!(opcode, op::TEXT, "expected text: {payload:?}");
    json(&payload)
}

fn subscribe(c: &mut RawClient, symbols: &[&str]) {
    let list = symbols
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(",");
    c.send(&Frame::text(format!(
        r#"{{"op":"subscribe","symbols":[{list}]}}"#
    )));
    let ack = next_json(c);
    assert_eq!(ack.get_str("type"), Some("subscribed"), "{ack:?}");
    let got: Vec<&str> = ack
        .get_array("symbols")
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(got, symbols);
}

/// (symbol, seq, ts) of a JSON quote.
fn quote_of(v: &OwnedValue) -> (String, u64, u64) {
    assert_eq!(v.get_str("type"), Some("quote"), "{v:?}");
    let (bid, ask) = (v.get_f64("bid").unwrap(), v.get_f64("ask").unwrap());
    assert!(0.0 < bid && bid < ask, "{v:?}");
    (
        v.get_str("symbol").unwrap().to_owned(),
        v.get_u64("seq").unwrap(),
        v.get_u64("ts").unwrap(),
    )
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn symbols_are_listed_as_json() {
    let server = feed(&[]);
    let (head, body) = http_get(server.addr, "/symbols");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/json"));
    let list = json(&body);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20);
    assert_eq!(&names[..3], ["BTC-USD", "ETH-USD", "SOL-USD"]);
    assert_eq!(names[19], "S00019-USD");
}

#[test]
fn the_live_page_is_served() {
    let server = feed(&[]);
    let (head, body) = http_get(server.addr, "/");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains(r#"from "/client.js""#) && page.contains(r#"id="rows""#));
    let (head, body) = http_get(server.addr, "/client.js");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let client = String::from_utf8(body).unwrap();
    assert!(client.contains("export class FeedClient") && client.contains("new WebSocket("));
    assert_eq!(http_get(server.addr, "/nope").0.status, 404);
}

#[test]
fn a_new_subscriber_gets_the_last_quote_first_then_live_quotes_in_order() {
    let server = feed(&["--rate", "2000"]);
    let mut c = RawClient::connect(server.addr);
    let before = now_ns();
    subscribe(&mut c, &["BTC-USD", "ETH-USD"]);
    // The last quote of each symbol, in the order asked, right after the ack.
    let (s1, seq_btc, _) = quote_of(&next_json(&mut c));
    let (s2, seq_eth, _) = quote_of(&next_json(&mut c));
    assert_eq!((s1.as_str(), s2.as_str()), ("BTC-USD", "ETH-USD"));
    // Then live quotes: 100/s per symbol, each symbol's numbers consecutive (nothing lost, nothing
    // repeated), timestamps rising and recent.
    let mut last = [(seq_btc, 0u64), (seq_eth, 0u64)];
    for _ in 0..60 {
        let (symbol, seq, ts) = quote_of(&next_json(&mut c));
        let i = match symbol.as_str() {
            "BTC-USD" => 0,
            "ETH-USD" => 1,
            other => panic!("quote of {other}, not subscribed"),
        };
        assert_eq!(seq, last[i].0 + 1, "{symbol} seq");
        assert!(ts > last[i].1 && ts + 10_000_000_000 > before && ts <= now_ns());
        last[i] = (seq, ts);
    }
}

#[test]
fn with_a_slow_ticker_the_snapshot_is_the_initial_quote() {
    let server = feed(&["--rate", "1"]);
    let mut c = RawClient::connect(server.addr);
    subscribe(&mut c, &["S00019-USD"]);
    let (symbol, seq, _) = quote_of(&next_json(&mut c));
    assert_eq!((symbol.as_str(), seq), ("S00019-USD", 1));
}

#[test]
fn unsubscribe_stops_quotes() {
    let server = feed(&["--rate", "2000"]);
    let mut c = RawClient::connect(server.addr);
    subscribe(&mut c, &["SOL-USD"]);
    for _ in 0..5 {
        assert_eq!(quote_of(&next_json(&mut c)).0, "SOL-USD");
    }
    c.send(&Frame::text(
        r#"{"op":"unsubscribe","symbols":["SOL-USD"]}"#,
    ));
    loop {
        let v = next_json(&mut c);
        if v.get_str("type") == Some("unsubscribed") {
            break;
        }
        quote_of(&v); // queued before the unsubscribe
    }
    c.expect_silence(Duration::from_millis(300)); // SOL-USD gets 100 quotes/s
}

#[test]
fn bad_control_messages_get_an_error_and_the_connection_stays_open() {
    let server = feed(&[]);
    let mut c = RawClient::connect(server.addr);
    let cases: [(Frame, &str); 8] = [
        (Frame::text("{"), "malformed JSON"),
        (Frame::text("not json at all"), "malformed JSON"),
        (
            Frame::text("[1,2]"),
            r#"expected an object with a string "op""#,
        ),
        (
            Frame::text(r#"{"op":"dance","symbols":["BTC-USD"]}"#),
            r#"unknown op "dance""#,
        ),
        (
            Frame::text(r#"{"op":"subscribe","symbols":"BTC-USD"}"#),
            r#""symbols" must be a non-empty array of strings"#,
        ),
        (
            Frame::text(r#"{"op":"subscribe","symbols":["BTC-USD","NOPE\"x"]}"#),
            r#"unknown symbol "NOPE"x""#,
        ),
        (
            Frame::binary(r#"{"op":"subscribe","symbols":["BTC-USD"]}"#),
            "control messages are JSON text",
        ),
        (
            Frame::text(format!("[{}]", "1,".repeat(10_000) + "1")),
            "control message over 16384 bytes",
        ),
    ];
    for (frame, reason) in cases {
        c.send(&frame);
        let v = next_json(&mut c);
        assert_eq!(v.get_str("type"), Some("error"), "{frame:?}: {v:?}");
        assert_eq!(v.get_str("reason"), Some(reason), "{frame:?}");
    }
    // Nothing was subscribed by the refused messages (not even BTC-USD next to the unknown symbol),
    // and the connection still works.
    subscribe(&mut c, &["ETH-USD"]);
    assert_eq!(quote_of(&next_json(&mut c)).0, "ETH-USD");
}

#[test]
fn binary_quotes_carry_the_same_fields() {
    let server = feed(&["--rate", "2000", "--binary"]);
    let mut c = RawClient::connect(server.addr);
    subscribe(&mut c, &["BTC-USD"]);
    let mut last_seq = 0;
    for _ in 0..20 {
        let (opcode, payload) = c.expect_message();
        assert_eq!(opcode, op::BINARY);
        let q = Quote::from_binary(&payload).expect("a binary quote");
        assert_eq!(q.symbol, "BTC-USD");
        assert!(q.seq > last_seq && q.bid > 0.0 && q.bid < q.ask);
        assert_eq!(timestamp(Message::Binary(&payload)), Some(q.ts));
        assert!(q.ts <= now_ns());
        last_seq = q.seq;
    }
}

/// Runs `resume.py ARGS...` against `server` and returns the JSON line it printed.
fn resume_py(server: &Server, args: &[&str]) -> OwnedValue {
    common::python_json("resume.py", args, || server.log())
}

/// (epoch, seq) pairs of the script's `quotes`.
fn positions(v: &OwnedValue) -> Vec<(String, u64)> {
    v.get_array("quotes")
        .unwrap()
        .iter()
        .map(|q| {
            let q = q.as_array().unwrap();
            (q[0].as_str().unwrap().to_owned(), q[1].as_u64().unwrap())
        })
        .collect()
}

/// The reply's `recovered` entry for `symbol`.
fn recovery<'v>(v: &'v OwnedValue, symbol: &str) -> &'v OwnedValue {
    let reply = v.get("reply").unwrap();
    assert_eq!(reply.get_str("type"), Some("subscribed"), "{v:?}");
    reply
        .get("recovered")
        .and_then(|r| r.get(symbol))
        .unwrap_or_else(|| panic!("no recovery for {symbol}: {v:?}"))
}

#[test]
fn quotes_carry_their_epoch_beside_seq() {
    let server = feed(&["--rate", "2000"]);
    let mut c = RawClient::connect(server.addr);
    subscribe(&mut c, &["BTC-USD"]);
    let first = next_json(&mut c);
    let epoch = first.get_str("epoch").unwrap().to_owned();
    assert!(
        epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "{first:?}"
    );
    for _ in 0..5 {
        assert_eq!(next_json(&mut c).get_str("epoch"), Some(epoch.as_str()));
    }
}

#[test]
fn a_client_that_reconnects_within_the_history_gets_every_missed_quote_once() {
    let server = feed(&["--rate", "2000"]);
    let addr = server.addr.to_string();
    // Read 30 quotes (to seq K), drop the TCP connection, let the feed move on 20 more quotes
    // (watched on a second connection), reconnect with `since` K.
    let v = resume_py(&server, &["resume", &addr, "ETH-USD", "30", "20", "50"]);
    let r = recovery(&v, "ETH-USD");
    assert_eq!(r.get_bool("recovered"), Some(true), "{v:?}");
    let replayed = r.get_u64("replayed").unwrap();
    assert!(replayed >= 20, "the feed was 20 quotes ahead: {v:?}");
    let before = v.get_array("before").unwrap();
    let epoch = before[0].as_str().unwrap().to_owned();
    let k = before[1].as_u64().unwrap();
    let got = positions(&v);
    let want: Vec<(String, u64)> = (k + 1..k + 1 + got.len() as u64)
        .map(|s| (epoch.clone(), s))
        .collect();
    assert_eq!(got, want, "K+1, K+2, ... with no gap and no duplicate");
}

#[test]
fn beyond_the_history_a_client_is_told_and_gets_a_snapshot() {
    let server = feed(&["--rate", "2000", "--history", "5"]);
    let addr = server.addr.to_string();
    let v = resume_py(&server, &["resume", &addr, "SOL-USD", "10", "20", "10"]);
    let r = recovery(&v, "SOL-USD");
    assert_eq!(r.get_bool("recovered"), Some(false), "{v:?}");
    assert_eq!(r.get_str("reason"), Some("too_old"), "{v:?}");
    let got = positions(&v);
    // The snapshot (the last quote, at least 20 past K), then live quotes from it on.
    let k = v.get_array("before").unwrap()[1].as_u64().unwrap();
    assert!(got[0].1 >= k + 20, "{got:?}");
    for pair in got.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "{got:?}");
    }
    // Without history at all: no_history.
    let off = feed(&["--rate", "2000", "--history", "0"]);
    let addr = off.addr.to_string();
    let v = resume_py(&off, &["resume", &addr, "SOL-USD", "10", "5", "3"]);
    assert_eq!(
        recovery(&v, "SOL-USD").get_str("reason"),
        Some("no_history"),
        "{v:?}"
    );
}

#[test]
fn after_a_ticker_restart_a_position_of_the_old_epoch_is_not_recovered() {
    let first = feed(&["--rate", "2000"]);
    let at = resume_py(&first, &["position", &first.addr.to_string(), "BTC-USD"]);
    let (epoch, seq) = (at.get_str("epoch").unwrap(), at.get_u64("seq").unwrap());
    drop(first);
    let second = feed(&["--rate", "2000"]);
    let addr = second.addr.to_string();
    let seq = seq.to_string();
    let v = resume_py(&second, &["since", &addr, "BTC-USD", epoch, &seq, "5"]);
    let r = recovery(&v, "BTC-USD");
    assert_eq!(r.get_bool("recovered"), Some(false), "{v:?}");
    assert_eq!(r.get_str("reason"), Some("other_epoch"), "{v:?}");
    let got = positions(&v);
    assert_ne!(got[0].0, epoch, "the new ticker's epoch");
    for pair in got.windows(2) {
        assert_eq!(pair[1], (pair[0].0.clone(), pair[0].1 + 1), "{got:?}");
    }
}

#[test]
fn a_position_that_is_not_one_is_refused() {
    let server = feed(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::text(
        r#"{"op":"subscribe","symbols":["BTC-USD"],"since":{"BTC-USD":{"epoch":"xyz","seq":1}}}"#,
    ));
    let v = next_json(&mut c);
    assert_eq!(v.get_str("type"), Some("error"), "{v:?}");
    assert!(
        v.get_str("reason")
            .unwrap()
            .starts_with(r#""since" must map"#)
    );
}

#[test]
fn binary_quotes_carry_the_epoch_too() {
    let server = feed(&["--rate", "2000", "--binary"]);
    let mut c = RawClient::connect(server.addr);
    subscribe(&mut c, &["BTC-USD"]);
    let epochs: Vec<u64> = (0..5)
        .map(|_| Quote::from_binary(&c.expect_message().1).unwrap().epoch)
        .collect();
    assert!(
        epochs[0] != 0 && epochs.iter().all(|e| *e == epochs[0]),
        "{epochs:?}"
    );
}

/// `ringws_history_bytes` on the feed's `/metrics`: the quotes kept for resuming (each symbol's
/// first quote is published before the server starts), none with `--history 0`.
#[test]
fn the_history_memory_is_on_the_metrics() {
    let history_bytes = |server: &Server| {
        let (head, body) = http_get(server.addr, "/metrics");
        assert_eq!(head.status, 200);
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ringws_history_bytes "))
            .unwrap_or_else(|| panic!("no ringws_history_bytes:\n{text}"))
            .parse::<u64>()
            .unwrap()
    };
    let kept = feed(&["--rate", "1"]);
    let bytes = history_bytes(&kept);
    // 20 symbols, one quote each of ~130 bytes and its bookkeeping.
    assert!((20 * 130..20 * 1000).contains(&bytes), "{bytes}");
    let off = feed(&["--rate", "1", "--history", "0"]);
    assert_eq!(history_bytes(&off), 0);
}

/// Runs the feed's `/client.js` under Node (`tests/interop/node/feed_client.mjs`, the `ws` package
/// standing in for the browser's WebSocket) against `server`: 20 quotes, a dropped connection,
/// 20 more (with a repeated subscribe among them, which must not count as a snapshot). Returns what
/// the client reported.
fn client_js(server: &Server, symbol: &str) -> OwnedValue {
    let mut cmd = common::node("feed_client.mjs");
    cmd.arg(server.addr.to_string())
        .arg(common::repo_root().join("src/feed/client.js"))
        .arg(symbol);
    let (status, output) = common::run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{cmd:?} failed ({status:?}):\n{output}\n--- server ---\n{}",
        server.log()
    );
    let line = output.lines().rfind(|l| l.starts_with('{')).unwrap();
    json(line.as_bytes())
}

#[test]
fn the_browser_client_reconnects_and_resumes_with_nothing_lost() {
    let server = feed(&["--rate", "2000"]);
    let v = client_js(&server, "BTC-USD");
    let stats = v.get("stats").unwrap();
    assert_eq!(stats.get_u64("connects"), Some(2), "{v:?}");
    assert_eq!(v.get_array("recovered").unwrap().len(), 1, "{v:?}");
    assert!(v.get_array("snapshots").unwrap().is_empty(), "{v:?}");
    assert!(v.get_array("gaps").unwrap().is_empty(), "{v:?}");
    // Every quote once, in order, across the reconnect.
    let seqs: Vec<u64> = v
        .get_array("seqs")
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let states: Vec<&str> = v
        .get_array("states")
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "connecting",
            "open",
            "reconnecting",
            "connecting",
            "open",
            "closed"
        ]
    );
}

#[test]
fn without_history_the_browser_client_reports_a_snapshot() {
    let server = feed(&["--rate", "2000", "--history", "0"]);
    let v = client_js(&server, "BTC-USD");
    let snapshots = v.get_array("snapshots").unwrap();
    assert_eq!(snapshots.len(), 1, "{v:?}");
    assert_eq!(snapshots[0].get_str("reason"), Some("no_history"), "{v:?}");
    assert!(v.get_array("recovered").unwrap().is_empty(), "{v:?}");
}
