//! Shared helpers of the integration tests: a live `ringws serve` process per test, a raw TCP client
//! that writes hand-built frames (any header bits, any chopping) and reads the server's frames back,
//! plain HTTP requests, and a tokio-tungstenite client.
//!
//! Every wait is bounded: server start-up, each read, each process exit has a deadline, and every loop
//! stops at its deadline or its count.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod brokers;
pub mod browser;
pub mod tls;

use ringws_protocol::frame::{DecodeRules, Decoded, MAX_HEADER_LEN, decode_header, encode_header};
use ringws_protocol::mask::unmask;
use ringws_protocol::{OpCode, Role};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one read may wait for the server before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `Server::start` tries another port when the one it picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// The `ringws` binary under test: `RINGWS_BIN` if set (to run the suite against another build), else
/// the binary cargo built for this test run.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGWS_BIN") {
        return path.into();
    }
    // `option_env!` rather than `env!`: the workspace keeps compiling before the binary target exists,
    // and a test then fails here with a clear message instead of breaking every other crate's build.
    match option_env!("CARGO_BIN_EXE_ringws") {
        Some(path) => path.into(),
        None => {
            panic!("the `ringws` binary target does not exist yet (src/main.rs); set RINGWS_BIN")
        }
    }
}

/// The repository root (where `Cargo.toml` of the root crate lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `ringws serve` on 127.0.0.1, killed when dropped. Its stdout and stderr are captured and
/// printed when the test panics, so a failure shows what the server said.
pub struct Server {
    child: Child,
    /// The address the server listens on.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `ringws serve --addr 127.0.0.1:<free port> [--workers 1] <args>` and waits (bounded) for
    /// its `listening on ADDR (N workers)` line. `--workers 1` is added unless `args` names `--workers`.
    /// A port taken between picking and binding is retried with another one.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, |_| {})
    }

    /// [`Server::start`] with `tweak` applied to the command before it is spawned (e.g. a `pre_exec`
    /// hook that lowers a resource limit of the server process).
    pub fn start_with(args: &[&str], tweak: impl Fn(&mut Command)) -> Server {
        let workers = match args.iter().position(|a| *a == "--workers") {
            Some(i) => args.get(i + 1).copied().expect("--workers needs a value"),
            None => "1",
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut cmd = Command::new(binary());
            cmd.arg("serve").arg("--addr").arg(addr.to_string());
            if !args.contains(&"--workers") {
                cmd.args(["--workers", "1"]);
            }
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            tweak(&mut cmd);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary().display()));
            let log = Arc::new(Mutex::new(String::new()));
            let (ready_tx, ready_rx) = mpsc::channel();
            // The server's output is read until it exits; nothing waits for these threads.
            let _ = capture(
                child.stderr.take().expect("piped"),
                &log,
                "",
                Some(ready_tx),
            );
            let _ = capture(child.stdout.take().expect("piped"), &log, "[stdout] ", None);
            match ready_rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) => {
                    let server = Server { child, addr, log };
                    // "1 worker" is accepted as well as the contract's literal "(1 workers)".
                    let ok = [
                        format!("listening on {addr} ({workers} workers)"),
                        format!("listening on {addr} ({workers} worker)"),
                    ];
                    assert!(
                        ok.contains(&line),
                        "unexpected ready line {line:?}, want {:?}",
                        ok[0]
                    );
                    return server;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server not ready within {READY_TIMEOUT:?}; output:\n{}",
                        log.lock().unwrap()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed without the ready line: the process is exiting.
                    let status = wait_timeout(&mut child, Duration::from_secs(5));
                    last_log = log.lock().unwrap().clone();
                    if !last_log.contains("in use") {
                        panic!(
                            "server exited before it was ready ({status:?}); output:\n{last_log}"
                        );
                    }
                }
            }
        }
        panic!("no free port after {PORT_ATTEMPTS} attempts; last output:\n{last_log}");
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is our own child,
        // which is not reaped before `Drop` (or `wait_exit`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// The server's process id (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- ringws serve ({}) output ----\n{}",
                self.addr,
                self.log.lock().unwrap()
            );
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Copies `from` line by line into `log` on a thread; the first `listening on` line goes to `ready`.
/// The returned receiver is disconnected once the thread has copied everything (EOF on `from`).
fn capture(
    from: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    prefix: &'static str,
    ready: Option<mpsc::Sender<String>>,
) -> mpsc::Receiver<()> {
    let log = Arc::clone(log);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        // Dropped when the thread ends, also by a panic: that disconnects `done_rx`.
        let _done = done_tx;
        let mut ready = ready;
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("listening on ")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(line.clone());
            }
            let mut log = log.lock().unwrap();
            log.push_str(prefix);
            log.push_str(&line);
            log.push('\n');
        }
    });
    done_rx
}

