//! permessage-deflate through the [`Receiver`]: compressed messages of every size, fragmented and
//! split across receive buffers, with and without context takeover; RSV1 rules; the bomb; and
//! interop with zlib (Python's, live when a Python is at hand, plus vectors it produced) and with
//! Python `websockets`' sans-IO client and server (when the interop venv exists).

use super::*;
use crate::frame::{MAX_HEADER_LEN, OpCode, RSV1, encode_header};
use crate::receiver::tests::{Owned, feed, feed_with, frame};
use crate::{Error, Event, Limits, Receiver};
use proptest::prelude::*;

/// The frames of one compressed message cut into `pieces` frames (RSV1 on the first only), with a
/// ping between the first two when `ping`.
fn compressed_message(
    c: &mut Compressor,
    op: OpCode,
    msg: &[u8],
    pieces: usize,
    ping: bool,
) -> Vec<u8> {
    let mut payload = Vec::new();
    c.compress(msg, &mut payload);
    let size = payload.len().div_ceil(pieces.max(1)).max(1);
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (rsv, op) = if i == 0 {
            (RSV1, op)
        } else {
            (0, OpCode::Continuation)
        };
        out.extend(frame(
            i + 1 == chunks.len(),
            rsv,
            op,
            chunk,
            [1, 2, 3, i as u8],
        ));
        if ping && i == 0 && chunks.len() > 1 {
            out.extend(frame(true, 0, OpCode::Ping, b"between", [9, 9, 9, 9]));
        }
    }
    out
}

fn server(no_takeover: bool) -> Receiver {
    Receiver::with_deflate(Role::Server, Decompressor::new(15, no_takeover, Some(256)))
}

fn sample(len: usize, seed: u64) -> Vec<u8> {
    super::codec::tests::sample(len, seed)
}

#[test]
fn messages_from_0_bytes_to_16_mib_fragmented_and_split() {
    let sizes = [0usize, 1, 125, 126, 4096, 65_535, 65_536, 1 << 20, 16 << 20];
    for no_takeover in [false, true] {
        let mut c = Compressor::new(15, 1, no_takeover);
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let msg = sample(len, i as u64);
            let pieces = [1, 3, 7][i % 3];
            let (op, ev) = if i % 2 == 0 {
                let text = String::from_utf8(msg.clone()).unwrap();
                (OpCode::Text, Owned::Text(text))
            } else {
                (OpCode::Binary, Owned::Binary(msg.clone()))
            };
            stream.extend(compressed_message(&mut c, op, &msg, pieces, i == 4));
            if i == 4 {
                expected.push(Owned::Ping(b"between".to_vec()));
            }
            expected.push(ev);
        }
        // Cut into 32 KiB receive buffers, like the engine's, plus a few odd cuts.
        let mut cuts: Vec<usize> = (1..stream.len() / 32768).map(|i| i * 32768).collect();
        cuts.extend([1, 2, 3, 7, 11, 100, 1000]);
        let mut rx = server(no_takeover);
        let (events, err) = feed(&mut rx, &stream, &cuts);
        assert_eq!(err, None, "no_takeover {no_takeover}");
        assert_eq!(events.len(), expected.len());
        assert!(events == expected, "no_takeover {no_takeover}");
        // The next read frees the last message's buffer.
        assert_eq!(rx.read(&mut [], &Limits::default()), Ok((0, None)));
        assert_eq!(
            rx.buffered(),
            if no_takeover {
                0
            } else {
                INFLATE_CONTEXT_BYTES
            },
            "between messages only a taken-over context remains"
        );
    }
}

#[test]
fn one_byte_over_the_limit_is_1009_while_inflating() {
    let limits = Limits {
        max_frame_size: 1 << 20,
        max_message_size: 100_000,
    };
    let msg = sample(100_001, 1);
    let mut c = Compressor::new(15, 1, true);
    let stream = compressed_message(&mut c, OpCode::Binary, &msg, 1, false);
    assert!(
        stream.len() < 30_000,
        "it compresses well: {}",
        stream.len()
    );
    let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(15, true, None));
    assert_eq!(
        feed_with(&mut rx, &limits, &stream, &[]).1,
        Some(Error::MessageTooLarge)
    );
    let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(15, true, None));
    let exact = compressed_message(&mut c, OpCode::Binary, &msg[..100_000], 2, false);
    assert_eq!(
        feed_with(&mut rx, &limits, &exact, &[]),
        (vec![Owned::Binary(msg[..100_000].to_vec())], None)
    );
}

