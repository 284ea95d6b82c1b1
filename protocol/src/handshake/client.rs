//! Client side: building the upgrade request and validating the server's answer (RFC 6455 §4.1).

use super::MAX_HEADERS;
use super::accept::accept_key;
use super::fields::{Fields, Head, locate, start_line};
use super::response::push_field;
use super::tokens::{ExtensionOffer, is_token, offers, split_list};
use crate::error::Error;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::mem::MaybeUninit;

/// One client handshake: the `Sec-WebSocket-Key` it sends and the `Sec-WebSocket-Accept` it expects.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: [u8; 24],
    accept: [u8; 28],
}

/// The outcome of [`ClientHandshake::parse_response`].
#[derive(Debug)]
pub enum ResponseParse<'a> {
    /// No `\r\n\r\n` yet: call again with more bytes.
    Partial,
    /// A valid `101` response: the connection is a WebSocket from [`Response::head_len`] on.
    Complete(Response<'a>),
}

/// A validated `101 Switching Protocols` response, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The length of the head, final `\r\n\r\n` included: the server's first frame starts here.
    pub head_len: usize,
    /// The subprotocol the server selected, one of those offered.
    pub protocol: Option<&'a str>,
    /// The `Sec-WebSocket-Extensions` value the server sent; every extension in it was offered.
    pub extensions: Option<&'a str>,
}

