//! permessage-deflate (RFC 7692) end to end against `ringws serve --deflate`:
//! - Python `websockets` (an independent implementation) echoes text and binary messages from 0 B to
//!   16 MiB, plain and fragmented, over every combination of server policy and client offer
//!   parameters, and checks the agreed `Sec-WebSocket-Extensions` value exactly
//!   (`tests/interop/python/deflate.py`), and receives the market feed's publications compressed;
//! - a raw client checks the frames themselves: RSV1 on compressed messages only, none on control
//!   frames or on messages under the size threshold, malformed offers declined, the budget fallback;
//! - limits: a decompression bomb and an over-size compressed message close with 1009 while the
//!   server's memory stays bounded;
//! - tokio-tungstenite (no extension offered) is unaffected; `ringws load --deflate` echoes through it.
//!
//! Our own client with `Connect::deflate` against Python's server and ours, and its refusal of
//! answers the offer did not allow, are in `tests/client.rs`; Chromium in `tests/browser.rs`.

mod common;

use common::{Frame, HttpResponse, RawClient, Server, op, run_bounded, upgrade_request};
use futures_util::{SinkExt, StreamExt};
use ringws::protocol::deflate::{Compressor, Decompressor};
use ringws::protocol::frame::RSV1;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The bound on one script or load run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `deflate.py MODE ADDR ARGS...` against `server`; returns its output once it succeeded.
fn python(mode: &str, server: &Server, args: &[&str]) -> String {
    let mut cmd = common::python("deflate.py");
    cmd.arg(mode).arg(server.addr.to_string()).args(args);
    let (status, output) = run_bounded(&mut cmd, RUN_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{cmd:?} failed ({status:?}):\n{output}\n--- server ---\n{}",
        server.log()
    );
    output
}

/// Runs `deflate.py client` against `server` with `sizes` and (offer, expected answer) pairs.
fn python_client(server: &Server, sizes: &str, cases: &[(&str, &str)]) {
    let mut args = vec![sizes];
    for (offer, expected) in cases {
        args.extend([*offer, *expected]);
    }
    let output = python("client", server, &args);
    assert_eq!(
        output.matches("ok: ").count(),
        cases.len(),
        "every case reports:\n{output}"
    );
}

#[test]
fn python_echoes_0_to_16_mib_with_the_default_policy() {
    let server = Server::start(&["--deflate"]);
    python_client(
        &server,
        "full",
        &[("default", "permessage-deflate; server_no_context_takeover")],
    );
}

#[test]
fn python_echoes_under_every_parameter_combination() {
    // Offers: websockets' default (bare client_max_window_bits); both no_context_takeover without
    // client_max_window_bits; small windows asked both ways; the largest windows with values; an
    // 8-bit server window (zlib cannot compress with it: the server then sends uncompressed).
    let offers = [
        "default",
        "snct,cnct,nocmwb",
        "smwb=9,cmwb=11",
        "smwb=15,cmwb=15",
        "smwb=8",
    ];
    // Per server policy, the exact answer to each offer.
    let policies: [(&[&str], [&str; 5]); 4] = [
        // The default policy: the server resets its window, the client may keep its own.
        (
            &[],
            [
                "permessage-deflate; server_no_context_takeover",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=11",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; client_max_window_bits=15",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
            ],
        ),
        (
            &["--deflate-takeover", "both"],
            [
                "permessage-deflate",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11",
                "permessage-deflate; server_max_window_bits=15; client_max_window_bits=15",
                "permessage-deflate; server_max_window_bits=8",
            ],
        ),
        (
            &["--deflate-takeover", "none", "--deflate-window-bits", "10"],
            [
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=10",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=10",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=10",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8; client_max_window_bits=10",
            ],
        ),
        (
            &[
                "--deflate-takeover",
                "server",
                "--deflate-window-bits",
                "12",
            ],
            [
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=11",
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=8; client_max_window_bits=12",
            ],
        ),
    ];
    for (flags, answers) in &policies {
        let mut args = vec!["--deflate"];
        args.extend_from_slice(flags);
        let server = Server::start(&args);
        let mut cases: Vec<(&str, &str)> =
            offers.iter().zip(answers).map(|(o, a)| (*o, *a)).collect();
        cases.push(("off", "-"));
        python_client(&server, "small", &cases);
    }
}

#[test]
fn feed_publications_arrive_compressed_and_valid() {
    // Quotes are ~100 bytes: a 16-byte threshold makes every publication compressed. Without
    // server context takeover one compressed frame serves every subscriber of the worker; with it,
    // each subscriber's own compressor compresses it.
    for (takeover, agreed) in [
        ("client", "permessage-deflate; server_no_context_takeover"),
        ("both", "permessage-deflate"),
    ] {
        let server = Server::start(&[
            "--mode",
            "feed",
            "--rate",
            "2000",
            "--symbols",
            "4",
            "--deflate",
            "--deflate-min-size",
            "16",
            "--deflate-takeover",
            takeover,
        ]);
        let output = python("feed", &server, &["default", agreed]);
        assert!(output.contains("ok: feed"), "{output}");
    }
}

