//! The engine's WebSocket client (`Context::connect` on a client-only engine) against the ringws
//! server and two independent servers: tokio-tungstenite in this process and Python `websockets`
//! from the interop venv. Both independent servers refuse unmasked client frames, so every echo also
//! checks the masking. Covered: echoes of text and binary messages up to 1 MiB, ping/pong, the close
//! handshake started by either side, a first frame in the same read as the `101`, connect and
//! handshake failures, the source address, and wake-ups.
//!
//! Every wait is bounded: each client engine must finish within `DEADLINE`, servers stop on drop.

mod common;

use futures_util::{SinkExt, StreamExt};
use ringws::{
    CloseCode, Connect, Context, Decision, DeflateConfig, Handler, Message, Request, Server,
    ServerHandle, Socket,
};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on one client engine run.
const DEADLINE: Duration = Duration::from_secs(20);
/// The close handshake bound of the client engines: a run that ends well before it did not wait for
/// a missing Close or FIN.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(4);

/// A message the scripted client sends and expects back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
}

impl Owned {
    fn of(msg: &Message<'_>) -> Self {
        match *msg {
            Message::Text(t) => Self::Text(t.to_owned()),
            Message::Binary(b) => Self::Binary(b.to_vec()),
        }
    }

    fn send(&self, ws: &mut Socket<'_, usize>) {
        let _ = match self {
            Self::Text(t) => ws.send_text(t),
            Self::Binary(b) => ws.send_binary(b),
        };
    }
}

/// Text and binary messages across the 7-bit, 16-bit and 64-bit length encodings, up to 1 MiB.
fn messages() -> Vec<Owned> {
    let binary = |n: usize| Owned::Binary((0..n).map(|i| (i * 31 + n) as u8).collect());
    let mut v = vec![
        Owned::Text("héllo wörld ✓".into()),
        Owned::Text("ü€𝄞".repeat(7000)),
    ];
    v.extend([0, 1, 125, 126, 65535, 65536, 1 << 20].map(binary));
    v
}

/// What a client saw.
#[derive(Debug, Default)]
struct Log {
    opened: usize,
    received: Vec<Owned>,
    pongs: Vec<Vec<u8>>,
    closes: Vec<(u16, String)>,
    /// `ConnectError::kind` and its text.
    errors: Vec<(&'static str, String)>,
    /// The permessage-deflate parameters the client's connection agreed to, seen in `on_open`.
    deflate: Option<String>,
}

/// The scripted client: sends `first` (if any) then each of `msgs` after the previous echo, then a
/// ping; closes with 1000 on the pong. Every callback is logged; the engine stops after the close.
struct Script {
    target: Connect,
    /// A message expected from the server before anything is sent.
    first: Option<Owned>,
    msgs: Arc<Vec<Owned>>,
    log: Arc<Mutex<Log>>,
    handle: ServerHandle,
}

impl Script {
    fn next(&self, ws: &mut Socket<'_, usize>) {
        match self.msgs.get(*ws.state()) {
            Some(m) => m.send(ws),
            None => {
                let _ = ws.ping(b"are you there");
            }
        }
    }
}

impl Handler for Script {
    /// Messages echoed so far.
    type State = usize;

    fn on_start(&mut self, ctx: &mut Context<'_, usize>) {
        ctx.connect(&self.target, 0);
    }

    fn on_open(&mut self, ws: &mut Socket<'_, usize>) {
        let mut log = self.log.lock().unwrap();
        log.opened += 1;
        log.deflate = ws.permessage_deflate().map(|p| p.to_string());
        drop(log);
        if self.first.is_none() {
            self.next(ws);
        }
    }

    fn on_message(&mut self, ws: &mut Socket<'_, usize>, msg: Message<'_>) {
        self.log.lock().unwrap().received.push(Owned::of(&msg));
        if self.first.take().is_some() {
            return self.next(ws);
        }
        *ws.state_mut() += 1;
        self.next(ws);
    }

    fn on_pong(&mut self, ws: &mut Socket<'_, usize>, payload: &[u8]) {
        self.log.lock().unwrap().pongs.push(payload.to_vec());
        ws.close(CloseCode::NORMAL, "done");
    }

