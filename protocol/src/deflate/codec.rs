//! The per-message codec of permessage-deflate (RFC 7692 §7.2): raw DEFLATE with a sync flush at the
//! end of each message, the trailing `00 00 ff ff` removed on the wire and put back before inflating.
//!
//! [`Compressor`] turns messages (or the parts of a fragmented message) into compressed payloads.
//! [`Decompressor`] inflates the payload chunks of compressed messages as they arrive, into the
//! caller's message buffer, stopping at the size limit and at the ratio guard instead of inflating
//! first and checking after.

use crate::error::Error;
use crate::frame::{MAX_HEADER_LEN, OpCode, RSV1, encode_header, header_len};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four octets a sync flush ends with: removed by the sender, appended by the receiver (§7.2.1,
/// §7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest window flate2's zlib backends can compress or inflate with (2^9 bytes).
///
/// zlib cannot compress raw DEFLATE with an 8-bit window: a [`Compressor`] is never built for one
/// (such a direction sends uncompressed messages, which RFC 7692 §6 always allows), and a
/// [`Decompressor`] asked for 8 bits inflates with 9, which accepts every 8-bit stream and the 9-bit
/// streams zlib-based peers produce when asked for 8.
pub const MIN_WINDOW_BITS: u8 = 9;

/// Inflated bytes a message may reach before the ratio guard applies: small messages are never
/// refused for compressing well.
pub const RATIO_GUARD_FLOOR: u64 = 64 << 10;

/// The smallest growth step of the output buffer while inflating.
const MIN_OUTPUT_STEP: usize = 4 << 10;

/// Compresses messages for one direction of permessage-deflate.
///
/// With context takeover, one `Compressor` belongs to one connection and keeps its LZ77 window from
/// message to message. Without it (`no_context_takeover`), every message starts from a fresh window,
/// so one `Compressor` can serve every connection of a worker whose agreed window is at least as large
/// (see [`Compressor::can_serve`]), and a published message can be compressed once for all of them.
///
/// ```
/// use ringws_protocol::deflate::Compressor;
/// // RFC 7692 §7.2.3.1: "Hello" compressed, and §7.2.3.2: the same again with context takeover.
/// let mut c = Compressor::new(15, 6, false);
/// let mut out = Vec::new();
/// c.compress(b"Hello", &mut out);
/// assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
/// out.clear();
/// c.compress(b"Hello", &mut out);
/// assert_eq!(out, [0xf2, 0x00, 0x11, 0x00, 0x00]);
/// ```
pub struct Compressor {
    deflate: Compress,
    window_bits: u8,
    no_context_takeover: bool,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor with an LZ77 window of 2^`window_bits` bytes (clamped to 9..=15, see
    /// [`MIN_WINDOW_BITS`]) at compression `level` (0..=9, clamped); with `no_context_takeover` it
    /// forgets its window after every message.
    ///
    /// It allocates its whole context here: about [`deflate_context_bytes`](super::deflate_context_bytes).
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Self {
        let window_bits = window_bits.clamp(MIN_WINDOW_BITS, 15);
        Self {
            deflate: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits,
            ),
            window_bits,
            no_context_takeover,
        }
    }

    /// The window size it compresses with, in bits.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Whether it starts every message from a fresh window.
    pub fn no_context_takeover(&self) -> bool {
        self.no_context_takeover
    }

    /// Whether its output can be sent on a connection whose sending direction agreed on
    /// `window_bits` and `no_context_takeover`: that is, it starts each message fresh, the connection
    /// does too, and its window is no larger than the agreed one.
    ///
    /// This is the test for sharing one compressor per worker, and for sending one compressed publish
    /// to many subscribers: a connection with context takeover must have every message it sends go
    /// through its own compressor, or the peer's window and its compressor's would drift apart.
    pub fn can_serve(&self, window_bits: u8, no_context_takeover: bool) -> bool {
        self.no_context_takeover && no_context_takeover && self.window_bits <= window_bits
    }

    /// Compresses a whole message and appends its payload (without the trailing `00 00 ff ff`) to
    /// `out`. The frame that carries it sets RSV1 (see [`write_frame`](Self::write_frame)).
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) {
        self.compress_part(message, true, out);
    }

    /// Compresses the next part of a message sent in several frames and appends the compressed bytes
    /// to `out`; `fin` marks the last part. Each part is sync-flushed, so the peer can inflate every
    /// frame as it arrives (RFC 7692 §7.2.3.5 shows such a message); only the last part's trailing
    /// `00 00 ff ff` is removed. The first frame of the message sets RSV1, the continuation frames do
    /// not (§6.1). A part may compress to nothing: send an empty frame.
    pub fn compress_part(&mut self, part: &[u8], fin: bool, out: &mut Vec<u8>) {
        let start = out.len();
        self.deflate_sync(part, out);
        if !fin {
            return;
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        } else if out.len() == start {
            // zlib skips a sync flush that follows another with no input in between: an empty
            // message after a previous one (takeover), or an empty last part. An empty payload would
            // leave the receiver a truncated stored-block header once it appends the tail, so send
            // the single byte that, with the tail, forms an empty stored block: the same bytes a
            // fresh compressor produces for an empty message.
            out.push(0x00);
        }
        if self.no_context_takeover {
            self.deflate.reset();
        }
    }

    /// Compresses `message` and appends one complete frame to `out`: FIN and RSV1 set, opcode `op`
    /// (Text or Binary), the compressed payload masked with `mask` when given (a client's frames).
    ///
    /// The payload is compressed in place after room for the longest header, then the header is
    /// written and the frame moved down over the unused room: no scratch buffer.
    ///
    /// ```
    /// use ringws_protocol::deflate::Compressor;
    /// use ringws_protocol::OpCode;
    /// let mut out = Vec::new();
    /// Compressor::new(15, 6, true).write_frame(OpCode::Text, b"Hello", None, &mut out);
    /// assert_eq!(out, [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]); // RFC 7692 §7.2.3.1
    /// ```
    pub fn write_frame(
        &mut self,
        op: OpCode,
        message: &[u8],
        mask: Option<[u8; 4]>,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.resize(start + MAX_HEADER_LEN, 0);
        self.compress(message, out);
        let payload_len = out.len() - start - MAX_HEADER_LEN;
        let head_len = header_len(payload_len as u64, mask.is_some());
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, RSV1, op, mask, payload_len as u64);
        debug_assert_eq!(n, head_len);
        let payload_at = start + MAX_HEADER_LEN;
        if let Some(key) = mask {
            crate::mask::unmask(&mut out[payload_at..], key, 0);
        }
        let frame_at = payload_at - head_len;
        out[frame_at..payload_at].copy_from_slice(&head[..head_len]);
        out.copy_within(frame_at.., start);
        out.truncate(start + head_len + payload_len);
    }

    /// Forgets the window, as if newly built (cheap compared with building one).
    pub fn reset(&mut self) {
        self.deflate.reset();
    }

    /// Runs deflate with a sync flush over `input`, appending everything it produces to `out`.
    fn deflate_sync(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            // Room for the input's worst case (stored blocks) plus the flush, grown if it runs out.
            out.reserve(input.len() + (input.len() >> 10) + 64);
            let before = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(input, out, FlushCompress::Sync)
                // The only errors are a corrupted stream state or misuse (a flush after Finish),
                // which this type never does; input bytes cannot cause one.
                .expect("raw deflate with a sync flush does not fail");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // With a sync flush, spare output room left over means the flush completed.
            if input.is_empty() && (out.len() < out.capacity() || status == Status::BufError) {
                return;
            }
        }
    }
}

