//! What the peer echo servers share: their command line, their listener and their exit on a signal.
//!
//! Each peer is one binary (`fastwebsockets_echo`, `tungstenite_echo`) that echoes every text and
//! binary message on a tokio `current_thread` runtime, so that one core serves every connection just
//! as `ringws serve --workers 1` does. The harness starts them with `--addr 127.0.0.1:PORT`, waits for
//! the `listening on ADDR` line on stderr and stops them with SIGTERM.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Largest message a peer accepts: at least the 16 MiB ringws accepts by default, so no benchmark
/// size is refused by one server and not by another. 64 MiB is both libraries' own default.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Listen backlog, the same as ringws's default (`--backlog 4096`), so a burst of 10,000 connects
/// meets the same queue on every server (the kernel still caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// Reads `--addr HOST:PORT` (the only option) from the process arguments.
///
/// Returns a usage message as the error for anything else, so `main` can print it and exit non-zero.
pub fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let program = args.next().unwrap_or_else(|| "peer".to_owned());
    let usage = format!("usage: {program} --addr HOST:PORT");
    let mut addr = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let value = args.next().ok_or_else(|| usage.clone())?;
                addr = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--addr {value}: {e}\n{usage}"))?,
                );
            }
            _ => return Err(usage),
        }
    }
    addr.ok_or(usage)
}

/// Binds a listener on `addr` with SO_REUSEADDR and ringws's backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections on `listener` and runs `serve` for each on its own task, until SIGTERM or
/// SIGINT arrives; then it returns and the runtime, dropped by the caller, ends every connection.
///
/// Prints `listening on ADDR` to stderr once the listener accepts (the harness waits for that line).
/// Accepted sockets get TCP_NODELAY, as ringws's do: without it small echoes wait on Nagle's timer.
pub async fn serve_until_signal<F, Fut>(listener: TcpListener, serve: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // A socket that cannot take the option still works; only its latency suffers.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream));
                }
                // EMFILE and friends: keep serving the connections we have; the load generator
                // reports the failed connects.
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// Builds the single-threaded runtime and runs `serve_until_signal` on a listener bound to the
/// `--addr` from the command line; returns the process exit code.
pub fn run<F, Fut>(serve: F) -> std::process::ExitCode
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = match parse_addr(std::env::args()) {
        Ok(addr) => addr,
        Err(usage) => {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|rt| rt.block_on(async { serve_until_signal(listen(addr)?, serve).await }));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_addr() {
        let addr = parse_addr(args(&["peer", "--addr", "127.0.0.1:9001"])).unwrap();
        assert_eq!(addr, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn rejects_missing_unknown_and_bad_values() {
        assert!(parse_addr(args(&["peer"])).is_err());
        assert!(parse_addr(args(&["peer", "--addr"])).is_err());
        assert!(parse_addr(args(&["peer", "--port", "1"])).is_err());
        let err = parse_addr(args(&["peer", "--addr", "localhost"])).unwrap_err();
        assert!(err.contains("--addr localhost"), "{err}");
    }
}
