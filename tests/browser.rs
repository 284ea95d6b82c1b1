//! The feed's live page in a real browser: headless Chromium loads `GET /` from `ringws serve --mode
//! feed`, the page subscribes over the browser's own WebSocket (through the feed's `/client.js`),
//! and the test reads the page's table through the Chrome DevTools Protocol until it sees prices
//! and update counts move; behind HAProxy, the node the page is connected to is killed and the
//! page reconnects to the other one and shows a recovered stream.
//!
//! Needs Debian's `chromium` (scripts/test.sh installs it). Bounded: Chromium start-up, each DevTools
//! call and the whole wait have deadlines, and Chromium is killed (and its profile removed) on every
//! exit path.

mod common;

use common::Server;
use common::brokers::{Haproxy, Nats, get, metric, ticker};
use common::browser::{Chromium, connect_page, evaluate, require_chromium};
use simd_json::prelude::*;
use std::time::{Duration, Instant};

/// What the page shows: (status, [(symbol, bid text, update count)]).
type Table = (String, Vec<(String, String, u64)>);

/// Reads the page's table.
async fn read_table(ws: &mut common::Ws, id: &mut u64) -> Table {
    // Before the page has loaded there is no #status: reported as "loading".
    const EXPR: &str = "JSON.stringify({status: document.getElementById('status')?.textContent \
        ?? 'loading', rows: [...document.querySelectorAll('#rows tr')].map(r => [r.dataset.symbol, \
        r.querySelector('.bid').textContent, Number(r.querySelector('.count').textContent)])})";
    let value = evaluate(ws, id, EXPR, Duration::from_secs(10)).await;
    let page = simd_json::to_owned_value(&mut value.into_bytes()).unwrap();
    let rows = page
        .get_array("rows")
        .unwrap()
        .iter()
        .map(|r| {
            let r = r.as_array().unwrap();
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_u64().unwrap(),
            )
        })
        .collect();
    (page.get_str("status").unwrap().to_owned(), rows)
}

#[tokio::test]
async fn the_live_page_shows_prices_updating_in_chromium() {
    require_chromium();
    let server = Server::start(&["--mode", "feed", "--symbols", "20", "--rate", "2000"]);
    live_page(&server, "http", &[]).await;
}

/// The same over https and wss://: the feed with a test certificate that Chromium is told to
/// trust by the SHA-256 of its public key (`--ignore-certificate-errors-spki-list`, which trusts
/// that key only).
#[tokio::test]
async fn the_live_page_works_over_https() {
    require_chromium();
    let certs = common::tls::Certs::new("browser", "browser");
    let mut args = vec!["--mode", "feed", "--symbols", "20", "--rate", "2000"];
    let tls = certs.args();
    args.extend(tls.iter().map(String::as_str));
    let server = Server::start(&args);
    let pin = format!(
        "--ignore-certificate-errors-spki-list={}",
        certs.spki_sha256
    );
    live_page(&server, "https", &[pin]).await;
}

/// Loads the live page from `server` over `scheme` and checks that its table fills and updates.
async fn live_page(server: &Server, scheme: &str, flags: &[String]) {
    let symbols = ["BTC-USD", "ETH-USD", "SOL-USD"];
    let url = format!("{scheme}://{}/?symbols={}", server.addr, symbols.join(","));
    let mut chromium = Chromium::start_with(&url, flags);
    let mut ws = connect_page(&mut chromium, &url).await;

    // Wait until the page is connected and every row has a quote (the last quote comes first).
    let mut id = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let table = read_table(&mut ws, &mut id).await;
        if table.0 == "open" && table.1.len() == 3 && table.1.iter().all(|r| r.2 > 0) {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed quotes: {table:?}\n{}",
            chromium.log()
        );
        // A bounded poll of the page's state (read through DevTools).
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = first.1.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, symbols);

    // 2000 quotes/s over 20 symbols: each row gets ~100 updates/s. The table is read again until
    // every row has more than 10 new updates and some price moved (bounded: 10 s), then the rate is
    // checked: at least 10 updates per 1.5 s on every row, as a fixed 1.5 s wait used to check.
    let since = Instant::now();
    let deadline = since + Duration::from_secs(10);
    let second = loop {
        let second = read_table(&mut ws, &mut id).await;
        assert_eq!(second.0, "open");
        let all_moved = first.1.iter().zip(&second.1).all(|(a, b)| b.2 > a.2 + 10);
        let price_moved = first.1.iter().zip(&second.1).any(|(a, b)| a.1 != b.1);
        if all_moved && price_moved {
            break second;
        }
        assert!(
            Instant::now() < deadline,
            "updates or prices did not move within 10 s: {first:?} -> {second:?}"
        );
        // A bounded poll of the page's state (read through DevTools).
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = since.elapsed().as_secs_f64();
    for (a, b) in first.1.iter().zip(&second.1) {
        let rate = (b.2 - a.2) as f64 / took;
        assert!(
            rate > 10.0 / 1.5,
            "{} updated {rate:.1} times a second: {a:?} -> {b:?} in {took:.2} s",
            a.0
        );
        assert!(
            b.1.parse::<f64>().is_ok_and(|p| p > 0.0),
            "{} shows no price: {b:?}",
            a.0
        );
    }
    drop(ws);
    drop(chromium);
}

