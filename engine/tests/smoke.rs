//! End-to-end smoke tests: a server in-process on 127.0.0.1, clients on plain `TcpStream`s with
//! hand-built masked frames.

use ringws_engine::{
    BackpressurePolicy, CloseCode, CloseStatus, ConnId, Decision, Handler, HttpResponse,
    HttpStatus, Message, MessageKind, Request, SendResult, Server, ServerBuilder, ServerHandle,
    Socket,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Echoes messages; answers `/status` (not `/health`, which the engine's ops endpoints answer
/// before `on_http`); refuses `/forbidden`; `close-me` closes with 4000; `panic` panics.
struct Echo;

impl Handler for Echo {
    type State = u32;

    fn on_upgrade<'r>(&mut self, req: &Request<'r>) -> Decision<'r, u32> {
        if req.path() == "/forbidden" {
            return Decision::reject(403);
        }
        if req.path() == "/unoffered" {
            // Selecting a subprotocol the client did not offer: the engine selects none.
            return Decision::Accept {
                protocol: Some("x-never-offered"),
                state: 0,
            };
        }
        let protocol = req.subprotocols().find(|p| *p == "chat");
        Decision::Accept { protocol, state: 0 }
    }

    fn on_message(&mut self, ws: &mut Socket<'_, u32>, msg: Message<'_>) {
        *ws.state_mut() += 1;
        match msg {
            Message::Text("close-me") => ws.close(CloseCode(4000), "as asked"),
            Message::Text("panic") => panic!("asked to panic"),
            Message::Text("count") => {
                let n = ws.state().to_string();
                let _ = ws.send_text(&n);
            }
            msg => {
                let _ = ws.send(msg);
            }
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> HttpResponse {
        match req.path() {
            "/status" => HttpResponse::text(200, "ok"),
            _ => HttpResponse::new(404),
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    /// The admin listener, if configured.
    admin: Option<SocketAddr>,
    handle: ServerHandle,
    /// The server thread, and a receiver that disconnects when it ends (returned or panicked).
    thread: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
}

impl TestServer {
    fn start(tune: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        Self::start_with(|_| Echo, tune)
    }

    fn start_with<H: Handler>(
        factory: impl Fn(usize) -> H + Send + Sync + 'static,
        tune: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        let builder = Server::builder()
            .bind("127.0.0.1:0")
            .workers(1)
            .pin_workers(false)
            .handle_signals(false)
            .buffer_size(4096)
            .buffer_count(64)
            .shutdown_timeout(Duration::from_millis(500));
        let server = tune(builder).build().expect("server builds");
        let (addr, admin, handle) = (server.local_addr(), server.admin_addr(), server.handle());
        let (tx, rx) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ended = ended_tx;
            server
                .run_with_ready(factory, move || tx.send(()).unwrap())
                .expect("server runs");
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        Self {
            addr,
            admin,
            handle,
            thread: Some((thread, ended)),
        }
    }

    fn stop(mut self) {
        self.handle.shutdown();
        let (t, ended) = self.thread.take().unwrap();
        // Blocks until the thread ends (its sender is dropped), for at most 10 s.
        assert!(
            matches!(
                ended.recv_timeout(Duration::from_secs(10)),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "server did not stop"
        );
        t.join().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.handle.shutdown();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head (and body up to EOF when `to_eof`).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "EOF inside the response head"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn open(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    // RFC 6455 §1.3 sample key and accept value.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s
}

fn frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(fin as u8) << 7 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (fin, opcode, payload).
fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x0f, payload)
}

fn assert_eof(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, got {n} bytes: {:?}", &b[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

#[test]
fn handshake_echo_ping_close() {
    let server = TestServer::start(|b| b);
    let mut s = open(server.addr);

    s.write_all(&frame(0x1, b"Hello", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x1, b"Hello".to_vec()));

    s.write_all(&frame(0x2, &[0, 1, 2, 255], true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x2, vec![0, 1, 2, 255]));

    s.write_all(&frame(0x9, b"ping!", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0xA, b"ping!".to_vec()));

    // Several frames in one write: all answered, in order.
    let mut burst = frame(0x1, b"a", true);
    burst.extend(frame(0x9, b"", true));
    burst.extend(frame(0x1, b"count", true));
    s.write_all(&burst).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x1, b"a".to_vec()));
    assert_eq!(read_frame(&mut s), (true, 0xA, vec![]));
    assert_eq!(read_frame(&mut s), (true, 0x1, b"4".to_vec()));

    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    s.write_all(&frame(0x8, &close, true)).unwrap();
    assert_eq!(
        read_frame(&mut s),
        (true, 0x8, 1000u16.to_be_bytes().to_vec())
    );
    assert_eof(&mut s);
    server.stop();
}

#[test]
fn split_request_pipelined_frame_and_subprotocol() {
    let server = TestServer::start(|b| b);
    let mut s = connect(server.addr);
    let req = upgrade_request("/chat", "Sec-WebSocket-Protocol: superchat, chat\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend(frame(0x1, b"early", true));
    // The head arrives in three pieces; the first frame rides with the last one.
    for part in [&bytes[..10], &bytes[10..60], &bytes[60..]] {
        s.write_all(part).unwrap();
        // Paces the pieces so that they leave as separate segments (the scenario: a split head).
        std::thread::sleep(Duration::from_millis(30));
    }
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: chat\r\n"), "{head}");
    assert_eq!(read_frame(&mut s), (true, 0x1, b"early".to_vec()));

    let mut s = connect(server.addr);
    let req = upgrade_request("/unoffered", "Sec-WebSocket-Protocol: chat\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
    server.stop();
}

#[test]
fn messages_spanning_buffers_and_fragments() {
    let server = TestServer::start(|b| b);
    let mut s = open(server.addr);
    // 100 KB across 4 KiB receive buffers.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.write_all(&frame(0x2, &big, true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x2, big.clone()));
    // A fragmented text message with a ping between the fragments.
    let mut parts = frame(0x1, "héllo ".as_bytes(), false);
    parts.extend(frame(0x9, b"mid", true));
    parts.extend(frame(0x0, "wörld".as_bytes(), true));
    s.write_all(&parts).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0xA, b"mid".to_vec()));
    assert_eq!(
        read_frame(&mut s),
        (true, 0x1, "héllo wörld".as_bytes().to_vec())
    );
    server.stop();
}

#[test]
fn violations_close_with_the_protocol_code() {
    let server = TestServer::start(|b| b.max_message_size(1000));
    // Invalid UTF-8 in a text message: 1007.
    let mut s = open(server.addr);
    s.write_all(&frame(0x1, &[0xff, 0xfe], true)).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1007u16.to_be_bytes()[..]));
    assert_eof(&mut s);
    // Over max_message_size: 1009.
    let mut s = open(server.addr);
    s.write_all(&frame(0x2, &[0; 2000], true)).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1009u16.to_be_bytes()[..]));
    assert_eof(&mut s);
    // An unmasked client frame: 1002.
    let mut s = open(server.addr);
    s.write_all(b"\x81\x02hi").unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1002u16.to_be_bytes()[..]));
    assert_eof(&mut s);
    server.stop();
}

