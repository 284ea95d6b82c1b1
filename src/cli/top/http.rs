//! The one HTTP request `ringws top` makes: `GET /metrics` over a plain `std::net::TcpStream`
//! (HTTP/1.1, `Connection: close`), with a deadline on the whole exchange. A body comes with a
//! `Content-Length`, chunked, or up to the end of the connection; nothing else of HTTP is needed.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The largest response read (head and body): a `/metrics` page of a server with many workers is
/// some hundred KiB; anything far larger is not one.
const MAX_RESPONSE: usize = 16 << 20;

/// Where to GET the metrics: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT` (IPv6 hosts in brackets): what to connect to and the `Host` header.
    authority: String,
    /// The path and query, starting with `/`.
    path: String,
}

impl Target {
    /// Reads `http://HOST:PORT/PATH`, `http://HOST:PORT` or `HOST:PORT` (no path: `/metrics`;
    /// no port: 80). Other schemes (https) are refused: the server serves `/metrics` in plain HTTP.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{scheme}:// is not supported: give http://HOST:PORT/metrics"
                ));
            }
            None => url,
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = match path {
            "" | "/" => "/metrics".to_owned(),
            p if p.starts_with('?') => format!("/metrics{p}"),
            p => p.to_owned(),
        };
        let port_ok = |p: &str| !p.is_empty() && p.parse::<u16>().is_ok();
        let authority = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((_, "")) => format!("{authority}:80"),
                Some((_, port)) if port.strip_prefix(':').is_some_and(port_ok) => {
                    authority.to_owned()
                }
                _ => return Err("expected [IPv6]:PORT".to_owned()),
            }
        } else {
            match authority.split_once(':') {
                None => format!("{authority}:80"),
                Some((host, port)) if !host.is_empty() && port_ok(port) => authority.to_owned(),
                _ => return Err("expected HOST:PORT (e.g. 127.0.0.1:9001)".to_owned()),
            }
        };
        if authority.starts_with(':') || authority.contains(char::is_whitespace) {
            return Err("expected HOST:PORT (e.g. 127.0.0.1:9001)".to_owned());
        }
        Ok(Target { authority, path })
    }

    /// GETs the target and returns the body of a `200 OK` answer, all within `timeout`.
    pub fn get(&self, timeout: Duration) -> Result<Vec<u8>, FetchError> {
        let deadline = Instant::now() + timeout;
        let mut stream = self.connect(deadline)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\
             User-Agent: ringws-top\r\n\r\n",
            self.path, self.authority
        );
        stream.set_write_timeout(Some(left(deadline)?))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        let mut buf = [0u8; 16 << 10];
        // Ends at EOF (the server closes after answering), at the deadline or at MAX_RESPONSE.
        loop {
            stream.set_read_timeout(Some(left(deadline)?))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(FetchError::Timeout),
                Err(e) => return Err(e.into()),
            }
            if response.len() > MAX_RESPONSE {
                return Err(FetchError::TooLarge);
            }
            // A complete Content-Length or chunked body ends the read without waiting for the close.
            if let Some(body) = body_of(&response, false)? {
                return Ok(body);
            }
        }
        body_of(&response, true)?.ok_or(FetchError::Truncated)
    }

    /// Connects to the first address of the host that answers, before `deadline`.
    fn connect(&self, deadline: Instant) -> Result<TcpStream, FetchError> {
        let addrs = self
            .authority
            .to_socket_addrs()
            .map_err(FetchError::Resolve)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, left(deadline)?) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if is_timeout(&e) => FetchError::Timeout,
            Some(e) => FetchError::Connect(e),
            None => FetchError::Resolve(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            )),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// The time left until `deadline`; [`FetchError::Timeout`] when none is.
fn left(deadline: Instant) -> Result<Duration, FetchError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(FetchError::Timeout)
    } else {
        Ok(left)
    }
}

