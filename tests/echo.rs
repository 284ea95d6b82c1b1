//! End-to-end behaviour of `ringws serve` with an independent client (tokio-tungstenite) and the raw
//! client: echo of every length class up to 16 MiB, ping/pong, the close handshake, 1,000 concurrent
//! clients, a handshake arriving one byte at a time, fragmented messages with pings between the
//! fragments, large echoes queued without a copy, and graceful shutdown on SIGTERM/SIGINT.

mod common;

use common::{Frame, RawClient, Server, Ws, bytes, op, text, ws_connect};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// 16 MiB: the largest message the echo tests send, and the server's limit in those tests (a message
/// of exactly the limit must pass).
const SIXTEEN_MIB: usize = 16 << 20;
const SIXTEEN_MIB_ARG: &str = "16777216";

/// The payload lengths every echo test covers: each length-encoding boundary (7-bit, 16-bit, 64-bit),
/// then messages that span many receive buffers.
const LENGTHS: [usize; 9] = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20, SIXTEEN_MIB];

/// The next message from `ws`, failing the test on a timeout, an error or the end of the stream.
async fn next(ws: &mut Ws) -> Message {
    match timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(msg))) => msg,
        Ok(Some(Err(e))) => panic!("tungstenite read error: {e}"),
        Ok(None) => panic!("the server closed the stream"),
        Err(_) => panic!("no message within 30 s"),
    }
}

async fn send(ws: &mut Ws, msg: Message) {
    timeout(Duration::from_secs(30), ws.send(msg))
        .await
        .expect("send timed out")
        .expect("send failed");
}

#[tokio::test]
async fn echoes_text_of_every_length_class() {
    let server = Server::start(&["--max-message-size", SIXTEEN_MIB_ARG]);
    let mut ws = ws_connect(server.addr).await;
    for (i, len) in LENGTHS.into_iter().enumerate() {
        let sent = text(len, i as u8);
        send(&mut ws, Message::text(sent.clone())).await;
        match next(&mut ws).await {
            Message::Text(got) => {
                assert_eq!(got.len(), len, "text echo length");
                assert!(got.as_str() == sent, "text echo of {len} bytes differs");
            }
            other => panic!(
                "expected a text echo of {len} bytes, got {:?}",
                kind(&other)
            ),
        }
    }
}

#[tokio::test]
async fn echoes_binary_of_every_length_class() {
    let server = Server::start(&["--max-message-size", SIXTEEN_MIB_ARG]);
    let mut ws = ws_connect(server.addr).await;
    for (i, len) in LENGTHS.into_iter().enumerate() {
        let sent = bytes(len, i as u8);
        send(&mut ws, Message::binary(sent.clone())).await;
        match next(&mut ws).await {
            Message::Binary(got) => common::assert_payload(&got, &sent),
            other => panic!(
                "expected a binary echo of {len} bytes, got {:?}",
                kind(&other)
            ),
        }
    }
}

/// A short description of a message for failure output (not megabytes of payload).
fn kind(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        Message::Ping(p) => format!("Ping({p:?})"),
        Message::Pong(p) => format!("Pong({p:?})"),
        Message::Close(c) => format!("Close({c:?})"),
        Message::Frame(_) => "raw frame".into(),
    }
}

#[tokio::test]
async fn ping_is_answered_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(server.addr).await;
    for payload in [&b""[..], b"x", b"hello ping", &[0xff; 125]] {
        send(&mut ws, Message::Ping(payload.to_vec().into())).await;
        match next(&mut ws).await {
            Message::Pong(got) => assert_eq!(&got[..], payload),
            other => panic!("expected a pong, got {}", kind(&other)),
        }
    }
    // The connection still echoes after control traffic.
    send(&mut ws, Message::text("after pings")).await;
    assert_eq!(next(&mut ws).await, Message::text("after pings"));
}

#[tokio::test]
async fn close_1000_is_echoed_and_the_stream_ends() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(server.addr).await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    timeout(Duration::from_secs(10), ws.close(Some(frame)))
        .await
        .expect("close timed out")
        .expect("close failed");
    match next(&mut ws).await {
        Message::Close(Some(reply)) => assert_eq!(u16::from(reply.code), 1000),
        other => panic!("expected Close 1000, got {}", kind(&other)),
    }
    // After the close handshake the server closes TCP: the stream ends.
    let end = timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("stream did not end");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");
}

