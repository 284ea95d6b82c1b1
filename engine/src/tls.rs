//! wss://: TLS for the server's connections, rustls for the handshake and a record layer of our
//! own after it.
//!
//! The handshake runs on rustls's unbuffered API, which leaves every buffer to the caller, as the
//! engine wants: received ciphertext is handed over straight from the pooled receive buffer (a
//! record split over receives is gathered in a per-connection buffer only while it is
//! incomplete), handshake records are written straight into the connection's output queue. Once
//! the handshake is done, the session hands the connection over
//! (`dangerous_into_kernel_connection`, the seam a kernel-TLS path would use; this machine's
//! kernel has no `CONFIG_TLS`, so none is shipped) to [`record`]: ring's AEADs, records decrypted
//! in place in the receive buffer and sealed in place in the output queue, and only rustls's small
//! `KernelConnection` kept for key updates and session tickets. rustls's connection (its record
//! layer, deframer and buffers) is dropped: most of an idle TLS connection's memory before.
//! Decrypted application data stays where it was decrypted: [`Plaintext`] tells the worker which
//! spans of the receive buffer hold it, and frames are decoded in place there as on a plain
//! connection (only a record gathered over receives has its data copied).
//!
//! Crypto provider: `ring` (assembly AES-GCM and ChaCha20-Poly1305, a plain `cc` build), measured
//! against aws-lc-rs on this machine: aws-lc-rs encrypts 1.5x faster in bulk, but its C library
//! adds minutes to every build profile; docs/benchmarks.md has the numbers. TLS 1.3
//! and 1.2, ALPN `http/1.1`, stateless session tickets and the default session cache for
//! resumption. [`TlsConfig`] swaps its certificate atomically: new handshakes use the new chain,
//! open connections keep theirs.

use rustls::client::UnbufferedClientConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

mod record;
#[cfg(test)]
mod tests;

use record::{AlertLevel, Kernel, Opened, Records};

/// Why a TLS configuration could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (e.g. the key does not match the certificate).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { path, reason } => write!(f, "{}: {reason}", path.display()),
            Self::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Server TLS: the certificate chain and private key connections are served with, swappable
/// while the server runs ([`reload`](Self::reload), SIGHUP in `ringws serve`).
#[derive(Clone)]
pub struct TlsConfig {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    /// The PEM files it was read from, for [`reload`](Self::reload).
    files: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1:
    /// RSA, ECDSA P-256/P-384 or Ed25519).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        let config = config_from_files(&cert, &key)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            files: Some((cert, key)),
        })
    }

    /// A configuration from PEM text already in memory.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let memory = Path::new("(in memory)");
        let config = server_config(certs(cert, memory)?, private_key(key, memory)?)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            files: None,
        })
    }

    /// Reads the PEM files again and swaps the certificate in: new handshakes use it, open
    /// connections are untouched. On an error the old certificate stays. A configuration made
    /// from memory has nothing to reload (Ok).
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(());
        };
        let config = config_from_files(cert, key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// The configuration new handshakes use.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn config_from_files(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    server_config(certs(&read(cert)?, cert)?, private_key(&read(key)?, key)?)
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The record layer takes the traffic secrets over once the handshake is done (record.rs).
    config.enable_secret_extraction = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?;
    Ok(config)
}

/// Client TLS for `wss://` connections the engine opens ([`Connect`](crate::Connect)): which
/// servers to trust.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the Mozilla root certificates compiled in (`webpki-roots`): what a browser trusts,
    /// the same on every host, no system store to read. The default for `wss://`.
    pub fn webpki_roots() -> Self {
        // Made once per process: a load generator opens thousands of connections.
        static ROOTS: std::sync::OnceLock<TlsClient> = std::sync::OnceLock::new();
        ROOTS
            .get_or_init(|| {
                Self::with_roots(RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
            })
            .clone()
    }

    /// Trusts only the CA certificates in the PEM file `path` (a private CA).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for cert in certs(&pem, path)? {
            roots.add(cert).map_err(TlsError::Rustls)?;
        }
        Ok(Self::with_roots(roots))
    }

    /// **Trusts any certificate, without verifying it**: for tests and load generation against
    /// a server with a throwaway certificate only. The connection is encrypted but anyone in the
    /// path can read and change it.
    pub fn dangerous_accept_any_certificate() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Self::finish(config)
    }

    fn with_roots(roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::finish(config)
    }

    fn finish(mut config: ClientConfig) -> Self {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_secret_extraction = true;
        Self {
            config: Arc::new(config),
        }
    }
}

