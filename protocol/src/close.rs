//! Close codes (RFC 6455 §7.4) and the rules for a Close frame's payload (§5.5.1).

use crate::error::Error;
use std::fmt;

/// A WebSocket close status code.
///
/// A plain `u16` newtype with named constants for the registered codes, so unknown but valid codes
/// (3000-4999, registered or private) round-trip unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer violated the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: the endpoint received a data type it cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection closed without a Close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a message's data was inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message violated the endpoint's policy (rate limits, slow consumers).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: a gateway received an invalid response upstream.
    pub const BAD_GATEWAY: Self = Self(1014);

    /// Whether this code may appear in a Close frame on the wire.
    ///
    /// Valid: 1000-1003, 1007-1014 and 3000-4999. Everything else (1004-1006, 1015, below 1000,
    /// 1016-2999, 5000 and above) is a protocol error when received.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

/// A parsed Close frame payload: a code and a UTF-8 reason, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code the peer sent.
    pub code: CloseCode,
    /// The reason text (may be empty).
    pub reason: &'a str,
}

impl<'a> CloseFrame<'a> {
    /// Parses a Close payload per §5.5.1: empty is allowed (`Ok(None)`, no status); one byte is a
    /// protocol error; otherwise a valid wire code followed by a UTF-8 reason.
    pub fn parse(payload: &'a [u8]) -> Result<Option<Self>, Error> {
        match payload {
            [] => Ok(None),
            [_] => Err(Error::InvalidClosePayload),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_valid_on_wire() {
                    return Err(Error::InvalidCloseCode(code.0));
                }
                let reason = simdutf8::basic::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
                Ok(Some(Self { code, reason }))
            }
        }
    }

    /// Writes this close payload (code, then reason) into `out`; the reason is cut at a character
    /// boundary so the payload fits a control frame (125 bytes). Returns the bytes written.
    pub fn encode(&self, out: &mut [u8; 125]) -> usize {
        out[..2].copy_from_slice(&self.code.0.to_be_bytes());
        let mut n = self.reason.len().min(123);
        while !self.reason.is_char_boundary(n) {
            n -= 1;
        }
        out[2..2 + n].copy_from_slice(&self.reason.as_bytes()[..n]);
        2 + n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason);
        v
    }

    #[test]
    fn empty_payload_is_no_status() {
        assert_eq!(CloseFrame::parse(&[]), Ok(None));
    }

    #[test]
    fn one_byte_payload_is_protocol_error() {
        let err = CloseFrame::parse(&[3]).unwrap_err();
        assert_eq!(err, Error::InvalidClosePayload);
        assert_eq!(err.reply(), crate::Reply::Close(CloseCode::PROTOCOL_ERROR));
    }

    #[test]
    fn valid_codes_are_accepted() {
        for code in (1000..=1003)
            .chain(1007..=1014)
            .chain([3000, 3999, 4000, 4999])
        {
            let p = payload(code, b"bye");
            let f = CloseFrame::parse(&p).unwrap().unwrap();
            assert_eq!(f.code, CloseCode(code));
            assert_eq!(f.reason, "bye");
        }
    }

    #[test]
    fn invalid_codes_are_protocol_errors() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let err = CloseFrame::parse(&payload(code, b"")).unwrap_err();
            assert_eq!(err, Error::InvalidCloseCode(code), "code {code}");
            assert_eq!(err.reply(), crate::Reply::Close(CloseCode::PROTOCOL_ERROR));
        }
    }

    #[test]
    fn invalid_utf8_reason_is_1007() {
        let err = CloseFrame::parse(&payload(1000, &[0xce, 0xba, 0xe1, 0xbd])).unwrap_err();
        assert_eq!(err, Error::InvalidUtf8);
        assert_eq!(err.reply(), crate::Reply::Close(CloseCode::INVALID_PAYLOAD));
    }

    #[test]
    fn encode_truncates_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = [0u8; 125];
        let n = CloseFrame {
            code: CloseCode::NORMAL,
            reason: &reason,
        }
        .encode(&mut out);
        assert_eq!(n, 2 + 122);
        let parsed = CloseFrame::parse(&out[..n]).unwrap().unwrap();
        assert_eq!(parsed.reason.chars().count(), 61);
    }
}
