//! permessage-deflate costs, measured: memory per compression context (allocations counted by a
//! wrapping global allocator) and a sans-IO echo (client frame in through `Receiver`, reply out
//! through `Compressor::write_frame` or a plain frame) in messages per second, per mode.
//!
//! `cargo run --release -p ringws-protocol --example deflate_bench [seconds-per-case]`
//!
//! One core, no sockets: it isolates the protocol work the engine adds per message.

use ringws_protocol::deflate::{Compressor, Decompressor, Params};
use ringws_protocol::frame::{MAX_HEADER_LEN, OpCode, RSV1, encode_header};
use ringws_protocol::{Event, Limits, Receiver, Role};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counter is
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded with the caller's (valid) layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `System` with this layout (all allocations go through here).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes `f`'s result keeps allocated.
fn retained<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Relaxed);
    let value = f();
    (value, LIVE.load(Relaxed) - before)
}

/// A JSON-like message of `len` bytes, different for each `seed`.
fn message(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 80);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(
            format!(
                "{{\"id\":{},\"type\":\"trade\",\"px\":\"{}.{:02}\",\"qty\":{},\"sym\":\"{}\"}},",
                s % 100_000,
                s % 500,
                s % 100,
                s % 37,
                ["BTC-USD", "ETH-USD", "SOL-USD"][(s % 3) as usize]
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn memory() {
    println!("## memory per context (bytes allocated)");
    for bits in [9u8, 10, 12, 15] {
        let (c, bytes) = retained(|| Compressor::new(bits, 1, false));
        let (mut d, lazy) = retained(|| Decompressor::new(bits, false, None));
        let ((), used) = retained(|| {
            let mut out = Vec::new();
            d.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100)
                .unwrap();
            d.finish(&mut out, 100).unwrap();
        });
        println!(
            "window {bits:>2}: compressor {bytes:>7}, decompressor {lazy} until the first compressed message, then {used:>6}"
        );
        drop(c);
    }
    println!();
    println!("## per connection between messages, by agreed mode (server side)");
    for (name, snct, cnct) in [
        ("takeover both ways", false, false),
        ("server_no_context_takeover (default policy)", true, false),
        ("client_no_context_takeover", false, true),
        ("no takeover either way", true, true),
    ] {
        let p = Params {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: None,
            client_max_window_bits: None,
        };
        println!("{name:<46} {:>7} bytes", p.persistent_bytes(Role::Server));
    }
    println!();
}

/// A masked client frame.
fn client_frame(rsv: u8, op: OpCode, payload: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&mut head, true, rsv, op, Some(key), payload.len() as u64);
    out.extend_from_slice(&head[..n]);
    let at = out.len();
    out.extend_from_slice(payload);
    ringws_protocol::mask::unmask(&mut out[at..], key, 0);
}

/// What the connection agreed on.
#[derive(Clone, Copy)]
enum Mode {
    /// No permessage-deflate.
    Plain,
    /// Context takeover off both ways: a shared compressor, no decompressor between messages.
    NoTakeover,
    /// The default policy: `server_no_context_takeover`, the client keeps its context.
    Default,
    /// Context takeover both ways.
    Takeover,
}

/// Server-side echo of `msgs` (cycled) for about `time`: returns messages per second and the ratio
/// of reply bytes to message bytes.
fn echo(mode: Mode, msgs: &[Vec<u8>], time: Duration) -> (f64, f64) {
    let (deflate, server_fresh, client_fresh) = match mode {
        Mode::Plain => (false, false, false),
        Mode::NoTakeover => (true, true, true),
        Mode::Default => (true, true, false),
        Mode::Takeover => (true, false, false),
    };
    // What the client sends: the messages in order, compressed as a client with this mode would.
    let mut client = Compressor::new(15, 1, client_fresh);
    let mut wire = Vec::new();
    let mut payload = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let key = (i as u32).to_le_bytes();
        if deflate {
            payload.clear();
            client.compress(m, &mut payload);
            client_frame(RSV1, OpCode::Binary, &payload, key, &mut wire);
        } else {
            client_frame(0, OpCode::Binary, m, key, &mut wire);
        }
    }
    let msg_bytes: usize = msgs.iter().map(Vec::len).sum();
    let mut server = Compressor::new(15, 1, server_fresh);
    let mut buf = Vec::with_capacity(wire.len());
    let mut out = Vec::with_capacity(1 << 20);
    let (mut count, mut out_bytes) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < time {
        let limits = Limits::default();
        // One round: a fresh connection receives the whole sequence (needed with takeover).
        let mut rx = if deflate {
            Receiver::with_deflate(Role::Server, Decompressor::new(15, client_fresh, Some(256)))
        } else {
            Receiver::new(Role::Server)
        };
        if !server_fresh {
            server.reset();
        }
        buf.clear();
        buf.extend_from_slice(&wire);
        let mut pos = 0;
        while pos < buf.len() {
            let (used, ev) = rx.read(&mut buf[pos..], &limits).expect("valid stream");
            pos += used;
            let Some(Event::Binary(m)) = ev else {
                panic!("binary message expected")
            };
            out.clear();
            if deflate {
                server.write_frame(OpCode::Binary, m, None, &mut out);
            } else {
                let mut head = [0; MAX_HEADER_LEN];
                let n = encode_header(&mut head, true, 0, OpCode::Binary, None, m.len() as u64);
                out.extend_from_slice(&head[..n]);
                out.extend_from_slice(m);
            }
            out_bytes += out.len() as u64;
            count += 1;
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let rounds = count as f64 / msgs.len() as f64;
    (rate, out_bytes as f64 / (rounds * msg_bytes as f64))
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let time = Duration::from_secs_f64(secs);
    memory();
    println!(
        "## sans-IO echo on one core (receive + inflate, compress + frame), level 1, window 15"
    );
    println!("msg/s, and in brackets reply bytes per message byte");
    println!(
        "{:>8} | {:>10} | {:>20} | {:>20} | {:>20}",
        "size", "plain", "no takeover", "default policy", "takeover"
    );
    for size in [128usize, 1024, 16 << 10, 256 << 10] {
        let count = (4 << 20) / size;
        let msgs: Vec<Vec<u8>> = (0..count.clamp(16, 4096))
            .map(|i| message(size, i as u64))
            .collect();
        let (plain, _) = echo(Mode::Plain, &msgs, time);
        let cells: Vec<String> = [Mode::NoTakeover, Mode::Default, Mode::Takeover]
            .into_iter()
            .map(|mode| {
                let (rate, ratio) = echo(mode, &msgs, time);
                format!("{rate:>12.0} ({ratio:.3})")
            })
            .collect();
        println!(
            "{size:>8} | {plain:>10.0} | {:>20} | {:>20} | {:>20}",
            cells[0], cells[1], cells[2]
        );
    }
}