#[test]
fn server_initiated_close_and_panicking_callback() {
    let server = TestServer::start(|b| b);
    let mut s = open(server.addr);
    s.write_all(&frame(0x1, b"close-me", true)).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    assert_eq!(&payload[2..], b"as asked");
    assert_eof(&mut s);

    let mut s = open(server.addr);
    s.write_all(&frame(0x1, b"panic", true)).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1011u16.to_be_bytes()[..]));
    // The worker survived.
    let mut s = open(server.addr);
    s.write_all(&frame(0x1, b"still here", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x1, b"still here".to_vec()));
    server.stop();
}

#[test]
fn plain_http_and_refused_upgrades() {
    let server = TestServer::start(|b| b);
    let mut s = connect(server.addr);
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");

    let mut s = connect(server.addr);
    s.write_all(upgrade_request("/forbidden", "").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");

    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 426 "), "missing version: {resp}");
    server.stop();
}

#[test]
fn timeouts_and_keepalive_ping() {
    let server = TestServer::start(|b| {
        b.handshake_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(900))
            .ping_interval(Duration::from_millis(300))
            .pong_timeout(Duration::from_millis(300))
    });
    // Handshake timeout: a silent connection is dropped.
    let mut silent = connect(server.addr);
    let t = Instant::now();
    assert_eof(&mut silent);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A connection that answers pings stays open past the idle timeout.
    let mut s = open(server.addr);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        let (_, op, payload) = read_frame(&mut s);
        assert_eq!(op, 0x9, "keep-alive ping");
        s.write_all(&frame(0xA, &payload, true)).unwrap();
    }
    s.write_all(&frame(0x1, b"alive", true)).unwrap();
    loop {
        match read_frame(&mut s) {
            (_, 0x9, _) => continue,
            f => {
                assert_eq!(f, (true, 0x1, b"alive".to_vec()));
                break;
            }
        }
    }
    // One that ignores pings is dropped after the pong timeout.
    let mut s = open(server.addr);
    let t = Instant::now();
    let (_, op, _) = read_frame(&mut s);
    assert_eq!(op, 0x9);
    assert_eof(&mut s);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.stop();
}