#[test]
fn bomb_closes_with_1009_and_bounded_memory() {
    let payload = super::codec::tests::bomb(1024); // ~1 MiB inflating to 1 GiB
    let stream = frame(true, RSV1, OpCode::Binary, &payload, [7, 7, 7, 7]);
    let limits = Limits {
        max_frame_size: 2 << 20,
        max_message_size: 16 << 20,
    };
    let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(15, false, None));
    let mut peak = 0;
    let mut result = Ok(());
    // Receive buffers are unmasked in place: feed a copy.
    'chunks: for chunk in stream.clone().chunks_mut(32768) {
        let mut pos = 0;
        while pos < chunk.len() {
            match rx.read(&mut chunk[pos..], &limits) {
                Ok((used, ev)) => {
                    assert_eq!(ev, None);
                    pos += used;
                }
                Err(e) => {
                    result = Err(e);
                    break 'chunks;
                }
            }
            peak = peak.max(rx.buffered());
        }
    }
    assert_eq!(result, Err(Error::MessageTooLarge));
    assert_eq!(
        Error::MessageTooLarge.reply(),
        crate::Reply::Close(crate::CloseCode::MESSAGE_TOO_BIG)
    );
    assert!(
        peak <= (16 << 20) + 1 + INFLATE_CONTEXT_BYTES,
        "assembly memory {peak} stays within the message limit"
    );
    // With the ratio guard, it stops long before the limit.
    let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(15, false, Some(256)));
    let (_, err) = feed_with(&mut rx, &limits, &stream, &[]);
    assert_eq!(err, Some(Error::InflateRatioExceeded));
}

#[test]
fn rsv1_only_on_the_first_frame_of_a_negotiated_data_message() {
    let key = [1, 2, 3, 4];
    let mut c = Compressor::new(15, 6, true);
    let mut hello = Vec::new();
    c.compress(b"Hello", &mut hello);
    // On a continuation frame.
    let mut stream = frame(false, RSV1, OpCode::Text, &hello[..2], key);
    stream.extend(frame(true, RSV1, OpCode::Continuation, &hello[2..], key));
    assert_eq!(
        feed(&mut server(true), &stream, &[]).1,
        Some(Error::ReservedBits)
    );
    // On control frames.
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let stream = frame(true, RSV1, op, b"", key);
        assert_eq!(
            feed(&mut server(true), &stream, &[]).1,
            Some(Error::ReservedBits)
        );
    }
    // Without the extension.
    let stream = frame(true, RSV1, OpCode::Text, &hello, key);
    let mut plain = Receiver::new(Role::Server);
    assert_eq!(feed(&mut plain, &stream, &[]).1, Some(Error::ReservedBits));
    // RSV2 and RSV3 stay reserved.
    let stream = frame(true, RSV1 | 0b010, OpCode::Text, &hello, key);
    assert_eq!(
        feed(&mut server(true), &stream, &[]).1,
        Some(Error::ReservedBits)
    );
    // And the right way round it works, mixed with uncompressed messages.
    let mut stream = frame(false, RSV1, OpCode::Text, &hello[..2], key);
    stream.extend(frame(true, 0, OpCode::Continuation, &hello[2..], key));
    stream.extend(frame(true, 0, OpCode::Text, b"plain", key));
    assert_eq!(
        feed(&mut server(true), &stream, &[]),
        (
            vec![Owned::Text("Hello".into()), Owned::Text("plain".into())],
            None
        )
    );
}

#[test]
fn uncompressed_messages_are_still_delivered_in_place() {
    let mut rx = server(false);
    let mut f = frame(true, 0, OpCode::Binary, b"zero copy", [5, 6, 7, 8]);
    let range = f.as_ptr_range();
    let (_, ev) = rx.read(&mut f, &Limits::default()).unwrap();
    let Some(Event::Binary(b)) = ev else {
        panic!("binary")
    };
    assert!(range.contains(&b.as_ptr()));
    assert_eq!(rx.buffered(), 0);
}

