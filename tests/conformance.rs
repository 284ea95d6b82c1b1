//! An Autobahn|Testsuite-style conformance suite against a live `ringws serve`, grouped like Autobahn's
//! cases (1.* framing, 2.* ping/pong, 3.* reserved bits, 4.* opcodes, 5.* fragmentation, 6.* UTF-8,
//! 9.* large messages; 7.* close handling lives in `close_codes.rs`). Frames are hand-built by the raw
//! client so that every header bit and every write boundary is chosen by the test. Where Autobahn
//! accepts either of two behaviours ("non-strict"), the strict one is asserted.
//!
//! Group 10 (auto-fragmentation: the server may re-fragment what it echoes) is not a separate case:
//! the raw client's `expect_message` reassembles whatever fragmentation the server chooses, and the
//! 64 KiB echo of 10.1.1 is covered by 1.1.7/1.2.7. Groups 12/13 (permessage-deflate) do not apply yet.

mod common;

use common::{Frame, RawClient, Server, bytes, hex, op, text};
use std::time::Duration;

/// The Autobahn 1.1.*/1.2.* lengths: each side of the 7-bit/16-bit/64-bit length boundaries.
const FRAMING_LENGTHS: [usize; 7] = [0, 125, 126, 127, 128, 65535, 65536];

// ---- 1.* framing ---------------------------------------------------------------------------------

/// 1.1.1-1.1.8: text messages of each boundary length echoed, and 65536 bytes sent in 997-byte writes.
#[test]
fn case_1_1_text_lengths() {
    let server = Server::start(&[]);
    for len in FRAMING_LENGTHS {
        let mut c = RawClient::connect(server.addr);
        c.echo(Frame::text(text(len, len as u8)));
        c.close_normally();
    }
    let mut c = RawClient::connect(server.addr);
    let payload = text(65536, 8);
    let wire = c.masked(&Frame::text(payload.clone()));
    c.write_chopped(&wire, 997);
    c.expect_text(payload.as_bytes());
    c.close_normally();
}

/// 1.2.1-1.2.8: the same for binary messages.
#[test]
fn case_1_2_binary_lengths() {
    let server = Server::start(&[]);
    for len in FRAMING_LENGTHS {
        let mut c = RawClient::connect(server.addr);
        c.echo(Frame::binary(bytes(len, len as u8)));
        c.close_normally();
    }
    let mut c = RawClient::connect(server.addr);
    let payload = bytes(65536, 8);
    let wire = c.masked(&Frame::binary(payload.clone()));
    c.write_chopped(&wire, 997);
    c.expect_binary(&payload);
    c.close_normally();
}

/// Several messages in one write come back in order, and a frame whose header arrives in pieces
/// (1-byte writes of every length class) is decoded.
#[test]
fn case_1_x_pipelined_and_header_split() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    let frames: Vec<Frame> = (0..50)
        .map(|i| Frame::text(format!("message {i}")))
        .collect();
    c.send_all(&frames);
    for f in &frames {
        c.expect_text(&f.payload);
    }
    for len in [5, 200, 70_000] {
        let payload = bytes(len, 3);
        let wire = c.masked(&Frame::binary(payload.clone()));
        let header = ringws_protocol::frame::header_len(len as u64, true);
        c.write_chopped(&wire[..header], 1);
        c.write(&wire[header..]);
        c.expect_binary(&payload);
    }
    c.close_normally();
}

// ---- 2.* ping/pong -------------------------------------------------------------------------------

/// 2.1-2.4: pings with no payload, text, binary and a 125-byte payload get pongs with that payload.
#[test]
fn case_2_1_to_2_4_pings_answered() {
    let server = Server::start(&[]);
    let binary = [0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
    let max = bytes(125, 1);
    for payload in [&b""[..], b"Hello, world!", &binary, &max] {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::ping(payload));
        c.expect_pong(payload);
        c.close_normally();
    }
}

/// 2.5: a ping with a 126-byte payload is a protocol error (control frames carry at most 125).
#[test]
fn case_2_5_ping_over_125_bytes_is_1002() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::ping(bytes(126, 1)));
    c.expect_close(Some(1002));
}

