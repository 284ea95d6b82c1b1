//! The feed's control protocol: what clients send, and the replies.
//!
//! ```text
//! → {"op":"subscribe","symbols":["BTC-USD","ETH-USD"]}
//! ← {"type":"subscribed","symbols":["BTC-USD","ETH-USD"]}     then the last quote of each, then live ones
//! → {"op":"unsubscribe","symbols":["ETH-USD"]}
//! ← {"type":"unsubscribed","symbols":["ETH-USD"]}
//! → {"op":"dance"}
//! ← {"type":"error","reason":"unknown op \"dance\""}          the connection stays open
//! ```
//!
//! Messages are parsed with simd-json. The engine lends the payload immutably (a `Message` borrows
//! the receive buffer), and simd-json needs `&mut [u8]` to unescape strings in place, so the payload
//! is first copied into a per-worker scratch buffer. That copy is nearly free: control messages are
//! bounded ([`MAX_CONTROL`]) and simd-json copies its input into its own padded, aligned buffer for
//! the SIMD stage anyway; the alternative, lending handlers a mutable payload, would widen the
//! engine's callback API for one user.

use simd_json::BorrowedValue;
use std::borrow::Cow;
use std::fmt::{self, Write};

/// Largest control message accepted, in bytes.
pub const MAX_CONTROL: usize = 16 << 10;

/// A parsed control message; the symbols borrow the scratch buffer (simd-json unescapes in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control<'a> {
    /// Start receiving quotes of these symbols.
    Subscribe(Vec<Cow<'a, str>>),
    /// Stop receiving quotes of these symbols.
    Unsubscribe(Vec<Cow<'a, str>>),
}

/// Why a control message was refused (sent back as `{"type":"error","reason":...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// A binary message: control messages are JSON text.
    Binary,
    /// Over [`MAX_CONTROL`] bytes.
    TooLarge,
    /// Not valid JSON.
    Malformed,
    /// Valid JSON, but not an object with a string `op`.
    NoOp,
    /// An `op` other than `subscribe` or `unsubscribe` (at most 64 bytes of it kept).
    UnknownOp(String),
    /// `symbols` missing, empty, or not an array of strings.
    BadSymbols,
    /// A symbol this feed does not publish (at most 64 bytes of it kept).
    UnknownSymbol(String),
}

/// `s` cut to at most 64 bytes at a character boundary, for echoing client input in errors.
pub fn clip(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Binary => write!(f, "control messages are JSON text"),
            Self::TooLarge => write!(f, "control message over {MAX_CONTROL} bytes"),
            Self::Malformed => write!(f, "malformed JSON"),
            Self::NoOp => write!(f, "expected an object with a string \"op\""),
            Self::UnknownOp(op) => write!(f, "unknown op \"{op}\""),
            Self::BadSymbols => write!(f, "\"symbols\" must be a non-empty array of strings"),
            Self::UnknownSymbol(s) => write!(f, "unknown symbol \"{s}\""),
        }
    }
}

impl std::error::Error for ControlError {}

/// Parses a control message held (as a private copy) in `scratch`, unescaping strings in place:
/// the returned symbols borrow `scratch`. `buffers` are simd-json's reusable parse buffers.
///
/// ```
/// use ringws_cli::feed::control::{Control, parse};
/// let mut msg = br#"{"op":"subscribe","symbols":["BTC-USD","ETH\u002dUSD"]}"#.to_vec();
/// let parsed = parse(&mut msg, &mut simd_json::Buffers::default()).unwrap();
/// assert_eq!(parsed, Control::Subscribe(vec!["BTC-USD".into(), "ETH-USD".into()]));
/// ```
pub fn parse<'a>(
    scratch: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Control<'a>, ControlError> {
    if scratch.len() > MAX_CONTROL {
        return Err(ControlError::TooLarge);
    }
    let value = simd_json::to_borrowed_value_with_buffers(scratch, buffers)
        .map_err(|_| ControlError::Malformed)?;
    let BorrowedValue::Object(mut obj) = value else {
        return Err(ControlError::NoOp);
    };
    let Some(BorrowedValue::String(op)) = obj.remove("op") else {
        return Err(ControlError::NoOp);
    };
    let subscribe = match &*op {
        "subscribe" => true,
        "unsubscribe" => false,
        other => return Err(ControlError::UnknownOp(clip(other))),
    };
    let Some(BorrowedValue::Array(symbols)) = obj.remove("symbols") else {
        return Err(ControlError::BadSymbols);
    };
    if symbols.is_empty() {
        return Err(ControlError::BadSymbols);
    }
    let symbols = symbols
        .into_iter()
        .map(|v| match v {
            BorrowedValue::String(s) => Ok(s),
            _ => Err(ControlError::BadSymbols),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if subscribe {
        Control::Subscribe(symbols)
    } else {
        Control::Unsubscribe(symbols)
    })
}

