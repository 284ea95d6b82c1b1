//! A WebSocket client on the engine's workers: connects, sends a few messages, prints the echoes and
//! closes cleanly. Against the echo server (`cargo run --release --example echo_server`):
//! `cargo run --release --example client -- ws://127.0.0.1:9001/`.
use ringws::{
    CloseCode, Connect, ConnectError, Context, Handler, Message, Server, ServerHandle, Socket,
};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set when the connection failed or did not close normally.
static FAILED: AtomicBool = AtomicBool::new(false);

const MESSAGES: [&str; 3] = ["hello", "ringws client", "bye"];

struct Client {
    target: Connect,
    /// Stops the engine once the connection is over.
    handle: ServerHandle,
}

impl Handler for Client {
    /// Echoes received so far.
    type State = usize;

    fn on_start(&mut self, ctx: &mut Context<'_, usize>) {
        ctx.connect(&self.target, 0);
    }

    fn on_open(&mut self, ws: &mut Socket<'_, usize>) {
        println!("connected to {:?}", ws.peer_addr());
        let _ = ws.send_text(MESSAGES[0]);
    }

    fn on_message(&mut self, ws: &mut Socket<'_, usize>, msg: Message<'_>) {
        println!("echo: {:?}", String::from_utf8_lossy(msg.as_bytes()));
        *ws.state_mut() += 1;
        match MESSAGES.get(*ws.state()) {
            Some(next) => {
                let _ = ws.send_text(next);
            }
            None => ws.close(CloseCode::NORMAL, "done"),
        }
    }

    fn on_close(&mut self, _ws: &mut Socket<'_, usize>, code: CloseCode, reason: &str) {
        println!("closed: {} {reason:?}", code.0);
        if code != CloseCode::NORMAL {
            FAILED.store(true, Ordering::Relaxed);
        }
        self.handle.shutdown();
    }

    fn on_connect_error(&mut self, _ctx: &mut Context<'_, usize>, _: usize, error: &ConnectError) {
        eprintln!("could not connect: {error}");
        FAILED.store(true, Ordering::Relaxed);
        self.handle.shutdown();
    }
}

fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001/".into());
    let target = match Connect::new(&url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = || -> Result<(), ringws::EngineError> {
        let engine = Server::builder()
            .client_only()
            .workers(1)
            .handle_signals(true)
            .build()?;
        let handle = engine.handle();
        engine.run(move |_| Client {
            target: target.clone(),
            handle: handle.clone(),
        })
    };
    match run() {
        Ok(()) if !FAILED.load(Ordering::Relaxed) => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