/// 2.6: a 125-byte ping written one byte at a time.
#[test]
fn case_2_6_ping_chopped_into_single_bytes() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    let payload = bytes(125, 6);
    let wire = c.masked(&Frame::ping(payload.clone()));
    c.write_chopped(&wire, 1);
    c.expect_pong(&payload);
    c.close_normally();
}

/// 2.7-2.9: unsolicited pongs (empty or with payload) are ignored; a ping after them gets its own pong
/// as the very next frame.
#[test]
fn case_2_7_to_2_9_unsolicited_pongs_ignored() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::new(true, op::PONG, Vec::new()));
    c.send(&Frame::new(true, op::PONG, "unsolicited pong payload"));
    c.expect_silence(Duration::from_millis(200));
    c.send(&Frame::ping("ping payload"));
    c.expect_pong(b"ping payload");
    c.close_normally();
}

/// 2.10/2.11: ten pings in a row (one write, then one byte per write) are each answered, in order.
/// Autobahn also accepts answering only the last; the strict outcome is asserted.
#[test]
fn case_2_10_2_11_ten_pings_answered_in_order() {
    let server = Server::start(&[]);
    for chunk in [usize::MAX, 1] {
        let mut c = RawClient::connect(server.addr);
        let pings: Vec<Frame> = (0..10)
            .map(|i| Frame::ping(format!("payload-{i}")))
            .collect();
        let wire = c.masked_all(&pings);
        c.write_chopped(&wire, chunk);
        for i in 0..10 {
            c.expect_pong(format!("payload-{i}").as_bytes());
        }
        c.close_normally();
    }
}

// ---- 3.* reserved bits ---------------------------------------------------------------------------

/// 3.1-3.7: any RSV bit without a negotiated extension fails the connection with 1002. Where a valid
/// text message precedes the bad frame it is echoed first; a ping after the bad frame is not answered.
#[test]
fn case_3_reserved_bits_are_1002() {
    let server = Server::start(&[]);
    let cases: [(u8, Frame); 7] = [
        (1, Frame::text("Hello, world!")),
        (2, Frame::text("Hello, world!")),
        (3, Frame::text("Hello, world!")),
        (4, Frame::text("Hello, world!")),
        (5, Frame::binary(bytes(10, 5))),
        (6, Frame::ping("Hello, world!")),
        (7, Frame::close(1000, b"")),
    ];
    for (i, (rsv, bad)) in cases.into_iter().enumerate() {
        let mut c = RawClient::connect(server.addr);
        let with_neighbours = (2..=4).contains(&rsv);
        let mut frames = Vec::new();
        if with_neighbours {
            frames.push(Frame::text("valid before"));
        }
        frames.push(bad.with_rsv(rsv));
        if with_neighbours {
            frames.push(Frame::ping("after the bad frame"));
        }
        let wire = c.masked_all(&frames);
        // 3.4 writes one byte at a time; the others send everything in one write.
        c.write_chopped(&wire, if i == 3 { 1 } else { usize::MAX });
        if with_neighbours {
            c.expect_text(b"valid before");
        }
        c.expect_close(Some(1002));
    }
}

// ---- 4.* opcodes ---------------------------------------------------------------------------------

/// 4.1.1-4.1.5 (non-control 3-7) and 4.2.1-4.2.5 (control 0xB-0xF): a reserved opcode fails the
/// connection with 1002, after echoing a valid message sent before it and without answering a ping
/// sent after it.
#[test]
fn case_4_reserved_opcodes_are_1002() {
    let server = Server::start(&[]);
    for opcode in (3..=7).chain(0xb..=0xf) {
        for (variant, payload) in [(0, &b""[..]), (1, b"reserved payload")] {
            let mut c = RawClient::connect(server.addr);
            let frames = [
                Frame::text("valid before"),
                Frame::new(true, opcode, payload),
                Frame::ping("after"),
            ];
            let start = if variant == 0 { 1 } else { 0 };
            c.send_all(&frames[start..]);
            if start == 0 {
                c.expect_text(b"valid before");
            }
            c.expect_close(Some(1002));
        }
    }
}

// ---- 5.* fragmentation ---------------------------------------------------------------------------

