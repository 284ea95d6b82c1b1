//! Server side: parsing the client's request head and checking the upgrade rules (RFC 6455 §4.2.1).

use super::MAX_HEADERS;
use super::accept::is_valid_key;
use super::fields::{Fields, Head, has_token, locate, start_line, trim_ows};
use super::tokens::{ExtensionOffer, is_token, offers};
use crate::error::Error;
use std::mem::MaybeUninit;

/// The outcome of [`parse_request`].
#[derive(Debug)]
pub enum Parse<'a> {
    /// No `\r\n\r\n` yet and still under the size limit: call again with more bytes.
    Partial,
    /// A complete request head.
    Complete(Request<'a>),
}

/// A parsed HTTP/1.1 request head, borrowed from the input.
///
/// Every accessor returns text borrowed from the buffer given to [`parse_request`]; nothing is
/// allocated or copied. Header values are trimmed of surrounding spaces and tabs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    method: &'a str,
    target: &'a str,
    minor_version: u8,
    fields: Fields<'a>,
    head_len: usize,
    upgrade: UpgradeFields<'a>,
}

/// The headers that routing and §4.2.1 look at, collected in the parse's one pass over the header
/// lines, so that [`Request::validate_upgrade`] and friends do not rescan the head.
#[derive(Debug, Clone, Copy, Default)]
struct UpgradeFields<'a> {
    host: Seen<'a>,
    /// The first `Origin`.
    origin: Option<&'a str>,
    version: Seen<'a>,
    key: Seen<'a>,
    /// Some `Upgrade` line lists `websocket`.
    upgrade_websocket: bool,
    /// Some `Connection` line lists `upgrade`.
    connection_upgrade: bool,
}

/// The first value of a header, and whether it appeared again.
#[derive(Debug, Clone, Copy, Default)]
struct Seen<'a> {
    first: Option<&'a str>,
    repeated: bool,
}

impl<'a> Seen<'a> {
    fn add(&mut self, value: &'a str) {
        match self.first {
            None => self.first = Some(value),
            Some(_) => self.repeated = true,
        }
    }

    /// The value if the header appeared exactly once.
    fn once(self) -> Option<&'a str> {
        self.first.filter(|_| !self.repeated)
    }
}

impl<'a> UpgradeFields<'a> {
    fn add(&mut self, name: &str, value: &'a str) {
        // eq_ignore_ascii_case compares lengths first, so most names are dismissed in one compare.
        if name.eq_ignore_ascii_case("Host") {
            self.host.add(value);
        } else if name.eq_ignore_ascii_case("Origin") {
            self.origin.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("Upgrade") {
            self.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("Connection") {
            self.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("Sec-WebSocket-Version") {
            self.version.add(value);
        } else if name.eq_ignore_ascii_case("Sec-WebSocket-Key") {
            self.key.add(value);
        }
    }
}

/// Parses a request head from `buf`, everything received so far on the connection.
///
/// Returns [`Parse::Partial`] until `\r\n\r\n` arrives. Errors, each mapped by [`Error::reply`] to the
/// status to answer with:
/// - [`Error::HeadersTooLarge`] (431): no terminator within `max_header_bytes`, or more than
///   [`MAX_HEADERS`] header lines;
/// - [`Error::UnsupportedHttpVersion`] (505): an `HTTP/` version other than 1.0 and 1.1;
/// - [`Error::MalformedRequest`] (400): anything else that is not HTTP/1.1 syntax, including a bare LF
///   line ending, obsolete line folding and text that is not UTF-8.
///
/// Syntax errors are reported as soon as the bytes that show them arrive, not only once the head is
/// complete, so a peer speaking another protocol is turned away at once. The engine calls this after
/// every receive; a call scans at most `max_header_bytes` bytes, whatever the buffer holds. Bytes
/// after the head (the first WebSocket frames of an eager client) are left alone: they start at
/// [`Request::head_len`].
pub fn parse_request(buf: &[u8], max_header_bytes: usize) -> Result<Parse<'_>, Error> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let head_len = match locate(buf, max_header_bytes) {
        Head::Complete(len) => len,
        Head::TooLarge => return Err(Error::HeadersTooLarge),
        Head::BareLf => return Err(Error::MalformedRequest),
        Head::Partial => {
            return match run_httparse(buf, &mut slots)? {
                None => Ok(Parse::Partial),
                // A complete head without a CRLFCRLF would need a bare LF, refused by locate.
                Some(_) => Err(Error::MalformedRequest),
            };
        }
    };
    let head = &buf[..head_len];
    let req = run_httparse(head, &mut slots)?.ok_or(Error::MalformedRequest)?;
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(Error::MalformedRequest);
    };
    let text = simdutf8::basic::from_utf8(head).map_err(|_| Error::MalformedRequest)?;
    let mut upgrade = UpgradeFields::default();
    for header in req.headers.iter() {
        // Cannot fail: the whole head is UTF-8 and a value is bounded by ASCII bytes.
        let value = std::str::from_utf8(header.value).map_err(|_| Error::MalformedRequest)?;
        upgrade.add(header.name, value);
    }
    // The header lines follow the request line's CRLF and precede the final one.
    let line_start = start_line(head);
    let fields_start = text[line_start..]
        .find('\n')
        .map_or(head_len, |i| line_start + i + 1);
    let fields = Fields(text.get(fields_start..head_len - 2).unwrap_or(""));
    Ok(Parse::Complete(Request {
        method,
        target,
        minor_version,
        fields,
        head_len,
        upgrade,
    }))
}

