//! Streaming UTF-8 validation that fails at the first byte that cannot be valid.
//!
//! RFC 6455 §8.1: a Text message must be valid UTF-8, and an endpoint that sees invalid data must fail
//! the connection (close code 1007). A message arrives chunk by chunk — receive buffers, fragments —
//! and a code point may straddle two chunks, so [`Utf8Validator`] carries an incomplete code point (at
//! most 3 bytes) from one chunk to the next. It fails *fast*: on the very chunk holding the first byte
//! that can no longer start or continue valid UTF-8 (`F4 90` fails at `90`, not at the end of the
//! message), as Autobahn's case 6.4 expects. The bulk of each chunk is checked by `simdutf8`.

use crate::error::Error;

/// A streaming UTF-8 validator: feed the chunks of one message in order, then call
/// [`finish`](Self::finish). Four bytes, so it costs nothing to keep one in every connection.
///
/// ```
/// use ringws_protocol::utf8::Utf8Validator;
/// use ringws_protocol::Error;
/// let mut v = Utf8Validator::default();
/// // "€" (E2 82 AC) split across two chunks is fine...
/// v.feed(b"price: \xe2\x82").unwrap();
/// v.feed(b"\xac").unwrap();
/// v.finish().unwrap();
/// // ...but F4 90 would encode a code point above U+10FFFF: it fails as soon as 0x90 arrives.
/// v.feed(b"\xf4").unwrap();
/// assert_eq!(v.feed(b"\x90"), Err(Error::InvalidUtf8));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    /// The first bytes of a code point cut off by the end of the previous chunk: a valid prefix.
    partial: [u8; 3],
    /// How many bytes of `partial` are in use (0 to 3).
    partial_len: u8,
}

