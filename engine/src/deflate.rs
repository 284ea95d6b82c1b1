//! permessage-deflate (RFC 7692) in the engine: what a worker keeps for the connections that
//! negotiated it, and the send side (the receive side is the protocol crate's
//! [`Receiver::with_deflate`]).
//!
//! Nothing here costs a connection without the extension anything: a connection that negotiated
//! it keeps a boxed [`ConnDeflate`] in its slot's extras, and the worker's [`Shared`] compressors
//! are built on first use.
//!
//! This module sits below the connection layer: compression is part of how a connection encodes
//! its frames (like masking), so the connection's send path calls it. It knows nothing of slots,
//! queues or topics: it writes frames into the buffers it is given.
//!
//! **Compressors.** A sending direction without context takeover (the server's by default) uses
//! one of the worker's shared compressors, one per (window bits, level) in use, so such a connection
//! holds no compressor between messages. A direction with context takeover needs its own compressor
//! (~250-380 KB), which the server charges to the process-wide [`ContextBudget`]
//! ([`Config::deflate_budget`](crate::Config::deflate_budget)); once the budget is spent, new
//! connections are answered without context takeover. The reservation is returned when the slot is
//! freed.
//!
//! **Sending.** Data messages of at least
//! [`min_compress_size`](ringws_protocol::deflate::DeflateConfig::min_compress_size) bytes are
//! compressed into one frame with RSV1; control frames and shorter messages go as they are.
//!
//! **Publishing.** A publication is compressed once per worker for every subscriber whose sending
//! direction has no context takeover and the same window and level (the worker keeps the result
//! until it compresses the next publication), and queued by reference like the plain frame. A
//! subscriber with server context takeover gets it compressed by its own compressor (its window must
//! follow exactly what it is sent); when such a subscriber is behind on a conflating topic it gets
//! the plain frame instead, since a queued compressed frame could not be replaced without breaking
//! its window.

use ringws_protocol::deflate::{
    Compressor, ContextBudget, DeflateConfig, Params, Reservation, negotiate,
};
use ringws_protocol::frame::OpCode;
use ringws_protocol::handshake::Request;
use ringws_protocol::{Receiver, Role};
use std::sync::Arc;

/// Which shared compressor: (window bits, level).
type SharedKey = (u8, u32);

/// What one connection agreed on, and what it keeps for it.
pub(crate) struct ConnDeflate {
    params: Params,
    role: Role,
    level: u32,
    min_compress_size: usize,
    /// Our compressor, if our sending direction takes over its context (and can compress).
    own: Option<Compressor>,
    /// The bytes charged to the budget for this connection, returned when it is dropped.
    _reservation: Reservation,
}

impl ConnDeflate {
    /// Records `params` for a connection in `role` and builds its decoder.
    fn open(
        role: Role,
        params: Params,
        config: &DeflateConfig,
        reservation: Reservation,
    ) -> (Self, Receiver) {
        let own = if params.sending(role).no_context_takeover {
            None
        } else {
            params.compressor(role, config)
        };
        let rx = Receiver::with_deflate(role, params.decompressor(role, config));
        let conn = Self {
            params,
            role,
            level: config.level,
            min_compress_size: config.min_compress_size,
            own,
            _reservation: reservation,
        };
        (conn, rx)
    }

    /// What the connection agreed on.
    pub fn params(&self) -> Params {
        self.params
    }

    /// The shared compressor key (window bits, level) for our sending direction, or `None` if the
    /// direction keeps its own compressor or cannot compress.
    fn shared_key(&self) -> Option<SharedKey> {
        let d = self.params.sending(self.role);
        (d.no_context_takeover && d.can_compress()).then_some((d.window_bits, self.level))
    }

    /// The compressor a data message of `len` bytes is sent through, or `None` to send it plain
    /// (too short, or the direction cannot compress). Write the frame with
    /// [`Compressor::write_frame`].
    pub fn compressor<'a>(
        &'a mut self,
        shared: &'a mut Shared,
        len: usize,
    ) -> Option<&'a mut Compressor> {
        if len < self.min_compress_size {
            return None;
        }
        let key = self.shared_key();
        match (self.own.as_mut(), key) {
            (Some(own), _) => Some(own),
            (None, Some(key)) => Some(shared.compressor(key)),
            (None, None) => None,
        }
    }

    /// The frame to queue instead of a publication's plain `frame` (an unmasked server frame),
    /// if any: compressed once per worker for connections without context takeover, or by the
    /// connection's own compressor. `id` names the publication (topic, number), so the worker's
    /// compressed copy is made once. `behind`: the connection is over its backpressure limit on
    /// a conflating topic, where a frame from its own compressor could later be replaced (so it
    /// gets the plain one).
    pub fn publication(
        &mut self,
        shared: &mut Shared,
        id: (u32, u64),
        frame: &[u8],
        behind: bool,
    ) -> Option<Arc<[u8]>> {
        // Publications are encoded as server frames; a client connection sends them as they are.
        if self.role != Role::Server {
            return None;
        }
        let (opcode, payload) = split_frame(frame)?;
        if payload.len() < self.min_compress_size {
            return None;
        }
        if let Some(own) = self.own.as_mut() {
            if behind {
                return None;
            }
            let mut frame = Vec::new();
            own.write_frame(opcode, payload, None, &mut frame);
            return Some(frame.into());
        }
        let key = self.shared_key()?;
        let published = match &mut shared.published {
            Some(p) if p.id == id => p,
            other => other.insert(Published {
                id,
                frames: Vec::new(),
            }),
        };
        if let Some((_, frame)) = published.frames.iter().find(|(k, _)| *k == key) {
            return Some(Arc::clone(frame));
        }
        let mut frame = Vec::new();
        compressor_in(&mut shared.compressors, key).write_frame(opcode, payload, None, &mut frame);
        let frame: Arc<[u8]> = frame.into();
        published.frames.push((key, Arc::clone(&frame)));
        Some(frame)
    }
}

