//! What the crate's `unsafe` buys, measured against the safe alternative in the same run.
//!
//! - `unmask`: the SIMD [`unmask`] (runtime-dispatched intrinsics) against the safe
//!   word-at-a-time [`unmask_word`], payloads laid back to back as in a receive buffer.
//! - `text`: the whole receive path of a fragmented text message (4 masked frames fed through
//!   32 KiB receive buffers: decode, unmask, assemble, streaming UTF-8 validation) with and without
//!   a second, checked `&[u8]` to `&str` conversion of the assembled message (`std::str::from_utf8`
//!   or `simdutf8::basic::from_utf8`): what `from_utf8_unchecked` in the receiver would save.
//! - `inflate`: the inflate loop of [`Decompressor::inflate`] with `decompress_uninit` into the
//!   spare capacity plus `Vec::set_len` (`uninit`, the former unsafe code, replicated here) against
//!   flate2's safe `decompress_vec` (`vec`), and the crate's own `Decompressor` for reference.
//!
//! Wall time, variants interleaved round by round (the order rotating) so that load from other
//! processes hits them alike; per-round ratios (median and interquartile range) and the ratio of
//! the fastest rounds:
//!
//! `cargo run --release -p ringws-protocol --example unsafe_costs [unmask|text|inflate|all] [rounds]`
//!
//! Instruction counts (repeatable on a shared box) with callgrind, one process per variant, only
//! the measured loop collected:
//!
//! `cargo run --release -p ringws-protocol --example unsafe_costs -- callgrind [unmask|text|inflate|all]`
//!
//! [`unmask`]: ringws_protocol::mask::unmask
//! [`unmask_word`]: ringws_protocol::mask::unmask_word
//! [`Decompressor::inflate`]: ringws_protocol::deflate::Decompressor::inflate

use flate2::{Decompress, FlushDecompress, Status};
use ringws_protocol::deflate::{Compressor, Decompressor, TAIL};
use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use ringws_protocol::mask::{simd_level, unmask, unmask_word};
use ringws_protocol::{Event, Limits, Receiver, Role};
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

/// The engine's default provided receive buffer size.
const RECV_BUF: usize = 32 << 10;

/// One way of doing the work; each call does one unit (one payload, one message).
struct Variant {
    name: &'static str,
    run: Box<dyn FnMut()>,
}

fn variant(name: &'static str, run: impl FnMut() + 'static) -> Variant {
    Variant {
        name,
        run: Box::new(run),
    }
}

/// A case: a title and the variants to compare, the first being the reference.
struct Case {
    title: String,
    variants: Vec<Variant>,
    /// Iterations under callgrind (the work per iteration is deterministic).
    count_iters: u64,
}

// ---- unmask ----

fn unmask_cases() -> Vec<Case> {
    type Unmask = fn(&mut [u8], [u8; 4], usize);
    [16usize, 125, 1024, 16 << 10, 64 << 10, 1 << 20]
        .into_iter()
        .map(|size| {
            let mk = |name: &'static str, f: Unmask| {
                // Payloads back to back in a 16 KiB region (one payload from 16 KiB up), each call
                // unmasking the next one, as in `benches/protocol.rs`.
                let slots = ((16 << 10) / size).max(1);
                let mut storage: Vec<u8> = (0..size * slots + 64).map(|i| i as u8).collect();
                let start = storage.as_ptr().align_offset(64);
                let mut slot = 0;
                // Opaque, as in the criterion bench: no specialisation for the constant key.
                let f = black_box(f);
                variant(name, move || {
                    let at = start + slot * size;
                    slot = if slot + 1 == slots { 0 } else { slot + 1 };
                    f(&mut storage[at..at + size], [0x37, 0xfa, 0x21, 0x3d], 1);
                })
            };
            Case {
                title: format!("unmask {size} B"),
                variants: vec![mk("word", unmask_word), mk("simd", unmask)],
                count_iters: ((64u64 << 20) / size as u64).clamp(8, 100_000),
            }
        })
        .collect()
}

// ---- text: the receive path with and without a checked conversion ----

