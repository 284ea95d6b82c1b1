//! Connection and traffic limits of `ringws serve` against the real binary: each test pushes one
//! client over one limit, checks the documented answer (HTTP status before the request is read, or
//! the close code), and checks that a well-behaved client of the same server is unaffected.

mod common;

use common::{Frame, HttpResponse, RawClient, Server, eventually, op};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Sends nothing on `stream` and returns the status the server answers with (bounded wait).
fn status_of(mut stream: TcpStream) -> u16 {
    stream
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the refusal: {e}"),
        }
    }
    HttpResponse::parse(&String::from_utf8_lossy(&got)).status
}

/// Opens a TCP connection, sends nothing, and returns the status the server answers with.
fn status_without_request(addr: SocketAddr) -> u16 {
    status_of(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
}

/// Retries an upgrade until it is accepted (a released slot is uncounted once the server has seen
/// the client's FIN; nothing outside the server says when that was), for at most 5 s.
fn connect_eventually(addr: SocketAddr) -> RawClient {
    let mut admitted = None;
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        let mut c = RawClient::tcp(addr);
        c.write(common::upgrade_request(addr).as_bytes());
        last = c.read_http_head();
        if HttpResponse::parse(&last).status == 101 {
            admitted = Some(c);
        }
        admitted.is_some()
    });
    assert!(ok, "still refused after 5 s:\n{last}");
    admitted.expect("admitted")
}

#[test]
fn per_worker_limit_answers_503_before_the_request() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut a = RawClient::connect(server.addr);
    let mut b = RawClient::connect(server.addr);
    assert_eq!(status_without_request(server.addr), 503);
    a.echo(Frame::text("a still served"));
    b.echo(Frame::text("b still served"));
}

#[test]
fn global_limit_counts_every_worker_and_frees_on_close() {
    let server = Server::start(&["--workers", "2", "--max-total-connections", "3"]);
    let mut open: Vec<RawClient> = (0..3).map(|_| RawClient::connect(server.addr)).collect();
    // Whichever worker the kernel hands them to, the fourth and fifth are refused.
    assert_eq!(status_without_request(server.addr), 503);
    assert_eq!(status_without_request(server.addr), 503);
    for (i, c) in open.iter_mut().enumerate() {
        c.echo(Frame::text(format!("client {i}")));
    }
    open.pop().unwrap().close_normally();
    let mut again = connect_eventually(server.addr);
    again.echo(Frame::text("admitted after a close"));
}

/// Connects from `source` (a loopback address) to `addr`.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SockAddr::from(SocketAddr::from((source, 0))))
        .expect("bind a loopback source address");
    s.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))
        .expect("connect");
    s.into()
}

#[test]
fn per_address_limit_answers_429_and_spares_other_addresses() {
    let server = Server::start(&["--workers", "2", "--max-connections-per-ip", "2"]);
    let mut a = RawClient::connect_stream(connect_from([127, 0, 0, 1], server.addr));
    let _b = RawClient::connect_stream(connect_from([127, 0, 0, 1], server.addr));
    assert_eq!(status_of(connect_from([127, 0, 0, 1], server.addr)), 429);
    let mut other = RawClient::connect_stream(connect_from([127, 0, 0, 2], server.addr));
    other.echo(Frame::text("another address"));
    a.echo(Frame::text("first client still served"));
}

