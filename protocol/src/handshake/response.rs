//! Server side: the 101 that completes a handshake, and small HTTP/1.1 responses for plain HTTP
//! requests and refused upgrades.
//!
//! Names and values passed to these writers are written as given: they must not contain CR or LF
//! (checked in debug builds). Values taken from a parsed [`Request`](super::Request) never do.

use super::accept::accept_key;
use crate::error::{Error, Reply};

/// Appends the `101 Switching Protocols` response that accepts a WebSocket upgrade.
///
/// `key` is the client's `Sec-WebSocket-Key` as returned by
/// [`Request::validate_upgrade`](super::Request::validate_upgrade); `protocol` is the subprotocol the
/// server selected (one of [`Request::subprotocols`](super::Request::subprotocols)), `extensions` the
/// negotiated `Sec-WebSocket-Extensions` value. Headers are written in this order:
///
/// ```text
/// HTTP/1.1 101 Switching Protocols\r\n
/// Upgrade: websocket\r\n
/// Connection: Upgrade\r\n
/// Sec-WebSocket-Accept: <accept_key(key)>\r\n
/// [Sec-WebSocket-Protocol: <protocol>\r\n]
/// [Sec-WebSocket-Extensions: <extensions>\r\n]
/// \r\n
/// ```
pub fn write_accept_response(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let accept = accept_key(key.as_bytes());
    // Sized once: a server answers thousands of handshakes at once in a burst, and a buffer grown
    // piece by piece leaves its smaller copies behind in the allocator.
    let field = |name: &str, len: usize| name.len() + 2 + len + 2;
    let optional = |name: &str, value: Option<&str>| value.map_or(0, |v| field(name, v.len()));
    out.reserve(
        HEAD.len()
            + field("Sec-WebSocket-Accept", accept.len())
            + optional("Sec-WebSocket-Protocol", protocol)
            + optional("Sec-WebSocket-Extensions", extensions)
            + 2,
    );
    out.extend_from_slice(HEAD);
    push_field(out, "Sec-WebSocket-Accept", &accept);
    if let Some(protocol) = protocol {
        push_field(out, "Sec-WebSocket-Protocol", protocol.as_bytes());
    }
    if let Some(extensions) = extensions {
        push_field(out, "Sec-WebSocket-Extensions", extensions.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete HTTP/1.1 response that ends the connection: status line with its reason
/// phrase, the given headers in order, `Content-Length`, `Connection: close`, an empty line, the body.
///
/// For the engine's HTTP hook (health checks, metrics, a page) and for refusing an upgrade. A 1xx,
/// 204 or 304 response carries no content (RFC 9110 §6.4.1), so for those statuses neither
/// `Content-Length` nor `body` is written. `headers` must not include `Content-Length` or
/// `Connection`. `status` must have three digits (100-999).
///
/// ```
/// use ringws_protocol::handshake::write_response;
/// let mut out = Vec::new();
/// write_response(&mut out, 200, &[("Content-Type", "text/plain")], b"ok");
/// assert_eq!(
///     out,
///     b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
/// );
/// ```
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    debug_assert!(
        (100..=999).contains(&status),
        "status {status} is not three digits"
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status.into());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        push_field(out, name, value.as_bytes());
    }
    let has_content = !matches!(status, 100..=199 | 204 | 304);
    if has_content {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if has_content {
        out.extend_from_slice(body);
    }
}

/// The HTTP status [`write_error_response`] answers a handshake error with: the error's own
/// status, or 500 for an error that is not about the request.
pub fn error_status(err: &Error) -> u16 {
    match err.reply() {
        Reply::Status(status) => status,
        Reply::Close(_) | Reply::Drop => 500,
    }
}

/// Appends the response that refuses a handshake for `err`: its status from [`Error::reply`], a
/// `text/plain` body holding the error's `Display` text, and, for 426, the
/// `Sec-WebSocket-Version: 13` header that tells the client which version to retry with (RFC 6455
/// §4.2.2).
///
/// Only errors answered with [`Reply::Status`] belong here; any other error is a bug in the caller,
/// answered with 500 so that the peer still sees a well-formed response.
///
/// ```
/// use ringws_protocol::{Error, handshake::write_error_response};
/// let mut out = Vec::new();
/// write_error_response(&mut out, &Error::MissingHost);
/// assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
/// assert!(out.ends_with(b"\r\n\r\nmissing Host header"));
/// ```
pub fn write_error_response(out: &mut Vec<u8>, err: &Error) {
    let status = error_status(err);
    let body = err.to_string();
    let content_type = ("Content-Type", "text/plain; charset=utf-8");
    let headers: &[(&str, &str)] = if status == 426 {
        &[content_type, ("Sec-WebSocket-Version", "13")]
    } else {
        &[content_type]
    };
    write_response(out, status, headers, body.as_bytes());
}

/// The reason phrase for a status code (RFC 9110 §15), or `""` for an unregistered code: the
/// phrase is informational and may be empty (RFC 9112 §4).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Appends `name: value\r\n`.
pub(super) fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    debug_assert!(
        !name.contains(['\r', '\n']) && !value.contains(&b'\r') && !value.contains(&b'\n'),
        "CR or LF in header {name:?}: it would split the response"
    );
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn accept_response_is_byte_exact() {
        let mut out = b"previous".to_vec();
        write_accept_response(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", None, None);
        assert_eq!(
            text(&out),
            "previousHTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );

        let mut out = Vec::new();
        write_accept_response(
            &mut out,
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("chat"),
            Some("permessage-deflate; server_no_context_takeover"),
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        );
        assert_eq!(
            out.capacity(),
            out.len(),
            "one allocation of the exact size"
        );
    }

    #[test]
    fn plain_response_is_byte_exact() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            404,
            &[("Content-Type", "text/html"), ("X-A", "b")],
            b"<h1>no</h1>",
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nX-A: b\r\n\
             Content-Length: 11\r\nConnection: close\r\n\r\n<h1>no</h1>"
        );
        let mut out = Vec::new();
        write_response(&mut out, 200, &[], b"");
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response(&mut out, 599, &[], &[b'x'; 1234]);
        assert!(text(&out).starts_with("HTTP/1.1 599 \r\nContent-Length: 1234\r\n"));
        assert_eq!(
            out.len(),
            "HTTP/1.1 599 \r\nContent-Length: 1234\r\nConnection: close\r\n\r\n".len() + 1234
        );
    }

    #[test]
    fn no_content_statuses_have_no_length_or_body() {
        for status in [100, 101, 204, 304] {
            let mut out = Vec::new();
            write_response(&mut out, status, &[("ETag", "\"x\"")], b"ignored");
            assert_eq!(
                text(&out),
                format!(
                    "HTTP/1.1 {status} {}\r\nETag: \"x\"\r\nConnection: close\r\n\r\n",
                    reason_phrase(status)
                )
            );
        }
    }

    #[test]
    fn error_responses_are_byte_exact() {
        let mut out = Vec::new();
        write_error_response(&mut out, &Error::UnsupportedVersion);
        assert_eq!(
            text(&out),
            "HTTP/1.1 426 Upgrade Required\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Content-Length: 31\r\n\
             Connection: close\r\n\r\n\
             Sec-WebSocket-Version is not 13"
        );
        let mut out = Vec::new();
        write_error_response(&mut out, &Error::HeadersTooLarge);
        assert_eq!(
            text(&out),
            "HTTP/1.1 431 Request Header Fields Too Large\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 40\r\n\
             Connection: close\r\n\r\n\
             request header block over the size limit"
        );
    }

    #[test]
    fn every_handshake_status_has_its_phrase() {
        for (err, status, phrase) in [
            (Error::MalformedRequest, 400, "Bad Request"),
            (Error::ForbiddenOrigin, 403, "Forbidden"),
            (Error::MethodNotGet, 405, "Method Not Allowed"),
            (Error::UnsupportedVersion, 426, "Upgrade Required"),
            (
                Error::HeadersTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (
                Error::UnsupportedHttpVersion,
                505,
                "HTTP Version Not Supported",
            ),
        ] {
            let mut out = Vec::new();
            write_error_response(&mut out, &err);
            let status_line = format!("HTTP/1.1 {status} {phrase}\r\n");
            assert!(text(&out).starts_with(&status_line), "{}", text(&out));
            assert!(text(&out).ends_with(&format!("\r\n\r\n{err}")));
            // 426 is the only one that names the supported version.
            assert_eq!(text(&out).contains("Sec-WebSocket-Version"), status == 426);
        }
    }

    #[test]
    fn non_status_errors_get_500() {
        let mut out = Vec::new();
        write_error_response(&mut out, &Error::InvalidUtf8);
        assert!(text(&out).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 100, 65_535, usize::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(text(&out), n.to_string());
        }
    }
}