/// 5.1/5.2 and a fragmented Close: a control frame with FIN=0 is a protocol error.
#[test]
fn case_5_1_5_2_fragmented_control_frames_are_1002() {
    let server = Server::start(&[]);
    for opcode in [op::PING, op::PONG, op::CLOSE] {
        let mut c = RawClient::connect(server.addr);
        c.send_all(&[
            Frame::new(false, opcode, "frag1"),
            Frame::new(true, op::CONT, "frag2"),
        ]);
        c.expect_close(Some(1002));
    }
}

/// 5.3-5.5: a text message in two fragments, sent in one write, frame by frame, and chopped.
#[test]
fn case_5_3_to_5_5_two_fragments_reassembled() {
    let server = Server::start(&[]);
    for chunk in [usize::MAX, 3, 1] {
        let mut c = RawClient::connect(server.addr);
        let wire = c.masked_all(&[
            Frame::new(false, op::TEXT, "fragment1"),
            Frame::new(true, op::CONT, "fragment2"),
        ]);
        c.write_chopped(&wire, chunk);
        c.expect_text(b"fragment1fragment2");
        c.close_normally();
    }
}

/// 5.6-5.8, 5.19, 5.20: pings between fragments are answered at once (before the message completes)
/// and the message is reassembled. In 5.19/5.20 the fragments trickle in with pauses: each pong must
/// arrive while the message is still incomplete.
#[test]
fn case_5_6_to_5_8_5_19_5_20_pings_between_fragments() {
    let server = Server::start(&[]);
    for chunk in [usize::MAX, 1] {
        let mut c = RawClient::connect(server.addr);
        let wire = c.masked_all(&[
            Frame::new(false, op::TEXT, "fragment1"),
            Frame::ping("ping payload"),
            Frame::new(true, op::CONT, "fragment2"),
        ]);
        c.write_chopped(&wire, chunk);
        c.expect_pong(b"ping payload");
        c.expect_text(b"fragment1fragment2");
        c.close_normally();
    }
    let mut c = RawClient::connect(server.addr);
    for i in 1..=5 {
        let opcode = if i == 1 { op::TEXT } else { op::CONT };
        c.send(&Frame::new(i == 5, opcode, format!("fragment{i}")));
        if i < 5 {
            c.send(&Frame::ping(format!("pongme {i}!")));
            c.expect_pong(format!("pongme {i}!").as_bytes());
            // Paces the fragments: they trickle in with pauses, as in cases 5.19/5.20.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    c.expect_text(b"fragment1fragment2fragment3fragment4fragment5");
    c.close_normally();
}

/// 5.9-5.14: a continuation frame with nothing to continue (FIN=1 or 0, alone or followed by a
/// complete message, in one write or chopped) is a protocol error; the message after it is not echoed.
#[test]
fn case_5_9_to_5_14_continuation_without_start_is_1002() {
    let server = Server::start(&[]);
    for fin in [true, false] {
        for chunk in [usize::MAX, 1] {
            let mut c = RawClient::connect(server.addr);
            let wire = c.masked_all(&[
                Frame::new(fin, op::CONT, "non-continuation payload"),
                Frame::text("Hello, world!"),
            ]);
            c.write_chopped(&wire, chunk);
            c.expect_close(Some(1002));
        }
    }
}

/// 5.15: a complete fragmented message, then a stray continuation (FIN=0), then a text message: the
/// first message is echoed, then 1002.
#[test]
fn case_5_15_stray_continuation_after_a_message_is_1002() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send_all(&[
        Frame::new(false, op::TEXT, "fragment1"),
        Frame::new(true, op::CONT, "fragment2"),
        Frame::new(false, op::CONT, "fragment3"),
        Frame::text("fragment4"),
    ]);
    c.expect_text(b"fragment1fragment2");
    c.expect_close(Some(1002));
}

/// 5.16/5.17: a stray continuation before a fragmented message is 1002 (FIN=0 and FIN=1).
#[test]
fn case_5_16_5_17_stray_continuation_before_a_message_is_1002() {
    let server = Server::start(&[]);
    for fin in [false, true] {
        let mut c = RawClient::connect(server.addr);
        c.send_all(&[
            Frame::new(fin, op::CONT, "fragment1"),
            Frame::new(false, op::TEXT, "fragment2"),
            Frame::new(true, op::CONT, "fragment3"),
        ]);
        c.expect_close(Some(1002));
    }
}

/// 5.18 and its binary twin: a new data frame while a fragmented message is in progress is 1002.
#[test]
fn case_5_18_new_data_frame_inside_a_fragmented_message_is_1002() {
    let server = Server::start(&[]);
    for (first, second) in [
        (op::TEXT, op::TEXT),
        (op::BINARY, op::TEXT),
        (op::TEXT, op::BINARY),
    ] {
        let mut c = RawClient::connect(server.addr);
        c.send_all(&[
            Frame::new(false, first, "fragment1"),
            Frame::new(true, second, "fragment2"),
        ]);
        c.expect_close(Some(1002));
    }
}

/// Empty fragments are legal anywhere in a message (Autobahn 6.1.2/6.1.3 use them for text).
#[test]
fn case_5_x_empty_fragments() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.send_all(&[
        Frame::new(false, op::BINARY, Vec::new()),
        Frame::new(false, op::CONT, Vec::new()),
        Frame::new(true, op::CONT, Vec::new()),
    ]);
    c.expect_binary(b"");
    c.send_all(&[
        Frame::new(false, op::TEXT, Vec::new()),
        Frame::new(false, op::CONT, "middle"),
        Frame::new(true, op::CONT, Vec::new()),
    ]);
    c.expect_text(b"middle");
    c.close_normally();
}

