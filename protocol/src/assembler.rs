//! Message assembly (RFC 6455 §5.4): fragments and interleaved control frames into messages.
//!
//! The assembler is fed frame headers and their unmasked payload, in order. It enforces the
//! fragmentation rules (a continuation needs a message in progress; a new data frame may not start
//! inside one; control frames may interleave), the message size limit (decided from each frame's
//! declared length before any byte is stored), and UTF-8 validity of text, checked chunk by chunk so a
//! bad byte fails the message as soon as it arrives.
//!
//! Storage exists only while needed: a data message that spans frames or receive buffers is gathered
//! into an assembly buffer that is freed once the message has been delivered; a control frame split
//! across receive buffers is gathered into a small boxed buffer. A message that sits whole in one
//! receive buffer never touches either (the [`Receiver`](crate::Receiver) delivers it in place).
//! There is no limit on the number of fragments: only their total size counts.
//!
//! With permessage-deflate negotiated ([`Assembler::with_deflate`]), a message whose first frame has
//! RSV1 is compressed: its payload chunks are inflated into the assembly buffer as they arrive, the
//! message size limit applied to the inflated bytes while inflating, and UTF-8 checked on them.

use crate::deflate::{Decompressor, INFLATE_CONTEXT_BYTES};
use crate::error::Error;
use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, OpCode, RSV1};
use crate::utf8::Utf8Validator;
use std::ops::Range;

/// The kind of data message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A text message: its bytes must be valid UTF-8.
    Text,
    /// A binary message.
    Binary,
}

/// Where a completed event's payload lives inside the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assembled {
    /// A data message is complete in the assembly buffer ([`Assembler::data`]).
    Data(DataKind),
    /// A control frame is complete in the control buffer ([`Assembler::control`]).
    Control(OpCode),
}

/// A control frame payload gathered across receive buffers.
#[derive(Debug)]
struct ControlBuf {
    len: u8,
    bytes: [u8; MAX_CONTROL_PAYLOAD],
}

/// The message-level state of one connection.
#[derive(Debug)]
pub struct Assembler {
    /// The data message in progress (fragmented, or split across receive buffers).
    kind: Option<DataKind>,
    /// Bytes the current data message's frames have declared so far (for the size limit).
    declared: u64,
    /// The inflater for compressed messages, if permessage-deflate was negotiated. Boxed so that
    /// connections without the extension pay 8 bytes for it, not the inflater's size.
    inflate: Option<Box<Decompressor>>,
    /// The data message in progress is compressed (its first frame had RSV1).
    compressed: bool,
    utf8: Utf8Validator,
    data: Vec<u8>,
    control: Option<Box<ControlBuf>>,
    /// The buffer the last event borrowed, to be freed before the next input.
    release: Option<Assembled>,
    /// The assembly buffer while it is lent out for a receive straight into it ([`lend`](Self::lend)).
    lent: Option<Lent>,
}

