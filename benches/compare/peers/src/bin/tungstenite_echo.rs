//! The tokio-tungstenite peer: every text and binary message is echoed (tungstenite joins fragments),
//! pings are answered and a Close is answered by the library. One tokio `current_thread` runtime, no
//! deflate (tungstenite has none).
//!
//! Usage: `tungstenite_echo --addr 127.0.0.1:PORT [--tls-cert FILE --tls-key FILE] [--share-port]`
//! (wss:// over tokio-rustls with the files; SO_REUSEPORT with `--share-port`); prints
//! `listening on ADDR` to stderr when ready and exits on SIGTERM or SIGINT.

use compare_peers::MAX_MESSAGE_SIZE;
use futures_util::{SinkExt, StreamExt};
use std::process::ExitCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Performs the handshake, then echoes messages until the peer closes or the connection fails.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    // One frame may carry a whole message: the frame limit is the message limit.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    // Pongs to pings and the Close reply are queued by tungstenite and written by the next read.
    while let Some(Ok(msg)) = ws.next().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

fn main() -> ExitCode {
    compare_peers::run(serve, serve)
}
