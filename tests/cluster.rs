//! Several `ringws serve --mode feed --rate 0 --bridge URL` nodes fed by one `ringws ticker` through
//! a real broker (`nats-server`, `redis-server`), behind a real HAProxy: every subscriber gets every
//! quote of its symbols in order whichever node it lands on; nodes subscribe on the broker only to
//! what their clients want (the broker's own monitoring says so); a node killed with SIGKILL loses
//! its clients to the others; a node sent SIGTERM leaves HAProxy's rotation before it closes its
//! connections; a broker restarted mid-stream is reconnected to and resubscribed by every node; a
//! client that leaves one node resumes on another with no gap (both brokers carry the positions).
//!
//! The tools come from Debian's packages (`scripts/test.sh` installs them); a missing one fails the
//! test with the install command.

mod common;

use common::brokers::{
    Haproxy, Nats, Redis, Seen, Subscriber, expect_in_order, get, metric, ticker,
};
use common::{Server, eventually, free_port};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Symbols of the test feed (the ticker and the nodes must agree).
const SYMBOLS: usize = 12;
/// Quotes per second over all symbols: 25 per symbol, modest enough for a shared 2-core machine.
const RATE: u64 = 300;
/// How long a check may take.
const WITHIN: Duration = Duration::from_secs(20);

/// The feed's symbol names.
fn names() -> Vec<String> {
    ringws_cli::feed::symbol_names(SYMBOLS)
}

/// A feed node bridged to `url`, with its admin endpoints on their own port.
struct Node {
    server: Server,
    admin: SocketAddr,
}

impl Node {
    fn start(url: &str, extra: &[&str]) -> Node {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin_s = admin.to_string();
        let symbols = SYMBOLS.to_string();
        let mut args = vec!["--mode", "feed"];
        if !extra.contains(&"--rate") {
            args.extend(["--rate", "0"]);
        }
        args.extend([
            "--symbols",
            &symbols,
            "--bridge",
            url,
            "--bridge-max-backoff",
            "0.2",
            "--admin-addr",
            &admin_s,
        ]);
        args.extend_from_slice(extra);
        let server = Server::start_with(&args, |cmd| {
            cmd.env("RUST_LOG", "warn");
        });
        Node { server, admin }
    }

    /// Open WebSocket connections (the admin listener's own scrape is not one of them).
    fn connections(&self) -> u64 {
        match get(self.admin, "/metrics") {
            Some((200, text)) => metric(&text, "ringws_connections_open") as u64,
            _ => u64::MAX,
        }
    }
}

/// Connects `n` subscribers to `addr`, subscriber `i` to two symbols of `pick(i)`.
fn subscribers(addr: SocketAddr, n: usize, pick: impl Fn(usize) -> Vec<String>) -> Vec<Subscriber> {
    (0..n)
        .map(|i| {
            Subscriber::connect(addr, &pick(i))
                .unwrap_or_else(|| panic!("subscriber {i} could not connect to {addr}"))
        })
        .collect()
}