/// 1,000 clients at once, each echoing 100 messages (text and binary alternating, sizes varying), every
/// reply checked against what that client sent. Bounded at 60 s.
#[tokio::test]
async fn thousand_concurrent_clients_echo_a_hundred_messages_each() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 100;
    let server = Server::start(&["--workers", "2"]);
    let addr = server.addr;
    let run = async move {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            tasks.spawn(async move {
                let mut ws = ws_connect(addr).await;
                for seq in 0..MESSAGES {
                    let pad = (client * 7 + seq * 13) % 300;
                    let body = format!("{client}:{seq}:{}", text(pad, seq as u8));
                    let msg = if seq % 2 == 0 {
                        Message::text(body)
                    } else {
                        Message::binary(body.into_bytes())
                    };
                    send(&mut ws, msg.clone()).await;
                    let got = next(&mut ws).await;
                    assert!(
                        got == msg,
                        "client {client} message {seq}: got {}",
                        kind(&got)
                    );
                }
                ws.close(None).await.expect("close");
            });
        }
        let mut done = 0;
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
            done += 1;
        }
        done
    };
    let done = timeout(Duration::from_secs(60), run)
        .await
        .expect("1000x100 echo took over 60 s");
    assert_eq!(done, CLIENTS);
}

#[test]
fn handshake_written_one_byte_at_a_time() {
    let server = Server::start(&[]);
    let mut client = RawClient::connect_chopped(server.addr, 1);
    client.echo(Frame::text("after a chopped handshake"));
    client.close_normally();
}

/// A text message in 1,000 three-byte fragments with a ping after every 100th, all in one write: the
/// pongs come back in order, then the reassembled message. The binary variant goes out in 7-byte
/// writes so frame headers straddle reads.
#[test]
fn many_small_fragments_with_pings_between() {
    let server = Server::start(&[]);
    for (opcode, chunk) in [(op::TEXT, usize::MAX), (op::BINARY, 7)] {
        let mut client = RawClient::connect(server.addr);
        let whole = text(3000, opcode);
        let mut frames = Vec::new();
        for (i, part) in whole.as_bytes().chunks(3).enumerate() {
            let first = i == 0;
            let last = i == 999;
            frames.push(Frame::new(
                last,
                if first { opcode } else { op::CONT },
                part,
            ));
            if i % 100 == 99 && !last {
                frames.push(Frame::ping(format!("p{i}")));
            }
        }
        let wire = client.masked_all(&frames);
        client.write_chopped(&wire, chunk);
        for i in (99..999).step_by(100) {
            client.expect_pong(format!("p{i}").as_bytes());
        }
        let (got_op, payload) = client.expect_message();
        assert_eq!(got_op, opcode);
        common::assert_payload(&payload, whole.as_bytes());
        client.close_normally();
    }
}

/// Large echoes are queued without a copy: a message that lay whole in one receive buffer from that
/// buffer (`ringws_sent_lent_total`), a fragmented one from the buffer the decoder assembled it in
/// (`ringws_sent_taken_total`); the echoes come back byte for byte.
#[test]
fn large_echoes_are_sent_without_a_copy() {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let server = Server::start(&["--admin-addr", &admin.to_string()]);
    let mut client = RawClient::connect(server.addr);
    // One 20 KiB frame: lent if it lay whole in one receive buffer, else assembled and taken.
    let single = bytes(20 << 10, 1);
    let wire = client.masked_all(&[Frame::binary(single.clone())]);
    client.write(&wire);
    let (got_op, payload) = client.expect_message();
    assert_eq!(got_op, op::BINARY);
    common::assert_payload(&payload, &single);
    // 100 KiB in four fragments: always assembled, so always taken.
    let whole = bytes(100 << 10, 2);
    let frames: Vec<Frame> = whole
        .chunks(25 << 10)
        .enumerate()
        .map(|(i, part)| Frame::new(i == 3, if i == 0 { op::BINARY } else { op::CONT }, part))
        .collect();
    let wire = client.masked_all(&frames);
    client.write(&wire);
    let (got_op, payload) = client.expect_message();
    assert_eq!(got_op, op::BINARY);
    common::assert_payload(&payload, &whole);
    let (mut lent, mut taken) = (0.0, 0.0);
    let counted = common::eventually(Duration::from_secs(10), || {
        let Some((200, metrics)) = common::brokers::get(admin, "/metrics") else {
            return false;
        };
        lent = common::brokers::metric(&metrics, "ringws_sent_lent_total");
        taken = common::brokers::metric(&metrics, "ringws_sent_taken_total");
        lent + taken == 2.0 && taken >= 1.0
    });
    assert!(
        counted,
        "lent {lent}, taken {taken}: expected both echoes queued without a copy, the fragmented \
         one from its assembly buffer"
    );
    client.close_normally();
}

