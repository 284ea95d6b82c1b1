//! permessage-deflate inflation: arbitrary payloads, as a sequence of messages cut into arbitrary
//! chunks, must never panic, never grow the message buffer past the limit (+1 byte), give the same
//! result whatever the cut points, and whatever `Compressor` produces must inflate back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::deflate::{Compressor, Decompressor};
use ringws_protocol::Error;

const LIMIT: usize = 1 << 16;

/// Inflates each message, cut into chunks of the given sizes; per message, the output or the error.
fn run(settings: u8, messages: &[Vec<u8>], cuts: &[u8]) -> Vec<Result<Vec<u8>, Error>> {
    let window = 9 + settings % 7;
    let no_takeover = settings & 0x08 != 0;
    let ratio = (settings & 0x10 != 0).then_some(1 + (settings >> 5) as u32);
    let mut d = Decompressor::new(window, no_takeover, ratio);
    let mut cuts = cuts.iter().map(|&c| c as usize + 1).cycle();
    let mut results = Vec::new();
    for msg in messages {
        let mut out = Vec::new();
        let mut rest = &msg[..];
        let mut result = Ok(());
        while !rest.is_empty() && result.is_ok() {
            let (chunk, tail) = rest.split_at(cuts.next().unwrap_or(rest.len()).min(rest.len()));
            result = d.inflate(chunk, &mut out, LIMIT);
            rest = tail;
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

fuzz_target!(|input: (u8, Vec<Vec<u8>>, Vec<u8>)| {
    let (settings, messages, cuts) = input;
    let whole = run(settings, &messages, &[]);
    let split = run(settings, &messages, &cuts);
    assert_eq!(whole, split, "inflation must not depend on how the payload was cut");

    // The other direction: our compressor's output for the same bytes inflates back exactly.
    let window = 9 + settings % 7;
    let no_takeover = settings & 0x08 != 0;
    let mut c = Compressor::new(window, (settings >> 4) as u32 % 10, no_takeover);
    let mut d = Decompressor::new(window, no_takeover, None);
    for msg in messages.iter().filter(|m| m.len() <= LIMIT) {
        let mut wire = Vec::new();
        c.compress(msg, &mut wire);
        let mut out = Vec::new();
        d.inflate(&wire, &mut out, LIMIT).expect("our own output inflates");
        d.finish(&mut out, LIMIT).expect("our own output inflates");
        assert_eq!(&out, msg);
    }
});
