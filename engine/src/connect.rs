//! BridgePublication connections: the client side of the engine (RFC 6455 §4.1).
//!
//! A worker opens client connections on the same ring, provided-buffer ring, output queues and timer
//! wheel as the connections it accepts, and delivers their messages to the same [`Handler`]: a
//! server can consume upstream feeds next to its clients, and an engine without a listener
//! ([`ServerBuilder::client_only`]) is a client.
//!
//! A connection is requested with [`Context::connect`], from [`Handler::on_start`],
//! [`Handler::on_wake`] or any callback through [`Socket::context`]. At the end of the loop turn
//! the worker creates the socket (binding the source address first if one is set, with
//! `IP_BIND_ADDRESS_NO_PORT`, so the port is picked at connect time per destination and many source
//! addresses share the port range), submits an io_uring `CONNECT` (Linux 5.5), and once connected
//! queues the upgrade request and arms the multishot receive. The `101` is validated with
//! [`ClientHandshake::parse_response`](ringws_protocol::handshake::ClientHandshake::parse_response);
//! then `on_open` runs and the connection behaves like an accepted one, except that its frames are
//! masked and the server's must not be. At most [`MAX_DIALING`] connects per worker are in progress;
//! later requests wait their turn. `handshake_timeout` bounds connect and upgrade together. A
//! connection that fails before it opens gets [`Handler::on_connect_error`] with its state
//! instead of `on_close`.
//!
//! Masking keys come from the kernel's CSPRNG, a fresh one per frame (see `conn::keys`), applied
//! while the payload is copied into the output queue.
//!
//! This module is plain data (where and how to connect, and why a connect failed): the worker's
//! dialer (`worker::dial`) does the connecting.
//!
//! Closing: after its Close frame is written a client does not shut its write side down; it waits
//! for the server to close the TCP connection first (§7.1.1), so the `TIME_WAIT` state, and the
//! port it holds, stays on the server.
//!
//! [`Handler`]: crate::Handler
//! [`Handler::on_start`]: crate::Handler::on_start
//! [`Handler::on_wake`]: crate::Handler::on_wake
//! [`Handler::on_connect_error`]: crate::Handler::on_connect_error
//! [`ServerBuilder::client_only`]: crate::ServerBuilder::client_only

use crate::tls::TlsClient;
use ringws_protocol::deflate::DeflateConfig;
use ringws_protocol::handshake::is_token;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// Connects in progress per worker at most; further requests wait in a queue. Bounds the burst of
/// SYNs one worker puts on a listener's backlog (the server's default backlog is 4096 per worker).
pub const MAX_DIALING: usize = 512;

/// Where and how to connect: a `ws://` URL resolved to an address, an optional source address, the
/// subprotocols to offer and extra request headers. Cloning is cheap (the target is shared).
///
/// ```
/// use ringws_engine::Connect;
/// let c = Connect::new("ws://127.0.0.1:9001/feed?depth=10")?
///     .protocol("v2.feed")?
///     .header("Authorization", "Bearer t0k3n")?
///     .source("127.0.0.2".parse().unwrap());
/// assert_eq!(c.addr().port(), 9001);
/// assert_eq!(c.path(), "/feed?depth=10");
/// # Ok::<(), ringws_engine::ConnectError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Connect {
    target: Arc<Target>,
    source: Option<IpAddr>,
}

/// The shared part of a [`Connect`].
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// The `Host` value: the URL's authority (RFC 6455 §4.1: host, and port if not the default).
    host: String,
    /// The request target in origin form, `/` at least.
    path: String,
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
    /// The permessage-deflate policy to offer, if any.
    deflate: Option<DeflateConfig>,
    /// `SO_RCVBUF` set before connecting, if any.
    recv_buffer: Option<usize>,
    /// `wss://`: whom to trust, and the name the certificate must carry (the URL's host).
    tls: Option<(TlsClient, ServerName<'static>)>,
}

