//! wss:// against real clients: Python `websockets` (TLS 1.3 and 1.2) and Node `ws` run their
//! interop scripts over TLS, a blocking rustls client checks the certificate rotation on SIGHUP,
//! and bad input on the TLS port (plain HTTP, a plain WebSocket upgrade, garbage, a truncated
//! ClientHello) gets an alert or a close without disturbing a well-behaved client. The CA and the
//! certificates are generated per test with rcgen.

mod common;

use common::tls::Certs;
use common::{Frame, Rng, Server, eventually, run_bounded};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn start(certs: &Certs, extra: &[&str]) -> Server {
    let mut args = certs.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A blocking TLS client that trusts `ca`.
fn tls_client(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = client_conn(ca);
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A wss:// connection through [`tls_client`], upgraded.
struct Wss(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Wss {
    fn open(addr: SocketAddr, ca: &CertificateDer<'static>) -> Wss {
        Self::try_open(addr, ca).unwrap()
    }

    /// Opens a connection, or the TLS or I/O error that stopped it (e.g. a certificate the client
    /// does not trust).
    fn try_open(addr: SocketAddr, ca: &CertificateDer<'static>) -> std::io::Result<Wss> {
        let mut s = tls_client(addr, ca);
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b)?;
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Ok(Wss(s))
    }

    /// The certificate the server showed.
    fn peer_cert(&self) -> CertificateDer<'static> {
        self.0.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// Sends `text` and checks it comes back (skipping the server's keep-alive pings).
    fn echo(&mut self, text: &str) {
        let frame = Frame::text(text.as_bytes().to_vec());
        self.0.write_all(&frame.encode(Some([1, 2, 3, 4]))).unwrap();
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).unwrap();
        while h[0] == 0x89 {
            let mut ping = vec![0u8; usize::from(h[1] & 0x7f)];
            self.0.read_exact(&mut ping).unwrap();
            self.0.read_exact(&mut h).unwrap();
        }
        assert_eq!(h[0], 0x81, "a text frame");
        let len = match h[1] {
            126 => {
                let mut l = [0u8; 2];
                self.0.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).unwrap();
        assert_eq!(payload, text.as_bytes());
    }
}

/// Runs an interop script (`client.py` / `client.mjs`) against `server` over TLS with `ca`.
fn run_interop(mut cmd: Command, server: &Server) {
    let (status, output) = run_bounded(&mut cmd, Duration::from_secs(90));
    assert!(
        status.is_some_and(|s| s.success()) && output.contains("ok:"),
        "{cmd:?}: {status:?}\n{output}\n--- server ---\n{}",
        server.log()
    );
}

#[test]
fn python_websockets_over_tls_1_3_and_1_2() {
    let certs = Certs::new("python", "python");
    let server = start(&certs, &["--max-message-size", "4194304"]);
    let mut cmd = common::python("client.py");
    cmd.arg(server.addr.to_string()).arg(&certs.ca);
    run_interop(cmd, &server);
}

#[test]
fn node_ws_over_tls() {
    let certs = Certs::new("node", "node");
    let server = start(&certs, &["--max-message-size", "4194304"]);
    let mut cmd = common::node("client.mjs");
    cmd.arg(server.addr.to_string()).arg(&certs.ca);
    run_interop(cmd, &server);
}

#[test]
fn sighup_rotates_the_certificate_for_new_connections_only() {
    let certs = Certs::new("rotate", "first");
    let server = start(&certs, &[]);
    let mut old = Wss::open(server.addr, &certs.ca_der);
    assert_eq!(old.peer_cert(), certs.der);
    old.echo("before the rotation");
    let first = certs.der.clone();
    let certs = certs.issue("second");
    server.signal(libc::SIGHUP);
    // New handshakes see the second certificate once the server has reloaded (until then the
    // client, trusting only the new CA, refuses the old certificate).
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let Ok(c) = Wss::try_open(server.addr, &certs.ca_der) else {
                return false;
            };
            let rotated = c.peer_cert() == certs.der;
            seen = Some(c);
            rotated
        }),
        "no new connection saw the new certificate:\n{}",
        server.log()
    );
    seen.unwrap().echo("after the rotation");
    assert_ne!(first, certs.der);
    // The connection opened before the rotation keeps working.
    old.echo("still here");
}