    fn on_close(&mut self, _: &mut Socket<'_, usize>, code: CloseCode, reason: &str) {
        let mut log = self.log.lock().unwrap();
        log.closes.push((code.0, reason.to_owned()));
        self.handle.shutdown();
    }

    fn on_connect_error(
        &mut self,
        _: &mut Context<'_, usize>,
        _: usize,
        error: &ringws::ConnectError,
    ) {
        let mut log = self.log.lock().unwrap();
        log.errors.push((error.kind(), error.to_string()));
        self.handle.shutdown();
    }
}

/// Runs a client-only engine with one worker until it stops; panics after `DEADLINE`. Returns how
/// long it ran.
fn run_client<H: Handler>(factory: impl Fn(ServerHandle) -> H + Send + Sync + 'static) -> Duration {
    let engine = Server::builder()
        .client_only()
        .workers(1)
        .pin_workers(false)
        .handle_signals(false)
        .close_timeout(CLOSE_TIMEOUT)
        .build()
        .expect("client engine");
    let handle = engine.handle();
    let inner = handle.clone();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(engine.run(|_| factory(inner.clone())));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(result) => result.expect("client engine run"),
        Err(_) => {
            handle.shutdown();
            handle.shutdown();
            panic!("the client engine did not finish within {DEADLINE:?}");
        }
    }
    start.elapsed()
}

/// Runs the script against `url` and returns its log and run time.
fn script(url: &str, first: Option<Owned>, msgs: Vec<Owned>) -> (Log, Duration) {
    script_to(Connect::new(url).unwrap(), first, msgs)
}

fn script_to(target: Connect, first: Option<Owned>, msgs: Vec<Owned>) -> (Log, Duration) {
    let log = Arc::new(Mutex::new(Log::default()));
    let msgs = Arc::new(msgs);
    let shared = log.clone();
    let took = run_client(move |handle| Script {
        target: target.clone(),
        first: first.clone(),
        msgs: msgs.clone(),
        log: shared.clone(),
        handle,
    });
    let log = std::mem::take(&mut *log.lock().unwrap());
    (log, took)
}

/// Checks a full script run: every echo equal, the pong, the close, no error, and no wait for a
/// close timeout.
fn assert_full_run(log: &Log, took: Duration, expected: &[Owned]) {
    assert!(log.errors.is_empty(), "{:?}", log.errors);
    assert_eq!(log.opened, 1);
    assert_eq!(log.received.len(), expected.len(), "echo count");
    for (i, (got, want)) in log.received.iter().zip(expected).enumerate() {
        assert!(got == want, "echo {i} differs");
    }
    assert_eq!(log.pongs, [b"are you there".to_vec()]);
    assert_eq!(log.closes, [(1000, "done".to_owned())]);
    assert!(
        took < CLOSE_TIMEOUT,
        "the run took {took:?}: the close handshake waited for its timeout"
    );
}

// ---- servers ----------------------------------------------------------------------------------------

/// The ringws server: echoes; `/forbidden` is refused with 403; `/welcome` sends a message right
/// after the 101 (so both arrive in one read); `close-me` closes with 4000; `?extensions` is
/// answered with the agreed permessage-deflate parameters (or `-`). Peers are recorded.
struct EchoServer {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Handler for EchoServer {
    type State = bool;

    fn on_upgrade<'r>(&mut self, req: &Request<'r>) -> Decision<'r, bool> {
        match req.path() {
            "/forbidden" => Decision::reject(403),
            path => Decision::Accept {
                protocol: req.subprotocols().find(|p| *p == "chat"),
                state: path == "/welcome",
            },
        }
    }

    fn on_open(&mut self, ws: &mut Socket<'_, bool>) {
        self.peers.lock().unwrap().extend(ws.peer_addr());
        if *ws.state() {
            let _ = ws.send_text("welcome");
        }
    }

    fn on_message(&mut self, ws: &mut Socket<'_, bool>, msg: Message<'_>) {
        if msg == Message::Text("close-me") {
            return ws.close(CloseCode(4000), "as asked");
        }
        if msg == Message::Text("?extensions") {
            let agreed = ws
                .permessage_deflate()
                .map_or("-".into(), |p| p.to_string());
            let _ = ws.send_text(&agreed);
            return;
        }
        let _ = ws.send(msg);
    }
}

