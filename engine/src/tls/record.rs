//! The record layer of an established connection: once rustls has finished the handshake, the
//! session hands its traffic secrets over (`dangerous_into_kernel_connection`, the same seam a
//! kernel-TLS path would use) and records are protected here with `ring`'s AEADs directly.
//!
//! Why: rustls's connection state (its record layer with boxed keys, deframer, buffers and the
//! handshake's leftovers) is most of an idle wss:// connection's memory, and rustls 0.23 decrypts
//! only into its own buffer. Here a received record is decrypted **in place**, in the buffer it
//! arrived in, and an outgoing record is sealed in place in the output queue (the plaintext is
//! copied in once, then encrypted where it lies). What rustls keeps after the hand-over is its
//! [`KernelConnection`]: the traffic secrets, for TLS 1.3 key updates, and (client side) the
//! session-ticket store.
//!
//! Protection per version (RFC 8446 5.2-5.3, RFC 5246 6.2.3.3, RFC 5288, RFC 7905):
//! - TLS 1.3: outer type application_data, nonce = iv XOR sequence number, additional data = the
//!   record header, the real content type and zero padding at the end of the plaintext.
//! - TLS 1.2 AES-GCM: an explicit 8-byte nonce after the header (iv XOR sequence number, as rustls
//!   does), additional data = sequence number, type, version and plaintext length.
//! - TLS 1.2 ChaCha20-Poly1305: nonce = iv XOR sequence number, the same additional data.
//!
//! Post-handshake messages: TLS 1.3 KeyUpdate (new receive keys; answered with our own KeyUpdate
//! when the peer asks), NewSessionTicket (client side, given to rustls's ticket store);
//! close_notify ends the input; any other alert fails the connection, as does anything
//! unexpected, with a fatal alert sent first. Each handshake message must lie in one record
//! (peers send post-handshake messages that way; a fragmented one fails the connection).
//! Before the sending sequence number reaches the cipher's confidentiality limit, a TLS 1.3
//! connection updates its keys; a TLS 1.2 connection (which cannot) sends close_notify and ends.

use ring::aead;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets,
    HandshakeType, InvalidMessage, PeerMisbehaved, ProtocolVersion, SupportedCipherSuite,
};
use std::ops::Range;

/// Record header: type, version, length.
const HEADER: usize = 5;
/// Largest plaintext of a record (2^14).
pub(super) const MAX_PLAINTEXT: usize = 1 << 14;
/// AEAD tag (all three ciphers).
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, sent before the ciphertext.
const EXPLICIT_NONCE: usize = 8;
/// Most key updates received in a row without application data between them (as rustls).
const MAX_KEY_UPDATES: u8 = 32;

/// What rustls keeps of an established connection, per side.
pub(super) enum Kernel {
    /// A server connection (key updates).
    Server(KernelConnection<ServerConnectionData>),
    /// A client connection (key updates and session tickets).
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn suite(&self) -> SupportedCipherSuite {
        match self {
            Self::Server(k) => k.negotiated_cipher_suite(),
            Self::Client(k) => k.negotiated_cipher_suite(),
        }
    }