/// Checks every subscriber in parallel with [`expect_in_order`] and fails the test (saying `when`)
/// on any subscriber that missed, repeated or reordered a quote; returns them for more reading.
fn all_in_order(subs: Vec<Subscriber>, want: usize, when: &str) -> Vec<Subscriber> {
    let handles: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || {
                let r = expect_in_order(&mut s, want, WITHIN);
                (s, r.map_err(|e| format!("subscriber {i}: {e}")))
            })
        })
        .collect();
    let mut subs = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        let (s, r) = h.join().expect("checker thread");
        subs.push(s);
        if let Err(e) = r {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{when}: {errors:#?}");
    subs
}

/// The symbols subscriber `i` of a test wants: two of the first four (so that the broker's
/// subscriptions can be checked to be only those).
fn two_of_four(i: usize) -> Vec<String> {
    let n = names();
    vec![n[i % 4].clone(), n[(i + 1) % 4].clone()]
}

#[test]
fn nats_three_nodes_behind_haproxy_deliver_every_quote_in_order_and_subscribe_only_to_interest() {
    let nats = Nats::start();
    let url = nats.url();
    // Two workers each: a topic's first and last subscriber on a node may be on either.
    let nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(&url, &["--workers", "2"]))
        .collect();
    // Every node is connected (its name is on the server) and subscribed to nothing yet.
    assert!(
        eventually(WITHIN, || nats.subscriptions("ringws").len() == 3),
        "{:?}",
        nats.subscriptions("ringws")
    );
    assert!(
        nats.subscriptions("ringws")
            .iter()
            .all(|(_, s)| s.is_empty())
    );
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|n| (n.server.addr, n.admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, SYMBOLS, RATE);

    let subs = subscribers(lb.addr, 9, two_of_four);
    // They landed on all three nodes.
    let per_node: Vec<u64> = nodes.iter().map(Node::connections).collect();
    assert!(
        per_node.iter().all(|&c| c >= 1),
        "connections per node: {per_node:?}"
    );
    assert_eq!(per_node.iter().sum::<u64>(), 9, "{per_node:?}");

    let subs = all_in_order(subs, 20, "quotes in order");

    // Interest: each node is subscribed on the broker to some of the four symbols its clients
    // want, and to none of the other eight the ticker publishes.
    let wanted: Vec<String> = names()[..4].iter().map(|s| format!("ringws.{s}")).collect();
    let subsz = nats.subscriptions("ringws");
    let bridged: Vec<&(String, Vec<String>)> = subsz
        .iter()
        .filter(|(name, _)| name.starts_with("ringws serve"))
        .collect();
    assert_eq!(bridged.len(), 3, "{subsz:?}");
    for (name, subjects) in &bridged {
        assert!(!subjects.is_empty(), "{name}: no subscription");
        let mut unique = subjects.clone();
        unique.dedup();
        assert_eq!(
            &unique, subjects,
            "{name}: one subscription per topic per node"
        );
        assert!(
            subjects.iter().all(|s| wanted.contains(s)),
            "{name}: {subjects:?}"
        );
    }

    // A client straight on node 1 wants another symbol: only node 1 subscribes to it, and
    // unsubscribes when the client leaves.
    let other = names()[7].clone();
    let subject = format!("ringws.{other}");
    let node1 = format!("ringws serve {}", nodes[0].server.addr);
    let direct = Subscriber::connect(nodes[0].server.addr, std::slice::from_ref(&other))
        .expect("direct subscriber");
    let holders = |subject: &str| -> Vec<String> {
        nats.subscriptions("ringws")
            .into_iter()
            .filter(|(_, s)| s.iter().any(|x| x == subject))
            .map(|(name, _)| name)
            .collect()
    };
    assert!(
        eventually(WITHIN, || holders(&subject) == [node1.clone()]),
        "{subject}: {:?}",
        holders(&subject)
    );
    all_in_order(vec![direct], 10, "quotes in order");
    // (the subscriber was dropped by all_in_order's return: its connection closed)
    assert!(
        eventually(WITHIN, || holders(&subject).is_empty()),
        "{subject} still subscribed by {:?}",
        holders(&subject)
    );
    drop(subs);
    assert!(
        eventually(WITHIN, || nats
            .subscriptions("ringws")
            .iter()
            .all(|(_, s)| s.is_empty())),
        "the last clients left, the subscriptions stay: {:?}",
        nats.subscriptions("ringws")
    );
}

#[test]
fn nats_a_node_killed_with_sigkill_loses_its_clients_to_the_others() {
    let nats = Nats::start();
    let url = nats.url();
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&url, &[])).collect();
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|n| (n.server.addr, n.admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, SYMBOLS, RATE);
    let subs = subscribers(lb.addr, 9, two_of_four);
    let mut subs = all_in_order(subs, 5, "quotes in order");
    let on_victim = nodes[1].connections();
    assert!(on_victim >= 1, "no client on node 2");

    nodes[1].server.signal(libc::SIGKILL);
    assert!(nodes[1].server.wait_exit(WITHIN).is_some());
    // The victim's clients see their connection end; they reconnect through HAProxy (which
    // retries another server while its check has not yet marked node 2 down).
    let mut reconnected = 0;
    for s in &mut subs {
        // A healthy node's client keeps getting quotes; the victim's reads what was buffered,
        // then the end of its connection.
        let gone = (0..20)
            .find_map(|_| match s.next() {
                Some(Seen::Gone | Seen::Close(_)) => Some(true),
                Some(Seen::Quote { .. }) => None,
                None => Some(false),
            })
            .unwrap_or(false);
        if gone {
            let mut fresh = None;
            for _ in 0..50 {
                fresh = Subscriber::connect(lb.addr, &s.symbols);
                if fresh.is_some() {
                    break;
                }
            }
            *s = fresh.expect("reconnected through haproxy");
            reconnected += 1;
        }
    }
    assert_eq!(
        reconnected as u64, on_victim,
        "every client of node 2, and only those"
    );
    let subs = all_in_order(subs, 10, "after the kill");
    assert_eq!(nodes[0].connections() + nodes[2].connections(), 9);
    drop(subs);
}

