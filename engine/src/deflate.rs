//! permessage-deflate (RFC 7692) in the engine: what a worker keeps for the connections that
//! negotiated it, and the send side (the receive side is the protocol crate's
//! [`Receiver::with_deflate`]).
//!
//! Nothing here costs a connection without the extension anything: the worker's [`Deflate`] state
//! is created on the first connection that negotiates it, and it holds per-connection entries in a
//! side table keyed by slot, so the connection slot does not grow.
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

use crate::conn::Core;
use crate::outq::OutQueue;
use crate::pubsub::Publication;
use ringws_protocol::deflate::{
    Compressor, ContextBudget, DeflateConfig, Params, Reservation, negotiate,
};
use ringws_protocol::frame::OpCode;
use ringws_protocol::handshake::Request;
use ringws_protocol::{Limits, Receiver, Role};
use std::collections::HashMap;
use std::sync::Arc;

/// Which shared compressor: (window bits, level).
type SharedKey = (u8, u32);

/// What one connection agreed on, and what it keeps for it.
struct ConnDeflate {
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
    /// The shared compressor key (window bits, level) for our sending direction, or `None` if the
    /// direction keeps its own compressor or cannot compress.
    fn shared_key(&self) -> Option<SharedKey> {
        let d = self.params.sending(self.role);
        (d.no_context_takeover && d.can_compress()).then_some((d.window_bits, self.level))
    }
}

/// A worker's permessage-deflate state (part of its core; created on first use).
#[derive(Default)]
pub(crate) struct Deflate {
    /// Connections that negotiated the extension, by slot.
    conns: HashMap<u32, ConnDeflate>,
    /// Compressors without context takeover, by (window bits, level); built on first use.
    shared: Vec<(SharedKey, Compressor)>,
    /// The publication compressed last.
    published: Option<Published>,
}

/// A publication's compressed frames, kept while it is delivered to the worker's subscribers.
struct Published {
    /// (topic, seq) of the publication.
    id: (u32, u64),
    /// Its frames by shared compressor.
    frames: Vec<(SharedKey, Arc<[u8]>)>,
}

impl Deflate {
    /// Records `params` for `slot` and builds the decoder to use for it.
    fn open(
        &mut self,
        slot: u32,
        role: Role,
        params: Params,
        config: &DeflateConfig,
        reservation: Reservation,
        limits: Limits,
    ) -> Receiver {
        let own = if params.sending(role).no_context_takeover {
            None
        } else {
            params.compressor(role, config)
        };
        self.conns.insert(
            slot,
            ConnDeflate {
                params,
                role,
                level: config.level,
                min_compress_size: config.min_compress_size,
                own,
                _reservation: reservation,
            },
        );
        Receiver::with_deflate(role, limits, params.decompressor(role, config))
    }

    /// Queues a data message for `slot` compressed, if the connection negotiated the extension and
    /// the message is long enough and its direction can compress; returns whether it did (if not,
    /// the caller queues it plain).
    pub fn push_frame(
        &mut self,
        slot: u32,
        opcode: OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
        q: &mut OutQueue,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&slot) else {
            return false;
        };
        if payload.len() < c.min_compress_size {
            return false;
        }
        let key = c.shared_key();
        let compressor = match (c.own.as_mut(), key) {
            (Some(own), _) => own,
            (None, Some(key)) => shared(&mut self.shared, key),
            (None, None) => return false,
        };
        q.push_raw(|out| compressor.write_frame(opcode, payload, mask, out));
        true
    }

    /// The frame to queue for `slot` instead of the publication's plain frame, if any: compressed
    /// once per worker for subscribers without context takeover, or by the subscriber's own
    /// compressor. `behind`: the subscriber is over its backpressure limit on a conflating topic,
    /// where a frame from its own compressor could later be replaced (so it gets the plain one).
    pub fn publication(
        &mut self,
        slot: u32,
        item: &Publication,
        behind: bool,
    ) -> Option<Arc<[u8]>> {
        let c = self.conns.get_mut(&slot)?;
        // Publications are encoded as server frames; a client connection sends them as they are.
        if c.role != Role::Server {
            return None;
        }
        let (opcode, payload) = split_frame(&item.frame)?;
        if payload.len() < c.min_compress_size {
            return None;
        }
        if let Some(own) = c.own.as_mut() {
            if behind {
                return None;
            }
            let mut frame = Vec::new();
            own.write_frame(opcode, payload, None, &mut frame);
            return Some(frame.into());
        }
        let key = c.shared_key()?;
        let id = (item.topic, item.seq);
        let published = match &mut self.published {
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
        shared(&mut self.shared, key).write_frame(opcode, payload, None, &mut frame);
        let frame: Arc<[u8]> = frame.into();
        published.frames.push((key, Arc::clone(&frame)));
        Some(frame)
    }

    /// What `slot` agreed on, if it negotiated the extension.
    pub fn params(&self, slot: u32) -> Option<Params> {
        self.conns.get(&slot).map(|c| c.params)
    }

    /// Forgets `slot` (it is being freed), returning its budget reservation; `true` if it had
    /// negotiated the extension (its decoder then holds a decompressor to drop too).
    pub fn forget(&mut self, slot: u32) -> bool {
        self.conns.remove(&slot).is_some()
    }
}