/// The verifier of [`TlsClient::dangerous_accept_any_certificate`]: every certificate passes;
/// handshake signatures are still checked (with the provider's algorithms).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The application data of one receive, in order: `bytes` first (decrypted elsewhere: by rustls
/// during the handshake, or a record gathered over receives), then `spans` of the receive buffer
/// itself, where records were decrypted in place.
#[derive(Default)]
pub(crate) struct Plaintext {
    /// Decrypted bytes copied here.
    pub bytes: Vec<u8>,
    /// Ranges of the receive buffer holding decrypted bytes.
    pub spans: Vec<Range<usize>>,
}

impl Plaintext {
    /// Empties both (keeping their capacity).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }
}

/// What a call to [`Session::input`] found.
#[derive(Debug)]
pub(crate) enum Input {
    /// Records processed (decrypted bytes, if any, were appended).
    Ok,
    /// The peer sent close_notify: it sends nothing more.
    PeerClosed,
    /// The peer broke the protocol (or is not speaking TLS); an alert, if rustls made one, was
    /// queued to send. The connection must be closed.
    Failed(rustls::Error),
}

/// rustls's unbuffered connection of either side (they share every state type but not the
/// entry point).
trait Unbuffered {
    type Data;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

/// The state of one side: rustls's connection during the handshake, our record layer after.
enum Conn {
    /// A server handshake (boxed: rustls's connection is large, and gone once established).
    Server(Box<UnbufferedServerConnection>),
    /// A client handshake.
    Client(Box<UnbufferedClientConnection>),
    /// Established and handed over to [`record::Records`].
    Records(Box<Records>),
    /// An error ended the session (its state is dropped).
    Failed,
}

/// One connection's TLS session.
pub(crate) struct Session {
    conn: Conn,
    /// Received bytes of a record not yet complete (empty between records).
    incoming: Vec<u8>,
    /// The handshake is done: application data can be encrypted.
    established: bool,
    close_notify_sent: bool,
}

/// Bound on the states handled per call (each needs input or output to progress).
const MAX_STEPS: usize = 1 << 16;

impl Session {
    /// A server session under `config`.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Self::with(Conn::Server(Box::new(conn))))
    }

    /// A client session to `name` under `client`; its ClientHello is produced by the first
    /// [`input`](Self::input) (with no bytes).
    pub fn client(client: &TlsClient, name: ServerName<'static>) -> Result<Self, rustls::Error> {
        let conn = UnbufferedClientConnection::new(Arc::clone(&client.config), name)?;
        Ok(Self::with(Conn::Client(Box::new(conn))))
    }

    fn with(conn: Conn) -> Self {
        Self {
            conn,
            incoming: Vec::new(),
            established: false,
            close_notify_sent: false,
        }
    }

    /// Whether application data can be sent.
    pub fn established(&self) -> bool {
        self.established
    }

    /// Whether close_notify has been queued.
    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// Processes received bytes: handshake records to send (or an alert) are appended to
    /// `wire`, decrypted application data to `plain`. Once established, records are decrypted
    /// in place in `data` and `plain` says where (a record split over receives is gathered
    /// first, and its data copied).
    pub fn input(&mut self, data: &mut [u8], wire: &mut Vec<u8>, plain: &mut Plaintext) -> Input {
        let Self {
            conn,
            incoming,
            established,
            ..
        } = self;
        let outcome = match conn {
            Conn::Server(c) => input(
                &mut **c,
                incoming,
                established,
                data,
                wire,
                &mut plain.bytes,
            ),
            Conn::Client(c) => input(
                &mut **c,
                incoming,
                established,
                data,
                wire,
                &mut plain.bytes,
            ),
            Conn::Records(r) => records_input(r, incoming, data, wire, plain),
            Conn::Failed => {
                return Input::Failed(rustls::Error::General("the TLS session failed".into()));
            }
        };
        match outcome {
            Input::Failed(_) => self.fail(),
            Input::Ok if self.established => {
                if let Err(e) = self.hand_off() {
                    self.fail();
                    return Input::Failed(e);
                }
            }
            _ => {}
        }
        outcome
    }

    /// Drops the session's state: nothing is sent or received again.
    fn fail(&mut self) {
        self.conn = Conn::Failed;
        self.incoming = Vec::new();
    }

    /// Once the handshake is over, gives rustls's connection up for [`record::Records`] with
    /// its traffic secrets. Waits (rustls goes on) while rustls holds part of a post-handshake
    /// message: a complete record left over in `incoming` is one it has consumed but not let go
    /// of, and already decrypted there.
    fn hand_off(&mut self) -> Result<(), rustls::Error> {
        let ready = match &self.conn {
            Conn::Server(c) => !c.is_handshaking(),
            Conn::Client(c) => !c.is_handshaking(),
            Conn::Records(_) | Conn::Failed => false,
        };
        let holds_record = matches!(
            self.incoming.get(3..5),
            Some(&[hi, lo]) if self.incoming.len() >= 5 + usize::from(u16::from_be_bytes([hi, lo]))
        );
        if !ready || holds_record {
            return Ok(());
        }
        let records = match std::mem::replace(&mut self.conn, Conn::Failed) {
            Conn::Server(c) => {
                let (secrets, kernel) = c.dangerous_into_kernel_connection()?;
                Records::new(secrets, Kernel::Server(kernel))?
            }
            Conn::Client(c) => {
                let (secrets, kernel) = c.dangerous_into_kernel_connection()?;
                Records::new(secrets, Kernel::Client(kernel))?
            }
            other => {
                self.conn = other;
                return Ok(());
            }
        };
        self.conn = Conn::Records(Box::new(records));
        Ok(())
    }