#[test]
fn inflated_text_is_utf8_checked_and_corrupt_data_is_1007() {
    let mut c = Compressor::new(15, 6, true);
    let mut bad = Vec::new();
    c.compress(b"ok \xff not utf-8", &mut bad);
    let stream = frame(true, RSV1, OpCode::Text, &bad, [1, 1, 1, 1]);
    assert_eq!(
        feed(&mut server(true), &stream, &[]).1,
        Some(Error::InvalidUtf8)
    );
    // The same bytes as binary are fine.
    let stream = frame(true, RSV1, OpCode::Binary, &bad, [1, 1, 1, 1]);
    assert_eq!(
        feed(&mut server(true), &stream, &[]),
        (vec![Owned::Binary(b"ok \xff not utf-8".to_vec())], None)
    );
    // A text message cut inside a code point, across frames, still validates.
    let msg = "é€😀".repeat(50);
    let stream = compressed_message(&mut c, OpCode::Text, msg.as_bytes(), 5, false);
    assert_eq!(
        feed(&mut server(true), &stream, &[]),
        (vec![Owned::Text(msg)], None)
    );
    let stream = frame(
        true,
        RSV1,
        OpCode::Binary,
        &[0xff, 0xff, 0xff],
        [1, 1, 1, 1],
    );
    assert_eq!(
        feed(&mut server(true), &stream, &[]).1,
        Some(Error::InvalidCompressedData)
    );
}

/// Messages compressed by zlib 1.2.13 (Python's `zlib.compressobj(level, DEFLATED, -wbits)`, sync
/// flush, tail removed): "Hello", "Hello, Hello, Hello world", "Hello world".
const PY_TAKEOVER_15: [&str; 3] = ["f248cdc9c90700", "f200113a0ac89442797e514e0a00", "42620200"];
const PY_FRESH_9: [&str; 3] = [
    "f248cdc9c90700",
    "f248cdc9c9d751f040a214caf38b72520000",
    "f248cdc9c95728cf2fca490100",
];
const PY_MESSAGES: [&str; 3] = ["Hello", "Hello, Hello, Hello world", "Hello world"];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn zlib_vectors_inflate_and_our_output_matches_zlib() {
    for (vectors, window, no_takeover, level) in
        [(PY_TAKEOVER_15, 15, false, 6), (PY_FRESH_9, 9, true, 9)]
    {
        let mut d = Decompressor::new(window, no_takeover, None);
        let mut c = Compressor::new(window, level, no_takeover);
        for (wire, msg) in vectors.iter().zip(PY_MESSAGES) {
            let mut out = Vec::new();
            d.inflate(&unhex(wire), &mut out, 1000).unwrap();
            d.finish(&mut out, 1000).unwrap();
            assert_eq!(out, msg.as_bytes());
            let mut ours = Vec::new();
            c.compress(msg.as_bytes(), &mut ours);
            assert_eq!(hex(&ours), *wire, "zlib-rs and zlib agree byte for byte");
        }
    }
}

/// The interop venv's Python if present, else `python3` on the PATH.
fn python() -> Option<std::path::PathBuf> {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/.venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    std::process::Command::new("python3")
        .arg("-c")
        .arg("import zlib")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3".into())
}

