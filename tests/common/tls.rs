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