#[test]
fn idle_timeout_closes_with_1001() {
    let server = TestServer::start(|b| {
        b.idle_timeout(Duration::from_millis(300))
            .ping_interval(Duration::ZERO)
    });
    let mut s = open(server.addr);
    // Not before its time is proven on the virtual clock (conn::machine tests); here: it comes.
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    s.write_all(&frame(0x8, &1001u16.to_be_bytes(), true))
        .unwrap();
    assert_eof(&mut s);
    server.stop();
}

#[test]
fn shutdown_sends_1001_and_run_returns() {
    let server = TestServer::start(|b| b.workers(2));
    let mut a = open(server.addr);
    let mut b = open(server.addr);
    server.handle.shutdown();
    for s in [&mut a, &mut b] {
        let (_, op, payload) = read_frame(s);
        assert_eq!((op, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
        s.write_all(&frame(0x8, &1001u16.to_be_bytes(), true))
            .unwrap();
        assert_eof(s);
    }
    server.stop();
}

#[test]
fn over_max_connections_is_answered_503() {
    let server = TestServer::start(|b| b.max_connections(1));
    let _first = open(server.addr);
    let mut second = connect(server.addr);
    let mut resp = String::new();
    second.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
    server.stop();
}

#[test]
fn port_in_use_is_reported() {
    let server = TestServer::start(|b| b);
    let err = Server::builder()
        .bind(server.addr)
        .handle_signals(false)
        .build()
        .err()
        .expect("second bind fails");
    assert!(err.to_string().contains("already in use"), "{err}");
    server.stop();
}

#[test]
fn exhausted_buffer_ring_loses_no_data() {
    // Two 512-byte buffers for sixteen clients sending 8 KB each at once: receives run out of buffers
    // (ENOBUFS) and must be re-armed without losing or reordering a byte.
    let server = TestServer::start(|b| b.buffer_count(2).buffer_size(512));
    let mut clients: Vec<TcpStream> = (0..16).map(|_| open(server.addr)).collect();
    let messages: Vec<Vec<u8>> = (0..16u8)
        .map(|i| (0..8000u32).map(|j| i ^ (j % 253) as u8).collect())
        .collect();
    for (s, m) in clients.iter_mut().zip(&messages) {
        s.write_all(&frame(0x2, m, true)).unwrap();
    }
    for (s, m) in clients.iter_mut().zip(&messages) {
        assert_eq!(read_frame(s), (true, 0x2, m.clone()));
    }
    server.stop();
}

/// Floods 64 KiB messages until the send reports backpressure, then one more (dropped), and reports
/// the results once `on_drain` fires.
#[derive(Default)]
struct Flood;

impl Handler for Flood {
    type State = Vec<SendResult>;

    fn on_message(&mut self, ws: &mut Socket<'_, Vec<SendResult>>, _msg: Message<'_>) {
        let chunk = vec![7u8; 64 << 10];
        loop {
            let r = ws.send_binary(&chunk);
            ws.state_mut().push(r);
            if r != SendResult::Queued {
                break;
            }
        }
        let r = ws.send_binary(&chunk);
        ws.state_mut().push(r);
        assert_eq!(ws.buffered_amount(), 5 * (10 + (64 << 10)));
    }

    fn on_drain(&mut self, ws: &mut Socket<'_, Vec<SendResult>>) {
        let report = format!("{:?} then drained at {}", ws.state(), ws.buffered_amount());
        let _ = ws.send_text(&report);
    }
}

#[test]
fn backpressure_reports_drops_and_drains() {
    let server = TestServer::start_with(|_| Flood, |b| b.max_backpressure(300_000));
    let mut s = open(server.addr);
    s.write_all(&frame(0x1, b"go", true)).unwrap();
    for _ in 0..5 {
        let (_, op, payload) = read_frame(&mut s);
        assert_eq!((op, payload.len()), (0x2, 64 << 10));
    }
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!(op, 0x1);
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        "[Queued, Queued, Queued, Queued, Backpressure, Dropped] then drained at 0"
    );
    server.stop();
}

/// Echoes binary messages under `BackpressurePolicy::Pause`, counting sends that were not plainly
/// queued and drains; a text message asks for that report. Each `Backpressure` send is also
/// reported on `over`, for the test to wait on.
struct PausingEcho {
    over: mpsc::Sender<()>,
}

#[derive(Default)]
struct PauseStats {
    dropped: usize,
    backpressure: usize,
    drains: usize,
}

impl Handler for PausingEcho {
    type State = PauseStats;

    fn on_message(&mut self, ws: &mut Socket<'_, PauseStats>, msg: Message<'_>) {
        if let Message::Text(_) = msg {
            let st = ws.state();
            let report = format!(
                "dropped={} backpressure={} drains={}",
                st.dropped, st.backpressure, st.drains
            );
            let _ = ws.send_text(&report);
            return;
        }
        match ws.send(msg) {
            SendResult::Dropped => ws.state_mut().dropped += 1,
            SendResult::Backpressure => {
                ws.state_mut().backpressure += 1;
                let _ = self.over.send(());
            }
            SendResult::Queued => {}
        }
    }

    fn on_drain(&mut self, ws: &mut Socket<'_, PauseStats>) {
        ws.state_mut().drains += 1;
    }
}

#[test]
fn pause_policy_stops_reading_instead_of_dropping() {
    let (over_tx, over) = mpsc::channel();
    let server = TestServer::start_with(
        move |_| PausingEcho {
            over: over_tx.clone(),
        },
        |b| {
            b.max_backpressure(128 << 10)
                .backpressure_policy(BackpressurePolicy::Pause)
        },
    );
    let mut s = open(server.addr);
    // 200 x 64 KiB sent while the client reads nothing until the server's queue has gone over its
    // limit: far more than the kernel's socket buffers hold, so it does, and reading must pause.
    const COUNT: usize = 200;
    let wire: Vec<u8> = (0..COUNT)
        .flat_map(|i| frame(0x2, &vec![i as u8; 64 << 10], true))
        .collect();
    let mut writer = s.try_clone().unwrap();
    let sent = std::thread::spawn(move || writer.write_all(&wire));
    over.recv_timeout(Duration::from_secs(10))
        .expect("the server's queue never went over its limit");
    for i in 0..COUNT {
        let (fin, op, payload) = read_frame(&mut s);
        assert_eq!((fin, op, payload.len()), (true, 0x2, 64 << 10), "echo {i}");
        assert!(
            payload.iter().all(|&b| b == i as u8),
            "echo {i} out of order"
        );
    }
    sent.join().unwrap().unwrap();
    s.write_all(&frame(0x1, b"report", true)).unwrap();
    let (_, op, report) = read_frame(&mut s);
    assert_eq!(op, 0x1);
    let report = String::from_utf8(report).unwrap();
    assert!(report.starts_with("dropped=0 "), "{report}");
    assert!(
        !report.contains("backpressure=0 "),
        "the queue never went over: {report}"
    );
    assert!(
        !report.ends_with("drains=0"),
        "reading never resumed by a drain: {report}"
    );
    server.stop();
}

/// Relays every message to every other open connection, by `ConnId`.
#[derive(Default)]
struct Relay {
    peers: Vec<ConnId>,
}

impl Handler for Relay {
    type State = ();

    fn on_open(&mut self, ws: &mut Socket<'_, ()>) {
        self.peers.push(ws.id());
    }

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        let me = ws.id();
        for &id in self.peers.iter().filter(|&&id| id != me) {
            let mut other = ws.get(id).expect("open peers resolve");
            let _ = other.send(msg);
        }
    }

    fn on_close(&mut self, ws: &mut Socket<'_, ()>, _code: CloseCode, _reason: &str) {
        let me = ws.id();
        self.peers.retain(|&id| id != me);
    }
}

