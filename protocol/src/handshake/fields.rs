//! What request and response parsing share: finding the end of a head under a size limit while
//! refusing bare line feeds, and lookups over the header lines of a head that has already been
//! validated.

use memchr::{memchr, memchr_iter};

/// Where a head stands in a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    /// No `\r\n\r\n` yet, and the buffer is still under the limit.
    Partial,
    /// No `\r\n\r\n` within the first `max` bytes.
    TooLarge,
    /// A line feed without a carriage return before it, within the head.
    BareLf,
    /// The head is `buf[..len]`, final `\r\n\r\n` included.
    Complete(usize),
}

/// Finds the end of the head in `buf`, allowing at most `max` bytes for it.
///
/// HTTP/1.1 lines end in CRLF (RFC 9112 §2.2). A recipient MAY accept a bare LF; we refuse it, so that
/// the head's end is always a `\r\n\r\n` and a lone `\n` can never split a header line differently
/// for us than for a proxy in front of us. Empty lines before the start line are skipped (RFC 9112
/// §2.2 asks servers to ignore at least one) and count towards the head's length and the limit.
///
/// One pass over the line feeds does both jobs. Bytes past `max` or past the head are never
/// scanned, so the cost of a call is bounded by the limit, not by what the peer sent.
pub(super) fn locate(buf: &[u8], max: usize) -> Head {
    let window = &buf[..buf.len().min(max)];
    let start = start_line(window);
    for i in memchr_iter(b'\n', &window[start..]).map(|i| start + i) {
        if i == 0 || window[i - 1] != b'\r' {
            return Head::BareLf;
        }
        // The start line is not empty, so a CRLFCRLF here lies wholly after `start`.
        if i >= start + 3 && window[i - 3..i - 1] == *b"\r\n" {
            return Head::Complete(i + 1);
        }
    }
    if buf.len() >= max {
        Head::TooLarge
    } else {
        Head::Partial
    }
}

/// The offset of the start line: the length of the empty lines (CRLF pairs) before it.
pub(super) fn start_line(buf: &[u8]) -> usize {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    start
}

/// Trims optional whitespace (SP and HTAB, RFC 9110 §5.6.3) from both ends.
pub(super) fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// The elements of a comma-separated list value, trimmed; empty elements are skipped, as the `#rule`
/// of RFC 9110 §5.6.1 requires of recipients.
pub(super) fn elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(trim_ows).filter(|e| !e.is_empty())
}

/// Whether the list `value` holds `token` (ASCII case-insensitive).
pub(super) fn has_token(value: &str, token: &str) -> bool {
    elements(value).any(|e| e.eq_ignore_ascii_case(token))
}

/// The header lines of a validated head: `name ":" OWS value OWS CRLF`, repeated.
///
/// Built only from text that httparse accepted, that holds no bare LF and that is UTF-8, so each line
/// holds a colon that ends a token name. Lookups rescan these few hundred bytes instead of keeping a
/// table: a request stays a handful of words and nothing is allocated per header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fields<'a>(pub(super) &'a str);

impl<'a> Fields<'a> {
    /// Every header line as `(name, value)` in order, the value trimmed.
    pub(super) fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            // A token name holds no ':' and a value no CR, so the first ':' ends this line's name
            // and the first CR after it ends its value.
            let bytes = rest.as_bytes();
            let colon = memchr(b':', bytes)?;
            let eol = memchr(b'\r', &bytes[colon..]).map_or(bytes.len(), |i| colon + i);
            let (name, value) = (&rest[..colon], &rest[colon + 1..eol]);
            rest = rest.get(eol + 2..).unwrap_or("");
            Some((name, trim_ows(value)))
        })
    }

    /// The values of every line named `name` (ASCII case-insensitive), in order.
    pub(super) fn all(self, name: &str) -> impl Iterator<Item = &'a str> {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The value of the first line named `name`.
    pub(super) fn get(self, name: &str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// The value of the only line named `name`: `Err(())` if there are several.
    pub(super) fn single(self, name: &str) -> Result<Option<&'a str>, ()> {
        let mut values = self.all(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(()),
            None => Ok(first),
        }
    }

    /// The elements of the comma-separated lists in every line named `name` (see [`elements`]).
    pub(super) fn list(self, name: &str) -> impl Iterator<Item = &'a str> {
        self.all(name).flat_map(elements)
    }

    /// Whether the lists in the lines named `name` hold `token` (ASCII case-insensitive).
    pub(super) fn has_token(self, name: &str, token: &str) -> bool {
        self.all(name).any(|value| has_token(value, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_partial_complete_and_limit() {
        assert_eq!(locate(b"", 16), Head::Partial);
        assert_eq!(locate(b"GET / HTTP/1.1\r\n", 64), Head::Partial);
        assert_eq!(
            locate(b"GET / HTTP/1.1\r\n\r\nrest", 64),
            Head::Complete(18)
        );
        // The terminator must end within the limit: 18 bytes of head do not fit in 17.
        assert_eq!(locate(b"GET / HTTP/1.1\r\n\r\n", 17), Head::TooLarge);
        assert_eq!(locate(b"GET / HTTP/1.1\r\n\r\n", 18), Head::Complete(18));
        assert_eq!(locate(b"GET / HTTP/1.1\r\n", 0), Head::TooLarge);
    }

    #[test]
    fn locate_skips_leading_empty_lines() {
        assert_eq!(
            locate(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 64),
            Head::Complete(22)
        );
        assert_eq!(locate(b"\r\n\r\n", 64), Head::Partial);
        assert_eq!(locate(b"\r\n\r\n", 4), Head::TooLarge);
    }

    #[test]
    fn bare_lf_detection() {
        assert_eq!(locate(b"a\r\nb\r\n\r\n", 64), Head::Complete(8));
        assert_eq!(locate(b"\n", 64), Head::BareLf);
        assert_eq!(locate(b"a\r\nb\n", 64), Head::BareLf);
        assert_eq!(locate(b"a\r\n\n", 64), Head::BareLf);
        assert_eq!(locate(b"\r\n\n", 64), Head::BareLf);
        // Only the head is looked at: what follows it, or lies past the limit, is not.
        assert_eq!(locate(b"a\r\n\r\n\n", 64), Head::Complete(5));
        assert_eq!(locate(b"a\r\nb\n", 4), Head::TooLarge);
    }

    #[test]
    fn lookups() {
        let f = Fields("Host: a\r\nX: 1 , ,2\r\nx:\t3 \r\nEmpty:\r\n");
        assert_eq!(f.get("host"), Some("a"));
        assert_eq!(f.get("missing"), None);
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.all("X").collect::<Vec<_>>(), ["1 , ,2", "3"]);
        assert_eq!(f.list("x").collect::<Vec<_>>(), ["1", "2", "3"]);
        assert!(f.has_token("X", "3"));
        assert!(!f.has_token("X", "4"));
        assert_eq!(f.single("Host"), Ok(Some("a")));
        assert_eq!(f.single("x"), Err(()));
        assert_eq!(f.single("nope"), Ok(None));
        assert_eq!(Fields("").iter().count(), 0);
    }
}