#[test]
fn nats_a_node_sent_sigterm_leaves_haproxy_before_it_closes_its_clients() {
    let nats = Nats::start();
    let url = nats.url();
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(&url, &["--drain-delay", "3"]))
        .collect();
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|n| (n.server.addr, n.admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, SYMBOLS, RATE);
    let subs = subscribers(lb.addr, 6, two_of_four);
    let subs = all_in_order(subs, 3, "quotes in order");
    let on_victim = nodes[2].connections();
    assert!(on_victim >= 1, "no client on node 3");

    // Each subscriber records when its connection is closed, and with what.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let deadline = Instant::now() + WITHIN;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    match s.next() {
                        Some(Seen::Close(code)) => return Some((Instant::now(), code)),
                        Some(Seen::Gone) => return Some((Instant::now(), None)),
                        _ => {}
                    }
                }
                None
            })
        })
        .collect();

    nodes[2].server.signal(libc::SIGTERM);
    let ready = || get(nodes[2].admin, "/ready").map(|(s, _)| s);
    assert!(
        eventually(WITHIN, || ready() == Some(503)),
        "/ready: {:?}",
        ready()
    );
    lb.wait_state("node3", "DOWN");
    let out_of_rotation = Instant::now();
    // During the drain, new clients all land on the other two nodes.
    let before = nodes[2].connections();
    let late = subscribers(lb.addr, 4, two_of_four);
    assert_eq!(
        nodes[2].connections(),
        before,
        "a new client reached the draining node"
    );
    assert!(nodes[2].server.is_running(), "still draining");
    assert!(
        nodes[2].server.wait_exit(WITHIN).is_some(),
        "the node exits after its drain"
    );

    // The victim's clients got their close before it exited; give each watcher's read of it
    // time to return, then stop the others.
    let closed_count = || watchers.iter().filter(|w| w.is_finished()).count() as u64;
    assert!(
        eventually(WITHIN, || closed_count() >= on_victim),
        "{} of {on_victim} clients of the node saw their connection end",
        closed_count()
    );
    stop.store(true, Ordering::Relaxed);
    let closes: Vec<_> = watchers
        .into_iter()
        .map(|w| w.join().expect("watcher"))
        .collect();
    let closed: Vec<_> = closes.iter().flatten().collect();
    assert_eq!(closed.len() as u64, on_victim, "{closes:?}");
    for (at, code) in &closed {
        assert_eq!(*code, Some(1001), "{closes:?}");
        assert!(
            *at > out_of_rotation,
            "closed {:?} after SIGTERM, before HAProxy took the node out ({:?})",
            *at - start,
            out_of_rotation - start
        );
    }
    drop(late);
}

#[test]
fn nats_a_broker_down_at_start_then_restarted_mid_stream_is_reconnected_to() {
    // The nodes and the ticker start before the broker exists: they run (the nodes serve), and
    // connect once it is up.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut nodes: Vec<Node> = (0..2).map(|_| Node::start(&url, &[])).collect();
    let ticker = ticker(&url, SYMBOLS, RATE);
    let early = Subscriber::connect(nodes[0].server.addr, &two_of_four(0))
        .expect("a node serves without its broker");
    drop(early);
    let mut nats = Nats::start_on(port);
    let subs: Vec<Subscriber> = nodes
        .iter()
        .flat_map(|n| subscribers(n.server.addr, 2, two_of_four))
        .collect();
    let subs = all_in_order(subs, 5, "quotes in order");

    nats.kill();
    for n in &nodes {
        n_wait_log(&n.server, "disconnected");
    }
    ticker.wait_for_output("disconnected", WITHIN);
    // While the broker is down the nodes keep serving their clients.
    let meanwhile = Subscriber::connect(nodes[1].server.addr, &two_of_four(1));
    assert!(
        meanwhile.is_some(),
        "a node without its broker still accepts clients"
    );
    nats.restart();
    all_in_order(subs, 10, "after the restart");
    for n in &mut nodes {
        assert!(n.server.is_running());
        let log = n.server.log();
        assert_eq!(
            log.matches(": disconnected (").count(),
            1,
            "logged once:\n{log}"
        );
        assert_eq!(
            log.matches("broker not reachable").count(),
            1,
            "logged once:\n{log}"
        );
        assert!(log.contains("connected again"), "{log}");
    }
    ticker.wait_for_output("publications dropped meanwhile", WITHIN);
    let log = ticker.log();
    let dropped = log
        .lines()
        .find(|l| l.contains("connected again"))
        .and_then(|l| l.split("; ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        dropped.is_some_and(|n| n > 0),
        "the ticker dropped and said how many:\n{log}"
    );
}

/// Waits until `server`'s log contains `text`.
fn n_wait_log(server: &Server, text: &str) {
    assert!(
        eventually(WITHIN, || server.log().contains(text)),
        "{} never logged {text:?}:\n{}",
        server.addr,
        server.log()
    );
}

#[test]
fn redis_three_nodes_behind_haproxy_deliver_every_quote_in_order_and_subscribe_only_to_interest() {
    let redis = Redis::start();
    let url = redis.url();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&url, &[])).collect();
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|n| (n.server.addr, n.admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, SYMBOLS, RATE);
    assert!(
        redis.channels("ringws.*").is_empty(),
        "no client, no subscription"
    );

    let subs = subscribers(lb.addr, 9, two_of_four);
    let per_node: Vec<u64> = nodes.iter().map(Node::connections).collect();
    assert!(
        per_node.iter().all(|&c| c >= 1),
        "connections per node: {per_node:?}"
    );
    let subs = all_in_order(subs, 20, "quotes in order");
    let wanted: Vec<String> = names()[..4].iter().map(|s| format!("ringws.{s}")).collect();
    assert_eq!(
        redis.channels("ringws.*"),
        wanted,
        "only what the clients want"
    );
    drop(subs);
    assert!(
        eventually(WITHIN, || redis.channels("ringws.*").is_empty()),
        "{:?}",
        redis.channels("ringws.*")
    );
}