/// What the assembler remembers of its buffer while it is lent out.
#[derive(Debug, Clone, Copy)]
struct Lent {
    /// The buffer's capacity (still counted as held).
    capacity: usize,
    /// Its length when lent: the new bytes start there.
    len: usize,
    /// How many bytes may be written after `len`.
    room: usize,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Assembler {
    /// An assembler (the message size limit is passed to [`begin_frame`](Self::begin_frame) and
    /// [`push`](Self::push), so that a connection keeps no copy of it).
    pub fn new() -> Self {
        Self {
            kind: None,
            declared: 0,
            inflate: None,
            compressed: false,
            utf8: Utf8Validator::default(),
            data: Vec::new(),
            control: None,
            release: None,
            lent: None,
        }
    }

    /// An assembler that also accepts compressed messages (RSV1 on their first frame) and inflates
    /// them with `inflate`, failing those whose inflated size exceeds the message limit (1009).
    pub fn with_deflate(inflate: Decompressor) -> Self {
        Self {
            inflate: Some(Box::new(inflate)),
            ..Self::new()
        }
    }

    /// Bytes currently held in assembly buffers (data and control) and in an allocated inflate
    /// context.
    pub fn buffered(&self) -> usize {
        let inflate = match &self.inflate {
            Some(d) if d.is_allocated() => INFLATE_CONTEXT_BYTES,
            _ => 0,
        };
        self.assembly_bytes() + inflate
    }

    /// The inflater's life-long totals (compressed in, inflated out), if it has one.
    pub fn inflate_totals(&self) -> Option<(u64, u64)> {
        self.inflate.as_ref().map(|d| d.totals())
    }

    /// Bytes currently held in assembly buffers (data and control), without the inflate context:
    /// what a message in progress costs, 0 between messages.
    pub fn assembly_bytes(&self) -> usize {
        let lent = self.lent.map_or(0, |l| l.capacity);
        self.data.capacity() + lent + self.control.as_ref().map_or(0, |_| size_of::<ControlBuf>())
    }

    /// Whether nothing is held: no data message in progress, no assembly buffer, no inflater.
    pub fn is_empty(&self) -> bool {
        !self.in_message()
            && self.declared == 0
            && self.assembly_bytes() == 0
            && self.inflate.is_none()
    }

    /// Whether a fragmented data message is in progress.
    pub fn in_message(&self) -> bool {
        self.kind.is_some()
    }

    /// Frees what the previously returned [`Assembled`] event borrowed. Call before feeding new input.
    pub fn release(&mut self) {
        match self.release.take() {
            Some(Assembled::Data(_)) => self.data = Vec::new(),
            Some(Assembled::Control(_)) => self.control = None,
            None => {}
        }
    }

    /// Takes the data message the last [`Assembled::Data`] event borrowed out of the assembler (its
    /// buffer as it is, no copy), so that it can outlive the next input; `None` if the last event
    /// was not an assembled data message or it was already released or taken.
    pub fn take_data(&mut self) -> Option<(DataKind, Vec<u8>)> {
        match self.release {
            Some(Assembled::Data(kind)) => {
                self.release = None;
                Some((kind, std::mem::take(&mut self.data)))
            }
            _ => None,
        }
    }

    /// Checks a new frame against the fragmentation rules and the message size limit
    /// (`max_message_size` bytes, 1009 above it), from its header alone, before any of its payload
    /// is accepted.
    ///
    /// RSV1 is accepted only with permessage-deflate and only on the first frame of a data message
    /// (RFC 7692 §6.1: never on control or continuation frames); elsewhere it is
    /// [`Error::ReservedBits`]. A compressed message's declared (compressed) bytes are held to what
    /// a message within the limit can compress to; its inflated size is checked while inflating.
    pub fn begin_frame(&mut self, h: &FrameHeader, max_message_size: u64) -> Result<(), Error> {
        match h.opcode {
            OpCode::Continuation if self.kind.is_none() => {
                return Err(Error::UnexpectedContinuation);
            }
            OpCode::Text | OpCode::Binary if self.kind.is_some() => {
                return Err(Error::ExpectedContinuation);
            }
            _ => {}
        }
        let compressed = h.rsv & RSV1 != 0;
        if compressed
            && (self.inflate.is_none() || h.opcode.is_control() || h.opcode == OpCode::Continuation)
        {
            return Err(Error::ReservedBits);
        }
        if h.opcode.is_control() {
            return Ok(());
        }
        if h.opcode != OpCode::Continuation {
            self.compressed = compressed;
        }
        let limit = if self.compressed {
            // Stored blocks add 5 bytes per 64 KiB, fixed-Huffman literals at most 1/8.
            let max = max_message_size;
            max.saturating_add(max / 8).saturating_add(1024)
        } else {
            max_message_size
        };
        let declared = self.declared.saturating_add(h.payload_len);
        if declared > limit {
            return Err(Error::MessageTooLarge);
        }
        self.declared = declared;
        Ok(())
    }

    /// Whether the frame `h` (already begun) can be delivered straight from the receive buffer when
    /// its whole payload is there: control frames, and final frames that are a whole uncompressed
    /// message.
    pub fn deliverable_in_place(&self, h: &FrameHeader) -> bool {
        h.opcode.is_control() || (h.fin && self.kind.is_none() && !self.compressed)
    }

    /// Completes an in-place delivery of a whole data frame (see [`deliverable_in_place`](Self::deliverable_in_place)):
    /// resets the message state. Text validity is checked by the caller on the whole slice.
    pub fn delivered_in_place(&mut self, h: &FrameHeader) {
        if !h.opcode.is_control() {
            self.declared = 0;
        }
    }

    /// Feeds a chunk of frame `h`'s unmasked payload; `last` marks the frame's final bytes, and a
    /// compressed message inflating to more than `max_message_size` bytes fails (1009).
    /// Returns where a completed message or control frame can be read, if one completed.
    pub fn push(
        &mut self,
        h: &FrameHeader,
        chunk: &[u8],
        last: bool,
        max_message_size: u64,
    ) -> Result<Option<Assembled>, Error> {
        if h.opcode.is_control() {
            let buf = self.control.get_or_insert_with(|| {
                Box::new(ControlBuf {
                    len: 0,
                    bytes: [0; MAX_CONTROL_PAYLOAD],
                })
            });
            // The header decoder guarantees a control payload of at most 125 bytes.
            let at = buf.len as usize;
            buf.bytes[at..at + chunk.len()].copy_from_slice(chunk);
            buf.len += chunk.len() as u8;
            if last {
                let done = Assembled::Control(h.opcode);
                self.release = Some(done);
                return Ok(Some(done));
            }
            return Ok(None);
        }
        let kind = self.kind_of(h)?;
        self.kind = Some(kind);
        let end = last && h.fin;
        match self.inflate.as_mut().filter(|_| self.compressed) {
            Some(inflate) => {
                let limit = usize::try_from(max_message_size).unwrap_or(usize::MAX);
                let start = self.data.len();
                inflate.inflate(chunk, &mut self.data, limit)?;
                if end {
                    inflate.finish(&mut self.data, limit)?;
                }
                if kind == DataKind::Text {
                    self.utf8.feed(&self.data[start..])?;
                }
            }
            None => {
                if kind == DataKind::Text {
                    self.utf8.feed(chunk)?;
                }
                self.grow_for(chunk.len());
                self.data.extend_from_slice(chunk);
            }
        }
        self.complete(kind, end)
    }

    /// The kind of data message frame `h` belongs to (its own for a first frame, the message's
    /// for a continuation).
    fn kind_of(&self, h: &FrameHeader) -> Result<DataKind, Error> {
        match (h.opcode, self.kind) {
            (OpCode::Text, None) => Ok(DataKind::Text),
            (OpCode::Binary, None) => Ok(DataKind::Binary),
            (_, Some(kind)) => Ok(kind),
            (_, None) => Err(Error::UnexpectedContinuation),
        }
    }

    /// After a chunk of a `kind` message was stored: if it was the message's last (`end`),
    /// finishes its UTF-8 check and completes it.
    fn complete(&mut self, kind: DataKind, end: bool) -> Result<Option<Assembled>, Error> {
        if !end {
            return Ok(None);
        }
        if kind == DataKind::Text {
            self.utf8.finish()?;
        }
        self.kind = None;
        self.compressed = false;
        self.declared = 0;
        let done = Assembled::Data(kind);
        self.release = Some(done);
        Ok(Some(done))
    }

    /// Whether the buffer is lent out ([`lend`](Self::lend)) and not yet back.
    pub fn is_lent(&self) -> bool {
        self.lent.is_some()
    }

    /// Whether the message in progress may be lent out: it is not compressed and its buffer is
    /// not lent already.
    pub fn lendable(&self) -> bool {
        !self.compressed && self.lent.is_none()
    }

    /// Lends the assembly buffer out so that up to `more` further payload bytes of the
    /// uncompressed data frame `h` (already begun) can be written straight into its spare
    /// capacity, instead of being received elsewhere and copied in by [`push`](Self::push).
    /// Returns the buffer and how many bytes may be written after its current length: at most
    /// `more`, and at most what the buffer already holds (it grows as `push` would grow it for
    /// that many bytes: to less than twice what it holds once the room is filled, so a peer that
    /// declares a large frame and sends little of it gets no large buffer). `None` for a compressed message, a control
    /// frame, a buffer already lent or an empty one (nothing has arrived to size it by).
    ///
    /// Until [`land`](Self::land) gives it back the assembler must not be fed; its bytes count
    /// as held ([`assembly_bytes`](Self::assembly_bytes)).
    pub fn lend(&mut self, h: &FrameHeader, more: u64) -> Option<(Vec<u8>, usize)> {
        if !self.lendable() || h.opcode.is_control() {
            return None;
        }
        let kind = self.kind_of(h).ok()?;
        let len = self.data.len();
        let want = usize::try_from(more).unwrap_or(usize::MAX).min(len);
        if want == 0 {
            return None;
        }
        self.grow_for(want);
        let room = (self.data.capacity() - len).min(want);
        self.kind = Some(kind);
        self.lent = Some(Lent {
            capacity: self.data.capacity(),
            len,
            room,
        });
        Some((std::mem::take(&mut self.data), room))
    }

    /// Takes back the buffer [`lend`](Self::lend) lent, with the bytes written into it appended
    /// (anything beyond the room it was lent with is cut off). Returns where the new bytes lie in
    /// the assembly buffer, still masked: unmask them with [`landed_mut`](Self::landed_mut),
    /// then [`push_landed`](Self::push_landed). A buffer returned when none was lent is dropped.
    pub fn land(&mut self, mut data: Vec<u8>) -> Range<usize> {
        let Some(lent) = self.lent.take() else {
            return 0..0;
        };
        let end = data.len().min(lent.len + lent.room);
        data.truncate(end);
        self.data = data;
        lent.len.min(end)..end
    }

    /// The assembly buffer's bytes in `range` (as [`land`](Self::land) returned it), to unmask.
    pub fn landed_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        &mut self.data[range]
    }

