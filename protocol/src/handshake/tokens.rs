//! Tokens and the `Sec-WebSocket-Extensions` grammar (RFC 6455 §9.1):
//!
//! ```text
//! extension-list = 1#extension
//! extension      = extension-token *( ";" extension-param )
//! extension-param = token [ "=" (token | quoted-string) ]
//! ```
//!
//! A quoted value must itself be a token once unquoted, so a valid list never holds `,` or `;` inside
//! quotes; the splitter still honours quotes so that a malformed quoted value cannot make a spurious
//! offer appear.

use super::fields::trim_ows;

/// Whether `b` is a `tchar` (RFC 9110 §5.6.2): a visible ASCII character other than a delimiter.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a `token` (RFC 9110 §5.6.2): one or more visible ASCII characters other than
/// delimiters, the grammar of subprotocol names and header field names.
///
/// ```
/// use ringws_protocol::handshake::is_token;
/// assert!(is_token("chat.v2"));
/// assert!(!is_token("two words") && !is_token(""));
/// ```
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// One extension in a `Sec-WebSocket-Extensions` list: its name and its parameters.
///
/// Only well-formed offers are ever built: every name is a token and every parameter value is a
/// token, possibly quoted.
///
/// ```
/// use ringws_protocol::handshake::{DEFAULT_MAX_HEADER_BYTES, Parse, parse_request};
///
/// let head = b"GET / HTTP/1.1\r\nHost: h\r\n\
///     Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"b\"\r\n\r\n";
/// let Parse::Complete(req) = parse_request(head, DEFAULT_MAX_HEADER_BYTES)? else { unreachable!() };
/// let offers: Vec<_> = req.extensions().collect();
/// assert_eq!(offers[0].name, "permessage-deflate");
/// assert_eq!(offers[0].params().collect::<Vec<_>>(), [("client_max_window_bits", None)]);
/// assert_eq!(offers[1].params().collect::<Vec<_>>(), [("a", Some("b"))]);
/// # Ok::<(), ringws_protocol::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionOffer<'a> {
    /// The extension's name, e.g. `permessage-deflate`.
    pub name: &'a str,
    /// Everything after the `;` that ends the name (already validated), or `""`.
    params: &'a str,
}

impl<'a> ExtensionOffer<'a> {
    /// The parameters in order, as `(name, value)`: `None` for a bare parameter, the value with its
    /// quotes removed otherwise.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.params
            .split(';')
            .map(trim_ows)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                None => (p, None),
                Some((name, value)) => (trim_ows(name), Some(unquote(trim_ows(value)))),
            })
    }

    /// The well-formed extensions of one `Sec-WebSocket-Extensions` value, in order (malformed
    /// elements are skipped). A client reads the server's selection, [`Response::extensions`]
    /// (already checked to be well formed), with it.
    ///
    /// [`Response::extensions`]: super::Response::extensions
    ///
    /// ```
    /// use ringws_protocol::handshake::ExtensionOffer;
    /// let selected: Vec<_> = ExtensionOffer::list("permessage-deflate; server_max_window_bits=10")
    ///     .map(|e| (e.name, e.params().collect::<Vec<_>>()))
    ///     .collect();
    /// assert_eq!(selected, [("permessage-deflate", vec![("server_max_window_bits", Some("10"))])]);
    /// ```
    pub fn list(value: &'a str) -> impl Iterator<Item = ExtensionOffer<'a>> {
        offers(value)
    }

    /// Parses one list element; `None` if it does not follow the grammar.
    ///
    /// A quoted value must unquote to a token (§9.1). Quoted values holding a backslash escape are
    /// refused even where the escape would unescape to a token: the API hands out borrowed text, and
    /// no real extension needs them.
    pub(super) fn parse(element: &'a str) -> Option<Self> {
        let (name, params, params_ok) = match element.split_once(';') {
            Some((name, params)) => (name, params, params.split(';').all(is_valid_param)),
            None => (element, "", true),
        };
        let name = trim_ows(name);
        (is_token(name) && params_ok).then_some(Self { name, params })
    }
}

/// Whether `param` (between semicolons) is `token [ "=" (token | quoted-string) ]`, with optional
/// whitespace around the parts.
fn is_valid_param(param: &str) -> bool {
    match param.split_once('=') {
        None => is_token(trim_ows(param)),
        Some((name, value)) => is_token(trim_ows(name)) && is_token(unquote(trim_ows(value))),
    }
}

/// Removes one pair of surrounding double quotes, if present.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Splits a header value at the commas that are outside quoted strings (a backslash inside quotes
/// escapes the next byte). Elements are returned untrimmed, empty ones included.
pub(super) fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// The well-formed offers in one `Sec-WebSocket-Extensions` value; malformed elements are skipped.
pub(super) fn offers(value: &str) -> impl Iterator<Item = ExtensionOffer<'_>> {
    split_list(value).filter_map(ExtensionOffer::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Param<'a> = (&'a str, Option<&'a str>);

    fn parse(element: &str) -> Option<(&str, Vec<Param<'_>>)> {
        ExtensionOffer::parse(element).map(|o| (o.name, o.params().collect()))
    }

    #[test]
    fn tokens() {
        assert!(is_token("permessage-deflate"));
        assert!(is_token("!#$%&'*+-.^_`|~09azAZ"));
        for bad in [
            "", "a b", "a,b", "a;b", "a=b", "\"a\"", "a/b", "é", "a\tb", "(a)",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn extension_elements() {
        assert_eq!(parse("x"), Some(("x", vec![])));
        assert_eq!(parse("  x  "), Some(("x", vec![])));
        assert_eq!(
            parse("permessage-deflate; client_max_window_bits; server_max_window_bits=10"),
            Some((
                "permessage-deflate",
                vec![
                    ("client_max_window_bits", None),
                    ("server_max_window_bits", Some("10"))
                ]
            ))
        );
        assert_eq!(
            parse("x-foo;a=\"b\" ; c = d"),
            Some(("x-foo", vec![("a", Some("b")), ("c", Some("d"))]))
        );
        for bad in [
            "",
            ";a",
            "x;",
            "x;;a",
            "x; a=",
            "x; =b",
            "x; a=\"\"",
            "x; a=\"b",
            "x; a=\"b c\"",
            "x; a=\"\\b\"",
            "x y",
            "x; a b",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn list_splitting_honours_quotes() {
        assert_eq!(
            split_list("a, b,,c").collect::<Vec<_>>(),
            ["a", " b", "", "c"]
        );
        assert_eq!(
            split_list("x; a=\"b, y\", z").collect::<Vec<_>>(),
            ["x; a=\"b, y\"", " z"]
        );
        assert_eq!(
            split_list("x; a=\"\\\", y\", z").collect::<Vec<_>>(),
            ["x; a=\"\\\", y\"", " z"]
        );
        assert_eq!(split_list("").collect::<Vec<_>>(), [""]);
        // The quoted comma cannot make "y" look like an offer of its own.
        let names: Vec<_> = offers("x; a=\"b, y, z\", w").map(|o| o.name).collect();
        assert_eq!(names, ["w"]);
    }
}