/// Waits until every thread behind `done` has ended (each receiver disconnects), until `deadline`;
/// whether they all did.
fn all_done(done: &[mpsc::Receiver<()>], deadline: Instant) -> bool {
    done.iter().all(|rx| {
        let left = deadline.saturating_duration_since(Instant::now());
        matches!(
            rx.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    })
}

/// Waits for a child to exit for at most `timeout`, blocked in poll(2) on a pidfd of the child (which
/// becomes readable when it exits); its exit status, or `None` if it is still running then.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    if let Some(status) = child.try_wait().expect("try_wait") {
        return Some(status);
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours; `pid` is our own child,
    // not reaped yet (try_wait above saw it running), so it cannot name another process.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        raw >= 0,
        "pidfd_open({pid}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one live pollfd for the whole call; the descriptor is open (owned above).
        // A signal (EINTR) or the child's exit ends the wait; the loop checks which.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

/// Polls `f` every 10 ms until it holds or `within` passes; whether it held. For conditions that
/// have no event to block on (a count in `/proc`, a server that admits again).
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// How long [`run_bounded`] waits for the output of a finished process to be read to its end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Spawns `cmd` with no stdin and its stdout and stderr piped; fails the test when it cannot start.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

/// Runs `cmd` with stdout and stderr captured, killing it after `timeout`. Returns its exit status
/// (`None` on timeout) and everything it printed.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let mut child = spawn_piped(cmd);
    let log = Arc::new(Mutex::new(String::new()));
    let done = [
        capture(child.stdout.take().expect("piped"), &log, "", None),
        capture(child.stderr.take().expect("piped"), &log, "[stderr] ", None),
    ];
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The capture threads end at EOF on the pipes: everything the process wrote is in `log` then.
    let drained = all_done(&done, Instant::now() + DRAIN_TIMEOUT);
    let mut out = log.lock().unwrap().clone();
    if !drained {
        out.push_str(&format!(
            "[run_bounded: output still open {DRAIN_TIMEOUT:?} after the process ended: a process it \
             started holds the pipes]\n"
        ));
    }
    (status, out)
}

/// The interop venv's program `tool` (`tests/interop/.venv/bin/TOOL`: `python`, `kosoku`). Fails
/// the test, naming the fix, when it is missing: `./scripts/test.sh` creates the venv and installs
/// `tests/interop/python/requirements.txt` into it.
pub fn venv_bin(tool: &str) -> PathBuf {
    let path = repo_root().join("tests/interop/.venv/bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run `./scripts/test.sh` once, it creates the interop venv and installs \
         tests/interop/python/requirements.txt (websockets, prometheus_client, kosoku) into it",
        path.display()
    );
    path
}

/// A command that runs `tests/interop/python/SCRIPT` with the interop venv's Python (which has
/// `websockets` and `prometheus_client`); the caller adds the script's arguments. Fails the test,
/// naming the fix, when the venv is missing (see [`venv_bin`]).
pub fn python(script: &str) -> Command {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(repo_root().join("tests/interop/python").join(script));
    cmd
}

/// A command that runs `tests/interop/node/SCRIPT` under Node, in that folder; the caller adds the
/// script's arguments. Fails the test, naming the fix, when the folder's `node_modules` (the `ws`
/// package) is missing: `./scripts/test.sh` installs it.
pub fn node(script: &str) -> Command {
    let dir = repo_root().join("tests/interop/node");
    let ws = dir.join("node_modules/ws/package.json");
    assert!(
        ws.exists(),
        "{} is missing: run `./scripts/test.sh` once, it installs the Node packages of \
         tests/interop/node",
        ws.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script)).current_dir(dir);
    cmd
}

