//! The one error type of the protocol crate.
//!
//! Every variant says what the peer did wrong and maps, through [`Error::reply`], to exactly what the
//! engine must answer: a Close frame with a code (after the handshake), an HTTP status (during it), or
//! dropping the TCP connection (a client facing a bad server response).

use crate::close::CloseCode;
use std::fmt;

/// What the engine must do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Send a Close frame with this code, then close the TCP connection (RFC 6455 §7.1.7).
    Close(CloseCode),
    /// Answer the HTTP request with this status code, then close the TCP connection.
    Status(u16),
    /// Close the TCP connection without a word (a client that received an invalid handshake response).
    Drop,
}

/// A protocol violation or limit hit, detected from bytes the peer sent.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    // ---- handshake (server side): answered with an HTTP status ----
    /// The request line or a header line is not valid HTTP/1.1 syntax (400).
    MalformedRequest,
    /// The request header block is larger than the configured limit (431).
    HeadersTooLarge,
    /// The upgrade request's method is not GET (405).
    MethodNotGet,
    /// The HTTP version is not 1.1 or later (505).
    UnsupportedHttpVersion,
    /// The `Host` header is missing (400).
    MissingHost,
    /// `Connection` does not contain the `upgrade` token (400).
    MissingConnectionUpgrade,
    /// `Upgrade` does not contain the `websocket` token (400).
    MissingUpgradeWebsocket,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing or not the base64 encoding of exactly 16 bytes (400).
    InvalidKey,
    /// The `Origin` is not allowed by the server's policy (403).
    ForbiddenOrigin,

    // ---- handshake (client side): the connection is dropped ----
    /// The server answered with a status other than 101.
    UnexpectedStatus(u16),
    /// The server's response is not valid HTTP or lacks a required header.
    MalformedResponse,
    /// `Sec-WebSocket-Accept` does not match the key that was sent.
    AcceptMismatch,
    /// The server chose a subprotocol or extension the client did not offer.
    UnofferedSelection,

    // ---- frames: answered with Close 1002 (protocol error) ----
    /// A client frame arrived unmasked (a server MUST fail it, §5.1).
    UnmaskedFrame,
    /// A server frame arrived masked (a client MUST fail it, §5.1).
    MaskedFrame,
    /// The opcode is reserved (3-7, 0xB-0xF).
    ReservedOpcode(u8),
    /// RSV1-3 are set without an extension that defines them.
    ReservedBits,
    /// A control frame's payload is longer than 125 bytes.
    ControlFrameTooLong,
    /// A control frame has FIN=0.
    FragmentedControlFrame,
    /// A 64-bit length has its most significant bit set.
    LengthOverflow,
    /// The payload length is not in its minimal encoding (§5.2: "the minimal number of bytes MUST be used").
    NonMinimalLength,
    /// A continuation frame arrived with no fragmented message in progress.
    UnexpectedContinuation,
    /// A new Text/Binary frame arrived while a fragmented message was in progress.
    ExpectedContinuation,
    /// A Close payload of exactly one byte.
    InvalidClosePayload,
    /// A Close code that may not be sent on the wire (e.g. 1005, 1006, 1015, <1000, 1016-2999, ≥5000).
    InvalidCloseCode(u16),

    // ---- 1007 ----
    /// A Text message or a Close reason is not valid UTF-8.
    InvalidUtf8,
    /// A compressed message (permessage-deflate, RFC 7692) is not a valid DEFLATE stream: its payload
    /// is inconsistent with the message, as 1007 describes (RFC 6455 §7.4.1).
    InvalidCompressedData,

    // ---- 1009 ----
    /// A frame declares a payload larger than the frame limit.
    FrameTooLarge,
    /// A message (across its fragments) is larger than the message limit; for a compressed message,
    /// its inflated size, found while inflating.
    MessageTooLarge,
    /// A compressed message inflates to more than the configured ratio of its compressed size (the
    /// ratio guard of permessage-deflate against decompression bombs).
    InflateRatioExceeded,
}

impl Error {
    /// The answer the engine must give for this error.
    pub fn reply(&self) -> Reply {
        use Error::*;
        match self {
            MalformedRequest
            | MissingHost
            | MissingConnectionUpgrade
            | MissingUpgradeWebsocket
            | InvalidKey => Reply::Status(400),
            ForbiddenOrigin => Reply::Status(403),
            MethodNotGet => Reply::Status(405),
            UnsupportedVersion => Reply::Status(426),
            HeadersTooLarge => Reply::Status(431),
            UnsupportedHttpVersion => Reply::Status(505),
            UnexpectedStatus(_) | MalformedResponse | AcceptMismatch | UnofferedSelection => {
                Reply::Drop
            }
            UnmaskedFrame
            | MaskedFrame
            | ReservedOpcode(_)
            | ReservedBits
            | ControlFrameTooLong
            | FragmentedControlFrame
            | LengthOverflow
            | NonMinimalLength
            | UnexpectedContinuation
            | ExpectedContinuation
            | InvalidClosePayload
            | InvalidCloseCode(_) => Reply::Close(CloseCode::PROTOCOL_ERROR),
            InvalidUtf8 | InvalidCompressedData => Reply::Close(CloseCode::INVALID_PAYLOAD),
            FrameTooLarge | MessageTooLarge | InflateRatioExceeded => {
                Reply::Close(CloseCode::MESSAGE_TOO_BIG)
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        let s = match self {
            MalformedRequest => "malformed HTTP request",
            HeadersTooLarge => "request header block over the size limit",
            MethodNotGet => "upgrade request method is not GET",
            UnsupportedHttpVersion => "HTTP version is not 1.1",
            MissingHost => "missing Host header",
            MissingConnectionUpgrade => "Connection header lacks the upgrade token",
            MissingUpgradeWebsocket => "Upgrade header lacks the websocket token",
            UnsupportedVersion => "Sec-WebSocket-Version is not 13",
            InvalidKey => "Sec-WebSocket-Key is not base64 of 16 bytes",
            ForbiddenOrigin => "origin not allowed",
            UnexpectedStatus(code) => return write!(f, "server answered HTTP {code}, not 101"),
            MalformedResponse => "malformed handshake response",
            AcceptMismatch => "Sec-WebSocket-Accept does not match the key",
            UnofferedSelection => "server selected a subprotocol or extension that was not offered",
            UnmaskedFrame => "client frame is not masked",
            MaskedFrame => "server frame is masked",
            ReservedOpcode(op) => return write!(f, "reserved opcode {op:#x}"),
            ReservedBits => "reserved bits set without a negotiated extension",
            ControlFrameTooLong => "control frame payload over 125 bytes",
            FragmentedControlFrame => "fragmented control frame",
            LengthOverflow => "64-bit payload length has its top bit set",
            NonMinimalLength => "payload length not minimally encoded",
            UnexpectedContinuation => "continuation frame without a message in progress",
            ExpectedContinuation => "new data frame while a fragmented message is in progress",
            InvalidClosePayload => "close payload of one byte",
            InvalidCloseCode(code) => return write!(f, "invalid close code {code}"),
            InvalidUtf8 => "invalid UTF-8 in a text message or close reason",
            FrameTooLarge => "frame over the size limit",
            MessageTooLarge => "message over the size limit",
            InvalidCompressedData => "compressed message is not a valid DEFLATE stream",
            InflateRatioExceeded => "compressed message inflates beyond the ratio limit",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Error {}
