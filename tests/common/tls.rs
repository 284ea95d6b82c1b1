//! TLS material for the tests: a throwaway CA and a server certificate it signed, generated with
//! rcgen into PEM files of their own (removed on drop).

use rustls::pki_types::CertificateDer;
use std::path::PathBuf;

/// A test CA and a server certificate it signed, as PEM files in a directory of their own.
pub struct Certs {
    dir: PathBuf,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// The server certificate chain (PEM file).
    pub cert: PathBuf,
    /// The server's private key (PEM file).
    pub key: PathBuf,
    /// The server certificate, to compare with what a client is shown.
    pub der: CertificateDer<'static>,
    /// The CA certificate.
    pub ca_der: CertificateDer<'static>,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of the server key, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

impl Certs {
    /// A CA and a certificate for 127.0.0.1 and localhost with common name `cn`, written under a
    /// fresh directory named after `name`.
    pub fn new(name: &str, cn: &str) -> Certs {
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
            spki_sha256: String::new(),
        };
        certs.issue(cn)
    }

    /// Issues a new CA and server certificate with common name `cn` into the same files.
    pub fn issue(mut self, cn: &str) -> Certs {
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
        self.spki_sha256 = {
            use base64::Engine as _;
            use sha2::Digest as _;
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&key),
            ))
        };
        self.ca_der = ca.der().clone();
        self
    }

    /// `ringws serve` arguments for these files.
    pub fn args(&self) -> Vec<String> {
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

/// A TLS client relay in front of a wss:// server: it accepts plain TCP on [`TlsRelay::addr`] and
/// carries each connection's bytes, unchanged, over a TLS connection of its own (rustls through
/// tokio-rustls, trusting `ca`) to the server. Clients that speak only ws:// — kosoku running the
/// Autobahn case files, the raw fuzz client — thereby drive the server's TLS path byte for byte:
/// every frame they send arrives in TLS records, every answer leaves in them. An end of stream is
/// passed on as one (a FIN becomes close_notify and FIN, and back), so the close handshake's TCP
/// side is what the client sees too.
pub struct TlsRelay {
    /// Where the plain side listens.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsRelay {
    /// Starts a relay to the TLS server at `target`, whose certificate `ca` signed.
    pub fn start(target: std::net::SocketAddr, ca: &CertificateDer<'static>) -> TlsRelay {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let plain = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((plain, _)) => plain,
                            Err(_) => continue,
                        },
                    };
                    tokio::spawn(relay(plain, target, connector.clone()));
                }
            });
        });
        TlsRelay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// One relayed connection: plain on one side, TLS to `target` on the other, until both ends are
/// done (or either fails: then both are dropped, which closes them).
async fn relay(
    mut plain: tokio::net::TcpStream,
    target: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
) {
    let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let _ = (plain.set_nodelay(true), tcp.set_nodelay(true));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
