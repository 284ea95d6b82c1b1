//! The per-connection receive state machine: receive buffers in, events out.
//!
//! [`Receiver::read`] takes the bytes of one receive buffer, decodes frame headers, unmasks payloads
//! **in place** and returns at most one [`Event`] per call. A message whose frame sits whole inside the
//! buffer is returned as a slice of that buffer: no copy. Anything that spans buffers (a header split in
//! two, a long frame, a fragmented message) is carried in a boxed state and the [`Assembler`]'s
//! buffers, which exist only while needed: an idle receiver is 16 bytes. The [`Limits`] are the
//! caller's, passed to every [`Receiver::read`] (one copy per server, not one per connection).
//!
//! ```
//! use ringws_protocol::{Event, Limits, Receiver, Role};
//! let limits = Limits::default();
//! let mut rx = Receiver::new(Role::Server);
//! // RFC 6455 §5.7: a masked text message "Hello", arriving in two pieces.
//! let mut frame = *b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
//! let (first, second) = frame.split_at_mut(4);
//! assert_eq!(rx.read(first, &limits).unwrap(), (4, None));
//! assert_eq!(rx.read(second, &limits).unwrap(), (7, Some(Event::Text("Hello"))));
//! ```

use crate::assembler::{Assembled, Assembler, DataKind};
use crate::close::CloseFrame;
use crate::deflate::Decompressor;
use crate::error::Error;
use crate::frame::{
    DecodeRules, Decoded, FrameHeader, MAX_HEADER_LEN, OpCode, RSV1, Role, decode_header,
};
use crate::mask::unmask;
use std::ops::Range;

/// Receive limits, passed to [`Receiver::read`] (the same for every connection of a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload one frame may declare (1009 above it). Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest message across its fragments (1009 above it). Default 16 MiB.
    pub max_message_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
        }
    }
}

/// One thing the peer said. Payloads borrow either the caller's receive buffer or the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (UTF-8 validated).
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (the engine answers with a pong carrying the same bytes).
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// A close frame (`None`: it carried no status code). The receiver ignores all input after it.
    Close(Option<CloseFrame<'a>>),
}

/// A complete data message taken out of a [`Receiver`] by [`Receiver::take_message`]: the assembly
/// buffer it was gathered in, owned, so that it outlives the receiver's next input (an engine can
/// queue it for sending as it is instead of copying it).
#[derive(Debug)]
pub struct MessageBuf {
    kind: DataKind,
    /// The whole message; for text, valid UTF-8 (checked as it was assembled), never changed.
    data: Vec<u8>,
}

impl MessageBuf {
    /// The message's payload.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The message as the event it was delivered as ([`Event::Text`] or [`Event::Binary`]).
    pub fn event(&self) -> Event<'_> {
        match self.kind {
            // SAFETY: `data` is a text message the assembler completed, taken out by
            // `Assembler::take_data` right after that event and immutable since (private field,
            // no `&mut` access).
            #[allow(unsafe_code)]
            DataKind::Text => Event::Text(unsafe { assembled_text(&self.data) }),
            DataKind::Binary => Event::Binary(&self.data),
        }
    }
}

/// Where the event that [`Receiver::advance`] found lives.
enum Ready {
    /// In the caller's buffer, at `start..end`.
    InBuf {
        op: OpCode,
        start: usize,
        end: usize,
    },
    /// In the assembler.
    Assembled(Assembled),
}

/// Decodes one connection's incoming byte stream into [`Event`]s.
///
/// Small while nothing is in progress (16 bytes): a frame that sits whole in the buffer is decoded
/// and delivered without touching any other state. Whatever spans receive buffers (a split header,
/// a frame's payload still to come, a fragmented message) lives in a boxed part holding the
/// [`Assembler`], which exists
/// only until that frame or message has been delivered, and for the connection's life with
/// permessage-deflate (the inflater keeps its context there).
#[derive(Debug)]
pub struct Receiver {
    /// The state of a frame or message spanning receive buffers, while there is one.
    span: Option<Box<Spanning>>,
    role: Role,
    /// permessage-deflate was negotiated: RSV1 is allowed on a data message's first frame.
    deflate: bool,
    /// A Close arrived or a violation was found: further input is ignored.
    done: bool,
}

/// What a [`Receiver`] holds only while a frame or message spans receive buffers.
#[derive(Debug)]
struct Spanning {
    asm: Assembler,
    /// The frame whose payload is being read, if any.
    current: Option<FrameHeader>,
    /// Payload bytes of `current` still to come.
    remaining: u64,
    /// A header split across receive buffers.
    partial: [u8; MAX_HEADER_LEN],
    partial_len: u8,
    /// Payload bytes of `current` that landed in the assembly buffer ([`Receiver::land`]), not
    /// yet unmasked and accounted.
    landed: Range<usize>,
}

impl Spanning {
    fn new(asm: Assembler) -> Box<Self> {
        Box::new(Self {
            asm,
            current: None,
            remaining: 0,
            partial: [0; MAX_HEADER_LEN],
            partial_len: 0,
            landed: 0..0,
        })
    }

    /// Whether a frame or message is partly received.
    fn in_progress(&self) -> bool {
        self.partial_len != 0 || self.current.is_some() || self.asm.in_message()
    }

    /// Whether nothing is held: no frame or message in progress, no buffer, no inflater.
    fn is_empty(&self) -> bool {
        !self.in_progress() && self.asm.is_empty()
    }
}

impl Receiver {
    /// A receiver for the given role (a server requires masked frames, a client unmasked).
    pub fn new(role: Role) -> Self {
        Self {
            span: None,
            role,
            deflate: false,
            done: false,
        }
    }