impl Utf8Validator {
    /// Validates the next chunk of the message.
    ///
    /// Fails with [`Error::InvalidUtf8`] as soon as the bytes seen so far cannot be the start of valid
    /// UTF-8, even if the message continues. After an error the state is unspecified: the connection
    /// is failing anyway; call [`reset`](Self::reset) before reusing the validator.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Error> {
        if self.partial_len != 0 {
            chunk = self.complete_partial(chunk)?;
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            // `None`: the chunk ends inside a code point whose bytes so far are a valid prefix
            // (1 to 3 bytes after `valid_up_to`): carry it to the next chunk.
            Err(e) if e.error_len().is_none() => {
                let tail = &chunk[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }

    /// Declares the end of the message: fails with [`Error::InvalidUtf8`] if it ended inside a code
    /// point. Resets the validator for the next message either way.
    pub fn finish(&mut self) -> Result<(), Error> {
        let incomplete = self.partial_len != 0;
        self.reset();
        if incomplete {
            Err(Error::InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// Forgets any carried bytes, ready for a new message.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Completes the carried code point from the head of `chunk` and returns the rest of `chunk`.
    /// If `chunk` is too short to complete it, the longer prefix is carried instead.
    fn complete_partial<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], Error> {
        let have = usize::from(self.partial_len);
        // The carried bytes are a valid prefix, so the first one is a lead byte C2..=F4.
        let need = match self.partial[0] {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        } - have;
        let take = need.min(chunk.len());
        let mut seq = [0u8; 4];
        seq[..have].copy_from_slice(&self.partial[..have]);
        seq[have..have + take].copy_from_slice(&chunk[..take]);
        match std::str::from_utf8(&seq[..have + take]) {
            Ok(_) => {
                self.partial_len = 0;
                Ok(&chunk[take..])
            }
            // Still a valid prefix, and the chunk is used up (else `take == need` would have
            // completed the sequence or made it invalid).
            Err(e) if e.error_len().is_none() => {
                self.partial[..have + take].copy_from_slice(&seq[..have + take]);
                self.partial_len = (have + take) as u8;
                Ok(&chunk[take..])
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }
}

/// Validates a whole message at once (the fast path when a Text message sits in one buffer).
///
/// ```
/// use ringws_protocol::utf8::validate;
/// assert_eq!(validate("κόσμε".as_bytes()), Ok("κόσμε"));
/// assert!(validate(b"\xed\xa0\x80").is_err()); // a UTF-16 surrogate
/// ```
pub fn validate(bytes: &[u8]) -> Result<&str, Error> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| Error::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` in order, then finishes. Returns the index of the chunk that failed
    /// (`chunks.len()` for `finish`), or `None` if the message is valid.
    fn stream<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
        let mut v = Utf8Validator::default();
        let mut n = 0;
        for (i, c) in chunks.into_iter().enumerate() {
            if v.feed(c).is_err() {
                return Some(i);
            }
            n = i + 1;
        }
        v.finish().is_err().then_some(n)
    }

    /// The index of the first byte after which `bytes[..=k]` is no longer a prefix of valid UTF-8
    /// (where a fail-fast validator must fail), from std alone; `Some(len)` for a truncated end.
    fn first_bad_byte(bytes: &[u8]) -> Option<usize> {
        for k in 0..bytes.len() {
            if let Err(e) = std::str::from_utf8(&bytes[..=k])
                && e.error_len().is_some()
            {
                return Some(k);
            }
        }
        std::str::from_utf8(bytes).is_err().then_some(bytes.len())
    }

    /// Checks `bytes` against std whole, byte by byte, and at every two-way split, including where
    /// the failure is reported.
    fn check(bytes: &[u8]) {
        let valid = std::str::from_utf8(bytes).is_ok();
        assert_eq!(validate(bytes).is_ok(), valid, "validate {bytes:02x?}");
        let bad = first_bad_byte(bytes);
        assert_eq!(bad.is_none(), valid);
        // Whole: fails on the one chunk, or at finish if only the end is truncated.
        let whole = stream([bytes]);
        assert_eq!(
            whole,
            bad.map(|k| usize::from(k == bytes.len())),
            "whole {bytes:02x?}"
        );
        // Byte by byte: fails exactly on the first bad byte.
        assert_eq!(stream(bytes.chunks(1)), bad, "bytewise {bytes:02x?}");
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let want = bad.map(|k| {
                if k < cut {
                    0
                } else if k < bytes.len() {
                    1
                } else {
                    2
                }
            });
            assert_eq!(stream([a, b]), want, "split at {cut}: {bytes:02x?}");
        }
    }

    fn valid(bytes: &[u8]) {
        assert!(
            std::str::from_utf8(bytes).is_ok(),
            "vector is not valid: {bytes:02x?}"
        );
        check(bytes);
    }

    fn invalid(bytes: &[u8]) {
        assert!(
            std::str::from_utf8(bytes).is_err(),
            "vector is valid: {bytes:02x?}"
        );
        check(bytes);
    }

    /// Autobahn TestSuite case 6.* vectors (Markus Kuhn's UTF-8 decoder stress test).
    #[test]
    fn autobahn_6_valid() {
        let kosme = "κόσμε".as_bytes();
        valid(b""); // 6.1
        valid("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()); // 6.2
        valid(kosme); // 6.5
        // 6.7 first possible sequence of each length, 6.9 last possible.
        for v in [
            &b"\x00"[..],
            b"\xc2\x80",
            b"\xe0\xa0\x80",
            b"\xf0\x90\x80\x80",
        ] {
            valid(v);
        }
        for v in [
            &b"\x7f"[..],
            b"\xdf\xbf",
            b"\xef\xbf\xbf",
            b"\xf4\x8f\xbf\xbf",
        ] {
            valid(v);
        }
        // 6.11 other boundaries: U+D7FF, U+E000, U+FFFD, U+10FFFF.
        for v in [
            &b"\xed\x9f\xbf"[..],
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xf4\x8f\xbf\xbf",
        ] {
            valid(v);
        }
        // Boundary code points through std's encoder.
        for c in [
            '\u{7f}',
            '\u{80}',
            '\u{7ff}',
            '\u{800}',
            '\u{ffff}',
            '\u{10000}',
            '\u{10ffff}',
        ] {
            let mut b = [0; 4];
            valid(c.encode_utf8(&mut b).as_bytes());
        }
        // 6.22 noncharacters are valid UTF-8.
        for v in [
            &b"\xef\xbf\xbe"[..],
            b"\xef\xbf\xbf",
            b"\xf0\x9f\xbf\xbe",
            b"\xf4\x8f\xbf\xbe",
        ] {
            valid(v);
        }
        valid(b"\xef\xbf\xbd"); // 6.23 U+FFFD
    }

    #[test]
    fn autobahn_6_invalid() {
        let kosme = "κόσμε".as_bytes();
        // 6.3 κόσμε then a surrogate then "edited".
        invalid(
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
        );
        // 6.4 fail fast: above U+10FFFF and a bad continuation after valid text.
        invalid(&[kosme, b"\xf4\x90\x80\x80", b"edited"].concat());
        invalid(&[kosme, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\x80"].concat());
        // 6.8 5- and 6-byte forms, 6.10 their last possible values and F7 BF BF BF.
        for v in [
            &b"\xf8\x88\x80\x80\x80"[..],
            b"\xfc\x84\x80\x80\x80\x80",
            b"\xf7\xbf\xbf\xbf",
            b"\xfb\xbf\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf\xbf",
        ] {
            invalid(v);
        }
        invalid(b"\xf4\x90\x80\x80"); // 6.11.5 U+110000
        // 6.12 unexpected continuation bytes.
        for v in [
            &b"\x80"[..],
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
        ] {
            invalid(v);
        }
        invalid(&(0x80..=0xbf).collect::<Vec<u8>>());
        // 6.13 lonely start bytes, each followed by a space.
        for lead in 0xc0..=0xfd_u8 {
            invalid(&[lead, b' ']);
        }
        // 6.14 sequences with the last continuation byte missing; 6.15 all of them concatenated.
        let truncated: [&[u8]; 10] = [
            b"\xc0",
            b"\xe0\x80",
            b"\xf0\x80\x80",
            b"\xf8\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80",
            b"\xdf",
            b"\xef\xbf",
            b"\xf7\xbf\xbf",
            b"\xfb\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf",
        ];
        for v in truncated {
            invalid(v);
        }
        invalid(&truncated.concat());
        // Truncated but otherwise valid prefixes fail only at the end of the message.
        for v in [
            &b"\xc2"[..],
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"ab\xf4\x8f\xbf",
        ] {
            invalid(v);
            assert_eq!(first_bad_byte(v), Some(v.len()));
        }
        // 6.16 impossible bytes.
        for v in [&b"\xfe"[..], b"\xff", b"\xfe\xfe\xff\xff"] {
            invalid(v);
        }
        // 6.17 overlong "/", 6.18 maximal overlongs, 6.19 overlong NUL.
        for v in [
            &b"\xc0\xaf"[..],
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        ] {
            invalid(v);
        }
        // 6.20 single UTF-16 surrogates, 6.21 paired surrogates.
        for v in [
            &b"\xed\xa0\x80"[..],
            b"\xed\xad\xbf",
            b"\xed\xae\x80",
            b"\xed\xaf\xbf",
            b"\xed\xb0\x80",
            b"\xed\xbe\x80",
            b"\xed\xbf\xbf",
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\xed\xa0\x80\xed\xbf\xbf",
            b"\xed\xad\xbf\xed\xb0\x80",
            b"\xed\xad\xbf\xed\xbf\xbf",
            b"\xed\xae\x80\xed\xb0\x80",
            b"\xed\xae\x80\xed\xbf\xbf",
            b"\xed\xaf\xbf\xed\xb0\x80",
            b"\xed\xaf\xbf\xed\xbf\xbf",
        ] {
            invalid(v);
        }
    }

    /// The error comes on the very chunk that carries the bad byte, not at the end of the message.
    #[test]
    fn fails_on_the_chunk_with_the_bad_byte() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"ok \xf4", b"\x90 and more text that never gets looked at"),
            (b"\xed", b"\xa0\x80"),
            (b"\xe0", b"\x80\x80"),
            (b"\xf0", b"\x8f\xbf\xbf"),
            (b"\xe2\x82", b"A"),
            (b"\xf0\x9f\x98", b"\xff"),
            (b"fine", b"\xc1\xbf"),
        ];
        for (first, second) in cases {
            let mut v = Utf8Validator::default();
            assert_eq!(v.feed(first), Ok(()), "{first:02x?}");
            assert_eq!(
                v.feed(second),
                Err(Error::InvalidUtf8),
                "{first:02x?} {second:02x?}"
            );
        }
        for bad in [&b"\xc0"[..], b"\xc1", b"\xf5", b"\xff", b"\x80", b"abc\xf8"] {
            let mut v = Utf8Validator::default();
            assert_eq!(v.feed(bad), Err(Error::InvalidUtf8), "{bad:02x?}");
        }
    }

    #[test]
    fn carried_prefix_grows_over_one_byte_chunks() {
        let mut v = Utf8Validator::default();
        for b in "😀".as_bytes() {
            v.feed(&[*b]).unwrap();
        }
        assert_eq!(v.partial_len, 0);
        v.feed(b"\xf0").unwrap();
        v.feed(b"").unwrap();
        v.feed(b"\x9f").unwrap();
        v.feed(b"\x98").unwrap();
        assert_eq!((v.partial_len, &v.partial), (3, &[0xf0, 0x9f, 0x98]));
        assert_eq!(v.feed(b"\x80x"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn finish_resets_even_on_error() {
        let mut v = Utf8Validator::default();
        v.feed(b"\xe2\x82").unwrap();
        assert_eq!(v.finish(), Err(Error::InvalidUtf8));
        assert_eq!(
            v.feed(b"\xac"),
            Err(Error::InvalidUtf8),
            "no carried prefix after finish"
        );
        v.reset();
        v.feed(b"\xe2").unwrap();
        v.reset();
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn stays_small() {
        assert!(size_of::<Utf8Validator>() <= 8);
    }

    /// Mostly valid text with the occasional arbitrary or truncated sequence, so that errors land
    /// anywhere (purely random bytes would almost always fail within the first few).
    fn text_with_noise() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            8 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            4 => "[a-z ]{1,20}".prop_map(String::into_bytes),
            1 => any::<u8>().prop_map(|b| vec![b]),
            1 => (any::<char>(), 0usize..3).prop_map(|(c, cut)| {
                let b = c.to_string().into_bytes();
                b[..cut.min(b.len() - 1)].to_vec()
            }),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|p| p.concat())
    }

    /// Split points as sorted indexes into a buffer of `len` bytes.
    fn chunked(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for a in at.into_iter().chain([bytes.len()]) {
            out.push(bytes[start..a].to_vec());
            start = a;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes split anywhere: the streaming verdict equals std's, and the failure comes
        /// on the chunk holding the first bad byte.
        #[test]
        fn streaming_matches_std(
            bytes in prop_oneof![text_with_noise(), prop::collection::vec(any::<u8>(), 0..64)],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let chunks = chunked(&bytes, &cuts);
            let got = stream(chunks.iter().map(Vec::as_slice));
            let want = first_bad_byte(&bytes).map(|k| {
                // The chunk whose byte range holds byte k; a truncated end fails at finish.
                let mut end = 0;
                chunks.iter().position(|c| { end += c.len(); k < end }).unwrap_or(chunks.len())
            });
            prop_assert_eq!(got.is_none(), std::str::from_utf8(&bytes).is_ok());
            prop_assert_eq!(got, want);
            prop_assert_eq!(validate(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
        }

        /// Valid text split anywhere, including inside code points, is always accepted.
        #[test]
        fn valid_text_split_anywhere_is_ok(
            text in any::<String>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let chunks = chunked(text.as_bytes(), &cuts);
            prop_assert_eq!(stream(chunks.iter().map(Vec::as_slice)), None);
            prop_assert_eq!(validate(text.as_bytes()), Ok(text.as_str()));
        }
    }
}