/// `ringws_received_into_message_total` on the server whose admin endpoint is `admin`, once it is
/// at least `at_least` (None if it never gets there within 10 s).
fn received_into_message(admin: std::net::SocketAddr, at_least: f64) -> Option<f64> {
    let mut seen = None;
    let reached = common::eventually(Duration::from_secs(10), || {
        if let Some((200, metrics)) = common::brokers::get(admin, "/metrics") {
            seen = Some(common::brokers::metric(
                &metrics,
                "ringws_received_into_message_total",
            ));
        }
        seen.is_some_and(|n| n >= at_least)
    });
    if reached { seen } else { None }
}

/// Frames of at least `--recv-into-threshold` bytes are received straight into their message's
/// buffer once the multishot receive has stopped (counted in
/// `ringws_received_into_message_total`): a 1 MiB binary frame, 600 KiB of multi-byte text (its
/// characters split across receives) and a message of two 400 KiB fragments with a ping between
/// them all echo byte for byte, the ping answered between the fragments; bad UTF-8 that arrives
/// that way still gets 1007. A 1 MiB frame written at once (mostly taken by the multishot
/// receive before it stops) echoes too. With the threshold 0 nothing is counted.
#[test]
fn large_frames_are_received_straight_into_their_message() {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let server = Server::start(&["--admin-addr", &admin.to_string()]);
    let mut client = RawClient::connect(server.addr);
    let single = bytes(1 << 20, 3);
    let wire = client.masked(&Frame::binary(single.clone()));
    client.write_paced(admin, &wire);
    client.expect_binary(&single);
    let after_one = received_into_message(admin, 1.0).expect("the 1 MiB frame was not counted");

    let multibyte = "a\u{e9}\u{20ac}\u{1f600}".repeat(60 << 10);
    let wire = client.masked(&Frame::text(multibyte.clone()));
    client.write_paced(admin, &wire);
    client.expect_text(multibyte.as_bytes());
    let after_text = received_into_message(admin, after_one + 1.0).expect("the text not counted");

    let whole = bytes(800 << 10, 4);
    let (first, second) = whole.split_at(400 << 10);
    let wire = client.masked_all(&[
        Frame::new(false, op::BINARY, first),
        Frame::ping(b"between".to_vec()),
        Frame::new(true, op::CONT, second),
    ]);
    client.write_paced(admin, &wire);
    client.expect_pong(b"between");
    client.expect_binary(&whole);
    received_into_message(admin, after_text + 2.0).expect("both fragments counted");

    client.echo(Frame::binary(single.clone()));

    let mut bad = text(700 << 10, 5).into_bytes();
    bad[690 << 10] = 0xff;
    let wire = client.masked(&Frame::text(bad));
    client.write_paced(admin, &wire);
    client.expect_close(Some(1007));

    let off = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let server = Server::start(&[
        "--admin-addr",
        &off.to_string(),
        "--recv-into-threshold",
        "0",
    ]);
    let mut client = RawClient::connect(server.addr);
    let wire = client.masked(&Frame::binary(single.clone()));
    client.write_paced(off, &wire);
    client.expect_binary(&single);
    client.close_normally();
    let Some((200, metrics)) = common::brokers::get(off, "/metrics") else {
        panic!("no metrics from the second server");
    };
    assert_eq!(
        common::brokers::metric(&metrics, "ringws_received_into_message_total"),
        0.0,
        "--recv-into-threshold 0 turns receiving into the message off"
    );
}

/// A client that vanishes in the middle of a large frame being received into its buffer, and a
/// shutdown while another waits there: a third connection echoes on meanwhile, and the server
/// still exits 0 (the receive in the air is cancelled, its buffer kept until then).
#[test]
fn a_client_gone_mid_large_frame_disturbs_nobody() {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut server = Server::start(&["--admin-addr", &admin.to_string(), "--drain-delay", "0"]);
    let half_frame = |seed: u8| {
        let mut client = RawClient::connect(server.addr);
        let wire = client.masked(&Frame::binary(bytes(2 << 20, seed)));
        client.write_paced(admin, &wire[..1 << 20]);
        client
    };
    let vanishing = half_frame(6);
    let mut stalled = half_frame(7);
    received_into_message(admin, 2.0).expect("both half frames received into their messages");
    drop(vanishing);
    let mut other = RawClient::connect(server.addr);
    for seed in 0..3 {
        let wire = other.masked(&Frame::binary(bytes(300 << 10, seed)));
        other.write_paced(admin, &wire);
        other.expect_binary(&bytes(300 << 10, seed));
    }
    other.echo(Frame::text("small"));
    server.signal(libc::SIGTERM);
    other.expect_close(Some(1001));
    stalled.expect_close(Some(1001));
    drop((other, stalled));
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 after SIGTERM, got {status:?}; output:\n{}",
        server.log()
    );
}