/// Inflates compressed messages for the receiving direction of one connection.
///
/// It lives in the connection's [`Receiver`](crate::Receiver) (see
/// [`Receiver::with_deflate`](crate::Receiver::with_deflate)), which feeds it each chunk of a
/// compressed message's payload as it arrives, unmasked, whatever the frame and receive-buffer
/// boundaries. The inflate context (about [`INFLATE_CONTEXT_BYTES`](super::INFLATE_CONTEXT_BYTES)) is
/// allocated when the first compressed message starts; without context takeover it is freed again
/// after every message, so an idle connection holds none.
///
/// ```
/// use ringws_protocol::deflate::Decompressor;
/// let mut d = Decompressor::new(15, false, None);
/// let mut out = Vec::new();
/// // RFC 7692 §7.2.3.1, in two chunks as from two frames.
/// d.inflate(&[0xf2, 0x48, 0xcd], &mut out, 1 << 20)?;
/// d.inflate(&[0xc9, 0xc9, 0x07, 0x00], &mut out, 1 << 20)?;
/// d.finish(&mut out, 1 << 20)?;
/// assert_eq!(out, b"Hello");
/// # Ok::<(), ringws_protocol::Error>(())
/// ```
pub struct Decompressor {
    window_bits: u8,
    no_context_takeover: bool,
    max_ratio: Option<u32>,
    inflate: Option<Box<Decompress>>,
    /// The message's DEFLATE stream ended (a block with BFINAL): its remaining bytes are ignored.
    ended: bool,
    /// Compressed bytes consumed and bytes produced for the message in progress.
    message_in: u64,
    message_out: u64,
    /// Compressed bytes consumed and bytes produced over the decompressor's life (for metrics).
    total_in: u64,
    total_out: u64,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("max_ratio", &self.max_ratio)
            .field("allocated", &self.inflate.is_some())
            .finish_non_exhaustive()
    }
}

