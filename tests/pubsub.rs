//! Pub/sub against an in-process server: ordering and no loss for subscribers that keep up, delivery
//! across workers, publishing from a callback and from foreign threads (with a publisher taken before
//! and after `run`), the last publication for late subscribers, unsubscribe (explicit and on close),
//! and each slow-consumer policy with a subscriber that stops reading next to ones that keep up
//! (with a small `socket_send_buffer`, also how little a stalled conflated subscriber reads
//! before the latest values).
//!
//! Every wait is bounded: reads have a timeout, loops a deadline and a count.

mod common;

use common::{Frame, InProcess, RawClient, ReadError, eventually, op};
use ringws::{
    ConnId, Handler, Message, Publisher, ServerBuilder, ServerHandle, SlowConsumer, Socket,
    TopicStats,
};
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Commands: `sub T`, `last T` (subscribe with the last publication), `unsub T`, `pub T PAYLOAD`,
/// `pause` (this connection stops reading), `resume` (the last paused connection of this worker
/// reads again). Answers `sub`/`last`/`unsub`/`pause`/`resume` with `<command> <worker> <result>` so
/// tests know where a subscriber lives and that its subscription is in place.
struct Bus {
    worker: usize,
    paused: Option<ConnId>,
}

impl Handler for Bus {
    type State = ();

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return;
        };
        let (cmd, arg) = text.split_once(' ').unwrap_or((text, ""));
        let w = self.worker;
        match cmd {
            "sub" => {
                let r = ws.subscribe(arg);
                let _ = ws.send_text(&format!("sub {w} {r:?}"));
            }
            "last" => {
                let _ = ws.send_text(&format!("last {w}"));
                let _ = ws.subscribe_with_last(arg);
            }
            "unsub" => {
                let r = ws.unsubscribe(arg);
                let _ = ws.send_text(&format!("unsub {w} {r}"));
            }
            "pause" => {
                ws.pause_reading();
                self.paused = Some(ws.id());
                let _ = ws.send_text(&format!("pause {w}"));
            }
            "resume" => {
                let resumed = self.paused.take().and_then(|id| ws.get(id)).map(|mut p| {
                    p.resume_reading();
                });
                let _ = ws.send_text(&format!("resume {w} {}", resumed.is_some()));
            }
            "pub" => {
                let (topic, payload) = arg.split_once(' ').unwrap_or((arg, ""));
                ws.publish(topic, Message::Text(payload)).unwrap();
            }
            _ => {}
        }
    }
}

/// A server running `Bus` on its own thread; shut down when dropped.
struct TestServer {
    addr: SocketAddr,
    handle: ServerHandle,
    /// Taken before `run`.
    publisher: Publisher,
    _server: InProcess,
}

impl TestServer {
    fn start(
        workers: usize,
        tune: impl FnOnce(ServerBuilder) -> ServerBuilder,
        setup: impl FnOnce(&Publisher),
    ) -> Self {
        let server = tune(InProcess::builder(workers))
            .build()
            .expect("server builds");
        let publisher = server.publisher();
        setup(&publisher);
        let server = InProcess::run(server, |worker| Bus {
            worker,
            paused: None,
        });
        Self {
            addr: server.addr,
            handle: server.handle.clone(),
            publisher,
            _server: server,
        }
    }
}

/// The next text message.
fn text(c: &mut RawClient) -> String {
    let (opcode, payload) = c.expect_message();
    assert_eq!(opcode, op::TEXT);
    String::from_utf8(payload).expect("UTF-8")
}

/// Sends a command and returns the worker index from its answer.
fn command(c: &mut RawClient, cmd: &str) -> usize {
    c.send(&Frame::text(cmd));
    let answer = text(c);
    let verb = cmd.split(' ').next().unwrap();
    let mut parts = answer.split(' ');
    assert_eq!(parts.next(), Some(verb), "answer {answer:?} to {cmd:?}");
    parts.next().unwrap().parse().expect("worker index")
}

/// A client subscribed to `topic`, and the worker it is on.
fn subscriber(addr: SocketAddr, topic: &str) -> (RawClient, usize) {
    let mut c = RawClient::connect(addr);
    let w = command(&mut c, &format!("sub {topic}"));
    (c, w)
}

