//! The ring's fallback task-run modes: a kernel without `DEFER_TASKRUN` (6.1) gets `COOP_TASKRUN`
//! (5.19), one without that a plain ring. This machine has everything, so the diagnostic knob
//! `RINGWS_RING_MODE` caps the mode; each mode must serve exactly like the default one: upgrade,
//! echo of small and buffer-spanning messages, ping/pong, close handshake, graceful exit on SIGTERM.
//! The receive-buffer paths get the same check with each setting: incremental buffer consumption
//! (`--incremental-buffers`, Linux 6.12) on and off, and a pool small enough to run dry, under many
//! connections whose receives share buffers. The newer ring paths get it too, each on and off: a
//! ring without the submission queue's index array (`--no-sq-array`, Linux 6.6) and cancels that
//! post no completion when they succeed (`--skip-cancel-completions`; every close cancels a
//! receive, the shutdown cancels the accept), waits that hold out for a batch of completions
//! (`--batch-wait`), and connections served through direct descriptors (`--direct-descriptors`,
//! Linux 5.19), whose ring file table must let go of every socket that closes (read from the
//! ring's `/proc/PID/fdinfo`), and zero-copy sends (`--send-zc-threshold`, Linux 6.0), whose
//! memory must stay the kernel's until each send's notification and which the metrics must count,
//! copies included (over loopback the kernel copies every one). Receive bundles (`--recv-bundles`,
//! Linux 6.10) get it with either buffer consumption, plus bursts of large messages that make
//! completions span several buffers (counted by `ringws_receive_bundles_total`, which must move).

mod common;

use common::{binary, bytes, text};
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A server process, killed (and reaped) if the test ends before it exited.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `ringws serve` on a free port with `RINGWS_RING_MODE=mode` and `extra` options; returns
/// the child, its address and the stderr lines printed up to the ready line.
fn start(mode: &str, extra: &[&str]) -> (Served, SocketAddr, Vec<String>) {
    let child = Command::new(binary())
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--drain-delay",
            "0",
        ])
        .args(extra)
        .env("RINGWS_RING_MODE", mode)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringws serve");
    let mut child = Served(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("no ready line; printed:\n{}", lines.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("listening on ") {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            lines.push(line);
            return (child, addr, lines);
        }
        lines.push(line);
    }
}

async fn exercise(addr: SocketAddr) {
    crowd(addr).await;
    let mut ws = common::ws_connect(addr).await;
    for i in 0..50u8 {
        let small = text(1 + i as usize * 7, i);
        ws.send(Message::text(small.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(small));
    }
    // Larger than a receive buffer (32 KiB): the frame spans several completions.
    let big = bytes(300_000, 3);
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Ping(b"mode".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"mode".to_vec().into())
    );
    ws.close(None).await.unwrap();
    // The server answers the close and ends the stream.
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected after close: {other:?}"),
            Err(_) => break,
        }
    }
}

/// 200 connections at once, each echoing 20 messages of its own content (sizes from 1 byte to
/// 20 KB) with all of them sending between replies: receives of many connections land in the same
/// loop turns (and, with incremental consumption, in the same buffer), and a small pool runs dry.
async fn crowd(addr: SocketAddr) {
    let clients = (0..200usize).map(|c| async move {
        let mut ws = common::ws_connect(addr).await;
        for i in 0..20usize {
            let len = 1 + (c * 37 + i * 1009) % 20_000;
            let m = bytes(len, (c + i) as u8);
            ws.send(Message::binary(m.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(m));
        }
        ws.close(None).await.unwrap();
    });
    futures_util::future::join_all(clients).await;
}

fn serve_in(mode: &str, expect_line: &str) {
    serve_with(mode, &[], expect_line);
}

fn serve_with(mode: &str, extra: &[&str], expect_line: &str) {
    serve_and_check(mode, extra, expect_line, || {});
}

/// [`serve_with`], and `check` once the exchange is over, while the server still runs.
fn serve_and_check(mode: &str, extra: &[&str], expect_line: &str, check: impl FnOnce()) {
    let (mut child, addr, lines) = start(mode, extra);
    assert!(
        lines.iter().any(|l| l.contains(expect_line)),
        "mode {mode}: expected a line with {expect_line:?}; printed:\n{}",
        lines.join("\n")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), exercise(addr)).await })
        .unwrap_or_else(|_| panic!("mode {mode}: the exchange timed out"));
    check();
    terminate(&mut child, &format!("mode {mode}"));
}