/// Whether a socket error is a timeout (set_*_timeout reports `WouldBlock` on Unix).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Why a GET failed.
#[derive(Debug)]
pub enum FetchError {
    /// The host name did not resolve.
    Resolve(io::Error),
    /// No address of the host accepted the connection (refused: nothing listens there).
    Connect(io::Error),
    /// Reading or writing failed.
    Io(io::Error),
    /// The exchange did not finish within the timeout.
    Timeout,
    /// The answer is not `200 OK`: its status line.
    Status(String),
    /// The answer is not HTTP/1.x, or its framing is broken.
    Malformed(&'static str),
    /// The connection closed before the whole body arrived.
    Truncated,
    /// The answer is over [`MAX_RESPONSE`] bytes.
    TooLarge,
}

impl From<io::Error> for FetchError {
    fn from(e: io::Error) -> Self {
        FetchError::Io(e)
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve(e) => write!(f, "cannot resolve the host: {e}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Timeout => write!(f, "no complete answer in time"),
            Self::Status(line) => write!(f, "the server answered {line}"),
            Self::Malformed(what) => write!(f, "not an HTTP answer: {what}"),
            Self::Truncated => write!(f, "the connection closed before the end of the answer"),
            Self::TooLarge => write!(f, "the answer is over {} MiB", MAX_RESPONSE >> 20),
        }
    }
}

impl std::error::Error for FetchError {}

/// The body of the response in `bytes` once it is complete: `Ok(None)` while more is needed. A
/// body with neither a length nor chunks ends at the end of the connection (`at_eof`).
fn body_of(bytes: &[u8], at_eof: bool) -> Result<Option<Vec<u8>>, FetchError> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..head_end])
        .map_err(|_| FetchError::Malformed("the head is not UTF-8"))?;
    let body = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(FetchError::Malformed("no HTTP/1.x status line"));
    }
    if parts.next() != Some("200") {
        return Err(FetchError::Status(status_line.to_owned()));
    }
    let mut length = None;
    let mut chunked = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| FetchError::Malformed("bad Content-Length"))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some(body[..n].to_vec())),
        Some(_) => Ok(None),
        None => Ok(at_eof.then(|| body.to_vec())),
    }
}

/// The payload of a chunked body once its last chunk arrived; `Ok(None)` while more is needed.
/// Chunk extensions and trailers are skipped.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let mut out = Vec::new();
    // Each pass consumes one chunk of a finite body.
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|l| l.split(';').next())
            .map(str::trim)
            .ok_or(FetchError::Malformed("bad chunk size"))?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| FetchError::Malformed("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line; the payload is complete either way.
            return Ok(Some(out));
        }
        if body.len() < size.saturating_add(2) {
            return Ok(None);
        }
        if &body[size..size + 2] != b"\r\n" {
            return Err(FetchError::Malformed("a chunk does not end with CRLF"));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_to_the_metrics_path_and_port_80() {
        let url = |s| Target::parse(s).map(|t| t.to_string());
        let ok = [
            (
                "http://127.0.0.1:9001/metrics",
                "http://127.0.0.1:9001/metrics",
            ),
            ("http://127.0.0.1:9001", "http://127.0.0.1:9001/metrics"),
            ("http://127.0.0.1:9001/", "http://127.0.0.1:9001/metrics"),
            ("127.0.0.1:9001", "http://127.0.0.1:9001/metrics"),
            ("HTTP://localhost:9100/stats", "http://localhost:9100/stats"),
            ("localhost", "http://localhost:80/metrics"),
            ("[::1]:9001", "http://[::1]:9001/metrics"),
            ("http://[::1]/m?x=1", "http://[::1]:80/m?x=1"),
            ("host:1?debug", "http://host:1/metrics?debug"),
        ];
        for (given, want) in ok {
            assert_eq!(url(given).as_deref(), Ok(want), "{given}");
        }
        for bad in [
            "https://127.0.0.1:9001/metrics",
            "ws://127.0.0.1:9001",
            "127.0.0.1:",
            ":9001",
            "127.0.0.1:99999",
            "::1:9001",
            "[::1]9001",
            "http:///metrics",
            "a b:1",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_by_length_by_chunks_and_to_the_end() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            body_of(full, false).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        // Incomplete until the head and the whole length are there.
        for end in 0..full.len() {
            assert_eq!(body_of(&full[..end], false).unwrap(), None, "{end}");
        }
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        4;ext=1\r\nm 1\n\r\nA\r\nn{a=\"b\"} 2\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(
            body_of(chunked, false).unwrap().as_deref(),
            Some(&b"m 1\nn{a=\"b\"} 2"[..])
        );
        for end in 0..chunked.len() - "X-Trailer: t\r\n\r\n".len() {
            assert_eq!(body_of(&chunked[..end], false).unwrap(), None, "{end}");
        }
        let to_eof = b"HTTP/1.0 200 OK\r\n\r\nm 1\n";
        assert_eq!(body_of(to_eof, false).unwrap(), None);
        assert_eq!(
            body_of(to_eof, true).unwrap().as_deref(),
            Some(&b"m 1\n"[..])
        );
    }

    #[test]
    fn other_answers_are_errors() {
        let status = body_of(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", true);
        assert!(
            matches!(&status, Err(FetchError::Status(l)) if l == "HTTP/1.1 404 Not Found"),
            "{status:?}"
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(body_of(bad, true), Err(FetchError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_get_against_a_listener_that_answers() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                request.extend_from_slice(&buf[..n]);
            }
            // The body is sent without closing: Content-Length ends the read.
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nup 1\r\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            String::from_utf8(request).unwrap()
        });
        let body = target.get(Duration::from_secs(10)).unwrap();
        assert_eq!(body, b"up 1\r\n");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /metrics HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    }
}
