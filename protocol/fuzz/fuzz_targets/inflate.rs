//! permessage-deflate inflation: arbitrary payloads, as a sequence of messages cut into arbitrary
//! chunks, must never panic, never grow the message buffer past the limit (+1 byte), give the same
//! outputs and fail at the same message whatever the cut points (not always with the same error),
//! and whatever `Compressor` produces must inflate back exactly.
//!
//! Input (see `src/lib.rs`): settings = window bits (`9 + s % 7`), bit 3 no context takeover, bit 4
//! the ratio guard on (ratio `1 + s >> 5`), high nibble the compression level of the round trip;
//! then the cut sizes and the messages, each a big-endian `u16` length and the compressed payload
//! (without the `00 00 ff ff` tail, as on the wire).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::Error;
use ringws_protocol::deflate::{Compressor, Decompressor};
use ringws_protocol_fuzz::{Input, messages, pieces};

/// The inflated-size limit: above the ratio guard's 64 KiB floor, so the guard is reachable too.
const LIMIT: usize = 1 << 17;

/// Inflates each message, each cut into chunks of the given sizes; per message, the output or the error.
fn run(settings: u8, data: &[u8], cuts: &[u8]) -> Vec<Result<Vec<u8>, Error>> {
    let window = 9 + settings % 7;
    let no_takeover = settings & 0x08 != 0;
    let ratio = (settings & 0x10 != 0).then_some(1 + (settings >> 5) as u32);
    let mut d = Decompressor::new(window, no_takeover, ratio);
    let mut results = Vec::new();
    for msg in messages(data) {
        let mut out = Vec::new();
        let mut result = Ok(());
        for piece in pieces(msg.len(), cuts) {
            result = d.inflate(&msg[piece], &mut out, LIMIT);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| d.finish(&mut out, LIMIT));
        assert!(out.capacity() <= LIMIT + 1, "capacity {}", out.capacity());
        match result {
            Ok(()) => {
                assert!(out.len() <= LIMIT);
                results.push(Ok(out));
            }
            Err(e) => {
                // The connection is failed: nothing after the first error is read.
                results.push(Err(e));
                return results;
            }
        }
    }
    results
}

fuzz_target!(|raw: &[u8]| {
    let Input {
        settings,
        cuts,
        data,
    } = Input::parse(raw);
    // Which error a broken message shows first may depend on the cuts (a bomb that is also invalid
    // DEFLATE trips the ratio guard before zlib reaches the bad bytes with one cut, after it with
    // another); whether and at which message inflation fails, and every output, may not.
    let outputs = |r: &[Result<Vec<u8>, Error>]| -> Vec<Option<Vec<u8>>> {
        r.iter().map(|m| m.as_ref().ok().cloned()).collect()
    };
    let whole = run(settings, data, &[]);
    let split = run(settings, data, cuts);
    assert_eq!(
        outputs(&whole),
        outputs(&split),
        "inflation must not depend on how the payload was cut"
    );

    // The other direction: our compressor's output for the same bytes inflates back exactly.
    let window = 9 + settings % 7;
    let no_takeover = settings & 0x08 != 0;
    let mut c = Compressor::new(window, (settings >> 4) as u32 % 10, no_takeover);
    let mut d = Decompressor::new(window, no_takeover, None);
    for msg in messages(data) {
        let mut wire = Vec::new();
        c.compress(msg, &mut wire);
        let mut out = Vec::new();
        d.inflate(&wire, &mut out, LIMIT)
            .expect("our own output inflates");
        d.finish(&mut out, LIMIT).expect("our own output inflates");
        assert_eq!(out, msg);
    }
});
