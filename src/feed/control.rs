//! The feed's control protocol: what clients send, and the replies.
//!
//! ```text
//! → {"op":"subscribe","symbols":["BTC-USD","ETH-USD"]}
//! ← {"type":"subscribed","symbols":["BTC-USD","ETH-USD"]}     then the last quote of each, then live ones
//! → {"op":"subscribe","symbols":["BTC-USD"],"since":{"BTC-USD":{"epoch":"187d2c1f0a3b4c5d","seq":41}}}
//! ← {"type":"subscribed","symbols":["BTC-USD"],"recovered":{"BTC-USD":{"recovered":true,"replayed":3}}}
//!                                                              then seq 42, 43, 44, then live ones
//! ← {"type":"subscribed","symbols":["BTC-USD"],"recovered":{"BTC-USD":{"recovered":false,"reason":"too_old"}}}
//!                                                              (instead) the last quote, then live ones
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

use ringws::{Position, PubSubError, Recovery};
use simd_json::BorrowedValue;
use simd_json::prelude::*;
use std::borrow::Cow;
use std::fmt::{self, Write};

/// Largest control message accepted, in bytes.
pub const MAX_CONTROL: usize = 16 << 10;

/// A parsed control message; the symbols borrow the scratch buffer (simd-json unescapes in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control<'a> {
    /// Start receiving quotes of these symbols; those named in `since` from the position given
    /// (the last quote the client received of each), the others from their last quote.
    Subscribe {
        /// The symbols.
        symbols: Vec<Cow<'a, str>>,
        /// Where the client was, by symbol (`since` entries for symbols not in `symbols` are
        /// ignored).
        since: Vec<(Cow<'a, str>, Position)>,
    },
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
    /// `since` not an object of `{"epoch":"HEX","seq":N}` positions.
    BadSince,
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
            Self::BadSince => write!(
                f,
                "\"since\" must map symbols to {{\"epoch\":\"<hex>\",\"seq\":<number>}}"
            ),
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
/// let symbols = vec!["BTC-USD".into(), "ETH-USD".into()];
/// assert_eq!(parsed, Control::Subscribe { symbols, since: vec![] });
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
    if !subscribe {
        return Ok(Control::Unsubscribe(symbols));
    }
    let since = match obj.remove("since") {
        None | Some(BorrowedValue::Static(simd_json::StaticNode::Null)) => Vec::new(),
        Some(BorrowedValue::Object(since)) => since
            .into_iter()
            .map(|(symbol, at)| Ok((symbol, position(&at).ok_or(ControlError::BadSince)?)))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ControlError::BadSince),
    };
    Ok(Control::Subscribe { symbols, since })
}

