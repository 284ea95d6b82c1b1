//! Criterion benches of the protocol crate's hot paths: unmasking, frame header decoding, the
//! receiver over whole and split frames, and the opening handshake. Run with `cargo bench --bench protocol` (a few minutes), or filter, e.g.
//! `cargo bench --bench protocol -- unmask`.
//!
//! Ids are stable (`unmask/<function>/<bytes>`, `frame_decode/{small,len64}`,
//! `receive/{whole_16x64,split_1k}`, `handshake/parse_and_accept`) so runs can be compared with `--save-baseline` / `--baseline`.

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringws_protocol::frame::{DecodeRules, Decoded, decode_header};
use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use ringws_protocol::handshake::{DEFAULT_MAX_HEADER_BYTES, Parse, accept_key, parse_request};
use ringws_protocol::mask::{simd_level, unmask, unmask_naive, unmask_word};
use ringws_protocol::{Limits, Receiver, Role};
use std::time::Duration;

/// Payload sizes: a tiny message, the largest control payload, then 1 KiB to 1 MiB.
const SIZES: [usize; 6] = [16, 125, 1024, 16384, 65536, 1 << 20];

/// Payloads up to this size are spread over a region this large (in L1 on the development box).
const REGION: usize = 16 << 10;

/// Each iteration unmasks the *next* payload of `size` bytes laid back to back in a 64-byte-aligned
/// region, as frames sit in a receive buffer, wrapping around at [`REGION`] bytes. Re-unmasking the
/// same bytes every iteration would instead measure a store-to-load forwarding stall (the next
/// call's loads wait on the previous call's overlapping stores) that real traffic never sees: a
/// payload is unmasked once. Sizes of 16 KiB and up use one payload.
fn bench_unmask(c: &mut Criterion) {
    type Unmask = fn(&mut [u8], [u8; 4], usize);
    let functions: [(&str, Unmask); 3] = [
        ("naive", unmask_naive),
        ("word", unmask_word),
        ("simd", unmask),
    ];
    eprintln!("unmask/simd dispatches to {}", simd_level());
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut group = c.benchmark_group("unmask");
    for size in SIZES {
        let slots = (REGION / size).max(1);
        let mut storage: Vec<u8> = (0..size * slots + 64).map(|i| i as u8).collect();
        let start = storage.as_ptr().align_offset(64);
        let region = &mut storage[start..start + size * slots];
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 1 << 16 {
            // Slow functions on big buffers: fewer samples keep the whole run to a few minutes.
            group.sample_size(20);
        }
        for (name, f) in functions {
            // An opaque pointer: the call cannot be inlined or specialised for the constant key
            // and phase, so they need no per-iteration `black_box` (whose stack spills would
            // compete with the store-bound SIMD loop for the store port).
            let f = black_box(f);
            let mut slot = 0;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let payload = &mut region[slot * size..(slot + 1) * size];
                    slot = if slot + 1 == slots { 0 } else { slot + 1 };
                    f(payload, key, 1)
                })
            });
        }
    }
    group.finish();
}

fn bench_frame_decode(c: &mut Criterion) {
    let rules = DecodeRules {
        role: Role::Server,
        max_frame_size: u64::MAX >> 1,
        allowed_rsv: 0,
    };
    // A masked client Text frame with a 7-bit length (5 bytes), and a masked Binary frame with a
    // 64-bit length (1 MiB); only the header bytes are present, which is all the decoder reads.
    let small: &[u8] = b"\x81\x85\x37\xfa\x21\x3d";
    let len64: &[u8] = b"\x82\xff\x00\x00\x00\x00\x00\x10\x00\x00\x37\xfa\x21\x3d";
    let mut group = c.benchmark_group("frame_decode");
    for (name, header) in [("small", small), ("len64", len64)] {
        assert!(matches!(
            decode_header(header, &rules),
            Ok(Decoded::Header(_))
        ));
        group.bench_function(name, |b| {
            b.iter(|| decode_header(black_box(header), black_box(&rules)))
        });
    }
    group.finish();
}

/// A masked client Binary frame (binary so that unmasking the same bytes again stays valid input).
fn masked_frame(payload_len: usize) -> Vec<u8> {
    let mut head = [0; MAX_HEADER_LEN];
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let n = encode_header(
        &mut head,
        true,
        0,
        OpCode::Binary,
        Some(key),
        payload_len as u64,
    );
    let mut frame = head[..n].to_vec();
    frame.extend((0..payload_len).map(|i| i as u8));
    frame
}

/// Feeds `pieces` (receive buffers, in order) to `rx` and returns the events' payload bytes.
fn receive(rx: &mut Receiver, pieces: &mut [&mut [u8]]) -> usize {
    let limits = Limits::default();
    let mut bytes = 0;
    for piece in pieces.iter_mut() {
        let mut pos = 0;
        while pos < piece.len() {
            let (used, event) = rx.read(&mut piece[pos..], &limits).expect("valid frames");
            pos += used;
            if let Some(ringws_protocol::Event::Binary(b)) = event {
                bytes += b.len();
            }
        }
        rx.release();
    }
    bytes
}

/// The receive path per call of [`Receiver::read`]: 64 small frames whole in one buffer (the
/// common case, delivered in place), and a 1 KiB frame split over two buffers (assembled).
fn bench_receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive");
    let mut rx = Receiver::new(Role::Server);
    let mut whole: Vec<u8> = (0..64).flat_map(|_| masked_frame(16)).collect();
    group.throughput(Throughput::Elements(64));
    group.bench_function("whole_16x64", |b| {
        b.iter(|| receive(&mut rx, &mut [black_box(&mut whole[..])]))
    });
    let mut split = masked_frame(1024);
    let (first, second) = split.split_at_mut(500);
    group.throughput(Throughput::Elements(1));
    group.bench_function("split_1k", |b| {
        b.iter(|| {
            receive(
                &mut rx,
                &mut [black_box(&mut *first), black_box(&mut *second)],
            )
        })
    });
    group.finish();
}

/// What Chrome sends to open a WebSocket (headers in Chrome's order).
const CHROME_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: example.com:9001\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROME_REQUEST.len() as u64));
    group.bench_function("parse_and_accept", |b| {
        b.iter(|| {
            let parsed = parse_request(black_box(CHROME_REQUEST), DEFAULT_MAX_HEADER_BYTES);
            let Ok(Parse::Complete(req)) = parsed else {
                panic!("the Chrome request must parse: {parsed:?}");
            };
            let key = req
                .validate_upgrade()
                .expect("the Chrome request is a valid upgrade");
            accept_key(key.as_bytes())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_unmask, bench_frame_decode, bench_receive, bench_handshake
}
criterion_main!(benches);
