//! The quote message, in its two encodings, and how a client reads its publish timestamp.
//!
//! JSON (text frames), members always in this order, `ts` always last:
//!
//! ```text
//! {"type":"quote","symbol":"BTC-USD","bid":65000.12,"ask":65013.12,"seq":42,"epoch":"187d2c1f0a3b4c5d","ts":1732500000123456789}
//! ```
//!
//! Binary (binary frames, with `--binary`), little-endian, 41 + n bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `ts`: publish time, ns since the UNIX epoch (`u64`) |
//! | 8 | 8 | `seq`: the symbol's quote number, from 1 (`u64`) |
//! | 16 | 8 | `epoch`: the stream `seq` counts in (`u64`; JSON gives it as 16 hex digits) |
//! | 24 | 8 | `bid` (`f64`) |
//! | 32 | 8 | `ask` (`f64`) |
//! | 40 | 1 | n: symbol length, 1 to 32; bit 7 set: `conflated` |
//! | 41 | n | symbol, ASCII |
//!
//! `ts` is where a load generator finds it without parsing the rest: the first 8 bytes of a binary
//! quote, the digits between the last `:` and the final `}` of a JSON one ([`timestamp`]). `seq`
//! counts per symbol within an `epoch`, which changes when the ticker restarts: (`epoch`, `seq`) is
//! the quote's position, what a client gives back to resume after a reconnect. A gap in `seq`
//! shows quotes a slow client had conflated away, and the quote that replaced them says so
//! (`"conflated":true` before `ts`; bit 7 of the length byte in binary), so a client can tell that
//! policy gap from a loss.

use ringws::Message;
use std::fmt::Write;

/// Longest symbol name (the binary layout stores its length in one byte).
pub const MAX_SYMBOL: usize = 32;

/// Size of a binary quote before its symbol.
pub const BINARY_HEADER: usize = 41;
/// The bit of a binary quote's length byte that says it is `conflated`.
const CONFLATED_BIT: u8 = 0x80;

/// Marks an encoded quote (either encoding) as having replaced others: the feed's
/// [`ConflatedMark`](ringws::ConflatedMark), applied by the engine to the quote a
/// slow subscriber gets in place of the ones it missed. `false` for anything else.
///
/// ```
/// use ringws_cli::feed::{Quote, mark_conflated};
/// let q = Quote { symbol: "X", bid: 1.0, ask: 1.5, seq: 3, epoch: 1, conflated: false, ts: 9 };
/// let (mut json, mut out) = (String::new(), Vec::new());
/// q.write_json(&mut json);
/// assert!(mark_conflated(json.as_bytes(), &mut out));
/// assert!(out.ends_with(br#","conflated":true,"ts":9}"#));
/// ```
pub fn mark_conflated(payload: &[u8], out: &mut Vec<u8>) -> bool {
    if payload.first() == Some(&b'{') {
        let Some(at) = payload.windows(6).rposition(|w| w == br#","ts":"#) else {
            return false;
        };
        out.extend_from_slice(&payload[..at]);
        out.extend_from_slice(br#","conflated":true"#);
        out.extend_from_slice(&payload[at..]);
        return true;
    }
    if Quote::from_binary(payload).is_none() {
        return false;
    }
    out.extend_from_slice(payload);
    out[BINARY_HEADER - 1] |= CONFLATED_BIT;
    true
}

/// One quote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quote<'a> {
    /// The symbol, e.g. `BTC-USD` (ASCII letters, digits and `-`, at most [`MAX_SYMBOL`] bytes).
    pub symbol: &'a str,
    /// Best bid.
    pub bid: f64,
    /// Best ask.
    pub ask: f64,
    /// The symbol's quote number, from 1.
    pub seq: u64,
    /// The stream `seq` counts in (drawn when the ticker starts).
    pub epoch: u64,
    /// This quote replaced others the client was too slow to receive ([`mark_conflated`]).
    pub conflated: bool,
    /// Publish time, ns since the UNIX epoch.
    pub ts: u64,
}

/// Decimal places for a price: enough to show moves of about 0.01% at any magnitude.
fn decimals(price: f64) -> usize {
    if price >= 1000.0 {
        2
    } else if price >= 1.0 {
        4
    } else {
        6
    }
}

impl<'a> Quote<'a> {
    /// Appends the JSON encoding to `out`.
    ///
    /// ```
    /// let q = ringws_cli::feed::Quote { symbol: "ETH-USD", bid: 3500.5, ask: 3501.0, seq: 7, epoch: 255, conflated: false, ts: 99 };
    /// let mut out = String::new();
    /// q.write_json(&mut out);
    /// assert_eq!(
    ///     out,
    ///     r#"{"type":"quote","symbol":"ETH-USD","bid":3500.50,"ask":3501.00,"seq":7,"epoch":"00000000000000ff","ts":99}"#
    /// );
    /// ```
    pub fn write_json(&self, out: &mut String) {
        let d = decimals(self.bid);
        // Writing to a String cannot fail; symbols need no escaping (ASCII letters, digits, '-').
        let _ = write!(
            out,
            r#"{{"type":"quote","symbol":"{}","bid":{:.d$},"ask":{:.d$},"seq":{},"epoch":"{:016x}"{},"ts":{}}}"#,
            self.symbol,
            self.bid,
            self.ask,
            self.seq,
            self.epoch,
            if self.conflated {
                r#","conflated":true"#
            } else {
                ""
            },
            self.ts
        );
    }