    fn version(&self) -> ProtocolVersion {
        match self {
            Self::Server(k) => k.protocol_version(),
            Self::Client(k) => k.protocol_version(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        match self {
            Self::Server(k) => k.update_rx_secret(),
            Self::Client(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        match self {
            Self::Server(k) => k.update_tx_secret(),
            Self::Client(k) => k.update_tx_secret(),
        }
    }
}

/// One direction's key, nonce base and sequence number.
pub(super) struct Direction {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    /// The next record's sequence number.
    pub seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, Error> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(Error::General(
                    "cipher not supported by the record layer".into(),
                ));
            }
        };
        let bad = |_| Error::General("traffic secret of the wrong size".into());
        let key = aead::UnboundKey::new(algorithm, key.as_ref()).map_err(bad)?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| bad(ring::error::Unspecified))?;
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// iv XOR the sequence number (left-padded to 12 bytes).
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// What [`Records::open`] found besides application data.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Opened {
    /// Records processed.
    Ok,
    /// close_notify: the peer sends nothing more (records after it are ignored).
    PeerClosed,
}

/// What one record held.
enum Content {
    /// Application data, where it lies in the record.
    Data(Range<usize>),
    /// An alert or handshake message, handled.
    Other,
    /// close_notify.
    Closed,
}

/// An established connection's record protection.
pub(super) struct Records {
    kernel: Kernel,
    /// Receiving.
    pub rx: Direction,
    /// Sending.
    pub tx: Direction,
    tls13: bool,
    /// TLS 1.2 AES-GCM: records carry their nonce.
    explicit_nonce: bool,
    /// Records sent under one key before it must change (the cipher's confidentiality limit).
    pub tx_limit: u64,
    /// Key updates received since the last application data.
    key_updates: u8,
}

impl Records {
    /// The record layer for the secrets rustls handed over.
    pub fn new(secrets: ExtractedSecrets, kernel: Kernel) -> Result<Self, Error> {
        let tls13 = kernel.version() == ProtocolVersion::TLSv1_3;
        let (explicit_nonce, tx_limit) = match kernel.suite() {
            SupportedCipherSuite::Tls13(s) => (false, s.common.confidentiality_limit),
            SupportedCipherSuite::Tls12(s) => (
                !matches!(
                    secrets.tx.1,
                    ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
                ),
                s.common.confidentiality_limit,
            ),
        };
        Ok(Self {
            rx: Direction::new(secrets.rx)?,
            tx: Direction::new(secrets.tx)?,
            kernel,
            tls13,
            explicit_nonce,
            // A margin for the records a key update or close_notify needs.
            tx_limit: tx_limit.saturating_sub(16),
            key_updates: 0,
        })
    }

    /// Longest record body the version allows.
    fn max_body(&self) -> usize {
        if self.tls13 {
            MAX_PLAINTEXT + 256
        } else {
            MAX_PLAINTEXT + 2048
        }
    }

    /// The length of the record starting `buf` (header included) once its header is there: an
    /// error if it is longer than the version allows.
    pub fn record_len(&self, buf: &[u8]) -> Option<Result<usize, Error>> {
        let header = buf.get(..HEADER)?;
        let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
        Some(if body > self.max_body() {
            Err(Error::PeerSentOversizedRecord)
        } else {
            Ok(HEADER + body)
        })
    }

    /// Decrypts the complete records at the front of `buf` in place, appending where their
    /// application data now lies in `buf` to `spans` (empty records left out); handshake
    /// records to send (a KeyUpdate answer) go to `wire`. Returns the bytes consumed (the rest
    /// is the start of a record) and what was found; on an error the caller sends
    /// [`alert_for`] it and ends the connection.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        wire: &mut Vec<u8>,
        spans: &mut Vec<Range<usize>>,
    ) -> (usize, Result<Opened, Error>) {
        let mut pos = 0;
        while let Some(len) = self.record_len(&buf[pos..]) {
            let len = match len {
                Ok(len) if len <= buf.len() - pos => len,
                Ok(_) => break,
                Err(e) => return (pos, Err(e)),
            };
            let record = &mut buf[pos..pos + len];
            let at = pos;
            pos += len;
            match self.open_record(record, wire) {
                Ok(Content::Data(span)) => {
                    if !span.is_empty() {
                        spans.push(at + span.start..at + span.end);
                    }
                }
                Ok(Content::Other) => {}
                Ok(Content::Closed) => return (pos, Ok(Opened::PeerClosed)),
                Err(e) => return (pos, Err(e)),
            }
        }
        (pos, Ok(Opened::Ok))
    }

