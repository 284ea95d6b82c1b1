//! Who may open a WebSocket: the origin allowlist (`ringws serve --allow-origin`), subprotocol
//! negotiation (`--subprotocol`, `--require-subprotocol`) with tokio-tungstenite as the client, and
//! token authentication in `on_upgrade` with the handler of `examples/auth_jwt.rs` on an in-process
//! server.

mod common;

#[allow(dead_code)]
#[path = "../examples/auth_jwt.rs"]
mod auth_jwt;

use common::{Frame, HttpResponse, InProcess, RawClient, Server, eventually, http_request};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// A valid upgrade request to `target` with `extra` header lines (each ending in CRLF).
fn upgrade(addr: SocketAddr, target: &str, extra: &str) -> String {
    common::upgrade_request(addr)
        .replacen("GET /chat ", &format!("GET {target} "), 1)
        .replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1)
}

/// The status the server answers `request` with.
fn status(addr: SocketAddr, request: &str) -> (HttpResponse, String) {
    http_request(addr, request.as_bytes())
}

#[test]
fn origin_allowlist_answers_403_to_other_origins() {
    let server = Server::start(&[
        "--allow-origin",
        "https://example.com",
        "--allow-origin",
        "https://*.example.org",
        "--deny-missing-origin",
    ]);
    let addr = server.addr;
    for allowed in [
        "https://example.com",
        "https://EXAMPLE.com",
        "https://app.example.org",
        "https://a.b.example.org",
    ] {
        let req = upgrade(addr, "/", &format!("Origin: {allowed}\r\n"));
        let mut c = RawClient::connect_with(addr, req.as_bytes());
        c.echo(Frame::text(format!("from {allowed}")));
    }
    for refused in [
        "https://evil-example.org",
        "https://example.org.evil.net",
        "https://example.org",
        "http://app.example.org",
        "https://app.example.org:8443",
        "https://example.com.evil.net",
        "null",
    ] {
        let req = upgrade(addr, "/", &format!("Origin: {refused}\r\n"));
        let (resp, head) = status(addr, &req);
        assert_eq!(resp.status, 403, "origin {refused}:\n{head}");
    }
    let (resp, head) = status(addr, &upgrade(addr, "/", ""));
    assert_eq!(
        resp.status, 403,
        "no Origin with --deny-missing-origin:\n{head}"
    );
    // The server's stderr is read by a thread: wait for the line rather than race it.
    assert!(
        eventually(Duration::from_secs(5), || server
            .log()
            .contains("origin not allowed")),
        "{}",
        server.log()
    );
}

#[test]
fn missing_origin_is_accepted_by_default() {
    let server = Server::start(&["--allow-origin", "https://example.com"]);
    let mut c = RawClient::connect(server.addr);
    c.echo(Frame::text("no Origin: not a browser"));
    let req = upgrade(server.addr, "/", "Origin: https://evil.example\r\n");
    assert_eq!(status(server.addr, &req).0.status, 403);
}

/// Connects with tokio-tungstenite offering `protocols`; returns the selected one.
async fn negotiate(
    addr: SocketAddr,
    protocols: &str,
) -> Result<Option<String>, tungstenite::Error> {
    let mut req = format!("ws://{addr}/").into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let connect = tokio_tungstenite::connect_async(req);
    let (mut ws, resp) = tokio::time::timeout(common::READ_TIMEOUT, connect)
        .await
        .expect("connect within the read timeout")?;
    let selected = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    ws.send(Message::text("hi")).await?;
    let echo = tokio::time::timeout(common::READ_TIMEOUT, ws.next()).await;
    assert_eq!(
        echo.expect("echo in time").expect("a message")?,
        Message::text("hi")
    );
    ws.close(None).await?;
    Ok(selected)
}

#[tokio::test]
async fn server_preference_picks_among_the_offered_subprotocols() {
    let server = Server::start(&["--subprotocol", "v2.feed", "--subprotocol", "v1.feed"]);
    let addr = server.addr;
    let pick = |offer| negotiate(addr, offer);
    assert_eq!(
        pick("v1.feed, v2.feed").await.unwrap().as_deref(),
        Some("v2.feed")
    );
    assert_eq!(pick("v1.feed").await.unwrap().as_deref(), Some("v1.feed"));
    assert_eq!(
        pick("chat, v1.feed").await.unwrap().as_deref(),
        Some("v1.feed")
    );
    assert_eq!(pick("").await.unwrap(), None);
    // Nothing in common: accepted without a subprotocol; the client decides whether to go on
    // (tungstenite does not).
    let (resp, head) = status(
        addr,
        &upgrade(addr, "/", "Sec-WebSocket-Protocol: chat\r\n"),
    );
    assert_eq!(resp.status, 101, "{head}");
    assert_eq!(resp.header("sec-websocket-protocol"), None, "{head}");
    assert!(matches!(
        pick("chat").await,
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_)
        ))
    ));
}

