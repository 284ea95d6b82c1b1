//! wss:// against real clients: Python `websockets` (TLS 1.3 and 1.2) and Node `ws` run their
//! interop scripts over TLS, a blocking rustls client checks the certificate rotation on SIGHUP,
//! and bad input on the TLS port (plain HTTP, a plain WebSocket upgrade, garbage, a truncated
//! ClientHello) gets an alert or a close without disturbing a well-behaved client. The CA and the
//! certificates are generated per test with rcgen.

mod common;

use common::{Frame, Server, eventually, repo_root, run_bounded};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A test CA and a server certificate it signed, as PEM files in a directory of their own.
struct Certs {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The server certificate, to compare with what a client is shown.
    der: CertificateDer<'static>,
    ca_der: CertificateDer<'static>,
}

impl Certs {
    /// A CA and a certificate for 127.0.0.1 and localhost with common name `cn`, written under a
    /// fresh directory named after `name`.
    fn new(name: &str, cn: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("ringws-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            der: CertificateDer::from(Vec::new()),
            ca_der: CertificateDer::from(Vec::new()),
        };
        certs.issue(cn)
    }

    /// Issues a new CA and server certificate with common name `cn` into the same files.
    fn issue(mut self, cn: &str) -> Certs {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ringws test CA {cn}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(&self.ca, ca.pem()).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        self.der = cert.der().clone();
        self.ca_der = ca.der().clone();
        self
    }

    /// `ringws serve` arguments for these files.
    fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A wss:// connection through [`tls_client`], upgraded.
struct Wss(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Wss {
    fn open(addr: SocketAddr, ca: &CertificateDer<'static>) -> Wss {
        let mut s = tls_client(addr, ca);
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Wss(s)
    }

    /// The certificate the server showed.
    fn peer_cert(&self) -> CertificateDer<'static> {
        self.0.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// Sends `text` and checks it comes back.
    fn echo(&mut self, text: &str) {
        let frame = Frame::text(text.as_bytes().to_vec());
        self.0.write_all(&frame.encode(Some([1, 2, 3, 4]))).unwrap();
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).unwrap();
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
    let root = repo_root();
    let python = root.join("tests/interop/.venv/bin/python");
    assert!(
        python.exists(),
        "run ./scripts/test.sh once: it installs the Python venv"
    );
    let certs = Certs::new("python", "python");
    let server = start(&certs, &["--max-message-size", "4194304"]);
    let mut cmd = Command::new(python);
    cmd.arg(root.join("tests/interop/python/client.py"))
        .arg(server.addr.to_string())
        .arg(&certs.ca);
    run_interop(cmd, &server);
}

#[test]
fn node_ws_over_tls() {
    let node_dir = repo_root().join("tests/interop/node");
    assert!(
        node_dir.join("node_modules/ws/package.json").exists(),
        "run ./scripts/test.sh once: it installs the Node packages"
    );
    let certs = Certs::new("node", "node");
    let server = start(&certs, &["--max-message-size", "4194304"]);
    let mut cmd = Command::new("node");
    cmd.arg(node_dir.join("client.mjs"))
        .arg(server.addr.to_string())
        .arg(&certs.ca)
        .current_dir(&node_dir);
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
    // New handshakes see the second certificate once the server has reloaded.
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = Wss::open(server.addr, &certs.ca_der);
            let cert = c.peer_cert();
            let rotated = cert == certs.der;
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
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
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
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        conn.write_tls(&mut hello).unwrap();
    }
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
