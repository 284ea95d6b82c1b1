//! Frame headers (RFC 6455 §5.2): decode from a slice without copying, encode into a small array.
//!
//! Decoding enforces every rule that can be decided from the header alone, before a single payload
//! byte is read or any memory is reserved: masking by role, reserved opcodes and bits, control frame
//! limits, the 64-bit length's top bit, minimal length encoding and the frame size limit.

use crate::error::Error;

/// The longest frame header: 2 bytes + 8 bytes of extended length + 4 bytes of masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which end of the connection we are: it decides which frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server: incoming frames must be masked, outgoing ones are not.
    Server,
    /// We are the client: incoming frames must not be masked, outgoing ones are.
    Client,
}

/// A frame opcode (§5.2). Reserved values are rejected at decode time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: the first frame of a UTF-8 text message.
    Text = 0x1,
    /// 0x2: the first frame of a binary message.
    Binary = 0x2,
    /// 0x8: connection close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Whether this is a control opcode (Close, Ping, Pong).
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    fn from_bits(bits: u8) -> Result<Self, Error> {
        Ok(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(Error::ReservedOpcode(other)),
        })
    }
}

/// RSV1, the bit permessage-deflate (RFC 7692) uses to mark a compressed message.
pub const RSV1: u8 = 0b100;

/// The rules a decoder applies to each header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRules {
    /// Our role: decides whether incoming frames must be masked.
    pub role: Role,
    /// The largest payload one frame may declare; larger is [`Error::FrameTooLarge`] (1009).
    pub max_frame_size: u64,
    /// RSV bits a negotiated extension allows, as a mask over [`FrameHeader::rsv`] (0 without one).
    pub allowed_rsv: u8,
}

/// A decoded frame header. Payload bytes are not part of it: they follow `header_len` bytes later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the last frame of its message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length the header declares.
    pub payload_len: u64,
    /// How many bytes the header itself occupies (2 to 14).
    pub header_len: u8,
}

/// The outcome of [`decode_header`] on a slice that may hold only part of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, valid header.
    Header(FrameHeader),
    /// The slice is too short: at least this many bytes in total are needed to decode the header.
    Partial(usize),
}

/// Decodes a frame header from the start of `buf`, applying `rules`.
///
/// Never reads past the header and never allocates; a short slice gives [`Decoded::Partial`] with the
/// total header length needed so far.
///
/// ```
/// use ringws_protocol::frame::{decode_header, Decoded, DecodeRules, OpCode};
/// use ringws_protocol::Role;
/// let rules = DecodeRules { role: Role::Client, max_frame_size: 1 << 20, allowed_rsv: 0 };
/// // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
/// let Decoded::Header(h) = decode_header(b"\x81\x05Hello", &rules).unwrap() else { panic!() };
/// assert_eq!((h.fin, h.opcode, h.payload_len, h.header_len), (true, OpCode::Text, 5, 2));
/// ```
#[inline]
pub fn decode_header(buf: &[u8], rules: &DecodeRules) -> Result<Decoded, Error> {
    let [b0, b1, ..] = *buf else {
        return Ok(Decoded::Partial(2));
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let opcode = OpCode::from_bits(b0 & 0x0f)?;
    if rsv & !rules.allowed_rsv != 0 {
        return Err(Error::ReservedBits);
    }
    let masked = b1 & 0x80 != 0;
    match (rules.role, masked) {
        (Role::Server, false) => return Err(Error::UnmaskedFrame),
        (Role::Client, true) => return Err(Error::MaskedFrame),
        _ => {}
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(Error::FragmentedControlFrame);
        }
        if len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(Error::ControlFrameTooLong);
        }
    }
    let ext_len = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext_len + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(Decoded::Partial(header_len));
    }
    let payload_len = match len7 {
        126 => {
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Err(Error::NonMinimalLength);
            }
            n
        }
        127 => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(Error::LengthOverflow);
            }
            if n <= u16::MAX as u64 {
                return Err(Error::NonMinimalLength);
            }
            n
        }
        n => n as u64,
    };
    if payload_len > rules.max_frame_size {
        return Err(Error::FrameTooLarge);
    }
    let mask = masked.then(|| {
        let at = 2 + ext_len;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Ok(Decoded::Header(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: header_len as u8,
    }))
}