#[tokio::test]
async fn require_subprotocol_answers_400_when_none_matches() {
    let server = Server::start(&["--subprotocol", "v1.feed", "--require-subprotocol"]);
    let addr = server.addr;
    assert_eq!(
        negotiate(addr, "v1.feed").await.unwrap().as_deref(),
        Some("v1.feed")
    );
    for offer in ["chat", ""] {
        match negotiate(addr, offer).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400, "{offer:?}"),
            other => panic!("offer {offer:?}: expected HTTP 400, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Token authentication: examples/auth_jwt.rs

const KEY: &[u8] = b"test-secret-for-ringws";

/// The example's handler on an in-process server; shut down when dropped.
fn auth_server() -> InProcess {
    let server = InProcess::builder(1).build().expect("server builds");
    InProcess::run(server, |_| auth_jwt::Auth::new(KEY))
}

/// Expects the upgrade accepted, the greeting for `subject`, and messages answered as `subject`.
fn expect_session(addr: SocketAddr, request: &str, subject: &str) {
    let mut c = RawClient::connect_with(addr, request.as_bytes());
    c.expect_text(format!("hello {subject}").as_bytes());
    c.send(&Frame::text("ping?"));
    c.expect_text(format!("{subject}: ping?").as_bytes());
    c.close_normally();
}

/// Expects 401 with a Bearer challenge naming `error` (None: no error attribute).
fn expect_401(addr: SocketAddr, request: &str, error: Option<&str>) {
    let (resp, head) = status(addr, request);
    assert_eq!(resp.status, 401, "{head}");
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\"ringws\""), "{head}");
    match error {
        Some(e) => assert!(challenge.contains(&format!("error=\"{e}\"")), "{head}"),
        None => assert!(!challenge.contains("error="), "{head}"),
    }
}

#[test]
fn valid_tokens_open_a_session_with_their_subject() {
    let server = auth_server();
    let addr = server.addr;
    let token = auth_jwt::issue("alice", auth_jwt::now_secs() + 60, KEY);
    expect_session(
        addr,
        &upgrade(addr, &format!("/feed?room=1&token={token}"), ""),
        "alice",
    );
    let token = auth_jwt::issue("bob", auth_jwt::now_secs() + 60, KEY);
    let cookie = format!("Cookie: theme=dark; token={token}\r\n");
    expect_session(addr, &upgrade(addr, "/feed", &cookie), "bob");
}

#[test]
fn missing_expired_forged_and_tampered_tokens_get_401() {
    let server = auth_server();
    let addr = server.addr;
    let now = auth_jwt::now_secs();
    let with = |token: &str| upgrade(addr, &format!("/?token={token}"), "");
    expect_401(addr, &upgrade(addr, "/", ""), None);
    expect_401(addr, &upgrade(addr, "/", "Cookie: theme=dark\r\n"), None);
    let expired = auth_jwt::issue("alice", now - 1, KEY);
    expect_401(addr, &with(&expired), Some("invalid_token"));
    let forged = auth_jwt::issue("alice", now + 60, b"another key");
    expect_401(addr, &with(&forged), Some("invalid_token"));
    // A valid token with its claims swapped for someone else's keeps a signature that no longer
    // matches.
    let good = auth_jwt::issue("alice", now + 60, KEY);
    let other = auth_jwt::issue("mallory", now + 60, b"x");
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    expect_401(addr, &with(&parts.join(".")), Some("invalid_token"));
    // alg "none" with no signature.
    let none = format!("eyJhbGciOiJub25lIn0.{}.", other.split('.').nth(1).unwrap());
    expect_401(addr, &with(&none), Some("invalid_token"));
    expect_401(addr, &with("not-a-jwt"), Some("invalid_token"));
    // The server is still serving good tokens.
    expect_session(addr, &with(&good), "alice");
}

#[test]
fn token_checks_name_the_reason() {
    use auth_jwt::{AuthError, issue, verify};
    let now = 1_700_000_000;
    let good = issue("alice", now + 10, KEY);
    assert_eq!(verify(&good, KEY, now).unwrap().subject, "alice");
    assert_eq!(verify(&good, KEY, now + 10), Err(AuthError::Expired));
    assert_eq!(verify(&good, b"other", now), Err(AuthError::BadSignature));
    assert_eq!(verify("a.b", KEY, now), Err(AuthError::Malformed));
    assert_eq!(
        verify(&format!("{good}.x"), KEY, now),
        Err(AuthError::Malformed)
    );
    let none = format!("eyJhbGciOiJub25lIn0{}", &good[good.find('.').unwrap()..]);
    assert_eq!(verify(&none, KEY, now), Err(AuthError::Algorithm));
}