/// Reads `n` text messages and asserts they are `prefix0 .. prefix{n-1}`, in order.
fn expect_sequence(c: &mut RawClient, prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(text(c), format!("{prefix}{i}"), "message {i} of {n}");
    }
}

/// `poll` entries waiting for input on each of `streams`.
fn readable(streams: &[std::net::TcpStream]) -> Vec<libc::pollfd> {
    use std::os::fd::AsRawFd;
    streams
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

#[test]
fn fast_subscribers_get_every_publication_in_order() {
    let server = TestServer::start(1, |b| b, |_| {});
    let mut subs: Vec<RawClient> = (0..50).map(|_| subscriber(server.addr, "t").0).collect();
    let topic = server.publisher.topic("t").unwrap();
    assert_eq!(topic.stats().subscribers, 50);
    for i in 0..2000 {
        topic.publish(Message::Text(&format!("m{i}")));
    }
    for c in &mut subs {
        expect_sequence(c, "m", 2000);
    }
    let stats = topic.stats();
    assert_eq!(
        (stats.published, stats.dropped, stats.conflated),
        (2000, 0, 0)
    );
}

#[test]
fn a_paused_connection_receives_nothing_until_resumed() {
    let server = TestServer::start(1, |b| b, |_| {});
    let (mut slow, _) = subscriber(server.addr, "p");
    command(&mut slow, "pause");
    // A command sent now waits in the kernel: no answer while paused.
    slow.send(&Frame::text("sub q"));
    let topic = server.publisher.topic("p").unwrap();
    topic.publish(Message::Text("while paused"));
    // Publications still leave: pausing stops reading, not sending.
    assert_eq!(text(&mut slow), "while paused");
    slow.expect_silence(Duration::from_millis(300));
    let mut other = RawClient::connect(server.addr);
    command(&mut other, "resume");
    assert_eq!(text(&mut slow), "sub 0 Ok(true)");
    topic.publish(Message::Text("after"));
    assert_eq!(text(&mut slow), "after");
}

#[test]
fn publications_reach_subscribers_on_every_worker() {
    reach_every_worker(true);
}

/// The same with workers waking each other by eventfd instead of through their rings
/// (`msg_ring` off; on by default).
#[test]
fn publications_reach_every_worker_woken_by_eventfd() {
    reach_every_worker(false);
}

/// Subscribers on both of two workers get every publication, in order, from a foreign thread
/// (which always wakes workers by eventfd) and from a callback (which wakes the other worker
/// through its ring if `msg_ring`).
fn reach_every_worker(msg_ring: bool) {
    let server = TestServer::start(2, |b| b.msg_ring(msg_ring), |_| {});
    let mut subs = Vec::new();
    let mut on = [0usize; 2];
    for _ in 0..64 {
        let (c, w) = subscriber(server.addr, "x");
        on[w] += 1;
        subs.push(c);
        if subs.len() >= 8 && on.iter().all(|&n| n >= 2) {
            break;
        }
    }
    assert!(on.iter().all(|&n| n >= 2), "subscribers per worker: {on:?}");
    // From a foreign thread (the publisher was taken before `run`)...
    let publisher = server.publisher.clone();
    std::thread::spawn(move || {
        for i in 0..300 {
            publisher
                .publish("x", Message::Text(&format!("f{i}")))
                .unwrap();
        }
    })
    .join()
    .unwrap();
    for c in &mut subs {
        expect_sequence(c, "f", 300);
    }
    // ...and from a callback: subscriber 0 publishes, everyone (itself included) receives, in order.
    let cmds: Vec<Frame> = (0..100)
        .map(|i| Frame::text(format!("pub x c{i}")))
        .collect();
    subs[0].send_all(&cmds);
    for c in &mut subs {
        expect_sequence(c, "c", 100);
    }
}

#[test]
fn a_publisher_taken_after_run_works_from_any_thread() {
    let server = TestServer::start(2, |b| b, |_| {});
    let (mut a, _) = subscriber(server.addr, "late");
    let publisher = server.handle.publisher();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let p = publisher.clone();
            std::thread::spawn(move || {
                let topic = p.topic("late").unwrap();
                for i in 0..200 {
                    topic.publish(Message::Text(&format!("{t}:{i}")));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    // Two publishers interleave, but each one's publications arrive in its order.
    let mut next = [0; 2];
    for _ in 0..400 {
        let m = text(&mut a);
        let (t, i) = m.split_once(':').unwrap();
        let t: usize = t.parse().unwrap();
        assert_eq!(
            i.parse::<i32>().unwrap(),
            next[t],
            "publisher {t} out of order"
        );
        next[t] += 1;
    }
}

#[test]
fn a_late_subscriber_starts_from_the_last_publication() {
    let server = TestServer::start(1, |b| b, |_| {});
    let topic = server.publisher.topic("price").unwrap();
    for i in 0..10 {
        topic.publish(Message::Text(&format!("p{i}")));
    }
    let mut c = RawClient::connect(server.addr);
    command(&mut c, "last price");
    assert_eq!(text(&mut c), "p9", "the last publication first");
    topic.publish(Message::Text("p10"));
    assert_eq!(text(&mut c), "p10", "then the next ones, nothing twice");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn unsubscribe_and_close_end_subscriptions() {
    let server = TestServer::start(1, |b| b, |_| {});
    let mut subs: Vec<RawClient> = (0..5).map(|_| subscriber(server.addr, "u").0).collect();
    let topic = server.publisher.topic("u").unwrap();
    assert_eq!(topic.stats().subscribers, 5);
    assert_eq!(command(&mut subs[0], "unsub u"), 0);
    subs[1].send(&Frame::close(1000, b""));
    subs[1].expect_close_frame(Some(1000));
    drop(subs.remove(2)); // gone without a Close
    let stats = || topic.stats().subscribers;
    assert!(
        eventually(Duration::from_secs(5), || stats() == 2),
        "subscribers left: {}",
        stats()
    );
    topic.publish(Message::Text("after"));
    for c in &mut subs[2..] {
        assert_eq!(text(c), "after");
    }
    subs[0].expect_silence(Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------------
// Slow consumers

/// `max_backpressure` of the slow-consumer tests: small, so a subscriber that stops reading is
/// behind soon after the kernel's socket buffers fill, yet ~60 ms of publishing, so the readers that
/// keep up stay under it even when a busy machine starves them of CPU for a while.
const LIMIT: usize = 256 << 10;
/// Keys of the conflation test: the first byte of each payload.
const KEYS: [u8; 4] = *b"ABCD";

/// A payload of 512 bytes: key byte, sequence number, padding.
fn payload(key: u8, seq: u64) -> String {
    let mut s = format!("{}{seq:08} ", key as char);
    s.extend(std::iter::repeat_n('.', 512 - s.len()));
    s
}

fn first_byte(p: &[u8]) -> u64 {
    p.first().map_or(0, |&b| u64::from(b))
}

/// A subscriber whose socket has a 4 KiB receive buffer, set before connecting.
fn small_buffer_subscriber(addr: SocketAddr, topic: &str) -> RawClient {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut c = RawClient::connect_stream(s.into());
    command(&mut c, &format!("sub {topic}"));
    c
}

/// A reader thread: gives back its client and the (key, seq) of each message before `END`.
type Reader = JoinHandle<(RawClient, Vec<(u8, u64)>)>;

/// Reads messages on its own thread until the `END` message; returns (key, seq) of each.
fn reader(mut c: RawClient) -> Reader {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..10_000_000 {
            let m = text(&mut c);
            if m == "END" {
                break;
            }
            got.push((m.as_bytes()[0], m[1..9].parse().unwrap()));
        }
        (c, got)
    })
}

/// Publishes paced bursts (so the fast readers keep up) round-robin over `KEYS` until `done` says
/// the slow subscriber has been affected enough, then one final publication per key and `END`.
/// Returns the number of publications before `END`.
fn publish_until(publisher: &Publisher, topic: &str, done: impl Fn(&TopicStats) -> bool) -> u64 {
    let topic = publisher.topic(topic).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 0u64;
    while !done(&topic.stats()) {
        assert!(
            Instant::now() < deadline && seq < 500_000,
            "the slow subscriber was never behind: {:?} after {seq} publications",
            topic.stats()
        );
        for _ in 0..8 {
            topic.publish(Message::Text(&payload(KEYS[seq as usize % 4], seq)));
            seq += 1;
        }
        // Paces the publisher: bursts of 8 a millisecond apart, so the fast readers keep up.
        std::thread::sleep(Duration::from_millis(1));
    }
    for &k in &KEYS {
        topic.publish(Message::Text(&payload(k, seq)));
        seq += 1;
    }
    topic.publish(Message::Text("END"));
    seq
}

/// Starts a server whose topic `s` has `policy`, three fast readers and one slow subscriber.
fn slow_setup(policy: SlowConsumer) -> (TestServer, Vec<Reader>, RawClient) {
    slow_setup_with(policy, |b| b)
}

/// [`slow_setup`] with more server settings.
fn slow_setup_with(
    policy: SlowConsumer,
    tune: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (TestServer, Vec<Reader>, RawClient) {
    let server = TestServer::start(
        1,
        |b| tune(b.max_backpressure(LIMIT)),
        |p| {
            p.create_topic("s", policy).unwrap();
        },
    );
    let slow = small_buffer_subscriber(server.addr, "s");
    let fast = (0..3)
        .map(|_| reader(subscriber(server.addr, "s").0))
        .collect();
    (server, fast, slow)
}

/// Every fast reader got every publication, in order. Returns their clients, still connected.
fn assert_fast_complete(fast: Vec<Reader>, published: u64) -> Vec<RawClient> {
    fast.into_iter()
        .map(|r| {
            let (c, got) = r.join().unwrap();
            assert_eq!(
                got.len() as u64,
                published,
                "a fast subscriber lost messages"
            );
            assert!(got.iter().enumerate().all(|(i, &(_, s))| s == i as u64));
            c
        })
        .collect()
}

/// The slow subscriber resumes reading: everything up to `END`.
fn drain_slow(slow: RawClient) -> Vec<(u8, u64)> {
    reader(slow).join().unwrap().1
}

#[test]
fn conflation_keeps_the_latest_per_key_for_a_slow_subscriber() {
    let (server, fast, slow) = slow_setup(SlowConsumer::Conflate { key: first_byte });
    let published = publish_until(&server.publisher, "s", |s| s.conflated >= 2000);
    let _fast = assert_fast_complete(fast, published);
    let got = drain_slow(slow);
    let stats = server.publisher.topic("s").unwrap().stats();
    // Each conflation replaced exactly one queued publication.
    assert_eq!(got.len() as u64 + stats.conflated, published, "{stats:?}");
    assert!(stats.conflated >= 2000 && stats.dropped == 0);
    assert_latest_per_key(&got, published);
}

#[test]
fn the_publication_that_replaced_others_says_so_to_the_slow_subscriber() {
    fn mark(p: &[u8], out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(p);
        out.push(b'*');
        true
    }
    let (server, fast, mut slow) = slow_setup(SlowConsumer::Conflate { key: first_byte });
    assert!(server.publisher.topic("s").unwrap().mark_conflated(mark));
    let published = publish_until(&server.publisher, "s", |s| s.conflated >= 200);
    let _fast = assert_fast_complete(fast, published);
    // Per key, consecutive publications are 4 apart (round-robin over 4 keys): a larger step is a
    // conflation gap, and exactly the publication after one is marked.
    let mut last: [Option<u64>; 4] = [None; 4];
    let (mut marked, mut gaps) = (0, 0);
    for _ in 0..published {
        let m = text(&mut slow);
        if m == "END" {
            break;
        }
        let k = KEYS.iter().position(|&k| k == m.as_bytes()[0]).unwrap();
        let seq: u64 = m[1..9].parse().unwrap();
        let is_marked = m.ends_with('*');
        if let Some(prev) = last[k] {
            let gap = seq > prev + 4;
            assert_eq!(
                gap, is_marked,
                "key {k}: {prev} -> {seq}, marked {is_marked}"
            );
            gaps += u64::from(gap);
        }
        marked += u64::from(is_marked);
        last[k] = Some(seq);
    }
    assert!(marked > 0 && gaps > 0, "marked {marked}, gaps {gaps}");
}

/// On resuming, a conflated subscriber catches up with the current value of every key, and per key
/// values only move forward.
fn assert_latest_per_key(got: &[(u8, u64)], published: u64) {
    for (i, &k) in KEYS.iter().enumerate() {
        let last = got.iter().rev().find(|&&(key, _)| key == k).unwrap();
        assert_eq!(
            last.1,
            published - 4 + i as u64,
            "latest value of key {}",
            k as char
        );
    }
    // Per key, values only move forward.
    for &k in &KEYS {
        let seqs: Vec<u64> = got.iter().filter(|g| g.0 == k).map(|g| g.1).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {} went back",
            k as char
        );
    }
}

#[test]
fn with_a_small_send_buffer_a_stalled_subscriber_resumes_near_the_latest_values() {
    // 4 KiB asked (8 KiB for Linux) on the server's socket and on the subscriber's receive side:
    // what the subscriber has not read waits in the server's queue, where conflation applies.
    let (server, fast, slow) = slow_setup_with(SlowConsumer::Conflate { key: first_byte }, |b| {
        b.socket_send_buffer(4096)
    });
    let published = publish_until(&server.publisher, "s", |s| s.conflated >= 2000);
    let _fast = assert_fast_complete(fast, published);
    let got = drain_slow(slow);
    // Everything it read before the latest values: the queue (LIMIT, one frame over it, one per
    // key) and the two small kernel buffers. With the kernel's autotuned send buffer (MBs on
    // loopback) it would read thousands of stale messages first.
    let frame = payload(b'A', 0).len() + 4;
    let bound = (LIMIT + (64 << 10)) / frame;
    assert!(
        got.len() <= bound,
        "{} messages before catching up (at most {bound} expected) of {published}",
        got.len()
    );
    assert_latest_per_key(&got, published);
}

#[test]
fn drop_newest_drops_only_for_the_slow_subscriber() {
    let (server, fast, slow) = slow_setup(SlowConsumer::DropNewest);
    let published = publish_until(&server.publisher, "s", |s| s.dropped >= 2000);
    let _fast = assert_fast_complete(fast, published);
    let stats = server.publisher.topic("s").unwrap().stats();
    // END itself may be dropped for the slow subscriber: read what it has, bounded.
    let mut slow = slow;
    slow.set_timeout(Duration::from_secs(2));
    let (mut got, mut end_seen) = (Vec::new(), false);
    while let Ok(f) = slow.read_frame() {
        if f.payload == b"END" {
            end_seen = true;
            break;
        }
        got.push(
            String::from_utf8(f.payload).unwrap()[1..9]
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    // Every publication (END included) was either received or counted as dropped.
    let received = got.len() as u64 + u64::from(end_seen);
    assert_eq!(received + stats.dropped, published + 1, "{stats:?}");
    assert!(stats.dropped >= 2000 && stats.conflated == 0);
}

#[test]
fn disconnect_closes_the_slow_subscriber_with_1008() {
    let (server, fast, slow) = slow_setup(SlowConsumer::Disconnect);
    let published = publish_until(&server.publisher, "s", |s| s.disconnected >= 1);
    let _fast = assert_fast_complete(fast, published);
    let stats = server.publisher.topic("s").unwrap().stats();
    assert_eq!(stats.disconnected, 1);
    assert_eq!(stats.subscribers, 3, "the slow one is unsubscribed");
    // What it was sent before the close arrives in order, then the Close 1008.
    let mut slow = slow;
    let mut next = 0u64;
    loop {
        match slow.read_frame() {
            Ok(f) if f.opcode == op::TEXT => {
                let seq: u64 = String::from_utf8(f.payload).unwrap()[1..9].parse().unwrap();
                assert_eq!(seq, next);
                next += 1;
            }
            Ok(f) if f.opcode == op::CLOSE => {
                assert_eq!(f.close_code(), Some(1008));
                assert_eq!(&f.payload[2..], b"slow consumer");
                break;
            }
            // The close timeout may end the connection before the slow reader gets to the Close.
            Err(ReadError::Eof | ReadError::Reset) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(next > 0 && next < published);
}

// ---------------------------------------------------------------------------------------------------
// Measurement

/// Fan-out throughput and publish-to-receive latency: one foreign-thread publisher, `SUBS`
/// subscribers (default 1000) on one worker, `RATE` publications per second (default 1000) of
/// 64-byte binary payloads carrying their publish time, for `SECS` seconds (default 5). Subscribers
/// are read by two client threads with poll(2). Client, publisher and server share the machine, so
/// this bounds the engine from below.
///
/// `SUBS=1000 RATE=2000 cargo test --release --test pubsub measurement_fanout -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture in release mode"]
fn measurement_fanout() {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (subs, rate, secs) = (env("SUBS", 1000), env("RATE", 1000), env("SECS", 5));
    let server = TestServer::start(1, |b| b.max_connections(subs as usize + 64), |_| {});
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let mut streams = Vec::new();
    for _ in 0..subs {
        let (c, _) = subscriber(server.addr, "fan");
        let s = c.try_clone_stream();
        s.set_nonblocking(true).unwrap();
        streams.push((c, s));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Deliveries seen by the readers so far (the end of the run waits for all of them).
    let delivered = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let mine: Vec<_> = streams
                .iter()
                .skip(r)
                .step_by(2)
                .map(|(_, s)| s.try_clone().unwrap())
                .collect();
            let stop = Arc::clone(&stop);
            let delivered = Arc::clone(&delivered);
            std::thread::spawn(move || {
                let mut fds = readable(&mine);
                let mut pending: Vec<Vec<u8>> = vec![Vec::new(); mine.len()];
                let (mut lat_us, mut buf) = (Vec::<u32>::new(), vec![0u8; 64 << 10]);
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: `fds` is a valid array of pollfd structs for sockets owned here.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, 10) };
                    for (i, pfd) in fds.iter().enumerate() {
                        if pfd.revents == 0 {
                            continue;
                        }
                        while let Ok(n) = (&mine[i]).read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            pending[i].extend_from_slice(&buf[..n]);
                        }
                        let t = now_ns();
                        let p = &mut pending[i];
                        let mut at = 0;
                        // Server frames of 64-byte payloads: 2-byte header, ts in the first 8 bytes.
                        while p.len() - at >= 66 {
                            let ts = u64::from_le_bytes(p[at + 2..at + 10].try_into().unwrap());
                            lat_us.push((t.saturating_sub(ts) / 1000) as u32);
                            at += 66;
                        }
                        delivered.fetch_add(at as u64 / 66, Ordering::Relaxed);
                        p.drain(..at);
                    }
                }
                lat_us
            })
        })
        .collect();
    let topic = server.publisher.topic("fan").unwrap();
    let cpu_before = thread_cpu("ringws-w0");
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let due = (start.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        while sent < due {
            let mut payload = [0u8; 64];
            payload[..8].copy_from_slice(&now_ns().to_le_bytes());
            topic.publish(Message::Binary(&payload));
            sent += 1;
        }
        // Paces the publisher: it publishes what is due at RATE every 200 us.
        std::thread::sleep(Duration::from_micros(200));
    }
    // The last publications arrive: every delivery is counted (bounded; the run reports a shortfall
    // in its line rather than failing, it is a measurement).
    let all_in = eventually(Duration::from_secs(10), || {
        delivered.load(Ordering::Relaxed) >= sent * subs
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = thread_cpu("ringws-w0") - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{subs} subscribers, {sent} publications ({rate}/s): {} deliveries of {} expected{}, \
         {:.0} deliveries/s; worker CPU {:.2} s ({:.0} ns per delivery); latency p50 {} us, \
         p99 {} us, p99.9 {} us, max {} us; {:?}",
        lat.len(),
        sent * subs,
        if all_in { "" } else { " (not all within 10 s)" },
        lat.len() as f64 / elapsed,
        cpu,
        cpu * 1e9 / lat.len() as f64,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        lat[lat.len() - 1],
        topic.stats()
    );
}

/// CPU time (user + system, seconds) of this process's thread named `name`, from /proc.
fn thread_cpu(name: &str) -> f64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // After the parenthesised name come state, ppid, ...: utime and stime are the 12th and 13th.
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks = |i: usize| f[i].parse::<u64>().unwrap();
        // SAFETY: sysconf takes a constant and touches no memory.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        return (ticks(11) + ticks(12)) as f64 / hz;
    }
    panic!("no thread {name}");
}

/// Wake-ups between workers through their rings (`msg_ring` on, `IORING_OP_MSG_RING`) against
/// eventfds (off), in one run: 2 workers, one connection on worker 0 publishing from its callback
/// (`pub` commands of 64-byte payloads on a schedule of one per `GAP_US` microseconds, default
/// 200, so nearly every publication finds worker 1's inbox empty and wakes it) and `SUBS` subscribers (default 100) on
/// worker 1, read by one client thread with poll(2). Reports both workers' CPU per delivery.
/// `ROUNDS` rounds (default 3) of both settings in turn, `SECS` seconds each (default 3).
///
/// `cargo test --release --test pubsub measurement_cross_worker_wakes -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture in release mode"]
fn measurement_cross_worker_wakes() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (subs, gap, secs, rounds) = (
        env("SUBS", 100) as usize,
        Duration::from_micros(env("GAP_US", 200)),
        Duration::from_secs(env("SECS", 3)),
        env("ROUNDS", 3),
    );
    for round in 0..rounds {
        for msg_ring in [true, false] {
            let (sent, delivered, w0, w1) = cross_worker_round(msg_ring, subs, gap, secs);
            println!(
                "round {round} msg_ring {msg_ring}: {sent} publications, {delivered} deliveries \
                 of {} expected; worker CPU w0 {w0:.2} s + w1 {w1:.2} s = {:.0} ns per delivery, \
                 {:.0} ns per publication",
                sent * subs as u64,
                (w0 + w1) * 1e9 / delivered.max(1) as f64,
                (w0 + w1) * 1e9 / sent.max(1) as f64,
            );
        }
    }
}

/// One run of [`measurement_cross_worker_wakes`]: publications sent, deliveries read, and the CPU
/// seconds of workers 0 and 1 over the run.
fn cross_worker_round(
    msg_ring: bool,
    subs: usize,
    gap: Duration,
    secs: Duration,
) -> (u64, u64, f64, f64) {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let server = TestServer::start(
        2,
        |b| b.msg_ring(msg_ring).max_connections(4 * subs + 64),
        |_| {},
    );
    let on = |c: &mut RawClient, want: usize| command(c, "sub other") == want;
    let mut publisher = (0..64)
        .map(|_| RawClient::connect(server.addr))
        .find_map(|mut c| on(&mut c, 0).then_some(c))
        .expect("a connection on worker 0");
    let mut streams = Vec::new();
    for _ in 0..4 * subs + 64 {
        let (c, w) = subscriber(server.addr, "fan");
        if w == 1 {
            let s = c.try_clone_stream();
            s.set_nonblocking(true).unwrap();
            streams.push((c, s));
            if streams.len() == subs {
                break;
            }
        }
    }
    assert_eq!(streams.len(), subs, "subscribers on worker 1");
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let reader = {
        let mine: Vec<_> = streams
            .iter()
            .map(|(_, s)| s.try_clone().unwrap())
            .collect();
        let (stop, delivered) = (Arc::clone(&stop), Arc::clone(&delivered));
        std::thread::spawn(move || {
            let mut fds = readable(&mine);
            let mut buf = vec![0u8; 64 << 10];
            // Every delivery is a 66-byte frame (2-byte header, 64-byte payload).
            let mut bytes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `fds` is a valid array of pollfd structs for sockets owned here.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, 10) };
                for (i, pfd) in fds.iter().enumerate() {
                    if pfd.revents != 0 {
                        while let Ok(n @ 1..) = (&mine[i]).read(&mut buf) {
                            bytes += n as u64;
                        }
                    }
                }
                delivered.store(bytes / 66, Ordering::Relaxed);
            }
        })
    };
    let cpu = || (thread_cpu("ringws-w0"), thread_cpu("ringws-w1"));
    let before = cpu();
    let frame = Frame::text(format!("pub fan {}", "x".repeat(64)));
    let start = Instant::now();
    let mut sent = 0u64;
    // Paced on a schedule, one per `gap`, so both settings publish the same count at the same rate
    // (a late thread sends what is due at once).
    while start.elapsed() < secs {
        let due = (start.elapsed().as_nanos() / gap.as_nanos()) as u64;
        while sent < due {
            publisher.send(&frame);
            sent += 1;
        }
        std::thread::sleep(gap / 2);
    }
    // Bounded: a shortfall shows in the report line rather than failing (a measurement).
    eventually(Duration::from_secs(10), || {
        delivered.load(Ordering::Relaxed) >= sent * subs as u64
    });
    let after = cpu();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    (
        sent,
        delivered.load(Ordering::Relaxed),
        after.0 - before.0,
        after.1 - before.1,
    )
}