/// `{"epoch":"HEX","seq":N}` as a position.
fn position(v: &BorrowedValue<'_>) -> Option<Position> {
    Some(Position {
        epoch: ringws::parse_epoch(v.get_str("epoch")?)?,
        seq: v.get_u64("seq")?,
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
    ack_open(out, subscribed, symbols);
    out.push('}');
}

/// `{"type":"subscribed","symbols":[...]` without the closing brace.
fn ack_open(out: &mut String, subscribed: bool, symbols: &[Cow<'_, str>]) {
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
    out.push(']');
}

/// The reply to a subscribe whose symbols were asked `since` a position: the ack, with, for each
/// of those, whether what the client missed follows (`outcomes` are the engine's answers, one
/// per symbol; `None` for the symbols subscribed from their last quote):
/// `"recovered":{"BTC-USD":{"recovered":true,"replayed":3},"ETH-USD":{"recovered":false,"reason":"too_old"}}`.
pub fn subscribed(
    out: &mut String,
    symbols: &[Cow<'_, str>],
    asked: &[bool],
    outcomes: &[Result<Option<Recovery>, PubSubError>],
) {
    ack_open(out, true, symbols);
    let mut first = true;
    for ((symbol, outcome), _) in symbols
        .iter()
        .zip(outcomes)
        .zip(asked)
        .filter(|(_, asked)| **asked)
    {
        out.push_str(if first { r#","recovered":{"# } else { "," });
        first = false;
        push_json_str(out, symbol);
        let _ = match outcome {
            Ok(Some(Recovery::Recovered { replayed })) => {
                write!(out, r#":{{"recovered":true,"replayed":{replayed}}}"#)
            }
            Ok(Some(Recovery::NotRecovered { reason })) => {
                write!(out, r#":{{"recovered":false,"reason":"{reason}"}}"#)
            }
            // Already subscribed (quotes are flowing), or refused: nothing was replayed.
            Ok(None) | Err(PubSubError::AlreadySubscribed) => {
                write!(
                    out,
                    r#":{{"recovered":false,"reason":"already_subscribed"}}"#
                )
            }
            Err(_) => write!(out, r#":{{"recovered":false,"reason":"refused"}}"#),
        };
    }
    if !first {
        out.push('}');
    }
    out.push('}');
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

    fn parse_str(s: &str) -> Result<Vec<String>, ControlError> {
        let mut b = s.as_bytes().to_vec();
        match parse(&mut b, &mut simd_json::Buffers::default())? {
            Control::Subscribe { symbols, since } => Ok(symbols
                .iter()
                .map(|s| format!("+{s}"))
                .chain(since.iter().map(|(s, p)| format!("@{s}={p}")))
                .collect()),
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
        assert_eq!(
            parse_str(
                r#"{"op":"subscribe","symbols":["A"],"since":{"A":{"epoch":"ff","seq":41}}}"#
            ),
            Ok(vec!["+A".into(), "@A=00000000000000ff:41".into()])
        );
        assert_eq!(
            parse_str(r#"{"op":"subscribe","symbols":["A"],"since":null}"#),
            Ok(vec!["+A".into()])
        );
    }

    #[test]
    fn bad_positions_are_refused() {
        for since in [
            "[]",
            r#"{"A":1}"#,
            r#"{"A":{"epoch":"ff"}}"#,
            r#"{"A":{"seq":1}}"#,
            r#"{"A":{"epoch":255,"seq":1}}"#,
            r#"{"A":{"epoch":"zz","seq":1}}"#,
            r#"{"A":{"epoch":"11111111111111111","seq":1}}"#,
            r#"{"A":{"epoch":"ff","seq":-1}}"#,
            r#"{"A":{"epoch":"ff","seq":"1"}}"#,
        ] {
            let msg = format!(r#"{{"op":"subscribe","symbols":["A"],"since":{since}}}"#);
            assert_eq!(parse_str(&msg), Err(ControlError::BadSince), "{since}");
        }
    }

    #[test]
    fn the_subscribed_reply_says_what_was_recovered() {
        use ringws::NotRecovered;
        let mut out = String::new();
        let symbols = ["A".into(), "B".into(), "C".into(), "D".into()];
        subscribed(
            &mut out,
            &symbols,
            &[true, false, true, true],
            &[
                Ok(Some(Recovery::Recovered { replayed: 3 })),
                Ok(None),
                Ok(Some(Recovery::NotRecovered {
                    reason: NotRecovered::TooOld,
                })),
                Err(PubSubError::AlreadySubscribed),
            ],
        );
        assert_eq!(
            out,
            r#"{"type":"subscribed","symbols":["A","B","C","D"],"recovered":{"A":{"recovered":true,"replayed":3},"C":{"recovered":false,"reason":"too_old"},"D":{"recovered":false,"reason":"already_subscribed"}}}"#
        );
        assert!(simd_json::to_owned_value(&mut out.into_bytes()).is_ok());
        let mut out = String::new();
        subscribed(&mut out, &symbols[..1], &[false], &[Ok(None)]);
        assert_eq!(out, r#"{"type":"subscribed","symbols":["A"]}"#);
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
