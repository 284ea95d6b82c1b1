//! The callback API: what a server does with its connections.

use crate::conn::Message;
use crate::connect::ConnectError;
use crate::context::Context;
use crate::socket::Socket;
use ringws_protocol::CloseCode;
use ringws_protocol::handshake::{Request, write_response};

/// An HTTP response to a plain (non-upgrade) request or a refused upgrade. The connection is closed
/// after it (`Connection: close`; no keep-alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, three digits.
    pub status: u16,
    /// Extra headers (not `Content-Length` or `Connection`, which are always written).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status, no extra headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response.
    ///
    /// ```
    /// let r = ringws_engine::HttpResponse::text(200, "ok");
    /// assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    /// ```
    pub fn text(status: u16, body: &str) -> Self {
        Self::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.as_bytes().to_vec())
    }

    /// Adds a header. Names and values must not contain CR or LF.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The default answer to a plain HTTP request on a WebSocket port: 426 Upgrade Required, naming
    /// the protocol to upgrade to (RFC 9110 §15.5.22 requires the `Upgrade` header).
    pub fn upgrade_required() -> Self {
        Self::text(426, "this is a WebSocket endpoint")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
    }

    /// Appends the response to `out` (a 500 instead if it is malformed, logged).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        if !self.is_valid() {
            tracing::error!(
                status = self.status,
                "invalid HTTP response from a callback; answering 500"
            );
            write_response(out, 500, &[], b"");
            return;
        }
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        write_response(out, self.status, &headers, &self.body);
    }

    /// Whether names, values and status are well formed (no CR/LF, three-digit status).
    pub(crate) fn is_valid(&self) -> bool {
        let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
        (100..=999).contains(&self.status)
            && self
                .headers
                .iter()
                .all(|(n, v)| clean(n) && clean(v) && !n.is_empty())
    }
}

/// What [`Handler::on_upgrade`] decides about an upgrade request.
#[derive(Debug)]
pub enum Decision<'r, S> {
    /// Accept: answer 101, optionally selecting one of the offered subprotocols, and attach `state`.
    Accept {
        /// The selected subprotocol, one of [`Request::subprotocols`]; `None` selects none.
        protocol: Option<&'r str>,
        /// The connection's state, reachable through [`Socket::state`].
        state: S,
    },
    /// Refuse with this response (e.g. 401, 403, 404); the connection is closed after it.
    Reject(HttpResponse),
}

impl<'r, S> Decision<'r, S> {
    /// Accepts with `state` and no subprotocol.
    pub fn accept(state: S) -> Self {
        Self::Accept {
            protocol: None,
            state,
        }
    }

    /// Refuses with a bare status.
    pub fn reject(status: u16) -> Self {
        Self::Reject(HttpResponse::new(status))
    }
}

/// The callbacks of a WebSocket server. One instance per worker thread, built by the factory passed to
/// [`Server::run`](crate::Server::run); callbacks of one worker never run concurrently.
///
/// Every method but [`on_message`](Self::on_message) has a default. A panic in a callback is caught,
/// logged, and closes that connection with 1011; the worker keeps serving the others.
///
/// ```no_run
/// use ringws_engine::{Handler, Message, Server, Socket};
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
///         let _ = ws.send(msg);
///     }
/// }
/// Server::builder().bind("127.0.0.1:9001").build()?.run(|_worker| Echo)?;
/// # Ok::<(), ringws_engine::EngineError>(())
/// ```
pub trait Handler {
    /// Per-connection state, created when the upgrade is accepted (the default `on_upgrade` uses
    /// `Default`). Free slots hold `Default` values, so keep `default()` cheap.
    type State: Default;

    /// An upgrade request arrived (valid per RFC 6455 §4.2.1): accept it, optionally choosing a
    /// subprotocol and creating the connection's state, or refuse it with a status. Default: accept.
    fn on_upgrade<'r>(&mut self, req: &Request<'r>) -> Decision<'r, Self::State> {
        let _ = req;
        Decision::accept(Self::State::default())
    }

    /// The 101 is queued and the connection is open; sends from here follow it.
    fn on_open(&mut self, ws: &mut Socket<'_, Self::State>) {
        let _ = ws;
    }

    /// A complete text or binary message arrived.
    fn on_message(&mut self, ws: &mut Socket<'_, Self::State>, msg: Message<'_>);

    /// A ping arrived; the engine has already queued the pong (same payload).
    fn on_ping(&mut self, ws: &mut Socket<'_, Self::State>, payload: &[u8]) {
        let _ = (ws, payload);
    }

    /// A pong arrived (an answer to [`Socket::ping`] or to the engine's keep-alive ping).
    fn on_pong(&mut self, ws: &mut Socket<'_, Self::State>, payload: &[u8]) {
        let _ = (ws, payload);
    }

    /// The connection's buffered output fell back within `max_backpressure` after a send reported
    /// [`SendResult::Backpressure`](crate::SendResult::Backpressure).
    fn on_drain(&mut self, ws: &mut Socket<'_, Self::State>) {
        let _ = ws;
    }

    /// The WebSocket left the open state, once per connection: `code` is the peer's close code (1005
    /// if it sent none), the one this server sent (a violation, a timeout, shutdown, [`Socket::close`]),
    /// or 1006 if the TCP connection ended without a Close. Sends are dropped from here on; the state
    /// is dropped after this returns.
    fn on_close(&mut self, ws: &mut Socket<'_, Self::State>, code: CloseCode, reason: &str) {
        let _ = (ws, code, reason);
    }

    /// A plain HTTP request (no `Upgrade: websocket`) arrived, e.g. a health check. Default: 426.
    fn on_http(&mut self, req: &Request<'_>) -> HttpResponse {
        let _ = req;
        HttpResponse::upgrade_required()
    }

    /// The worker is about to serve: the place to open client connections with
    /// [`Context::connect`]. Called once per worker, on its thread.
    fn on_start(&mut self, ctx: &mut Context<'_, Self::State>) {
        let _ = ctx;
    }

    /// The wake-up asked for with [`Context::wake_at`] is due (timers, paced sends, reconnects).
    fn on_wake(&mut self, ctx: &mut Context<'_, Self::State>) {
        let _ = ctx;
    }

    /// The worker has gone quiet: a whole tick (100 ms) passed without any completion after it
    /// had traffic. Called once per quiet spell, on the worker's thread. The place to give back
    /// what a burst left behind, such as the allocator's freed pages (the `ringws` binary asks
    /// mimalloc to collect here, which takes an idle connection from ~200-300 to ~175 bytes after
    /// a burst of handshakes), without paying for it while traffic flows.
    fn on_idle(&mut self, ctx: &mut Context<'_, Self::State>) {
        let _ = ctx;
    }

    /// A client connection failed before it opened (refused, timed out, invalid `101`, shutdown):
    /// `state` is the one given to [`Context::connect`]; `ctx` can try again (now, or later with
    /// [`Context::wake_at`]). `on_open` and `on_close` are not called for it.
    fn on_connect_error(
        &mut self,
        ctx: &mut Context<'_, Self::State>,
        state: Self::State,
        error: &ConnectError,
    ) {
        let _ = (ctx, state, error);
    }
}