/// Runs httparse over `bytes` (a complete head, or all of a partial one), with `slots` for the
/// header lines: `Ok(None)` if it needs more bytes.
fn run_httparse<'b, 'h>(
    bytes: &'b [u8],
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<httparse::Request<'h, 'b>>, Error> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(bytes, slots) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => Ok(Some(req)),
        Err(httparse::Error::TooManyHeaders) => Err(Error::HeadersTooLarge),
        Err(httparse::Error::Version) if names_http_version(bytes) => {
            Err(Error::UnsupportedHttpVersion)
        }
        Err(_) => Err(Error::MalformedRequest),
    }
}

/// Whether the request line's last word starts with `HTTP/`: httparse takes only 1.0 and 1.1, so a
/// version error on such a line means another HTTP version (505), not garbage (400).
fn names_http_version(bytes: &[u8]) -> bool {
    let rest = &bytes[start_line(bytes)..];
    let line = rest.split(|&b| b == b'\r').next().unwrap_or(rest);
    line.rsplit(|&b| b == b' ')
        .next()
        .is_some_and(|word| word.starts_with(b"HTTP/"))
}

impl<'a> Request<'a> {
    /// The request method, e.g. `GET` (case-sensitive, RFC 9110 §9.1).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The raw request-target, e.g. `/chat?room=1`, or `ws://host/chat` in absolute form.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The path part of the target, before any `?`.
    ///
    /// For an absolute-form target (`scheme://authority/path?query`, which a server must accept per
    /// RFC 9112 §3.2.2) the scheme and authority are removed, and an empty path reads as `/`.
    pub fn path(&self) -> &'a str {
        let before_query = |s: &'a str| s.split_once('?').map_or(s, |(path, _)| path);
        match split_authority(self.target) {
            Some((_, rest)) => match before_query(rest) {
                "" => "/",
                path => path,
            },
            None => before_query(self.target),
        }
    }

    /// The query part of the target, after the first `?` (without it), if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The value of the first header named `name` (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.fields.get(name)
    }

    /// Every header as `(name, value)`, in the order received; values trimmed, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.fields.iter()
    }

    /// The authority the request is for: the target's authority for an absolute-form target (RFC 9112
    /// §3.2.2 makes it override `Host`), else the first `Host` header.
    pub fn host(&self) -> Option<&'a str> {
        split_authority(self.target)
            .map(|(authority, _)| authority)
            .or(self.upgrade.host.first)
    }

    /// The `Origin` header, which browsers send and which a server may check against a policy.
    pub fn origin(&self) -> Option<&'a str> {
        self.upgrade.origin
    }

    /// The value of the cookie `name` from the `Cookie` header(s) (RFC 6265 §5.4: `name=value` pairs
    /// separated by `;`), for authenticating a browser's upgrade (browsers cannot set other headers on
    /// a WebSocket request). Names compare case-sensitively; the first match wins; a value in double
    /// quotes is returned without them; a pair without `=` is skipped.
    ///
    /// ```
    /// use ringws_protocol::handshake::{DEFAULT_MAX_HEADER_BYTES, Parse, parse_request};
    /// let head = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: theme=dark; session=\"abc\"\r\n\r\n";
    /// let Parse::Complete(req) = parse_request(head, DEFAULT_MAX_HEADER_BYTES)? else { unreachable!() };
    /// assert_eq!(req.cookie("session"), Some("abc"));
    /// assert_eq!(req.cookie("Session"), None);
    /// # Ok::<(), ringws_protocol::Error>(())
    /// ```
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.fields
            .all("Cookie")
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| trim_ows(n) == name)
            .map(|(_, v)| {
                let v = trim_ows(v);
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
    }

    /// The length of the head in bytes, final `\r\n\r\n` included: WebSocket data starts there.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// Whether the client asks for a WebSocket upgrade: an `Upgrade` header lists the token
    /// `websocket` (ASCII case-insensitive). `false` means plain HTTP, for the engine's HTTP hook.
    ///
    /// A `true` does not mean the request is valid: check it with [`validate_upgrade`](Self::validate_upgrade).
    pub fn is_upgrade(&self) -> bool {
        self.upgrade.upgrade_websocket
    }

    /// Checks every rule of RFC 6455 §4.2.1 and returns the `Sec-WebSocket-Key`, to be passed to
    /// [`write_accept_response`](super::write_accept_response).
    ///
    /// The rules, checked in this order:
    /// - the method is `GET`, else [`Error::MethodNotGet`];
    /// - the version is HTTP/1.1, else [`Error::UnsupportedHttpVersion`];
    /// - exactly one non-empty `Host` header: [`Error::MissingHost`] if there is none, and
    ///   [`Error::MalformedRequest`] for several (RFC 9112 §3.2);
    /// - `Upgrade` lists `websocket`, else [`Error::MissingUpgradeWebsocket`];
    /// - `Connection` lists `upgrade`, else [`Error::MissingConnectionUpgrade`];
    /// - exactly one `Sec-WebSocket-Version`, equal to `13`, else [`Error::UnsupportedVersion`];
    /// - exactly one `Sec-WebSocket-Key`, the base64 of 16 bytes, else [`Error::InvalidKey`].
    ///
    /// Token lists are comma-separated, compared ASCII case-insensitively, and may be spread over
    /// repeated headers.
    pub fn validate_upgrade(&self) -> Result<&'a str, Error> {
        if self.method != "GET" {
            return Err(Error::MethodNotGet);
        }
        if self.minor_version < 1 {
            return Err(Error::UnsupportedHttpVersion);
        }
        let u = &self.upgrade;
        if u.host.repeated {
            return Err(Error::MalformedRequest);
        }
        if u.host.first.is_none_or(str::is_empty) {
            return Err(Error::MissingHost);
        }
        if !u.upgrade_websocket {
            return Err(Error::MissingUpgradeWebsocket);
        }
        if !u.connection_upgrade {
            return Err(Error::MissingConnectionUpgrade);
        }
        if u.version.once() != Some("13") {
            return Err(Error::UnsupportedVersion);
        }
        u.key
            .once()
            .filter(|key| is_valid_key(key))
            .ok_or(Error::InvalidKey)
    }

    /// The subprotocols the client offers, in order: the elements of every `Sec-WebSocket-Protocol`
    /// header, trimmed. Elements that are not tokens (RFC 6455 §4.1 item 10) are skipped, so whatever
    /// the server echoes back is safe to put in a header.
    pub fn subprotocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.fields
            .list("Sec-WebSocket-Protocol")
            .filter(|p| is_token(p))
    }

    /// The extensions the client offers, in order, from every `Sec-WebSocket-Extensions` header.
    /// Malformed elements are skipped: an offer the server cannot read is an offer it declines.
    pub fn extensions(&self) -> impl Iterator<Item = ExtensionOffer<'a>> + '_ {
        self.fields.all("Sec-WebSocket-Extensions").flat_map(offers)
    }
}

