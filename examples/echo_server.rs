//! An echo server in a few lines of library use: `cargo run --release --example echo_server`.
use ringws::{EngineError, Handler, Message, Server, Socket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

fn main() -> Result<(), EngineError> {
    // Ctrl-C (SIGINT) and SIGTERM close every connection with 1001 before `run` returns.
    let server = Server::builder()
        .bind("127.0.0.1:9001")
        .handle_signals(true)
        .build()?;
    server.run_with_ready(|_| Echo, || eprintln!("echo server on ws://127.0.0.1:9001"))
}