impl Decompressor {
    /// A decompressor for a peer that compresses with at most 2^`window_bits` bytes of window
    /// (clamped to 9..=15, see [`MIN_WINDOW_BITS`]); with `no_context_takeover` every message starts
    /// fresh. `max_ratio` is the ratio guard: a message that inflates past [`RATIO_GUARD_FLOOR`]
    /// bytes and to more than `max_ratio` times its compressed size fails with
    /// [`Error::InflateRatioExceeded`]. Nothing is allocated until the first compressed message.
    pub fn new(window_bits: u8, no_context_takeover: bool, max_ratio: Option<u32>) -> Self {
        Self {
            window_bits: window_bits.clamp(MIN_WINDOW_BITS, 15),
            no_context_takeover,
            max_ratio,
            inflate: None,
            ended: false,
            message_in: 0,
            message_out: 0,
            total_in: 0,
            total_out: 0,
        }
    }

    /// Compressed bytes consumed and inflated bytes produced over the decompressor's life: what
    /// permessage-deflate saved on the way in.
    pub fn totals(&self) -> (u64, u64) {
        (self.total_in, self.total_out)
    }

    /// Whether an inflate context is allocated now (for memory accounting).
    pub fn is_allocated(&self) -> bool {
        self.inflate.is_some()
    }