#[test]
fn redis_a_broker_restarted_mid_stream_is_reconnected_to_and_resubscribed() {
    let mut redis = Redis::start();
    let url = redis.url();
    let mut nodes: Vec<Node> = (0..2).map(|_| Node::start(&url, &[])).collect();
    let ticker = ticker(&url, SYMBOLS, RATE);
    let subs: Vec<Subscriber> = nodes
        .iter()
        .flat_map(|n| subscribers(n.server.addr, 2, two_of_four))
        .collect();
    let subs = all_in_order(subs, 5, "quotes in order");
    redis.kill();
    for n in &nodes {
        n_wait_log(&n.server, "disconnected");
    }
    redis.restart();
    all_in_order(subs, 10, "after the restart");
    for n in &mut nodes {
        assert!(n.server.is_running());
        let log = n.server.log();
        assert_eq!(
            log.matches(": disconnected (").count(),
            1,
            "logged once:\n{log}"
        );
    }
    ticker.wait_for_output("publications dropped meanwhile", WITHIN);
}

/// A node with its own ticker publishes into the broker once and never gets its publications back
/// (NATS `no_echo`, Redis's origin envelope): its clients and another node's get each quote once,
/// in order. Checked for both brokers.
fn a_publishing_node_feeds_the_others_without_echo(url: &str) {
    let rate = RATE.to_string();
    let publisher = Node::start(url, &["--rate", &rate]);
    let other = Node::start(url, &[]);
    let subs: Vec<Subscriber> = [&publisher, &other]
        .iter()
        .flat_map(|n| subscribers(n.server.addr, 2, two_of_four))
        .collect();
    // A duplicate would read as "seq k after k", a loop as a flood of them.
    let subs = all_in_order(subs, 20, "quotes in order");
    drop(subs);
    // The bridges' counters on /metrics: the publisher queued for the broker (a few may be
    // dropped before its first connect), the other node received from it, and nothing came back
    // to the publisher.
    let scrape = |n: &Node| match get(n.admin, "/metrics") {
        Some((200, text)) => text,
        other => panic!("/metrics: {other:?}"),
    };
    let (p, o) = (scrape(&publisher), scrape(&other));
    assert!(metric(&p, "ringws_bridge_queued_total") > 0.0, "{p}");
    assert_eq!(metric(&p, "ringws_bridge_received_total"), 0.0, "{p}");
    assert!(metric(&o, "ringws_bridge_received_total") > 0.0, "{o}");
}