/// A ringws server on 127.0.0.1 in this process, shut down on drop.
struct RingwsServer {
    addr: SocketAddr,
    handle: ServerHandle,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RingwsServer {
    fn start() -> Self {
        Self::start_with(Server::builder())
    }

    /// Starts with the settings of `builder` (bind, workers, pinning and signals are set here).
    fn start_with(builder: ringws::ServerBuilder) -> Self {
        let server = builder
            .bind("127.0.0.1:0")
            .workers(1)
            .pin_workers(false)
            .handle_signals(false)
            .build()
            .expect("server");
        let (addr, handle) = (server.local_addr(), server.handle());
        let peers = Arc::new(Mutex::new(Vec::new()));
        let shared = peers.clone();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            server
                .run_with_ready(
                    |_| EchoServer {
                        peers: shared.clone(),
                    },
                    || tx.send(()).unwrap(),
                )
                .expect("server run");
        });
        rx.recv_timeout(DEADLINE).expect("server ready");
        Self {
            addr,
            handle,
            peers,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for RingwsServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the tungstenite server saw of each connection's end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerEnd {
    /// The client's Close frame (code, reason), then a clean end of stream.
    ClosedByClient(u16, String),
    /// The server closed (`close-me`); the stream then ended cleanly, the client's reply read.
    ClosedByServer,
    /// An error (e.g. an unmasked frame) or an end without a close handshake.
    Error(String),
}

/// A tokio-tungstenite echo server on 127.0.0.1 (its own thread and runtime, stopping by itself
/// after 60 s). `close-me` makes it close with 4000.
fn tungstenite_server() -> (SocketAddr, Arc<Ends>) {
    use tokio_tungstenite::tungstenite::Message as Tm;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Tc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let ends = Arc::new(Ends::default());
    let shared = ends.clone();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let serve = async {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let ends = shared.clone();
                    tokio::spawn(async move {
                        let mut ws = match tokio_tungstenite::accept_async(stream).await {
                            Ok(ws) => ws,
                            Err(e) => {
                                return ends.push(PeerEnd::Error(e.to_string()));
                            }
                        };
                        let mut end = PeerEnd::Error("no close handshake".into());
                        let mut server_closed = false;
                        while let Some(item) = ws.next().await {
                            match item {
                                Ok(Tm::Text(t)) if t.as_str() == "close-me" => {
                                    server_closed = true;
                                    let frame = CloseFrame {
                                        code: Tc::from(4000),
                                        reason: "as asked".into(),
                                    };
                                    if let Err(e) = ws.close(Some(frame)).await {
                                        end = PeerEnd::Error(e.to_string());
                                        break;
                                    }
                                }
                                Ok(m @ (Tm::Text(_) | Tm::Binary(_))) => {
                                    if let Err(e) = ws.send(m).await {
                                        end = PeerEnd::Error(e.to_string());
                                        break;
                                    }
                                }
                                Ok(Tm::Close(frame)) if server_closed => {
                                    end = match frame {
                                        Some(f) if u16::from(f.code) == 4000 => {
                                            PeerEnd::ClosedByServer
                                        }
                                        other => PeerEnd::Error(format!("close reply {other:?}")),
                                    };
                                }
                                Ok(Tm::Close(frame)) => {
                                    end = match frame {
                                        Some(f) => PeerEnd::ClosedByClient(
                                            u16::from(f.code),
                                            f.reason.to_string(),
                                        ),
                                        None => PeerEnd::Error("close without a code".into()),
                                    };
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    end = PeerEnd::Error(e.to_string());
                                    break;
                                }
                            }
                        }
                        ends.push(end);
                    });
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), serve).await;
        });
    });
    (addr, ends)
}

/// The connection ends the tungstenite server recorded, with a condition variable signalled on each.
#[derive(Default)]
struct Ends {
    list: Mutex<Vec<PeerEnd>>,
    added: Condvar,
}

impl Ends {
    fn push(&self, end: PeerEnd) {
        self.list.lock().unwrap().push(end);
        self.added.notify_all();
    }
}

/// Waits (bounded: 5 s, blocked on the condition variable) for the tungstenite server to record `n`
/// connection ends; the ends recorded by then.
fn wait_ends(ends: &Ends, n: usize) -> Vec<PeerEnd> {
    let list = ends.list.lock().unwrap();
    let (list, _) = ends
        .added
        .wait_timeout_while(list, Duration::from_secs(5), |l| l.len() < n)
        .unwrap();
    list.clone()
}