    /// A receiver for a connection that negotiated permessage-deflate (RFC 7692): RSV1 is allowed on
    /// the first frame of a data message, and such compressed messages are inflated by `inflate`
    /// (from [`Params::decompressor`](crate::deflate::Params::decompressor)) chunk by chunk as they
    /// arrive, the `max_message_size` passed to [`read`](Self::read) applying to the inflated size,
    /// checked while inflating.
    /// Compressed messages are delivered from the assembly buffer, never in place.
    ///
    /// ```
    /// use ringws_protocol::deflate::Decompressor;
    /// use ringws_protocol::{Event, Limits, Receiver, Role};
    /// let mut rx = Receiver::with_deflate(Role::Client, Decompressor::new(15, false, None));
    /// // RFC 7692 §7.2.3.1: "Hello" compressed, in one unmasked frame with RSV1.
    /// let mut frame = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    /// assert_eq!(rx.read(&mut frame, &Limits::default())?, (9, Some(Event::Text("Hello"))));
    /// # Ok::<(), ringws_protocol::Error>(())
    /// ```
    pub fn with_deflate(role: Role, inflate: Decompressor) -> Self {
        Self {
            span: Some(Spanning::new(Assembler::with_deflate(inflate))),
            deflate: true,
            ..Self::new(role)
        }
    }

    /// Bytes held in assembly buffers and an allocated inflate context (for memory accounting); 0
    /// between messages unless the peer's compression keeps its context.
    pub fn buffered(&self) -> usize {
        self.span.as_ref().map_or(0, |s| s.asm.buffered())
    }

    /// Frees the assembly buffer the last returned event borrowed (the next [`read`](Self::read)
    /// does it too): call it once the event has been handled, so that a connection that goes quiet
    /// after a message that spanned receive buffers does not keep that buffer.
    pub fn release(&mut self) {
        if let Some(span) = &mut self.span {
            span.asm.release();
            if span.is_empty() {
                self.span = None;
            }
        }
    }

    /// Takes the data message the last returned event borrowed out of the receiver, if it was
    /// gathered in the assembly buffer (it spanned frames or receive buffers, or was compressed),
    /// so that it can outlive the next [`read`](Self::read) instead of being freed by it; `None`
    /// for an event that borrowed the caller's buffer, a control frame, or a message already
    /// taken or released. The receiver starts the next message with a new buffer.
    ///
    /// ```
    /// use ringws_protocol::{Event, Limits, Receiver, Role};
    /// let mut rx = Receiver::new(Role::Client);
    /// // A binary message of 6 bytes in two fragments: gathered in the assembly buffer.
    /// let mut frames = *b"\x02\x03abc\x80\x03def";
    /// let (first, second) = frames.split_at_mut(5);
    /// assert_eq!(rx.read(first, &Limits::default())?, (5, None));
    /// assert_eq!(rx.read(second, &Limits::default())?, (5, Some(Event::Binary(b"abcdef"))));
    /// let message = rx.take_message().expect("an assembled message");
    /// assert_eq!(message.event(), Event::Binary(b"abcdef"));
    /// assert!(rx.take_message().is_none(), "taken once");
    /// # Ok::<(), ringws_protocol::Error>(())
    /// ```
    pub fn take_message(&mut self) -> Option<MessageBuf> {
        let (kind, data) = self.span.as_mut()?.asm.take_data()?;
        self.release();
        Some(MessageBuf { kind, data })
    }

    /// Bytes held in assembly buffers for the message or control frame in progress, without the
    /// inflate context (for a global cap on assembly memory); 0 between messages.
    pub fn assembly_bytes(&self) -> usize {
        self.span.as_ref().map_or(0, |s| s.asm.assembly_bytes())
    }

    /// With permessage-deflate: compressed payload bytes received and the bytes they inflated to,
    /// over the connection's life (for metrics); `None` without the extension.
    pub fn inflate_totals(&self) -> Option<(u64, u64)> {
        self.span.as_ref().and_then(|s| s.asm.inflate_totals())
    }

