//! Network-level fuzzing of a live `ringws serve`: after a valid handshake, many connections send
//! random and mutated frames (flipped bits, reserved opcodes and RSV bits, unmasked frames, absurd
//! and non-minimal lengths, oversized or fragmented control frames, stray continuations, invalid
//! UTF-8 and close payloads, truncated frames, garbage), cut into random writes. The expected answer
//! for every connection comes from running the same bytes through `ringws-protocol`'s sans-IO
//! `Receiver` with the server's limits: each message echoed, each ping ponged, and the connection
//! ending with the Close the protocol prescribes (the client's code echoed, or the error's code), or
//! still open and answering a ping. A control client's echoes are checked throughout, and the
//! server must still be running at the end.
//!
//! The same fuzzing runs over wss:// too: through a TLS relay (tests/common/tls.rs) every byte
//! reaches the server in TLS records, so its record layer sees fragments of frames cut anywhere.
//!
//! Deterministic: the RNG is seeded (`RINGWS_NETFUZZ_SEED` overrides the default), and a failure
//! names the seed, client and connection to rerun. Bounded: a fixed number of connections and frames,
//! every read with a timeout.

mod common;

use common::tls::{Certs, TlsRelay};
use common::{BackgroundEchoer, Frame, RawClient, Rng, Server, op};
use ringws_protocol::{Event, Limits, Receiver, Reply, Role};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

/// Parallel fuzzing clients.
const CLIENTS: u64 = 8;
/// Connections each client opens, one after the other.
const CONNECTIONS: u64 = 250;
/// Connections each client opens over TLS (each costs a handshake, and a relay hop).
const TLS_CONNECTIONS: u64 = 60;
/// Most frames (valid or mutated) per connection.
const MAX_FRAMES: u64 = 40;
/// How long one read may wait for the server.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The wire bytes of one valid frame or a deliberately broken one, masked by `client`.
fn fuzz_frame(rng: &mut Rng, client: &mut RawClient) -> Vec<u8> {
    // Mostly valid frames (kinds 0-8), so connections carry traffic before something breaks them.
    let kind = if rng.below(12) != 0 {
        rng.below(9)
    } else {
        9 + rng.below(11)
    };
    match kind {
        // Valid data, control and fragmented frames.
        0..=3 => {
            let len = rng.len();
            client.masked(&Frame::text(rng.text(len)))
        }
        4..=5 => {
            let len = rng.len();
            client.masked(&Frame::binary(rng.bytes(len)))
        }
        6 => {
            let len = rng.below(126) as usize;
            client.masked(&Frame::ping(rng.bytes(len)))
        }
        7 => client.masked(&Frame::new(true, op::PONG, rng.bytes(8))),
        8 => {
            let parts = 2 + rng.below(4);
            let opcode = if rng.one_in(2) { op::TEXT } else { op::BINARY };
            let frames: Vec<Frame> = (0..parts)
                .map(|i| {
                    let first = if i == 0 { opcode } else { op::CONT };
                    let len = rng.below(200) as usize;
                    let payload = if opcode == op::TEXT {
                        rng.text(len)
                    } else {
                        rng.bytes(len)
                    };
                    Frame::new(i == parts - 1, first, payload)
                })
                .collect();
            client.masked_all(&frames)
        }
        // A valid frame with one byte changed or one bit flipped (header or payload).
        9..=10 => {
            let len = rng.len();
            let mut wire = client.masked(&Frame::text(rng.text(len)));
            let at = if rng.one_in(2) {
                rng.below(2) as usize
            } else {
                rng.below(wire.len() as u64) as usize
            };
            if rng.one_in(2) {
                wire[at] ^= 1 << rng.below(8);
            } else {
                wire[at] = rng.next() as u8;
            }
            wire
        }
        // Reserved opcodes, RSV bits.
        11 => {
            let opcode = [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf][rng.below(10) as usize];
            client.masked(&Frame::new(true, opcode, rng.bytes(5)))
        }
        12 => client.masked(&Frame::text("rsv").with_rsv(1 + rng.below(7) as u8)),
        // An unmasked frame.
        13 => Frame::binary(rng.bytes(10)).encode(None),
        // Lengths: absurd 64-bit ones, the top bit, non-minimal encodings.
        14 => {
            let len = match rng.below(4) {
                0 => (1 << 63) - 1,
                1 => 1 << 63 | rng.next(),
                2 => rng.below(126),
                _ => rng.next() >> rng.below(64),
            };
            let mut wire = vec![0x82, 0x80 | 127];
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend_from_slice(&[9, 8, 7, 6]);
            wire
        }
        15 => {
            let mut wire = vec![0x81, 0x80 | 126];
            wire.extend_from_slice(&(rng.below(126) as u16).to_be_bytes());
            wire.extend_from_slice(&[1, 2, 3, 4]);
            wire
        }
        // Control frames: too long, fragmented; stray or missing continuations.
        16 => match rng.below(4) {
            0 => {
                let len = 126 + rng.below(200) as usize;
                client.masked(&Frame::ping(rng.bytes(len)))
            }
            1 => client.masked(&Frame::new(false, op::PING, "frag")),
            2 => client.masked(&Frame::new(rng.one_in(2), op::CONT, "stray")),
            _ => client.masked_all(&[
                Frame::new(false, op::TEXT, "begun"),
                Frame::new(true, op::BINARY, "interloper"),
            ]),
        },
        // Invalid UTF-8 in text, close payloads of every kind.
        17 => {
            let len = rng.below(50) as usize;
            let mut text = rng.text(len);
            let bad: &[&[u8]] = &[
                b"\xc0\xaf",
                b"\xed\xa0\x80",
                b"\xf4\x90\x80\x80",
                b"\xff",
                b"\xe2\x82",
            ];
            let at = rng.below(text.len() as u64 + 1) as usize;
            text.splice(
                at..at,
                bad[rng.below(bad.len() as u64) as usize].iter().copied(),
            );
            client.masked(&Frame::text(text))
        }
        18 => {
            let payload = match rng.below(6) {
                0 => Vec::new(),
                1 => vec![0x03],
                2 => {
                    Frame::close(
                        [999, 1004, 1005, 1006, 1015, 2999, 5000][rng.below(7) as usize],
                        b"",
                    )
                    .payload
                }
                3 => Frame::close(1000, b"\xff\xfe").payload,
                4 => {
                    Frame::close(
                        [1000, 1001, 1003, 3000, 4999][rng.below(5) as usize],
                        "bye ✓".as_bytes(),
                    )
                    .payload
                }
                _ => {
                    let len = rng.below(140) as usize;
                    Frame::close(1002, &rng.text(len)).payload
                }
            };
            client.masked(&Frame::new(true, op::CLOSE, payload))
        }
        // Garbage, or a frame cut short.
        _ => {
            if rng.one_in(2) {
                let len = 1 + rng.below(64) as usize;
                rng.bytes(len)
            } else {
                let len = rng.len();
                let wire = client.masked(&Frame::binary(rng.bytes(len)));
                wire[..rng.below(wire.len() as u64) as usize].to_vec()
            }
        }
    }
}

