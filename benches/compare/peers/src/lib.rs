//! What the peer echo servers share: their command line, their listener and their exit on a signal.
//!
//! Each peer is one binary (`fastwebsockets_echo`, `tungstenite_echo`) that echoes every text and
//! binary message on a tokio `current_thread` runtime, so that one core serves every connection just
//! as `ringws serve --workers 1` does. The harness starts them with `--addr 127.0.0.1:PORT`, waits for
//! the `listening on ADDR` line on stderr and stops them with SIGTERM. With `--tls-cert FILE
//! --tls-key FILE` (PEM) they serve wss://: tokio-rustls (rustls with the `ring` provider, as
//! ringws) accepts TLS first, then the usual upgrade runs over the TLS stream. With `--share-port`
//! the listener sets SO_REUSEPORT, as `ringws serve --share-port` does, so several processes can
//! serve one port (`benches/c100k.sh --server`: more connections than one process has descriptors
//! for).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Largest message a peer accepts: at least the 16 MiB ringws accepts by default, so no benchmark
/// size is refused by one server and not by another. 64 MiB is both libraries' own default.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Listen backlog, the same as ringws's default (`--backlog 4096`), so a burst of 10,000 connects
/// meets the same queue on every server (the kernel still caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// What a peer is told on its command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Certificate chain and private key (PEM files) to serve wss:// with; plain ws:// without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// SO_REUSEPORT on the listener: other processes may listen on the same port.
    pub share_port: bool,
}

/// Reads `--addr HOST:PORT` and optionally `--tls-cert FILE --tls-key FILE` and `--share-port`
/// from the process arguments.
///
/// Returns a usage message as the error for anything else, so `main` can print it and exit non-zero.
pub fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let program = args.next().unwrap_or_else(|| "peer".to_owned());
    let usage = format!(
        "usage: {program} --addr HOST:PORT [--tls-cert FILE --tls-key FILE] [--share-port]"
    );
    let (mut addr, mut cert, mut key, mut share_port) = (None, None, None, false);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| usage.clone());
        match arg.as_str() {
            "--addr" => {
                let value = value()?;
                addr = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--addr {value}: {e}\n{usage}"))?,
                );
            }
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--share-port" => share_port = true,
            _ => return Err(usage),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(format!("--tls-cert and --tls-key go together\n{usage}")),
    };
    Ok(Options {
        addr: addr.ok_or(usage)?,
        tls,
        share_port,
    })
}

/// A TLS acceptor for the PEM certificate chain and key: TLS 1.3 and 1.2, ALPN `http/1.1`, as
/// ringws serves them.
pub fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> io::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds a listener on `addr` with SO_REUSEADDR (and SO_REUSEPORT with `share_port`) and ringws's
/// backlog.
pub fn listen(addr: SocketAddr, share_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(share_port)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections on `listener` and runs `serve` for each on its own task, until SIGTERM or
/// SIGINT arrives; then it returns and the runtime, dropped by the caller, ends every connection.
///
/// Prints `listening on ADDR` to stderr once the listener accepts (the harness waits for that line).
/// Accepted sockets get TCP_NODELAY, as ringws's do: without it small echoes wait on Nagle's timer.
/// With `tls`, each accepted socket does its TLS handshake on its own task and is then served by
/// `serve_tls`; a failed handshake just ends that connection.
pub async fn serve_until_signal<F, Fut, G, GFut>(
    listener: TcpListener,
    serve: F,
    tls: Option<(TlsAcceptor, G)>,
) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    G: Fn(TlsStream<TcpStream>) -> GFut + Clone + Send + 'static,
    GFut: Future<Output = ()> + Send + 'static,
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
                    match &tls {
                        None => drop(tokio::spawn(serve(stream))),
                        Some((acceptor, serve_tls)) => {
                            let (accept, serve_tls) = (acceptor.accept(stream), serve_tls.clone());
                            tokio::spawn(async move {
                                if let Ok(stream) = accept.await {
                                    serve_tls(stream).await;
                                }
                            });
                        }
                    }
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
/// `--addr` from the command line, with `serve` for plain connections and `serve_tls` for TLS ones
/// (with `--tls-cert`); returns the process exit code.
pub fn run<F, Fut, G, GFut>(serve: F, serve_tls: G) -> std::process::ExitCode
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    G: Fn(TlsStream<TcpStream>) -> GFut + Clone + Send + 'static,
    GFut: Future<Output = ()> + Send + 'static,
{
    let options = match parse_options(std::env::args()) {
        Ok(options) => options,
        Err(usage) => {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    let tls = match &options.tls {
        None => None,
        Some((cert, key)) => match acceptor(cert, key) {
            Ok(acceptor) => Some((acceptor, serve_tls)),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|rt| {
            rt.block_on(async {
                serve_until_signal(listen(options.addr, options.share_port)?, serve, tls).await
            })
        });
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
    fn parses_addr_and_tls_files() {
        let o = parse_options(args(&["peer", "--addr", "127.0.0.1:9001"])).unwrap();
        assert_eq!(o.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(o.tls, None);
        assert!(!o.share_port);
        let o = parse_options(args(&[
            "peer",
            "--tls-cert",
            "c.pem",
            "--addr",
            "127.0.0.1:9001",
            "--tls-key",
            "k.pem",
            "--share-port",
        ]))
        .unwrap();
        assert_eq!(o.tls, Some(("c.pem".into(), "k.pem".into())));
        assert!(o.share_port);
    }

    #[test]
    fn rejects_missing_unknown_and_bad_values() {
        assert!(parse_options(args(&["peer"])).is_err());
        assert!(parse_options(args(&["peer", "--addr"])).is_err());
        assert!(parse_options(args(&["peer", "--port", "1"])).is_err());
        let err = parse_options(args(&["peer", "--addr", "localhost"])).unwrap_err();
        assert!(err.contains("--addr localhost"), "{err}");
        let half = args(&["peer", "--addr", "127.0.0.1:1", "--tls-cert", "c.pem"]);
        assert!(parse_options(half).unwrap_err().contains("go together"));
    }
}