/// SIGTERM: every open client gets Close 1001, and the process exits with status 0.
#[test]
fn sigterm_sends_1001_to_every_client_and_exits_0() {
    // No drain delay: the shutdown is under test (the drain before it is tests/ops.rs's).
    let mut server = Server::start(&["--workers", "2", "--drain-delay", "0"]);
    let mut clients: Vec<RawClient> = (0..10).map(|_| RawClient::connect(server.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.echo(Frame::text(format!("client {i}")));
    }
    server.signal(libc::SIGTERM);
    for c in &mut clients {
        c.expect_close(Some(1001));
    }
    // Well-behaved clients close their sockets once the server has closed its side.
    drop(clients);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 within 10 s after SIGTERM, got {status:?}; output:\n{}",
        server.log()
    );
}

/// SIGINT shuts down at once (no drain delay: it is the interactive Ctrl-C), also for a client in the middle of a fragmented message and for one
/// that never answers the Close (the drain is bounded: exit within 20 s).
#[test]
fn sigint_closes_with_1001_even_mid_message_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut mid_message = RawClient::connect(server.addr);
    mid_message.send(&Frame::new(false, op::TEXT, "first half"));
    let mut silent = RawClient::connect(server.addr);
    silent.echo(Frame::binary(vec![1, 2, 3]));
    server.signal(libc::SIGINT);
    mid_message.expect_close(Some(1001));
    silent.expect_close_frame(Some(1001));
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 within 20 s after SIGINT, got {status:?}; output:\n{}",
        server.log()
    );
}

/// A fast client pipelines many large messages while reading concurrently (as any streaming client
/// does): every message is echoed, in order, none dropped.
#[test]
fn pipelined_large_messages_all_echoed_in_order() {
    let server = Server::start(&["--max-message-size", SIXTEEN_MIB_ARG]);
    for (count, size) in [(64usize, 64usize << 10), (16, 1 << 20)] {
        let mut client = RawClient::connect(server.addr);
        let messages: Vec<Vec<u8>> = (0..count).map(|i| bytes(size, i as u8)).collect();
        let frames: Vec<Frame> = messages.iter().map(|m| Frame::binary(m.clone())).collect();
        let wire = client.masked_all(&frames);
        let mut writer = client.try_clone_stream();
        let sent = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &wire));
        for (i, m) in messages.iter().enumerate() {
            let (opcode, payload) = client.expect_message();
            assert_eq!(opcode, op::BINARY, "message {i} of {count} x {size}");
            if payload != *m {
                // Name the message it is, if any: a later index means the ones between were dropped.
                let is = messages.iter().position(|x| *x == payload);
                panic!("echo {i} of {count} x {size} B is not message {i} but message {is:?}");
            }
        }
        sent.join().expect("writer thread").expect("write");
        client.close_normally();
    }
}

/// SIGTERM while an 8 MiB echo is still being sent (the client has not read it yet): the echo
/// completes — a frame cannot be cut — and Close 1001 follows it; the process exits 0.
#[test]
fn sigterm_during_a_large_echo_completes_the_frame_then_1001() {
    let mut server = Server::start(&["--max-message-size", SIXTEEN_MIB_ARG, "--drain-delay", "0"]);
    let mut client = RawClient::connect(server.addr);
    let payload = bytes(8 << 20, 8);
    client.send(&Frame::binary(payload.clone()));
    // The whole message is written; signal once the echo has started arriving (the client reads
    // nothing until then, so the rest of the 8 MiB is still being sent into full buffers).
    assert!(
        client.wait_readable(common::READ_TIMEOUT),
        "the echo never started"
    );
    server.signal(libc::SIGTERM);
    client.expect_binary(&payload);
    client.expect_close(Some(1001));
    drop(client);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 within 10 s after SIGTERM, got {status:?}"
    );
}
