//! The HTTP side of `ringws serve`: what an upgrade request must contain (RFC 6455 §4.2.1), the
//! status codes for bad ones (§4.2.2: 400, 426 with `Sec-WebSocket-Version: 13`, 431 for an
//! oversized head), a plain GET that is not an upgrade, and frames that arrive in the same write as
//! the request.

mod common;

use common::{Frame, RFC_KEY, RawClient, Server, http_request};

/// An upgrade request with the given header lines replacing the defaults (a `None` value drops the
/// header). The RFC sample key is used, so a `101` can be checked against the RFC's accept value.
fn request(overrides: &[(&str, Option<&str>)]) -> String {
    let defaults = [
        ("Host", Some("127.0.0.1")),
        ("Upgrade", Some("websocket")),
        ("Connection", Some("Upgrade")),
        ("Sec-WebSocket-Key", Some(RFC_KEY)),
        ("Sec-WebSocket-Version", Some("13")),
    ];
    let mut out = String::from("GET /chat HTTP/1.1\r\n");
    for (name, value) in defaults {
        let value = overrides
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(value, |(_, v)| *v);
        if let Some(value) = value {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in overrides {
        let known = defaults.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if let (false, Some(value)) = (known, value) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    out
}

#[test]
fn plain_get_gets_an_http_response_not_101() {
    let server = Server::start(&[]);
    let (resp, head) = http_request(server.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_ne!(resp.status, 101, "a non-upgrade GET was upgraded:\n{head}");
    assert!(
        (200..600).contains(&resp.status),
        "status out of range:\n{head}"
    );
}

#[test]
fn missing_or_malformed_key_is_400() {
    let server = Server::start(&[]);
    let cases = [
        ("Sec-WebSocket-Key", None),
        ("Sec-WebSocket-Key", Some("not base64!")),
        ("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZQ==")), // base64 of 10 bytes, not 16
    ];
    for (name, value) in cases {
        let (resp, head) = http_request(server.addr, request(&[(name, value)]).as_bytes());
        assert_eq!(resp.status, 400, "{name}: {value:?}\n{head}");
    }
}

#[test]
fn missing_host_is_400() {
    let server = Server::start(&[]);
    let (resp, head) = http_request(server.addr, request(&[("Host", None)]).as_bytes());
    assert_eq!(resp.status, 400, "{head}");
}

#[test]
fn unsupported_version_is_426_with_version_13() {
    let server = Server::start(&[]);
    for version in ["8", "12", "14"] {
        let req = request(&[("Sec-WebSocket-Version", Some(version))]);
        let (resp, head) = http_request(server.addr, req.as_bytes());
        assert_eq!(resp.status, 426, "version {version}:\n{head}");
        assert_eq!(
            resp.header("sec-websocket-version"),
            Some("13"),
            "version {version}:\n{head}"
        );
    }
}

#[test]
fn oversized_request_head_is_431() {
    let server = Server::start(&[]);
    let big = "a".repeat(16 << 10);
    let req = request(&[("X-Padding", Some(big.as_str()))]);
    let mut client = RawClient::tcp(server.addr);
    // The server may answer and close before reading it all: a failed write is not the test's concern.
    let _ = client.try_write(req.as_bytes());
    let head = client.read_http_head();
    let resp = common::HttpResponse::parse(&head);
    assert_eq!(resp.status, 431, "{head}");
}

/// Header names are case-insensitive and `Connection`/`Upgrade` are token lists (browsers send
/// `Connection: keep-alive, Upgrade`); a path with a query is fine.
#[test]
fn header_case_and_token_lists_accepted() {
    let server = Server::start(&[]);
    let req = format!(
        "GET /path?query=1 HTTP/1.1\r\nhost: 127.0.0.1\r\nUPGRADE: WebSocket\r\n\
         connection: keep-alive, Upgrade\r\nsec-websocket-key: {RFC_KEY}\r\n\
         SEC-WEBSOCKET-VERSION: 13\r\nOrigin: http://127.0.0.1\r\nUser-Agent: test\r\n\r\n"
    );
    let mut c = RawClient::connect_with(server.addr, req.as_bytes());
    c.echo(Frame::text("case-insensitive"));
    c.close_normally();
}

/// An extension offer the server does not support is ignored (no `Sec-WebSocket-Extensions` in the
/// 101, checked by the raw client) and frames then flow uncompressed.
#[test]
fn unsupported_extension_offer_ignored() {
    let server = Server::start(&[]);
    let req = request(&[(
        "Sec-WebSocket-Extensions",
        Some("permessage-deflate; client_max_window_bits"),
    )]);
    let mut c = RawClient::connect_with(server.addr, req.as_bytes());
    c.echo(Frame::text("uncompressed"));
    c.close_normally();
}

/// Frames sent in the same write as the upgrade request are not lost.
#[test]
fn frames_in_the_same_write_as_the_request() {
    let server = Server::start(&[]);
    let mut bytes = common::upgrade_request(server.addr).into_bytes();
    bytes.extend(Frame::text("early bird").encode(Some([9, 8, 7, 6])));
    bytes.extend(Frame::ping("early ping").encode(Some([1, 3, 5, 7])));
    let mut c = RawClient::connect_with(server.addr, &bytes);
    c.expect_text(b"early bird");
    c.expect_pong(b"early ping");
    c.close_normally();
}