/// Runs `cmd` (no stdin) to its end and returns its status with its stdout and stderr kept apart,
/// each read to its end on a thread of its own (so a chatty command cannot block on a full pipe).
/// Fails the test when it runs past `timeout`.
pub fn output_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = spawn_piped(cmd);
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs `tests/interop/python/SCRIPT ARGS...` with the interop venv's Python (bounded) and returns
/// the last line it printed that starts with `{`, parsed as JSON. Fails the test with everything
/// it printed and `context()` (e.g. a server's log) if it fails.
pub fn python_json(
    script: &str,
    args: &[&str],
    context: impl Fn() -> String,
) -> simd_json::OwnedValue {
    let mut cmd = python(script);
    cmd.args(args);
    let (status, output) = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{cmd:?} failed ({status:?}):\n{output}\n--- context ---\n{}",
        context()
    );
    let line = output
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{cmd:?} printed no JSON:\n{output}"));
    simd_json::to_owned_value(&mut line.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}):\n{output}"))
}

/// How [`run_until_listening`] ended.
#[derive(Debug)]
pub enum Started {
    /// The process printed a `listening on` line (it was killed then).
    Listening,
    /// The process exited before printing one, with this status.
    Exited(ExitStatus),
    /// Neither within the timeout (the process was killed).
    Neither,
}

/// Runs `cmd` (a server) until it prints a `listening on` line on stderr, exits, or `timeout`
/// passes, then kills it if it still runs. Returns how it ended and everything it printed.
pub fn run_until_listening(cmd: &mut Command, timeout: Duration) -> (Started, String) {
    let mut child = spawn_piped(cmd);
    let log = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let done = [
        capture(
            child.stderr.take().expect("piped"),
            &log,
            "",
            Some(ready_tx),
        ),
        capture(child.stdout.take().expect("piped"), &log, "[stdout] ", None),
    ];
    let started = match ready_rx.recv_timeout(timeout) {
        Ok(_) => Started::Listening,
        // stderr closed without the line: the process is exiting.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            match wait_timeout(&mut child, DRAIN_TIMEOUT) {
                Some(status) => Started::Exited(status),
                None => Started::Neither,
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Started::Neither,
    };
    let _ = child.kill();
    let _ = child.wait();
    all_done(&done, Instant::now() + DRAIN_TIMEOUT);
    let out = log.lock().unwrap().clone();
    (started, out)
}

// ---------------------------------------------------------------------------------------------------
// Payloads

/// `len` deterministic, varied bytes (every value occurs), different for each `seed`.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// `len` bytes of printable ASCII text, different for each `seed`.
pub fn text(len: usize, seed: u8) -> String {
    (0..len)
        .map(|i| char::from(b' ' + ((i as u8).wrapping_mul(7).wrapping_add(seed)) % 95))
        .collect()
}

/// Decodes a hex string (test vectors are written in hex, like Autobahn's).
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Raw frames

/// Opcode values, including reserved ones the `OpCode` enum cannot hold.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// The RFC 6455 §1.3 sample key and its accept value: a fixed key lets the raw client check
/// `Sec-WebSocket-Accept` without an SHA-1 of its own.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`RFC_KEY`] (RFC 6455 §1.3).
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A frame as the raw client sees it: every header bit explicit, payload unmasked.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1-3 as the three low bits.
    pub rsv: u8,
    /// Opcode, 4 bits (reserved values allowed when sending).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.payload[..self.payload.len().min(64)];
        write!(
            f,
            "Frame {{ fin: {}, rsv: {}, opcode: {:#x}, len: {}, payload: {:?}{} }}",
            self.fin,
            self.rsv,
            self.opcode,
            self.payload.len(),
            String::from_utf8_lossy(shown),
            if shown.len() < self.payload.len() {
                "…"
            } else {
                ""
            }
        )
    }
}

impl Frame {
    /// A frame with the given FIN bit and opcode, no RSV bits.
    pub fn new(fin: bool, opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            payload: payload.into(),
        }
    }

    /// A final (FIN=1) text frame.
    pub fn text(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(true, op::TEXT, payload)
    }

    /// A final binary frame.
    pub fn binary(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(true, op::BINARY, payload)
    }

    /// A ping.
    pub fn ping(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(true, op::PING, payload)
    }

    /// A Close frame with `code` and `reason`.
    pub fn close(code: u16, reason: &[u8]) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        Frame::new(true, op::CLOSE, payload)
    }

    /// The same frame with RSV bits `rsv`.
    pub fn with_rsv(mut self, rsv: u8) -> Frame {
        self.rsv = rsv;
        self
    }

    /// The wire bytes of this frame, masked with `mask` if given (client frames must be).
    pub fn encode(&self, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut header = [0u8; MAX_HEADER_LEN];
        // The opcode argument is a placeholder: byte 0 is rewritten below so that reserved opcodes and
        // any RSV bits can be sent.
        let n = encode_header(
            &mut header,
            self.fin,
            0,
            OpCode::Binary,
            mask,
            self.payload.len() as u64,
        );
        header[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | (self.opcode & 0xf);
        let mut out = Vec::with_capacity(n + self.payload.len());
        out.extend_from_slice(&header[..n]);
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = mask {
            unmask(&mut out[start..], key, 0); // XOR: masking and unmasking are the same operation
        }
        out
    }

    /// The close code of a Close frame (`None` for an empty payload).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, op::CLOSE, "not a Close frame: {self:?}");
        match self.payload.as_slice() {
            [] => None,
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            [_] => panic!("server sent a 1-byte Close payload"),
        }
    }
}

