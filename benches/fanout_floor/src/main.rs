//! `fanout-floor`: the bare-kernel floor of a pub/sub fan-out over loopback TCP, the baseline row of
//! `benches/pubsub.sh` scenario a.
//!
//! Two processes (each may hold at most 20,000 descriptors here, and N connections need N on each
//! side): the **sender** (this process, pinned on `--sender-cpu`) listens on 127.0.0.1, starts the
//! **receiver** (itself with `--receive PORT`, pinned on `--receiver-cpu`), which opens
//! `--connections N` TCP connections to it; once all are accepted the sender prints
//! `{"phase":"established",...}` on stderr and publishes `--rate R` times per second: one write of
//! `--size` bytes (default 100, about a JSON quote) to every socket in turn, with plain blocking
//! `write`s and `TCP_NODELAY`, as a WebSocket server's fan-out would if it cost nothing but the
//! kernel's sends. No WebSocket framing, no queues, no event loop on the sending side.
//! With `--io-uring` the fan-out is one `IORING_OP_SEND` per socket instead, submitted in batches
//! on one ring (`SINGLE_ISSUER | DEFER_TASKRUN`, 4096 entries, the completion queue 4x, as the
//! engine sets up its rings), and a publication ends when every send has completed: what a sender
//! saves by not entering the kernel once per socket.
//!
//! Each message starts with its *scheduled* publish time (ns, `CLOCK_REALTIME`, little-endian), so a
//! sender that falls behind its schedule shows as latency, like the feed's ticker thread that keeps
//! publishing while the server is behind. The receiver reads with epoll and times every message as
//! the receive time minus that stamp, one HDR histogram (ns, 3 significant digits), exactly what
//! `ringws load --subscribe` does with a quote's `ts`. After `--warmup` seconds, `--duration` seconds
//! are measured: deliveries received in the window, their latency, each publication's fan-out time
//! (first write to last write returning; a sender behind its schedule sends every publication due
//! in one write per socket, as a server flushing a subscriber's queued publications in one send
//! does), and both processes' CPU time in the window. Then the sender
//! stops, leaves one second for the last messages, and prints one JSON object on stdout with the
//! field names of `ringws load --json` (`msgs_per_s`, `latency_us`, `load_cpu_percent`) plus
//! `server_cpu` (the sender's CPU share), `fanout_us` and `late` (publications started more than one
//! period after their schedule). Every wait is bounded; exit status 0 when the run completed.

use hdrhistogram::Histogram;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deadline for connecting and accepting every connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time after the measured window for the last messages to arrive.
const DRAIN: Duration = Duration::from_secs(1);
/// The receiver gives up this long after the window's end if the sender never says it is done.
const RECEIVER_GRACE: u64 = 15_000_000_000;
/// The epoll token of the receiver's stdin (the sender's control pipe); sockets use their index.
const CONTROL: u64 = u64::MAX;

/// Submission queue entries of the `--io-uring` sender's ring.
const RING_ENTRIES: u32 = 4096;

const USAGE: &str = "usage: fanout-floor --connections N --rate R [--size B] [--warmup S] \
[--duration S] [--sender-cpu C] [--receiver-cpu C] [--io-uring]";