/// Reads what the server answers to `bytes` sent on a raw TCP connection to the TLS port, until
/// it closes (bounded by the read timeout).
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    answer_within(addr, bytes, common::READ_TIMEOUT)
}

/// [`answer_to`], waiting at most `wait` for the server to close (a handshake that is merely
/// incomplete is waited for until `handshake_timeout`).
fn answer_within(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Whether `answer` is a TLS alert record (content type 21), or nothing (closed).
fn is_alert_or_close(answer: &[u8]) -> bool {
    answer.is_empty() || (answer[0] == 21 && answer.len() >= 7)
}

#[test]
fn bad_input_on_the_tls_port_gets_an_alert_and_costs_nothing_else() {
    let certs = Certs::new("bad", "bad");
    let mut server = start(&certs, &[]);
    let mut good = Wss::open(server.addr, &certs.ca_der);
    good.echo("first");
    let plain_upgrade =
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, input) in [
        (
            "plain HTTP",
            &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        ("a plain WebSocket upgrade", &plain_upgrade[..]),
        ("garbage", &garbage[..]),
        // A handshake record header announcing more than the 16 KiB + 2048 TLS allows.
        (
            "an oversized record",
            &[22, 3, 1, 0xff, 0xff, 1, 0, 0, 0][..],
        ),
    ] {
        let answer = answer_to(server.addr, input);
        assert!(
            is_alert_or_close(&answer),
            "{what}: answered {:02x?}",
            &answer[..answer.len().min(16)]
        );
        good.echo(what);
    }
    // A truncated ClientHello: the start of a real one, then nothing. The connection waits for
    // the rest (the handshake timeout bounds it) while the good client is served.
    let mut hello = Vec::new();
    client_conn(&certs.ca_der).write_tls(&mut hello).unwrap();
    let mut dribbler = TcpStream::connect(server.addr).unwrap();
    dribbler.write_all(&hello[..hello.len() / 2]).unwrap();
    good.echo("while a ClientHello is half sent");
    // The refusals are counted (plain HTTP, upgrade, garbage, oversized: 4 handshake errors).
    let metrics = {
        let mut c = tls_client(server.addr, &certs.ca_der);
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = c.read_to_string(&mut body);
        body
    };
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "ringws_connections_rejected_total{worker=\"0\",reason=\"handshake_error\"} 4"),
        "{metrics}"
    );
    drop(dribbler);
    good.echo("last");
    assert!(server.is_running(), "the server is still up");
}

/// Runs `ringws load --json` against `url` with `trust` (`--ca FILE` or `--insecure`); returns
/// the exit status and the JSON object.
fn load_over_tls(
    url: &str,
    trust: &[&str],
) -> (std::process::ExitStatus, serde_json::Value, String) {
    let mut cmd = Command::new(common::binary());
    cmd.args(["load", "--json", "--workers", "1", "--connections", "20"])
        .args(["--duration", "1", "--warmup", "0.2", "--url", url])
        .args(trust);
    let (status, output) = run_bounded(&mut cmd, Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("ringws load did not finish:\n{output}"));
    let line = output
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object:\n{output}"));
    (status, serde_json::from_str(line).unwrap(), output)
}

#[test]
fn the_engines_own_client_loads_a_tls_server() {
    let certs = Certs::new("load", "load");
    let server = start(&certs, &[]);
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let ca = certs.ca.display().to_string();
    // Trusting the test CA: every connection up, echoes verified.
    let (status, v, output) = load_over_tls(&url, &["--ca", &ca]);
    assert!(status.success(), "{output}");
    assert_eq!(v["connections_established"], 20, "{v}");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"]["mismatch"], 0, "{v}");
    // Trusting only the Mozilla roots: the test CA is refused, every connect fails with a TLS
    // error, and the server keeps serving.
    let (_, v, output) = load_over_tls(&url, &[]);
    assert_eq!(v["connections_established"], 0, "{v}");
    assert!(output.contains("TLS"), "{output}");
    let mut good = Wss::open(server.addr, &certs.ca_der);
    good.echo("after refused clients");
}