// ---- 6.* UTF-8 -----------------------------------------------------------------------------------

/// Valid UTF-8 sequences (Autobahn 6.2, 6.5-6.7, 6.11 and the Kuhn test file's boundary cases).
const VALID_UTF8: &[&str] = &[
    "48656c6c6f2dc2b540c39fc3b6c3a4c3bcc3a0c3a12d5554462d382121", // Hello-µ@ßöäüàá-UTF-8!!
    "cebae1bdb9cf83cebcceb5",                                     // κόσμε
    "00",
    "7f",
    "c280",
    "dfbf",
    "e0a080",
    "efbfbf",
    "f0908080",
    "f48fbfbf",
    "ed9fbf",   // U+D7FF, just below the surrogates
    "ee8080",   // U+E000, just above them
    "efbfbd",   // U+FFFD
    "efbfbe",   // U+FFFE: a noncharacter, but valid UTF-8
    "f09f9880", // 😀
];

/// Invalid UTF-8 (Autobahn 6.3, 6.6, 6.8-6.10, 6.12-6.21): overlong forms, surrogates, code points past
/// U+10FFFF, lone and unexpected continuation bytes, 0xfe/0xff, and truncated sequences at the end.
const INVALID_UTF8: &[&str] = &[
    "cebae1bdb9cf83cebcceb5eda080656469746564", // 6.3.1: a surrogate inside "κόσμε…edited"
    "c0af",
    "c1bf",
    "e080af",
    "f08080af",
    "f8888080af",
    "fc84808080af",
    "eda080",
    "edbfbf",
    "eda080edb080", // a surrogate pair, UTF-16 style
    "f4908080",
    "f7bfbfbf",
    "80",
    "bf",
    "80bf80bf",
    "c020",
    "e08020",
    "fe",
    "ff",
    "fefeffff",
    "ce",     // truncated at the end of the message
    "cebae1", // truncated 3-byte sequence
    "f09f98", // truncated 4-byte sequence
];

/// 6.1, 6.2: empty text messages, and valid multi-byte text in one frame, fragmented at code point
/// boundaries, and fragmented one byte per frame (fragments that split code points).
#[test]
fn case_6_1_6_2_valid_utf8_echoed_whole_and_split() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    c.echo(Frame::text(Vec::new()));
    for vector in VALID_UTF8 {
        let payload = hex(vector);
        c.echo(Frame::text(payload.clone()));
        let per_byte: Vec<Frame> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let opcode = if i == 0 { op::TEXT } else { op::CONT };
                Frame::new(i + 1 == payload.len(), opcode, vec![*b])
            })
            .collect();
        c.send_all(&per_byte);
        c.expect_text(&payload);
    }
    c.close_normally();
}