/// Splits an absolute-form target into its authority and the rest (path and query); `None` for an
/// origin-form or asterisk-form target.
fn split_authority(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    is_uri_scheme(scheme).then(|| rest.split_at(end))
}

/// Whether `s` is a URI scheme: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1), as in
/// absolute-form targets and `Origin` values.
///
/// ```
/// use ringws_protocol::handshake::is_uri_scheme;
/// assert!(is_uri_scheme("https") && is_uri_scheme("coap+ws"));
/// assert!(!is_uri_scheme("1ws") && !is_uri_scheme(""));
/// ```
pub fn is_uri_scheme(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = super::super::DEFAULT_MAX_HEADER_BYTES;

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse_request(buf, MAX) {
            Ok(Parse::Complete(req)) => req,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn err(buf: &[u8]) -> Error {
        match parse_request(buf, MAX) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// A valid upgrade request with `line` replacing (or, if new, added to) the headers.
    fn upgrade_with(replace: &str, line: Option<&str>) -> String {
        let headers = [
            "Host: server.example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        super::super::test_heads::head_with("GET /chat HTTP/1.1", &headers, replace, line)
    }

    fn validate(head: &str) -> Result<&str, Error> {
        complete(head.as_bytes()).validate_upgrade()
    }

    #[test]
    fn cookies_from_every_cookie_header() {
        let head = upgrade_with(
            "Cookie",
            Some("Cookie: a=1;b = 2 ; token=\"x.y\"\r\nCookie: flag; c=3=4; a=other"),
        );
        let req = complete(head.as_bytes());
        assert_eq!(req.cookie("a"), Some("1"), "first match wins");
        assert_eq!(req.cookie("b"), Some("2"));
        assert_eq!(req.cookie("token"), Some("x.y"), "quotes removed");
        assert_eq!(req.cookie("c"), Some("3=4"), "value holds the rest");
        assert_eq!(req.cookie("flag"), None, "a pair without '=' has no value");
        assert_eq!(req.cookie("A"), None, "names are case-sensitive");
        assert_eq!(
            complete(upgrade_with("Cookie", None).as_bytes()).cookie("a"),
            None
        );
    }

    // ---- RFC 6455 §1.2 example and real browsers ----

    #[test]
    fn rfc_example() {
        let head = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let req = complete(head);
        assert_eq!(req.method(), "GET");
        assert_eq!(req.target(), "/chat");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), None);
        assert_eq!(req.host(), Some("server.example.com"));
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.head_len(), head.len());
        assert!(req.is_upgrade());
        assert_eq!(req.validate_upgrade(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(
            req.subprotocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        assert_eq!(req.extensions().count(), 0);
        assert_eq!(req.headers().count(), 7);
    }

    #[test]
    fn chrome_request() {
        let head = b"GET /ws?room=lobby&x=1 HTTP/1.1\r\n\
            Host: localhost:9001\r\n\
            Connection: Upgrade\r\n\
            Pragma: no-cache\r\n\
            Cache-Control: no-cache\r\n\
            User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
            Upgrade: websocket\r\n\
            Origin: http://localhost:8080\r\n\
            Sec-WebSocket-Version: 13\r\n\
            Accept-Encoding: gzip, deflate, br, zstd\r\n\
            Accept-Language: en-US,en;q=0.9\r\n\
            Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        let req = complete(head);
        assert_eq!(req.path(), "/ws");
        assert_eq!(req.query(), Some("room=lobby&x=1"));
        assert_eq!(req.host(), Some("localhost:9001"));
        assert_eq!(req.origin(), Some("http://localhost:8080"));
        assert_eq!(req.header("user-agent").map(|ua| ua.len()), Some(101));
        assert_eq!(req.validate_upgrade(), Ok("x3JJHMbDL1EzLkh9GBhXDw=="));
        let ext: Vec<_> = req.extensions().collect();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].name, "permessage-deflate");
        assert_eq!(
            ext[0].params().collect::<Vec<_>>(),
            [("client_max_window_bits", None)]
        );
        assert_eq!(req.subprotocols().count(), 0);
    }

    #[test]
    fn firefox_request() {
        let head = b"GET /socket HTTP/1.1\r\n\
            Host: 127.0.0.1:9001\r\n\
            User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n\
            Accept: */*\r\n\
            Accept-Language: en-US,en;q=0.5\r\n\
            Accept-Encoding: gzip, deflate, br\r\n\
            Sec-WebSocket-Version: 13\r\n\
            Origin: http://127.0.0.1:8000\r\n\
            Sec-WebSocket-Protocol: graphql-ws\r\n\
            Sec-WebSocket-Extensions: permessage-deflate\r\n\
            Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\
            Connection: keep-alive, Upgrade\r\n\
            Sec-Fetch-Dest: empty\r\n\
            Sec-Fetch-Mode: websocket\r\n\
            Sec-Fetch-Site: same-origin\r\n\
            Pragma: no-cache\r\n\
            Cache-Control: no-cache\r\n\
            Upgrade: websocket\r\n\r\n";
        let req = complete(head);
        assert_eq!(req.validate_upgrade(), Ok("AQIDBAUGBwgJCgsMDQ4PEA=="));
        assert_eq!(req.subprotocols().collect::<Vec<_>>(), ["graphql-ws"]);
        let ext: Vec<_> = req.extensions().map(|e| e.name).collect();
        assert_eq!(ext, ["permessage-deflate"]);
        assert_eq!(req.header("CONNECTION"), Some("keep-alive, Upgrade"));
    }

    // ---- incremental input and limits ----

    #[test]
    fn one_byte_at_a_time() {
        let head = upgrade_with("X-None", None);
        let bytes = head.as_bytes();
        for end in 0..bytes.len() {
            match parse_request(&bytes[..end], MAX) {
                Ok(Parse::Partial) => {}
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
        let req = complete(bytes);
        assert_eq!(req.head_len(), bytes.len());
        assert!(req.validate_upgrade().is_ok());
    }

    #[test]
    fn trailing_bytes_are_not_part_of_the_head() {
        let mut buf = upgrade_with("X-None", None).into_bytes();
        let head_len = buf.len();
        buf.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        assert_eq!(complete(&buf).head_len(), head_len);
    }

    #[test]
    fn over_the_limit_is_431() {
        let head = upgrade_with("X-None", Some(&format!("X-Big: {}", "a".repeat(9000))));
        assert_eq!(err(head.as_bytes()), Error::HeadersTooLarge);
        assert_eq!(Error::HeadersTooLarge.reply(), crate::Reply::Status(431));
        // No terminator yet, but already at the limit: no point in waiting for more.
        assert_eq!(
            parse_request(&head.as_bytes()[..MAX], MAX).unwrap_err(),
            Error::HeadersTooLarge
        );
        // A head that ends exactly at the limit is accepted; one byte less is not.
        let exact = upgrade_with("X-None", None);
        assert!(matches!(
            parse_request(exact.as_bytes(), exact.len()),
            Ok(Parse::Complete(_))
        ));
        assert_eq!(
            parse_request(exact.as_bytes(), exact.len() - 1).unwrap_err(),
            Error::HeadersTooLarge
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..10_000 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        // Even with a limit large enough for the bytes, the header count is bounded.
        assert_eq!(
            parse_request(head.as_bytes(), 1 << 20).unwrap_err(),
            Error::HeadersTooLarge
        );
        // Already while the head is still arriving.
        assert_eq!(
            parse_request(&head.as_bytes()[..head.len() / 2], 1 << 20).unwrap_err(),
            Error::HeadersTooLarge
        );
        // MAX_HEADERS lines are fine.
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(complete(head.as_bytes()).headers().count(), MAX_HEADERS);
    }

    // ---- syntax ----

    #[test]
    fn malformed_requests_are_400() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: h\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\n: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
            b"GET /\xc3\x28 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / FOO/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"\r\n\r\n\r\nGET\r\n\r\n",
        ] {
            assert_eq!(
                parse_request(bad, MAX).unwrap_err(),
                Error::MalformedRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(Error::MalformedRequest.reply(), crate::Reply::Status(400));
    }

    #[test]
    fn malformed_prefixes_fail_early() {
        // Garbage is refused before any terminator arrives.
        assert_eq!(err(b"\x16\x03\x01"), Error::MalformedRequest);
        assert_eq!(err(b"GET / HTTP/1.1\nHost"), Error::MalformedRequest);
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nBad Name: x\r\n"),
            Error::MalformedRequest
        );
        assert_eq!(err(b"GET / HTTP/2"), Error::UnsupportedHttpVersion);
    }

    #[test]
    fn other_http_versions_are_505() {
        for bad in [
            &b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ] {
            assert_eq!(err(bad), Error::UnsupportedHttpVersion);
        }
        // HTTP/1.0 parses (the HTTP hook may answer it) but cannot upgrade.
        let head = upgrade_with("X-None", None).replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(validate(&head), Err(Error::UnsupportedHttpVersion));
        assert_eq!(
            Error::UnsupportedHttpVersion.reply(),
            crate::Reply::Status(505)
        );
    }

    #[test]
    fn leading_empty_lines_are_ignored() {
        let head = format!("\r\n\r\n{}", upgrade_with("X-None", None));
        let req = complete(head.as_bytes());
        assert_eq!(req.method(), "GET");
        assert_eq!(req.head_len(), head.len());
        assert!(req.validate_upgrade().is_ok());
    }

    #[test]
    fn no_headers_and_empty_values() {
        let req = complete(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(req.headers().count(), 0);
        assert_eq!(req.header("Host"), None);
        assert!(!req.is_upgrade());
        assert_eq!(req.validate_upgrade(), Err(Error::MissingHost));
        let req = complete(b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Spaces:  \t \r\nY:\ta b \r\n\r\n");
        assert_eq!(
            req.headers().collect::<Vec<_>>(),
            [("X-Empty", ""), ("X-Spaces", ""), ("Y", "a b")]
        );
    }

    #[test]
    fn non_ascii_utf8_values_are_kept() {
        let req = complete("GET /caf\u{e9} HTTP/1.1\r\nX-Name: J\u{fc}rgen\r\n\r\n".as_bytes());
        assert_eq!(req.path(), "/caf\u{e9}");
        assert_eq!(req.header("x-name"), Some("J\u{fc}rgen"));
    }

    // ---- targets ----

    #[test]
    fn targets() {
        let req = complete(b"GET /a/b?x=1?y HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.query()), ("/a/b", Some("x=1?y")));
        let req = complete(b"GET /? HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.query()), ("/", Some("")));
        let req = complete(b"GET ws://other.example:80/chat?q HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.query()), ("/chat", Some("q")));
        assert_eq!(req.host(), Some("other.example:80"));
        let req = complete(b"GET http://other.example HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.query()), ("/", None));
        assert_eq!(req.host(), Some("other.example"));
        let req = complete(b"GET https://x?q HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            (req.path(), req.query(), req.host()),
            ("/", Some("q"), Some("x"))
        );
        // Not a scheme: stays a path.
        let req = complete(b"GET /r?u=http://x/y HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.host()), ("/r", Some("h")));
        let req = complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path(), req.query()), ("*", None));
    }

    // ---- §4.2.1, one test per rule ----

    #[test]
    fn valid_upgrade_returns_the_key() {
        assert_eq!(
            validate(&upgrade_with("X-None", None)),
            Ok("dGhlIHNhbXBsZSBub25jZQ==")
        );
    }

    #[test]
    fn method_must_be_get() {
        let head = upgrade_with("X-None", None).replacen("GET", "POST", 1);
        assert_eq!(validate(&head), Err(Error::MethodNotGet));
        let head = upgrade_with("X-None", None).replacen("GET", "get", 1);
        assert_eq!(validate(&head), Err(Error::MethodNotGet));
        assert_eq!(Error::MethodNotGet.reply(), crate::Reply::Status(405));
    }

    #[test]
    fn host_is_required_once() {
        assert_eq!(
            validate(&upgrade_with("Host", None)),
            Err(Error::MissingHost)
        );
        assert_eq!(
            validate(&upgrade_with("Host", Some("Host:"))),
            Err(Error::MissingHost)
        );
        assert_eq!(
            validate(&upgrade_with("X-None", Some("host: again"))),
            Err(Error::MalformedRequest)
        );
        assert_eq!(Error::MissingHost.reply(), crate::Reply::Status(400));
    }

    #[test]
    fn upgrade_must_list_websocket() {
        assert_eq!(
            validate(&upgrade_with("Upgrade", None)),
            Err(Error::MissingUpgradeWebsocket)
        );
        assert_eq!(
            validate(&upgrade_with("Upgrade", Some("Upgrade: h2c"))),
            Err(Error::MissingUpgradeWebsocket)
        );
        assert_eq!(
            validate(&upgrade_with("Upgrade", Some("Upgrade: websocket2"))),
            Err(Error::MissingUpgradeWebsocket)
        );
        for ok in [
            "Upgrade: WebSocket",
            "Upgrade: h2c, websocket",
            "Upgrade: ,  WEBSOCKET ,",
        ] {
            assert!(validate(&upgrade_with("Upgrade", Some(ok))).is_ok(), "{ok}");
        }
        // Spread over repeated headers.
        let head = upgrade_with("Upgrade", Some("Upgrade: h2c\r\nUpgrade: websocket"));
        assert!(validate(&head).is_ok());
        assert!(!complete(upgrade_with("Upgrade", None).as_bytes()).is_upgrade());
        assert_eq!(
            Error::MissingUpgradeWebsocket.reply(),
            crate::Reply::Status(400)
        );
    }

    #[test]
    fn connection_must_list_upgrade() {
        assert_eq!(
            validate(&upgrade_with("Connection", None)),
            Err(Error::MissingConnectionUpgrade)
        );
        assert_eq!(
            validate(&upgrade_with("Connection", Some("Connection: keep-alive"))),
            Err(Error::MissingConnectionUpgrade)
        );
        assert_eq!(
            validate(&upgrade_with(
                "Connection",
                Some("Connection: keep-alive upgrade")
            )),
            Err(Error::MissingConnectionUpgrade)
        );
        for ok in [
            "Connection: upgrade",
            "Connection: keep-alive, Upgrade",
            "Connection: keep-alive\r\nConnection: UPGRADE",
        ] {
            assert!(
                validate(&upgrade_with("Connection", Some(ok))).is_ok(),
                "{ok}"
            );
        }
        assert_eq!(
            Error::MissingConnectionUpgrade.reply(),
            crate::Reply::Status(400)
        );
    }

    #[test]
    fn version_must_be_13() {
        for bad in [
            None,
            Some("Sec-WebSocket-Version: 8"),
            Some("Sec-WebSocket-Version: 13, 8"),
            Some("Sec-WebSocket-Version: 013"),
            Some("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13"),
        ] {
            assert_eq!(
                validate(&upgrade_with("Sec-WebSocket-Version", bad)),
                Err(Error::UnsupportedVersion),
                "{bad:?}"
            );
        }
        assert_eq!(Error::UnsupportedVersion.reply(), crate::Reply::Status(426));
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        for bad in [
            None,
            Some("Sec-WebSocket-Key:"),
            Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"),
            Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZT8="),
            Some("Sec-WebSocket-Key: not base64 at all!!!!!!"),
            Some(
                "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==",
            ),
        ] {
            assert_eq!(
                validate(&upgrade_with("Sec-WebSocket-Key", bad)),
                Err(Error::InvalidKey),
                "{bad:?}"
            );
        }
        // Surrounding whitespace is not part of the value.
        let head = upgrade_with(
            "Sec-WebSocket-Key",
            Some("Sec-WebSocket-Key: \t AQIDBAUGBwgJCgsMDQ4PEA== "),
        );
        assert_eq!(validate(&head), Ok("AQIDBAUGBwgJCgsMDQ4PEA=="));
        assert_eq!(Error::InvalidKey.reply(), crate::Reply::Status(400));
    }

    // ---- subprotocols and extensions ----

    #[test]
    fn subprotocol_lists() {
        let head = upgrade_with(
            "X-None",
            Some(
                "Sec-WebSocket-Protocol: chat, , v2.json\r\nSec-WebSocket-Protocol:mqtt ,bad value,x",
            ),
        );
        let req = complete(head.as_bytes());
        assert_eq!(
            req.subprotocols().collect::<Vec<_>>(),
            ["chat", "v2.json", "mqtt", "x"]
        );
    }

    #[test]
    fn extension_lists_with_parameters() {
        let head = upgrade_with(
            "X-None",
            Some(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"b\"\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate;server_no_context_takeover;server_max_window_bits=10, bad ext, x-bar",
            ),
        );
        let req = complete(head.as_bytes());
        let offers: Vec<_> = req
            .extensions()
            .map(|e| (e.name, e.params().collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            offers,
            [
                ("permessage-deflate", vec![("client_max_window_bits", None)]),
                ("x-foo", vec![("a", Some("b"))]),
                (
                    "permessage-deflate",
                    vec![
                        ("server_no_context_takeover", None),
                        ("server_max_window_bits", Some("10"))
                    ]
                ),
                ("x-bar", vec![]),
            ]
        );
    }

    // ---- robustness ----

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                               max in 0usize..4096) {
                if let Ok(Parse::Complete(req)) = parse_request(&bytes, max) {
                    prop_assert!(req.head_len() <= max.min(bytes.len()));
                    exercise(&req);
                }
            }

            #[test]
            fn never_panics_on_mutated_upgrades(
                edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            ) {
                let mut bytes = upgrade_with(
                    "X-None",
                    Some("Sec-WebSocket-Extensions: a; b=\"c\", d\r\nSec-WebSocket-Protocol: p, q"),
                ).into_bytes();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                for end in [bytes.len() / 2, bytes.len()] {
                    if let Ok(Parse::Complete(req)) = parse_request(&bytes[..end], MAX) {
                        exercise(&req);
                    }
                }
            }
        }

        /// Calls every accessor, so that a panic anywhere in them fails the property.
        fn exercise(req: &Request<'_>) {
            let _ = (
                req.method(),
                req.target(),
                req.path(),
                req.query(),
                req.host(),
                req.origin(),
            );
            let _ = (req.is_upgrade(), req.validate_upgrade(), req.header("host"));
            let _ = req.headers().count() + req.subprotocols().count();
            for offer in req.extensions() {
                let _ = offer.params().count();
            }
        }
    }
}
