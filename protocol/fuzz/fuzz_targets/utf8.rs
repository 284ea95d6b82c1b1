//! The streaming UTF-8 validator must agree with `std::str::from_utf8` for any split of any input,
//! and must fail no later than the chunk holding the first invalid byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::utf8::{Utf8Validator, validate};

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let expected = std::str::from_utf8(&data);
    assert_eq!(validate(&data).is_ok(), expected.is_ok());
    let mut v = Utf8Validator::default();
    let mut from = 0;
    let mut cuts = cuts.iter().map(|&c| c as usize + 1).cycle();
    let mut failed_at = None;
    while from < data.len() {
        let to = (from + cuts.next().unwrap_or(data.len())).min(data.len());
        if v.feed(&data[from..to]).is_err() {
            failed_at = Some(to);
            break;
        }
        from = to;
    }
    let streamed = failed_at.is_none() && v.finish().is_ok();
    assert_eq!(streamed, expected.is_ok());
    if let Err(e) = expected {
        match (failed_at, e.error_len()) {
            // Fail fast: not before the invalid sequence starts, and no later than the chunk holding
            // the byte that makes it invalid (at most `valid_up_to + error_len`).
            (Some(to), Some(len)) => {
                assert!(to > e.valid_up_to(), "failed before the bad sequence");
                assert!(from <= e.valid_up_to() + len, "failed late");
            }
            (None, Some(_)) => panic!("an invalid sequence was only caught at message end"),
            (Some(_), None) => panic!("a valid prefix was rejected before the message ended"),
            // Incomplete at the end: only `finish` can know.
            (None, None) => {}
        }
    }
});