/// A Python `websockets` echo server from the interop venv, killed on drop.
struct PythonServer {
    child: Child,
    port: u16,
}

impl PythonServer {
    fn start() -> Self {
        // An echo server; it also accepts permessage-deflate, and answers `?extensions` with the
        // agreed Sec-WebSocket-Extensions value.
        let mut child = common::python("deflate.py")
            .arg("server")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the Python server prints its port");
        let port = line.trim().parse().expect("a port number");
        Self { child, port }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- tests ------------------------------------------------------------------------------------------

#[test]
fn echoes_ping_and_close_against_ringws() {
    let server = RingwsServer::start();
    let (log, took) = script(&server.url("/"), None, messages());
    assert_full_run(&log, took, &messages());
    assert_eq!(server.peers.lock().unwrap().len(), 1);
}

#[test]
fn echoes_ping_and_close_against_tungstenite() {
    let (addr, ends) = tungstenite_server();
    let (log, took) = script(&format!("ws://{addr}/"), None, messages());
    assert_full_run(&log, took, &messages());
    assert_eq!(
        wait_ends(&ends, 1),
        [PeerEnd::ClosedByClient(1000, "done".into())]
    );
}

#[test]
fn echoes_ping_and_close_against_python_websockets() {
    let server = PythonServer::start();
    let (log, took) = script(
        &format!("ws://127.0.0.1:{}/", server.port),
        None,
        messages(),
    );
    assert_full_run(&log, took, &messages());
}

#[test]
fn deflate_against_python_websockets() {
    // The first echo is the extension value Python's server agreed to (it limits both windows to
    // 12 bits unless asked for less), so the messages that follow (up to 1 MiB, both ways) travel
    // compressed.
    for (policy, agreed) in [
        (
            DeflateConfig::default(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; \
             client_max_window_bits=12",
        ),
        (
            DeflateConfig {
                server_no_context_takeover: false,
                client_no_context_takeover: true,
                client_max_window_bits: 10,
                // With the server's context taken over, the 1 MiB binary message (a 256-byte
                // period, already in the window) inflates past the default ratio guard of 256
                // (seen here: closed with 1009), which is meant for peers we do not trust.
                max_inflate_ratio: None,
                ..DeflateConfig::default()
            },
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; \
             client_max_window_bits=10",
        ),
    ] {
        let server = PythonServer::start();
        let target = Connect::new(&format!("ws://127.0.0.1:{}/", server.port))
            .unwrap()
            .deflate(policy);
        let mut msgs = vec![Owned::Text("?extensions".into())];
        msgs.extend(messages());
        let (log, took) = script_to(target, None, msgs);
        let mut expected = vec![Owned::Text(agreed.into())];
        expected.extend(messages());
        assert_full_run(&log, took, &expected);
        assert_eq!(log.deflate.as_deref(), Some(agreed), "the client's view");
    }
}

#[test]
fn deflate_against_ringws() {
    // Both ends ours, each checking the other's frames: the server's policy keeps both windows
    // (takeover both ways), the client's offer asks for a 10-bit server window.
    let server = RingwsServer::start_with(Server::builder().deflate(DeflateConfig {
        server_no_context_takeover: false,
        ..DeflateConfig::default()
    }));
    let policy = DeflateConfig {
        server_no_context_takeover: false,
        server_max_window_bits: 10,
        ..DeflateConfig::default()
    };
    let target = Connect::new(&server.url("/")).unwrap().deflate(policy);
    let mut msgs = vec![Owned::Text("?extensions".into())];
    msgs.extend(messages());
    let (log, took) = script_to(target, None, msgs);
    let agreed = "permessage-deflate; server_max_window_bits=10";
    let mut expected = vec![Owned::Text(agreed.into())];
    expected.extend(messages());
    assert_full_run(&log, took, &expected);
    assert_eq!(log.deflate.as_deref(), Some(agreed));
    // Without the client's offer the same server sends plain frames.
    let (log, _) = script(
        &server.url("/"),
        None,
        vec![Owned::Text("?extensions".into())],
    );
    assert_eq!(log.received, [Owned::Text("-".into())]);
    assert_eq!(log.deflate, None);
}

#[test]
fn a_server_initiated_close_is_answered() {
    let close_me = vec![Owned::Text("close-me".into())];
    let server = RingwsServer::start();
    let (log, took) = script(&server.url("/"), None, close_me.clone());
    assert_eq!(log.closes, [(4000, "as asked".to_owned())]);
    assert!(log.received.is_empty() && log.errors.is_empty(), "{log:?}");
    assert!(took < CLOSE_TIMEOUT, "took {took:?}");

    let (addr, ends) = tungstenite_server();
    let (log, took) = script(&format!("ws://{addr}/"), None, close_me);
    assert_eq!(log.closes, [(4000, "as asked".to_owned())]);
    assert!(took < CLOSE_TIMEOUT, "took {took:?}");
    assert_eq!(wait_ends(&ends, 1), [PeerEnd::ClosedByServer]);
}

#[test]
fn a_frame_in_the_same_read_as_the_101_is_delivered() {
    let server = RingwsServer::start();
    let msgs = vec![Owned::Text("after welcome".into())];
    let (log, took) = script(
        &server.url("/welcome"),
        Some(Owned::Text("welcome".into())),
        msgs.clone(),
    );
    assert_eq!(log.received[0], Owned::Text("welcome".into()));
    let log = Log {
        received: log.received[1..].to_vec(),
        ..log
    };
    assert_full_run(&log, took, &msgs);
}

#[test]
fn connect_and_handshake_failures_reach_on_connect_error() {
    // Refused: a port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (log, _) = script(&format!("ws://127.0.0.1:{port}/"), None, vec![]);
    assert_eq!(log.errors.len(), 1, "{log:?}");
    assert_eq!(log.errors[0].0, "refused", "{log:?}");
    assert!(log.opened == 0 && log.closes.is_empty(), "{log:?}");

    // Refused upgrade: 403 instead of 101.
    let server = RingwsServer::start();
    let (log, _) = script(&server.url("/forbidden"), None, vec![]);
    assert_eq!(log.errors.len(), 1, "{log:?}");
    assert_eq!(log.errors[0].0, "handshake");
    assert!(log.errors[0].1.contains("403"), "{log:?}");
    assert!(log.opened == 0 && log.closes.is_empty(), "{log:?}");

    // A source address this host does not have (TEST-NET-1).
    let target = Connect::new(&server.url("/"))
        .unwrap()
        .source("192.0.2.1".parse().unwrap());
    let (log, _) = script_to(target, None, vec![]);
    assert_eq!(log.errors.len(), 1, "{log:?}");
    assert_eq!(log.errors[0].0, "address", "{log:?}");
    assert!(
        log.errors[0].1.starts_with("binding the source address"),
        "{log:?}"
    );
}

/// A one-connection server that answers the upgrade with `extensions` as its
/// `Sec-WebSocket-Extensions` value, whatever was offered; it keeps the socket open until the client
/// acts on the answer: closes the connection (an answer it refuses) or sends a frame (its ping, after
/// an answer it accepts), then closes it (or after 5 s without either).
fn answering_server(extensions: &'static str) -> SocketAddr {
    use ringws::protocol::handshake::{Parse, parse_request, write_accept_response};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        while buf.len() < 8192 {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Ok(Parse::Complete(req)) = parse_request(&buf, 8192) {
                let mut out = Vec::new();
                let key = req.validate_upgrade().expect("a valid upgrade request");
                write_accept_response(&mut out, key, None, Some(extensions));
                let _ = s.write_all(&out);
                // Held open until the client acted on the answer: EOF, a reset, its first frame, or
                // the 5 s read timeout.
                let _ = s.read(&mut chunk);
                return;
            }
        }
    });
    addr
}

#[test]
fn a_deflate_answer_the_offer_did_not_allow_fails_the_connection() {
    // The default offer asks for server_no_context_takeover (RFC 7692 §7.1.1.1: an answer without
    // it fails the connection); a window over 15 is malformed; a second element is not allowed.
    for answer in [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover, permessage-deflate",
    ] {
        let addr = answering_server(answer);
        let target = Connect::new(&format!("ws://{addr}/"))
            .unwrap()
            .deflate(DeflateConfig::default());
        let (log, _) = script_to(target, None, vec![]);
        assert_eq!(log.errors.len(), 1, "{answer:?}: {log:?}");
        assert_eq!(log.errors[0].0, "handshake", "{answer:?}: {log:?}");
        assert!(log.opened == 0, "{answer:?}: {log:?}");
    }
    // The same server's acceptable answer opens the connection with it.
    let answer = "permessage-deflate; server_no_context_takeover";
    let target = Connect::new(&format!("ws://{}/", answering_server(answer)))
        .unwrap()
        .deflate(DeflateConfig::default());
    let (log, _) = script_to(target, None, vec![]);
    assert_eq!((log.opened, log.deflate.as_deref()), (1, Some(answer)));
}

#[test]
fn the_source_address_is_used_and_subprotocols_are_offered() {
    let server = RingwsServer::start();
    let source: IpAddr = "127.0.0.7".parse().unwrap();
    let target = Connect::new(&server.url("/"))
        .unwrap()
        .protocol("chat")
        .unwrap()
        .source(source);
    let msgs = vec![Owned::Binary(vec![1, 2, 3])];
    let (log, took) = script_to(target, None, msgs.clone());
    assert_full_run(&log, took, &msgs);
    let peers = server.peers.lock().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].ip(), source);
}