    /// Encrypts `plaintext` into records appended to `wire` (records of up to 16 KiB; as few as
    /// the bytes need). False if the handshake is not done yet (nothing written) or the
    /// session can no longer send.
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut Vec<u8>) -> bool {
        if let Conn::Records(r) = &mut self.conn {
            if r.seal(plaintext, wire).is_err() {
                // The key's life is over (TLS 1.2; close_notify went out) or the cipher failed.
                self.close_notify_sent = true;
                self.fail();
                return false;
            }
            return true;
        }
        // Room for the records' headers, tags and content types, so one call usually suffices.
        let hint = plaintext.len() + plaintext.len().div_ceil(16 << 10) * 64 + 64;
        self.with_write(wire, |w, wire| {
            encrypt_into(wire, hint, |out| w.encrypt(plaintext, out));
        })
    }

    /// Queues close_notify into `wire` (once).
    pub fn close_notify(&mut self, wire: &mut Vec<u8>) {
        if self.close_notify_sent {
            return;
        }
        if let Conn::Records(r) = &mut self.conn {
            r.alert(
                AlertLevel::Warning,
                rustls::AlertDescription::CloseNotify,
                wire,
            );
            self.close_notify_sent = true;
        } else if self.with_write(wire, |w, wire| {
            encrypt_into(wire, 64, |out| w.queue_close_notify(out));
        }) {
            self.close_notify_sent = true;
        }
    }

    /// Runs `f` with rustls's connection in its write state (handshake records still to send
    /// go to `wire` first). False if the session cannot write application data now.
    fn with_write(
        &mut self,
        wire: &mut Vec<u8>,
        f: impl FnOnce(&mut dyn Encrypt, &mut Vec<u8>),
    ) -> bool {
        if !self.established {
            return false;
        }
        match &mut self.conn {
            Conn::Server(c) => with_write(&mut **c, &mut self.incoming, wire, f),
            Conn::Client(c) => with_write(&mut **c, &mut self.incoming, wire, f),
            Conn::Records(_) | Conn::Failed => false,
        }
    }
}

/// Established input: completes a record split over receives in `incoming` (taking from
/// `data` only what it lacks), then decrypts the records in `data` in place; an incomplete
/// record at the end is kept in `incoming`. After an error the fatal alert is queued to `wire`.
fn records_input(
    records: &mut Records,
    incoming: &mut Vec<u8>,
    data: &mut [u8],
    wire: &mut Vec<u8>,
    plain: &mut Plaintext,
) -> Input {
    match open_records(records, incoming, data, wire, plain) {
        Ok(Opened::Ok) => Input::Ok,
        Ok(Opened::PeerClosed) => Input::PeerClosed,
        Err(e) => {
            if let Some(alert) = record::alert_for(&e) {
                records.alert(AlertLevel::Fatal, alert, wire);
            }
            Input::Failed(e)
        }
    }
}

fn open_records(
    records: &mut Records,
    incoming: &mut Vec<u8>,
    mut data: &mut [u8],
    wire: &mut Vec<u8>,
    plain: &mut Plaintext,
) -> Result<Opened, rustls::Error> {
    // Bytes of `data` that completed a gathered record (the spans below are of `data` whole).
    let mut skipped = 0;
    if !incoming.is_empty() {
        // The header first (it says how long the record is), then the rest of the record.
        for _ in 0..2 {
            let want = match records.record_len(incoming) {
                None => 5,
                Some(len) => len?,
            };
            let take = want.saturating_sub(incoming.len()).min(data.len());
            incoming.reserve_exact(take);
            incoming.extend_from_slice(&data[..take]);
            data = &mut data[take..];
            skipped += take;
        }
        match records.record_len(incoming) {
            Some(Ok(len)) if len == incoming.len() => {}
            _ => return Ok(Opened::Ok),
        }
        let first = plain.spans.len();
        let (_, opened) = records.open(incoming, wire, &mut plain.spans);
        for span in plain.spans.drain(first..) {
            plain.bytes.extend_from_slice(&incoming[span]);
        }
        *incoming = Vec::new();
        if opened? == Opened::PeerClosed {
            return Ok(Opened::PeerClosed);
        }
    }
    let first = plain.spans.len();
    let (used, opened) = records.open(data, wire, &mut plain.spans);
    for span in &mut plain.spans[first..] {
        *span = span.start + skipped..span.end + skipped;
    }
    let opened = opened?;
    if opened == Opened::Ok {
        incoming.extend_from_slice(&data[used..]);
    }
    Ok(opened)
}

