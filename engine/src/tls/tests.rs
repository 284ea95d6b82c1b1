//! The session against rustls itself (its buffered connections, in memory): handshake by
//! rustls, then our record layer on one side and rustls's on the other, for every cipher suite
//! the server offers, both sides, key updates both ways, and broken records.

use super::*;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::{AlertDescription, Connection, HandshakeKind, SupportedCipherSuite};
use std::io::{Read, Write};

const CERT: &[u8] = include_bytes!("testdata/cert.pem");
const KEY: &[u8] = include_bytes!("testdata/key.pem");

const SUITES: [SupportedCipherSuite; 6] = [
    suites::TLS13_AES_128_GCM_SHA256,
    suites::TLS13_AES_256_GCM_SHA384,
    suites::TLS13_CHACHA20_POLY1305_SHA256,
    suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// One server configuration for every test (one ticket key: a ticket from one connection
/// resumes the next).
fn server_config() -> Arc<ServerConfig> {
    static CONFIG: std::sync::OnceLock<TlsConfig> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| TlsConfig::from_pem(CERT, KEY).unwrap())
        .current()
}

/// A client configuration offering only `suite` (and its version), trusting any certificate.
fn client_config(suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[suite.version()])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    TlsClient::finish(config).config
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Our session and a rustls peer, connected in memory.
struct Pair {
    ours: Session,
    peer: Connection,
    /// What our session decrypted.
    plain: Vec<u8>,
    /// What the peer decrypted.
    peer_plain: Vec<u8>,
}

impl Pair {
    /// Our server, a rustls client offering `suite`.
    fn server(suite: SupportedCipherSuite) -> Self {
        let peer = rustls::ClientConnection::new(client_config(suite), localhost()).unwrap();
        Self::handshake(Session::server(server_config()).unwrap(), peer.into())
    }

    /// Our client offering `suite`, a rustls server.
    fn client(suite: SupportedCipherSuite) -> Self {
        Self::client_with(&client_config(suite))
    }

    fn client_with(config: &Arc<ClientConfig>) -> Self {
        let client = TlsClient {
            config: Arc::clone(config),
        };
        let ours = Session::client(&client, localhost()).unwrap();
        let peer = rustls::ServerConnection::new(server_config()).unwrap();
        Self::handshake(ours, peer.into())
    }

    fn handshake(ours: Session, mut peer: Connection) -> Self {
        peer.set_buffer_limit(None);
        let mut pair = Self {
            ours,
            peer,
            plain: Vec::new(),
            peer_plain: Vec::new(),
        };
        assert!(matches!(pair.pump(), Input::Ok));
        assert!(pair.ours.established());
        assert!(!pair.peer.is_handshaking());
        assert!(
            matches!(pair.ours.conn, Conn::Records(_)),
            "handed over to the record layer"
        );
        pair
    }

    /// Our side's input; what it decrypted is appended to `plain` (gathered bytes, then the
    /// spans of `data`).
    fn input(&mut self, data: &mut [u8], wire: &mut Vec<u8>) -> Input {
        let mut plain = Plaintext::default();
        let outcome = self.ours.input(data, wire, &mut plain);
        self.plain.extend_from_slice(&plain.bytes);
        for span in plain.spans {
            self.plain.extend_from_slice(&data[span]);
        }
        outcome
    }

