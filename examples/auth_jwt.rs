//! Authenticating WebSocket upgrades with an HS256 JSON Web Token (RFC 7519), in `on_upgrade`.
//!
//! The token comes from the query (`ws://host/?token=...`, for clients that cannot set headers)
//! or from a `token` cookie (a browser on the same site sends it with the upgrade). A valid token
//! opens the connection with its subject as the connection's typed state; a missing, malformed,
//! badly signed, expired or not-yet-valid one is refused with 401 and an RFC 6750
//! `WWW-Authenticate: Bearer` header, before any WebSocket traffic.
//!
//! ```sh
//! RINGWS_JWT_SECRET=change-me cargo run --release --example auth_jwt
//! # prints a token for subject "demo", valid one hour; then:
//! python3 -m websockets "ws://127.0.0.1:9001/?token=<token>"
//! ```
//!
//! Only HS256 is accepted: the header's `alg` must say so (a token claiming `none` or another
//! algorithm is refused, whatever its signature), the signature is checked in constant time, and
//! `exp` is required.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use ringws::{Decision, Handler, HttpResponse, Message, Request, Server, Socket};
use sha2::Sha256;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `token` in the query or the cookies.
    Missing,
    /// Not three base64url parts with JSON header and claims, or a claim of the wrong type.
    Malformed,
    /// The header's `alg` is not `HS256`.
    Algorithm,
    /// The signature does not match the key.
    BadSignature,
    /// `exp` is missing or has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no token",
            Self::Malformed => "malformed token",
            Self::Algorithm => "only HS256 tokens are accepted",
            Self::BadSignature => "bad signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
        })
    }
}

impl std::error::Error for AuthError {}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: who the connection belongs to.
    pub subject: String,
    /// `exp`: seconds since the UNIX epoch.
    pub expires: u64,
}

/// Seconds since the UNIX epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Issues an HS256 token for `subject` expiring at `expires` (seconds since the epoch).
pub fn issue(subject: &str, expires: u64, key: &[u8]) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "sub": subject, "exp": expires });
    let signed = format!("{header}.{}", B64.encode(claims.to_string()));
    let mut m = mac(key);
    m.update(signed.as_bytes());
    let signature = B64.encode(m.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// Checks an HS256 token against `key` at time `now` (seconds since the epoch).
pub fn verify(token: &str, key: &[u8], now: u64) -> Result<Claims, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let json = |part: &str| -> Result<serde_json::Value, AuthError> {
        let bytes = B64.decode(part).map_err(|_| AuthError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
    };
    if json(header)?.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::Algorithm);
    }
    let signature = B64.decode(signature).map_err(|_| AuthError::Malformed)?;
    let mut m = mac(key);
    m.update(&token.as_bytes()[..header.len() + 1 + claims.len()]);
    m.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;
    let claims = json(claims)?;
    let number = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_u64().ok_or(AuthError::Malformed))
    };
    let expires = number("exp").ok_or(AuthError::Expired)??;
    if now >= expires {
        return Err(AuthError::Expired);
    }
    if number("nbf").transpose()?.is_some_and(|nbf| now < nbf) {
        return Err(AuthError::NotYetValid);
    }
    let subject = claims.get("sub").and_then(|s| s.as_str());
    Ok(Claims {
        subject: subject.ok_or(AuthError::Malformed)?.to_owned(),
        expires,
    })
}

/// The token of a request: `?token=` in the query, else the `token` cookie.
pub fn token<'r>(req: &Request<'r>) -> Option<&'r str> {
    let from_query = req.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    });
    from_query.or_else(|| req.cookie("token"))
}

/// The 401 answer (RFC 6750 §3: no error code when no token was sent).
pub fn unauthorized(e: AuthError) -> HttpResponse {
    let challenge = match e {
        AuthError::Missing => r#"Bearer realm="ringws""#.to_owned(),
        e => format!(r#"Bearer realm="ringws", error="invalid_token", error_description="{e}""#),
    };
    HttpResponse::text(401, &e.to_string()).header("WWW-Authenticate", &challenge)
}

/// A connection's state: who it is.
#[derive(Debug, Default)]
pub struct Session {
    /// The token's subject.
    pub subject: String,
}

/// Accepts upgrades with a valid token; greets the subject and echoes messages prefixed with it.
pub struct Auth {
    key: Vec<u8>,
}

impl Auth {
    /// A handler checking tokens signed with `key`.
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }
}

impl Handler for Auth {
    type State = Session;

    fn on_upgrade<'r>(&mut self, req: &Request<'r>) -> Decision<'r, Session> {
        let checked = token(req)
            .ok_or(AuthError::Missing)
            .and_then(|t| verify(t, &self.key, now_secs()));
        match checked {
            Ok(claims) => Decision::accept(Session {
                subject: claims.subject,
            }),
            Err(e) => Decision::Reject(unauthorized(e)),
        }
    }

    fn on_open(&mut self, ws: &mut Socket<'_, Session>) {
        let greeting = format!("hello {}", ws.state().subject);
        let _ = ws.send_text(&greeting);
    }

    fn on_message(&mut self, ws: &mut Socket<'_, Session>, msg: Message<'_>) {
        let reply = format!(
            "{}: {}",
            ws.state().subject,
            String::from_utf8_lossy(msg.as_bytes())
        );
        let _ = ws.send_text(&reply);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("RINGWS_JWT_SECRET").unwrap_or_else(|_| {
        eprintln!("RINGWS_JWT_SECRET is not set; using an insecure demo secret");
        "insecure-demo-secret".to_owned()
    });
    let key = secret.into_bytes();
    let demo = issue("demo", now_secs() + 3600, &key);
    let server = Server::builder()
        .bind("127.0.0.1:9001")
        .handle_signals(true)
        .build()?;
    let addr = server.local_addr();
    server.run_with_ready(
        |_| Auth::new(&key),
        || eprintln!("ws://{addr}/?token={demo}  (subject \"demo\", valid one hour)"),
    )?;
    Ok(())
}