    /// Accepts the (unmasked) bytes in `range` that [`land`](Self::land) put in the buffer as
    /// the next chunk of frame `h`'s payload, `last` marking the frame's final bytes: checks
    /// text as [`push`](Self::push) does and completes the message at its end.
    pub fn push_landed(
        &mut self,
        h: &FrameHeader,
        range: Range<usize>,
        last: bool,
    ) -> Result<Option<Assembled>, Error> {
        let kind = self.kind_of(h)?;
        if kind == DataKind::Text {
            self.utf8.feed(&self.data[range])?;
        }
        self.complete(kind, last && h.fin)
    }

    /// Makes room for `more` arriving bytes of the data message in progress: the capacity grows
    /// in powers of two, capped at what its frames have declared (itself within the message
    /// limit, checked by [`begin_frame`](Self::begin_frame)). So the buffer is never larger than
    /// the message limit nor the declared bytes, and at most twice what has arrived, whatever
    /// size the receives come in.
    fn grow_for(&mut self, more: usize) {
        let need = self.data.len() + more;
        if need <= self.data.capacity() {
            return;
        }
        let declared = usize::try_from(self.declared).unwrap_or(usize::MAX);
        let cap = need.next_power_of_two().min(declared).max(need);
        self.data.reserve_exact(cap - self.data.len());
    }