/// Encryption in the write state, whatever the side.
trait Encrypt {
    fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, EncryptError>;
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError>;
}

impl<D> Encrypt for WriteTraffic<'_, D> {
    fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        WriteTraffic::encrypt(self, plaintext, out)
    }
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        WriteTraffic::queue_close_notify(self, out)
    }
}

fn input<C: Unbuffered>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    established: &mut bool,
    data: &mut [u8],
    wire: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Input {
    let gathered = !incoming.is_empty();
    if gathered {
        incoming.extend_from_slice(data);
    }
    let mut pos = 0;
    let mut outcome = Input::Ok;
    {
        let buf: &mut [u8] = if gathered { incoming } else { data };
        for _ in 0..MAX_STEPS {
            let status = conn.records(&mut buf[pos..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    pos += discard;
                    outcome = Input::Failed(e);
                    break;
                }
            };
            let mut done = true;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    done = false;
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(r) => {
                                discard += r.discard;
                                plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                outcome = Input::Failed(e);
                                done = true;
                                break;
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    done = false;
                    encode_into(wire, |out| enc.encode(out));
                }
                ConnectionState::TransmitTlsData(t) => {
                    done = false;
                    t.done();
                }
                ConnectionState::WriteTraffic(_) => *established = true,
                ConnectionState::PeerClosed => outcome = Input::PeerClosed,
                // BlockedHandshake (more bytes needed), Closed, and early data, which is not
                // enabled (max_early_data_size stays 0).
                _ => {}
            }
            pos += discard;
            if done {
                break;
            }
        }
    }
    // What was not consumed is the start of a record: keep it for the next receive.
    if gathered {
        incoming.drain(..pos.min(incoming.len()));
        if incoming.is_empty() {
            *incoming = Vec::new();
        }
    } else if pos < data.len() {
        incoming.extend_from_slice(&data[pos..]);
    }
    if matches!(outcome, Input::Failed(_)) {
        drain_alerts(conn, incoming, wire);
    }
    outcome
}

/// After an error: the fatal alert rustls queued, if it did, into `wire`. One call: a queued
/// record is handed out before any input is looked at, and the session is not used again (a
/// second look at the input would fail it again). `incoming` is what was left of the input:
/// rustls must always see the bytes it has not let go of at the front of the buffer (a
/// handshake message spanning records is located by its position in it).
fn drain_alerts<C: Unbuffered>(conn: &mut C, incoming: &mut [u8], wire: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = conn.records(incoming).state {
        encode_into(wire, |out| enc.encode(out));
    }
}

fn with_write<C: Unbuffered>(
    conn: &mut C,
    incoming: &mut [u8],
    wire: &mut Vec<u8>,
    f: impl FnOnce(&mut dyn Encrypt, &mut Vec<u8>),
) -> bool {
    let mut f = Some(f);
    for _ in 0..8 {
        // The leftover of an incomplete record is passed as is: nothing in it can be consumed,
        // and rustls must see the same bytes at the front next time.
        let status = conn.records(incoming);
        match status.state {
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                if let Some(f) = f.take() {
                    f(&mut w, wire);
                }
                return true;
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                encode_into(wire, |out| enc.encode(out));
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return false,
        }
    }
    false
}

/// Appends what `encode` writes to `wire`, growing it to the size rustls asks for.
fn encode_into(
    wire: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) {
    let start = wire.len();
    wire.resize(start + 4096, 0);
    loop {
        match encode(&mut wire[start..]) {
            Ok(n) => {
                wire.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(e)) => wire.resize(start + e.required_size, 0),
            Err(EncodeError::AlreadyEncoded) => {
                wire.truncate(start);
                return;
            }
        }
    }
}

/// Appends what `encrypt` writes to `wire`, starting with `hint` bytes of room and growing to
/// the size rustls asks for.
fn encrypt_into(
    wire: &mut Vec<u8>,
    hint: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) {
    let start = wire.len();
    wire.resize(start + hint, 0);
    loop {
        match encrypt(&mut wire[start..]) {
            Ok(n) => {
                wire.truncate(start + n);
                return;
            }
            Err(EncryptError::InsufficientSize(e)) => wire.resize(start + e.required_size, 0),
            Err(EncryptError::EncryptExhausted) => {
                wire.truncate(start);
                return;
            }
        }
    }
}