/// A client (Python `websockets`, `tests/interop/python/resume.py`) reads quotes on node A (which
/// runs the ticker), drops its connection, and resumes on node B from the last position it got:
/// B numbers the quotes as A did (the broker carries the positions), keeps history of what it
/// received while it had subscribers, and replays what the client missed with no gap and no
/// duplicate.
fn a_client_resumes_on_another_node_with_no_gap(url: &str) {
    let rate = RATE.to_string();
    let a = Node::start(url, &["--rate", &rate]);
    let b = Node::start(url, &[]);
    let symbol = &names()[1];
    // A client of B keeps B subscribed on the broker (so B holds the symbol's recent quotes), and
    // B has received some before the test reads on A.
    let mut holder = raw_subscriber(b.server.addr, symbol);
    for _ in 0..3 {
        holder.expect_message();
    }
    let (a_addr, b_addr) = (a.server.addr.to_string(), b.server.addr.to_string());
    let v = common::python_json(
        "resume.py",
        &["resume", &a_addr, symbol, "10", "10", "30", &b_addr],
        || {
            format!(
                "--- A ---\n{}\n--- B ---\n{}",
                a.server.log(),
                b.server.log()
            )
        },
    );
    let reply = v.get("reply").unwrap();
    let r = reply.get("recovered").and_then(|r| r.get(symbol.as_str()));
    assert_eq!(r.and_then(|r| r.get_bool("recovered")), Some(true), "{v:?}");
    let before = v.get_array("before").unwrap();
    let (epoch, k) = (before[0].as_str().unwrap(), before[1].as_u64().unwrap());
    let got: Vec<(String, u64)> = v
        .get_array("quotes")
        .unwrap()
        .iter()
        .map(|q| {
            let q = q.as_array().unwrap();
            (q[0].as_str().unwrap().to_owned(), q[1].as_u64().unwrap())
        })
        .collect();
    let want: Vec<(String, u64)> = (k + 1..k + 1 + got.len() as u64)
        .map(|s| (epoch.to_owned(), s))
        .collect();
    assert_eq!(
        got, want,
        "K+1, K+2, ... on node B with no gap and no duplicate"
    );
}

#[test]
fn nats_a_client_resumes_on_another_node_with_no_gap() {
    let nats = Nats::start();
    a_client_resumes_on_another_node_with_no_gap(&nats.url());
}

#[test]
fn redis_a_client_resumes_on_another_node_with_no_gap() {
    let redis = Redis::start();
    a_client_resumes_on_another_node_with_no_gap(&redis.url());
}

#[test]
fn nats_a_publishing_node_feeds_the_others_without_echo() {
    let nats = Nats::start();
    a_publishing_node_feeds_the_others_without_echo(&nats.url());
}

#[test]
fn redis_a_publishing_node_feeds_the_others_without_echo() {
    let redis = Redis::start();
    a_publishing_node_feeds_the_others_without_echo(&redis.url());
}

#[test]
fn bridge_all_subscribes_once_to_everything_under_the_prefix() {
    let nats = Nats::start();
    let node = Node::start(&nats.url(), &["--bridge-all", "--bridge-prefix", "md.feed"]);
    let name = format!("ringws serve {}", node.server.addr);
    let subjects = |n: &Nats| -> Vec<String> {
        n.subscriptions("md")
            .into_iter()
            .filter(|(c, _)| *c == name)
            .flat_map(|(_, s)| s)
            .collect()
    };
    assert!(
        eventually(WITHIN, || subjects(&nats) == ["md.feed.>"]),
        "{:?}",
        nats.subscriptions("md")
    );
    let _ticker = common::brokers::Proc::spawn(
        "ringws ticker",
        std::process::Command::new(common::binary()).args([
            "ticker",
            "--bridge",
            &nats.url(),
            "--bridge-prefix",
            "md.feed",
            "--symbols",
            &SYMBOLS.to_string(),
            "--rate",
            &RATE.to_string(),
        ]),
    );
    let subs = subscribers(node.server.addr, 2, two_of_four);
    let subs = all_in_order(subs, 10, "quotes in order");
    drop(subs);
    // Still the one wildcard subscription: clients coming and going change nothing.
    assert_eq!(subjects(&nats), ["md.feed.>"]);

    let redis = Redis::start();
    let _node = Node::start(&redis.url(), &["--bridge-all"]);
    assert!(
        eventually(WITHIN, || redis.numpat() == 1),
        "PUBSUB NUMPAT: {}",
        redis.numpat()
    );
    assert!(redis.channels("ringws.*").is_empty());
}