#[test]
fn messages_reach_other_connections_by_id() {
    let server = TestServer::start_with(|_| Relay::default(), |b| b);
    let mut a = open(server.addr);
    let mut b = open(server.addr);
    let mut c = open(server.addr);
    a.write_all(&frame(0x1, b"from a", true)).unwrap();
    assert_eq!(read_frame(&mut b), (true, 0x1, b"from a".to_vec()));
    assert_eq!(read_frame(&mut c), (true, 0x1, b"from a".to_vec()));
    c.write_all(&frame(0x8, &1000u16.to_be_bytes(), true))
        .unwrap();
    assert_eq!(read_frame(&mut c).1, 0x8);
    assert_eof(&mut c);
    b.write_all(&frame(0x1, b"from b", true)).unwrap();
    assert_eq!(read_frame(&mut a), (true, 0x1, b"from b".to_vec()));
    server.stop();
}

#[test]
fn close_after_a_violation_reaches_a_client_that_keeps_sending() {
    // A reserved opcode followed by 8 MiB (more than socket buffers hold) that the client keeps
    // writing without reading: the server must not close with unread input (a reset that could
    // destroy the Close in flight and fails the client's writes) but drain it until the FIN.
    let server = TestServer::start(|b| b);
    let mut s = open(server.addr);
    let mut bytes = frame(0x3, b"bad", true);
    bytes.extend(std::iter::repeat_n(0x55u8, 8 << 20));
    let mut writer = s.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        writer
            .write_all(&bytes)
            .expect("the server drains, never resets");
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1002u16.to_be_bytes()[..]));
    w.join().unwrap();
    // A clean FIN, not a reset: the server read everything before closing.
    let mut rest = [0u8; 16];
    assert_eq!(s.read(&mut rest).expect("EOF, not a reset"), 0);
    server.stop();
}