/// JSON-like text of about `len` bytes: ASCII only, or with Latin, Cyrillic, CJK and emoji
/// strings (a quarter of the bytes in multi-byte code points). Cut at a code point boundary.
fn text(len: usize, mixed: bool, seed: u64) -> Vec<u8> {
    let names = if mixed {
        [
            "Grüße aus Köln",
            "Москва, Россия",
            "東京都渋谷区",
            "café ☕ 🚀 ok",
        ]
    } else {
        ["BTC-USD", "ETH-USD", "SOL-USD", "hello world"]
    };
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(len + 80);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.push_str(&format!(
            "{{\"id\":{},\"px\":\"{}.{:02}\",\"name\":\"{}\"}},",
            s % 100_000,
            s % 500,
            s % 100,
            names[(s % 4) as usize]
        ));
    }
    let mut end = len;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.into_bytes()
}

/// A masked client frame appended to `out`.
fn client_frame(fin: bool, op: OpCode, payload: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&mut head, fin, 0, op, Some(key), payload.len() as u64);
    out.extend_from_slice(&head[..n]);
    let at = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[at..], key, 0);
}

#[derive(Clone, Copy)]
enum Check {
    /// Only re-arm the receive buffer (copy the masked wire bytes in): the floor to subtract.
    CopyOnly,
    /// The receive path as it is (the receiver converts with `from_utf8_unchecked`).
    Path,
    /// The path plus `std::str::from_utf8` on the delivered message.
    Std,
    /// The path plus `simdutf8::basic::from_utf8` on the delivered message.
    Simd,
}

fn text_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for size in [1usize << 10, 64 << 10, 1 << 20] {
        for mixed in [false, true] {
            let msg = text(size, mixed, 7);
            // 4 fragments, cut at arbitrary bytes (code points may straddle them).
            let mut wire = Vec::new();
            let piece = msg.len().div_ceil(4);
            let chunks: Vec<&[u8]> = msg.chunks(piece).collect();
            for (i, c) in chunks.iter().enumerate() {
                let op = if i == 0 {
                    OpCode::Text
                } else {
                    OpCode::Continuation
                };
                client_frame(
                    i + 1 == chunks.len(),
                    op,
                    c,
                    [1, 2, 3, i as u8 + 4],
                    &mut wire,
                );
            }
            let mk = |name: &'static str, check: Check| {
                let wire = wire.clone();
                let mut buf = wire.clone();
                let mut rx = Receiver::new(Role::Server);
                let limits = Limits::default();
                let want = msg.len();
                variant(name, move || {
                    buf.copy_from_slice(&wire);
                    if let Check::CopyOnly = check {
                        black_box(&mut buf);
                        return;
                    }
                    let mut got = 0;
                    for recv in buf.chunks_mut(RECV_BUF) {
                        let mut pos = 0;
                        while pos < recv.len() {
                            let (used, ev) =
                                rx.read(&mut recv[pos..], &limits).expect("valid stream");
                            pos += used;
                            if let Some(Event::Text(s)) = ev {
                                let bytes = black_box(s.as_bytes());
                                got += match check {
                                    Check::CopyOnly | Check::Path => bytes.len(),
                                    Check::Std => std::str::from_utf8(bytes).expect("utf8").len(),
                                    Check::Simd => {
                                        simdutf8::basic::from_utf8(bytes).expect("utf8").len()
                                    }
                                };
                            }
                        }
                    }
                    assert_eq!(got, want);
                })
            };
            cases.push(Case {
                title: format!(
                    "text {} KiB {}, 4 fragments",
                    size >> 10,
                    if mixed { "mixed" } else { "ascii" }
                ),
                variants: vec![
                    mk("path", Check::Path),
                    mk("path+std", Check::Std),
                    mk("path+simdutf8", Check::Simd),
                    mk("copy", Check::CopyOnly),
                ],
                count_iters: ((16u64 << 20) / size as u64).clamp(4, 10_000),
            });
        }
    }
    cases
}

// ---- inflate: decompress_uninit + set_len against decompress_vec ----

/// As in the codec.
const MIN_OUTPUT_STEP: usize = 4 << 10;