/// Connects with `offer` in `Sec-WebSocket-Extensions` (if any); returns the client (accepting RSV1
/// if the extension was agreed) and the server's answer.
fn connect(addr: SocketAddr, offer: Option<&str>) -> (RawClient, Option<String>) {
    let mut request = upgrade_request(addr);
    if let Some(offer) = offer {
        request.insert_str(
            request.len() - 2,
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
        );
    }
    let mut client = RawClient::tcp(addr);
    client.write(request.as_bytes());
    let head = client.read_http_head();
    let resp = HttpResponse::parse(&head);
    assert_eq!(resp.status, 101, "{head}");
    let answer = resp.header("sec-websocket-extensions").map(str::to_owned);
    if answer.is_some() {
        client.allowed_rsv = RSV1;
    }
    (client, answer)
}

/// `len` pseudo-random letters of a 16-letter alphabet: compresses about 2x, unlike
/// [`common::text`], whose 256-byte period compresses ~100x.
fn letters(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x >> 60) as u8)
        })
        .collect()
}

/// Compresses `msg` as one message payload (no context takeover).
fn deflate(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Compressor::new(15, 6, true).compress(msg, &mut out);
    out
}

/// Inflates one message payload from the server.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompressor::new(15, true, None);
    let mut out = Vec::new();
    d.inflate(payload, &mut out, 64 << 20)
        .expect("valid DEFLATE");
    d.finish(&mut out, 64 << 20).expect("valid DEFLATE");
    out
}

#[test]
fn rsv1_marks_compressed_messages_only() {
    let server = Server::start(&["--deflate"]);
    let (mut c, answer) = connect(server.addr, Some("permessage-deflate"));
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    let big = common::text(5000, 3);
    // A compressed message in three frames: RSV1 on the first only (RFC 7692 §6.1).
    let mut parts = Vec::new();
    let mut z = Compressor::new(15, 6, false);
    for (i, chunk) in big.as_bytes().chunks(2000).enumerate() {
        let mut out = Vec::new();
        z.compress_part(chunk, i == 2, &mut out);
        let opcode = if i == 0 { op::TEXT } else { op::CONT };
        let frame = Frame::new(i == 2, opcode, out);
        parts.push(if i == 0 { frame.with_rsv(RSV1) } else { frame });
    }
    c.send_all(&parts);
    // Over the threshold: the echo comes compressed, in one frame.
    let echo = c.expect_frame();
    assert_eq!((echo.fin, echo.rsv, echo.opcode), (true, RSV1, op::TEXT));
    assert!(echo.payload.len() < big.len() / 2, "compressed");
    assert_eq!(inflate(&echo.payload), big.as_bytes());
    // Under the threshold (256 bytes): compressed by the client, echoed plain.
    c.send(&Frame::text(deflate(b"Hello")).with_rsv(RSV1));
    let echo = c.expect_frame();
    assert_eq!((echo.rsv, echo.payload.as_slice()), (0, &b"Hello"[..]));
    // Uncompressed messages are still accepted; control frames never carry RSV1.
    c.send(&Frame::binary(vec![7u8; 300]));
    let echo = c.expect_frame();
    assert_eq!((echo.rsv, inflate(&echo.payload)), (RSV1, vec![7u8; 300]));
    c.send(&Frame::ping(b"p".to_vec()));
    let pong = c.expect_frame();
    assert_eq!((pong.rsv, pong.opcode), (0, op::PONG));
    // RSV1 on a control frame fails the connection (§6.1).
    c.send(&Frame::ping(b"p".to_vec()).with_rsv(RSV1));
    assert_eq!(c.expect_frame().close_code(), Some(1002));
}

#[test]
fn malformed_or_unknown_offers_are_declined() {
    let server = Server::start(&["--deflate"]);
    for offer in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; x-unknown",
        "x-webkit-deflate-frame",
        "permessage-deflate;",
    ] {
        let (mut c, answer) = connect(server.addr, Some(offer));
        assert_eq!(answer, None, "offer {offer:?} must be declined");
        // Declined: a compressed frame is a protocol error.
        c.send(&Frame::text(deflate(b"Hello")).with_rsv(RSV1));
        assert_eq!(c.expect_frame().close_code(), Some(1002), "{offer:?}");
    }
    // The first acceptable offer of several is taken.
    let (_, answer) = connect(
        server.addr,
        Some("permessage-deflate; foo, permessage-deflate; server_max_window_bits=11"),
    );
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=11")
    );
    // Without --deflate every offer is declined.
    let plain = Server::start(&[]);
    assert_eq!(connect(plain.addr, Some("permessage-deflate")).1, None);
}