#[test]
fn request_head_larger_than_a_receive_buffer() {
    let server = TestServer::start(|b| b);
    let mut s = connect(server.addr);
    let filler = format!("X-Filler: {}\r\n", "f".repeat(6000));
    s.write_all(upgrade_request("/", &filler).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.write_all(&frame(0x1, b"ok", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0x1, b"ok".to_vec()));
    server.stop();
}

/// `GET path` on `addr`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Polls `f` every 10 ms until it holds, for at most 10 s.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

#[test]
fn stats_count_exactly_what_a_client_did() {
    let server = TestServer::start(|b| b.max_message_size(100));
    let mut s = open(server.addr);
    for i in 0..3 {
        s.write_all(&frame(0x1, format!("hello {i}").as_bytes(), true))
            .unwrap();
        assert_eq!(read_frame(&mut s).2, format!("hello {i}").into_bytes());
    }
    s.write_all(&frame(0x2, &[7; 10], true)).unwrap();
    read_frame(&mut s);
    s.write_all(&frame(0x9, b"p", true)).unwrap();
    assert_eq!(read_frame(&mut s), (true, 0xA, b"p".to_vec()));
    let w = &server.handle.stats().workers[0];
    assert_eq!(w.connections_open, 1);
    assert_eq!(w.accepted, 1);
    assert_eq!(w.upgrades.get(HttpStatus(101)), 1);
    assert_eq!(w.messages_received.get(MessageKind::Text), 3);
    assert_eq!(w.received_bytes.get(MessageKind::Text), 21);
    assert_eq!(w.messages_received.get(MessageKind::Binary), 1);
    assert_eq!(w.received_bytes.get(MessageKind::Binary), 10);
    assert_eq!(w.messages_received.get(MessageKind::Ping), 1);
    assert_eq!(w.messages_sent.get(MessageKind::Text), 3);
    assert_eq!(w.messages_sent.get(MessageKind::Pong), 1);
    assert_eq!(w.sent_bytes.get(MessageKind::Binary), 10);
    // Over max_message_size: closed with 1009, counted as a violation and a local close.
    s.write_all(&frame(0x2, &[0; 200], true)).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1009u16.to_be_bytes()[..]));
    let w = &server.handle.stats().workers[0];
    assert_eq!(w.violations.get(CloseStatus(1009)), 1);
    assert_eq!(w.closes_local.get(CloseStatus(1009)), 1);
    assert_eq!(w.violations.total(), 1);
    assert!(w.loop_turn_duration.count() > 0);
    assert!(w.heartbeat_age_ms.is_some());
    // The same counts through /metrics on the WebSocket port, parsed line by line.
    let (status, body) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "ringws_messages_received_total{worker=\"0\",kind=\"text\"} 3",
        "ringws_received_bytes_total{worker=\"0\",kind=\"text\"} 21",
        "ringws_protocol_violations_total{worker=\"0\",code=\"1009\"} 1",
        "ringws_closes_total{worker=\"0\",code=\"1009\",side=\"local\"} 1",
        "ringws_upgrades_total{worker=\"0\",status=\"101\"} 1",
        "ringws_ready 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} not in:\n{body}");
    }
    assert_eq!(get(server.addr, "/ready"), (200, "ready\n".into()));
    assert_eq!(get(server.addr, "/health"), (200, "ok\n".into()));
    server.stop();
}