/// What the page shows of its connection: status text and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    status: String,
    reconnects: u64,
    recovered: u64,
    snapshots: u64,
    gaps: u64,
    /// Quotes shown in all.
    total: u64,
}

async fn read_link(ws: &mut common::Ws, id: &mut u64) -> Link {
    const EXPR: &str = "JSON.stringify(Object.fromEntries(['status', 'reconnects', 'recovered', \
        'snapshots', 'gaps', 'total'].map(k => [k, document.getElementById(k)?.textContent ?? ''])))";
    let value = evaluate(ws, id, EXPR, Duration::from_secs(10)).await;
    let v = simd_json::to_owned_value(&mut value.into_bytes()).unwrap();
    let n = |k: &str| v.get_str(k).and_then(|s| s.parse().ok()).unwrap_or(0);
    Link {
        status: v.get_str("status").unwrap_or_default().to_owned(),
        reconnects: n("reconnects"),
        recovered: n("recovered"),
        snapshots: n("snapshots"),
        gaps: n("gaps"),
        total: n("total"),
    }
}

/// Polls the page (bounded: 30 s) until `done` holds of what it shows.
async fn wait_link(
    ws: &mut common::Ws,
    id: &mut u64,
    what: &str,
    done: impl Fn(&Link) -> bool,
) -> Link {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let link = read_link(ws, id).await;
        if done(&link) {
            return link;
        }
        assert!(Instant::now() < deadline, "{what}: the page shows {link:?}");
        // A bounded poll of the page's state (read through DevTools).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two feed nodes bridged through NATS to one `ringws ticker`, behind HAProxy; the page is loaded
/// through HAProxy. The node holding the page's connection is killed with SIGKILL: the page's
/// client reconnects (with backoff, through HAProxy, to the other node), resumes every symbol
/// from its last position, and the page shows three recovered symbols, no snapshot and no gap.
#[tokio::test]
async fn the_live_page_resumes_on_another_node_after_its_node_is_killed() {
    require_chromium();
    let nats = Nats::start();
    let url = nats.url();
    let mut nodes: Vec<(Server, std::net::SocketAddr)> = (0..2)
        .map(|_| {
            let admin = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
            let admin_s = admin.to_string();
            // --bridge-all: each node receives every symbol (and keeps its history) whether or
            // not its own clients want it, so the page can resume on either.
            let args = [
                "--mode",
                "feed",
                "--rate",
                "0",
                "--symbols",
                "12",
                "--bridge",
                &url,
                "--bridge-all",
                "--admin-addr",
                &admin_s,
            ];
            let server = Server::start_with(&args, |cmd| {
                cmd.env("RUST_LOG", "warn");
            });
            (server, admin)
        })
        .collect();
    let lb = Haproxy::start(
        &nodes
            .iter()
            .map(|(s, admin)| (s.addr, admin.port()))
            .collect::<Vec<_>>(),
    );
    let _ticker = ticker(&url, 12, 600);
    let page = format!("http://{}/?symbols=BTC-USD,ETH-USD,SOL-USD", lb.addr);
    let mut chromium = Chromium::start(&page);
    let mut ws = connect_page(&mut chromium, &page).await;
    let mut id = 0;
    let before = wait_link(&mut ws, &mut id, "connected", |l| {
        l.status == "open" && l.total >= 30
    })
    .await;
    assert_eq!(
        (before.reconnects, before.snapshots, before.gaps),
        (0, 0, 0),
        "{before:?}"
    );

    // The node with the page's connection (the only WebSocket client of either).
    let open = |admin| match get(admin, "/metrics") {
        Some((200, text)) => metric(&text, "ringws_connections_open") as u64,
        _ => 0,
    };
    let victim = nodes
        .iter()
        .position(|(_, admin)| open(*admin) == 1)
        .expect("the page is connected to one node");
    nodes[victim].0.signal(libc::SIGKILL);
    assert!(nodes[victim].0.wait_exit(Duration::from_secs(10)).is_some());

    let after = wait_link(&mut ws, &mut id, "reconnected and recovered", |l| {
        l.status == "open" && l.reconnects >= 1 && l.recovered >= 3 && l.total > before.total + 30
    })
    .await;
    assert_eq!(
        (after.snapshots, after.gaps),
        (0, 0),
        "every symbol resumed with nothing lost: {after:?}\n{}",
        chromium.log()
    );
    let survivor = &nodes[1 - victim];
    assert_eq!(open(survivor.1), 1, "the page is on the other node now");
    drop(ws);
    drop(chromium);
}

/// Opens a WebSocket from the page to `ws://{addr}/`, echoes text and binary messages from 0 B to
/// 16 MiB through it (each compared in the page), closes, and returns `ws.extensions`, the
/// extension the browser agreed to.
const ECHO_SCRIPT: &str = r#"(async () => {
  const ws = new WebSocket("ws://ADDR/");
  ws.binaryType = "arraybuffer";
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("ws error")); });
  const queue = []; let waiting = null;
  ws.onmessage = e => { if (waiting) { const w = waiting; waiting = null; w(e.data); } else queue.push(e.data); };
  ws.onclose = e => { if (waiting) waiting("closed " + e.code); };
  const next = () => queue.length ? Promise.resolve(queue.shift()) : new Promise(r => waiting = r);
  // Pseudo-random bytes of 16 values: they compress ~2x, far from any ratio guard.
  const bytes = (n, seed) => {
    let x = seed | 1; const a = new Uint8Array(n);
    for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; a[i] = 97 + (x & 15); }
    return a;
  };
  const sizes = [0, 1, 125, 126, 255, 256, 1000, 65535, 65536, 1 << 20, 16 << 20];
  let echoed = 0;
  for (const [i, n] of sizes.entries()) {
    const text = new TextDecoder().decode(bytes(n, i + 1));
    ws.send(text);
    if (await next() !== text) throw new Error("text echo of " + n + " bytes differs");
    const bin = bytes(n, i + 100);
    ws.send(bin);
    const back = await next();
    if (!(back instanceof ArrayBuffer) || back.byteLength !== n
        || !new Uint8Array(back).every((b, j) => b === bin[j])) {
      throw new Error("binary echo of " + n + " bytes differs");
    }
    echoed += 2;
  }
  const extensions = ws.extensions;
  ws.close(1000);
  return JSON.stringify({ extensions, echoed });
})()"#;

#[tokio::test]
async fn chromium_echoes_through_permessage_deflate() {
    require_chromium();
    let url = "about:blank";
    let mut chromium = Chromium::start(url);
    let mut page = connect_page(&mut chromium, url).await;
    let mut id = 0;
    // Chromium offers `permessage-deflate; client_max_window_bits`.
    for (flags, agreed) in [
        (&[][..], "permessage-deflate; server_no_context_takeover"),
        (&["--deflate-takeover", "both"][..], "permessage-deflate"),
        (
            &["--deflate-takeover", "none", "--deflate-window-bits", "10"][..],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=10",
        ),
    ] {
        let mut args = vec!["--deflate"];
        args.extend_from_slice(flags);
        let server = Server::start(&args);
        let script = ECHO_SCRIPT.replace("ADDR", &server.addr.to_string());
        let result = evaluate(&mut page, &mut id, &script, Duration::from_secs(90)).await;
        let mut result = result.into_bytes();
        let v = simd_json::to_owned_value(&mut result).unwrap();
        assert_eq!(v.get_str("extensions"), Some(agreed), "{flags:?}: {v:?}");
        assert_eq!(v.get_u64("echoed"), Some(22), "{flags:?}: {v:?}");
    }
    drop(page);
    drop(chromium);
}