impl Connect {
    /// Parses a `ws://host[:port][/path][?query]` (port 80 by default) or
    /// `wss://host[:port][/path][?query]` URL (TLS, port 443 by default, the server's certificate
    /// checked against the Mozilla roots — see [`tls`](Self::tls) for others) and resolves the
    /// host with the system resolver (`ToSocketAddrs`, blocking), keeping the first address.
    ///
    /// User info, fragments (RFC 6455 §3 forbids them) and characters that cannot appear in a
    /// request line are refused ([`ConnectError::InvalidUrl`]).
    pub fn new(url: &str) -> Result<Self, ConnectError> {
        let Url {
            authority,
            host,
            port,
            path,
            secure,
        } = parse_url(url)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tls = if secure {
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|_| ConnectError::InvalidUrl("the host is not a valid TLS server name"))?;
            Some((TlsClient::webpki_roots(), name))
        } else {
            None
        };
        let addr = (bare, port)
            .to_socket_addrs()
            .map_err(ConnectError::Resolve)?
            .next()
            .ok_or_else(|| {
                ConnectError::Resolve(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the host has no address",
                ))
            })?;
        Ok(Self {
            target: Arc::new(Target {
                addr,
                host: authority.to_owned(),
                path,
                protocols: Vec::new(),
                headers: Vec::new(),
                deflate: None,
                recv_buffer: None,
                tls,
            }),
            source: None,
        })
    }

    /// For a `wss://` URL: whom to trust instead of the Mozilla roots (a private CA, or — for
    /// tests only — [`TlsClient::dangerous_accept_any_certificate`]). No effect on `ws://`.
    pub fn tls(mut self, client: TlsClient) -> Self {
        let target = Arc::make_mut(&mut self.target);
        if let Some((trust, _)) = target.tls.as_mut() {
            *trust = client;
        }
        self
    }

    /// The TLS trust and server name of a `wss://` connection.
    pub(crate) fn tls_target(&self) -> Option<&(TlsClient, ServerName<'static>)> {
        self.target.tls.as_ref()
    }

    /// Offers a subprotocol (offered in the order added). The server's choice is checked to be one
    /// of them. Errors unless `name` is an RFC 9110 token.
    pub fn protocol(mut self, name: &str) -> Result<Self, ConnectError> {
        if !is_token(name) {
            return Err(ConnectError::InvalidHeader("a subprotocol must be a token"));
        }
        Arc::make_mut(&mut self.target)
            .protocols
            .push(name.to_owned());
        Ok(self)
    }

    /// Adds a request header (`Origin`, `Authorization`, cookies). Errors unless `name` is a token
    /// and `value` holds no CR, LF or NUL, or if `name` is one the handshake writes itself.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, ConnectError> {
        const OWN: [&str; 6] = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
        ];
        if !is_token(name) || OWN.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            return Err(ConnectError::InvalidHeader(
                "a header name must be a token not written by the handshake",
            ));
        }
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(ConnectError::InvalidHeader(
                "a header value must not hold CR, LF or NUL",
            ));
        }
        Arc::make_mut(&mut self.target)
            .headers
            .push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Offers permessage-deflate (RFC 7692) with `policy` ([`DeflateConfig::offer`]). The server's
    /// answer is checked against the offer ([`Params::from_response`]; anything the offer did not
    /// allow fails the connection with [`ConnectError::Handshake`]); if it agrees, messages of at
    /// least [`min_compress_size`](DeflateConfig::min_compress_size) bytes are sent compressed
    /// and compressed messages are received, both ways under the agreed parameters. A server
    /// that declines leaves the connection uncompressed.
    ///
    /// ```
    /// use ringws_engine::{Connect, DeflateConfig};
    /// let c = Connect::new("ws://127.0.0.1:9001/")?.deflate(DeflateConfig::default());
    /// assert!(c.deflate_policy().is_some());
    /// # Ok::<(), ringws_engine::ConnectError>(())
    /// ```
    ///
    /// [`Params::from_response`]: ringws_protocol::deflate::Params::from_response
    pub fn deflate(mut self, policy: DeflateConfig) -> Self {
        Arc::make_mut(&mut self.target).deflate = Some(policy);
        self
    }

    /// The permessage-deflate policy offered, if any.
    pub fn deflate_policy(&self) -> Option<&DeflateConfig> {
        self.target.deflate.as_ref()
    }

    /// Connects from this local address (the port is picked by the kernel). Spreading connections
    /// over several source addresses passes the ~28k ephemeral ports of one address to one server.
    pub fn source(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    /// Sets `SO_RCVBUF` (bytes; Linux doubles it) on the socket before connecting, so the window
    /// scale fits it and the kernel's receive autotuning is off: a client that stops reading then
    /// leaves at most this much in its own kernel buffer, the rest waiting at the server. Default:
    /// autotuning (up to `net.ipv4.tcp_rmem`'s maximum, several MB).
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.target).recv_buffer = Some(bytes);
        self
    }

    /// The `SO_RCVBUF` set before connecting, if any.
    pub fn recv_buffer_size(&self) -> Option<usize> {
        self.target.recv_buffer
    }

    /// The resolved server address.
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    /// The request target (path and query).
    pub fn path(&self) -> &str {
        &self.target.path
    }

    /// The source address, if one was set.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source
    }

    /// Appends the upgrade request of `handshake` for this target.
    pub(crate) fn write_request(
        &self,
        handshake: &ringws_protocol::handshake::ClientHandshake,
        out: &mut Vec<u8>,
    ) {
        let t = &*self.target;
        let protocols: Vec<&str> = t.protocols.iter().map(String::as_str).collect();
        let headers: Vec<(&str, &str)> = t
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let offer = t.deflate.map(|d| d.offer());
        handshake.write_request(
            out,
            &t.host,
            &t.path,
            &protocols,
            offer.as_deref(),
            &headers,
        );
    }

    /// The offered subprotocols, to check the server's choice against.
    pub(crate) fn protocols(&self) -> impl Iterator<Item = &str> {
        self.target.protocols.iter().map(String::as_str)
    }
}