/// Why [`RawClient::read_frame`] returned no frame.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the connection (EOF) cleanly.
    Eof,
    /// The server reset the connection.
    Reset,
    /// Nothing arrived within the read timeout.
    Timeout,
    /// The bytes are not a valid server frame.
    Protocol(ringws_protocol::Error),
    /// Any other socket error.
    Io(io::Error),
}

/// A WebSocket client on a blocking socket that sends exactly the bytes a test builds.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet consumed as frames.
    pending: Vec<u8>,
    /// State of the masking-key generator (xorshift32, never zero).
    key_state: u32,
    /// The largest frame payload the client accepts from the server.
    pub max_frame: u64,
    /// RSV bits the client accepts from the server (RSV1 once permessage-deflate is agreed).
    pub allowed_rsv: u8,
    /// How long one `read_frame` may wait.
    timeout: Duration,
}

impl RawClient {
    /// Connects to `addr` and completes the opening handshake in one write.
    pub fn connect(addr: SocketAddr) -> RawClient {
        Self::connect_chopped(addr, usize::MAX)
    }

    /// Connects and writes the upgrade request in chunks of `chunk` bytes (flushed one by one), then
    /// checks the `101` response and its `Sec-WebSocket-Accept`.
    pub fn connect_chopped(addr: SocketAddr, chunk: usize) -> RawClient {
        let mut client = RawClient::tcp(addr);
        client.write_chopped(upgrade_request(addr).as_bytes(), chunk);
        client.finish_handshake();
        client
    }

    /// Connects and sends `request` (an upgrade request, possibly followed by frames) in one write,
    /// then checks the `101` response like [`RawClient::connect`].
    pub fn connect_with(addr: SocketAddr, request: &[u8]) -> RawClient {
        let mut client = RawClient::tcp(addr);
        client.write(request);
        client.finish_handshake();
        client
    }