    /// What the peer has to send.
    fn peer_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.peer.wants_write() {
            self.peer.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Gives `wire` to the peer (what it decrypts is read as it goes, rustls holding only so
    /// much).
    fn give_peer(&mut self, wire: &[u8]) -> Result<(), rustls::Error> {
        let mut rd = wire;
        while !rd.is_empty() {
            self.peer.read_tls(&mut rd).unwrap();
            self.peer.process_new_packets()?;
            let mut buf = [0; 4096];
            loop {
                match self.peer.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.peer_plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        Ok(())
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) -> Input {
        for _ in 0..100 {
            let mut data = self.peer_output();
            let mut wire = Vec::new();
            let outcome = self.input(&mut data, &mut wire);
            self.give_peer(&wire).unwrap();
            if !matches!(outcome, Input::Ok) || (data.is_empty() && wire.is_empty()) {
                return outcome;
            }
        }
        panic!("the pair kept talking");
    }

    /// Sends `msg` our way and back, checking both arrive whole.
    fn echo(&mut self, msg: &[u8]) {
        self.peer.writer().write_all(msg).unwrap();
        self.plain.clear();
        assert!(matches!(self.pump(), Input::Ok));
        assert_eq!(self.plain.len(), msg.len());
        assert!(self.plain == msg, "received as sent");
        let mut wire = Vec::new();
        assert!(self.ours.seal(msg, &mut wire));
        self.give_peer(&wire).unwrap();
        assert!(
            std::mem::take(&mut self.peer_plain) == msg,
            "sent as received"
        );
    }

    fn records(&mut self) -> &mut Records {
        match &mut self.ours.conn {
            Conn::Records(r) => r,
            _ => panic!("not handed over"),
        }
    }
}

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SIZES: [usize; 7] = [1, 20, 1000, 16383, 16384, 16385, 70_000];

#[test]
fn server_side_round_trips_every_suite() {
    for suite in SUITES {
        let mut pair = Pair::server(suite);
        assert_eq!(pair.peer.negotiated_cipher_suite(), Some(suite));
        for len in SIZES {
            pair.echo(&message(len));
        }
    }
}

#[test]
fn client_side_round_trips_every_suite() {
    for suite in SUITES {
        let mut pair = Pair::client(suite);
        assert_eq!(pair.peer.negotiated_cipher_suite(), Some(suite));
        for len in SIZES {
            pair.echo(&message(len));
        }
    }
}

#[test]
fn client_side_takes_session_tickets_after_the_hand_over() {
    let config = client_config(suites::TLS13_AES_128_GCM_SHA256);
    let mut first = Pair::client_with(&config);
    // The server's tickets arrive after the handshake: read by the record layer.
    first.echo(b"hello");
    let second = Pair::client_with(&config);
    assert_eq!(second.peer.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn records_are_decrypted_in_place() {
    for suite in SUITES {
        let mut pair = Pair::server(suite);
        for msg in [&b"one"[..], b"", b"three", &message(20_000)] {
            pair.peer.writer().write_all(msg).unwrap();
        }
        let mut data = pair.peer_output();
        let mut plain = Plaintext::default();
        let mut wire = Vec::new();
        assert!(matches!(
            pair.ours.input(&mut data, &mut wire, &mut plain),
            Input::Ok
        ));
        assert!(plain.bytes.is_empty(), "nothing copied");
        // One span per non-empty record, in the buffer itself.
        let lens: Vec<usize> = plain.spans.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [3, 5, 16384, 20_000 - 16384]);
        assert_eq!(&data[plain.spans[1].clone()], b"three");
    }
}

#[test]
fn records_split_over_receives_are_gathered() {
    // Pieces of 3 bytes split headers and tags; longer ones finish one record and carry the
    // next ones whole (their data then lies in the piece, after the gathered record's end).
    for step in [3, 1000, 16_500, 20_000] {
        for suite in [SUITES[0], SUITES[3], SUITES[5]] {
            let mut pair = Pair::server(suite);
            let msg = message(40_000);
            pair.peer.writer().write_all(&msg).unwrap();
            for tail in [&b"tail"[..], b"and", b"more"] {
                pair.peer.writer().write_all(tail).unwrap();
            }
            let bytes = pair.peer_output();
            let mut wire = Vec::new();
            for piece in bytes.chunks(step).chain([&[][..]]) {
                let mut piece = piece.to_vec();
                assert!(matches!(pair.input(&mut piece, &mut wire), Input::Ok));
            }
            assert!(wire.is_empty());
            assert_eq!(pair.plain.len(), msg.len() + 11);
            assert!(pair.plain[..msg.len()] == msg[..], "step {step}");
            assert!(pair.plain.ends_with(b"tailandmore"), "step {step}");
            assert!(pair.ours.incoming.is_empty());
        }
    }
}

#[test]
fn key_update_requested_by_the_peer_is_answered() {
    for mut pair in [
        Pair::server(suites::TLS13_AES_256_GCM_SHA384),
        Pair::client(suites::TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        pair.echo(b"before");
        for _ in 0..3 {
            pair.peer.refresh_traffic_keys().unwrap();
            // Our answer (a KeyUpdate under the old key) reaches the peer within pump.
            pair.echo(b"after an update");
        }
        assert_eq!(pair.records().rx.seq, 1);
        assert_eq!(pair.records().tx.seq, 1);
    }
}

#[test]
fn our_key_update_reaches_the_peer() {
    let mut pair = Pair::server(suites::TLS13_AES_128_GCM_SHA256);
    pair.echo(b"before");
    for _ in 0..3 {
        let mut wire = Vec::new();
        pair.records().update_keys(&mut wire).unwrap();
        pair.give_peer(&wire).unwrap();
        pair.echo(b"after our update");
    }
}

#[test]
fn sending_near_the_confidentiality_limit_updates_the_keys() {
    let mut pair = Pair::server(suites::TLS13_AES_128_GCM_SHA256);
    let limit = pair.records().tx_limit;
    pair.records().tx.seq = limit;
    let mut wire = Vec::new();
    assert!(pair.ours.seal(b"x", &mut wire));
    assert_eq!(pair.records().tx.seq, 1, "a new key, counted from 0");
}

#[test]
fn tls12_at_the_confidentiality_limit_closes() {
    let mut pair = Pair::server(suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    let limit = pair.records().tx_limit;
    pair.records().tx.seq = limit;
    let mut wire = Vec::new();
    assert!(!pair.ours.seal(b"x", &mut wire));
    assert!(pair.ours.close_notify_sent());
    assert!(matches!(pair.ours.conn, Conn::Failed));
}

#[test]
fn close_notify_both_ways() {
    for suite in [SUITES[1], SUITES[4]] {
        let mut pair = Pair::server(suite);
        let mut wire = Vec::new();
        pair.ours.close_notify(&mut wire);
        pair.ours.close_notify(&mut wire);
        pair.give_peer(&wire).unwrap();
        assert!(pair.peer.process_new_packets().unwrap().peer_has_closed());
        pair.peer.writer().write_all(b"last words").unwrap();
        pair.peer.send_close_notify();
        assert!(matches!(pair.pump(), Input::PeerClosed));
        assert_eq!(pair.plain, b"last words");
    }
}

/// Feeds `bytes` to our side, expecting it to fail with `error` and send `alert`.
fn expect_failure(
    pair: &mut Pair,
    mut bytes: Vec<u8>,
    error: rustls::Error,
    alert: AlertDescription,
) {
    let mut wire = Vec::new();
    match pair.input(&mut bytes, &mut wire) {
        Input::Failed(e) => assert_eq!(e, error),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pair.give_peer(&wire),
        Err(rustls::Error::AlertReceived(alert))
    );
    // The session is over.
    let mut wire = Vec::new();
    assert!(matches!(pair.input(&mut [], &mut wire), Input::Failed(_)));
    assert!(!pair.ours.seal(b"x", &mut wire) && wire.is_empty());
}

#[test]
fn a_tampered_record_gets_bad_record_mac() {
    for suite in SUITES {
        let mut pair = Pair::server(suite);
        pair.peer.writer().write_all(b"hello there").unwrap();
        let mut bytes = pair.peer_output();
        let last = bytes.len() - 1;
        bytes[last - 20] ^= 1;
        expect_failure(
            &mut pair,
            bytes,
            rustls::Error::DecryptError,
            AlertDescription::BadRecordMac,
        );
    }
}

#[test]
fn an_oversized_record_length_gets_record_overflow() {
    for suite in [SUITES[0], SUITES[3]] {
        let mut pair = Pair::server(suite);
        // Only the header: the length alone condemns it, nothing is gathered.
        expect_failure(
            &mut pair,
            vec![23, 3, 3, 0xff, 0xff],
            rustls::Error::PeerSentOversizedRecord,
            AlertDescription::RecordOverflow,
        );
    }
}

#[test]
fn a_record_shorter_than_its_tag_gets_bad_record_mac() {
    for suite in [SUITES[0], SUITES[3], SUITES[5]] {
        let mut pair = Pair::server(suite);
        expect_failure(
            &mut pair,
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
            rustls::Error::DecryptError,
            AlertDescription::BadRecordMac,
        );
    }
}

#[test]
fn a_truncated_record_waits_for_the_rest() {
    let mut pair = Pair::server(suites::TLS13_AES_128_GCM_SHA256);
    pair.peer.writer().write_all(b"complete me").unwrap();
    let mut bytes = pair.peer_output();
    let mut rest = bytes.split_off(bytes.len() / 2);
    let mut wire = Vec::new();
    assert!(matches!(pair.input(&mut bytes, &mut wire), Input::Ok));
    assert!(pair.plain.is_empty());
    assert!(matches!(pair.input(&mut rest, &mut wire), Input::Ok));
    assert_eq!(pair.plain, b"complete me");
}

#[test]
fn plaintext_and_unexpected_records_get_unexpected_message() {
    // A plaintext handshake record after the handshake (TLS 1.3: everything is application data
    // outside), and a change_cipher_spec.
    for bytes in [vec![22, 3, 3, 0, 20], vec![20, 3, 3, 0, 1]] {
        let mut pair = Pair::server(suites::TLS13_AES_128_GCM_SHA256);
        let len = usize::from(bytes[4]);
        let mut record = bytes.clone();
        record.resize(5 + len, 1);
        let mut wire = Vec::new();
        match pair.input(&mut record, &mut wire) {
            Input::Failed(rustls::Error::InappropriateMessage { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pair.give_peer(&wire),
            Err(rustls::Error::AlertReceived(
                AlertDescription::UnexpectedMessage
            ))
        );
    }
}

#[test]
fn a_fatal_alert_from_the_peer_ends_the_session_quietly() {
    for suite in [SUITES[2], SUITES[4]] {
        let mut pair = Pair::client(suite);
        // A record the peer cannot open: it answers bad_record_mac.
        let mut wire = Vec::new();
        assert!(pair.ours.seal(b"hello", &mut wire));
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(pair.give_peer(&wire), Err(rustls::Error::DecryptError));
        let mut alert = pair.peer_output();
        let mut wire = Vec::new();
        match pair.input(&mut alert, &mut wire) {
            Input::Failed(rustls::Error::AlertReceived(AlertDescription::BadRecordMac)) => {}
            other => panic!("{other:?}"),
        }
        assert!(wire.is_empty(), "no alert answers an alert");
    }
}
