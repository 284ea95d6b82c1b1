//! Frame decoder + assembler: arbitrary bytes, cut into arbitrary receive buffers, must never panic,
//! must never hold more assembly memory than the message limit allows, and must agree with itself
//! whatever the cut points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::{Event, Limits, Receiver, Role};

const LIMITS: Limits = Limits { max_frame_size: 1 << 16, max_message_size: 1 << 17 };

/// Feeds `data` in pieces of the given sizes and returns a digest of the events and the outcome.
fn run(role: Role, data: &[u8], cuts: &[u8]) -> Vec<(u8, usize, u64)> {
    let mut rx = Receiver::new(role, LIMITS);
    let mut buf = data.to_vec();
    let mut out = Vec::new();
    let mut from = 0;
    let mut cuts = cuts.iter().map(|&c| c as usize + 1).cycle();
    while from < buf.len() {
        let to = (from + cuts.next().unwrap_or(buf.len())).min(buf.len());
        let chunk = &mut buf[from..to];
        let mut pos = 0;
        while pos < chunk.len() {
            match rx.read(&mut chunk[pos..]) {
                Ok((used, ev)) => {
                    pos += used;
                    if let Some(ev) = ev {
                        out.push(digest(&ev));
                    } else {
                        assert_eq!(pos, chunk.len());
                    }
                }
                Err(e) => {
                    out.push((0xff, 0, e.to_string().len() as u64));
                    return out;
                }
            }
            assert!(rx.buffered() as u64 <= 2 * LIMITS.max_message_size + 256);
        }
        from = to;
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
        Event::Close(c) => (8, c.map_or(0, |c| c.reason.len()), c.map_or(0, |c| c.code.0 as u64)),
    }
}

fuzz_target!(|input: (bool, Vec<u8>, Vec<u8>)| {
    let (client, data, cuts) = input;
    let role = if client { Role::Client } else { Role::Server };
    let whole = run(role, &data, &[]);
    let split = run(role, &data, &cuts);
    assert_eq!(whole, split, "events must not depend on how the bytes were cut");
});