    /// Connects without a handshake (for tests that send their own HTTP).
    pub fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawClient::wrap(stream)
    }

    /// Completes the opening handshake on an already connected socket (one made with custom socket
    /// options, e.g. a small receive buffer).
    pub fn connect_stream(stream: TcpStream) -> RawClient {
        let addr = stream.peer_addr().expect("peer addr");
        let mut client = RawClient::wrap(stream);
        client.write(upgrade_request(addr).as_bytes());
        client.finish_handshake();
        client
    }

    /// A client on a connected socket, before any handshake.
    fn wrap(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        let port = stream.local_addr().expect("local addr").port() as u32;
        RawClient {
            stream,
            pending: Vec::new(),
            key_state: 0x9e37_79b9 ^ port,
            max_frame: 64 << 20,
            allowed_rsv: 0,
            timeout: READ_TIMEOUT,
        }
    }

    /// Reads the handshake response, asserts `101` with the right accept value, and keeps any bytes
    /// after the head as the start of the frame stream.
    fn finish_handshake(&mut self) {
        let head = self.read_http_head();
        let resp = HttpResponse::parse(&head);
        assert_eq!(resp.status, 101, "handshake not accepted:\n{head}");
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some(RFC_ACCEPT),
            "response:\n{head}"
        );
        let upgrade = resp.header("upgrade").unwrap_or_default();
        assert!(
            upgrade.eq_ignore_ascii_case("websocket"),
            "Upgrade header: {upgrade:?}"
        );
        let connection = resp
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            connection.contains("upgrade"),
            "Connection header: {connection:?}"
        );
        assert_eq!(
            resp.header("sec-websocket-extensions"),
            None,
            "no extension was offered"
        );
    }

    /// Reads an HTTP response head (up to `\r\n\r\n`, at most 64 KiB) and returns it as text; bytes
    /// after it stay pending. EOF before the blank line returns what arrived.
    pub fn read_http_head(&mut self) -> String {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                let head: Vec<u8> = self.pending.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(self.pending.len() < 64 << 10, "response head over 64 KiB");
            assert!(
                Instant::now() < deadline,
                "no HTTP response head within {READ_TIMEOUT:?}"
            );
            match self.fill() {
                Ok(0) | Err(ReadError::Eof) | Err(ReadError::Reset) => {
                    return String::from_utf8_lossy(&std::mem::take(&mut self.pending))
                        .into_owned();
                }
                Ok(_) => {}
                Err(e) => panic!("reading the HTTP response: {e:?}"),
            }
        }
    }

    /// The next masking key: varied and never all zeros, so unmasking bugs show.
    fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.key_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.key_state = x;
        (x | 0x0101_0101).to_be_bytes()
    }

    /// Sends `frame` masked with a fresh key, in one write.
    pub fn send(&mut self, frame: &Frame) {
        let bytes = self.masked(frame);
        self.write(&bytes);
    }

    /// Sends several frames in one write.
    pub fn send_all(&mut self, frames: &[Frame]) {
        let bytes = self.masked_all(frames);
        self.write(&bytes);
    }

    /// The wire bytes of `frame` masked with a fresh key.
    pub fn masked(&mut self, frame: &Frame) -> Vec<u8> {
        let key = self.next_key();
        frame.encode(Some(key))
    }

    /// The wire bytes of several frames, each masked with a fresh key.
    pub fn masked_all(&mut self, frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| self.masked(f)).collect()
    }

    /// Writes `bytes`, failing the test on an error.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Writes `wire` in 64 KiB pieces, each once the server has counted every byte before it as
    /// read from its sockets (`ringws_socket_received_bytes_total` on the `/metrics` served at
    /// `metrics`): the server sees a large frame arrive piece by piece, as from a client across a
    /// network slower than loopback, instead of finding all of it in the socket at once (where
    /// its multishot receive takes it all before anything else can happen).
    pub fn write_paced(&mut self, metrics: SocketAddr, wire: &[u8]) {
        let read = || match brokers::get(metrics, "/metrics") {
            Some((200, text)) => Some(brokers::metric(&text, "ringws_socket_received_bytes_total")),
            _ => None,
        };
        let before = read().expect("the server's metrics");
        let mut written = 0;
        for piece in wire.chunks(64 << 10) {
            self.write(piece);
            written += piece.len();
            let want = before + written as f64;
            assert!(
                eventually(Duration::from_secs(10), || read()
                    .is_some_and(|n| n >= want)),
                "the server did not read the {written} bytes written so far within 10 s"
            );
        }
    }

    /// Writes `bytes` and reports an error instead of failing (the server may already have closed).
    pub fn try_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes `bytes` in chunks of `chunk` bytes, each its own `write` call (TCP_NODELAY is on, so
    /// each leaves as its own segment unless the kernel coalesces a backlog).
    pub fn write_chopped(&mut self, bytes: &[u8], chunk: usize) {
        for part in bytes.chunks(chunk.max(1)) {
            self.write(part);
        }
    }

    /// Sets how long each read may wait (default [`READ_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }

    /// A second handle on the socket, for writing from another thread while this one reads.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    /// Half-closes the sending side (FIN without closing the socket).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Blocks until the server has sent something this client has not read yet (bytes already
    /// pending count), for at most `timeout`; whether it did. Reads nothing: the bytes stay queued.
    pub fn wait_readable(&mut self, timeout: Duration) -> bool {
        if !self.pending.is_empty() {
            return true;
        }
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buf = [0u8; 1];
        let got = self.stream.peek(&mut buf);
        self.stream
            .set_read_timeout(Some(self.timeout))
            .expect("read timeout");
        matches!(got, Ok(n) if n > 0)
    }

    /// Bytes the kernel holds in this client's receive queue, not read yet (`FIONREAD`).
    pub fn unread(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int into `n`, which lives for the whole call; the descriptor
        // belongs to `self.stream`, open for the whole call.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        usize::try_from(n).expect("FIONREAD is not negative")
    }

    /// Reads more bytes into `pending`.
    fn fill(&mut self) -> Result<usize, ReadError> {
        let mut buf = [0u8; 64 << 10];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ReadError::Reset),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads one frame from the server (must be unmasked, no RSV bits, valid opcode, control frames
    /// short and unfragmented: `decode_header` with the client's rules checks all of that).
    pub fn read_frame(&mut self) -> Result<Frame, ReadError> {
        let rules = DecodeRules {
            role: Role::Client,
            max_frame_size: self.max_frame,
            allowed_rsv: self.allowed_rsv,
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            match decode_header(&self.pending, &rules).map_err(ReadError::Protocol)? {
                Decoded::Header(h) => {
                    let total = h.header_len as usize + h.payload_len as usize;
                    if self.pending.len() >= total {
                        let frame = Frame {
                            fin: h.fin,
                            rsv: h.rsv,
                            opcode: h.opcode as u8,
                            payload: self.pending[h.header_len as usize..total].to_vec(),
                        };
                        self.pending.drain(..total);
                        return Ok(frame);
                    }
                }
                Decoded::Partial(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(ReadError::Timeout);
            }
            self.fill()?;
        }
    }

    /// Reads one frame, failing the test if there is none.
    pub fn expect_frame(&mut self) -> Frame {
        self.read_frame()
            .unwrap_or_else(|e| panic!("expected a frame from the server, got {e:?}"))
    }

    /// Reads one message (a data frame and its continuations); any control frame on the way fails.
    pub fn expect_message(&mut self) -> (u8, Vec<u8>) {
        let first = self.expect_frame();
        assert!(
            matches!(first.opcode, op::TEXT | op::BINARY),
            "expected a data frame, got {first:?}"
        );
        let mut payload = first.payload;
        let mut fin = first.fin;
        for _ in 0..1_000_000 {
            if fin {
                break;
            }
            let next = self.expect_frame();
            assert_eq!(
                next.opcode,
                op::CONT,
                "expected a continuation, got {next:?}"
            );
            payload.extend_from_slice(&next.payload);
            fin = next.fin;
        }
        assert!(fin, "message with over a million fragments");
        (first.opcode, payload)
    }

    /// Asserts the next message is a text message with exactly `expected`.
    pub fn expect_text(&mut self, expected: &[u8]) {
        let (opcode, payload) = self.expect_message();
        assert_eq!(opcode, op::TEXT, "expected a text message");
        assert_payload(&payload, expected);
    }

    /// Asserts the next message is a binary message with exactly `expected`.
    pub fn expect_binary(&mut self, expected: &[u8]) {
        let (opcode, payload) = self.expect_message();
        assert_eq!(opcode, op::BINARY, "expected a binary message");
        assert_payload(&payload, expected);
    }

    /// Asserts the next frame is a pong carrying `payload`.
    pub fn expect_pong(&mut self, payload: &[u8]) {
        let frame = self.expect_frame();
        assert_eq!(frame.opcode, op::PONG, "expected a pong, got {frame:?}");
        assert_payload(&frame.payload, payload);
    }

    /// Asserts the next frame is a Close with `code` (`None`: an empty payload), then answers it with
    /// a Close of the same code and asserts the server closes the TCP connection.
    pub fn expect_close(&mut self, code: Option<u16>) {
        self.expect_close_frame(code);
        // Answer like a well-behaved client; the server may have closed already, so errors are fine.
        let reply = match code {
            Some(c) => Frame::close(c, b""),
            None => Frame::new(true, op::CLOSE, Vec::new()),
        };
        let bytes = self.masked(&reply);
        let _ = self.try_write(&bytes);
        self.expect_closed();
    }

    /// Asserts the next frame is a Close with `code` and a UTF-8 reason, and returns it (no reply).
    pub fn expect_close_frame(&mut self, code: Option<u16>) -> Frame {
        let frame = self.expect_frame();
        assert_eq!(
            frame.opcode,
            op::CLOSE,
            "expected a Close frame, got {frame:?}"
        );
        assert_eq!(frame.close_code(), code, "close code of {frame:?}");
        if frame.payload.len() > 2 {
            assert!(
                std::str::from_utf8(&frame.payload[2..]).is_ok(),
                "close reason is not UTF-8: {frame:?}"
            );
        }
        frame
    }

    /// Asserts the server closes the TCP connection (EOF or reset) within the read timeout, sending
    /// nothing more.
    pub fn expect_closed(&mut self) {
        match self.read_frame() {
            Err(ReadError::Eof | ReadError::Reset) => {}
            Err(ReadError::Timeout) => {
                panic!(
                    "server did not close the TCP connection within {:?}",
                    self.timeout
                )
            }
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives within `wait` (the connection stays open and silent).
    pub fn expect_silence(&mut self, wait: Duration) {
        self.stream
            .set_read_timeout(Some(wait))
            .expect("read timeout");
        let mut buf = [0u8; 1];
        let got = self.stream.peek(&mut buf);
        self.stream
            .set_read_timeout(Some(self.timeout))
            .expect("read timeout");
        assert!(
            self.pending.is_empty(),
            "unexpected bytes from the server: {:?}",
            self.pending
        );
        match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence for {wait:?}, got {other:?}"),
        }
    }

    /// Sends a Close 1000, expects it echoed and the TCP connection closed: the clean end of a case.
    pub fn close_normally(&mut self) {
        self.send(&Frame::close(1000, b""));
        self.expect_close_frame(Some(1000));
        self.expect_closed();
    }

    /// Echo round trip: sends `frame` and expects the same data message back.
    pub fn echo(&mut self, frame: Frame) {
        self.send(&frame);
        match frame.opcode {
            op::TEXT => self.expect_text(&frame.payload),
            op::BINARY => self.expect_binary(&frame.payload),
            other => panic!("echo of opcode {other:#x}"),
        }
    }
}

/// A client that keeps echoing on its own thread while a test disturbs the server in other ways.
pub struct BackgroundEchoer {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU32>,
    /// The count after each completed echo; disconnected when the thread ends (done, or panicked).
    echoed: mpsc::Receiver<u32>,
    handle: thread::JoinHandle<()>,
}

impl BackgroundEchoer {
    /// Connects and starts echoing messages of varied sizes; returns once the first echo is back.
    pub fn start(addr: SocketAddr) -> BackgroundEchoer {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU32::new(0));
        let (echoed_tx, echoed) = mpsc::channel();
        let handle = {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            thread::spawn(move || {
                let mut c = RawClient::connect(addr);
                for n in 0..1_000_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    c.echo(Frame::binary(bytes(50 + (n as usize % 950), n as u8)));
                    let done = count.fetch_add(1, Ordering::Relaxed) + 1;
                    let _ = echoed_tx.send(done);
                }
                c.close_normally();
            })
        };
        let first = echoed.recv_timeout(READ_TIMEOUT);
        let echoer = BackgroundEchoer {
            stop,
            count,
            echoed,
            handle,
        };
        match first {
            Ok(_) => echoer,
            // The thread ended without an echo: its panic says why.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                echoer.stop.store(true, Ordering::Relaxed);
                match echoer.handle.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => panic!("the echo client ended without an echo"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no first echo within {READ_TIMEOUT:?}"),
        }
    }

    /// Waits (bounded) for one more echo, proving the server still serves this client now, then
    /// stops the thread and returns how many messages were echoed. A failed echo at any time (wrong
    /// bytes, a Close, a timeout) fails the test here.
    pub fn finish(self) -> u32 {
        // Blocks on the thread's reports until one counts past `before` (or the thread ends, and
        // its panic says why).
        let before = self.count.load(Ordering::Relaxed);
        let deadline = Instant::now() + READ_TIMEOUT;
        let next = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.echoed.recv_timeout(left) {
                Ok(n) if n > before => break Ok(n),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.handle.join() {
            std::panic::resume_unwind(panic);
        }
        assert!(
            next.is_ok(),
            "the echo client stalled or ended after {before} echoes: {next:?}"
        );
        let total = self.count.load(Ordering::Relaxed);
        assert!(total > before, "no echo completed after the disturbance");
        total
    }
}

/// Spawns `f` on a thread; the receiver disconnects when the thread ends (returned or panicked),
/// so [`join_within`] can wait for it with a bound.
pub fn spawn_watched<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (thread::JoinHandle<T>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let _ended = tx;
        f()
    });
    (handle, rx)
}

/// Joins a thread from [`spawn_watched`] if it ends within `timeout`; `None` if it is still running.
pub fn join_within<T>(
    handle: thread::JoinHandle<T>,
    ended: &mpsc::Receiver<()>,
    timeout: Duration,
) -> Option<thread::Result<T>> {
    match ended.recv_timeout(timeout) {
        Err(mpsc::RecvTimeoutError::Timeout) => None,
        _ => Some(handle.join()),
    }
}

/// Asserts two payloads are equal, reporting the first difference instead of dumping megabytes.
pub fn assert_payload(got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "payload differs: got {} bytes, want {}; first difference at byte {at} (got {:?}, want {:?})",
            got.len(),
            want.len(),
            got.get(at),
            want.get(at)
        );
    }
}