impl<S> Core<S> {
    /// The frame to queue for subscriber `slot` instead of publication `item`'s plain frame, if
    /// the connection negotiated permessage-deflate (see [`Deflate::publication`]). `behind`: it
    /// is over its limit on a conflating topic.
    pub(crate) fn compressed_publication(
        &mut self,
        slot: u32,
        item: &Publication,
        behind: bool,
    ) -> Option<Arc<[u8]>> {
        self.deflate.as_deref_mut()?.publication(slot, item, behind)
    }
}

/// The shared compressor for (window bits, level) among `compressors`, built if needed.
fn shared(compressors: &mut Vec<(SharedKey, Compressor)>, key: SharedKey) -> &mut Compressor {
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

/// Server side of the handshake: negotiates permessage-deflate for `slot` from the request's offers
/// under `config` (none: the extension is off), reserving what the agreement keeps per connection in
/// `budget`. Returns the decoder for the connection and the `Sec-WebSocket-Extensions` value to
/// answer with, if the extension was agreed.
pub(crate) fn accept(
    state: &mut Option<Box<Deflate>>,
    slot: u32,
    req: &Request<'_>,
    config: Option<&DeflateConfig>,
    budget: &ContextBudget,
    limits: Limits,
) -> (Receiver, Option<String>) {
    let Some((config, params)) = config.and_then(|c| Some((c, negotiate(req.extensions(), c)?)))
    else {
        return (Receiver::new(Role::Server, limits), None);
    };
    let (params, reservation) = budget.admit(params);
    let rx =
        state
            .get_or_insert_default()
            .open(slot, Role::Server, params, config, reservation, limits);
    (rx, Some(params.to_string()))
}

/// Client side: after the `101`, records what the server agreed to (`params`, checked against
/// `config` by [`Params::from_response`]) for `slot` and returns the decoder to use. Client contexts
/// are not charged to the server's budget: the client chose its offer.
pub(crate) fn connect(
    state: &mut Option<Box<Deflate>>,
    slot: u32,
    params: Params,
    config: &DeflateConfig,
    limits: Limits,
) -> Receiver {
    state.get_or_insert_default().open(
        slot,
        Role::Client,
        params,
        config,
        Reservation::none(),
        limits,
    )
}

/// Forgets `slot` in the worker's state, if any (see [`Deflate::forget`]).
pub(crate) fn forget(state: &mut Option<Box<Deflate>>, slot: u32) -> bool {
    state.as_mut().is_some_and(|d| d.forget(slot))
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

    fn open(d: &mut Deflate, slot: u32, p: Params) {
        let _ = d.open(
            slot,
            Role::Server,
            p,
            &DeflateConfig::default(),
            Reservation::none(),
            Limits::default(),
        );
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
    fn short_messages_and_unknown_slots_go_plain() {
        let mut d = Deflate::default();
        open(&mut d, 1, params(true));
        let mut q = OutQueue::default();
        assert!(!d.push_frame(1, OpCode::Text, &[b'a'; 255], None, &mut q));
        assert!(!d.push_frame(2, OpCode::Text, &[b'a'; 1000], None, &mut q));
        assert!(d.push_frame(1, OpCode::Text, &[b'a'; 1000], None, &mut q));
        let frame = q.unsent();
        assert_eq!(frame[0], 0xc1, "FIN + RSV1 + text");
        assert_eq!(inflate_frame(&frame), [b'a'; 1000]);
        assert!(d.forget(1));
        assert!(!d.forget(1));
    }

    #[test]
    fn a_publication_is_compressed_once_for_subscribers_without_takeover() {
        let mut d = Deflate::default();
        for slot in 0..3 {
            open(&mut d, slot, params(true));
        }
        open(&mut d, 3, params(false));
        let text = "quote ".repeat(100);
        let mut plain = vec![0x81, 126, 0, 0];
        plain[2..4].copy_from_slice(&(text.len() as u16).to_be_bytes());
        plain.extend_from_slice(text.as_bytes());
        let item = Publication {
            topic: 7,
            seq: 1,
            key: 0,
            frame: plain.into(),
        };
        let a = d.publication(0, &item, false).unwrap();
        let b = d.publication(1, &item, true).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one compressed frame shared");
        assert_eq!(inflate_frame(&a), text.as_bytes());
        // With takeover: its own frame, or the plain one when it may be conflated.
        let own = d.publication(3, &item, false).unwrap();
        assert!(!Arc::ptr_eq(&a, &own));
        assert_eq!(inflate_frame(&own), text.as_bytes());
        assert!(d.publication(3, &item, true).is_none());
        assert!(d.publication(9, &item, false).is_none(), "no extension");
    }
}