#[test]
fn message_flood_is_closed_with_1008_and_a_paced_client_is_not() {
    let server = Server::start(&["--message-rate", "20", "--message-burst", "10"]);
    let mut flood = RawClient::connect(server.addr);
    let mut paced = RawClient::connect(server.addr);
    let frames: Vec<Frame> = (0..100).map(|i| Frame::text(format!("m{i}"))).collect();
    flood.send_all(&frames);
    let mut echoed = 0;
    let close = loop {
        let f = flood.expect_frame();
        match f.opcode {
            op::TEXT => {
                assert_eq!(f.payload, format!("m{echoed}").as_bytes());
                echoed += 1;
            }
            op::CLOSE => break f,
            other => panic!("unexpected opcode {other:#x}"),
        }
    };
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    assert!(
        (10..=12).contains(&echoed),
        "{echoed} messages echoed before the close, want the burst of 10 (+ refill)"
    );
    // 15 messages at 10 per second: under the rate, all echoed.
    for i in 0..15 {
        paced.echo(Frame::text(format!("paced {i}")));
        // Paces the client: 10 messages a second, under the rate of 20.
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn ping_flood_is_ignored_then_closed_and_a_normal_pinger_is_answered() {
    let server = Server::start(&["--ping-rate", "10", "--ping-burst", "20"]);
    let mut flood = RawClient::connect(server.addr);
    let mut normal = RawClient::connect(server.addr);
    let pings: Vec<Frame> = (0..30).map(|i| Frame::ping(format!("p{i}"))).collect();
    flood.send_all(&pings);
    // The burst is answered, the excess ignored: then an echo shows the connection is still open
    // and nothing else was queued before it.
    let mut pongs = 0;
    flood.send(&Frame::text("still open?"));
    loop {
        let f = flood.expect_frame();
        match f.opcode {
            op::PONG => pongs += 1,
            op::TEXT => break,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    assert!(
        (20..=22).contains(&pongs),
        "{pongs} of 30 pings answered, want the burst of 20 (+ refill)"
    );
    // Keeping it up: another burst of excess closes the connection.
    flood.send_all(&pings);
    let close = loop {
        let f = flood.expect_frame();
        match f.opcode {
            op::PONG => pongs += 1,
            op::CLOSE => break f,
            other => panic!("unexpected opcode {other:#x}"),
        }
    };
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    assert!(pongs <= 25, "{pongs} pongs for 60 pings");
    for i in 0..10 {
        normal.send(&Frame::ping(format!("n{i}")));
        normal.expect_pong(format!("n{i}").as_bytes());
        // Paces the pinger: under 7 pings a second, within the rate of 10.
        sleep(Duration::from_millis(150));
    }
}

#[test]
fn assembly_memory_cap_closes_the_connection_that_passes_it_with_1009() {
    // 1 MiB per message, 1 MiB of partial messages over all connections.
    let server = Server::start(&[
        "--max-message-size",
        "1048576",
        "--max-assembly-memory",
        "1048576",
    ]);
    let mut holder = RawClient::connect(server.addr);
    let mut hog = RawClient::connect(server.addr);
    let first = common::bytes(400 << 10, 1);
    // The server has taken in the holder's 400 KiB before the hog starts: it answers the ping sent
    // after them.
    holder.send_all(&[
        Frame::new(false, op::BINARY, first.clone()),
        Frame::ping("taken"),
    ]);
    holder.expect_pong(b"taken");
    hog.send(&Frame::new(false, op::BINARY, common::bytes(700 << 10, 2)));
    hog.expect_close(Some(1009));
    // The holder finishes its message, unaffected.
    holder.send(&Frame::new(true, op::CONT, b"end".to_vec()));
    let mut want = first;
    want.extend_from_slice(b"end");
    holder.expect_binary(&want);
    // With the holder's buffer freed, a 700 KiB message fits again.
    let mut next = RawClient::connect(server.addr);
    let big = common::bytes(700 << 10, 3);
    next.send_all(&[
        Frame::new(false, op::BINARY, big[..350 << 10].to_vec()),
        Frame::new(true, op::CONT, big[350 << 10..].to_vec()),
    ]);
    next.expect_binary(&big);
}

#[test]
fn unfinished_message_times_out_with_1008() {
    let server = Server::start(&["--message-timeout", "1"]);
    let mut stalled = RawClient::connect(server.addr);
    let mut slow = RawClient::connect(server.addr);
    let mut half_header = RawClient::connect(server.addr);
    let started = Instant::now();
    stalled.send(&Frame::new(false, op::TEXT, b"never ".to_vec()));
    // A frame header cut in two counts as a message in progress too.
    let wire = half_header.masked(&Frame::text("x"));
    half_header.write(&wire[..1]);
    // Fragments 200 ms apart, done in 600 ms: within the timeout.
    for (i, part) in ["slow ", "but ", "in "].iter().enumerate() {
        slow.send(&Frame::new(
            false,
            if i == 0 { op::TEXT } else { op::CONT },
            part.as_bytes().to_vec(),
        ));
        // Paces the slow client's fragments (the scenario), not a wait for the server.
        sleep(Duration::from_millis(200));
    }
    slow.send(&Frame::new(true, op::CONT, b"time".to_vec()));
    slow.expect_text(b"slow but in time");
    stalled.expect_close(Some(1008));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "closed after {waited:?}, want about 1 s"
    );
    half_header.expect_close(Some(1008));
    slow.echo(Frame::text("and still open"));
}