    /// Inflates the next chunk of a compressed message's payload, appending to `out`, which holds the
    /// message inflated so far and may grow to at most `limit` bytes.
    ///
    /// The output buffer grows by doubling but never past `limit + 1` bytes of capacity, and inflating
    /// stops as soon as the message exceeds `limit` ([`Error::MessageTooLarge`], 1009) or trips the
    /// ratio guard ([`Error::InflateRatioExceeded`], 1009); a corrupt stream is
    /// [`Error::InvalidCompressedData`] (1007). After an error the connection must be failed.
    pub fn inflate(&mut self, chunk: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), Error> {
        if self.ended || chunk.is_empty() {
            return Ok(());
        }
        let window_bits = self.window_bits;
        let inflate = self
            .inflate
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, window_bits)));
        // One byte past the limit is enough to tell that the message is too large.
        let cap = limit.saturating_add(1);
        let mut input = chunk;
        loop {
            // `out.len() <= limit < cap` holds here: it is checked after every step below.
            if out.len() == out.capacity() {
                let step = out.len().max(MIN_OUTPUT_STEP).min(cap - out.len());
                out.reserve_exact(step);
            }
            // `decompress_vec` inflates into the spare capacity and sets the length: it never
            // grows the vector, and hands the spare capacity to zlib-rs uninitialised (flate2
            // 1.1.11 calls `decompress_uninit`), so it costs the same as doing that here with
            // `set_len`, without `unsafe` in this crate: identical instruction counts and wall time
            // from 128 B to 1 MiB (`cargo run --release -p ringws-protocol --example unsafe_costs
            // -- [callgrind] inflate`).
            let room = out.capacity() - out.len();
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| Error::InvalidCompressedData)?;
            let consumed = (inflate.total_in() - in_before) as usize;
            let produced = (inflate.total_out() - out_before) as usize;
            debug_assert!(produced <= room);
            input = &input[consumed..];
            self.message_in += consumed as u64;
            self.message_out += produced as u64;
            self.total_in += consumed as u64;
            self.total_out += produced as u64;
            if out.len() > limit {
                // The reserve above never takes the capacity past `cap`; only a caller's buffer
                // that came with more spare capacity can hold more, memory it already had.
                out.truncate(cap);
                return Err(Error::MessageTooLarge);
            }
            if let Some(ratio) = self.max_ratio
                && self.message_out > RATIO_GUARD_FLOOR
                && self.message_out > self.message_in.saturating_mul(ratio as u64)
            {
                return Err(Error::InflateRatioExceeded);
            }
            if status == Status::StreamEnd {
                // A block with BFINAL ended the stream (RFC 7692 §7.2.3.4): what follows in this
                // message is padding; the next message starts a new stream.
                self.ended = true;
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                // No progress although there was room: inflate needs more input.
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(Error::InvalidCompressedData)
                };
            }
            if input.is_empty() && produced < room {
                return Ok(());
            }
        }
    }

    /// Ends the message: inflates the `00 00 ff ff` the sender removed (same limits as
    /// [`inflate`](Self::inflate)), then forgets the window if there is no context takeover (freeing
    /// the inflate context) or if the message's stream ended with BFINAL.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), Error> {
        // An empty payload is an empty message. Appending the tail to nothing would leave a
        // truncated stored-block header in a taken-over stream and corrupt the next message, so the
        // stream is not touched (senders never produce one: an empty message compresses to `00`).
        if self.message_in > 0 {
            let before = self.total_in;
            self.inflate(&TAIL, out, limit)?;
            // The tail was never on the wire: only what the peer sent counts as received.
            self.total_in = before.max(self.total_in.saturating_sub(TAIL.len() as u64));
        }
        if self.no_context_takeover {
            self.inflate = None;
        } else if self.ended
            && let Some(inflate) = self.inflate.as_mut()
        {
            inflate.reset(false);
        }
        self.ended = false;
        self.message_in = 0;
        self.message_out = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn compress(c: &mut Compressor, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        c.compress(msg, &mut out);
        out
    }

    fn inflate_all(d: &mut Decompressor, payload: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        d.inflate(payload, &mut out, limit)?;
        d.finish(&mut out, limit)?;
        Ok(out)
    }

    /// A deterministic, moderately compressible message of `len` bytes (JSON-like records).
    pub(crate) fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let rec = format!(
                "{{\"id\":{},\"px\":\"{}.{:02}\",\"sym\":\"{}\"}},",
                s % 100_000,
                s % 500,
                s % 100,
                ["BTC", "ETH", "SOL"][(s % 3) as usize]
            );
            out.extend_from_slice(rec.as_bytes());
        }
        out.truncate(len);
        out
    }

    // ---- RFC 7692 §7.2.3 examples, byte-exact ----

    #[test]
    fn rfc_hello_compressed_and_inflated() {
        let wire = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(compress(&mut Compressor::new(15, 6, false), b"Hello"), wire);
        let mut d = Decompressor::new(15, false, None);
        assert_eq!(inflate_all(&mut d, &wire, 100).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_shared_window_second_hello() {
        let mut c = Compressor::new(15, 6, false);
        let mut d = Decompressor::new(15, false, None);
        let first = compress(&mut c, b"Hello");
        let second = compress(&mut c, b"Hello");
        assert_eq!(second, [0xf2, 0x00, 0x11, 0x00, 0x00]);
        assert_eq!(inflate_all(&mut d, &first, 100).unwrap(), b"Hello");
        assert_eq!(inflate_all(&mut d, &second, 100).unwrap(), b"Hello");
        // Without takeover the second message is compressed from scratch again.
        let mut c = Compressor::new(15, 6, true);
        compress(&mut c, b"Hello");
        assert_eq!(
            compress(&mut c, b"Hello"),
            [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
    }

    #[test]
    fn rfc_stored_block_bfinal_block_and_two_blocks_inflate() {
        let cases: [&[u8]; 3] = [
            // §7.2.3.3: a DEFLATE block with no compression.
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            // §7.2.3.4: a DEFLATE block with BFINAL set, followed by padding.
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
            // §7.2.3.5: two DEFLATE blocks in one message.
            &[
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
            ],
        ];
        for takeover in [false, true] {
            let mut d = Decompressor::new(15, !takeover, None);
            for payload in cases {
                assert_eq!(inflate_all(&mut d, payload, 100).unwrap(), b"Hello");
            }
            // After the BFINAL message the next stream starts fresh and still inflates.
            assert_eq!(inflate_all(&mut d, cases[0], 100).unwrap(), b"Hello");
        }
    }

    #[test]
    fn two_parts_match_the_rfc_two_block_example() {
        let mut c = Compressor::new(15, 6, true);
        let mut out = Vec::new();
        c.compress_part(b"He", false, &mut out);
        c.compress_part(b"llo", true, &mut out);
        assert_eq!(
            out,
            [
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00
            ]
        );
    }

    #[test]
    fn empty_messages_compress_to_one_zero_byte_and_inflate_to_nothing() {
        for takeover in [true, false] {
            let mut c = Compressor::new(15, 6, !takeover);
            let mut d = Decompressor::new(15, !takeover, None);
            for msg in [&b""[..], b"", b"abc", b"", b"abc", b""] {
                let wire = compress(&mut c, msg);
                if msg.is_empty() {
                    assert_eq!(wire, [0x00], "takeover {takeover}");
                }
                assert_eq!(inflate_all(&mut d, &wire, 100).unwrap(), msg);
            }
            // An empty last part after a flushed part still closes the message properly.
            let mut wire = Vec::new();
            c.compress_part(b"abc", false, &mut wire);
            c.compress_part(b"", true, &mut wire);
            assert_eq!(inflate_all(&mut d, &wire, 100).unwrap(), b"abc");
            assert_eq!(
                inflate_all(&mut d, &compress(&mut c, b"next"), 100).unwrap(),
                b"next"
            );
        }
    }

    #[test]
    fn empty_payload_inflates_to_an_empty_message() {
        let mut d = Decompressor::new(15, false, None);
        assert_eq!(inflate_all(&mut d, &[], 100).unwrap(), b"");
        let mut c = Compressor::new(15, 6, false);
        let wire = compress(&mut c, b"after");
        assert_eq!(inflate_all(&mut d, &wire, 100).unwrap(), b"after");
    }

    #[test]
    fn write_frame_masks_and_sets_rsv1() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![0xee]; // existing bytes stay untouched
        Compressor::new(15, 6, true).write_frame(OpCode::Binary, b"Hello", Some(key), &mut out);
        let mut payload = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        crate::mask::unmask(&mut payload, key, 0);
        let mut expected = vec![0xee, 0xc2, 0x87];
        expected.extend_from_slice(&key);
        expected.extend_from_slice(&payload);
        assert_eq!(out, expected);
        // Long payloads take the 16- and 64-bit length forms.
        for len in [200usize, 70_000] {
            let msg: Vec<u8> = (0..len as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let mut out = Vec::new();
            Compressor::new(15, 1, true).write_frame(OpCode::Binary, &msg, None, &mut out);
            let rules = crate::frame::DecodeRules {
                role: crate::Role::Client,
                max_frame_size: 1 << 20,
                allowed_rsv: RSV1,
            };
            let crate::frame::Decoded::Header(h) =
                crate::frame::decode_header(&out, &rules).unwrap()
            else {
                panic!("whole header")
            };
            assert_eq!((h.fin, h.rsv, h.opcode), (true, RSV1, OpCode::Binary));
            let body = &out[h.header_len as usize..];
            assert_eq!(body.len() as u64, h.payload_len);
            let mut d = Decompressor::new(15, true, None);
            assert_eq!(inflate_all(&mut d, body, 1 << 20).unwrap(), msg);
        }
    }

    #[test]
    fn round_trips_every_window_and_takeover_across_chunk_splits() {
        let msgs: Vec<Vec<u8>> = [0usize, 1, 5, 300, 4000, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| sample(n, i as u64))
            .collect();
        for window in 9..=15u8 {
            for no_takeover in [false, true] {
                let mut c = Compressor::new(window, 6, no_takeover);
                let mut d = Decompressor::new(window, no_takeover, None);
                for (i, msg) in msgs.iter().enumerate() {
                    let wire = compress(&mut c, msg);
                    let mut out = Vec::new();
                    // Chunks of 1, 2, 3, ... bytes, cycling: splits land everywhere.
                    let mut rest = &wire[..];
                    let mut size = 1 + i;
                    while !rest.is_empty() {
                        let (chunk, tail) = rest.split_at(size.min(rest.len()));
                        d.inflate(chunk, &mut out, 1 << 20).unwrap();
                        rest = tail;
                        size = size % 97 + 1;
                    }
                    d.finish(&mut out, 1 << 20).unwrap();
                    assert_eq!(&out, msg, "window {window} no_takeover {no_takeover}");
                }
                assert_eq!(d.is_allocated(), !no_takeover);
            }
        }
    }

    #[test]
    fn window_size_limits_how_far_back_the_compressor_looks() {
        // Repeats 600 bytes apart: a 9-bit (512 B) window cannot reach them, a 10-bit one can.
        let block = sample(600, 3);
        let msg: Vec<u8> = block.iter().chain(&block).chain(&block).copied().collect();
        let small = compress(&mut Compressor::new(9, 9, true), &msg);
        let large = compress(&mut Compressor::new(10, 9, true), &msg);
        assert!(
            large.len() * 2 < small.len(),
            "{} vs {}",
            large.len(),
            small.len()
        );
        for (window, wire) in [(9, &small), (10, &large)] {
            let mut d = Decompressor::new(window, true, None);
            assert_eq!(inflate_all(&mut d, wire, 1 << 20).unwrap(), msg);
        }
    }

    #[test]
    fn corrupt_streams_are_1007() {
        let mut d = Decompressor::new(15, true, None);
        // BTYPE=11 is reserved.
        assert_eq!(
            inflate_all(&mut d, &[0xff, 0xff], 100),
            Err(Error::InvalidCompressedData)
        );
        // Stored block whose NLEN is not the complement of LEN.
        let mut d = Decompressor::new(15, true, None);
        assert_eq!(
            inflate_all(&mut d, &[0x00, 0x05, 0x00, 0x00, 0x00, b'x'], 100),
            Err(Error::InvalidCompressedData)
        );
        assert_eq!(
            Error::InvalidCompressedData.reply(),
            crate::Reply::Close(crate::CloseCode::INVALID_PAYLOAD)
        );
    }

    /// A valid raw DEFLATE stream that inflates to `mib` MiB of zeros: `mib` copies of the sync-flushed
    /// compression of 1 MiB of zeros (each copy starts with a literal, so copies concatenate).
    pub(crate) fn bomb(mib: usize) -> Vec<u8> {
        let one = compress(&mut Compressor::new(15, 9, true), &vec![0; 1 << 20]);
        let mut one_flushed = one.clone();
        one_flushed.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(one_flushed.len() * mib);
        for _ in 0..mib {
            out.extend_from_slice(&one_flushed);
        }
        out.truncate(out.len() - TAIL.len());
        out
    }

    #[test]
    fn bomb_stops_at_the_limit_with_bounded_memory() {
        let wire = bomb(1024); // ~1 MiB that inflates to 1 GiB
        assert!(wire.len() < 1100 * 1024, "{}", wire.len());
        let limit = 16 << 20;
        let mut d = Decompressor::new(15, false, None);
        let mut out = Vec::new();
        let mut fed = 0;
        let err = loop {
            let chunk = &wire[fed..(fed + 4096).min(wire.len())];
            fed += chunk.len();
            if let Err(e) = d.inflate(chunk, &mut out, limit) {
                break e;
            }
            assert!(fed < wire.len(), "the whole bomb inflated");
        };
        assert_eq!(err, Error::MessageTooLarge);
        assert_eq!(
            err.reply(),
            crate::Reply::Close(crate::CloseCode::MESSAGE_TOO_BIG)
        );
        assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
        assert!(out.len() == limit + 1);
        assert!(
            fed <= 40 << 10,
            "stopped early: {fed} compressed bytes read"
        );
    }

    #[test]
    fn a_roomy_caller_buffer_is_not_grown_and_ends_one_byte_past_the_limit() {
        let wire = bomb(1);
        let mut d = Decompressor::new(15, true, None);
        let mut out = Vec::with_capacity(1 << 20);
        let capacity = out.capacity();
        assert_eq!(
            d.inflate(&wire, &mut out, 1000),
            Err(Error::MessageTooLarge)
        );
        assert_eq!(out.len(), 1001);
        assert_eq!(out.capacity(), capacity);
    }

    #[test]
    fn ratio_guard_stops_early_and_spares_small_or_ordinary_messages() {
        let wire = bomb(4);
        let mut d = Decompressor::new(15, true, Some(100));
        let mut out = Vec::new();
        assert_eq!(
            d.inflate(&wire, &mut out, 64 << 20),
            Err(Error::InflateRatioExceeded)
        );
        assert!(out.len() < 2 * RATIO_GUARD_FLOOR as usize + (256 << 10));
        // Under the floor, any ratio passes.
        let zeros = compress(
            &mut Compressor::new(15, 9, true),
            &vec![0; RATIO_GUARD_FLOOR as usize],
        );
        let mut d = Decompressor::new(15, true, Some(2));
        assert_eq!(
            inflate_all(&mut d, &zeros, 1 << 20).unwrap().len(),
            RATIO_GUARD_FLOOR as usize
        );
        // Ordinary data of 1 MiB stays well under a ratio of 100.
        let msg = sample(1 << 20, 9);
        let wire = compress(&mut Compressor::new(15, 6, true), &msg);
        let mut d = Decompressor::new(15, true, Some(100));
        assert_eq!(inflate_all(&mut d, &wire, 2 << 20).unwrap(), msg);
    }

    #[test]
    fn limit_is_exact() {
        let msg = sample(10_000, 1);
        let wire = compress(&mut Compressor::new(15, 6, true), &msg);
        assert_eq!(
            inflate_all(&mut Decompressor::new(15, true, None), &wire, 10_000).unwrap(),
            msg
        );
        assert_eq!(
            inflate_all(&mut Decompressor::new(15, true, None), &wire, 9_999),
            Err(Error::MessageTooLarge)
        );
    }

    #[test]
    fn without_takeover_the_context_is_freed_after_each_message() {
        let mut d = Decompressor::new(12, true, None);
        assert!(!d.is_allocated());
        let mut out = Vec::new();
        d.inflate(&[0xf2, 0x48], &mut out, 100).unwrap();
        assert!(d.is_allocated());
        d.inflate(&[0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100)
            .unwrap();
        d.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        assert!(!d.is_allocated());
    }
}
