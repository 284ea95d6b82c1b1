//! wss://: TLS for the server's connections with rustls's unbuffered (sans-IO) API.
//!
//! The unbuffered API leaves every buffer to the caller, as the engine wants: received ciphertext
//! is handed over straight from the pooled receive buffer (a record split over receives is
//! gathered in a per-connection buffer only while it is incomplete), handshake records and
//! encrypted application data are written straight into the connection's output queue. rustls
//! 0.23 does not yet decrypt in place (its `ReadTraffic` hands back a record it decrypted into
//! its own buffer; in-place decryption is a TODO upstream), so decrypted bytes are copied once
//! into the worker's plaintext scratch, where frames are then decoded in place as on a plain
//! connection. The seam for a kernel-TLS (or own in-place record layer) path is here: after the
//! handshake the session's traffic secrets could be handed on (`dangerous_extract_secrets`); this
//! machine's kernel has no `CONFIG_TLS`, so no such path is shipped.
//!
//! Crypto provider: `ring` (assembly AES-GCM and ChaCha20-Poly1305, a plain `cc` build). TLS 1.3
//! and 1.2, ALPN `http/1.1`, stateless session tickets and the default session cache for
//! resumption. [`TlsConfig`] swaps its certificate atomically: new handshakes use the new chain,
//! open connections keep theirs.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

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
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?;
    Ok(config)
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

/// One connection's TLS session.
pub(crate) struct Session {
    conn: UnbufferedServerConnection,
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
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            established: false,
            close_notify_sent: false,
        })
    }

    /// Whether application data can be sent.
    pub fn established(&self) -> bool {
        self.established
    }

    /// Whether close_notify has been queued.
    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// Processes received bytes: handshake records to send are appended to `wire`, decrypted
    /// application data to `plain`.
    pub fn input(&mut self, data: &mut [u8], wire: &mut Vec<u8>, plain: &mut Vec<u8>) -> Input {
        let Self {
            conn,
            incoming,
            established,
            ..
        } = self;
        let gathered = !incoming.is_empty();
        if gathered {
            incoming.extend_from_slice(data);
        }
        let buf: &mut [u8] = if gathered { incoming } else { data };
        let mut pos = 0;
        let mut outcome = Input::Ok;
        for _ in 0..MAX_STEPS {
            let status = conn.process_tls_records(&mut buf[pos..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    pos += discard;
                    outcome = Input::Failed(e);
                    break;
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(r) => {
                                discard += r.discard;
                                plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                outcome = Input::Failed(e);
                                break;
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    encode_into(wire, |out| enc.encode(out));
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(_) => {
                    *established = true;
                    pos += discard;
                    break;
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => {
                    pos += discard;
                    break;
                }
                ConnectionState::PeerClosed => {
                    pos += discard;
                    outcome = Input::PeerClosed;
                    break;
                }
                // 0-RTT is not enabled (max_early_data_size stays 0): none can arrive.
                ConnectionState::ReadEarlyData(_) => {
                    pos += discard;
                    break;
                }
                _ => {
                    pos += discard;
                    break;
                }
            }
            pos += discard;
            if matches!(outcome, Input::Failed(_)) {
                break;
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
            self.drain_alerts(wire);
        }
        outcome
    }

    /// After an error: the alert rustls queued, if any, into `wire`.
    fn drain_alerts(&mut self, wire: &mut Vec<u8>) {
        for _ in 0..8 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    encode_into(wire, |out| enc.encode(out));
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Encrypts `plaintext` into records appended to `wire` (records of up to 16 KiB; as few as
    /// the bytes need). False if the handshake is not done yet (nothing written).
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut Vec<u8>) -> bool {
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
        if self.with_write(wire, |w, wire| {
            encrypt_into(wire, 64, |out| w.queue_close_notify(out));
        }) {
            self.close_notify_sent = true;
        }
    }

    /// Runs `f` with the session in its write state (handshake records still to send go to
    /// `wire` first). False if the session cannot write application data now.
    fn with_write(
        &mut self,
        wire: &mut Vec<u8>,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ),
    ) -> bool {
        if !self.established {
            return false;
        }
        for _ in 0..8 {
            // The leftover of an incomplete record is passed as is: nothing in it can be
            // consumed, and rustls must see the same bytes at the front next time.
            let status = self.conn.process_tls_records(&mut self.incoming);
            debug_assert_eq!(status.discard, 0);
            match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    f(&mut w, wire);
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