/// Asks for three wake-ups 30 ms apart and records when each came.
struct Waker {
    asked: Vec<Instant>,
    woke: Arc<Mutex<Vec<(Instant, Instant)>>>,
    handle: ServerHandle,
}

impl Handler for Waker {
    type State = ();

    fn on_message(&mut self, _: &mut Socket<'_, ()>, _: Message<'_>) {}

    fn on_start(&mut self, ctx: &mut Context<'_, ()>) {
        let at = Instant::now() + Duration::from_millis(30);
        self.asked.push(at);
        ctx.wake_at(at);
        // A later request does not delay the earlier one.
        ctx.wake_at(at + Duration::from_secs(3600));
    }

    fn on_wake(&mut self, ctx: &mut Context<'_, ()>) {
        let asked = *self.asked.last().unwrap();
        let mut woke = self.woke.lock().unwrap();
        woke.push((asked, Instant::now()));
        if woke.len() == 3 {
            return self.handle.shutdown();
        }
        let at = Instant::now() + Duration::from_millis(30);
        self.asked.push(at);
        ctx.wake_at(at);
    }
}

#[test]
fn wake_ups_come_when_asked() {
    let woke = Arc::new(Mutex::new(Vec::new()));
    let shared = woke.clone();
    run_client(move |handle| Waker {
        asked: Vec::new(),
        woke: shared.clone(),
        handle,
    });
    let woke = woke.lock().unwrap();
    assert_eq!(woke.len(), 3);
    for &(asked, at) in woke.iter() {
        assert!(at >= asked, "woken {:?} early", asked - at);
        assert!(
            at - asked < Duration::from_millis(500),
            "woken {:?} late",
            at - asked
        );
    }
}

