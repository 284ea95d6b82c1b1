//! Autobahn|Testsuite group 7 (close handling) against a live `ringws serve`: the close handshake,
//! what happens to frames after a Close, close payload rules, and every valid and invalid close code.

mod common;

use common::{Frame, RawClient, Server, op};

/// 7.1.1: a message, then Close 1000: the message is echoed, then the Close, then TCP is closed by
/// the server without the client closing its side.
#[test]
fn case_7_1_1_message_then_close() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send_all(&[Frame::text("Hello World!"), Frame::close(1000, b"")]);
    c.expect_text(b"Hello World!");
    c.expect_close_frame(Some(1000));
    c.expect_closed();
}

/// 7.1.2-7.1.5: after a Close, nothing the client sends is answered: a second Close, a ping, a text
/// message, or the rest of a fragmented message begun before the Close. Exactly one Close comes back.
#[test]
fn case_7_1_2_to_7_1_5_frames_after_close_are_ignored() {
    let server = Server::start(&[]);
    let after: [&[Frame]; 3] = [
        &[Frame::close(1000, b"")],
        &[Frame::ping("Hello World!")],
        &[Frame::text("Hello World!")],
    ];
    for frames in after {
        let mut c = RawClient::connect(server.addr);
        let mut all = vec![Frame::close(1000, b"")];
        all.extend_from_slice(frames);
        c.send_all(&all);
        c.expect_close_frame(Some(1000));
        c.expect_closed();
    }
    // 7.1.5: first fragment, Close, last fragment: the message is never echoed.
    let mut c = RawClient::connect(server.addr);
    c.send_all(&[
        Frame::new(false, op::TEXT, "fragment1"),
        Frame::close(1000, b""),
        Frame::new(true, op::CONT, "fragment2"),
    ]);
    c.expect_close_frame(Some(1000));
    c.expect_closed();
}

/// 7.3.1: a Close with no payload is answered with a Close. RFC 6455 §5.5.1 says an endpoint
/// "typically echos the status code it received"; with none received, an empty Close (the echo) or
/// 1000 are both correct, and 1005 must never be sent — the check accepts exactly those two.
#[test]
fn case_7_3_1_empty_close_answered() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::new(true, op::CLOSE, Vec::new()));
    let reply = c.expect_frame();
    assert_eq!(reply.opcode, op::CLOSE, "expected a Close, got {reply:?}");
    assert!(
        matches!(reply.close_code(), None | Some(1000)),
        "reply to an empty Close: {reply:?}"
    );
    c.expect_closed();
}

/// 7.3.2: a one-byte Close payload is a protocol error.
#[test]
fn case_7_3_2_one_byte_close_payload_is_1002() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::new(true, op::CLOSE, vec![0x03]));
    c.expect_close(Some(1002));
}

/// 7.3.3-7.3.5: Close 1000 with no reason, a short reason and a 123-byte reason (the longest that fits
/// a control frame) is echoed with code 1000.
#[test]
fn case_7_3_3_to_7_3_5_close_with_reasons_echoed() {
    let server = Server::start(&[]);
    let long = "*".repeat(123);
    for reason in ["", "Hello World!", long.as_str()] {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::close(1000, reason.as_bytes()));
        c.expect_close_frame(Some(1000));
        c.expect_closed();
    }
}

/// 7.3.6: Close with a 124-byte reason (a 126-byte control payload) is a protocol error.
#[test]
fn case_7_3_6_close_payload_over_125_is_1002() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::close(1000, "*".repeat(124).as_bytes()));
    c.expect_close(Some(1002));
}

/// 7.5.1: a Close reason that is not UTF-8 is 1007.
#[test]
fn case_7_5_1_invalid_utf8_reason_is_1007() {
    let server = Server::start(&[]);
    for reason in ["cebae1bdb9cf83cebcceb5eda080656469746564", "ff", "c0af"] {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::close(1000, &common::hex(reason)));
        c.expect_close(Some(1007));
    }
}

/// 7.7.*: every valid code (the registered ones and the 3000-4999 ranges' ends) is echoed.
#[test]
fn case_7_7_valid_codes_echoed() {
    let server = Server::start(&[]);
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    for code in codes {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::close(code, b"bye"));
        c.expect_close_frame(Some(code));
        c.expect_closed();
    }
}

/// 7.9.*, 7.13.*: codes that may not appear on the wire are a protocol error.
#[test]
fn case_7_9_invalid_codes_are_1002() {
    let server = Server::start(&[]);
    let codes = [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in codes {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::close(code, b""));
        c.expect_close(Some(1002));
    }
}

/// The close handshake with the Close written one byte at a time, after an echo on the same
/// connection: the server still echoes the code and closes TCP.
#[test]
fn case_7_x_chopped_close_after_traffic() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.echo(Frame::text("before close"));
    let wire = c.masked(&Frame::close(4000, "chopped".as_bytes()));
    c.write_chopped(&wire, 1);
    c.expect_close_frame(Some(4000));
    c.expect_closed();
}

/// 7.1.6-style: a 4 MiB message, then Close, sent before the client reads anything. The echo is
/// larger than the socket buffers, so it is still being sent when the Close arrives: it must complete
/// (a frame cannot be cut), and the Close 1000 follows it.
#[test]
fn case_7_1_6_close_while_a_large_echo_is_in_flight() {
    let server = Server::start(&["--max-message-size", "16777216"]);
    let mut c = RawClient::connect(server.addr);
    let payload = common::bytes(4 << 20, 7);
    let mut wire = c.masked(&Frame::binary(payload.clone()));
    wire.extend(c.masked(&Frame::close(1000, b"")));
    // Write from a thread: the server's echo fills our receive buffer while we are still writing.
    let mut writer = c.try_clone_stream();
    let sent = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &wire));
    c.expect_binary(&payload);
    c.expect_close_frame(Some(1000));
    c.expect_closed();
    sent.join().expect("writer thread").expect("write");
}
