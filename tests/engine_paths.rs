//! Engine paths that only show under resource pressure, driven from outside against the real
//! `ringws serve`: accepting when the process runs out of file descriptors (the accept pause),
//! a submission queue far smaller than the work of one turn (early submission), and exiting while
//! sends are still in flight (second SIGTERM, and the drain timeout).
//!
//! Each test is bounded: every wait has a deadline, every loop a count.

mod common;

use common::{Frame, RawClient, Server, bytes, eventually, op, upgrade_request};
use socket2::{Domain, Socket, Type};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// The server's open file descriptors numbered below `limit` (entries of `/proc/<pid>/fd`): those
/// that count against an `RLIMIT_NOFILE` of `limit`. (Descriptors the server inherited above it,
/// such as the jobserver pipe cargo passes down, stay open but take no room.)
fn fds_below(server: &Server, limit: u64) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("/proc/<pid>/fd of the server")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&fd| fd < limit)
        .count()
}

/// A command tweak for [`Server::start_with`]: `RLIMIT_NOFILE` of the server set to `limit` (soft
/// and hard) between fork and exec.
fn nofile(limit: u64) -> impl Fn(&mut Command) {
    move |cmd| {
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: the hook runs in the child between fork and exec and only calls setrlimit, which
        // is async-signal-safe, on a copy of `rl`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

/// With `RLIMIT_NOFILE` 64 and more connections than that holds: accept fails with EMFILE, the
/// server logs it and pauses accepting instead of dying or spinning, keeps serving the connections
/// it holds, and once clients disconnect it accepts again (the queued connections are taken and
/// cleaned up, and a new client is served).
#[test]
fn accept_pauses_when_descriptors_run_out_and_resumes() {
    const LIMIT: u64 = 64;
    const EXTRA: usize = 24;
    let mut server = Server::start_with(&[], nofile(LIMIT));
    let addr = server.addr;
    let fd_count = |server: &Server| fds_below(server, LIMIT);
    let base = fd_count(&server);
    assert!(
        base + 8 < LIMIT as usize,
        "the idle server already holds {base} descriptors of its {LIMIT}"
    );
    let room = LIMIT as usize - base;

    // More connections than the server has descriptors for. Each sends its upgrade request at once:
    // the kernel completes TCP handshakes and queues requests for connections not accepted yet.
    let request = upgrade_request(addr);
    let mut clients: Vec<RawClient> = (0..room + EXTRA)
        .map(|_| {
            let mut c = RawClient::tcp(addr);
            c.write(request.as_bytes());
            c
        })
        .collect();

    // Accept fails for lack of descriptors; the server says so and pauses.
    assert!(
        eventually(Duration::from_secs(10), || server
            .log()
            .contains("accept failed; pausing accepts")),
        "no accept failure logged with {} connections and {room} free descriptors",
        room + EXTRA
    );
    let log = server.log();
    assert!(
        log.contains("Too many open files"),
        "the accept failure is not EMFILE:\n{log}"
    );
    assert_eq!(
        fd_count(&server),
        LIMIT as usize,
        "descriptors in use when accept failed"
    );
    assert!(server.is_running(), "the server died out of descriptors");

    // The connections it accepted (the first ones: the accept queue is in order) are served while
    // it is out of descriptors.
    for (i, c) in clients.iter_mut().take(room / 2).enumerate() {
        let head = c.read_http_head();
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "client {i} of the first {}: {head:?}",
            room / 2
        );
        c.echo(Frame::text(format!("held {i}")));
    }
    assert!(server.is_running(), "the server died out of descriptors");

    // Every client leaves; the server frees their descriptors and takes (and cleans up) the
    // connections that waited in the accept queue.
    drop(clients);
    assert!(
        eventually(Duration::from_secs(20), || fd_count(&server) <= base),
        "{} descriptors after every client left, {base} before",
        fd_count(&server)
    );
    // And accepts again: a new client is served.
    let mut c = RawClient::connect(addr);
    c.echo(Frame::text("after the pause"));
    c.close_normally();
    assert!(server.is_running(), "the server died");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// With the smallest submission queue (8 entries) and 300 connections each sending a ping and a
/// message at once, one turn of the server has far more operations to submit than the queue holds:
/// it must submit early and go on, so that every pong and every echo comes back, intact and in
/// order; so must 300 simultaneous close handshakes.
#[test]
fn a_full_submission_queue_is_submitted_early_and_nothing_is_lost() {
    const CONNS: usize = 300;
    let server = Server::start(&["--ring-entries", "8"]);
    let mut clients: Vec<RawClient> = (0..CONNS)
        .map(|_| RawClient::connect(server.addr))
        .collect();
    // Sizes below, at and above one 32 KiB receive buffer.
    for (round, size) in [10usize, 5000, 40_000].into_iter().enumerate() {
        // Everything written before anything is read: the server sees all of it in a few turns.
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_all(&[
                Frame::ping(format!("{round}:{i}")),
                Frame::binary(bytes(size, (i + round) as u8)),
            ]);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.expect_pong(format!("{round}:{i}").as_bytes());
            c.expect_binary(&bytes(size, (i + round) as u8));
        }
    }
    for c in &mut clients {
        c.send(&Frame::close(1000, b""));
    }
    for c in &mut clients {
        c.expect_close_frame(Some(1000));
        c.expect_closed();
    }
    let mut last = RawClient::connect(server.addr);
    last.echo(Frame::text("still serving"));
    last.close_normally();
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Clients of a server whose sends cannot complete: each sent a 1 MiB message and reads nothing,
/// with a tiny receive buffer, while the server's send buffers are tiny too. Once the echo has
/// started arriving at every client, all but a few KiB of each echo is queued in the server with
/// a send in flight.
fn stuck_clients(server: &Server, n: usize) -> Vec<RawClient> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&server.addr.into(), Duration::from_secs(5))
            .expect("connect");
        let mut c = RawClient::connect_stream(socket.into());
        c.send(&Frame::binary(bytes(1 << 20, i as u8)));
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            c.wait_readable(common::READ_TIMEOUT),
            "the echo to client {i} never started"
        );
    }
    clients
}