/// Sends SIGTERM to the server and requires a clean exit (the graceful drain) within 15 s.
fn terminate(child: &mut Served, what: &str) {
    // SAFETY: signals the child we spawned and have not waited for.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    let exited = common::eventually(Duration::from_secs(15), || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "{what}: no exit after SIGTERM");
    let status = status.unwrap();
    assert!(status.success(), "{what}: exit {status}");
}

#[test]
fn cooperative_task_run_serves() {
    serve_in("cooperative", "mode=Cooperative");
}

#[test]
fn plain_ring_serves() {
    serve_in("plain", "mode=Plain");
}

#[test]
fn incremental_buffer_consumption_serves() {
    serve_with(
        "deferred",
        &["--incremental-buffers", "true"],
        "listening on",
    );
}

#[test]
fn whole_buffers_per_receive_serve() {
    serve_with(
        "deferred",
        &["--incremental-buffers", "false"],
        "listening on",
    );
}

#[test]
fn a_pool_that_runs_dry_serves_with_either_consumption() {
    for inc in ["true", "false"] {
        serve_with(
            "deferred",
            &["--incremental-buffers", inc, "--buffer-count", "16"],
            "listening on",
        );
    }
}

#[test]
fn a_ring_with_and_without_the_sq_index_array_serves() {
    for on in ["true", "false"] {
        serve_with("deferred", &["--no-sq-array", on], "listening on");
    }
}

#[test]
fn cancels_with_and_without_completions_on_success_serve() {
    for on in ["true", "false"] {
        serve_with(
            "deferred",
            &["--skip-cancel-completions", on],
            "listening on",
        );
    }
}

/// Batched waits (`--batch-wait`, `IORING_FEAT_MIN_TIMEOUT`, Linux 6.12), in each task-run mode:
/// the usual exchange, then a lone client's 300 round trips. A worker holding out for 16
/// completions sees one at a time from that client, so each wait must end by its batch time (2 ms
/// here); a wait that ignored it would last until enough of the worker's ticks came in (about
/// 200 ms per round trip, a minute in all) and the 20 s bound would fail the test.
#[test]
fn batched_waits_serve() {
    for mode in ["deferred", "cooperative"] {
        serve_with(mode, &["--batch-wait", "2000"], "listening on");
        let (_child, addr, _) = start(mode, &["--batch-wait", "2000"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lone = async {
            let mut ws = common::ws_connect(addr).await;
            for i in 0..300usize {
                let m = text(1 + i % 50, i as u8);
                ws.send(Message::text(m.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m));
            }
        };
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), lone).await })
            .unwrap_or_else(|_| panic!("mode {mode}: a lone client waited for whole batches"));
    }
}

#[test]
fn connections_with_and_without_direct_descriptors_serve() {
    for on in ["true", "false"] {
        serve_with("deferred", &["--direct-descriptors", on], "listening on");
    }
}