#[test]
fn live_interop_with_python_zlib_both_ways() {
    let Some(python) = python() else {
        eprintln!("SKIPPED: no Python found; the zlib vectors test covers interop");
        return;
    };
    let msgs: Vec<Vec<u8>> = [0usize, 1, 200, 5000, 70_000, 300_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| sample(n, 40 + i as u64))
        .collect();
    let script = r#"
import sys, zlib
mode, wbits, takeover = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
lines = sys.stdin.read().split()
tail = b"\x00\x00\xff\xff"
out = []
if mode == "compress":
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    for h in lines:
        if not takeover:
            c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        m = bytes.fromhex(h[1:])
        d = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
        assert d.endswith(tail)
        out.append("x" + d[:-4].hex())
else:
    d = zlib.decompressobj(-wbits)
    for h in lines:
        if not takeover:
            d = zlib.decompressobj(-wbits)
        out.append("x" + d.decompress(bytes.fromhex(h[1:]) + tail).hex())
print(" ".join(out))
"#;
    let run = |mode: &str, wbits: u8, takeover: bool, input: &[Vec<u8>]| -> Vec<Vec<u8>> {
        use std::io::Write;
        let mut child = std::process::Command::new(&python)
            .args([
                "-c",
                script,
                mode,
                &wbits.to_string(),
                if takeover { "1" } else { "0" },
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        let text: Vec<String> = input.iter().map(|m| format!("x{}", hex(m))).collect();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.join(" ").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|h| unhex(&h[1..]))
            .collect()
    };
    for wbits in [9u8, 12, 15] {
        for takeover in [false, true] {
            // Python compresses, we inflate.
            let wires = run("compress", wbits, takeover, &msgs);
            let mut d = Decompressor::new(wbits, !takeover, None);
            for (wire, msg) in wires.iter().zip(&msgs) {
                let mut out = Vec::new();
                d.inflate(wire, &mut out, 1 << 20).unwrap();
                d.finish(&mut out, 1 << 20).unwrap();
                assert!(out == *msg, "wbits {wbits} takeover {takeover}");
            }
            // We compress, Python inflates.
            let mut c = Compressor::new(wbits, 1, !takeover);
            let ours: Vec<Vec<u8>> = msgs
                .iter()
                .map(|m| {
                    let mut out = Vec::new();
                    c.compress(m, &mut out);
                    out
                })
                .collect();
            let back = run("decompress", wbits, takeover, &ours);
            assert!(back == msgs, "wbits {wbits} takeover {takeover}");
        }
    }
}

/// A stream of compressed messages: (text?, bytes, frames, ping between fragments).
fn messages() -> impl Strategy<Value = Vec<(bool, Vec<u8>, usize, bool)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..300),
                (0usize..20_000, any::<u64>()).prop_map(|(n, s)| sample(n, s)),
            ],
            1usize..6,
            any::<bool>(),
        ),
        1..6,
    )
}

/// Text of valid code points of every length, or the same with one sequence that is not UTF-8 (a
/// stray continuation byte, a surrogate, a code point above U+10FFFF, an overlong or truncated
/// sequence, an invalid byte) at a code point boundary.
fn maybe_utf8() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::collection::vec(
        prop::sample::select(vec!["a", "~", "é", "€", "😀", "\u{10ffff}"]),
        0..500,
    );
    let bad = prop::sample::select(vec![
        &b"\x80"[..],
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\xff",
    ]);
    (valid, prop::option::of((any::<prop::sample::Index>(), bad))).prop_map(|(pieces, bad)| {
        let mut out = pieces.concat().into_bytes();
        if let Some((at, bad)) = bad {
            let at: usize = pieces[..at.index(pieces.len() + 1)]
                .iter()
                .map(|p| p.len())
                .sum();
            out.splice(at..at, bad.iter().copied());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The receiver hands out a text message only if it is valid UTF-8, whether it was compressed
    /// or not, fragmented or not (code points cut across frames and receive buffers), delivered in
    /// place or assembled; otherwise the connection fails with 1007 and nothing is delivered.
    #[test]
    fn text_is_delivered_if_and_only_if_it_is_utf8(
        bytes in maybe_utf8(),
        compressed in any::<bool>(),
        pieces in 1usize..5,
        cuts in prop::collection::vec(0usize..3000, 0..6),
    ) {
        let stream = if compressed {
            compressed_message(&mut Compressor::new(15, 6, true), OpCode::Text, &bytes, pieces, false)
        } else {
            let size = bytes.len().div_ceil(pieces).max(1);
            let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(size).collect() };
            let mut stream = Vec::new();
            for (i, chunk) in chunks.iter().enumerate() {
                let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
                stream.extend(frame(i + 1 == chunks.len(), 0, op, chunk, [7, 0, 7, i as u8]));
            }
            stream
        };
        let got = feed(&mut server(true), &stream, &cuts);
        let want = match String::from_utf8(bytes) {
            Ok(text) => (vec![Owned::Text(text)], None),
            Err(_) => (vec![], Some(Error::InvalidUtf8)),
        };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn any_split_of_a_compressed_stream_gives_the_same_messages(
        msgs in messages(),
        no_takeover in any::<bool>(),
        window in 9u8..=15,
        cuts in prop::collection::vec(0usize..40_000, 0..12),
    ) {
        let mut c = Compressor::new(window, 6, no_takeover);
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (text, bytes, pieces, ping) in msgs {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            let bytes = if text { String::from_utf8_lossy(&bytes).into_owned().into_bytes() } else { bytes };
            stream.extend(compressed_message(&mut c, op, &bytes, pieces, ping));
            expected.push((text, bytes));
        }
        let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(window, no_takeover, None));
        let (events, err) = feed(&mut rx, &stream, &cuts);
        prop_assert_eq!(err, None);
        let data: Vec<(bool, Vec<u8>)> = events
            .into_iter()
            .filter_map(|e| match e {
                Owned::Text(s) => Some((true, s.into_bytes())),
                Owned::Binary(b) => Some((false, b)),
                Owned::Ping(_) => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        prop_assert!(data == expected);
    }

    #[test]
    fn arbitrary_compressed_payloads_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..2000),
        pieces in 1usize..4,
        cuts in prop::collection::vec(0usize..2000, 0..6),
    ) {
        let mut stream = Vec::new();
        let size = payload.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(size).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let (rsv, op) = if i == 0 { (RSV1, OpCode::Binary) } else { (0, OpCode::Continuation) };
            stream.extend(frame(i + 1 == chunks.len(), rsv, op, chunk, [3, 1, 4, 1]));
        }
        let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(9, false, Some(10)));
        let limits = Limits { max_frame_size: 4096, max_message_size: 8192 };
        let _ = feed_with(&mut rx, &limits, &stream, &cuts);
    }
}