    /// The assembled data message (valid after [`Assembled::Data`]).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The assembled control payload (valid after [`Assembled::Control`]).
    pub fn control(&self) -> &[u8] {
        self.control
            .as_ref()
            .map_or(&[], |c| &c.bytes[..c.len as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message limit of most tests.
    const MAX: u64 = 1 << 20;

    fn h(fin: bool, opcode: OpCode, len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: len,
            header_len: 2,
        }
    }

    #[test]
    fn continuation_without_start_is_1002() {
        let mut a = Assembler::new();
        assert_eq!(
            a.begin_frame(&h(true, OpCode::Continuation, 1), MAX),
            Err(Error::UnexpectedContinuation)
        );
    }

    #[test]
    fn new_data_frame_inside_message_is_1002() {
        let mut a = Assembler::new();
        let first = h(false, OpCode::Text, 3);
        a.begin_frame(&first, MAX).unwrap();
        assert_eq!(a.push(&first, b"Hel", true, MAX), Ok(None));
        assert_eq!(
            a.begin_frame(&h(true, OpCode::Binary, 2), MAX),
            Err(Error::ExpectedContinuation)
        );
        assert_eq!(
            a.begin_frame(&h(true, OpCode::Text, 2), MAX),
            Err(Error::ExpectedContinuation)
        );
    }

    #[test]
    fn assembly_buffer_stays_within_the_declared_bytes_and_the_limit_for_any_receive_size() {
        // A 700 KiB message in two frames, fed in receives of several sizes (32 KiB buffers, 256 KiB
        // incremental ones, odd pieces): the buffer never exceeds the bytes declared so far nor
        // the 1 MiB limit, and is never more than twice what has arrived.
        let total = 700 << 10;
        for step in [1000, 32 << 10, (256 << 10) - 14, 256 << 10, 300_001] {
            let mut a = Assembler::new();
            let frames = [
                h(false, OpCode::Binary, 350 << 10),
                h(true, OpCode::Continuation, 350 << 10),
            ];
            let (mut arrived, mut declared) = (0usize, 0usize);
            for f in &frames {
                a.begin_frame(f, MAX).unwrap();
                declared += f.payload_len as usize;
                let mut left = f.payload_len as usize;
                while left > 0 {
                    let n = left.min(step);
                    left -= n;
                    a.push(f, &vec![7; n], left == 0, MAX).unwrap();
                    arrived += n;
                    let cap = a.assembly_bytes();
                    assert!(cap <= declared && cap <= 1 << 20, "step {step}: {cap}");
                    assert!(cap <= 2 * arrived, "step {step}: {cap} for {arrived}");
                }
            }
            assert_eq!(a.data().len(), total);
        }
    }

    #[test]
    fn control_frames_interleave_with_fragments() {
        let mut a = Assembler::new();
        let first = h(false, OpCode::Text, 3);
        a.begin_frame(&first, MAX).unwrap();
        a.push(&first, b"Hel", true, MAX).unwrap();
        let ping = h(true, OpCode::Ping, 2);
        a.begin_frame(&ping, MAX).unwrap();
        assert_eq!(
            a.push(&ping, b"hi", true, MAX),
            Ok(Some(Assembled::Control(OpCode::Ping)))
        );
        assert_eq!(a.control(), b"hi");
        a.release();
        let last = h(true, OpCode::Continuation, 2);
        a.begin_frame(&last, MAX).unwrap();
        assert_eq!(
            a.push(&last, b"lo", true, MAX),
            Ok(Some(Assembled::Data(DataKind::Text)))
        );
        assert_eq!(a.data(), b"Hello");
        a.release();
        assert_eq!(a.buffered(), 0, "assembly memory is freed after delivery");
        assert!(!a.in_message());
    }

    #[test]
    fn message_size_is_checked_across_fragments_before_payload() {
        let mut a = Assembler::new();
        const MAX: u64 = 10;
        let first = h(false, OpCode::Binary, 6);
        a.begin_frame(&first, MAX).unwrap();
        a.push(&first, &[0; 6], true, MAX).unwrap();
        assert_eq!(
            a.begin_frame(&h(true, OpCode::Continuation, 5), MAX),
            Err(Error::MessageTooLarge)
        );
        assert_eq!(
            Error::MessageTooLarge.reply(),
            crate::Reply::Close(crate::CloseCode::MESSAGE_TOO_BIG)
        );
    }

    #[test]
    fn many_tiny_fragments_are_fine() {
        let mut a = Assembler::new();
        let first = h(false, OpCode::Binary, 1);
        a.begin_frame(&first, MAX).unwrap();
        a.push(&first, &[7], true, MAX).unwrap();
        for _ in 0..70_000 {
            let c = h(false, OpCode::Continuation, 1);
            a.begin_frame(&c, MAX).unwrap();
            assert_eq!(a.push(&c, &[7], true, MAX), Ok(None));
        }
        let end = h(true, OpCode::Continuation, 0);
        a.begin_frame(&end, MAX).unwrap();
        assert_eq!(
            a.push(&end, &[], true, MAX),
            Ok(Some(Assembled::Data(DataKind::Binary)))
        );
        assert_eq!(a.data().len(), 70_001);
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_carries_it() {
        let mut a = Assembler::new();
        let first = h(false, OpCode::Text, 4);
        a.begin_frame(&first, MAX).unwrap();
        // U+110000 would start F4 90: invalid from its second byte on.
        assert_eq!(
            a.push(&first, &[b'a', b'b', 0xf4, 0x90], true, MAX),
            Err(Error::InvalidUtf8)
        );
    }

    #[test]
    fn incomplete_code_point_at_message_end_is_1007() {
        let mut a = Assembler::new();
        let first = h(false, OpCode::Text, 2);
        a.begin_frame(&first, MAX).unwrap();
        a.push(&first, &[b'a', 0xe2], true, MAX).unwrap();
        let end = h(true, OpCode::Continuation, 1);
        a.begin_frame(&end, MAX).unwrap();
        assert_eq!(a.push(&end, &[0x82], true, MAX), Err(Error::InvalidUtf8));
    }
}