/// Shuts its engine down as soon as its connection opens, and records how the connection closed.
struct ShutdownOnOpen {
    target: Connect,
    closes: Arc<Mutex<Vec<(u16, bool)>>>,
    handle: ServerHandle,
}

impl Handler for ShutdownOnOpen {
    type State = ();

    fn on_start(&mut self, ctx: &mut Context<'_, ()>) {
        assert!(!ctx.is_shutting_down());
        ctx.connect(&self.target, ());
    }

    fn on_open(&mut self, _: &mut Socket<'_, ()>) {
        self.handle.shutdown();
    }

    fn on_message(&mut self, _: &mut Socket<'_, ()>, _: Message<'_>) {}

    fn on_close(&mut self, ws: &mut Socket<'_, ()>, code: CloseCode, _: &str) {
        let shutting_down = ws.context().is_shutting_down();
        self.closes.lock().unwrap().push((code.0, shutting_down));
    }
}

#[test]
fn shutdown_closes_client_connections_with_1001_and_says_so() {
    let server = RingwsServer::start();
    let target = Connect::new(&server.url("/")).unwrap();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let shared = closes.clone();
    let took = run_client(move |handle| ShutdownOnOpen {
        target: target.clone(),
        closes: shared.clone(),
        handle,
    });
    assert_eq!(*closes.lock().unwrap(), [(1001, true)]);
    assert!(
        took < CLOSE_TIMEOUT,
        "the server answered the Close: took {took:?}"
    );
}