    /// Appends the binary encoding to `out` (layout in the module docs).
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        let symbol = &self.symbol.as_bytes()[..self.symbol.len().min(MAX_SYMBOL)];
        out.extend_from_slice(&self.ts.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.bid.to_le_bytes());
        out.extend_from_slice(&self.ask.to_le_bytes());
        out.push(symbol.len() as u8 | if self.conflated { CONFLATED_BIT } else { 0 });
        out.extend_from_slice(symbol);
    }

    /// Decodes a binary quote; `None` if `b` is not one (wrong length, empty or non-ASCII symbol).
    ///
    /// ```
    /// use ringws_cli::feed::Quote;
    /// let q = Quote { symbol: "BTC-USD", bid: 1.5, ask: 2.5, seq: 3, epoch: 5, conflated: true, ts: 4 };
    /// let mut b = Vec::new();
    /// q.write_binary(&mut b);
    /// assert_eq!(Quote::from_binary(&b), Some(q));
    /// ```
    pub fn from_binary(b: &'a [u8]) -> Option<Self> {
        let (head, symbol) = b.split_at_checked(BINARY_HEADER)?;
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let n = usize::from(head[40] & !CONFLATED_BIT);
        if n == 0 || n > MAX_SYMBOL || symbol.len() != n || !symbol.is_ascii() {
            return None;
        }
        Some(Self {
            ts: u64_at(0),
            seq: u64_at(8),
            epoch: u64_at(16),
            conflated: head[40] & CONFLATED_BIT != 0,
            bid: f64::from_bits(u64_at(24)),
            ask: f64::from_bits(u64_at(32)),
            symbol: std::str::from_utf8(symbol).ok()?,
        })
    }
}

/// The publish timestamp (ns since the UNIX epoch) of a quote in either encoding, read without
/// parsing the rest: what a load generator needs to measure publish-to-receive latency. `None` for
/// anything else (control replies, errors).
///
/// ```
/// use ringws::Message;
/// use ringws_cli::feed::timestamp;
/// let json = r#"{"type":"quote","symbol":"X","bid":1.0000,"ask":1.0001,"seq":1,"ts":1732500000123456789}"#;
/// assert_eq!(timestamp(Message::Text(json)), Some(1_732_500_000_123_456_789));
/// assert_eq!(timestamp(Message::Text(r#"{"type":"subscribed","symbols":[]}"#)), None);
/// ```
pub fn timestamp(msg: Message<'_>) -> Option<u64> {
    match msg {
        Message::Binary(b) => Quote::from_binary(b).map(|q| q.ts),
        Message::Text(t) => {
            let body = t.strip_suffix('}')?;
            let (before, digits) = body.rsplit_once(':')?;
            if !before.ends_with(r#","ts""#) || !before.starts_with(r#"{"type":"quote""#) {
                return None;
            }
            digits.parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_keep_about_four_significant_decimals() {
        let mut out = String::new();
        let q = Quote {
            symbol: "DOGE-USD",
            bid: 0.1234567,
            ask: 0.1234999,
            seq: 1,
            epoch: 1,
            conflated: false,
            ts: 2,
        };
        q.write_json(&mut out);
        let s = out;
        assert!(s.contains(r#""bid":0.123457,"ask":0.123500"#), "{s}");
        assert_eq!(timestamp(Message::Text(&s)), Some(2));
    }

    #[test]
    fn malformed_binary_quotes_are_refused() {
        let q = Quote {
            symbol: "BTC-USD",
            bid: 1.0,
            ask: 2.0,
            seq: 3,
            epoch: 5,
            conflated: false,
            ts: 4,
        };
        let mut b = Vec::new();
        q.write_binary(&mut b);
        assert_eq!(b.len(), BINARY_HEADER + 7);
        assert_eq!(timestamp(Message::Binary(&b)), Some(4));
        assert_eq!(Quote::from_binary(&b[..b.len() - 1]), None, "short");
        let mut long = b.clone();
        long.push(b'X');
        assert_eq!(Quote::from_binary(&long), None, "trailing byte");
        let mut empty = b[..BINARY_HEADER].to_vec();
        empty[40] = 0;
        assert_eq!(Quote::from_binary(&empty), None, "empty symbol");
        assert_eq!(Quote::from_binary(&[]), None);
        let mut marked = Vec::new();
        assert!(mark_conflated(&b, &mut marked));
        let m = Quote::from_binary(&marked).unwrap();
        assert!(m.conflated && m.symbol == "BTC-USD" && m.seq == 3);
        assert!(!mark_conflated(b"garbage", &mut Vec::new()));
        assert!(!mark_conflated(br#"{"type":"error"}"#, &mut Vec::new()));
    }

    #[test]
    fn only_quotes_have_a_timestamp() {
        for text in [
            r#"{"type":"error","reason":"x","ts":5}"#,
            r#"{"type":"quote","ts":}"#,
            "",
            "}",
            r#"{"type":"quote","symbol":"X","seq":1,"ts":-5}"#,
        ] {
            assert_eq!(timestamp(Message::Text(text)), None, "{text}");
        }
    }
}
