//! The streaming UTF-8 validator must agree with `std::str::from_utf8` for any split of any input,
//! and must fail no later than the chunk holding the first invalid byte.
//!
//! Input (see `src/lib.rs`): the settings byte is unused; the cut sizes, then the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::utf8::{Utf8Validator, validate};
use ringws_protocol_fuzz::{Input, pieces};

fuzz_target!(|raw: &[u8]| {
    let Input { cuts, data, .. } = Input::parse(raw);
    let expected = std::str::from_utf8(data);
    assert_eq!(validate(data).is_ok(), expected.is_ok());
    let mut v = Utf8Validator::default();
    let mut failed = None;
    for piece in pieces(data.len(), cuts) {
        if v.feed(&data[piece.clone()]).is_err() {
            failed = Some(piece);
            break;
        }
    }
    let streamed = failed.is_none() && v.finish().is_ok();
    assert_eq!(streamed, expected.is_ok());
    if let Err(e) = expected {
        match (failed, e.error_len()) {
            // Fail fast: not before the invalid sequence starts, and no later than the chunk holding
            // the byte that makes it invalid (at most `valid_up_to + error_len`).
            (Some(piece), Some(len)) => {
                assert!(
                    piece.end > e.valid_up_to(),
                    "failed before the bad sequence"
                );
                assert!(piece.start <= e.valid_up_to() + len, "failed late");
            }
            (None, Some(_)) => panic!("an invalid sequence was only caught at message end"),
            (Some(_), None) => panic!("a valid prefix was rejected before the message ended"),
            // Incomplete at the end: only `finish` can know.
            (None, None) => {}
        }
    }
});