/// The parts of a `ws://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    /// `host[:port]` as written: the `Host` header value.
    authority: &'a str,
    /// The host; IPv6 literals keep their brackets.
    host: &'a str,
    port: u16,
    /// The request target, `/` at least.
    path: String,
    /// `wss://`.
    secure: bool,
}

/// Splits a `ws://` or `wss://` URL into its parts.
fn parse_url(url: &str) -> Result<Url<'_>, ConnectError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConnectError::InvalidUrl("expected ws://host[:port][/path]"));
    };
    let secure = scheme.eq_ignore_ascii_case("wss");
    if !secure && !scheme.eq_ignore_ascii_case("ws") {
        return Err(ConnectError::InvalidUrl(
            "the scheme must be ws:// or wss://",
        ));
    }
    if rest.contains('#') {
        return Err(ConnectError::InvalidUrl(
            "a WebSocket URL has no fragment (RFC 6455 §3)",
        ));
    }
    if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConnectError::InvalidUrl(
            "spaces and control characters must be percent-encoded",
        ));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.contains('@') {
        return Err(ConnectError::InvalidUrl("user info is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or(ConnectError::InvalidUrl("unclosed [ in the host"))?;
        let host = &authority[..end + 2];
        match &v6[end + 1..] {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or(ConnectError::InvalidUrl("junk after ]"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(ConnectError::InvalidUrl("the host is empty"));
    }
    let port = match port {
        None if secure => 443,
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(ConnectError::InvalidUrl("the port must be 1-65535"))?,
    };
    let path = match target.as_bytes().first() {
        None => "/".to_owned(),
        Some(b'?') => format!("/{target}"),
        Some(_) => target.to_owned(),
    };
    Ok(Url {
        authority,
        host,
        port,
        path,
        secure,
    })
}

/// Why a client connection failed before it opened (see [`Handler::on_connect_error`]), or why
/// a [`Connect`] could not be built.
///
/// [`Handler::on_connect_error`]: crate::Handler::on_connect_error
#[non_exhaustive]
#[derive(Debug)]
pub enum ConnectError {
    /// The URL is not one this client can use; the text says why.
    InvalidUrl(&'static str),
    /// A subprotocol or header given to [`Connect`] is malformed; the text says why.
    InvalidHeader(&'static str),
    /// The host did not resolve.
    Resolve(io::Error),
    /// A system call failed: creating the socket, binding the source address, or the connect itself
    /// (refused, unreachable, out of ports or descriptors).
    Io {
        /// The step that failed.
        during: &'static str,
        /// The error.
        error: io::Error,
    },
    /// The server's answer is not a valid `101` (RFC 6455 §4.1: the client must fail the connection).
    Handshake(ringws_protocol::Error),
    /// `wss://`: the TLS handshake failed (an untrusted or mismatched certificate, a protocol
    /// error, an alert from the server).
    Tls(rustls::Error),
    /// The connection ended before the `101` arrived.
    Closed,
    /// No `101` within `handshake_timeout` of the start of the connect.
    Timeout,
    /// The worker is shutting down.
    Shutdown,
}

impl ConnectError {
    /// A short, stable name of the kind of failure (`"refused"`, `"handshake"`, ...), for counting
    /// failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) | Self::InvalidHeader(_) => "invalid",
            Self::Resolve(_) => "resolve",
            Self::Io { error, .. } => match error.kind() {
                io::ErrorKind::ConnectionRefused => "refused",
                io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => "address",
                io::ErrorKind::TimedOut => "timeout",
                _ => "io",
            },
            Self::Handshake(_) => "handshake",
            Self::Tls(_) => "tls",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            Self::InvalidHeader(why) => write!(f, "invalid request header: {why}"),
            Self::Resolve(e) => write!(f, "resolving the host: {e}"),
            Self::Io { during, error } => write!(f, "{during}: {error}"),
            Self::Handshake(e) => write!(f, "invalid handshake response: {e}"),
            Self::Tls(e) => write!(f, "TLS: {e}"),
            Self::Closed => f.write_str("the connection ended before the handshake response"),
            Self::Timeout => f.write_str("no handshake response within handshake_timeout"),
            Self::Shutdown => f.write_str("the worker is shutting down"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Resolve(e) | Self::Io { error: e, .. } => Some(e),
            Self::Handshake(e) => Some(e),
            Self::Tls(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_host_port_and_target() {
        let ok = |u: &str| parse_url(u).map(|u| (u.host.to_owned(), u.port, u.path));
        assert_eq!(
            ok("ws://127.0.0.1:9001/").unwrap(),
            ("127.0.0.1".into(), 9001, "/".into())
        );
        assert_eq!(
            ok("ws://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(ok("WS://h:1?x=1").unwrap(), ("h".into(), 1, "/?x=1".into()));
        assert_eq!(
            ok("ws://[::1]:8080/a/b").unwrap(),
            ("[::1]".into(), 8080, "/a/b".into())
        );
        assert_eq!(ok("ws://[::1]/").unwrap(), ("[::1]".into(), 80, "/".into()));
        assert_eq!(ok("wss://h/x").unwrap(), ("h".into(), 443, "/x".into()));
        for bad in [
            "http://h/",
            "h:80",
            "ws://h/#frag",
            "ws://u@h/",
            "ws://h:0/",
            "ws://h:65536/",
            "ws://h:x/",
            "ws:///path",
            "ws://h/a b",
            "ws://[::1/",
            "ws://[::1]x/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn connect_keeps_the_authority_as_host_and_validates_extras() {
        let c = Connect::new("ws://127.0.0.1:9001/chat?room=1").unwrap();
        assert_eq!(c.target.host, "127.0.0.1:9001");
        assert_eq!(c.addr(), "127.0.0.1:9001".parse().unwrap());
        let c = c
            .protocol("chat")
            .unwrap()
            .header("Origin", "http://x")
            .unwrap();
        let mut out = Vec::new();
        let hs = ringws_protocol::handshake::ClientHandshake::with_key(*b"the sample nonce");
        c.write_request(&hs, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Sec-WebSocket-Protocol: chat\r\nOrigin: http://x\r\n\r\n"),
            "{text}"
        );
        assert!(c.clone().protocol("two words").is_err());
        assert!(c.clone().header("Host", "evil").is_err());
        assert!(c.clone().header("X-A", "a\r\nInjected: 1").is_err());
        let other = c.clone().protocol("v2").unwrap();
        assert_eq!(
            c.protocols().count(),
            1,
            "clones share the target until changed"
        );
        assert_eq!(other.protocols().collect::<Vec<_>>(), ["chat", "v2"]);
    }

    #[test]
    fn error_kinds_are_stable_names() {
        let io = |k| ConnectError::Io {
            during: "connecting",
            error: io::Error::from(k),
        };
        assert_eq!(io(io::ErrorKind::ConnectionRefused).kind(), "refused");
        assert_eq!(io(io::ErrorKind::AddrNotAvailable).kind(), "address");
        assert_eq!(ConnectError::Timeout.kind(), "timeout");
        let e = ConnectError::Handshake(ringws_protocol::Error::UnexpectedStatus(403));
        assert_eq!(e.kind(), "handshake");
        assert!(
            e.to_string().starts_with("invalid handshake response: "),
            "{e}"
        );
        assert!(e.to_string().contains("403"), "{e}");
    }
}