impl Default for ClientHandshake {
    /// Same as [`ClientHandshake::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHandshake {
    /// A handshake with a fresh random key, as RFC 6455 §4.1 requires for every connection.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails (`getrandom(2)` unavailable), which a
    /// supported Linux kernel does not do.
    pub fn new() -> Self {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).expect("the OS random source failed");
        Self::with_key(raw)
    }

    /// A handshake whose key is the base64 of `raw`: deterministic, for tests and test vectors.
    pub fn with_key(raw: [u8; 16]) -> Self {
        let mut key = [0u8; 24];
        // 16 bytes encode to exactly 24 characters with padding, so the slice always fits.
        let written = STANDARD.encode_slice(raw, &mut key);
        debug_assert_eq!(written, Ok(24));
        Self {
            key,
            accept: accept_key(&key),
        }
    }

    /// The `Sec-WebSocket-Key` this handshake sends (24 base64 characters).
    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.key).expect("base64 output is ASCII")
    }

    /// Appends the upgrade request for `path` on `host`.
    ///
    /// `host` is the `Host` value (`name` or `name:port`); `path` the request target in origin form
    /// (`/chat?room=1`; an empty path is sent as `/`). `protocols` are offered in order of
    /// preference in one `Sec-WebSocket-Protocol` header (none if empty); `extensions` is sent as the
    /// `Sec-WebSocket-Extensions` value; `extra_headers` (cookies, authorization, `Origin`) follow.
    /// None of these may contain CR or LF. Pass the same `protocols` and `extensions` to
    /// [`parse_response`](Self::parse_response).
    ///
    /// ```
    /// use ringws_protocol::handshake::ClientHandshake;
    /// let mut out = Vec::new();
    /// ClientHandshake::with_key(*b"the sample nonce").write_request(
    ///     &mut out, "server.example.com", "/chat", &["chat", "superchat"], None,
    ///     &[("Origin", "http://example.com")],
    /// );
    /// assert_eq!(
    ///     out,
    ///     b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
    ///     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    ///     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
    ///     Origin: http://example.com\r\n\r\n"
    /// );
    /// ```
    pub fn write_request(
        &self,
        out: &mut Vec<u8>,
        host: &str,
        path: &str,
        protocols: &[&str],
        extensions: Option<&str>,
        extra_headers: &[(&str, &str)],
    ) {
        debug_assert!(
            !path.contains([' ', '\r', '\n']),
            "path {path:?} would break the request line"
        );
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_field(out, "Host", host.as_bytes());
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        push_field(out, "Sec-WebSocket-Key", &self.key);
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
        if let Some((first, rest)) = protocols.split_first() {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(first.as_bytes());
            for protocol in rest {
                out.extend_from_slice(b", ");
                out.extend_from_slice(protocol.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        if let Some(extensions) = extensions {
            push_field(out, "Sec-WebSocket-Extensions", extensions.as_bytes());
        }
        for (name, value) in extra_headers {
            push_field(out, name, value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Validates the server's response from `buf`, everything received so far.
    ///
    /// Returns [`ResponseParse::Partial`] until `\r\n\r\n` arrives. Otherwise checks, in order
    /// (RFC 6455 §4.1, the client MUST fail the connection on each):
    /// - HTTP/1.1 syntax, no bare LF, UTF-8, head within `max_header_bytes` and [`MAX_HEADERS`]
    ///   lines, else [`Error::MalformedResponse`];
    /// - status 101, else [`Error::UnexpectedStatus`] with the status;
    /// - `Upgrade: websocket` and `Connection` listing `upgrade`, else [`Error::MalformedResponse`];
    /// - exactly one `Sec-WebSocket-Accept` ([`Error::MalformedResponse`] if missing or repeated),
    ///   equal to the expected value, else [`Error::AcceptMismatch`];
    /// - at most one `Sec-WebSocket-Protocol`, a single token ([`Error::MalformedResponse`]), one of
    ///   `offered_protocols`, else [`Error::UnofferedSelection`];
    /// - at most one well-formed `Sec-WebSocket-Extensions` ([`Error::MalformedResponse`]), every
    ///   extension named in `offered_extensions`, else [`Error::UnofferedSelection`].
    ///
    /// RFC 6455 erratum 3433 allows the selected extensions to be split over several header lines;
    /// [`Response::extensions`] has room for one value, so such a response is refused as malformed
    /// rather than have an extension negotiated that the caller cannot see.
    pub fn parse_response<'a>(
        &self,
        buf: &'a [u8],
        offered_protocols: &[&str],
        offered_extensions: Option<&str>,
        max_header_bytes: usize,
    ) -> Result<ResponseParse<'a>, Error> {
        let head_len = match locate(buf, max_header_bytes) {
            Head::Complete(len) => len,
            Head::TooLarge => return Err(Error::MalformedResponse),
            Head::BareLf => return Err(Error::MalformedResponse),
            Head::Partial => {
                return match status_line(buf)? {
                    None => Ok(ResponseParse::Partial),
                    // A complete head without a CRLFCRLF would need a bare LF, refused by locate.
                    Some(_) => Err(Error::MalformedResponse),
                };
            }
        };
        let head = &buf[..head_len];
        let (status, minor_version) = status_line(head)?.ok_or(Error::MalformedResponse)?;
        if status != 101 {
            return Err(Error::UnexpectedStatus(status));
        }
        if minor_version != 1 {
            return Err(Error::MalformedResponse);
        }
        let text = simdutf8::basic::from_utf8(head).map_err(|_| Error::MalformedResponse)?;
        let line_start = start_line(head);
        let fields_start = text[line_start..]
            .find('\n')
            .map_or(head_len, |i| line_start + i + 1);
        let fields = Fields(text.get(fields_start..head_len - 2).unwrap_or(""));

        let mut upgrade = fields.list("Upgrade");
        let upgrade_ok = upgrade
            .next()
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
            && upgrade.next().is_none();
        if !upgrade_ok || !fields.has_token("Connection", "upgrade") {
            return Err(Error::MalformedResponse);
        }
        match fields.single("Sec-WebSocket-Accept") {
            Ok(Some(accept)) if accept.as_bytes() == self.accept => {}
            Ok(Some(_)) => return Err(Error::AcceptMismatch),
            Ok(None) | Err(()) => return Err(Error::MalformedResponse),
        }
        let protocol = fields
            .single("Sec-WebSocket-Protocol")
            .map_err(|()| Error::MalformedResponse)?;
        if let Some(protocol) = protocol {
            if !is_token(protocol) {
                return Err(Error::MalformedResponse);
            }
            if !offered_protocols.contains(&protocol) {
                return Err(Error::UnofferedSelection);
            }
        }
        let extensions = fields
            .single("Sec-WebSocket-Extensions")
            .map_err(|()| Error::MalformedResponse)?;
        if let Some(selected) = extensions {
            check_extensions(selected, offered_extensions)?;
        }
        Ok(ResponseParse::Complete(Response {
            head_len,
            protocol,
            extensions,
        }))
    }
}

/// Checks a response's `Sec-WebSocket-Extensions` value: a non-empty list of well-formed extensions,
/// each named in the client's offer.
fn check_extensions(selected: &str, offered: Option<&str>) -> Result<(), Error> {
    let mut count = 0;
    for element in split_list(selected).filter(|e| !e.trim().is_empty()) {
        let extension = ExtensionOffer::parse(element).ok_or(Error::MalformedResponse)?;
        if !offered.is_some_and(|o| offers(o).any(|offer| offer.name == extension.name)) {
            return Err(Error::UnofferedSelection);
        }
        count += 1;
    }
    if count == 0 {
        return Err(Error::MalformedResponse);
    }
    Ok(())
}

/// Runs httparse over `bytes` (a complete head, or all of a partial one): `Ok(None)` if it needs more
/// bytes, else the status code and the HTTP minor version.
fn status_line(bytes: &[u8]) -> Result<Option<(u16, u8)>, Error> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, bytes, &mut slots);
    match (parsed, resp.code, resp.version) {
        (Ok(httparse::Status::Partial), ..) => Ok(None),
        (Ok(httparse::Status::Complete(_)), Some(code), Some(minor)) => Ok(Some((code, minor))),
        _ => Err(Error::MalformedResponse),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        DEFAULT_MAX_HEADER_BYTES as MAX, Parse, parse_request, write_accept_response,
        write_response,
    };
    use super::*;

    const RFC_KEY: [u8; 16] = *b"the sample nonce";

    fn client() -> ClientHandshake {
        ClientHandshake::with_key(RFC_KEY)
    }

    /// The RFC's 101 with `line` replacing (or, if new, added to) its headers.
    fn response_with(replace: &str, line: Option<&str>) -> String {
        let headers = [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ];
        super::super::test_heads::head_with(
            "HTTP/1.1 101 Switching Protocols",
            &headers,
            replace,
            line,
        )
    }

    fn parse<'a>(
        head: &'a str,
        protocols: &[&str],
        extensions: Option<&str>,
    ) -> Result<Response<'a>, Error> {
        match client().parse_response(head.as_bytes(), protocols, extensions, MAX)? {
            ResponseParse::Complete(resp) => Ok(resp),
            ResponseParse::Partial => panic!("partial: {head:?}"),
        }
    }

    #[test]
    fn keys() {
        let c = client();
        assert_eq!(c.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&c.accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let (a, b) = (ClientHandshake::new(), ClientHandshake::default());
        assert_eq!(a.key().len(), 24);
        assert_ne!(a.key(), b.key(), "two random keys collided");
        assert!(super::super::accept::is_valid_key(a.key()));
    }

    #[test]
    fn request_is_byte_exact() {
        let mut out = Vec::new();
        client().write_request(
            &mut out,
            "localhost:9001",
            "",
            &[],
            Some("permessage-deflate; client_max_window_bits"),
            &[("Cookie", "a=b"), ("Origin", "http://x")],
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET / HTTP/1.1\r\nHost: localhost:9001\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Cookie: a=b\r\nOrigin: http://x\r\n\r\n"
        );
    }

    #[test]
    fn round_trip_through_the_server_side() {
        let c = ClientHandshake::new();
        let protocols = ["v2.chat", "v1.chat"];
        let extensions = "permessage-deflate; client_max_window_bits, x-foo";
        let mut request = Vec::new();
        c.write_request(
            &mut request,
            "127.0.0.1:9001",
            "/room?id=7",
            &protocols,
            Some(extensions),
            &[("Origin", "http://127.0.0.1")],
        );

        let Ok(Parse::Complete(req)) = parse_request(&request, MAX) else {
            panic!(
                "server could not parse {:?}",
                String::from_utf8_lossy(&request)
            )
        };
        assert_eq!(req.head_len(), request.len());
        assert_eq!((req.path(), req.query()), ("/room", Some("id=7")));
        assert_eq!(req.host(), Some("127.0.0.1:9001"));
        assert_eq!(req.origin(), Some("http://127.0.0.1"));
        let key = req.validate_upgrade().expect("valid upgrade");
        assert_eq!(key, c.key());
        assert_eq!(req.subprotocols().collect::<Vec<_>>(), protocols);
        let chosen = req.subprotocols().nth(1);
        let names: Vec<_> = req.extensions().map(|e| e.name).collect();
        assert_eq!(names, ["permessage-deflate", "x-foo"]);

        let mut response = Vec::new();
        write_accept_response(&mut response, key, chosen, Some("x-foo"));
        response.extend_from_slice(b"\x81\x02hi");
        let resp = match c.parse_response(&response, &protocols, Some(extensions), MAX) {
            Ok(ResponseParse::Complete(resp)) => resp,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            resp,
            Response {
                head_len: response.len() - 4,
                protocol: Some("v1.chat"),
                extensions: Some("x-foo"),
            }
        );
    }

    #[test]
    fn partial_until_the_end_of_the_head() {
        let head = response_with("X-None", None);
        for end in 0..head.len() {
            match client().parse_response(&head.as_bytes()[..end], &[], None, MAX) {
                Ok(ResponseParse::Partial) => {}
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
        assert_eq!(
            parse(&head, &[], None),
            Ok(Response {
                head_len: head.len(),
                protocol: None,
                extensions: None
            })
        );
    }

    // ---- each client-side failure ----

    #[test]
    fn status_other_than_101() {
        let mut out = Vec::new();
        write_response(&mut out, 403, &[], b"go away");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(parse(&text, &[], None), Err(Error::UnexpectedStatus(403)));
        let head = response_with("X-None", None).replace("101 Switching Protocols", "200 OK");
        assert_eq!(parse(&head, &[], None), Err(Error::UnexpectedStatus(200)));
        assert_eq!(Error::UnexpectedStatus(200).reply(), crate::Reply::Drop);
    }

    #[test]
    fn malformed_responses() {
        for bad in [
            "HTTP/1.1 101\nUpgrade: websocket\n\n".to_string(),
            "HTTP/1.1 1O1 Switching Protocols\r\n\r\n".to_string(),
            "HTTP/2 101\r\n\r\n".to_string(),
            "SSH-2.0-OpenSSH_9.6\r\n\r\n".to_string(),
            response_with("X-None", None).replace("HTTP/1.1", "HTTP/1.0"),
            response_with("X-None", Some("Bad Header: x")),
            response_with("X-None", Some(" folded")),
        ] {
            assert_eq!(
                parse(&bad, &[], None),
                Err(Error::MalformedResponse),
                "{bad:?}"
            );
        }
        assert_eq!(
            client()
                .parse_response(b"HTTP/1.1 101 OK\r\nX: \xff\r\n\r\n", &[], None, MAX)
                .unwrap_err(),
            Error::MalformedResponse
        );
        // Garbage is refused before the head is complete.
        assert_eq!(
            client()
                .parse_response(b"\x16\x03\x01", &[], None, MAX)
                .unwrap_err(),
            Error::MalformedResponse
        );
        assert_eq!(Error::MalformedResponse.reply(), crate::Reply::Drop);
    }

    #[test]
    fn oversized_response_head() {
        let head = response_with("X-None", Some(&format!("X-Big: {}", "a".repeat(100))));
        assert_eq!(
            client()
                .parse_response(head.as_bytes(), &[], None, 64)
                .unwrap_err(),
            Error::MalformedResponse
        );
        let mut many = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            client()
                .parse_response(many.as_bytes(), &[], None, 1 << 20)
                .unwrap_err(),
            Error::MalformedResponse
        );
    }

    #[test]
    fn upgrade_and_connection_are_required() {
        for (replace, line) in [
            ("Upgrade", None),
            ("Upgrade", Some("Upgrade: h2c")),
            ("Upgrade", Some("Upgrade: websocket, h2c")),
            ("Connection", None),
            ("Connection", Some("Connection: keep-alive")),
        ] {
            assert_eq!(
                parse(&response_with(replace, line), &[], None),
                Err(Error::MalformedResponse),
                "{replace} {line:?}"
            );
        }
        for (replace, line) in [
            ("Upgrade", Some("Upgrade: WebSocket")),
            ("Connection", Some("Connection: keep-alive, upgrade")),
        ] {
            assert!(parse(&response_with(replace, line), &[], None).is_ok());
        }
    }

    #[test]
    fn accept_must_match() {
        let wrong = Some("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOO=");
        assert_eq!(
            parse(&response_with("Sec-WebSocket-Accept", wrong), &[], None),
            Err(Error::AcceptMismatch)
        );
        assert_eq!(
            parse(&response_with("Sec-WebSocket-Accept", None), &[], None),
            Err(Error::MalformedResponse)
        );
        let twice = Some("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            parse(&response_with("X-None", twice), &[], None),
            Err(Error::MalformedResponse)
        );
        // Another key's accept value does not do.
        let other = ClientHandshake::with_key([0; 16]);
        let head = response_with("X-None", None);
        assert_eq!(
            other
                .parse_response(head.as_bytes(), &[], None, MAX)
                .unwrap_err(),
            Error::AcceptMismatch
        );
        assert_eq!(Error::AcceptMismatch.reply(), crate::Reply::Drop);
    }

    #[test]
    fn subprotocol_must_be_offered() {
        let chat = Some("Sec-WebSocket-Protocol: chat");
        assert_eq!(
            parse(&response_with("X-None", chat), &["superchat", "chat"], None).map(|r| r.protocol),
            Ok(Some("chat"))
        );
        assert_eq!(
            parse(&response_with("X-None", chat), &["superchat"], None),
            Err(Error::UnofferedSelection)
        );
        assert_eq!(
            parse(&response_with("X-None", chat), &[], None),
            Err(Error::UnofferedSelection)
        );
        // Case matters: the server must echo one of the offered values.
        assert_eq!(
            parse(&response_with("X-None", chat), &["Chat"], None),
            Err(Error::UnofferedSelection)
        );
        for bad in [
            "Sec-WebSocket-Protocol: chat, superchat",
            "Sec-WebSocket-Protocol:",
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat",
        ] {
            assert_eq!(
                parse(
                    &response_with("X-None", Some(bad)),
                    &["chat", "superchat"],
                    None
                ),
                Err(Error::MalformedResponse),
                "{bad}"
            );
        }
        assert_eq!(Error::UnofferedSelection.reply(), crate::Reply::Drop);
    }

    #[test]
    fn extensions_must_be_offered() {
        let offered = Some("permessage-deflate; client_max_window_bits, x-foo; a=\"b\"");
        let line = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10";
        assert_eq!(
            parse(&response_with("X-None", Some(line)), &[], offered).map(|r| r.extensions),
            Ok(Some("permessage-deflate; server_max_window_bits=10"))
        );
        let both = "Sec-WebSocket-Extensions: x-foo, permessage-deflate";
        assert!(parse(&response_with("X-None", Some(both)), &[], offered).is_ok());
        for (line, offered) in [
            ("Sec-WebSocket-Extensions: x-bar", offered),
            ("Sec-WebSocket-Extensions: x-foo, x-bar", offered),
            ("Sec-WebSocket-Extensions: x-foo", None),
        ] {
            assert_eq!(
                parse(&response_with("X-None", Some(line)), &[], offered),
                Err(Error::UnofferedSelection),
                "{line}"
            );
        }
        for line in [
            "Sec-WebSocket-Extensions:",
            "Sec-WebSocket-Extensions: ,",
            "Sec-WebSocket-Extensions: x-foo; a=\"b",
            "Sec-WebSocket-Extensions: x foo",
            "Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate",
        ] {
            assert_eq!(
                parse(&response_with("X-None", Some(line)), &[], offered),
                Err(Error::MalformedResponse),
                "{line}"
            );
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn parse_response_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024),
                                           max in 0usize..2048) {
                let result = client().parse_response(&bytes, &["chat"], Some("x-foo; a=b"), max);
                if let Ok(ResponseParse::Complete(resp)) = result {
                    prop_assert!(resp.head_len <= max.min(bytes.len()));
                }
            }
        }
    }
}