/// Runs `deflate.py MODE ADDR ARGS...` over wss:// (`RINGWS_TLS_CA`) against `server`.
fn deflate_py(certs: &Certs, server: &Server, mode: &str, args: &[&str]) -> String {
    let mut cmd = common::python("deflate.py");
    cmd.arg(mode)
        .arg(server.addr.to_string())
        .args(args)
        .env("RINGWS_TLS_CA", &certs.ca);
    let (status, output) = run_bounded(&mut cmd, Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()) && output.contains("ok: "),
        "{cmd:?}: {status:?}\n{output}\n--- server ---\n{}",
        server.log()
    );
    output
}

#[test]
fn permessage_deflate_and_the_feeds_fan_out_work_over_tls() {
    let certs = Certs::new("features", "features");
    // Compressed echo, both takeover modes, messages up to the small set's sizes.
    let server = start(&certs, &["--deflate", "--max-message-size", "16777216"]);
    deflate_py(
        &certs,
        &server,
        "client",
        &[
            "small",
            "off",
            "-",
            "snct,cnct",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ],
    );
    drop(server);
    // The feed's publications, encoded once and encrypted per subscriber, compressed (RSV1).
    let feed = start(
        &certs,
        &[
            "--mode",
            "feed",
            "--rate",
            "500",
            "--symbols",
            "4",
            "--deflate",
            "--deflate-min-size",
            "16",
        ],
    );
    let output = deflate_py(
        &certs,
        &feed,
        "feed",
        &["default", "permessage-deflate; server_no_context_takeover"],
    );
    assert!(output.contains("ok: "), "{output}");
}

/// A rustls client connection to `ca`'s server name 127.0.0.1, not yet connected.
fn client_conn(ca: &CertificateDer<'static>) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
        .unwrap()
}

/// `bytes` mutated: bits flipped, bytes overwritten, cut short, or random bytes spliced in.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len().max(1) as u64) as usize;
        match rng.below(4) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = rng.next() as u8,
            2 => out.truncate(at.max(1)),
            _ => {
                let junk: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
            }
        }
    }
    out
}

/// Mutated ClientHellos and corrupted records after a completed handshake, on many connections:
/// each gets a handshake answer, an alert or a close (never a hang past the read timeout), the
/// server keeps running, and a well-behaved client keeps echoing throughout.
#[test]
fn mutated_handshakes_and_corrupted_records_are_refused_without_harm() {
    let certs = Certs::new("fuzz", "fuzz");
    let mut server = start(&certs, &[]);
    let mut good = Wss::open(server.addr, &certs.ca_der);
    let mut rng = Rng(0x7e57_7135);
    let mut hello = Vec::new();
    client_conn(&certs.ca_der).write_tls(&mut hello).unwrap();
    for case in 0..150 {
        let input = mutate(&mut rng, &hello);
        let answer = answer_within(server.addr, &input, Duration::from_millis(100));
        assert!(
            answer.is_empty() || matches!(answer[0], 21 | 22),
            "case {case}: a mutated ClientHello was answered {:02x?}",
            &answer[..answer.len().min(16)]
        );
        if case % 20 == 0 {
            good.echo(&format!("after case {case}"));
        }
    }
    // After a real handshake: records of application data with bytes flipped.
    for case in 0..50 {
        let mut conn = client_conn(&certs.ca_der);
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        conn.writer()
            .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records).unwrap();
        }
        let at = 5 + rng.below(records.len() as u64 - 5) as usize;
        records[at] ^= 1 << rng.below(8);
        tcp.write_all(&records).unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        // The server cannot decrypt it: it answers with an alert (bad_record_mac), never with the
        // response to a request it could not have read.
        let mut plain = Vec::new();
        let mut cursor = std::io::Cursor::new(rest);
        while conn.read_tls(&mut cursor).unwrap_or(0) > 0 {
            if conn.process_new_packets().is_err() {
                break;
            }
            let _ = conn.reader().read_to_end(&mut plain);
        }
        assert!(
            !String::from_utf8_lossy(&plain).contains("200 OK"),
            "case {case}: a corrupted record was answered"
        );
        if case % 10 == 0 {
            good.echo(&format!("after corrupted record {case}"));
        }
    }
    good.echo("last");
    assert!(server.is_running());
}