/// 6.3-6.21: invalid UTF-8 fails the connection with 1007, whether the text is one frame, one byte per
/// frame, or one frame written one byte at a time.
#[test]
fn case_6_invalid_utf8_is_1007() {
    let server = Server::start(&[]);
    for vector in INVALID_UTF8 {
        let payload = hex(vector);
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::text(payload.clone()));
        c.expect_close(Some(1007));

        let mut c = RawClient::connect(server.addr);
        let per_byte: Vec<Frame> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let opcode = if i == 0 { op::TEXT } else { op::CONT };
                Frame::new(i + 1 == payload.len(), opcode, vec![*b])
            })
            .collect();
        c.send_all(&per_byte);
        c.expect_close(Some(1007));

        let mut c = RawClient::connect(server.addr);
        let wire = c.masked(&Frame::text(payload));
        c.write_chopped(&wire, 1);
        c.expect_close(Some(1007));
    }
}

/// Multi-byte text in one large frame, written in odd-sized pieces, so that 2-, 3- and 4-byte
/// characters straddle the server's receive buffers and its partial-frame validation: echoed intact.
#[test]
fn case_6_x_multibyte_text_across_receive_buffers() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    let unit = "aé€😀κόσμε\u{10FFFF}";
    let payload = unit.repeat((1 << 20) / unit.len());
    for chunk in [usize::MAX, 65537, 4093, 1000] {
        let wire = c.masked(&Frame::text(payload.clone()));
        c.write_chopped(&wire, chunk);
        c.expect_text(payload.as_bytes());
    }
    c.close_normally();
}

/// Binary messages are not UTF-8 checked: the invalid vectors echo unchanged as binary.
#[test]
fn case_6_x_binary_is_not_utf8_checked() {
    let server = Server::start(&[]);
    let mut c = RawClient::connect(server.addr);
    for vector in INVALID_UTF8 {
        c.echo(Frame::binary(hex(vector)));
    }
    c.close_normally();
}

/// 6.4.1/6.4.2: fail fast across fragments. The fragment that makes the text invalid draws Close 1007
/// before the message's final fragment is ever sent.
#[test]
fn case_6_4_1_6_4_2_invalid_utf8_fails_fast_across_fragments() {
    let server = Server::start(&[]);
    let cases = [
        // 6.4.1: PART2 is 0x110000 in UTF-8's scheme, out of range.
        ("cebae1bdb9cf83cebcceb5", "f4908080", "656469746564"),
        // 6.4.2: PART1 ends with the lead byte 0xf4, PART2's 0x90 makes it invalid.
        ("cebae1bdb9cf83cebcceb5f4", "90", "8080656469746564"),
    ];
    for (part1, part2, part3) in cases {
        let mut c = RawClient::connect(server.addr);
        c.send(&Frame::new(false, op::TEXT, hex(part1)));
        c.expect_silence(Duration::from_millis(100));
        c.send(&Frame::new(false, op::CONT, hex(part2)));
        // PART3 (the final fragment) has not been sent: the Close must already come.
        c.expect_close_frame(Some(1007));
        let wire = c.masked(&Frame::new(true, op::CONT, hex(part3)));
        let _ = c.try_write(&wire);
        c.expect_closed();
    }
}

/// 6.4.3/6.4.4: fail fast inside one frame. The frame is written in three pieces; Close 1007 arrives
/// after the piece with the invalid bytes and before the rest of the frame's payload is sent.
#[test]
fn case_6_4_3_6_4_4_invalid_utf8_fails_fast_within_a_frame() {
    let server = Server::start(&[]);
    let payload = hex("cebae1bdb9cf83cebcceb5f4908080656469746564");
    // Split points in the payload: 6.4.3 sends "f4908080" as the middle piece, 6.4.4 only "f490".
    for (from, to) in [(11, 15), (11, 13)] {
        let mut c = RawClient::connect(server.addr);
        let wire = c.masked(&Frame::text(payload.clone()));
        let header = wire.len() - payload.len();
        c.write(&wire[..header + from]);
        c.expect_silence(Duration::from_millis(100));
        c.write(&wire[header + from..header + to]);
        c.expect_close_frame(Some(1007));
        let _ = c.try_write(&wire[header + to..]);
        c.expect_closed();
    }
}