/// The interop venv's Python, if it has `websockets` (which negotiates permessage-deflate by
/// default); `scripts/test.sh` creates it.
fn websockets_python() -> Option<std::path::PathBuf> {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/.venv/bin/python");
    std::process::Command::new(&venv)
        .args(["-c", "import websockets"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| venv)
}

/// Python `websockets`' sans-IO client, driven line by line (hex): it prints its upgrade request,
/// reads our 101, prints the extensions it agreed to, sends each message (fragmented every other
/// time) as one line, reads our echoes as one line and prints `OK` if each echo equals its message.
const WEBSOCKETS_CLIENT: &str = r#"
import sys, random
from websockets.client import ClientProtocol
from websockets.uri import parse_uri
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
snct, cnct, smwb, cmwb = sys.argv[1:5]
factory = ClientPerMessageDeflateFactory(
    server_no_context_takeover=snct == "1",
    client_no_context_takeover=cnct == "1",
    server_max_window_bits=None if smwb == "-" else int(smwb),
    client_max_window_bits=None if cmwb == "-" else True if cmwb == "bare" else int(cmwb),
)
p = ClientProtocol(parse_uri("ws://127.0.0.1/"), extensions=[factory], max_size=None)
def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
p.send_request(p.connect())
out(b"".join(p.data_to_send()).hex())
p.receive_data(bytes.fromhex(sys.stdin.readline().strip()))
p.events_received()
if p.handshake_exc is not None:
    out("HANDSHAKE " + repr(p.handshake_exc))
    sys.exit(0)
out("EXT " + repr(p.extensions))
rng = random.Random(7)
alphabet = b'{"id":12,"sym":"BTC-USD","px":"101.25"}, '
msgs = []
for i, n in enumerate([0, 1, 125, 126, 300, 5000, 65536, 1 << 20]):
    data = bytes(rng.choices(alphabet, k=n))
    text = i % 2 == 0
    if i % 2 == 0 or n < 3:
        (p.send_text if text else p.send_binary)(data)
    else:
        third = n // 3
        p.send_binary(data[:third], fin=False)
        p.send_continuation(data[third:2 * third], fin=False)
        p.send_continuation(data[2 * third:], fin=True)
    out(b"".join(p.data_to_send()).hex())
    msgs.append(data)
p.receive_data(bytes.fromhex(sys.stdin.readline().strip()))
got = [f.data for f in p.events_received()]
out("OK" if got == msgs else "MISMATCH %d %r" % (len(got), [len(g) for g in got]))
"#;

#[test]
fn python_websockets_client_interop_every_parameter_combination() {
    use crate::handshake::{DEFAULT_MAX_HEADER_BYTES, Parse, parse_request, write_accept_response};
    use std::io::{BufRead, BufReader, Write};
    let Some(python) = websockets_python() else {
        eprintln!("SKIPPED: no tests/interop/.venv with websockets (scripts/test.sh creates it)");
        return;
    };
    // Client offers: server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    // client_max_window_bits ("-" absent, "bare" without a value).
    let offers = [
        ("0", "0", "-", "bare"),
        ("1", "1", "10", "10"),
        ("0", "1", "9", "-"),
        ("1", "0", "-", "12"),
        ("0", "0", "15", "bare"),
    ];
    let policies = [
        DeflateConfig::default(),
        DeflateConfig {
            server_no_context_takeover: false,
            min_compress_size: 0,
            ..DeflateConfig::default()
        },
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: true,
            server_max_window_bits: 11,
            client_max_window_bits: 9,
            level: 6,
            ..DeflateConfig::default()
        },
    ];
    for offer in offers {
        for config in &policies {
            let mut child = std::process::Command::new(&python)
                .args(["-c", WEBSOCKETS_CLIENT, offer.0, offer.1, offer.2, offer.3])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python runs");
            let mut to_py = child.stdin.take().unwrap();
            let mut from_py = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut line = || from_py.next().expect("a line").expect("utf-8");
            let request = unhex(&line());
            let Ok(Parse::Complete(req)) = parse_request(&request, DEFAULT_MAX_HEADER_BYTES) else {
                panic!("websockets' request parses")
            };
            let key = req.validate_upgrade().expect("valid upgrade");
            let params =
                negotiate(req.extensions(), config).expect("websockets' offer is accepted");
            let mut response = Vec::new();
            write_accept_response(&mut response, key, None, Some(&params.to_string()));
            writeln!(to_py, "{}", hex(&response)).unwrap();
            let agreed = line();
            assert!(
                agreed.starts_with("EXT [PerMessageDeflate("),
                "{offer:?}: {agreed}"
            );
            let mut rx =
                Receiver::with_deflate(Role::Server, params.decompressor(Role::Server, config));
            let mut tx = params.compressor(Role::Server, config);
            let mut echoes = Vec::new();
            for _ in 0..8 {
                let mut wire = unhex(&line());
                assert_ne!(wire[0] & 0x40, 0, "websockets compresses every message");
                let (mut pos, mut event) = (0, None);
                while event.is_none() {
                    let (used, ev) = rx
                        .read(&mut wire[pos..], &Limits::default())
                        .expect("valid frames");
                    pos += used;
                    event = ev.map(|ev| match ev {
                        Event::Text(s) => (OpCode::Text, s.as_bytes().to_vec()),
                        Event::Binary(b) => (OpCode::Binary, b.to_vec()),
                        other => panic!("unexpected {other:?}"),
                    });
                }
                assert_eq!(pos, wire.len());
                let (op, msg) = event.unwrap();
                match tx.as_mut().filter(|_| config.should_compress(msg.len())) {
                    Some(c) => c.write_frame(op, &msg, None, &mut echoes),
                    None => {
                        let mut head = [0; MAX_HEADER_LEN];
                        let n = encode_header(&mut head, true, 0, op, None, msg.len() as u64);
                        echoes.extend_from_slice(&head[..n]);
                        echoes.extend_from_slice(&msg);
                    }
                }
            }
            writeln!(to_py, "{}", hex(&echoes)).unwrap();
            assert_eq!(line(), "OK", "offer {offer:?}, agreed {params}");
            drop(to_py);
            assert!(child.wait().unwrap().success());
        }
    }
}