/// Blocks its worker on the message `block` until the test opens the gate.
struct Blocking(Arc<(Mutex<bool>, Condvar)>);

impl Handler for Blocking {
    type State = ();
    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        if msg == Message::Text("block") {
            let (open, cv) = &*self.0;
            let guard = open.lock().unwrap();
            // Bounded: the test opens the gate well before.
            let _ = cv
                .wait_timeout_while(guard, Duration::from_secs(20), |open| !*open)
                .unwrap();
        }
        let _ = ws.send(msg);
    }
}

#[test]
fn health_names_a_stuck_worker_on_the_admin_listener() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g = Arc::clone(&gate);
    let server = TestServer::start_with(
        move |_| Blocking(Arc::clone(&g)),
        |b| {
            b.workers(2)
                .admin_addr("127.0.0.1:0")
                .health_timeout(Duration::from_millis(300))
        },
    );
    let admin = server.admin.expect("an admin listener");
    assert_eq!(get(admin, "/health"), (200, "ok\n".into()));
    assert_eq!(get(admin, "/ready"), (200, "ready\n".into()));
    // On the WebSocket port the paths are the handler's again (the default on_http: 426).
    assert_eq!(get(server.addr, "/metrics").0, 426);
    let mut s = open(server.addr);
    s.write_all(&frame(0x1, b"block", true)).unwrap();
    let mut body = String::new();
    assert!(
        eventually(|| {
            let (status, b) = get(admin, "/health");
            body = b;
            status == 503
        }),
        "/health never turned 503: {body}"
    );
    let stalled = server.handle.stats().stalled(300);
    assert_eq!(stalled.len(), 1, "{stalled:?}");
    assert!(body.contains(&format!(": {}\n", stalled[0])), "{body}");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    assert_eq!(read_frame(&mut s).2, b"block");
    assert!(eventually(|| get(admin, "/health").0 == 200));
    server.stop();
}

#[test]
fn a_drain_turns_ready_off_keeps_serving_then_closes_with_1001() {
    let server = TestServer::start(|b| b.drain_delay(Duration::from_millis(500)));
    let mut s = open(server.addr);
    server.handle.drain();
    let stats = server.handle.stats();
    assert!(stats.draining && !stats.ready);
    assert_eq!(get(server.addr, "/ready"), (503, "draining\n".into()));
    // Still served during the delay: the open connection echoes, a new one opens.
    s.write_all(&frame(0x1, b"during", true)).unwrap();
    assert_eq!(read_frame(&mut s).2, b"during");
    let mut late = open(server.addr);
    // Then the graceful shutdown: 1001 to both, and run returns.
    for c in [&mut s, &mut late] {
        let (_, op, payload) = read_frame(c);
        assert_eq!((op, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    }
    server.stop();
}
