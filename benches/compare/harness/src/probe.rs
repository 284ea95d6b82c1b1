//! Upgrade latency under load: while the load generator's connections echo at full speed, the
//! harness opens new connections one after another (TCP connect, the upgrade request, the `101`
//! read back) and times each, from before `connect` to the end of the response head. That is what
//! a client joining a busy server waits (a reconnect storm after a deploy, a load generator
//! opening its connections while earlier ones already echo), and where an event loop that answers
//! a new connection only after whole turns of other work shows it.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one probe may take (connect, request, response) before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The request every probe sends (the key is RFC 6455's example; the answer is not checked beyond
/// its status line).
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// What the probes of one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Upgrades {
    /// Upgrades completed (`101` received).
    pub done: u32,
    /// Probes that failed or timed out.
    pub failed: u32,
    /// Median upgrade time, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Slowest, microseconds.
    pub max_us: f64,
}

impl Upgrades {
    /// The summary of `times` (one per completed upgrade) and `failed` probes; `None` when no
    /// upgrade completed.
    pub fn summarize(mut times: Vec<Duration>, failed: u32) -> Option<Upgrades> {
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        let at = |q: f64| {
            let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
            times[i].as_secs_f64() * 1e6
        };
        Some(Upgrades {
            done: times.len() as u32,
            failed,
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: at(1.0),
        })
    }
}

/// A probe thread waiting for its window.
pub struct Prober {
    open: Sender<Instant>,
    thread: JoinHandle<(Vec<Duration>, u32)>,
}

impl Prober {
    /// A thread that, once [`open`](Self::open) gives it the window's start, makes up to `count`
    /// sequential upgrades to `addr` until `window` has passed.
    pub fn spawn(addr: SocketAddr, count: u32, window: Duration) -> io::Result<Prober> {
        let (open, start) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("upgrade-probe".into())
            .spawn(move || probe_window(addr, count, window, start))?;
        Ok(Prober { open, thread })
    }

    /// Starts the window at `at` (probing begins then).
    pub fn open(&self, at: Instant) {
        // The thread only stops listening once it has its start; a second call is ignored.
        let _ = self.open.send(at);
    }

    /// Waits for the probes (bounded by the window and the per-probe timeout) and summarizes
    /// them; `None` if the window never opened or no upgrade completed.
    pub fn finish(self) -> Option<Upgrades> {
        drop(self.open);
        let (times, failed) = self.thread.join().ok()?;
        Upgrades::summarize(times, failed)
    }
}

fn probe_window(
    addr: SocketAddr,
    count: u32,
    window: Duration,
    start: Receiver<Instant>,
) -> (Vec<Duration>, u32) {
    let (mut times, mut failed) = (Vec::with_capacity(count as usize), 0);
    let Ok(open) = start.recv() else {
        return (times, failed);
    };
    thread::sleep(open.saturating_duration_since(Instant::now()));
    let close = open + window;
    for _ in 0..count {
        if Instant::now() >= close {
            break;
        }
        match upgrade(addr) {
            Ok(t) => times.push(t),
            Err(_) => failed += 1,
        }
    }
    (times, failed)
}

/// One upgrade: the time from before `connect` to the end of a `101` response head.
fn upgrade(addr: SocketAddr) -> io::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let mut head = [0u8; 1024];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == head.len() {
            return Err(io::Error::other("response head too long"));
        }
        match stream.read(&mut head[len..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => len += n,
        }
        if started.elapsed() > PROBE_TIMEOUT {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
    let took = started.elapsed();
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other("not a 101"));
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_percentiles() {
        let times = (1..=100).rev().map(Duration::from_micros).collect();
        let u = Upgrades::summarize(times, 3).unwrap();
        assert_eq!((u.done, u.failed), (100, 3));
        assert_eq!((u.p50_us, u.p99_us, u.max_us), (50.0, 99.0, 100.0));
        assert_eq!(Upgrades::summarize(Vec::new(), 5), None);
    }

    #[test]
    fn times_an_upgrade_and_refuses_other_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            for answer in [
                &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
                b"HTTP/1.1 400 No\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got.starts_with(b"GET / HTTP/1.1\r\n"));
                s.write_all(answer).unwrap();
            }
        });
        assert!(upgrade(addr).is_ok());
        assert!(upgrade(addr).is_err());
        server.join().unwrap();
    }
}