/// Appends `s` as a JSON string literal (quoted, escaped) to `out`.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The reply to a successful control message: `{"type":"subscribed","symbols":[...]}` (or
/// `unsubscribed`).
pub fn ack(out: &mut String, subscribed: bool, symbols: &[Cow<'_, str>]) {
    out.push_str(if subscribed {
        r#"{"type":"subscribed","symbols":["#
    } else {
        r#"{"type":"unsubscribed","symbols":["#
    });
    for (i, s) in symbols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, s);
    }
    out.push_str("]}");
}

/// The reply to a refused control message: `{"type":"error","reason":"..."}`.
pub fn error(out: &mut String, e: &ControlError) {
    out.push_str(r#"{"type":"error","reason":"#);
    push_json_str(out, &e.to_string());
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn parse_str(s: &str) -> Result<Vec<String>, ControlError> {
        let mut b = s.as_bytes().to_vec();
        match parse(&mut b, &mut simd_json::Buffers::default())? {
            Control::Subscribe(v) => Ok(v.iter().map(|s| format!("+{s}")).collect()),
            Control::Unsubscribe(v) => Ok(v.iter().map(|s| format!("-{s}")).collect()),
        }
    }

    #[test]
    fn good_messages() {
        assert_eq!(
            parse_str(r#"{"symbols":["A","B"],"op":"subscribe","extra":1}"#),
            Ok(vec!["+A".into(), "+B".into()])
        );
        assert_eq!(
            parse_str(r#" {"op":"unsubscribe","symbols":["A"]} "#),
            Ok(vec!["-A".into()])
        );
    }

    #[test]
    fn bad_messages_say_why() {
        use ControlError::*;
        let cases: [(&str, ControlError); 9] = [
            ("{", Malformed),
            ("", Malformed),
            (r#"{"op":"subscribe","symbols":["A"]"#, Malformed),
            ("[1,2]", NoOp),
            (r#"{"op":7}"#, NoOp),
            (
                r#"{"op":"dance","symbols":["A"]}"#,
                UnknownOp("dance".into()),
            ),
            (r#"{"op":"subscribe"}"#, BadSymbols),
            (r#"{"op":"subscribe","symbols":[]}"#, BadSymbols),
            (r#"{"op":"subscribe","symbols":["A",1]}"#, BadSymbols),
        ];
        for (input, want) in cases {
            assert_eq!(parse_str(input), Err(want), "{input:?}");
        }
        let big = format!(
            r#"{{"op":"subscribe","symbols":["{}"]}}"#,
            "A".repeat(MAX_CONTROL)
        );
        assert_eq!(parse_str(&big), Err(TooLarge));
    }

    #[test]
    fn replies_are_valid_json_even_with_hostile_input() {
        let mut out = String::new();
        let op = "\"}\u{1}é".repeat(30);
        error(&mut out, &ControlError::UnknownOp(clip(&op)));
        let v = simd_json::to_owned_value(&mut out.clone().into_bytes()).expect("valid JSON");
        let reason = v.get_str("reason").unwrap();
        assert!(
            reason.starts_with("unknown op") && reason.len() < 120,
            "{reason}"
        );
        let mut out = String::new();
        ack(&mut out, true, &["A".into(), "B\"".into()]);
        assert_eq!(out, r#"{"type":"subscribed","symbols":["A","B\""]}"#);
    }
}
