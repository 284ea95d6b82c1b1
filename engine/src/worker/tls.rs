//! wss:// in the event loop: a TLS session starts at accept, received records are decrypted
//! before the HTTP and frame handling sees them, and each flush encrypts what the turn queued
//! (see [`crate::tls`] for the session and [`Slab::seal_tls`](crate::conn::Slab::seal_tls)).

use super::Engine;
use super::close::Cause;
use crate::conn::{Phase, TlsSide};
use crate::connect::ConnectError;
use crate::handler::Handler;
use crate::policy::peer_addr;
use crate::stats::{Label, Rejection};
use crate::tls::{Input, Plaintext, Session};
use tracing::{debug, warn};

/// The worker's TLS scratch buffers, kept for their capacity.
#[derive(Default)]
pub(super) struct Scratch {
    /// Decrypted bytes of one receive (where they lie).
    pub plain: Plaintext,
    /// Handshake records (or an alert) produced by one receive.
    pub records: Vec<u8>,
    /// Several queued plaintext chunks gathered into one record stream.
    pub gather: Vec<u8>,
}

impl<H: Handler> Engine<'_, H> {
    /// Starts the TLS session of connection `slot` (just accepted). False if rustls refused to
    /// make one; the connection is then dropped.
    pub(super) fn start_tls(&mut self, slot: u32) -> bool {
        let Some(tls) = self.cfg.tls.as_ref() else {
            return true;
        };
        match Session::server(tls.current()) {
            Ok(session) => {
                self.core.slab.get_mut(slot).extra().tls = Some(Box::new(TlsSide {
                    session,
                    plain: None,
                }));
                true
            }
            Err(e) => {
                debug!(worker = self.index, error = %e, "cannot start a TLS session");
                self.abort(slot, Cause::Error);
                false
            }
        }
    }

    /// Bytes received on TLS connection `slot`: decrypted (in place in `data`, mostly; `plain`
    /// says where). False if the session failed (the alert is queued and the connection
    /// closing) or the peer closed it.
    pub(super) fn tls_input(&mut self, slot: u32, data: &mut [u8], plain: &mut Plaintext) -> bool {
        let records = &mut self.tls.records;
        match self.core.slab.tls_input(slot, data, plain, records) {
            None | Some(Input::Ok) => true,
            Some(Input::PeerClosed) => {
                // close_notify: what it sent before is handled, then the stream ends.
                self.plaintext_in(slot, data, plain);
                self.peer_gone(slot);
                false
            }
            Some(Input::Failed(e)) => {
                let now_ms = self.core.slab.now_ms();
                if self.policy.log.allow(now_ms) {
                    let peer = peer_addr(self.core.slab.get(slot));
                    warn!(
                        worker = self.index,
                        ?peer,
                        reason = Rejection::HandshakeError.name(),
                        error = %e,
                        "TLS failed; closing the connection"
                    );
                }
                let machine = &self.core.slab.get(slot).machine;
                match machine.phase() {
                    Phase::Handshaking if machine.is_client() => {
                        self.fail_dial(slot, ConnectError::Tls(e));
                    }
                    Phase::Handshaking => {
                        self.core.slab.stats.rejected.inc(Rejection::HandshakeError);
                        // The alert (if any) leaves, then the connection closes.
                        self.core.slab.begin_closing(slot);
                    }
                    _ => self.abort(slot, Cause::Error),
                }
                false
            }
        }
    }

    /// The decrypted bytes of one receive to the HTTP and frame handling, in order: those
    /// copied into `plain`, then the spans of the receive buffer `data` decrypted in place.
    pub(super) fn plaintext_in(&mut self, slot: u32, data: &mut [u8], plain: &mut Plaintext) {
        if !plain.bytes.is_empty() {
            let mut bytes = std::mem::take(&mut plain.bytes);
            self.bytes_in(slot, &mut bytes);
            plain.bytes = bytes;
        }
        for span in plain.spans.drain(..) {
            if let Some(bytes) = data.get_mut(span) {
                self.bytes_in(slot, bytes);
            }
        }
    }
}