#[test]
fn zero_copy_sends_serve_and_count_what_the_kernel_copied() {
    // Every send of at least one byte goes zero-copy, plain and vectored (the 300 KB echo is a
    // header and a payload), with many connections at once; the echoes are checked byte for byte.
    let admin = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let admin_arg = admin.to_string();
    let extra = ["--send-zc-threshold", "1", "--admin-addr", &admin_arg];
    serve_and_check("deferred", &extra, "listening on", || {
        let (mut sends, mut copied) = (0.0, -1.0);
        // Counted at each send's notification, which may come after the echo it sent.
        let counted = common::eventually(Duration::from_secs(10), || {
            sends = metric(admin, "ringws_zero_copy_sends_total");
            copied = metric(admin, "ringws_zero_copy_copied_total");
            // 200 connections x (101 + 20 echoes), and the lone connection's 50 + 2 messages.
            sends >= 4_252.0 && copied == sends
        });
        assert!(
            counted,
            "zero-copy sends {sends}, of which the kernel copied {copied}: expected every \
             upgrade and echo, all copied over loopback"
        );
    });
}

/// The distinct sockets installed in the file tables of process `pid`'s rings (the `UserFiles`
/// entries of each io_uring descriptor's fdinfo; a ring's second descriptor, which other workers
/// wake it through, lists the same table).
fn installed_sockets(pid: u32) -> usize {
    let mut sockets = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_ring =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("io_uring"));
        if !is_ring {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(info) = std::fs::read_to_string(info) else {
            continue;
        };
        sockets.extend(
            info.lines()
                .skip_while(|l| !l.starts_with("UserFiles:"))
                .skip(1)
                .take_while(|l| l.starts_with(char::is_whitespace))
                .filter_map(|l| l.split_once("socket:").map(|(_, s)| s.to_string())),
        );
    }
    sockets.len()
}

#[test]
fn direct_descriptors_are_installed_while_open_and_cleared_on_close() {
    for (on, expect) in [("true", 20), ("false", 0)] {
        let (mut child, addr, _) = start("deferred", &["--direct-descriptors", on]);
        let pid = child.0.id();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut open = Vec::new();
            for i in 0..20u8 {
                let mut ws = common::ws_connect(addr).await;
                // Echoed: the connection is upgraded and served.
                ws.send(Message::binary(bytes(100, i))).await.unwrap();
                assert_eq!(
                    ws.next().await.unwrap().unwrap(),
                    Message::binary(bytes(100, i))
                );
                open.push(ws);
            }
            // Each open connection's socket is installed in its ring's table (or none is).
            let seen = installed_sockets(pid);
            assert_eq!(
                seen, expect,
                "direct descriptors {on}: sockets installed with 20 open"
            );
            for mut ws in open {
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
        // Every closed connection's entry is cleared: the table holds no socket open.
        let cleared = common::eventually(Duration::from_secs(10), || installed_sockets(pid) == 0);
        assert!(
            cleared,
            "direct descriptors {on}: entries left after every close"
        );
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
}

/// `len` bytes that number themselves: every 8 bytes hold `seed` and their own offset, so bytes
/// delivered out of order (a bundle's buffers misplaced) never match, however far apart.
fn numbered(len: usize, seed: u8) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|i| ((u64::from(seed) << 48) | i as u64).to_le_bytes())
        .take(len)
        .collect()
}

/// Four connections at once, each sending 24 messages of 1 KiB to 1 MiB back to back while it
/// reads the echoes: a lot waits in each socket while the one worker serves the others, so
/// completions carry several buffers. Every echo is compared byte for byte.
async fn bursts(addr: SocketAddr) {
    const SIZES: [usize; 6] = [1 << 10, 3000, (16 << 10) + 7, 64 << 10, 250_000, 1 << 20];
    let clients = (0..4u8).map(|c| async move {
        let ws = common::ws_connect(addr).await;
        let (mut tx, mut rx) = ws.split();
        let messages: Vec<Vec<u8>> = (0..24)
            .map(|i| numbered(SIZES[(i + c as usize) % SIZES.len()], c * 24 + i as u8))
            .collect();
        let send = async {
            for m in &messages {
                tx.send(Message::binary(m.clone())).await.unwrap();
            }
            tx
        };
        let receive = async {
            for (i, m) in messages.iter().enumerate() {
                match rx.next().await {
                    Some(Ok(Message::Binary(got))) => assert!(
                        got[..] == m[..],
                        "connection {c}, message {i} ({} bytes): the echo differs",
                        m.len()
                    ),
                    other => panic!("connection {c}, message {i}: {other:?}"),
                }
            }
        };
        let (mut tx, ()) = tokio::join!(send, receive);
        tx.close().await.unwrap();
    });
    futures_util::future::join_all(clients).await;
}