/// What the server must send back, in order.
enum Expect {
    /// A data message echoed.
    Echo(u8, Vec<u8>),
    /// A pong with this payload.
    Pong(Vec<u8>),
    /// A Close with this code (`None`: empty), then the end of the connection.
    Close(Option<u16>),
    /// Nothing more; the connection stays open (`true`: mid-frame or mid-message, so no probe).
    Open(bool),
}

impl std::fmt::Debug for Expect {
    /// Lengths instead of payloads, so a failure message stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Echo(opcode, payload) => {
                write!(f, "Echo({opcode:#x}, {} bytes)", payload.len())
            }
            Expect::Pong(payload) => write!(f, "Pong({} bytes)", payload.len()),
            Expect::Close(code) => write!(f, "Close({code:?})"),
            Expect::Open(mid_frame) => write!(f, "Open(mid-frame: {mid_frame})"),
        }
    }
}

/// Runs `wire` through the protocol's receiver with the server's limits: the answers it calls for.
fn expected(wire: &[u8]) -> Vec<Expect> {
    let mut rx = Receiver::new(Role::Server);
    let limits = Limits::default();
    let mut buf = wire.to_vec();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        match rx.read(&mut buf[pos..], &limits) {
            Ok((used, event)) => {
                pos += used;
                match event {
                    Some(Event::Text(s)) => out.push(Expect::Echo(op::TEXT, s.as_bytes().to_vec())),
                    Some(Event::Binary(b)) => out.push(Expect::Echo(op::BINARY, b.to_vec())),
                    Some(Event::Ping(p)) => out.push(Expect::Pong(p.to_vec())),
                    Some(Event::Pong(_)) | None => {}
                    Some(Event::Close(close)) => {
                        out.push(Expect::Close(close.map(|c| c.code.0)));
                        return out;
                    }
                }
            }
            Err(e) => {
                let Reply::Close(code) = e.reply() else {
                    panic!("a frame error without a close code: {e:?}")
                };
                out.push(Expect::Close(Some(code.0)));
                return out;
            }
        }
    }
    out.push(Expect::Open(rx.in_progress()));
    out
}