/// Command-line settings (the receiver gets the same ones plus `receive`).
struct Args {
    connections: usize,
    rate: u64,
    size: usize,
    warmup: u64,
    duration: u64,
    sender_cpu: usize,
    receiver_cpu: usize,
    /// Send through io_uring (one batch of sends per publication) instead of blocking writes.
    uring: bool,
    /// Set in the receiver process: the sender's port.
    receive: Option<u16>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        connections: 10_000,
        rate: 100,
        size: 100,
        warmup: 2,
        duration: 5,
        sender_cpu: 0,
        receiver_cpu: 1,
        uring: false,
        receive: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--io-uring" {
            a.uring = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--connections" => a.connections = num(&value)? as usize,
            "--rate" => a.rate = num(&value)?,
            "--size" => a.size = num(&value)? as usize,
            "--warmup" => a.warmup = num(&value)?,
            "--duration" => a.duration = num(&value)?,
            "--sender-cpu" => a.sender_cpu = num(&value)? as usize,
            "--receiver-cpu" => a.receiver_cpu = num(&value)? as usize,
            "--receive" => a.receive = Some(num(&value)? as u16),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !(1..=19_000).contains(&a.connections) {
        return Err("--connections must be between 1 and 19000 (descriptors per process)".into());
    }
    if !(1..=100_000).contains(&a.rate) || !(8..=65_536).contains(&a.size) || a.duration == 0 {
        return Err("--rate 1..100000, --size 8..65536, --duration at least 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|a| match a.receive {
        Some(port) => receiver(&a, port),
        None => sender(&a),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-floor: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

/// Nanoseconds since the UNIX epoch (`CLOCK_REALTIME`), the clock of `ringws_cli::feed::now_ns`.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This process's CPU time in ns (all threads, user + system).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread (and the processes it starts) to `cpu`.
fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read and
    // write that set, whose size is passed.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!(
            "pinning to CPU {cpu}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// `"p50":..,"p90":..,"p99":..,"p999":..,"max":..` in µs (with ns decimals, as `ringws load`).
fn percentiles_us(h: &Histogram<u64>) -> String {
    let us = |v: u64| v as f64 / 1000.0;
    format!(
        "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    )
}

/// A listener on 127.0.0.1 (a free port) with a 4096 backlog, so a burst of connects is not dropped.
fn listen() -> io::Result<TcpListener> {
    // SAFETY: socket takes no pointers; the result is checked and owned by the TcpListener below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    let l = unsafe { TcpListener::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads a sockaddr_in of the size passed; listen takes no pointers.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    // SAFETY: as above.
    if rc != 0 || unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

fn sender(a: &Args) -> Result<(), String> {
    pin(a.sender_cpu)?;
    let listener = listen().map_err(|e| format!("listening: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--receive", &port.to_string()])
        .args(["--connections", &a.connections.to_string()])
        .args(["--size", &a.size.to_string()])
        .args(["--receiver-cpu", &a.receiver_cpu.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the receiver: {e}"))?;
    let result = publish(a, &listener, &mut child);
    if result.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let (fanout, sender_cpu, late, publications) = result?;
    let report = String::from_utf8_lossy(&out.stdout);
    let report = report.trim();
    if !out.status.success() || report.is_empty() {
        return Err(format!("the receiver failed ({})", out.status));
    }
    println!(
        "{{\"mode\":\"floor\",\"sends\":\"{}\",\"connections\":{},\"rate\":{},\"size\":{},\"warmup_s\":{},\
\"duration_s\":{},\"publications\":{publications},\"late\":{late},\"server_cpu\":{sender_cpu:.0},\
\"fanout_us\":{},{report}}}",
        if a.uring { "io_uring" } else { "write" },
        a.connections,
        a.rate,
        a.size,
        a.warmup,
        a.duration,
        percentiles_us(&fanout),
    );
    Ok(())
}

/// Accepts every connection, tells the receiver the window, publishes on schedule until its end.
/// Returns the fan-out times of the publications in the window, the sender's CPU share in it
/// (percent), the number of publications started late and the number in the window.
fn publish(
    a: &Args,
    listener: &TcpListener,
    child: &mut std::process::Child,
) -> Result<(Histogram<u64>, f64, u64, u64), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut socks = Vec::with_capacity(a.connections);
    while socks.len() < a.connections {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                socks.push(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!("only {} connections in time", socks.len()));
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the receiver exited while connecting: {status}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accepting: {e}")),
        }
    }
    eprintln!(
        "{{\"phase\":\"established\",\"connections\":{}}}",
        socks.len()
    );
    let t0 = now_ns();
    let start = t0 + a.warmup * 1_000_000_000;
    let end = start + a.duration * 1_000_000_000;
    let mut control = child.stdin.take().ok_or("no receiver stdin")?;
    writeln!(control, "{start} {end}").map_err(|e| format!("control pipe: {e}"))?;
    let period = 1_000_000_000 / a.rate;
    let mut batch = Vec::new();
    let mut ring = if a.uring {
        let mut b = io_uring::IoUring::builder();
        b.setup_cqsize(RING_ENTRIES * 4)
            .setup_single_issuer()
            .setup_defer_taskrun();
        Some(
            b.build(RING_ENTRIES)
                .map_err(|e| format!("io_uring: {e}"))?,
        )
    } else {
        None
    };
    let (mut fanout, mut late, mut publications) = (histogram(), 0u64, 0u64);
    let mut cpu = (None, 0u64);
    let mut next = 0u64;
    while t0 + next * period < end {
        let sched = t0 + next * period;
        let now = now_ns();
        if now < sched {
            std::thread::sleep(Duration::from_nanos(sched - now));
            continue;
        }
        if sched >= start && cpu.0.is_none() {
            cpu.0 = Some(cpu_ns());
        }
        // Every publication due by now leaves in this fan-out, one write per socket: a sender that
        // fell behind batches, as a server flushing a subscriber's queue in one send does.
        let last = (now.min(end - 1) - t0) / period;
        batch.clear();
        for k in next..=last {
            let at = t0 + k * period;
            batch.extend_from_slice(&at.to_le_bytes());
            batch.resize(batch.len() + a.size - 8, b'.');
            if at >= start {
                publications += 1;
                late += u64::from(now - at > period);
            }
        }
        next = last + 1;
        let began = Instant::now();
        match &mut ring {
            Some(ring) => send_all(ring, &mut socks, &batch)?,
            None => {
                for s in &mut socks {
                    s.write_all(&batch).map_err(|e| format!("writing: {e}"))?;
                }
            }
        }
        if sched >= start {
            fanout.saturating_record(began.elapsed().as_nanos() as u64);
        }
    }
    cpu.1 = cpu_ns();
    let window = (now_ns().saturating_sub(start)).max(1);
    let share = 100.0 * (cpu.1 - cpu.0.unwrap_or(cpu.1)) as f64 / window as f64;
    std::thread::sleep(DRAIN);
    drop(control); // end of the run: the receiver reports and exits
    Ok((fanout, share, late, publications))
}

/// One `IORING_OP_SEND` of `msg` per socket, submitted as the submission queue fills, and waits
/// until all have completed. A send that fails ends the run; the rest of a partial one is written
/// with a blocking write.
fn send_all(
    ring: &mut io_uring::IoUring,
    socks: &mut [TcpStream],
    msg: &[u8],
) -> Result<(), String> {
    let (mut queued, mut done) = (0usize, 0usize);
    let reap = |ring: &mut io_uring::IoUring,
                socks: &mut [TcpStream],
                done: &mut usize|
     -> Result<(), String> {
        for cqe in ring.completion() {
            let sent = usize::try_from(cqe.result())
                .map_err(|_| format!("send: error {}", -cqe.result()))?;
            socks[cqe.user_data() as usize]
                .write_all(&msg[sent..])
                .map_err(|e| format!("writing: {e}"))?;
            *done += 1;
        }
        Ok(())
    };
    while done < socks.len() {
        while queued < socks.len() {
            let send = io_uring::opcode::Send::new(
                io_uring::types::Fd(socks[queued].as_raw_fd()),
                msg.as_ptr(),
                msg.len() as u32,
            )
            .build()
            .user_data(queued as u64);
            // SAFETY: `msg` outlives the sends: this function returns only after every send it
            // queued has completed (or the run ends with an error and the ring is dropped).
            if unsafe { ring.submission().push(&send) }.is_err() {
                break;
            }
            queued += 1;
        }
        // Sends in flight never exceed the submission queue, so the completion queue (4x) holds
        // all their completions.
        let in_flight = queued - done;
        ring.submit_and_wait(in_flight.min(RING_ENTRIES as usize))
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        reap(ring, socks, &mut done)?;
    }
    Ok(())
}

/// Per connection: where the next byte falls in its current message, and the stamp read so far.
#[derive(Clone, Copy, Default)]
struct Partial {
    off: usize,
    stamp: [u8; 8],
}

fn epoll_add(ep: i32, fd: i32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: epoll_ctl reads one epoll_event we own.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receiver(a: &Args, port: u16) -> Result<(), String> {
    pin(a.receiver_cpu)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut socks = Vec::with_capacity(a.connections);
    while socks.len() < a.connections {
        let s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))
            .map_err(|e| format!("connect {}: {e}", socks.len()))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        socks.push(s);
        if Instant::now() > deadline {
            return Err(format!("only {} connections in time", socks.len()));
        }
    }
    // SAFETY: epoll_create1 takes no pointers; the descriptor is checked and closed at exit.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll: {}", io::Error::last_os_error()));
    }
    for (i, s) in socks.iter().enumerate() {
        epoll_add(ep, s.as_raw_fd(), i as u64).map_err(|e| e.to_string())?;
    }
    epoll_add(ep, libc::STDIN_FILENO, CONTROL).map_err(|e| e.to_string())?;
    let mut control = BufReader::new(io::stdin());
    let (mut start, mut end) = (u64::MAX, u64::MAX);
    let mut parts = vec![Partial::default(); socks.len()];
    let mut buf = vec![0u8; 64 << 10];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let (mut hist, mut messages, mut errors) = (histogram(), 0u64, 0u64);
    let (mut cpu0, mut cpu1) = (None, None);
    'run: loop {
        // SAFETY: epoll_wait writes at most `events.len()` entries into the vector we own.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 10) };
        let wall = now_ns();
        if wall >= start && cpu0.is_none() {
            cpu0 = Some(cpu_ns());
        }
        if wall >= end && cpu1.is_none() {
            cpu1 = Some(cpu_ns());
        }
        if end != u64::MAX && wall > end + RECEIVER_GRACE {
            return Err("the sender never ended the run".into());
        }
        for ev in &events[..n.max(0) as usize] {
            if ev.u64 == CONTROL {
                let mut line = String::new();
                match control.read_line(&mut line) {
                    Ok(0) | Err(_) => break 'run,
                    Ok(_) => {
                        let mut it = line.split_whitespace().map(|v| v.parse::<u64>());
                        if let (Some(Ok(s)), Some(Ok(e))) = (it.next(), it.next()) {
                            (start, end) = (s, e);
                        }
                    }
                }
                continue;
            }
            let i = ev.u64 as usize;
            let got = match (&socks[i]).read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The sender closes every connection once the run is over.
                    errors += u64::from(wall < end);
                    // SAFETY: removes a descriptor we own from our epoll instance.
                    unsafe {
                        libc::epoll_ctl(
                            ep,
                            libc::EPOLL_CTL_DEL,
                            socks[i].as_raw_fd(),
                            std::ptr::null_mut(),
                        )
                    };
                    continue;
                }
                Ok(n) => n,
            };
            let p = &mut parts[i];
            let mut at = 0;
            while at < got {
                let take = if p.off < 8 {
                    let take = (8 - p.off).min(got - at);
                    p.stamp[p.off..p.off + take].copy_from_slice(&buf[at..at + take]);
                    if p.off + take == 8 {
                        let now = now_ns();
                        if (start..end).contains(&now) {
                            let ts = u64::from_le_bytes(p.stamp);
                            hist.saturating_record(now.saturating_sub(ts).max(1));
                            messages += 1;
                        }
                    }
                    take
                } else {
                    (a.size - p.off).min(got - at)
                };
                p.off = (p.off + take) % a.size;
                at += take;
            }
        }
    }
    // SAFETY: closes the epoll descriptor created above, used by nothing else.
    unsafe { libc::close(ep) };
    let duration = (end.saturating_sub(start)) as f64 / 1e9;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => 100.0 * (b - a) as f64 / (duration * 1e9),
        _ => 0.0,
    };
    println!(
        "\"messages\":{messages},\"msgs_per_s\":{:.1},\"latency_us\":{},\"load_cpu_percent\":{cpu:.0},\
\"errors\":{errors}",
        messages as f64 / duration.max(1e-9),
        percentiles_us(&hist)
    );
    Ok(())
}
