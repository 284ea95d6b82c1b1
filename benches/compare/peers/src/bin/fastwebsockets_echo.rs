//! The fastwebsockets peer: hyper's HTTP/1.1 server performs the upgrade, then every text and binary
//! message is echoed whole (`FragmentCollector` joins fragments), pings are answered and a Close is
//! answered by the library (`auto_pong`, `auto_close`). One tokio `current_thread` runtime, no deflate
//! (fastwebsockets has none).
//!
//! Usage: `fastwebsockets_echo --addr 127.0.0.1:PORT [--tls-cert FILE --tls-key FILE] [--share-port]`
//! (wss:// over tokio-rustls with the files; SO_REUSEPORT with `--share-port`); prints
//! `listening on ADDR` to stderr when ready and exits on SIGTERM or SIGINT.

use compare_peers::MAX_MESSAGE_SIZE;
use fastwebsockets::upgrade::{UpgradeFut, upgrade};
use fastwebsockets::{FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::process::ExitCode;
use tokio::io::{AsyncRead, AsyncWrite};

/// Echoes messages until the peer closes or the connection fails.
async fn echo(upgrade: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = upgrade.await?;
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    ws.set_max_message_size(MAX_MESSAGE_SIZE);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            // Pings were answered by auto_pong; pongs need nothing; continuations never reach us
            // through the FragmentCollector.
            _ => {}
        }
    }
}

/// Answers the upgrade request with 101 (or 400 through the error) and starts the echo task.
async fn on_request(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade(&mut req)?;
    tokio::spawn(async move {
        // A load generator that hangs up mid-message is normal at the end of a run: stay quiet.
        let _ = echo(fut).await;
    });
    Ok(response)
}

/// Serves one TCP (or TLS) connection: HTTP/1.1 with upgrades enabled.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) {
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(on_request))
        .with_upgrades();
    let _ = conn.await;
}

fn main() -> ExitCode {
    compare_peers::run(serve, serve)
}