// ---- 9.* large messages --------------------------------------------------------------------------

/// 9.1.3 and 9.2.3-style: 1 MiB text in one frame; 9.3/9.4: 1 MiB in fragments of 64 B .. 64 KiB, text
/// and binary; 9.5/9.6: 1 MiB written in chops of 64 B .. 4 KiB. (16 MiB single-frame and 1 MiB echo via
/// tungstenite are in `echo.rs`.)
#[test]
fn case_9_one_mib_whole_fragmented_and_chopped() {
    let server = Server::start(&["--max-message-size", "16777216"]);
    let mut c = RawClient::connect(server.addr);
    let big_text = text(1 << 20, 9);
    c.echo(Frame::text(big_text.clone()));
    for (i, fragment) in [64usize, 4096, 65536].into_iter().enumerate() {
        let (opcode, payload) = if i % 2 == 0 {
            (op::TEXT, big_text.as_bytes().to_vec())
        } else {
            (op::BINARY, bytes(1 << 20, 9))
        };
        let count = payload.len().div_ceil(fragment);
        let frames: Vec<Frame> = payload
            .chunks(fragment)
            .enumerate()
            .map(|(j, part)| {
                Frame::new(j + 1 == count, if j == 0 { opcode } else { op::CONT }, part)
            })
            .collect();
        c.send_all(&frames);
        let (got_op, got) = c.expect_message();
        assert_eq!(got_op, opcode);
        common::assert_payload(&got, &payload);
    }
    for chop in [64, 4096] {
        let payload = bytes(1 << 20, chop as u8);
        let wire = c.masked(&Frame::binary(payload.clone()));
        c.write_chopped(&wire, chop);
        c.expect_binary(&payload);
    }
    c.close_normally();
}

/// 16 MiB in 64 KiB fragments, at exactly the limit: accepted and echoed.
#[test]
fn case_9_sixteen_mib_fragmented_at_the_limit() {
    let server = Server::start(&["--max-message-size", "16777216"]);
    let mut c = RawClient::connect(server.addr);
    let payload = bytes(16 << 20, 16);
    let count = payload.len() / 65536;
    let frames: Vec<Frame> = payload
        .chunks(65536)
        .enumerate()
        .map(|(j, part)| {
            Frame::new(
                j + 1 == count,
                if j == 0 { op::BINARY } else { op::CONT },
                part,
            )
        })
        .collect();
    c.send_all(&frames);
    c.expect_binary(&payload);
    c.close_normally();
}

/// Over the limit: 1009 decided from the header alone. A single frame one byte over the limit gets
/// Close 1009 when only its header has been sent; so does a 2^62-byte frame; and a fragmented message
/// whose second fragment's header pushes the total over the limit gets it before that fragment's
/// payload is sent. A message exactly at the limit passes.
#[test]
fn case_9_over_the_limit_is_1009_from_the_header() {
    const LIMIT: usize = 1 << 20;
    let server = Server::start(&["--max-message-size", "1048576"]);

    let mut c = RawClient::connect(server.addr);
    c.echo(Frame::binary(bytes(LIMIT, 1)));
    c.close_normally();

    for declared in [LIMIT as u64 + 1, 1 << 62] {
        let mut c = RawClient::connect(server.addr);
        let mut header = [0u8; ringws_protocol::frame::MAX_HEADER_LEN];
        let n = ringws_protocol::frame::encode_header(
            &mut header,
            true,
            0,
            ringws_protocol::OpCode::Binary,
            Some([1, 2, 3, 4]),
            declared,
        );
        c.write(&header[..n]);
        c.expect_close(Some(1009));
    }

    let mut c = RawClient::connect(server.addr);
    c.send(&Frame::new(false, op::TEXT, text(LIMIT / 2 + 1, 1)));
    let second = c.masked(&Frame::new(true, op::CONT, text(LIMIT / 2, 2)));
    let header = ringws_protocol::frame::header_len((LIMIT / 2) as u64, true);
    c.write(&second[..header]);
    c.expect_close(Some(1009));
}

// ---- other framing rules -------------------------------------------------------------------------