/// The loop of `Decompressor::inflate` (without the ratio guard and stream-end bookkeeping, which
/// are the same for both), advancing the output either with `decompress_uninit` into the spare
/// capacity bounded by `room` plus `set_len` (`SAFE = false`, the former code), or with
/// `decompress_vec` (`SAFE = true`).
fn inflate_loop<const SAFE: bool>(
    d: &mut Decompress,
    chunk: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ()> {
    let cap = limit.saturating_add(1);
    let mut input = chunk;
    loop {
        if out.len() == out.capacity() {
            let step = out.len().max(MIN_OUTPUT_STEP).min(cap - out.len());
            out.reserve_exact(step);
        }
        let room = (out.capacity() - out.len()).min(cap - out.len());
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = if SAFE {
            d.decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| ())?
        } else {
            let len = out.len();
            let status = d
                .decompress_uninit(
                    input,
                    &mut out.spare_capacity_mut()[..room],
                    FlushDecompress::Sync,
                )
                .map_err(|_| ())?;
            let produced = (d.total_out() - out_before) as usize;
            assert!(produced <= room);
            // SAFETY: `decompress_uninit` initialised the first `produced` bytes (the growth of
            // `total_out`) of the spare slice starting at `len`; `produced <= room <= capacity -
            // len`.
            unsafe { out.set_len(len + produced) };
            status
        };
        let consumed = (d.total_in() - in_before) as usize;
        let produced = (d.total_out() - out_before) as usize;
        input = &input[consumed..];
        if out.len() > limit {
            return Err(());
        }
        if status == Status::StreamEnd {
            return Ok(());
        }
        if consumed == 0 && produced == 0 {
            return if input.is_empty() { Ok(()) } else { Err(()) };
        }
        if input.is_empty() && produced < room {
            return Ok(());
        }
    }
}

fn inflate_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for size in [128usize, 1 << 10, 16 << 10, 256 << 10, 1 << 20] {
        // Compressed as a peer at level 1 without context takeover would, fed in receive-buffer
        // sized chunks, into a fresh message buffer (the assembler frees it after each message).
        let msg = text(size, false, 3);
        let mut wire = Vec::new();
        Compressor::new(15, 1, true).compress(&msg, &mut wire);
        let limit = 16 << 20;
        let mk_loop = |name: &'static str, safe: bool| {
            let wire = wire.clone();
            let want = msg.clone();
            let mut d = Decompress::new_with_window_bits(false, 15);
            variant(name, move || {
                d.reset(false);
                let mut out = Vec::new();
                for chunk in wire.chunks(RECV_BUF).chain([&TAIL[..]]) {
                    if safe {
                        inflate_loop::<true>(&mut d, chunk, &mut out, limit)
                    } else {
                        inflate_loop::<false>(&mut d, chunk, &mut out, limit)
                    }
                    .expect("valid stream");
                }
                assert_eq!(out.len(), want.len());
                black_box(&out);
            })
        };
        let decompressor = {
            let wire = wire.clone();
            let want = msg.len();
            let mut d = Decompressor::new(15, false, None);
            variant("Decompressor", move || {
                let mut out = Vec::new();
                for chunk in wire.chunks(RECV_BUF) {
                    d.inflate(chunk, &mut out, limit).expect("valid stream");
                }
                d.finish(&mut out, limit).expect("valid stream");
                assert_eq!(out.len(), want);
                black_box(&out);
            })
        };
        cases.push(Case {
            title: format!("inflate {size} B (JSON, {} B compressed)", wire.len()),
            variants: vec![mk_loop("uninit", false), mk_loop("vec", true), decompressor],
            count_iters: ((16u64 << 20) / size as u64).clamp(4, 10_000),
        });
    }
    cases
}

// ---- harness ----

fn cases(which: &str) -> Vec<Case> {
    let mut all = Vec::new();
    if matches!(which, "unmask" | "all") {
        all.extend(unmask_cases());
    }
    if matches!(which, "text" | "all") {
        all.extend(text_cases());
    }
    if matches!(which, "inflate" | "all") {
        all.extend(inflate_cases());
    }
    assert!(!all.is_empty(), "unknown case {which:?}");
    all
}

/// The loop callgrind collects (`--toggle-collect`): nothing else is counted.
#[inline(never)]
fn measured(run: &mut dyn FnMut(), iters: u64) {
    for _ in 0..iters {
        run();
    }
}