#[test]
fn the_bridge_options_are_checked_before_anything_starts() {
    let run = |args: &[&str]| {
        common::run_bounded(
            std::process::Command::new(common::binary()).args(args),
            WITHIN,
        )
    };
    let (status, out) = run(&["serve", "--bridge", "nats://127.0.0.1:4222"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(
        out.contains("--bridge is an option of the market feed"),
        "{out}"
    );
    let (status, out) = run(&["serve", "--mode", "feed", "--bridge", "http://127.0.0.1:1"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(
        out.contains("expected nats://HOST:PORT or redis://HOST:PORT"),
        "{out}"
    );
    let (status, out) = run(&[
        "serve",
        "--mode",
        "feed",
        "--bridge",
        "nats://127.0.0.1:1",
        "--bridge-prefix",
        "a b",
    ]);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(out.contains("invalid --bridge-prefix"), "{out}");
    assert!(
        !out.contains("listening on"),
        "refused before it started: {out}"
    );
    let (status, out) = run(&["ticker"]);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(out.contains("ringws ticker needs --bridge URL"), "{out}");
    let (status, out) = run(&["serve", "--mode", "feed", "--bridge-all"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.contains("--bridge <URL>"), "requires --bridge: {out}");
}

/// The next quote's `seq`, or a failure naming what came instead.
fn next_seq(s: &mut Subscriber) -> u64 {
    match s.next() {
        Some(Seen::Quote { seq, .. }) => seq,
        other => panic!("expected a quote, got {other:?}"),
    }
}

#[test]
fn a_node_that_stopped_receiving_a_topic_hands_out_no_stale_quote() {
    let nats = Nats::start();
    let url = nats.url();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&url, &[])).collect();
    let _ticker = ticker(&url, SYMBOLS, RATE);
    let symbol = vec![names()[0].clone()];
    let none_left = || {
        nats.subscriptions("ringws")
            .iter()
            .all(|(_, s)| s.is_empty())
    };
    // Node 1 receives the symbol for a while, then its only client leaves: it unsubscribes.
    let mut first = Subscriber::connect(nodes[0].server.addr, &symbol).expect("subscriber");
    next_seq(&mut first);
    drop(first);
    assert!(
        eventually(WITHIN, none_left),
        "{:?}",
        nats.subscriptions("ringws")
    );
    // Meanwhile the symbol moves on (seen on node 2, which had no snapshot to give either).
    let mut watch = Subscriber::connect(nodes[1].server.addr, &symbol).expect("watcher");
    let live = next_seq(&mut watch);
    let mut seen = live;
    for _ in 0..1000 {
        if seen >= live + 5 {
            break;
        }
        seen = next_seq(&mut watch);
    }
    assert!(seen >= live + 5, "the ticker stopped at {seen}");
    // A new client of node 1 gets no quote older than what node 2 already delivered.
    let mut fresh = Subscriber::connect(nodes[0].server.addr, &symbol).expect("subscriber");
    let got = next_seq(&mut fresh);
    assert!(
        got >= seen,
        "node 1 handed out seq {got}, stale: node 2 was at {seen}"
    );
}

#[test]
fn nginx_with_the_deploy_config_carries_websockets_to_bridged_nodes() {
    let nginx = common::brokers::require("nginx", "nginx");
    let nats = Nats::start();
    let url = nats.url();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&url, &[])).collect();
    let _ticker = ticker(&url, SYMBOLS, RATE);
    // deploy/nginx.conf as written, but for this machine: the test's nodes, a free port, files in
    // a temporary directory, one worker with few connections.
    let dir = common::brokers::TempDir::new("nginx");
    let port = free_port();
    let cfg = std::fs::read_to_string(common::repo_root().join("deploy/nginx.conf")).unwrap();
    let upstreams: String = nodes
        .iter()
        .map(|n| {
            format!(
                "        server {} max_fails=2 fail_timeout=5s;\n",
                n.server.addr
            )
        })
        .collect();
    let mut lines: Vec<String> = Vec::new();
    let mut upstream_done = false;
    for line in cfg.lines() {
        let t = line.trim();
        if t.starts_with("server 10.0.0.") {
            if !upstream_done {
                lines.push(upstreams.trim_end().to_owned());
                upstream_done = true;
            }
            continue;
        }
        lines.push(match t {
            "worker_processes auto;" => "worker_processes 1;".to_owned(),
            "worker_connections 200000;" => "    worker_connections 1024;".to_owned(),
            "listen 80;" => format!("        listen 127.0.0.1:{port};"),
            _ if t.starts_with("pid ") => format!("pid {}/nginx.pid;", dir.path.display()),
            _ => line.to_owned(),
        });
    }
    assert!(upstream_done, "deploy/nginx.conf has no upstream servers");
    let path = dir.path.join("nginx.conf");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let _nginx = common::brokers::Proc::spawn(
        "nginx",
        std::process::Command::new(nginx)
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::brokers::wait_listening(addr, "nginx");
    let subs = subscribers(addr, 4, two_of_four);
    let per_node: Vec<u64> = nodes.iter().map(Node::connections).collect();
    assert_eq!(per_node, [2, 2], "least_conn spreads them");
    let subs = all_in_order(subs, 10, "quotes in order");
    drop(subs);
    // The nodes' operations endpoints are not reachable through it.
    assert_eq!(get(addr, "/metrics").map(|(s, _)| s), Some(404));
    // The feed's page is (plain HTTP through the same location).
    assert_eq!(get(addr, "/").map(|(s, _)| s), Some(200));
}

/// Binary quotes (`ringws ticker --binary`) cross the broker as binary messages (NATS: the
/// `Ringws-Binary` header; Redis: the envelope's kind) and reach the clients as binary frames.
fn binary_quotes_stay_binary(url: &str) {
    let node = Node::start(url, &[]);
    let _ticker = common::brokers::ticker_with(url, SYMBOLS, RATE, &["--binary"]);
    let subs = subscribers(node.server.addr, 2, two_of_four);
    let subs = all_in_order(subs, 10, "quotes in order");
    drop(subs);
}

#[test]
fn nats_binary_quotes_stay_binary() {
    let nats = Nats::start();
    binary_quotes_stay_binary(&nats.url());
}

#[test]
fn redis_binary_quotes_stay_binary() {
    let redis = Redis::start();
    binary_quotes_stay_binary(&redis.url());
}

/// A raw client of node `addr` subscribed to `symbol`, past its acknowledgement.
fn raw_subscriber(addr: SocketAddr, symbol: &str) -> common::RawClient {
    let mut c = common::RawClient::connect(addr);
    c.send(&common::Frame::text(format!(
        r#"{{"op":"subscribe","symbols":["{symbol}"]}}"#
    )));
    let (opcode, ack) = c.expect_message();
    assert_eq!(opcode, common::op::TEXT);
    assert!(ack.starts_with(br#"{"type":"subscribed""#), "{ack:?}");
    c
}

#[test]
fn other_publishers_reach_clients_as_text_or_binary_as_the_readme_says() {
    use std::io::{BufRead, BufReader, Write};
    let symbol = names()[0].clone();
    let subject = format!("ringws.{symbol}");

    // NATS: a plain PUB is text; HPUB with `Ringws-Binary: 1` is binary, even when it is UTF-8.
    let nats = Nats::start();
    let node = Node::start(&nats.url(), &[]);
    let mut client = raw_subscriber(node.server.addr, &symbol);
    assert!(eventually(WITHIN, || nats
        .subscriptions("ringws")
        .iter()
        .any(|(_, s)| s.contains(&subject))));
    let mut pubr = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    pubr.set_read_timeout(Some(WITHIN)).unwrap();
    let headers = "NATS/1.0\r\nRingws-Binary: 1\r\n\r\n";
    write!(
        pubr,
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nPUB {subject} 5\r\nhello\r\n\
         HPUB {subject} {} {}\r\n{headers}abc\r\nPING\r\n",
        headers.len(),
        headers.len() + 3
    )
    .unwrap();
    let mut r = BufReader::new(pubr);
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "nats-server: {line}");
        if line.starts_with("PONG") {
            break;
        }
    }
    assert_eq!(
        client.expect_message(),
        (common::op::TEXT, b"hello".to_vec())
    );
    assert_eq!(
        client.expect_message(),
        (common::op::BINARY, b"abc".to_vec())
    );

    // Redis: no envelope is text when UTF-8; the envelope's kind decides otherwise.
    let redis = Redis::start();
    let node = Node::start(&redis.url(), &[]);
    let mut client = raw_subscriber(node.server.addr, &symbol);
    assert!(eventually(WITHIN, || redis.channels("ringws.*") == [subject.clone()]));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    conn.set_read_timeout(Some(WITHIN)).unwrap();
    let mut binary = vec![0xff, b'R', b'W', b'b'];
    binary.extend_from_slice(&42u64.to_le_bytes());
    binary.extend_from_slice(b"abc");
    for payload in [&b"hello"[..], &binary] {
        let mut cmd = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{subject}\r\n${}\r\n",
            subject.len(),
            payload.len()
        )
        .into_bytes();
        cmd.extend_from_slice(payload);
        cmd.extend_from_slice(b"\r\n");
        conn.write_all(&cmd).unwrap();
        let mut reply = [0u8; 4];
        std::io::Read::read_exact(&mut conn, &mut reply).unwrap();
        assert_eq!(&reply, b":1\r\n", "one subscriber, the node");
    }
    assert_eq!(
        client.expect_message(),
        (common::op::TEXT, b"hello".to_vec())
    );
    assert_eq!(
        client.expect_message(),
        (common::op::BINARY, b"abc".to_vec())
    );
}

/// A node on host `i` of `hosts`: the process, its WebSocket and admin addresses.
type HostNode = (common::brokers::Proc, SocketAddr, SocketAddr);

/// Starts a feed node bridged to `url` on host `i`, listening on that host's address only.
fn host_node(hosts: &common::brokers::Hosts, i: usize, url: &str, extra: &[&str]) -> HostNode {
    let ip = hosts.addrs[i];
    let (ws, admin) = (SocketAddr::new(ip, 9001), SocketAddr::new(ip, 9090));
    let mut cmd = hosts.command(i, &common::binary());
    cmd.env("RUST_LOG", "warn")
        .args([
            "serve",
            "--mode",
            "feed",
            "--rate",
            "0",
            "--symbols",
            &SYMBOLS.to_string(),
            "--workers",
            "1",
            "--addr",
            &ws.to_string(),
            "--admin-addr",
            &admin.to_string(),
            "--bridge",
            url,
            "--bridge-max-backoff",
            "0.2",
            // Stopped with SIGTERM when dropped: no drain to wait for.
            "--drain-delay",
            "0",
        ])
        .args(extra);
    let node = common::brokers::Proc::spawn(&format!("node on {ip}"), &mut cmd);
    node.wait_for_output("listening on", WITHIN);
    (node, ws, admin)
}

#[test]
#[ignore = "needs root: network namespaces, one per node, to stand for separate hosts"]
fn nodes_on_separate_hosts_in_network_namespaces_behind_haproxy() {
    let hosts = common::brokers::Hosts::new(3);
    let nats = Nats::start_at(hosts.gateway);
    let url = nats.url();
    // One node per host, listening on that host's address only.
    let nodes: Vec<HostNode> = (0..3).map(|i| host_node(&hosts, i, &url, &[])).collect();
    // Each node reached the broker from its own address.
    let from = || {
        let mut v: Vec<String> = nats
            .clients()
            .into_iter()
            .filter(|(name, _)| name.starts_with("ringws serve"))
            .map(|(_, ip)| ip)
            .collect();
        v.sort();
        v
    };
    let want: Vec<String> = hosts.addrs.iter().map(|a| a.to_string()).collect();
    assert!(
        eventually(WITHIN, || from() == want),
        "one broker connection per host, from its address: {:?}",
        from()
    );
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|(_, ws, admin)| (*ws, admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, SYMBOLS, RATE);
    let subs = subscribers(lb.addr, 6, two_of_four);
    let open = |admin: SocketAddr| match get(admin, "/metrics") {
        Some((200, text)) => metric(&text, "ringws_connections_open") as u64,
        _ => u64::MAX,
    };
    let per_host: Vec<u64> = nodes.iter().map(|(_, _, admin)| open(*admin)).collect();
    assert_eq!(per_host, [2, 2, 2], "spread over the hosts");
    let subs = all_in_order(subs, 20, "quotes in order");
    drop(subs);
    drop(nodes);
}

/// A node whose network drops every packet for a while (no connection is reset: only the
/// keep-alive pings can tell) keeps running, logs the loss once, reconnects and resubscribes when
/// the network is back, and serves quotes again.
fn a_node_survives_a_silent_network_loss(
    broker_at: impl FnOnce(std::net::IpAddr) -> (Box<dyn std::any::Any>, String),
) {
    let hosts = common::brokers::Hosts::new(1);
    let (_broker, url) = broker_at(hosts.gateway);
    let (mut node, ws, _) = host_node(&hosts, 0, &url, &["--bridge-ping", "0.3"]);
    let _ticker = ticker(&url, SYMBOLS, RATE);
    let subs = vec![Subscriber::connect(ws, &two_of_four(0)).expect("subscriber")];
    let subs = all_in_order(subs, 5, "quotes in order");
    drop(subs);

    hosts.link(0, false);
    node.wait_for_output(": disconnected (", WITHIN);
    hosts.link(0, true);
    node.wait_for_output("connected again", WITHIN);
    assert!(node.is_running());
    let subs = vec![Subscriber::connect(ws, &two_of_four(1)).expect("subscriber after")];
    all_in_order(subs, 5, "after the network came back");
    let log = node.log();
    assert_eq!(
        log.matches(": disconnected (").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
#[ignore = "needs root: a network namespace whose link is taken down"]
fn nats_a_node_survives_a_silent_network_loss() {
    a_node_survives_a_silent_network_loss(|gw| {
        let nats = Nats::start_at(gw);
        let url = nats.url();
        (Box::new(nats), url)
    });
}

#[test]
#[ignore = "needs root: a network namespace whose link is taken down"]
fn redis_a_node_survives_a_silent_network_loss() {
    a_node_survives_a_silent_network_loss(|gw| {
        let redis = Redis::start_at(gw);
        let url = redis.url();
        (Box::new(redis), url)
    });
}