/// `--addr` plain and `--tls-addr` TLS at once: each port speaks its own protocol.
#[test]
fn plain_and_tls_listen_side_by_side() {
    let certs = Certs::new("both", "both");
    let server = start(&certs, &["--tls-addr", "127.0.0.1:0", "--workers", "2"]);
    let mut line = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            line = server
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("TLS (wss://) on ").map(str::to_owned))
                .unwrap_or_default();
            !line.is_empty()
        }),
        "no TLS line:\n{}",
        server.log()
    );
    let tls_addr: SocketAddr = line.trim().parse().unwrap();
    assert_ne!(tls_addr, server.addr);
    // Plain on --addr.
    let mut plain = common::RawClient::connect(server.addr);
    plain.echo(Frame::text("plain"));
    // TLS on --tls-addr, several connections so that both workers' listeners are used.
    for i in 0..8 {
        Wss::open(tls_addr, &certs.ca_der).echo(&format!("tls {i}"));
    }
    // Each port refuses the other protocol: a TLS ClientHello on the plain port gets an HTTP
    // 400, plain HTTP on the TLS port an alert or a close.
    let mut hello = Vec::new();
    client_conn(&certs.ca_der).write_tls(&mut hello).unwrap();
    let answer = answer_to(server.addr, &hello);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let answer = answer_to(tls_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(is_alert_or_close(&answer), "{answer:02x?}");
    plain.echo(Frame::text("still plain"));
}

/// tokio-tungstenite over tokio-rustls (the Rust stack most services use as a client): concurrent
/// connections each echo text and binary messages from a few bytes to several records' worth
/// (every size crosses a different record and receive-buffer boundary), get their ping answered,
/// and end with a Close the server answers with the same code.
#[test]
fn tokio_tungstenite_over_rustls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let certs = Certs::new("tungstenite", "localhost");
    let server = start(&certs, &[]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients = (0..16u8).map(|client| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await?;
            let url = format!("wss://localhost:{}/", addr.port());
            let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
                .await
                .map_err(std::io::Error::other)?;
            for (i, len) in [1usize, 125, 126, 16_000, 16_384, 70_000, 300_000]
                .into_iter()
                .enumerate()
            {
                let seed = client.wrapping_mul(31).wrapping_add(i as u8);
                let sent = if i % 2 == 0 {
                    Message::text(common::text(len, seed))
                } else {
                    Message::binary(common::bytes(len, seed))
                };
                ws.send(sent.clone()).await.map_err(std::io::Error::other)?;
                let got = loop {
                    match ws.next().await {
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        other => break other,
                    }
                };
                assert!(
                    matches!(&got, Some(Ok(m)) if *m == sent),
                    "client {client}: {len} bytes came back as {:?}",
                    got.as_ref().map(|m| m.as_ref().map(Message::len))
                );
            }
            ws.send(Message::Ping(b"tls?".to_vec().into()))
                .await
                .map_err(std::io::Error::other)?;
            let pong = ws.next().await;
            assert!(
                matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"tls?"),
                "{pong:?}"
            );
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))
            .await
            .map_err(std::io::Error::other)?;
            let close = ws.next().await;
            assert!(
                matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Away),
                "{close:?}"
            );
            Ok::<_, std::io::Error>(())
        }
    });
    let results = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(clients),
        )
        .await
    });
    let results = results.expect("the clients finished within 60 s");
    for (client, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("client {client}: {e}\n--- server ---\n{}", server.log()));
    }
}