/// Python `websockets`' sans-IO server with the given policy, driven line by line (hex): reads our
/// upgrade request, prints its 101, reads our messages as one line, echoes each one.
const WEBSOCKETS_SERVER: &str = r#"
import sys
from websockets.server import ServerProtocol
from websockets.frames import Opcode
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
snct, cnct, smwb, cmwb = sys.argv[1:5]
factory = ServerPerMessageDeflateFactory(
    server_no_context_takeover=snct == "1",
    client_no_context_takeover=cnct == "1",
    server_max_window_bits=None if smwb == "-" else int(smwb),
    client_max_window_bits=None if cmwb == "-" else int(cmwb),
)
p = ServerProtocol(extensions=[factory], max_size=None)
def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
p.receive_data(bytes.fromhex(sys.stdin.readline().strip()))
[request] = p.events_received()
p.send_response(p.accept(request))
out(b"".join(p.data_to_send()).hex())
p.receive_data(bytes.fromhex(sys.stdin.readline().strip()))
for frame in p.events_received():
    (p.send_text if frame.opcode == Opcode.TEXT else p.send_binary)(frame.data)
out(b"".join(p.data_to_send()).hex())
"#;

#[test]
fn python_websockets_server_interop_with_our_client() {
    use crate::handshake::{ClientHandshake, DEFAULT_MAX_HEADER_BYTES, ResponseParse};
    use std::io::{BufRead, BufReader, Write};
    let Some(python) = websockets_python() else {
        eprintln!("SKIPPED: no tests/interop/.venv with websockets (scripts/test.sh creates it)");
        return;
    };
    let configs = [
        DeflateConfig::default(),
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 11,
            min_compress_size: 0,
            ..DeflateConfig::default()
        },
    ];
    // Server policies: server_no_context_takeover, client_no_context_takeover,
    // server_max_window_bits, client_max_window_bits ("-": not set).
    let policies = [
        ("0", "0", "-", "-"),
        ("1", "1", "9", "9"),
        ("0", "0", "12", "10"),
    ];
    let msgs: Vec<Vec<u8>> = [0usize, 1, 200, 5000, 70_000, 1 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| sample(n, 90 + i as u64))
        .collect();
    for config in &configs {
        for policy in policies {
            let mut child = std::process::Command::new(&python)
                .args([
                    "-c",
                    WEBSOCKETS_SERVER,
                    policy.0,
                    policy.1,
                    policy.2,
                    policy.3,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python runs");
            let mut to_py = child.stdin.take().unwrap();
            let mut from_py = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut line = || from_py.next().expect("a line").expect("utf-8");
            let client = ClientHandshake::with_key(*b"0123456789abcdef");
            let offer = config.offer();
            let mut request = Vec::new();
            client.write_request(&mut request, "127.0.0.1", "/", &[], Some(&offer), &[]);
            writeln!(to_py, "{}", hex(&request)).unwrap();
            let response = unhex(&line());
            let Ok(ResponseParse::Complete(resp)) =
                client.parse_response(&response, &[], Some(&offer), DEFAULT_MAX_HEADER_BYTES)
            else {
                panic!("websockets' 101 parses")
            };
            let selected = resp.extensions.expect("websockets accepts the offer");
            let params = Params::from_response(selected, config)
                .expect("a valid answer")
                .expect("permessage-deflate agreed");
            let mut tx = params
                .compressor(Role::Client, config)
                .expect("compressible");
            let mut wire = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                tx.write_frame(OpCode::Binary, m, Some([i as u8, 7, 1, 9]), &mut wire);
            }
            writeln!(to_py, "{}", hex(&wire)).unwrap();
            let echoes = unhex(&line());
            let mut rx =
                Receiver::with_deflate(Role::Client, params.decompressor(Role::Client, config));
            let (events, err) = feed(&mut rx, &echoes, &[1000, 70_000]);
            assert_eq!(err, None, "{selected}");
            let expected: Vec<Owned> = msgs.iter().cloned().map(Owned::Binary).collect();
            assert!(events == expected, "policy {policy:?}, agreed {selected}");
            // websockets compresses its echoes: the first one carries RSV1.
            assert_ne!(echoes[0] & 0x40, 0);
            drop(to_py);
            assert!(child.wait().unwrap().success());
        }
    }
}