/// An unmasked client frame is a protocol error (§5.1), for data and control frames alike.
#[test]
fn unmasked_client_frame_is_1002() {
    let server = Server::start(&[]);
    for frame in [
        Frame::text("unmasked"),
        Frame::ping("unmasked"),
        Frame::binary(Vec::new()),
    ] {
        let mut c = RawClient::connect(server.addr);
        c.write(&frame.encode(None));
        c.expect_close(Some(1002));
    }
}

/// Random bytes after the handshake never crash the server or disturb other connections: while 40
/// connections send 4 KiB of noise each (pure noise, and valid frames with flipped bits), another
/// client keeps echoing; whatever the noisy connections get back ends, if anything, with a Close of
/// 1002, 1007 or 1009; the process is alive at the end.
#[test]
fn random_bytes_do_not_disturb_other_clients() {
    let mut server = Server::start(&["--max-message-size", "1048576"]);
    let addr = server.addr;
    let echoer = common::BackgroundEchoer::start(addr);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40 {
        let mut c = RawClient::connect(addr);
        let noise: Vec<u8> = if round % 2 == 0 {
            (0..4096).map(|_| next() as u8).collect()
        } else {
            let frames: Vec<Frame> = (0..40).map(|i| Frame::text(text(90, i))).collect();
            let mut wire = c.masked_all(&frames);
            for _ in 0..8 {
                let at = next() as usize % wire.len();
                wire[at] ^= 1 << (next() % 8);
            }
            wire
        };
        let _ = c.try_write(&noise);
        // Half-close: a server that waits for the rest of a declared frame sees EOF and closes.
        c.shutdown_write();
        c.set_timeout(Duration::from_secs(2));
        // Read what comes back until the server closes or goes quiet; every frame must be valid.
        let mut last = None;
        for _ in 0..1000 {
            match c.read_frame() {
                Ok(frame) => last = Some(frame),
                Err(common::ReadError::Protocol(e)) => {
                    panic!("round {round}: invalid frame from server: {e}")
                }
                Err(_) => break,
            }
        }
        if let Some(frame) = last.filter(|f| f.opcode == op::CLOSE) {
            let code = frame.close_code();
            assert!(
                matches!(code, Some(1002 | 1007 | 1009)),
                "round {round}: unexpected close code {code:?}"
            );
        }
    }
    echoer.finish();
    assert!(
        server.is_running(),
        "the server died; output:\n{}",
        server.log()
    );
}

/// Connections that vanish at every stage (mid-handshake, mid-header, mid-payload, mid-message, with a
/// reset while the server is sending) never disturb a client that keeps echoing meanwhile, and the
/// server still accepts new connections afterwards.
#[test]
fn abrupt_disconnects_do_not_disturb_other_clients() {
    let mut server = Server::start(&["--workers", "2"]);
    let addr = server.addr;
    let echoer = common::BackgroundEchoer::start(addr);
    for round in 0..50 {
        match round % 5 {
            0 => {
                let mut c = RawClient::tcp(addr);
                let req = common::upgrade_request(addr);
                c.write(&req.as_bytes()[..req.len() / 2]);
            }
            1 => {
                let mut c = RawClient::connect(addr);
                let wire = c.masked(&Frame::binary(bytes(1000, 1)));
                c.write(&wire[..3]);
            }
            2 => {
                let mut c = RawClient::connect(addr);
                let wire = c.masked(&Frame::binary(bytes(100_000, 2)));
                c.write(&wire[..50_000]);
            }
            3 => {
                let mut c = RawClient::connect(addr);
                c.send(&Frame::new(false, op::TEXT, "first fragment"));
            }
            _ => {
                // Unread echo data in our receive queue makes the close a reset (RST), likely while
                // the server is still sending the rest of the 1 MiB echo: close once it started.
                let mut c = RawClient::connect(addr);
                c.send(&Frame::binary(bytes(1 << 20, 4)));
                assert!(
                    c.wait_readable(common::READ_TIMEOUT),
                    "the 1 MiB echo never started"
                );
            }
        }
    }
    echoer.finish();
    for i in 0..20 {
        let mut c = RawClient::connect(addr);
        c.echo(Frame::text(format!("new connection {i}")));
        c.close_normally();
    }
    assert!(
        server.is_running(),
        "the server died; output:\n{}",
        server.log()
    );
}