#[test]
fn a_spent_budget_answers_without_context_takeover() {
    let server = Server::start(&[
        "--deflate",
        "--deflate-takeover",
        "both",
        "--deflate-budget",
        "1",
    ]);
    // 1 MiB holds two connections with takeover both ways (~428 KB each), not three.
    let answers: Vec<_> = (0..3)
        .map(|_| connect(server.addr, Some("permessage-deflate")))
        .collect();
    let sn = "server_no_context_takeover";
    let cn = "client_no_context_takeover";
    assert_eq!(answers[0].1.as_deref(), Some("permessage-deflate"));
    assert_eq!(answers[1].1.as_deref(), Some("permessage-deflate"));
    assert_eq!(
        answers[2].1.as_deref(),
        Some(format!("permessage-deflate; {sn}; {cn}").as_str())
    );
    // A closed connection returns its share once its slot is freed (which nothing outside the
    // server shows: new connections are tried until one gets takeover again).
    drop(answers);
    let mut last = None;
    assert!(
        common::eventually(Duration::from_secs(5), || {
            let (_c, answer) = connect(server.addr, Some("permessage-deflate"));
            last = answer;
            last.as_deref() == Some("permessage-deflate")
        }),
        "budget never returned: the last answer was {last:?}"
    );
}

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_decompression_bomb_closes_1009_with_bounded_memory() {
    let server = Server::start(&["--deflate"]);
    // 1 GiB of zeros as one compressed message: 16 MiB compressed once, then the steady-state
    // output of each further 16 MiB (the window already holds zeros) repeated: ~1 MB in all.
    let chunk = vec![0u8; 16 << 20];
    let mut z = Compressor::new(15, 9, false);
    let (mut first, mut next, mut again) = (Vec::new(), Vec::new(), Vec::new());
    z.compress_part(&chunk, false, &mut first);
    z.compress_part(&chunk, false, &mut next);
    z.compress_part(&chunk, false, &mut again);
    assert_eq!(next, again, "the repeated part is stable");
    let mut bomb = first;
    for _ in 0..62 {
        bomb.extend_from_slice(&next);
    }
    let total = 64u64 << 24;
    assert_eq!(total, 1 << 30);
    println!("bomb: {} bytes inflating to {total}", bomb.len());

    let before = rss_kib(server.pid());
    for _ in 0..4 {
        let (mut c, answer) = connect(server.addr, Some("permessage-deflate"));
        assert!(answer.is_some());
        // The server stops reading once it fails the connection: the tail may not be writable.
        let frame = c.masked(&Frame::binary(bomb.clone()).with_rsv(RSV1));
        let _ = c.try_write(&frame);
        let close = c.expect_frame();
        assert_eq!(close.close_code(), Some(1009), "{close:?}");
    }
    let after = rss_kib(server.pid());
    println!("server RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 40 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn the_size_limit_applies_to_the_inflated_message() {
    let server = Server::start(&["--deflate", "--max-message-size", "100000"]);
    // 150 KB that compress ~2x (far under the ratio guard): refused for its inflated size.
    let msg = letters(150_000, 9);
    let (mut c, _) = connect(server.addr, Some("permessage-deflate"));
    c.send(&Frame::text(deflate(msg.as_bytes())).with_rsv(RSV1));
    assert_eq!(c.expect_frame().close_code(), Some(1009));
    // Just under the limit passes, and comes back compressed.
    let msg = letters(99_000, 9);
    let (mut c, _) = connect(server.addr, Some("permessage-deflate"));
    c.send(&Frame::text(deflate(msg.as_bytes())).with_rsv(RSV1));
    let echo = c.expect_frame();
    assert_eq!(echo.rsv, RSV1);
    assert_eq!(inflate(&echo.payload), msg.as_bytes());
}

#[tokio::test]
async fn tungstenite_without_the_extension_is_unaffected() {
    let server = Server::start(&["--deflate"]);
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr))
        .await
        .expect("connect");
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    for n in [0, 300, 70_000, 1 << 20] {
        let msg = common::text(n, 5);
        ws.send(Message::text(msg.clone())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("no error");
        assert_eq!(echo, Message::text(msg));
    }
    ws.close(None).await.unwrap();
}

#[test]
fn ringws_load_with_deflate_echoes_through_it() {
    for takeover in ["client", "both"] {
        let server = Server::start(&["--deflate", "--deflate-takeover", takeover]);
        let mut cmd = Command::new(common::binary());
        cmd.args(["load", "--url", &format!("ws://{}/", server.addr)])
            .args(["--connections", "20", "--size", "2000", "--text"])
            .args([
                "--duration",
                "1",
                "--warmup",
                "0",
                "--workers",
                "1",
                "--json",
            ])
            .args(["--deflate", "--deflate-takeover", takeover]);
        let (status, output) = run_bounded(&mut cmd, RUN_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "{cmd:?}: {status:?}\n{output}\n--- server ---\n{}",
            server.log()
        );
        let json = output
            .lines()
            .find(|l| l.starts_with('{') && l.contains("\"msgs_per_s\""))
            .unwrap_or_else(|| panic!("no JSON summary:\n{output}"));
        assert!(json.contains("\"mismatch\":0"), "{json}");
        assert!(json.contains("\"connections_established\":20"), "{json}");
    }
}
