//! Frame decoder + assembler (+ permessage-deflate inflation): arbitrary bytes, cut into arbitrary
//! receive buffers, must never panic, must never hold more assembly memory than the message limit
//! allows, and must agree with itself whatever the cut points (with deflate: the same events, and an
//! error at the same message, though not always the same error).
//!
//! Input (see `src/lib.rs`): settings bit 0 = client role (server frames, unmasked), bit 1 =
//! permessage-deflate negotiated (RSV1 messages inflated), bit 2 = the peer resets its compression
//! context per message; then the cut sizes and the byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::deflate::Decompressor;
use ringws_protocol::{Event, Limits, Receiver, Role};
use ringws_protocol_fuzz::{Input, pieces};

const LIMITS: Limits = Limits {
    max_frame_size: 1 << 16,
    max_message_size: 1 << 17,
};

/// A receiver as `settings` describes it.
fn receiver(settings: u8) -> Receiver {
    let role = if settings & 1 != 0 {
        Role::Client
    } else {
        Role::Server
    };
    if settings & 2 != 0 {
        Receiver::with_deflate(role, Decompressor::new(15, settings & 4 != 0, None))
    } else {
        Receiver::new(role)
    }
}

/// Feeds `data` in pieces of the given sizes and returns a digest of the events and the outcome.
fn run(settings: u8, data: &[u8], cuts: &[u8]) -> Vec<(u8, usize, u64)> {
    let mut rx = receiver(settings);
    let mut buf = data.to_vec();
    let mut out = Vec::new();
    for piece in pieces(buf.len(), cuts) {
        let chunk = &mut buf[piece];
        let mut pos = 0;
        while pos < chunk.len() {
            match rx.read(&mut chunk[pos..], &LIMITS) {
                Ok((used, ev)) => {
                    pos += used;
                    if let Some(ev) = ev {
                        out.push(digest(&ev));
                    } else {
                        // No event: the input was used up, or a frame went into assembly (the
                        // decoder stops there so that its owner can account the memory).
                        assert!(used > 0 || pos == chunk.len());
                    }
                }
                Err(e) => {
                    // Compressed: how far inflation gets before it fails depends on the chunks zlib
                    // is given, so a text message whose DEFLATE stream turns out invalid may first
                    // show invalid UTF-8 in what inflated so far. Both fail the connection; only
                    // which error is found first may differ.
                    let which = if settings & 2 != 0 {
                        0
                    } else {
                        e.to_string().len() as u64
                    };
                    out.push((0xff, 0, which));
                    return out;
                }
            }
            // Assembly memory: the message limit, the inflate context (~44 KiB for a 32 KiB
            // window) and slack for a control frame and header bytes.
            assert!(rx.buffered() as u64 <= 2 * LIMITS.max_message_size + (64 << 10));
        }
    }
    out
}

fn digest(ev: &Event<'_>) -> (u8, usize, u64) {
    let sum = |b: &[u8]| b.iter().map(|&x| x as u64).sum::<u64>();
    match ev {
        Event::Text(s) => (1, s.len(), sum(s.as_bytes())),
        Event::Binary(b) => (2, b.len(), sum(b)),
        Event::Ping(b) => (9, b.len(), sum(b)),
        Event::Pong(b) => (10, b.len(), sum(b)),
        Event::Close(c) => (
            8,
            c.map_or(0, |c| c.reason.len()),
            c.map_or(0, |c| c.code.0 as u64),
        ),
    }
}

fuzz_target!(|raw: &[u8]| {
    let input = Input::parse(raw);
    let whole = run(input.settings, input.data, &[]);
    let split = run(input.settings, input.data, input.cuts);
    assert_eq!(
        whole, split,
        "events must not depend on how the bytes were cut"
    );
});