/// The first index of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A valid upgrade request for `addr` with the RFC sample key.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------------
// HTTP

/// A parsed HTTP response head.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    /// Parses a response head; panics (failing the test) if it is not HTTP/1.x.
    pub fn parse(head: &str) -> HttpResponse {
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "not an HTTP/1.x response: {head:?}"
        );
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        HttpResponse { status, headers }
    }

    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends a plain `GET path` and returns the response head and the whole body (the server closes the
/// connection after a plain HTTP answer).
pub fn http_get(addr: SocketAddr, path: &str) -> (HttpResponse, Vec<u8>) {
    let mut client = RawClient::tcp(addr);
    client.write(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let head = client.read_http_head();
    let deadline = Instant::now() + READ_TIMEOUT;
    while Instant::now() < deadline {
        match client.fill() {
            Ok(_) => {}
            Err(ReadError::Eof | ReadError::Reset) => break,
            Err(e) => panic!("reading the body of GET {path}: {e:?}"),
        }
    }
    (
        HttpResponse::parse(&head),
        std::mem::take(&mut client.pending),
    )
}

/// Sends `request` on a fresh connection and returns the parsed response head and its raw text.
pub fn http_request(addr: SocketAddr, request: &[u8]) -> (HttpResponse, String) {
    let mut client = RawClient::tcp(addr);
    client.write(request);
    let head = client.read_http_head();
    (HttpResponse::parse(&head), head)
}

// ---------------------------------------------------------------------------------------------------
// In-process servers

/// A server of this process (for tests with a `Handler` of their own) running on its own thread;
/// dropping it shuts the server down (forced at once) and joins the thread within 10 s.
pub struct InProcess {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its handle (shutdown, publisher).
    pub handle: ringws::ServerHandle,
    thread: Option<(thread::JoinHandle<()>, mpsc::Receiver<()>)>,
}

impl InProcess {
    /// A builder for 127.0.0.1 on a free port, without signal handling or pinning, and a short
    /// shutdown drain.
    pub fn builder(workers: usize) -> ringws::ServerBuilder {
        ringws::Server::builder()
            .bind("127.0.0.1:0")
            .workers(workers)
            .pin_workers(false)
            .handle_signals(false)
            .shutdown_timeout(Duration::from_millis(500))
    }

    /// Runs `server` with handlers from `factory` on a thread; returns once every worker accepts.
    pub fn run<H, F>(server: ringws::Server, factory: F) -> InProcess
    where
        H: ringws::Handler,
        F: Fn(usize) -> H + Sync + Send + 'static,
    {
        let (addr, handle) = (server.local_addr(), server.handle());
        let (tx, rx) = mpsc::channel();
        let thread = spawn_watched(move || {
            server
                .run_with_ready(factory, move || tx.send(()).unwrap())
                .expect("server runs");
        });
        rx.recv_timeout(READY_TIMEOUT).expect("server ready");
        InProcess {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.handle.shutdown();
        if let Some((t, ended)) = self.thread.take()
            && let Some(result) = join_within(t, &ended, Duration::from_secs(10))
            && !thread::panicking()
        {
            result.expect("server thread");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// tokio-tungstenite

/// A tokio-tungstenite client stream.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a tokio-tungstenite client to `addr` with message and frame limits of 64 MiB (above the
/// 16 MiB the tests send), bounded by `READ_TIMEOUT`.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let url = format!("ws://{addr}/");
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(READ_TIMEOUT, connect).await {
        Ok(Ok((ws, response))) => {
            assert_eq!(response.status(), 101);
            ws
        }
        Ok(Err(e)) => panic!("tungstenite connect to {addr}: {e}"),
        Err(_) => panic!("tungstenite connect to {addr} timed out"),
    }
}

/// splitmix64: a small, seedable generator (any seed, zero included).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Valid UTF-8 of about `len` bytes: ASCII with 1- to 4-byte code points mixed in.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        const PIECES: [&str; 6] = ["a", "Z", " ", "é", "€", "𝄞"];
        let mut out = Vec::with_capacity(len + 4);
        while out.len() < len {
            out.extend_from_slice(PIECES[self.below(PIECES.len() as u64) as usize].as_bytes());
        }
        out
    }

    /// A payload length: mostly small, sometimes past the 7-bit and 16-bit encodings.
    pub fn len(&mut self) -> usize {
        match self.below(10) {
            0..=5 => self.below(126) as usize,
            6..=8 => 126 + self.below(3000) as usize,
            _ => 65_536 + self.below(5000) as usize,
        }
    }
}