    /// One complete record, decrypted where it lies.
    fn open_record(&mut self, record: &mut [u8], wire: &mut Vec<u8>) -> Result<Content, Error> {
        let (header, body) = record.split_at_mut(HEADER);
        let header: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
        let outer = ContentType::from(header[0]);
        if self.rx.seq == u64::MAX {
            return Err(Error::General("receive sequence numbers exhausted".into()));
        }
        let (typ, start, len) = if self.tls13 {
            if outer != ContentType::ApplicationData {
                return Err(inappropriate(outer));
            }
            if body.len() < TAG + 1 {
                return Err(Error::DecryptError);
            }
            let nonce = aead::Nonce::assume_unique_for_key(self.rx.nonce());
            let inner = self
                .rx
                .key
                .open_in_place(nonce, aead::Aad::from(header), body)
                .map_err(|_| Error::DecryptError)?;
            // The content type is the last non-zero byte; zeros after it are padding.
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                return Err(PeerMisbehaved::IllegalTlsInnerPlaintext.into());
            };
            if end > MAX_PLAINTEXT {
                return Err(Error::PeerSentOversizedRecord);
            }
            (ContentType::from(inner[end]), HEADER, end)
        } else {
            let start = HEADER
                + if self.explicit_nonce {
                    EXPLICIT_NONCE
                } else {
                    0
                };
            let (nonce, sealed) = if self.explicit_nonce {
                if body.len() < EXPLICIT_NONCE + TAG {
                    return Err(Error::DecryptError);
                }
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
                (nonce, &mut body[EXPLICIT_NONCE..])
            } else {
                if body.len() < TAG {
                    return Err(Error::DecryptError);
                }
                (self.rx.nonce(), body)
            };
            let aad = tls12_aad(
                self.rx.seq,
                header[0],
                [header[1], header[2]],
                sealed.len() - TAG,
            );
            let opened = self
                .rx
                .key
                .open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    sealed,
                )
                .map_err(|_| Error::DecryptError)?;
            if opened.len() > MAX_PLAINTEXT {
                return Err(Error::PeerSentOversizedRecord);
            }
            (outer, start, opened.len())
        };
        self.rx.seq += 1;
        let payload = &record[start..start + len];
        match typ {
            ContentType::ApplicationData => {
                self.key_updates = 0;
                Ok(Content::Data(start..start + len))
            }
            ContentType::Alert => self.alert_received(payload),
            ContentType::Handshake if self.tls13 => self.handshake(payload, wire),
            other => Err(inappropriate(other)),
        }
    }

    fn alert_received(&mut self, payload: &[u8]) -> Result<Content, Error> {
        let &[level, description] = payload else {
            return Err(InvalidMessage::MessageTooShort.into());
        };
        match AlertDescription::from(description) {
            AlertDescription::CloseNotify => Ok(Content::Closed),
            // Not fatal: user_canceled (close_notify follows), and TLS 1.2's warnings.
            AlertDescription::UserCanceled => Ok(Content::Other),
            _ if !self.tls13 && level == 1 => Ok(Content::Other),
            other => Err(Error::AlertReceived(other)),
        }
    }

    /// TLS 1.3 post-handshake messages, each whole in this record.
    fn handshake(&mut self, mut payload: &[u8], wire: &mut Vec<u8>) -> Result<Content, Error> {
        if payload.is_empty() {
            return Err(InvalidMessage::InvalidEmptyPayload.into());
        }
        while let [typ, a, b, c, rest @ ..] = payload {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            let Some((body, rest)) = rest.split_at_checked(len) else {
                return Err(InvalidMessage::MessageTooShort.into());
            };
            payload = rest;
            match (HandshakeType::from(*typ), &mut self.kernel) {
                (HandshakeType::KeyUpdate, _) => {
                    // A key change must end its record (RFC 8446 5.1).
                    if !payload.is_empty() {
                        return Err(PeerMisbehaved::KeyEpochWithPendingFragment.into());
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(InvalidMessage::InvalidKeyUpdate.into()),
                    };
                    self.key_updates += 1;
                    if self.key_updates > MAX_KEY_UPDATES {
                        return Err(PeerMisbehaved::TooManyKeyUpdateRequests.into());
                    }
                    self.rx = Direction::new(self.kernel.update_rx()?)?;
                    if requested {
                        self.update_keys(wire)?;
                    }
                }
                (HandshakeType::NewSessionTicket, Kernel::Client(k)) => {
                    k.handle_new_session_ticket(body)?;
                }
                (other, _) => {
                    return Err(Error::InappropriateHandshakeMessage {
                        expect_types: vec![HandshakeType::KeyUpdate],
                        got_type: other,
                    });
                }
            }
        }
        if payload.is_empty() {
            Ok(Content::Other)
        } else {
            Err(InvalidMessage::MessageTooShort.into())
        }
    }

    /// TLS 1.3: sends KeyUpdate (not asking the peer for one) under the current key and
    /// switches to the next.
    pub fn update_keys(&mut self, wire: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(ContentType::Handshake, &[24, 0, 0, 1, 0], wire)?;
        self.tx = Direction::new(self.kernel.update_tx()?)?;
        Ok(())
    }

    /// Encrypts `plaintext` into application-data records of up to 16 KiB appended to `wire`.
    /// An error (only at the end of a TLS 1.2 key's life, after close_notify was sent, or if
    /// the cipher fails) ends the connection's sending.
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut Vec<u8>) -> Result<(), Error> {
        let records = plaintext.len().div_ceil(MAX_PLAINTEXT);
        wire.reserve(plaintext.len() + records * (HEADER + EXPLICIT_NONCE + 1 + TAG));
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.tx_limit {
                if self.tls13 {
                    self.update_keys(wire)?;
                } else {
                    self.alert(AlertLevel::Warning, AlertDescription::CloseNotify, wire);
                    return Err(Error::EncryptError);
                }
            }
            self.seal_record(ContentType::ApplicationData, chunk, wire)?;
        }
        Ok(())
    }

    /// Sends an alert (errors are ignored: the connection ends anyway).
    pub fn alert(&mut self, level: AlertLevel, description: AlertDescription, wire: &mut Vec<u8>) {
        let _ = self.seal_record(
            ContentType::Alert,
            &[level as u8, u8::from(description)],
            wire,
        );
    }

    /// One record of `typ` holding `payload` (at most 16 KiB) appended to `wire`: the payload
    /// is copied in and encrypted where it lies.
    fn seal_record(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        wire: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if self.tx.seq == u64::MAX {
            return Err(Error::EncryptError);
        }
        let nonce = self.tx.nonce();
        let start = wire.len();
        let (outer, body) = if self.tls13 {
            (ContentType::ApplicationData, payload.len() + 1 + TAG)
        } else if self.explicit_nonce {
            (typ, EXPLICIT_NONCE + payload.len() + TAG)
        } else {
            (typ, payload.len() + TAG)
        };
        let [hi, lo] = (body as u16).to_be_bytes();
        let header = [u8::from(outer), 3, 3, hi, lo];
        wire.extend_from_slice(&header);
        if !self.tls13 && self.explicit_nonce {
            wire.extend_from_slice(&nonce[4..]);
        }
        let text = wire.len();
        wire.extend_from_slice(payload);
        let tag = if self.tls13 {
            wire.push(u8::from(typ));
            self.tx.key.seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(header),
                &mut wire[text..],
            )
        } else {
            let aad = tls12_aad(self.tx.seq, u8::from(typ), [3, 3], payload.len());
            self.tx.key.seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut wire[text..],
            )
        };
        match tag {
            Ok(tag) => {
                wire.extend_from_slice(tag.as_ref());
                self.tx.seq += 1;
                Ok(())
            }
            Err(_) => {
                wire.truncate(start);
                Err(Error::EncryptError)
            }
        }
    }
}

/// An alert's level.
#[derive(Clone, Copy)]
pub(super) enum AlertLevel {
    /// close_notify.
    Warning = 1,
    /// Every error.
    Fatal = 2,
}

/// The alert to send for a failure of [`Records::open`]; none for an alert received.
pub(super) fn alert_for(e: &Error) -> Option<AlertDescription> {
    Some(match e {
        Error::AlertReceived(_) => return None,
        Error::DecryptError => AlertDescription::BadRecordMac,
        Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
        Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate) => {
            AlertDescription::IllegalParameter
        }
        Error::InvalidMessage(_) => AlertDescription::DecodeError,
        Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => AlertDescription::InternalError,
    })
}

fn inappropriate(got: ContentType) -> Error {
    Error::InappropriateMessage {
        expect_types: vec![ContentType::ApplicationData],
        got_type: got,
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}