/// The usual exchange, then the bursts of large messages, against the server at `addr` (`what`
/// names the setup in a timeout's message); everything echoed within 120 s.
fn exchange_and_bursts(addr: SocketAddr, what: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            exercise(addr).await;
            bursts(addr).await;
        })
        .await
    })
    .unwrap_or_else(|_| panic!("{what}: the exchange timed out"));
}

/// The sum of `name`'s samples in the `/metrics` served at `addr`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Some((200, text)) = common::brokers::get(addr, "/metrics") else {
        panic!("GET /metrics from {addr} failed");
    };
    common::brokers::metric(&text, name)
}

/// Receive bundles with incremental consumption on and off: the usual exchange, then bursts of
/// large messages echoed byte for byte; completions that carried several buffers must have
/// happened (a server that did not arm bundles, or fell back without them, counts none), and none
/// may be refused by the pool's accounting (the connection would be aborted and its echoes lost).
#[test]
fn receive_bundles_serve_with_either_consumption() {
    for inc in ["true", "false"] {
        let args = [
            "--recv-bundles",
            "true",
            "--incremental-buffers",
            inc,
            "--max-backpressure",
            "268435456",
        ];
        let (mut child, addr, lines) = start("deferred", &args);
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("receive bundles unavailable")),
            "incremental {inc}: bundles refused on this kernel:\n{}",
            lines.join("\n")
        );
        exchange_and_bursts(addr, &format!("incremental {inc}"));
        let bundles = metric(addr, "ringws_receive_bundles_total");
        assert!(
            bundles > 0.0,
            "incremental {inc}: no completion carried several buffers"
        );
        println!("incremental {inc}: {bundles} receive completions carried several buffers");
        terminate(&mut child, &format!("incremental {inc}"));
    }
}

/// Large frames received straight into their message's buffer under each way the worker receives:
/// incremental and whole buffers, direct descriptors, receive bundles. `--recv-into-threshold 1`
/// switches every frame that is still incomplete after a completion, so the switch (cancel, the
/// multishot receive's last completion, the one-shot receive, back to multishot at the frame's
/// end) happens in the middle of every kind of traffic the exchange and the bursts make; every
/// echo is compared byte for byte, and a 1 MiB frame written piece by piece must have been received
/// into its buffer.
#[test]
fn large_frames_received_into_their_buffer_serve_in_every_receive_setup() {
    let setups: [&[&str]; 4] = [
        &["--incremental-buffers", "true"],
        &["--incremental-buffers", "false"],
        &["--direct-descriptors", "true"],
        &["--recv-bundles", "true"],
    ];
    for setup in setups {
        let what = setup.join(" ");
        let args = [
            setup,
            &[
                "--recv-into-threshold",
                "1",
                "--max-backpressure",
                "268435456",
            ],
        ]
        .concat();
        let (mut child, addr, _) = start("deferred", &args);
        exchange_and_bursts(addr, &what);
        // A frame that arrives piece by piece is always received into its buffer after the switch.
        let mut client = common::RawClient::connect(addr);
        let paced = numbered(1 << 20, 99);
        let wire = client.masked(&common::Frame::binary(paced.clone()));
        client.write_paced(addr, &wire);
        client.expect_binary(&paced);
        client.close_normally();
        let landed = metric(addr, "ringws_received_into_message_total");
        assert!(landed > 0.0, "{what}: nothing was received into a message");
        println!("{what}: {landed} receives straight into a message");
        terminate(&mut child, &what);
    }
}