fn time_ns(run: &mut dyn FnMut(), iters: u64) -> f64 {
    let t = Instant::now();
    measured(run, iters);
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

fn time_case(case: &mut Case, rounds: usize) {
    let n = case.variants.len();
    for v in &mut case.variants {
        (v.run)(); // warm-up: allocations, SIMD detection, caches
    }
    // Iterations per batch: about 1 ms of the reference variant, short against a scheduler time
    // slice, so that on a loaded box most batches run uninterrupted.
    let mut iters = 1;
    while time_ns(&mut case.variants[0].run, iters) * (iters as f64) < 1e6 {
        iters *= 2;
    }
    let mut ns = vec![Vec::with_capacity(rounds); n];
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n;
            ns[i].push(time_ns(&mut case.variants[i].run, iters));
        }
    }
    println!("## {} ({rounds} rounds of {iters} iterations)", case.title);
    println!(
        "  {:<14} {:>12} {:>12}   per-round ratio to {}: median [IQR]; ratio of minima",
        "", "min ns", "median ns", case.variants[0].name
    );
    let min = |i: usize| ns[i].iter().copied().fold(f64::INFINITY, f64::min);
    for (i, v) in case.variants.iter().enumerate() {
        let (_, med, _) = quartiles(ns[i].clone());
        let ratio: Vec<f64> = (0..rounds).map(|r| ns[i][r] / ns[0][r]).collect();
        let (q1, rm, q3) = quartiles(ratio);
        println!(
            "  {:<14} {:>12.1} {:>12.1}   x{rm:.3} [{q1:.3}..{q3:.3}]; x{:.3}",
            v.name,
            min(i),
            med,
            min(i) / min(0)
        );
    }
    // The text case: the check's cost relative to the receive path without the buffer re-arm.
    if case.variants.len() == 4 && case.variants[3].name == "copy" {
        for i in [1, 2] {
            let extra: Vec<f64> = (0..rounds)
                .map(|r| (ns[i][r] - ns[0][r]) / (ns[0][r] - ns[3][r]))
                .collect();
            let (q1, m, q3) = quartiles(extra);
            println!(
                "  {} adds {:+.1}% [IQR {:+.1}..{:+.1}%] to the path without the re-arm copy \
                 ({:+.1}% from the minima)",
                case.variants[i].name,
                m * 100.0,
                q1 * 100.0,
                q3 * 100.0,
                (min(i) - min(0)) / (min(0) - min(3)) * 100.0
            );
        }
    }
}

/// Runs every variant of every case of `which` under callgrind in a child process, collecting only
/// [`measured`], and prints instructions per iteration.
fn callgrind(which: &str) {
    let exe = std::env::current_exe().expect("own path");
    for (ci, case) in cases(which).iter().enumerate() {
        println!(
            "## {} (instructions per iteration, {} iterations)",
            case.title, case.count_iters
        );
        let mut base = 0.0;
        for (vi, v) in case.variants.iter().enumerate() {
            let out = Command::new("valgrind")
                .args([
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    "--toggle-collect=*measured*",
                ])
                // glibc copies large blocks with `rep movsb`, which callgrind counts once per
                // byte: keep memcpy on its vector loop so that copies count like other code.
                .env(
                    "GLIBC_TUNABLES",
                    "glibc.cpu.x86_rep_movsb_threshold=0xffffffffffff:\
                     glibc.cpu.x86_rep_stosb_threshold=0xffffffffffff",
                )
                .arg(&exe)
                .args(["count", which, &ci.to_string(), &vi.to_string()])
                .output()
                .expect("valgrind runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let collected: f64 = stderr
                .lines()
                .find_map(|l| l.split("Collected : ").nth(1))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no count from callgrind:\n{stderr}"));
            let per = collected / case.count_iters as f64;
            if vi == 0 {
                base = per;
            }
            println!("  {:<14} {:>14.0}   x{:.3}", v.name, per, per / base);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("count") => {
            // Child of `callgrind`: count <which> <case> <variant>.
            let mut all = cases(&args[1]);
            let case = &mut all[args[2].parse::<usize>().expect("case index")];
            let iters = case.count_iters;
            let v = &mut case.variants[args[3].parse::<usize>().expect("variant index")];
            (v.run)(); // warm-up, not collected
            measured(&mut v.run, iters);
        }
        Some("callgrind") => {
            callgrind(args.get(1).map_or("all", String::as_str));
        }
        which => {
            let which = which.unwrap_or("all");
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(201);
            println!("unmask dispatches to {}", simd_level());
            for mut case in cases(which) {
                time_case(&mut case, rounds);
            }
        }
    }
}
