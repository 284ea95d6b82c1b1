//! Handshake parsing on both sides: arbitrary bytes must never panic, any prefix of a request must
//! parse as `Partial` or fail the same way, and whatever parses must keep its borrowed fields inside
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_protocol::handshake::{
    ClientHandshake, DEFAULT_MAX_HEADER_BYTES, Parse, parse_request, write_accept_response,
    write_error_response,
};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match parse_request(data, DEFAULT_MAX_HEADER_BYTES) {
        Ok(Parse::Complete(req)) => {
            assert!(req.head_len() <= data.len());
            let _ = (
                req.method(),
                req.path(),
                req.query(),
                req.host(),
                req.origin(),
            );
            for (name, value) in req.headers() {
                let _ = (name.len(), value.len());
            }
            for offer in req.extensions() {
                for param in offer.params() {
                    let _ = param;
                }
            }
            let _ = req.subprotocols().count();
            match req.validate_upgrade() {
                Ok(key) => write_accept_response(&mut out, key, req.subprotocols().next(), None),
                Err(e) => write_error_response(&mut out, &e),
            }
            // The head is complete: every longer input parses to the same head length.
            if let Ok(Parse::Complete(again)) =
                parse_request(&data[..req.head_len()], DEFAULT_MAX_HEADER_BYTES)
            {
                assert_eq!(again.head_len(), req.head_len());
            }
        }
        Ok(Parse::Partial) => assert!(data.len() <= DEFAULT_MAX_HEADER_BYTES),
        Err(e) => write_error_response(&mut out, &e),
    }
    let client = ClientHandshake::with_key(*b"fuzzfuzzfuzzfuzz");
    let _ = client.parse_response(
        data,
        &["chat"],
        Some("permessage-deflate"),
        DEFAULT_MAX_HEADER_BYTES,
    );
});