    /// Whether a frame or a fragmented message is partly received (the connection is not idle).
    pub fn in_progress(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.in_progress())
    }

    /// Payload bytes still to come of the frame being received, if they may be received straight
    /// into the assembly buffer with [`lend`](Self::lend): the frame is an uncompressed data
    /// frame whose header has been read; 0 otherwise. An engine uses it to decide when a frame
    /// is large enough that receiving it in place of copying it pays for a receive of its own.
    pub fn lendable(&self) -> u64 {
        let Some(span) = self.span.as_deref() else {
            return 0;
        };
        match span.current {
            Some(h)
                if !self.done
                    && !h.opcode.is_control()
                    && span.landed.is_empty()
                    && span.asm.lendable() =>
            {
                span.remaining
            }
            _ => 0,
        }
    }

    /// Lends the assembly buffer out for a receive straight into it: returns the buffer and how
    /// many bytes the caller may write into its spare capacity (after its current length), all of
    /// them payload of the frame in progress (never bytes of the next frame). The room is at
    /// most what has already arrived of the message (the buffer grows as it would by copying
    /// those bytes in: to less than twice what it holds once the room is filled), so an engine
    /// lends again after each landing while
    /// [`lendable`](Self::lendable) says the frame is large.
    ///
    /// `None` when [`lendable`](Self::lendable) is 0 or nothing of the message has arrived yet.
    /// Until [`land`](Self::land) gives the buffer back, the receiver must not be fed: a
    /// [`read`](Self::read) meanwhile consumes nothing. What the buffer holds still counts in
    /// [`assembly_bytes`](Self::assembly_bytes).
    ///
    /// ```
    /// use ringws_protocol::{Event, Limits, Receiver, Role};
    /// let limits = Limits::default();
    /// let mut rx = Receiver::new(Role::Client);
    /// // A binary frame of 8 bytes; its first 4 arrive through a read.
    /// let mut first = *b"\x82\x08abcd";
    /// assert_eq!(rx.read(&mut first, &limits)?, (6, None));
    /// assert_eq!(rx.lendable(), 4);
    /// let (mut buf, room) = rx.lend().expect("lendable");
    /// assert_eq!(room, 4);
    /// buf.extend_from_slice(b"efgh"); // what a receive into the spare capacity would write
    /// rx.land(buf);
    /// assert_eq!(rx.read(&mut [], &limits)?, (0, Some(Event::Binary(b"abcdefgh"))));
    /// # Ok::<(), ringws_protocol::Error>(())
    /// ```
    pub fn lend(&mut self) -> Option<(Vec<u8>, usize)> {
        let more = self.lendable();
        let span = self.span.as_deref_mut()?;
        let h = span.current?;
        if more == 0 {
            return None;
        }
        span.asm.lend(&h, more)
    }

    /// Gives back the buffer [`lend`](Self::lend) lent, with the received bytes appended to it
    /// (still masked; bytes beyond the room it was lent with are cut off). The next
    /// [`read`](Self::read) (an empty input will do) unmasks and checks them and returns the
    /// message if they completed it.
    pub fn land(&mut self, data: Vec<u8>) {
        if let Some(span) = self.span.as_deref_mut() {
            span.landed = span.asm.land(data);
        }
    }

    /// Decodes from `buf`, the bytes just received, unmasking payloads in place, under `limits`
    /// (pass the same limits on every call for one connection).
    ///
    /// Returns the bytes consumed and at most one event. It stops after an event, and also after a
    /// frame whose payload went into the assembly buffer (no event, bytes may remain), so that a
    /// caller capping assembly memory sees the growth before acting on what follows; otherwise, with
    /// no event it has consumed all of `buf`, keeping what it needs for the next buffer. Call again
    /// on the rest (`&mut buf[consumed..]`) until the buffer is used up. On `Err(e)` the connection must be failed
    /// with `e.reply()`; after an error or a Close event, further input is ignored.
    pub fn read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        self.release();
        if self.done {
            return Ok((buf.len(), None));
        }
        let (used, ready) = match self.advance(buf, limits) {
            Ok(step) => step,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        let Some(ready) = ready else {
            return Ok((used, None));
        };
        let event = match ready {
            Ready::InBuf { op, start, end } => event(op, &buf[start..end]),
            Ready::Assembled(Assembled::Data(DataKind::Text)) => {
                let data = assembled(self.span.as_deref(), Assembler::data);
                // SAFETY: `data` is the text message the assembler just completed.
                #[allow(unsafe_code)]
                Ok(Event::Text(unsafe { assembled_text(data) }))
            }
            Ready::Assembled(Assembled::Data(DataKind::Binary)) => Ok(Event::Binary(assembled(
                self.span.as_deref(),
                Assembler::data,
            ))),
            Ready::Assembled(Assembled::Control(op)) => {
                event(op, assembled(self.span.as_deref(), Assembler::control))
            }
        };
        match event {
            Ok(event) => {
                self.done = matches!(event, Event::Close(_));
                Ok((used, Some(event)))
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    /// The header rules of this connection under `limits`.
    fn rules(&self, limits: &Limits) -> DecodeRules {
        DecodeRules {
            role: self.role,
            max_frame_size: limits.max_frame_size,
            allowed_rsv: if self.deflate { RSV1 } else { 0 },
        }
    }

    /// Runs the frame state machine over `buf` until an event is ready or the buffer is used up.
    fn advance(
        &mut self,
        buf: &mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Ready>), Error> {
        let rules = self.rules(limits);
        let max_message_size = limits.max_message_size;
        let span = match &mut self.span {
            Some(span) => span,
            None => {
                if let Some(step) = whole_frame(buf, &rules, max_message_size)? {
                    return Ok(step);
                }
                self.span.insert(Spanning::new(Assembler::new()))
            }
        };
        span.advance(buf, &rules, max_message_size)
    }
}

/// A completed text message from the assembly buffer as the `&str` it is.
///
/// # Safety
/// `data` is the whole of one text message the assembler completed: the buffer an
/// `Assembled::Data(DataKind::Text)` event borrowed, or that buffer taken out by
/// `Assembler::take_data` after the event and not changed since.
#[allow(unsafe_code)]
unsafe fn assembled_text(data: &[u8]) -> &str {
    debug_assert!(
        std::str::from_utf8(data).is_ok(),
        "the assembler completed a text message that is not UTF-8"
    );
    // SAFETY: `data` is one completed text message (the caller's contract). The assembly buffer starts
    // empty for every message (`release` frees it, `take_data` takes it, before the next input),
    // and `Assembler::push` fed every one of its bytes to the message's `Utf8Validator` in
    // order (a plain chunk before appending it, inflated bytes right after inflating them), each
    // `feed` returning Ok, then `finish` returned Ok (no code point left incomplete); any error
    // fails the connection before the message completes. The validator accepts exactly the
    // chunkings of valid UTF-8, so `data` is valid UTF-8.
    //
    // Kept because a checked conversion costs far more than the ~2% that would make it free: the
    // receive path of a text message in 4 masked fragments through 32 KiB receive buffers
    // (decode, unmask, assemble, streaming validation) of 1 KiB, 64 KiB and 1 MiB of JSON takes
    // 5-25% (ASCII) and 21-65% (a quarter of the bytes in multi-byte code points) more
    // instructions with `simdutf8::basic::from_utf8` on the result, 15-77% and 118-381% more with
    // `std::str::from_utf8`; wall time (fastest rounds) x1.05-x1.41 with simdutf8 (`cargo run
    // --release -p ringws-protocol --example unsafe_costs -- [callgrind] text`, AVX2 box).
    unsafe { std::str::from_utf8_unchecked(data) }
}

/// A payload in the assembler, as `part` reads it (empty without a spanning state, which cannot
/// be after an [`Assembled`] from [`Receiver::advance`]).
fn assembled(span: Option<&Spanning>, part: fn(&Assembler) -> &[u8]) -> &[u8] {
    span.map_or(&[], |s| part(&s.asm))
}

/// With nothing in progress, the frame at the start of `buf` if it is whole there, final, not a
/// continuation and uncompressed, within the message limit: unmasked and delivered in place
/// without touching a [`Spanning`]. `None` for anything else (the caller goes the general way,
/// which also reports what is wrong with it); an error only from decoding the header.
fn whole_frame(
    buf: &mut [u8],
    rules: &DecodeRules,
    max_message_size: u64,
) -> Result<Option<(usize, Option<Ready>)>, Error> {
    if buf.is_empty() {
        return Ok(Some((0, None)));
    }
    let Decoded::Header(h) = decode_header(buf, rules)? else {
        return Ok(None);
    };
    let start = h.header_len as usize;
    let whole = (buf.len() - start) as u64 >= h.payload_len;
    let single = h.fin && h.opcode != OpCode::Continuation && h.rsv == 0;
    if !whole || !single || (!h.opcode.is_control() && h.payload_len > max_message_size) {
        return Ok(None);
    }
    let end = start + h.payload_len as usize;
    if let Some(key) = h.mask {
        unmask(&mut buf[start..end], key, 0);
    }
    Ok(Some((
        end,
        Some(Ready::InBuf {
            op: h.opcode,
            start,
            end,
        }),
    )))
}

impl Spanning {
    /// Runs the frame state machine over `buf` until an event is ready or the buffer is used up.
    fn advance(
        &mut self,
        buf: &mut [u8],
        rules: &DecodeRules,
        max_message_size: u64,
    ) -> Result<(usize, Option<Ready>), Error> {
        if self.asm.is_lent() {
            return Ok((0, None));
        }
        if let Some(done) = self.landed()? {
            return Ok((0, Some(Ready::Assembled(done))));
        }
        let mut pos = 0;
        loop {
            let Some(h) = self.current else {
                if pos == buf.len() {
                    return Ok((pos, None));
                }
                let Some((h, used)) = self.header(&buf[pos..], rules)? else {
                    return Ok((buf.len(), None));
                };
                pos += used;
                self.asm.begin_frame(&h, max_message_size)?;
                self.current = Some(h);
                self.remaining = h.payload_len;
                continue;
            };
            let avail = (buf.len() - pos) as u64;
            if avail == 0 && self.remaining > 0 {
                return Ok((pos, None));
            }
            let take = self.remaining.min(avail) as usize;
            let offset = h.payload_len - self.remaining;
            let (start, end) = (pos, pos + take);
            if let Some(key) = h.mask {
                unmask(&mut buf[start..end], key, (offset & 3) as usize);
            }
            pos = end;
            self.remaining -= take as u64;
            let last = self.remaining == 0;
            if last {
                self.current = None;
            }
            if last && offset == 0 && self.asm.deliverable_in_place(&h) {
                self.asm.delivered_in_place(&h);
                return Ok((
                    pos,
                    Some(Ready::InBuf {
                        op: h.opcode,
                        start,
                        end,
                    }),
                ));
            }
            if let Some(done) = self
                .asm
                .push(&h, &buf[start..end], last, max_message_size)?
            {
                return Ok((pos, Some(Ready::Assembled(done))));
            }
            if last {
                return Ok((pos, None));
            }
        }
    }

    /// Unmasks and accounts the bytes that landed in the assembly buffer since the last read, if
    /// any; returns the message they completed.
    fn landed(&mut self) -> Result<Option<Assembled>, Error> {
        let range = std::mem::replace(&mut self.landed, 0..0);
        let Some(h) = self.current.filter(|_| !range.is_empty()) else {
            return Ok(None);
        };
        let n = range.len() as u64;
        let offset = h.payload_len - self.remaining;
        if let Some(key) = h.mask {
            unmask(
                self.asm.landed_mut(range.clone()),
                key,
                (offset & 3) as usize,
            );
        }
        self.remaining -= n;
        let last = self.remaining == 0;
        if last {
            self.current = None;
        }
        self.asm.push_landed(&h, range, last)
    }

    /// Decodes the next header from `input`, completing a header carried from the previous buffer.
    /// Returns the header and the bytes of `input` it used, or `None` if `input` was all absorbed.
    fn header(
        &mut self,
        input: &[u8],
        rules: &DecodeRules,
    ) -> Result<Option<(FrameHeader, usize)>, Error> {
        let have = self.partial_len as usize;
        if have == 0 {
            return match decode_header(input, rules)? {
                Decoded::Header(h) => Ok(Some((h, h.header_len as usize))),
                Decoded::Partial(_) => {
                    // Partial means input is shorter than the header, so it fits in `partial`.
                    self.partial[..input.len()].copy_from_slice(input);
                    self.partial_len = input.len() as u8;
                    Ok(None)
                }
            };
        }
        let take = (MAX_HEADER_LEN - have).min(input.len());
        self.partial[have..have + take].copy_from_slice(&input[..take]);
        match decode_header(&self.partial[..have + take], rules)? {
            Decoded::Header(h) => {
                self.partial_len = 0;
                Ok(Some((h, h.header_len as usize - have)))
            }
            Decoded::Partial(_) => {
                self.partial_len = (have + take) as u8;
                Ok(None)
            }
        }
    }
}

/// Builds the event for a complete frame or message of opcode `op` (never `Continuation`: a
/// fragmented message completes as its first frame's kind).
fn event(op: OpCode, payload: &[u8]) -> Result<Event<'_>, Error> {
    Ok(match op {
        OpCode::Text => Event::Text(crate::utf8::validate(payload)?),
        OpCode::Binary | OpCode::Continuation => Event::Binary(payload),
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        OpCode::Close => Event::Close(CloseFrame::parse(payload)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::close::CloseCode;
    use crate::frame::encode_header;
    use proptest::prelude::*;

    /// An owned copy of an event, to compare across calls.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Event<'_>> for Owned {
        fn from(e: Event<'_>) -> Self {
            match e {
                Event::Text(s) => Owned::Text(s.to_owned()),
                Event::Binary(b) => Owned::Binary(b.to_vec()),
                Event::Ping(b) => Owned::Ping(b.to_vec()),
                Event::Pong(b) => Owned::Pong(b.to_vec()),
                Event::Close(c) => Owned::Close(c.map(|c| (c.code.0, c.reason.to_owned()))),
            }
        }
    }

    /// A masked client frame.
    pub(crate) fn frame(fin: bool, rsv: u8, op: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut head = [0; MAX_HEADER_LEN];
        let n = encode_header(&mut head, fin, rsv, op, Some(key), payload.len() as u64);
        let mut out = head[..n].to_vec();
        let at = out.len();
        out.extend_from_slice(payload);
        crate::mask::unmask(&mut out[at..], key, 0);
        out
    }

    /// Feeds `stream` in pieces cut at `cuts` under the default limits and collects events until
    /// the first error.
    pub(crate) fn feed(
        rx: &mut Receiver,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Owned>, Option<Error>) {
        feed_with(rx, &Limits::default(), stream, cuts)
    }

    /// [`feed`] under `limits`.
    pub(crate) fn feed_with(
        rx: &mut Receiver,
        limits: &Limits,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Owned>, Option<Error>) {
        let mut stream = stream.to_vec();
        let mut events = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
        bounds.push(stream.len());
        bounds.sort_unstable();
        let mut from = 0;
        for to in bounds {
            let chunk = &mut stream[from..to];
            let mut pos = 0;
            loop {
                match rx.read(&mut chunk[pos..], limits) {
                    Ok((used, ev)) => {
                        pos += used;
                        match ev {
                            Some(ev) => events.push(ev.into()),
                            None => assert!(
                                used > 0 || pos == chunk.len(),
                                "no event and nothing consumed with input left"
                            ),
                        }
                        if pos == chunk.len() {
                            break;
                        }
                    }
                    Err(e) => return (events, Some(e)),
                }
            }
            from = to;
        }
        (events, None)
    }

    fn server() -> Receiver {
        Receiver::new(Role::Server)
    }

    /// [`feed`], except that whenever the frame in progress is lendable the next bytes of each
    /// piece are written into the lent assembly buffer, as a receive into it would (at most its
    /// room, never reallocating it), and landed.
    fn feed_lending(
        rx: &mut Receiver,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Owned>, Option<Error>) {
        let limits = Limits::default();
        let mut stream = stream.to_vec();
        let mut events = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
        bounds.push(stream.len());
        bounds.sort_unstable();
        let mut from = 0;
        for to in bounds {
            let chunk = &mut stream[from..to];
            let mut pos = 0;
            while pos < chunk.len() {
                let step = match rx.lend() {
                    Some((mut buf, room)) => {
                        let (at, capacity) = (buf.as_ptr(), buf.capacity());
                        let n = room.min(chunk.len() - pos);
                        assert!(n > 0 && buf.len() + room <= capacity, "room {room}");
                        buf.extend_from_slice(&chunk[pos..pos + n]);
                        assert_eq!((buf.as_ptr(), buf.capacity()), (at, capacity));
                        assert!(rx.assembly_bytes() >= capacity, "a lent buffer counts");
                        rx.land(buf);
                        pos += n;
                        rx.read(&mut [], &limits).map(|(used, ev)| {
                            assert_eq!(used, 0);
                            ev.map(Owned::from)
                        })
                    }
                    None => rx.read(&mut chunk[pos..], &limits).map(|(used, ev)| {
                        pos += used;
                        ev.map(Owned::from)
                    }),
                };
                match step {
                    Ok(ev) => events.extend(ev),
                    Err(e) => return (events, Some(e)),
                }
            }
            from = to;
        }
        (events, None)
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn rfc_masked_hello_is_delivered_in_place() {
        let mut rx = server();
        let mut f = frame(true, 0, OpCode::Text, b"Hello", KEY);
        let range = f.as_ptr_range();
        let (used, ev) = rx.read(&mut f, &Limits::default()).unwrap();
        assert_eq!(used, 11);
        let Some(Event::Text(s)) = ev else {
            panic!("expected text")
        };
        assert_eq!(s, "Hello");
        assert!(
            range.contains(&s.as_ptr()),
            "zero copy: the payload borrows the receive buffer"
        );
    }

    #[test]
    fn an_assembled_message_is_taken_without_a_copy_and_the_next_one_starts_afresh() {
        let mut rx = server();
        let text = "héllo wörld ".repeat(100);
        let mut split = frame(true, 0, OpCode::Text, text.as_bytes(), KEY);
        let (first, second) = split.split_at_mut(100);
        assert_eq!(rx.read(first, &Limits::default()).unwrap(), (100, None));
        let Some(Event::Text(delivered)) = rx.read(second, &Limits::default()).unwrap().1 else {
            panic!("expected text")
        };
        assert_eq!(delivered, text);
        let at = delivered.as_ptr();
        let held = rx.assembly_bytes();
        let message = rx.take_message().expect("an assembled message");
        assert_eq!(message.event(), Event::Text(&text));
        assert_eq!(
            message.bytes().as_ptr(),
            at,
            "the assembly buffer itself, not a copy"
        );
        assert!(held >= text.len());
        assert_eq!(
            rx.assembly_bytes(),
            0,
            "the receiver holds nothing after the take"
        );
        assert!(rx.span.is_none());
        assert!(rx.take_message().is_none(), "taken once");
        // In place (not assembled) and control frames have nothing to take.
        let mut whole = frame(true, 0, OpCode::Binary, b"whole", KEY);
        assert!(rx.read(&mut whole, &Limits::default()).unwrap().1.is_some());
        assert!(rx.take_message().is_none());
        let mut ping = frame(true, 0, OpCode::Ping, b"p", KEY);
        let (first, second) = ping.split_at_mut(3);
        assert_eq!(rx.read(first, &Limits::default()).unwrap(), (3, None));
        assert_eq!(
            rx.read(second, &Limits::default()).unwrap().1,
            Some(Event::Ping(b"p"))
        );
        assert!(rx.take_message().is_none());
        // The message taken stays intact while the receiver goes on.
        let mut next = frame(false, 0, OpCode::Binary, &[1; 40], KEY);
        next.extend(frame(true, 0, OpCode::Continuation, &[2; 40], KEY));
        let (used, ev) = rx.read(&mut next, &Limits::default()).unwrap();
        assert_eq!(ev, None);
        let (_, ev) = rx.read(&mut next[used..], &Limits::default()).unwrap();
        let Some(Event::Binary(b)) = ev else {
            panic!("expected binary")
        };
        assert_eq!(b[..40], [1; 40]);
        assert_eq!(b[40..], [2; 40]);
        assert_eq!(message.event(), Event::Text(&text));
    }

    #[test]
    fn an_idle_receiver_is_small() {
        assert!(size_of::<Receiver>() <= 16, "{}", size_of::<Receiver>());
        assert!(size_of::<Option<Receiver>>() <= 16);
    }

    #[test]
    fn spanning_state_exists_only_while_a_frame_spans_buffers() {
        let mut rx = server();
        let mut whole = frame(true, 0, OpCode::Binary, b"whole", KEY);
        assert!(rx.read(&mut whole, &Limits::default()).unwrap().1.is_some());
        assert!(rx.span.is_none(), "a whole frame needs no spanning state");
        let mut split = frame(true, 0, OpCode::Binary, &[7; 300], KEY);
        let (first, second) = split.split_at_mut(1);
        assert_eq!(rx.read(first, &Limits::default()).unwrap(), (1, None));
        assert!(rx.span.is_some() && rx.in_progress());
        assert_eq!(
            rx.read(second, &Limits::default()).unwrap().1,
            Some(Event::Binary(&[7; 300]))
        );
        rx.release();
        assert!(
            rx.span.is_none(),
            "freed once the assembled message is released"
        );
        assert_eq!((rx.buffered(), rx.in_progress()), (0, false));
    }

    #[test]
    fn rfc_fragmented_hello_with_ping_between() {
        let mut stream = frame(false, 0, OpCode::Text, b"Hel", KEY);
        stream.extend(frame(true, 0, OpCode::Ping, b"Hello", [1, 2, 3, 4]));
        stream.extend(frame(true, 0, OpCode::Continuation, b"lo", [9, 8, 7, 6]));
        let (events, err) = feed(&mut server(), &stream, &[]);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![Owned::Ping(b"Hello".to_vec()), Owned::Text("Hello".into())]
        );
    }

    #[test]
    fn rfc_256_and_64k_binary() {
        for len in [256usize, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (events, err) = feed(
                &mut server(),
                &frame(true, 0, OpCode::Binary, &payload, KEY),
                &[],
            );
            assert_eq!((events, err), (vec![Owned::Binary(payload)], None));
        }
    }

    #[test]
    fn pong_and_close_events() {
        let mut stream = frame(true, 0, OpCode::Pong, b"p", KEY);
        stream.extend(frame(true, 0, OpCode::Close, b"\x03\xe8bye", KEY));
        stream.extend(frame(true, 0, OpCode::Text, b"ignored after close", KEY));
        let (events, err) = feed(&mut server(), &stream, &[]);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                Owned::Pong(b"p".to_vec()),
                Owned::Close(Some((1000, "bye".into())))
            ]
        );
    }

    #[test]
    fn empty_close_has_no_status() {
        let (events, _) = feed(&mut server(), &frame(true, 0, OpCode::Close, b"", KEY), &[]);
        assert_eq!(events, vec![Owned::Close(None)]);
    }

    #[test]
    fn violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, Error, u16)> = vec![
            (b"\x81\x05Hello".to_vec(), Error::UnmaskedFrame, 1002),
            (
                frame(true, 0x4, OpCode::Text, b"x", KEY),
                Error::ReservedBits,
                1002,
            ),
            (vec![0x83, 0x80, 0, 0, 0, 0], Error::ReservedOpcode(3), 1002),
            (
                frame(true, 0, OpCode::Continuation, b"x", KEY),
                Error::UnexpectedContinuation,
                1002,
            ),
            (
                frame(true, 0, OpCode::Close, b"\x03", KEY),
                Error::InvalidClosePayload,
                1002,
            ),
            (
                frame(true, 0, OpCode::Close, b"\x03\xed", KEY),
                Error::InvalidCloseCode(1005),
                1002,
            ),
            (
                frame(true, 0, OpCode::Close, b"\x03\xe8\xff", KEY),
                Error::InvalidUtf8,
                1007,
            ),
            (
                frame(
                    true,
                    0,
                    OpCode::Text,
                    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
                    KEY,
                ),
                Error::InvalidUtf8,
                1007,
            ),
            (
                frame(true, 0, OpCode::Ping, &[0; 126], KEY),
                Error::ControlFrameTooLong,
                1002,
            ),
            (
                frame(false, 0, OpCode::Ping, b"", KEY),
                Error::FragmentedControlFrame,
                1002,
            ),
        ];
        for (stream, want, code) in cases {
            let (_, err) = feed(&mut server(), &stream, &[]);
            assert_eq!(err, Some(want));
            assert_eq!(want.reply(), crate::Reply::Close(CloseCode(code)));
        }
    }

    #[test]
    fn data_frame_inside_fragmented_message_is_1002() {
        let mut stream = frame(false, 0, OpCode::Text, b"a", KEY);
        stream.extend(frame(true, 0, OpCode::Binary, b"b", KEY));
        assert_eq!(
            feed(&mut server(), &stream, &[]).1,
            Some(Error::ExpectedContinuation)
        );
    }

    #[test]
    fn huge_declared_length_fails_from_the_header() {
        let mut rx = server();
        // 2^63 - 1 bytes declared: 1009 from the header, nothing allocated.
        let mut f = vec![
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert_eq!(
            rx.read(&mut f, &Limits::default()).unwrap_err(),
            Error::FrameTooLarge
        );
        assert_eq!(rx.buffered(), 0);
        // After a failure, input is ignored.
        assert_eq!(
            rx.read(&mut [0x81, 0x80], &Limits::default()).unwrap(),
            (2, None)
        );
    }

    #[test]
    fn message_limit_applies_across_fragments() {
        let mut rx = Receiver::new(Role::Server);
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let mut stream = frame(false, 0, OpCode::Binary, &[1; 100], KEY);
        stream.extend(frame(true, 0, OpCode::Continuation, &[2; 51], KEY));
        assert_eq!(
            feed_with(&mut rx, &limits, &stream, &[]).1,
            Some(Error::MessageTooLarge)
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_message_ends() {
        let mut rx = server();
        // A text frame of 1000 bytes whose 3rd byte is invalid, delivered in 2 pieces: the error comes
        // with the first piece, before the rest of the frame has arrived.
        let mut payload = vec![b'a'; 1000];
        payload[2] = 0xff;
        let mut f = frame(true, 0, OpCode::Text, &payload, KEY);
        assert_eq!(
            rx.read(&mut f[..20], &Limits::default()).unwrap_err(),
            Error::InvalidUtf8
        );
    }

    #[test]
    fn idle_receiver_holds_no_memory_after_spanning_message() {
        let mut rx = server();
        let payload = vec![5u8; 10_000];
        let (events, _) = feed(
            &mut rx,
            &frame(true, 0, OpCode::Binary, &payload, KEY),
            &[3, 100, 5000],
        );
        assert_eq!(events, vec![Owned::Binary(payload)]);
        rx.read(&mut [], &Limits::default()).unwrap();
        assert_eq!(rx.buffered(), 0);
        assert!(!rx.in_progress());
    }

    #[test]
    fn assembly_bytes_count_a_message_in_progress_only() {
        let mut rx = server();
        let mut first = frame(false, 0, OpCode::Binary, &[7; 3000], KEY);
        let len = first.len();
        assert_eq!(
            rx.read(&mut first, &Limits::default()).unwrap(),
            (len, None)
        );
        assert!(rx.in_progress());
        assert!(rx.assembly_bytes() >= 3000, "{}", rx.assembly_bytes());
        let mut last = frame(true, 0, OpCode::Continuation, &[8; 10], KEY);
        assert!(rx.read(&mut last, &Limits::default()).unwrap().1.is_some());
        assert!(
            rx.assembly_bytes() >= 3010,
            "the delivered message is still borrowable"
        );
        rx.release();
        assert_eq!(rx.assembly_bytes(), 0);
    }

    #[test]
    fn client_role_reads_unmasked_frames() {
        let mut rx = Receiver::new(Role::Client);
        let mut f = *b"\x81\x05Hello";
        assert_eq!(
            rx.read(&mut f, &Limits::default()).unwrap(),
            (7, Some(Event::Text("Hello")))
        );
        let mut masked = frame(true, 0, OpCode::Text, b"x", KEY);
        assert_eq!(
            rx.read(&mut masked, &Limits::default()).unwrap_err(),
            Error::MaskedFrame
        );
    }

    /// A random message stream: (fragments, opcode) plus interleaved pings.
    fn stream_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<Owned>)> {
        let message = (
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..600),
            1usize..5,
            any::<[u8; 4]>(),
            any::<bool>(),
        );
        prop::collection::vec(message, 1..8).prop_map(|messages| {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (text, bytes, pieces, key, ping) in messages {
                let payload: Vec<u8> = if text {
                    String::from_utf8_lossy(&bytes).into_owned().into_bytes()
                } else {
                    bytes
                };
                let piece = payload.len().div_ceil(pieces).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&[][..]]
                } else {
                    payload.chunks(piece).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    stream.extend(frame(i + 1 == chunks.len(), 0, op, chunk, key));
                    if ping && i + 1 < chunks.len() {
                        // A ping between two fragments of the message.
                        stream.extend(frame(
                            true,
                            0,
                            OpCode::Ping,
                            &payload[..payload.len().min(125)],
                            key,
                        ));
                        expected.push(Owned::Ping(payload[..payload.len().min(125)].to_vec()));
                    }
                }
                expected.push(if text {
                    Owned::Text(String::from_utf8(payload).unwrap())
                } else {
                    Owned::Binary(payload)
                });
            }
            (stream, expected)
        })
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_gives_the_same_events(
            (stream, expected) in stream_strategy(),
            cuts in prop::collection::vec(0usize..8000, 0..12),
        ) {
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            let (events, err) = feed(&mut server(), &stream, &cuts);
            prop_assert_eq!(err, None);
            prop_assert_eq!(events, expected);
        }

        #[test]
        fn receiving_into_the_lent_buffer_gives_the_same_events(
            (stream, expected) in stream_strategy(),
            cuts in prop::collection::vec(0usize..8000, 0..12),
        ) {
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            let (events, err) = feed_lending(&mut server(), &stream, &cuts);
            prop_assert_eq!(err, None);
            prop_assert_eq!(events, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(0usize..2000, 0..8),
        ) {
            let limits = Limits { max_frame_size: 1000, max_message_size: 1500 };
            let _ = feed_with(&mut Receiver::new(Role::Server), &limits, &bytes, &cuts);
        }
    }

    #[test]
    fn a_large_text_message_lands_in_its_buffer_in_growing_pieces() {
        // 300 KiB of text with multi-byte code points, in two fragments with a ping between;
        // after the first 1000 bytes arrive through a read, the rest lands in the lent buffer.
        let text: String = "añ€😀".repeat(300 * 1024 / 10);
        let (a, b) = text.as_bytes().split_at(100_001); // inside a code point
        let mut stream = frame(false, 0, OpCode::Text, a, KEY);
        stream.extend(frame(true, 0, OpCode::Ping, b"p", KEY));
        stream.extend(frame(true, 0, OpCode::Continuation, b, [9, 8, 7, 6]));
        let (events, err) = feed_lending(&mut server(), &stream, &[1000, 1001, 1002, 150_000]);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![Owned::Ping(b"p".to_vec()), Owned::Text(text.clone())]
        );

        let mut rx = server();
        let mut first = stream[..1000].to_vec();
        assert_eq!(
            rx.read(&mut first, &Limits::default()).unwrap(),
            (1000, None)
        );
        let arrived = 1000 - 14; // a 64-bit length and a mask key
        assert_eq!(
            rx.lendable(),
            (a.len() - arrived) as u64,
            "payload still to come"
        );
        let (buf, room) = rx.lend().unwrap();
        assert_eq!(
            (buf.len(), room),
            (arrived, arrived),
            "at most what has arrived"
        );
        assert_eq!(rx.lendable(), 0, "lent once");
        assert!(rx.lend().is_none());
        let mut more = stream[1000..1100].to_vec();
        assert_eq!(
            rx.read(&mut more, &Limits::default()).unwrap(),
            (0, None),
            "not fed while lent"
        );
        rx.land(buf);
        assert_eq!(rx.lendable(), (a.len() - arrived) as u64, "nothing landed");
    }

    #[test]
    fn bad_utf8_that_lands_fails_the_message() {
        let mut payload = vec![b'a'; 5000];
        payload[3000] = 0xff;
        let stream = frame(true, 0, OpCode::Text, &payload, KEY);
        let (events, err) = feed_lending(&mut server(), &stream, &[2000]);
        assert_eq!((events, err), (vec![], Some(Error::InvalidUtf8)));
    }

    #[test]
    fn only_uncompressed_data_frames_are_lendable() {
        let limits = Limits::default();
        // Nothing of the payload arrived yet: lendable, but nothing to size the buffer by.
        let mut rx = server();
        let mut head = frame(true, 0, OpCode::Binary, &[1; 1000], KEY);
        assert_eq!(rx.read(&mut head[..8], &limits).unwrap(), (8, None));
        assert_eq!(rx.lendable(), 1000);
        assert!(rx.lend().is_none());
        // A control frame split over reads.
        let mut rx = server();
        let mut ping = frame(true, 0, OpCode::Ping, &[1; 100], KEY);
        assert_eq!(rx.read(&mut ping[..50], &limits).unwrap(), (50, None));
        assert_eq!(rx.lendable(), 0);
        // A compressed message.
        let mut rx = Receiver::with_deflate(Role::Server, Decompressor::new(15, false, None));
        // One stored deflate block of 995 bytes.
        let mut block = vec![0x00, 0xe3, 0x03, 0x1c, 0xfc];
        block.extend([7; 995]);
        let mut compressed = frame(true, RSV1, OpCode::Binary, &block, KEY);
        assert_eq!(
            rx.read(&mut compressed[..100], &limits).unwrap(),
            (100, None)
        );
        assert_eq!(rx.lendable(), 0);
        assert!(rx.lend().is_none());
    }

    #[test]
    fn every_split_point_of_a_mixed_stream() {
        let mut stream = frame(true, 0, OpCode::Text, "héllo wörld".as_bytes(), KEY);
        stream.extend(frame(false, 0, OpCode::Binary, &[1; 130], [5, 6, 7, 8]));
        stream.extend(frame(true, 0, OpCode::Ping, b"ping", KEY));
        stream.extend(frame(
            true,
            0,
            OpCode::Continuation,
            &[2; 70_000],
            [0xff, 0, 0xaa, 1],
        ));
        stream.extend(frame(true, 0, OpCode::Close, b"\x03\xe9", KEY));
        let mut binary = vec![1; 130];
        binary.extend([2; 70_000]);
        let expected = vec![
            Owned::Text("héllo wörld".into()),
            Owned::Ping(b"ping".to_vec()),
            Owned::Binary(binary),
            Owned::Close(Some((1001, String::new()))),
        ];
        for cut in (0..stream.len()).step_by(97).chain(0..200) {
            let (events, err) = feed(&mut server(), &stream, &[cut]);
            assert_eq!(err, None, "cut at {cut}");
            assert_eq!(events, expected, "cut at {cut}");
        }
    }
}