/// The options of a server whose sends to a client that does not read stay in flight.
/// A small send buffer, and no drain delay: these tests are about the shutdown itself (the drain
/// before it is tests/ops.rs's).
const SMALL_SEND_BUFFER: [&str; 4] = ["--send-buffer", "4096", "--drain-delay", "0"];

/// Logs the server's info lines too (the signals it takes: `shutting down`, `shutting down now`).
fn info_log(cmd: &mut Command) {
    cmd.env("RUST_LOG", "warn,ringws_engine::server=info");
}

/// SIGTERM while sends are in flight to clients that do not read starts the drain (Close 1001
/// queued behind the echoes, which cannot complete); a second SIGTERM forces the connections
/// closed with their operations still in flight. The process exits, with status 0, not a crash.
#[test]
fn a_second_sigterm_exits_with_sends_in_flight() {
    const CLIENTS: usize = 16;
    let mut server = Server::start_with(&SMALL_SEND_BUFFER, info_log);
    let clients = stuck_clients(&server, CLIENTS);
    let unread: usize = clients.iter().map(RawClient::unread).sum();
    assert!(
        unread < CLIENTS << 19,
        "{unread} bytes already delivered: the echoes are not held back"
    );

    server.signal(libc::SIGTERM);
    assert!(
        eventually(Duration::from_secs(10), || server
            .log()
            .contains("shutting down")),
        "the first SIGTERM was not taken"
    );
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    let log = server.log();
    assert!(
        log.contains("shutting down now"),
        "the second SIGTERM was not taken by the running server:\n{log}"
    );
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 within 10 s of the second SIGTERM, got {status:?}:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(clients);
}

/// The same stuck sends with a single SIGTERM: the drain cannot finish, the shutdown timeout (5 s)
/// forces the connections closed with their sends in flight, and the process exits with status 0.
#[test]
fn the_drain_timeout_exits_with_sends_in_flight() {
    const CLIENTS: usize = 16;
    let mut server = Server::start(&SMALL_SEND_BUFFER);
    let mut clients = stuck_clients(&server, CLIENTS);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    let log = server.log();
    assert!(
        log.contains("shutdown drain timed out"),
        "the drain did not time out:\n{log}"
    );
    assert!(
        matches!(status, Some(s) if s.success()),
        "expected exit status 0 within 20 s of SIGTERM, got {status:?}:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // What the clients got is an intact prefix of their echo, then the end of the connection.
    for (i, c) in clients.iter_mut().enumerate() {
        match c.read_frame() {
            Err(common::ReadError::Eof | common::ReadError::Reset) => {}
            Ok(f) if f.opcode == op::BINARY => {
                panic!("client {i} got its whole echo though it never read: {f:?}")
            }
            other => panic!("client {i}: {other:?}"),
        }
    }
}