/// Encodes a frame header into `out` and returns its length (2 to 14 bytes).
///
/// Server frames pass `mask: None`; client frames pass the key they will mask the payload with.
///
/// ```
/// use ringws_protocol::frame::{encode_header, OpCode, MAX_HEADER_LEN};
/// let mut out = [0u8; MAX_HEADER_LEN];
/// let n = encode_header(&mut out, true, 0, OpCode::Binary, None, 256);
/// assert_eq!(&out[..n], b"\x82\x7e\x01\x00"); // RFC 6455 §5.7: 256 bytes, 16-bit length
/// ```
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    out[0] = (fin as u8) << 7 | (rsv & 0x7) << 4 | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// The header length [`encode_header`] produces for a payload of `payload_len` bytes.
#[inline]
pub fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: DecodeRules = DecodeRules {
        role: Role::Server,
        max_frame_size: 1 << 24,
        allowed_rsv: 0,
    };
    const CLIENT: DecodeRules = DecodeRules {
        role: Role::Client,
        ..SERVER
    };

    fn header(buf: &[u8], rules: &DecodeRules) -> FrameHeader {
        match decode_header(buf, rules) {
            Ok(Decoded::Header(h)) => h,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn err(buf: &[u8], rules: &DecodeRules) -> Error {
        decode_header(buf, rules).unwrap_err()
    }

    // ---- RFC 6455 §5.7 examples, byte-exact ----

    #[test]
    fn rfc_unmasked_hello() {
        let h = header(b"\x81\x05\x48\x65\x6c\x6c\x6f", &CLIENT);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: None,
                payload_len: 5,
                header_len: 2
            }
        );
        let mut out = [0; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, 0, OpCode::Text, None, 5);
        assert_eq!(&out[..n], b"\x81\x05");
    }

    #[test]
    fn rfc_masked_hello() {
        let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        let h = header(frame, &SERVER);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.payload_len, h.header_len), (5, 6));
        let mut payload = frame[6..].to_vec();
        crate::mask::unmask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        let mut out = [0; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, 0, OpCode::Text, h.mask, 5);
        assert_eq!(&out[..n], &frame[..6]);
    }

    #[test]
    fn rfc_fragmented_hello() {
        let first = header(b"\x01\x03\x48\x65\x6c", &CLIENT);
        assert_eq!(
            (first.fin, first.opcode, first.payload_len),
            (false, OpCode::Text, 3)
        );
        let second = header(b"\x80\x02\x6c\x6f", &CLIENT);
        assert_eq!(
            (second.fin, second.opcode, second.payload_len),
            (true, OpCode::Continuation, 2)
        );
    }

    #[test]
    fn rfc_ping_and_pong() {
        let ping = header(b"\x89\x05\x48\x65\x6c\x6c\x6f", &CLIENT);
        assert_eq!((ping.opcode, ping.payload_len), (OpCode::Ping, 5));
        let pong = header(b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", &SERVER);
        assert_eq!(
            (pong.opcode, pong.payload_len, pong.mask),
            (OpCode::Pong, 5, Some([0x37, 0xfa, 0x21, 0x3d]))
        );
    }

    #[test]
    fn rfc_256_bytes_binary() {
        let h = header(b"\x82\x7e\x01\x00", &CLIENT);
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (OpCode::Binary, 256, 4)
        );
    }

    #[test]
    fn rfc_64k_binary() {
        let bytes = b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00";
        let h = header(bytes, &CLIENT);
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (OpCode::Binary, 65536, 10)
        );
        let mut out = [0; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, 0, OpCode::Binary, None, 65536);
        assert_eq!(&out[..n], bytes);
    }

    // ---- partial input ----

    #[test]
    fn partial_headers_report_needed_length() {
        assert_eq!(decode_header(b"", &SERVER), Ok(Decoded::Partial(2)));
        assert_eq!(decode_header(b"\x81", &SERVER), Ok(Decoded::Partial(2)));
        assert_eq!(
            decode_header(b"\x81\x85\x37", &SERVER),
            Ok(Decoded::Partial(6))
        );
        assert_eq!(
            decode_header(b"\x82\xfe\x01", &SERVER),
            Ok(Decoded::Partial(8))
        );
        assert_eq!(
            decode_header(b"\x82\xff\x00\x00", &SERVER),
            Ok(Decoded::Partial(14))
        );
        assert_eq!(
            decode_header(b"\x82\x7f", &CLIENT),
            Ok(Decoded::Partial(10))
        );
    }

    // ---- one test per rule ----

    #[test]
    fn server_rejects_unmasked_client_frame() {
        assert_eq!(err(b"\x81\x05Hello", &SERVER), Error::UnmaskedFrame);
    }

    #[test]
    fn client_rejects_masked_server_frame() {
        assert_eq!(
            err(b"\x81\x85\x37\xfa\x21\x3d", &CLIENT),
            Error::MaskedFrame
        );
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in (3..=7).chain(0xb..=0xf) {
            assert_eq!(
                err(&[0x80 | op, 0x80, 0, 0, 0, 0], &SERVER),
                Error::ReservedOpcode(op)
            );
        }
    }

    #[test]
    fn reserved_bits_rejected_without_extension() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            assert_eq!(
                err(&[0x81 | rsv, 0x80, 0, 0, 0, 0], &SERVER),
                Error::ReservedBits
            );
        }
        let deflate = DecodeRules {
            allowed_rsv: RSV1,
            ..SERVER
        };
        assert_eq!(header(&[0xc1, 0x80, 0, 0, 0, 0], &deflate).rsv, RSV1);
        assert_eq!(
            err(&[0xa1, 0x80, 0, 0, 0, 0], &deflate),
            Error::ReservedBits
        );
    }

    #[test]
    fn control_frame_over_125_rejected() {
        assert_eq!(
            err(&[0x89, 0xfe, 0, 126], &SERVER),
            Error::ControlFrameTooLong
        );
        assert!(matches!(
            decode_header(&[0x89, 0xfd, 0, 0, 0, 0], &SERVER),
            Ok(Decoded::Header(_))
        ));
    }

    #[test]
    fn fragmented_control_frame_rejected() {
        for op in [0x8, 0x9, 0xa] {
            assert_eq!(
                err(&[op, 0x80, 0, 0, 0, 0], &SERVER),
                Error::FragmentedControlFrame
            );
        }
    }

    #[test]
    fn length_with_top_bit_rejected() {
        let buf = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(err(&buf, &SERVER), Error::LengthOverflow);
        assert_eq!(
            Error::LengthOverflow.reply(),
            crate::Reply::Close(crate::CloseCode::PROTOCOL_ERROR)
        );
    }

    #[test]
    fn non_minimal_lengths_rejected() {
        assert_eq!(
            err(&[0x82, 0xfe, 0, 125, 0, 0, 0, 0], &SERVER),
            Error::NonMinimalLength
        );
        assert_eq!(
            err(
                &[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0],
                &SERVER
            ),
            Error::NonMinimalLength
        );
    }

    #[test]
    fn oversized_frame_is_1009_from_header_alone() {
        let rules = DecodeRules {
            max_frame_size: 1000,
            ..SERVER
        };
        // 2^63 - 1 bytes declared; only the header is present.
        let buf = [
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert_eq!(err(&buf, &rules), Error::FrameTooLarge);
        assert_eq!(
            Error::FrameTooLarge.reply(),
            crate::Reply::Close(crate::CloseCode::MESSAGE_TOO_BIG)
        );
        assert_eq!(
            err(&[0x82, 0xfe, 0x03, 0xe9, 0, 0, 0, 0], &rules),
            Error::FrameTooLarge
        );
        assert!(matches!(
            decode_header(&[0x82, 0xfe, 0x03, 0xe8, 0, 0, 0, 0], &rules),
            Ok(Decoded::Header(_))
        ));
    }

    #[test]
    fn encode_decode_round_trip_all_length_classes() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = [0; MAX_HEADER_LEN];
                let n = encode_header(&mut out, true, 0, OpCode::Binary, mask, len);
                assert_eq!(n, header_len(len, mask.is_some()));
                let rules = DecodeRules {
                    role: if mask.is_some() {
                        Role::Server
                    } else {
                        Role::Client
                    },
                    max_frame_size: u64::MAX >> 1,
                    allowed_rsv: 0,
                };
                let h = header(&out[..n], &rules);
                assert_eq!(
                    (h.payload_len, h.mask, h.header_len as usize),
                    (len, mask, n)
                );
            }
        }
    }
}
