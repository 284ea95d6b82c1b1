//! The admin listener: `/metrics`, `/health` and `/ready` on an address of their own
//! (`admin_addr`), so that the public WebSocket port need not expose them, answered by one thread
//! that never touches a worker (a stuck worker cannot keep `/health` from saying so).
//!
//! One request per connection (`Connection: close`), one connection at a time, each bounded by
//! [`IO_TIMEOUT`]: scrapes and probes are rare and small, and a client that dribbles delays the
//! next one by at most that long.

use super::Ops;
use crate::handler::HttpResponse;
use crate::ring::sys;
use ringws_protocol::handshake::{Parse, parse_request};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::debug;

/// Bound on reading one request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Serves `listener` until `stop` is set (and `wake` polled readable).
pub(crate) fn serve(listener: &TcpListener, ops: &Ops, stop: &AtomicBool, wake: BorrowedFd<'_>) {
    if let Err(e) = listener.set_nonblocking(true) {
        debug!(error = %e, "admin listener: cannot make it non-blocking; not serving");
        return;
    }
    while !stop.load(Ordering::Acquire) {
        sys::wait_readable(listener.as_fd(), Some(wake), None);
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, ops) {
                        debug!(error = %e, "admin request failed");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    break;
                }
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// Reads one request from `stream` and answers it.
fn answer(mut stream: TcpStream, ops: &Ops) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let resp = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        match parse_request(&head, MAX_HEAD) {
            Ok(Parse::Partial) => continue,
            Ok(Parse::Complete(req)) => {
                break ops
                    .respond(&req)
                    .unwrap_or_else(|| HttpResponse::text(404, "not found\n"));
            }
            Err(_) => break HttpResponse::text(400, "bad request\n"),
        }
    };
    let mut out = Vec::with_capacity(resp.body.len() + 256);
    resp.write_to(&mut out);
    stream.write_all(&out)
}