/// A worker's permessage-deflate state shared by its connections: compressors without context
/// takeover, and the publication compressed last.
#[derive(Default)]
pub(crate) struct Shared {
    /// Compressors without context takeover, by (window bits, level); built on first use.
    compressors: Vec<(SharedKey, Compressor)>,
    /// The publication compressed last.
    published: Option<Published>,
}

impl Shared {
    /// The shared compressor for `key`, built if needed.
    fn compressor(&mut self, key: SharedKey) -> &mut Compressor {
        compressor_in(&mut self.compressors, key)
    }
}

/// A publication's compressed frames, kept while it is delivered to the worker's subscribers.
struct Published {
    /// (topic, number) of the publication.
    id: (u32, u64),
    /// Its frames by shared compressor.
    frames: Vec<(SharedKey, Arc<[u8]>)>,
}

/// The compressor for (window bits, level) among `compressors`, built if needed.
fn compressor_in(
    compressors: &mut Vec<(SharedKey, Compressor)>,
    key: SharedKey,
) -> &mut Compressor {
    let i = match compressors.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            compressors.push((key, Compressor::new(key.0, key.1, true)));
            compressors.len() - 1
        }
    };
    &mut compressors[i].1
}

/// The opcode and payload of an unmasked, unfragmented frame encoded by a publish.
fn split_frame(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let opcode = match frame.first()? & 0x0f {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        _ => return None,
    };
    let start = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((opcode, frame.get(start..)?))
}

/// Server side of the handshake: negotiates permessage-deflate from the request's offers under
/// `config`, reserving what the agreement keeps per connection in `budget`. Returns the
/// connection's state, its decoder and the `Sec-WebSocket-Extensions` value to answer with; `None`
/// if the extension is not agreed (no offer, an offer declined, or `config` is `None`).
pub(crate) fn accept(
    req: &Request<'_>,
    config: &DeflateConfig,
    budget: &ContextBudget,
) -> Option<(ConnDeflate, Receiver, String)> {
    let params = negotiate(req.extensions(), config)?;
    let (params, reservation) = budget.admit(params);
    let (conn, rx) = ConnDeflate::open(Role::Server, params, config, reservation);
    Some((conn, rx, params.to_string()))
}

/// Client side: after the `101`, what the server agreed to (`params`, checked against `config` by
/// [`Params::from_response`]): the connection's state and its decoder. Client contexts are not
/// charged to the server's budget: the client chose its offer.
pub(crate) fn connect(params: Params, config: &DeflateConfig) -> (ConnDeflate, Receiver) {
    ConnDeflate::open(Role::Client, params, config, Reservation::none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringws_protocol::deflate::Decompressor;

    fn params(server_no_context_takeover: bool) -> Params {
        Params {
            server_no_context_takeover,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
        }
    }

    fn open(p: Params) -> ConnDeflate {
        ConnDeflate::open(
            Role::Server,
            p,
            &DeflateConfig::default(),
            Reservation::none(),
        )
        .0
    }

    /// Inflates the payload of one unmasked frame with RSV1.
    fn inflate_frame(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0] & 0x70, 0x40, "RSV1 set, RSV2/3 clear");
        let (_, payload) = split_frame(frame).unwrap();
        let mut d = Decompressor::new(15, true, None);
        let mut out = Vec::new();
        d.inflate(payload, &mut out, 1 << 20).unwrap();
        d.finish(&mut out, 1 << 20).unwrap();
        out
    }

    #[test]
    fn short_messages_go_plain() {
        let mut shared = Shared::default();
        let mut c = open(params(true));
        assert!(c.compressor(&mut shared, 255).is_none());
        let mut frame = Vec::new();
        c.compressor(&mut shared, 1000).unwrap().write_frame(
            OpCode::Text,
            &[b'a'; 1000],
            None,
            &mut frame,
        );
        assert_eq!(frame[0], 0xc1, "FIN + RSV1 + text");
        assert_eq!(inflate_frame(&frame), [b'a'; 1000]);
    }

    #[test]
    fn a_publication_is_compressed_once_for_subscribers_without_takeover() {
        let mut shared = Shared::default();
        let mut subs: Vec<ConnDeflate> = (0..3).map(|_| open(params(true))).collect();
        let mut takeover = open(params(false));
        let text = "quote ".repeat(100);
        let mut plain = vec![0x81, 126, 0, 0];
        plain[2..4].copy_from_slice(&(text.len() as u16).to_be_bytes());
        plain.extend_from_slice(text.as_bytes());
        let id = (7, 1);
        let a = subs[0].publication(&mut shared, id, &plain, false).unwrap();
        let b = subs[1].publication(&mut shared, id, &plain, true).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one compressed frame shared");
        assert_eq!(inflate_frame(&a), text.as_bytes());
        let c = subs[2]
            .publication(&mut shared, (7, 2), &plain, false)
            .unwrap();
        assert!(
            !Arc::ptr_eq(&a, &c),
            "the next publication is compressed anew"
        );
        // With takeover: its own frame, or the plain one when it may be conflated.
        let own = takeover
            .publication(&mut shared, id, &plain, false)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &own));
        assert_eq!(inflate_frame(&own), text.as_bytes());
        assert!(
            takeover
                .publication(&mut shared, id, &plain, true)
                .is_none()
        );
    }
}