/// One fuzzed connection: sends up to [`MAX_FRAMES`] random frames in random writes from a second
/// thread and checks every answer. Returns how it ended (`"close 1002"`, `"open"`, ...) and the
/// messages and pongs it got before.
fn fuzz_connection(addr: SocketAddr, rng: &mut Rng, case: &str) -> (String, usize) {
    let mut client = RawClient::connect(addr);
    client.set_timeout(READ_TIMEOUT);
    let frames = 1 + rng.below(MAX_FRAMES);
    let mut wire: Vec<u8> = (0..frames)
        .flat_map(|_| fuzz_frame(rng, &mut client))
        .collect();
    // A third of the connections end with a valid Close (if nothing broke them before).
    if rng.one_in(3) {
        let code = [1000, 1001, 1003, 3000, 4999][rng.below(5) as usize];
        wire.extend(client.masked(&Frame::close(code, b"done")));
    }
    let expect = expected(&wire);

    let mut writer = client.try_clone_stream();
    let cuts: Vec<usize> = (0..16).map(|_| 1 + rng.below(4096) as usize).collect();
    let sender = thread::spawn(move || {
        use std::io::Write;
        let mut rest = &wire[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (part, tail) = rest.split_at((*cut).min(rest.len()));
            // The server may close first (after an error or a Close): stop writing then.
            if writer.write_all(part).is_err() {
                break;
            }
            rest = tail;
        }
    });

    for (i, want) in expect.iter().enumerate() {
        let context = || format!("{case}, answer {i} of {expect:?}");
        match want {
            Expect::Echo(opcode, payload) => {
                let (got_op, got) = client.expect_message();
                assert_eq!(got_op, *opcode, "{}", context());
                assert!(got == *payload, "echo differs: {}", context());
            }
            Expect::Pong(payload) => {
                let frame = client.expect_frame();
                assert_eq!(frame.opcode, op::PONG, "{frame:?}: {}", context());
                assert!(frame.payload == *payload, "pong payload: {}", context());
            }
            Expect::Close(code) => {
                let frame = client.expect_frame();
                assert_eq!(frame.opcode, op::CLOSE, "{frame:?}: {}", context());
                assert_eq!(frame.close_code(), *code, "{}", context());
                sender.join().expect("sender");
                let reply = client.masked(&Frame::close(code.unwrap_or(1000), b""));
                let _ = client.try_write(&reply);
                client.expect_closed();
                return (format!("close {code:?}"), i);
            }
            Expect::Open(mid_frame) => {
                sender.join().expect("sender");
                if !mid_frame {
                    client.send(&Frame::ping("still there?"));
                    client.expect_pong(b"still there?");
                    client.close_normally();
                }
                let how = if *mid_frame { "open mid-frame" } else { "open" };
                return (how.to_string(), i);
            }
        }
    }
    unreachable!("the expectations end with Close or Open");
}

#[test]
fn random_and_mutated_frames_from_many_connections() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    fuzz(&mut server, addr, CONNECTIONS);
}

#[test]
fn random_and_mutated_frames_over_tls() {
    let certs = Certs::new("netfuzz", "localhost");
    let args = certs.args();
    let mut server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let relay = TlsRelay::start(server.addr, &certs.ca_der);
    fuzz(&mut server, relay.addr, TLS_CONNECTIONS);
}

/// Runs [`CLIENTS`] fuzzing clients of `connections` connections each against `server`, reached at
/// `addr` (the server itself, or a TLS relay in front of it), with a control client echoing
/// throughout, and checks the mix of endings.
fn fuzz(server: &mut Server, addr: SocketAddr, connections: u64) {
    let seed = std::env::var("RINGWS_NETFUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_6455);
    eprintln!("netfuzz seed {seed} (set RINGWS_NETFUZZ_SEED to rerun another)");
    let control = BackgroundEchoer::start(addr);

    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let answers = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|s| {
        let (outcomes, answers) = (&outcomes, &answers);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                s.spawn(move || {
                    for conn in 0..connections {
                        let mut rng =
                            Rng(seed ^ (client << 32 | conn).wrapping_mul(0x2545_f491_4f6c_dd1d));
                        let case = format!("seed {seed}, client {client}, connection {conn}");
                        let (how, n) = fuzz_connection(addr, &mut rng, &case);
                        *outcomes.lock().unwrap().entry(how).or_default() += 1;
                        answers.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for c in clients {
            if let Err(panic) = c.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });

    let echoes = control.finish();
    assert!(server.is_running(), "the server exited");
    let outcomes = outcomes.into_inner().unwrap();
    eprintln!(
        "{} fuzzed connections answered as the protocol prescribes ({} echoes and pongs; endings: {outcomes:?}); control client echoed {echoes} messages",
        CLIENTS * connections,
        answers.into_inner()
    );
    // The mix exercised what it is meant to: errors of every kind, clean closes, open connections.
    let count = |endings: &[&str]| {
        endings
            .iter()
            .filter_map(|e| outcomes.get(*e))
            .sum::<usize>()
    };
    for endings in [
        &["close Some(1002)"][..],
        &["close Some(1007)"],
        &["close Some(1009)"],
        &[
            "close Some(1000)",
            "close Some(1001)",
            "close Some(1003)",
            "close Some(3000)",
            "close Some(4999)",
        ],
        &["open", "open mid-frame"],
    ] {
        assert!(
            count(endings) >= 3,
            "too few endings {endings:?}: {outcomes:?}"
        );
    }
}
